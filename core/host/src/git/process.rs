//! Running the git binary: bounded output, a deadline, kill on timeout.

use std::io;
use std::path::Path;
use std::pin::pin;
use std::process::{Command, ExitStatus};
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{self, AbortHandle, Either};
use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::{ChildProcess, Runtime};

/// A `git` command with a predictable environment: no prompts, no pager, no user or system
/// configuration that could change what a server-side git does.
pub fn git(dir: Option<&Path>) -> Command {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PAGER", "cat")
        .env_remove("GIT_DIR")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_PROTOCOL");
    command
}

/// What a finished (or killed) git run produced.
#[derive(Debug)]
pub struct GitOutput {
    /// Reading the input to feed stdin failed (e.g. the request body was too large); git saw
    /// a truncated input.
    pub input_error: Option<io::Error>,
    /// `None` if the process was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond the cap was discarded.
    pub truncated: bool,
}

impl GitOutput {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last lines of stderr, for errors and logs.
    pub fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(5)..].join("; ")
    }
}

/// Runs `command` to completion, feeding it everything read from `stdin`, keeping at most `output_cap` bytes of
/// stdout and of stderr, and killing it at `deadline`.
pub async fn run(
    runtime: &dyn Runtime,
    command: Command,
    mut stdin: impl AsyncRead + Unpin,
    deadline: Option<Instant>,
    output_cap: usize,
) -> io::Result<GitOutput> {
    let program = format!("{:?}", command.get_args().collect::<Vec<_>>());
    let mut child = runtime.spawn_process(command)?;
    let mut child_stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut process = child.process;
    let finished = {
        let work = async {
            let feed = async {
                match child_stdin.take() {
                    Some(pipe) => feed(&mut stdin, pipe).await,
                    None => None,
                }
            };
            let (input_error, (stdout, out_cut), (stderr, err_cut)) = future::join3(
                feed,
                read_capped(stdout, output_cap),
                read_capped(stderr, output_cap),
            )
            .await;
            let status = process.wait().await;
            (status, stdout, stderr, out_cut || err_cut, input_error)
        };
        let work = pin!(work);
        match deadline {
            None => Some(work.await),
            Some(deadline) => match future::select(work, runtime.sleep_until(deadline)).await {
                Either::Left((done, _)) => Some(done),
                Either::Right(((), _)) => None,
            },
        }
    };
    match finished {
        Some((status, stdout, stderr, truncated, input_error)) => Ok(GitOutput {
            input_error,
            status: Some(status?),
            stdout,
            stderr,
            truncated,
        }),
        None => {
            tracing::warn!(args = %program, "git ran past its deadline; killing it");
            let _ = process.start_kill();
            let _ = process.wait().await;
            Ok(GitOutput {
                input_error: None,
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
                truncated: false,
            })
        }
    }
}

/// Copies everything read from `input` to `pipe` (a child's stdin), as it arrives, then
/// closes the pipe. A child that exits early (a bad request) closes its stdin: that ends the
/// copy and is not an error. Returns the error reading `input`, if any.
pub async fn feed(
    input: &mut (impl AsyncRead + Unpin + ?Sized),
    mut pipe: Box<dyn AsyncWrite + Send + Unpin>,
) -> Option<io::Error> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut input_error = None;
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                input_error = Some(e);
                break;
            }
        };
        if pipe.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = pipe.close().await;
    input_error
}

/// A child process that is killed at its deadline even when nobody is reading from it (a
/// client that stopped reading its response leaves the body unpolled), when its
/// [`KillSwitch`] is used, and when this handle is dropped.
pub struct Watched {
    process: Arc<WatchedProcess>,
    watchdog: AbortHandle,
}

/// Kills a [`Watched`] process from elsewhere (e.g. when its input broke a limit).
#[derive(Clone)]
pub struct KillSwitch(Arc<WatchedProcess>);

/// The process, and what is held for as long as it runs (its place among the requests).
type Running = (Box<dyn ChildProcess>, Box<dyn Send>);

struct WatchedProcess {
    running: Mutex<Option<Running>>,
    /// Killed before it ended (deadline or kill switch), so its output is cut short.
    killed: AtomicBool,
}

impl WatchedProcess {
    /// Kills the process if it still runs and releases what it held; true if it did.
    fn kill(&self) -> bool {
        let Some((mut process, _held)) = lock(&self.running).take() else {
            return false;
        };
        self.killed.store(true, Ordering::Relaxed);
        let _ = process.start_kill();
        true
    }
}

impl Watched {
    /// Watches `process`; at `deadline` it is killed, `held` is released and `on_kill` runs.
    pub fn new(
        runtime: &Arc<dyn Runtime>,
        process: Box<dyn ChildProcess>,
        held: Box<dyn Send>,
        deadline: Instant,
        on_kill: impl FnOnce() + Send + 'static,
    ) -> Watched {
        let process = Arc::new(WatchedProcess {
            running: Mutex::new(Some((process, held))),
            killed: AtomicBool::new(false),
        });
        let victim = Arc::clone(&process);
        let sleep = runtime.sleep_until(deadline);
        let (watch, watchdog) = future::abortable(async move {
            sleep.await;
            if victim.kill() {
                on_kill();
            }
        });
        runtime.spawn(Box::pin(async move {
            let _ = watch.await;
        }));
        Watched { process, watchdog }
    }

    pub fn kill_switch(&self) -> KillSwitch {
        KillSwitch(Arc::clone(&self.process))
    }

    /// Whether the process was killed (at its deadline or by its kill switch) rather than
    /// left to end: its output is then incomplete.
    pub fn was_killed(&self) -> bool {
        self.process.killed.load(Ordering::Relaxed)
    }
}

impl KillSwitch {
    /// Kills the process now, if it still runs.
    pub fn kill(&self) {
        self.0.kill();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watchdog.abort();
        // Dropping the child kills it (the runtime adapters set kill-on-drop).
        drop(lock(&self.process.running).take());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads `pipe` to its end, keeping the first `cap` bytes; the rest is drained and dropped so
/// the writer never blocks on a full pipe.
pub async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}
