//! The repository stands on its own: no tracked file points at material outside it. What the
//! code relies on from the protocol is in PROTOCOL.md.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Spelled in pieces so this file does not match itself.
fn outside_references() -> [String; 2] {
    [["..", "/shared/"].concat(), ["/work", "/shared"].concat()]
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Tracked files (`git ls-files`), or every file outside `target/` and dot-directories when
/// this is not a git checkout.
fn repository_files(root: &Path) -> Vec<PathBuf> {
    let listed = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z"])
        .output()
        .ok()
        .filter(|out| out.status.success());
    if let Some(out) = listed {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .collect();
    }
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !(name.starts_with('.') || (dir == root && name == "target")) {
                    dirs.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    let root = workspace_root();
    let needles = outside_references();
    let mut offending = Vec::new();
    for file in repository_files(&root) {
        // Binary files and files deleted in the working tree are skipped.
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                let shown = file.strip_prefix(&root).unwrap_or(&file).display();
                offending.push(format!("{shown}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "files point outside the repository (put what they need in PROTOCOL.md or \
         ARCHITECTURE.md):\n{}",
        offending.join("\n")
    );
}
