//! A graspd HTTP origin on loopback, on either runtime, driven by the real git binary.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use futures_util::future::{abortable, AbortHandle};
use graspd_core::{Identifier, Oid, PublicKey, RepoKey};
use graspd_host::git::{Git, RefUpdate};
use graspd_host::http::{Handlers, PushHandler, RelayHandler, Server, Site, WebSocket};
use graspd_host::runtime::BoxFuture;
use graspd_host::Runtime;
use nostr::nips::nip19::ToBech32;

/// Which runtime a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    Tokio,
    Smol,
}

/// Runs `test` once per runtime.
pub fn on_each_runtime(test: impl Fn(&Harness)) {
    for flavor in [Flavor::Tokio, Flavor::Smol] {
        let harness = Harness::start(flavor);
        test(&harness);
    }
}

/// Refuses refs whose name contains "reject"; records landed pushes.
#[derive(Default)]
pub struct TestPolicy {
    pub pushed: Mutex<Vec<(RepoKey, Vec<RefUpdate>)>>,
}

pub const REJECT_REASON: &str = "refs named reject are refused by test policy";

impl PushHandler for TestPolicy {
    fn decide_push(
        &self,
        _repo: &RepoKey,
        _current_refs: &BTreeMap<String, Oid>,
        updates: &[RefUpdate],
    ) -> BoxFuture<'static, Vec<Result<(), String>>> {
        let verdicts = updates
            .iter()
            .map(|u| {
                if u.name.contains("reject") {
                    Err(REJECT_REASON.to_owned())
                } else {
                    Ok(())
                }
            })
            .collect();
        Box::pin(async move { verdicts })
    }

    fn on_pushed(&self, repo: &RepoKey, updates: &[RefUpdate]) -> BoxFuture<'static, ()> {
        self.pushed
            .lock()
            .unwrap()
            .push((repo.clone(), updates.to_vec()));
        Box::pin(async {})
    }
}

/// NIP-11 stub; WebSocket sessions echo one text message.
pub struct EchoRelay;

impl RelayHandler for EchoRelay {
    fn information_document(&self) -> String {
        r#"{"name":"test","supported_nips":[1,11,34]}"#.to_owned()
    }

    fn on_websocket(&self, socket: WebSocket, _client: IpAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            use futures_util::StreamExt;
            let mut socket = socket;
            if let Some(Ok(message)) = socket.next().await {
                let _ = socket.send(message).await;
            }
            let _ = socket.close(None).await;
        })
    }
}

/// Largest request body the test server takes.
pub const MAX_BODY: u64 = 2 * 1024 * 1024;

pub struct Harness {
    pub flavor: Flavor,
    pub addr: SocketAddr,
    pub git: Git,
    pub policy: Arc<TestPolicy>,
    pub dir: PathBuf,
    stop: AbortHandle,
    tokio: Option<tokio::runtime::Runtime>,
}

impl Harness {
    pub fn start(flavor: Flavor) -> Harness {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("graspd-http-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let tokio_rt = match flavor {
            Flavor::Tokio => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap(),
            ),
            Flavor::Smol => None,
        };
        let runtime: Arc<dyn Runtime> = match &tokio_rt {
            Some(rt) => Arc::new(graspd_tokio::TokioRuntime::new(rt.handle().clone())),
            None => Arc::new(graspd_smol::SmolRuntime),
        };
        let policy = Arc::new(TestPolicy::default());
        let git = Git::new(Arc::clone(&runtime), dir.join("data"));
        let site = Site {
            git: git.clone(),
            handlers: Handlers {
                relay: Arc::new(EchoRelay),
                push: policy.clone(),
                metrics: Arc::new(|| "graspd_test_metric 1\n".to_owned()),
            },
            body: graspd_host::http::body::BodyLimits {
                max_bytes: MAX_BODY,
                max_upload_request_bytes: MAX_BODY,
                ..Default::default()
            },
            public_url: "http://127.0.0.1".to_owned(),
            clients: Default::default(),
            grasp06: false,
        };
        let mut harness = Harness {
            flavor,
            addr: "127.0.0.1:0".parse().unwrap(),
            git,
            policy,
            dir,
            stop: AbortHandle::new_pair().0,
            tokio: tokio_rt,
        };
        let server = harness
            .block_on(Server::bind(
                Arc::clone(&runtime),
                "127.0.0.1:0".parse().unwrap(),
                site,
            ))
            .unwrap();
        harness.addr = server.local_addr().unwrap();
        let (run, stop) = abortable(server.run(Box::pin(std::future::pending())));
        harness.stop = stop;
        runtime.spawn(Box::pin(async move {
            let _ = run.await;
        }));
        harness
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        match &self.tokio {
            Some(rt) => rt.block_on(future),
            None => smol::block_on(future),
        }
    }

    pub fn url(&self, repo: &RepoKey) -> String {
        format!(
            "http://{}/{}/{}.git",
            self.addr,
            repo.owner.to_bech32().unwrap(),
            repo.identifier
        )
    }

    /// A fresh repo on the server, its HEAD on `main` as a released state naming `main` in its
    /// `HEAD` tag leaves it (these tests push `main`; a new repo's unborn HEAD is git's default).
    pub fn create_repo(&self, identifier: &str) -> RepoKey {
        let repo = repo_key(identifier);
        self.block_on(self.git.create_repo(&repo)).unwrap();
        let path = self.git.repo_path(&repo);
        git_ok(Some(&path), &["symbolic-ref", "HEAD", "refs/heads/main"]);
        repo
    }

    /// A scratch directory inside this harness's directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&path);
        path
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.abort();
        if let Some(rt) = self.tokio.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn owner() -> PublicKey {
    PublicKey::from_hex("3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d").unwrap()
}

pub fn repo_key(identifier: &str) -> RepoKey {
    RepoKey::new(owner(), Identifier::new(identifier).unwrap())
}

/// A git client command with a fixed identity and no user or system configuration.
pub fn git_cmd(dir: Option<&Path>) -> Command {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR");
    command
}

/// Runs git; returns its output whether or not it succeeded.
pub fn git_run(dir: Option<&Path>, args: &[&str]) -> Output {
    git_cmd(dir).args(args).output().expect("git runs")
}

/// Runs git and insists it succeeds; returns stdout.
pub fn git_ok(dir: Option<&Path>, args: &[&str]) -> String {
    let out = git_run(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A local repo with `commits` commits on `main` (each adds a file); returns its path.
pub fn work_repo(path: &Path, commits: usize) -> PathBuf {
    git_ok(
        None,
        &[
            "init",
            "--quiet",
            "--initial-branch=main",
            path.to_str().unwrap(),
        ],
    );
    for i in 0..commits {
        std::fs::write(
            path.join(format!("file{i}.txt")),
            format!("content {i}\n").repeat(50),
        )
        .unwrap();
        git_ok(Some(path), &["add", "."]);
        git_ok(
            Some(path),
            &["commit", "--quiet", "-m", &format!("commit {i}")],
        );
    }
    path.to_owned()
}

pub fn head_oid(dir: &Path, rev: &str) -> Oid {
    Oid::from_hex(git_ok(Some(dir), &["rev-parse", rev]).trim()).unwrap()
}

/// One raw HTTP/1.1 exchange (`Connection: close`); returns status line + headers, and body.
pub fn http(addr: SocketAddr, request_head: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request_head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading everything: ignore write errors.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    (head, response[split + 4..].to_vec())
}

pub fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// `len` incompressible bytes (xorshift), so packs are as big as the data.
pub fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
