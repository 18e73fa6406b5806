//! Starting, killing and restarting real graspd processes.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Tokio,
    Smol,
}

impl Flavor {
    pub fn package(self) -> &'static str {
        match self {
            Flavor::Tokio => "graspd-tokio",
            Flavor::Smol => "graspd-smol",
        }
    }

    /// The server binary's name, as `cargo install --path <package dir>` installs it.
    pub fn binary_name(self) -> &'static str {
        match self {
            Flavor::Tokio => "graspd",
            Flavor::Smol => "graspd-smol",
        }
    }

    /// The binary, built once per test process with the same profile as the tests.
    pub fn binary(self) -> PathBuf {
        static BUILT: OnceLock<()> = OnceLock::new();
        let profile_dir = profile_dir();
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            if release && !run_by_cargo_test() {
                // The benchmark: only the two servers, optimised.
                cmd.args([
                    "build",
                    "--release",
                    "--bins",
                    "-p",
                    "graspd-tokio",
                    "-p",
                    "graspd-smol",
                ]);
            } else {
                // Under `cargo test --workspace` the dependencies were built with the whole
                // workspace's features; asking for the same targets reuses them (a `-p` build
                // would resolve other features and rebuild the host and the binaries).
                cmd.args(["build", "--workspace", "--lib", "--bins", "--tests"]);
                if release {
                    cmd.arg("--release");
                }
            }
            // What `cargo test` set for this test, so that the build sees the environment the
            // shell's `cargo test` saw: build scripts that track a variable (ring tracks
            // CARGO_MANIFEST_DIR) would otherwise rebuild, and everything above them after.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name == "CARGO_MANIFEST_DIR"
                    || name == "CARGO_MANIFEST_PATH"
                    || name == "CARGO_CRATE_NAME"
                    || name == "CARGO_PRIMARY_PACKAGE"
                    || name == "CARGO_TARGET_TMPDIR"
                    || name == "OUT_DIR"
                    || name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_EXE_")
                {
                    cmd.env_remove(&*name);
                }
            }
            // Into the target directory this executable runs from, whatever the environment.
            if let Some(target_dir) = profile_dir.parent() {
                cmd.arg("--target-dir").arg(target_dir);
            }
            let status = cmd
                .status()
                .expect("run cargo build for the server binaries");
            assert!(status.success(), "building the server binaries failed");
        });
        profile_dir.join(self.binary_name())
    }
}

/// Whether this executable is a test built by `cargo test` (`target/<profile>/deps/<test>`).
fn run_by_cargo_test() -> bool {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|dir| dir.file_name())
        .is_some_and(|n| n == "deps")
}

/// `target/<profile>`, found from this executable: a test (`target/<profile>/deps/<test>`) or
/// a binary of this package (`target/<profile>/<bin>`, e.g. the benchmark).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Extra settings for one server.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Additional command-line flags.
    pub args: Vec<String>,
    /// The process's open-file limit (soft and hard), as `ulimit -n` sets it.
    pub open_files: Option<u64>,
    /// Additional environment variables for the server process.
    pub env: Vec<(String, String)>,
    /// The data directory, for servers that share one; else a fresh one.
    pub data_dir: Option<PathBuf>,
    /// `--public-url`, for servers behind one origin; else the server's own address.
    pub public_url: Option<String>,
}

impl ServerOptions {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// `--flag value`.
    pub fn flag(self, name: &str, value: impl ToString) -> Self {
        self.arg(name).arg(value.to_string())
    }

    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = Some(url.into());
        self
    }
}

/// A running graspd process with its own data directory and loopback port.
pub struct Server {
    pub flavor: Flavor,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    options: ServerOptions,
    child: Option<Child>,
    log_path: PathBuf,
}

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Server {
    pub fn start(flavor: Flavor) -> Server {
        Server::start_with(flavor, ServerOptions::default())
    }

    pub fn start_with(flavor: Flavor, options: ServerOptions) -> Server {
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| crate::temp_dir(&format!("{flavor:?}-data").to_lowercase()));
        let addr = free_loopback_addr();
        let log_path = data_dir.with_extension(format!("{}.log", addr.port()));
        let mut server = Server {
            flavor,
            addr,
            data_dir,
            options,
            child: None,
            log_path,
        };
        server.spawn();
        server
    }

    /// `http://127.0.0.1:<port>`: the public origin announcements must list.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The clone URL of `<npub>/<identifier>.git` on this server.
    pub fn repo_url(&self, npub: &str, identifier: &str) -> String {
        format!("{}/{npub}/{identifier}.git", self.http_url())
    }

    fn spawn(&mut self) {
        let mut cmd = match self.options.open_files {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(self.flavor.binary());
                sh
            }
            None => Command::new(self.flavor.binary()),
        };
        cmd.arg("--bind")
            .arg(self.addr.to_string())
            .arg("--public-url")
            .arg(
                self.options
                    .public_url
                    .clone()
                    .unwrap_or_else(|| self.http_url()),
            )
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--allow-private-remotes")
            .args(&self.options.args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,graspd=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn server");
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let ready_tx = ready_tx.clone();
            let mut log = log.try_clone().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("graspd listening") {
                        let _ = ready_tx.send(());
                    }
                    let _ = writeln!(log, "{line}");
                }
            });
        }
        let _ = writeln!(log, "---- started {:?} on {}", self.flavor, self.addr);
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            let _ = child.kill();
            panic!("server did not start; log:\n{}", self.log());
        }
        self.child = Some(child);
    }

    /// Everything the server printed so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: no shutdown hooks, no flushing; what survives is what was durable.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the server again after [`Server::kill9`] (or [`Server::terminate`]) stopped it.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn();
    }

    /// The value of one line of `/metrics` (`name` with its labels, e.g.
    /// `graspd_refusals_total{limit="websocket_idle"}`), if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let response = crate::http::request(self.addr, "GET", "/metrics", &[], b"");
        response.text().lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The sum of every sample whose line starts with `prefix` (a metric name, or a name and
    /// the start of its labels, e.g. `graspd_fetches_total{`); 0 if none.
    pub fn metric_sum(&self, prefix: &str) -> f64 {
        let response = crate::http::request(self.addr, "GET", "/metrics", &[], b"");
        response
            .text()
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM (graceful shutdown); true if the process exits within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(pid) = self.pid() else {
            return true;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `signal` (e.g. `HUP`) to the server process, as `kill -<signal> <pid>` does.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("server running");
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -{signal} {pid}");
    }

    /// The process id while it runs (for /proc measurements).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
            let _ = std::fs::remove_file(&self.log_path);
        } else {
            eprintln!("server log kept at {}", self.log_path.display());
        }
    }
}

fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap()
}
