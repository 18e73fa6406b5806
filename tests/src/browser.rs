//! Headless Chromium, for tests that check what a real browser renders.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one page load may take on a loaded CI machine.
const LOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chromium binary on `PATH`. `None` means the caller should skip: Chromium is absent
/// and `CI` is not set. Under `CI` an absent Chromium fails the test, since CI installs it
/// (`.ci/run`) and the browser test must run there.
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| on_path(name));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no chromium is on PATH (.ci/run installs Debian's `chromium`)"
        );
    }
    found
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// What Chromium made of a page.
pub struct Rendered {
    /// The DOM after loading, serialised (`--dump-dom`).
    pub dom: String,
    /// Chromium's log, including the page's console messages (CSP violations among them).
    pub log: String,
}

impl Rendered {
    /// The DOM's text with tags removed and whitespace collapsed: roughly what a reader sees.
    pub fn text(&self) -> String {
        let mut text = String::new();
        let mut in_tag = false;
        for c in self.dom.chars() {
            match c {
                '<' => in_tag = true,
                '>' => {
                    in_tag = false;
                    text.push(' ');
                }
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        let text = text
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&");
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// Loads `url` in headless Chromium and returns the rendered DOM.
pub fn render(chromium: &Path, url: &str) -> Rendered {
    let (dom, log) = run(chromium, &["--dump-dom", url]);
    Rendered { dom, log }
}

/// Loads `url` and writes a PNG screenshot of it to `png`.
pub fn screenshot(chromium: &Path, url: &str, png: &Path) {
    let arg = format!("--screenshot={}", png.display());
    let (_, log) = run(chromium, &[&arg, "--window-size=1200,1400", url]);
    assert!(
        png.is_file(),
        "no screenshot written; chromium said:\n{log}"
    );
}

/// Runs one headless Chromium with its own profile; returns (stdout, stderr).
fn run(chromium: &Path, args: &[&str]) -> (String, String) {
    let dir = crate::temp_dir("chromium");
    let (stdout_path, stderr_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {LOAD_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    (stdout, stderr)
}
