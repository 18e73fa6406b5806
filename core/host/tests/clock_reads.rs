//! Every clock read in graspd-host goes through the `Runtime` trait (`Runtime::now`,
//! `Runtime::wall_clock`), so the simulator's runtime owns time. Checked on the source, so a
//! direct read fails CI wherever it is added. Unit-test modules (after `#[cfg(test)]`) may
//! read the clock for a base instant.

use std::fs;
use std::path::{Path, PathBuf};

const CLOCK_READS: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    ".elapsed()",
    "Timestamp::now",
    "UNIX_EPOCH.elapsed",
];

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
fn host_reads_clocks_only_through_the_runtime() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10);
    let mut hits = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for read in CLOCK_READS {
                if code.contains(read) {
                    hits.push(format!("{}:{}: {read}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "read clocks through `Runtime::now`/`Runtime::wall_clock` (or `clock::Clock`):\n{}",
        hits.join("\n")
    );
}
