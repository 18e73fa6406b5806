//! A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, the server listening
//! only on a unix socket in that dir, one fresh database per caller.
//!
//! Standard library only, so the host crate's store tests include this same file
//! (`#[path]`) and the end-to-end tests use it from this crate.
//!
//! PostgreSQL refuses to run as root; as root (CI) the cluster runs as `nobody` through
//! `runuser`. The server is started by a small shell that waits on its standard input: when
//! the test process exits, for whatever reason, that input closes, and the shell stops the
//! server and removes the directory, so no cluster outlives its tests.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser role the cluster is made with (trust authentication over the socket).
const ROLE: &str = "graspd";
/// Names the socket file (`.s.PGSQL.<port>`); nothing listens on TCP.
const PORT: u16 = 5432;

/// A running cluster; stopped and removed when the test process exits.
pub struct Cluster {
    bin: PathBuf,
    socket_dir: PathBuf,
    /// Held open for the life of the process: its closing stops the server.
    _guard: Mutex<(Child, ChildStdin)>,
}

/// The process's cluster, started on first use: `Ok(None)` when PostgreSQL is not installed
/// (callers skip, except in CI where it must be).
pub fn shared() -> Result<Option<&'static Cluster>, String> {
    static CLUSTER: OnceLock<Result<Option<Cluster>, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| match server_binaries() {
        None => Ok(None),
        Some(bin) => Cluster::start(bin).map(Some),
    }) {
        Ok(cluster) => Ok(cluster.as_ref()),
        Err(error) => Err(error.clone()),
    }
}

/// [`shared`] for a test that needs PostgreSQL: `None` (with a message saying why it is
/// skipped) only when PostgreSQL is not installed outside CI; in CI its absence fails.
pub fn required(test: &str) -> Option<&'static Cluster> {
    match shared() {
        Ok(Some(cluster)) => Some(cluster),
        Ok(None) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "skipping {test}: PostgreSQL is not installed (initdb and postgres under \
                 /usr/lib/postgresql/<version>/bin or on PATH; CI installs it)"
            );
            None
        }
        Ok(None) => panic!("{test}: PostgreSQL is not installed, and CI must run this test"),
        Err(error) => panic!("{test}: cannot start a PostgreSQL cluster: {error}"),
    }
}

/// The directory holding `initdb`, `postgres`, `pg_isready` and `createdb`.
fn server_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "postgres", "pg_isready", "createdb"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    // Newest version first.
    versioned.sort_by_key(|dir| {
        let version = dir
            .parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str());
        std::cmp::Reverse(version.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0))
    });
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    versioned
        .into_iter()
        .chain(on_path)
        .find(|dir| has_all(dir))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl Cluster {
    fn start(bin: PathBuf) -> Result<Cluster, String> {
        let root = std::env::temp_dir().join(format!("graspd-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
        let run_as = is_root().then_some("nobody");
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .args([user, &root.display().to_string()])
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!("chown {user} {} failed", root.display()));
            }
        }
        let data = root.join("data");
        let cluster_cmd = |program: &str| {
            let mut cmd = match run_as {
                Some(user) => {
                    let mut cmd = Command::new("runuser");
                    cmd.args(["-u", user, "--"]).arg(bin.join(program));
                    cmd
                }
                None => Command::new(bin.join(program)),
            };
            cmd.current_dir(&root);
            cmd
        };
        let initdb = cluster_cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                ROLE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            ));
        }
        // The shell outlives nothing: it stops the server and removes `root` once its input
        // (this process) goes away.
        let script = format!(
            "'{postgres}' -D '{data}' -k '{root}' -p {PORT} -c listen_addresses='' \
             >'{root}/server.log' 2>&1 & pid=$!; read _ignored; kill -INT $pid; wait $pid; \
             rm -rf '{root}'",
            postgres = bin.join("postgres").display(),
            data = data.display(),
            root = root.display(),
        );
        let mut child = match run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--", "sh", "-c", &script]);
                cmd
            }
            None => {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &script]);
                cmd
            }
        }
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start postgres: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let cluster = Cluster {
            bin,
            socket_dir: root.clone(),
            _guard: Mutex::new((child, stdin)),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(cluster.bin.join("pg_isready"))
                .args(["-q", "-h"])
                .arg(&cluster.socket_dir)
                .args(["-p", &PORT.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
                return Err(format!(
                    "postgres did not accept connections within 60 s: {log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new, empty database; returns its connection string.
    pub fn database(&self, label: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{}_{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new(self.bin.join("createdb"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &PORT.to_string(), "-U", ROLE, &name])
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "host={} port={PORT} user={ROLE} dbname={name}",
            self.socket_dir.display()
        )
    }
}
