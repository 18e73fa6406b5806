//! The engine's purity is a property of its source and manifest; check both, so a change that
//! breaks it fails CI even where clippy is not run.

use std::fs;
use std::path::{Path, PathBuf};

const FORBIDDEN_DEPENDENCIES: &[&str] = &[
    "tokio",
    "smol",
    "async-io",
    "async-std",
    "async-net",
    "async-process",
    "mio",
    "hyper",
    "gix",
    "redb",
    "rand",
    "getrandom",
];

const FORBIDDEN_CALLS: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "rand::random",
    "OsRng",
    "std::thread::spawn",
    "std::fs::",
    "std::net::",
    "std::process::",
    "HashMap",
    "HashSet",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn manifest_names_no_io_or_runtime_crate() {
    let manifest = fs::read_to_string(crate_dir().join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or("")
        .split("\n[")
        .next()
        .unwrap_or("");
    for line in deps.lines() {
        let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
        assert!(
            !FORBIDDEN_DEPENDENCIES.contains(&name),
            "graspd-core depends on `{name}`: IO and runtimes belong in graspd-host"
        );
    }
}

#[test]
fn source_reads_no_clock_spawns_nothing_and_iterates_no_hash_map() {
    let mut files = Vec::new();
    rust_files(&crate_dir().join("src"), &mut files);
    assert!(!files.is_empty());
    let mut hits = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for bad in FORBIDDEN_CALLS {
                if code.contains(bad) {
                    hits.push(format!("{}:{}: {bad}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "graspd-core must stay pure:\n{}",
        hits.join("\n")
    );
}
