//! The runtime trait: the only things graspd-host needs from an async runtime.
//!
//! Like quinn's `Runtime`, it is small and object-safe so the host is written once and used as
//! `Arc<dyn Runtime>`: read the clocks, spawn a task, sleep until an instant, listen on TCP, run
//! a blocking closure, spawn a child process, and wait for a shutdown signal.
//!
//! Every clock read in graspd-host goes through [`Runtime::now`] and [`Runtime::wall_clock`]
//! (`core/host/tests/clock_reads.rs` checks the source), so a simulated runtime owns time.
//!
//! Child processes are spawned as *async* processes with piped stdio (not `spawn_blocking` +
//! `std::process`): git's upload-pack output can be a multi-gigabyte pack that we stream to the
//! HTTP client, and a fetch must be killable at its deadline. With async pipes neither ties up
//! a blocking-pool thread per transfer, and both tokio and smol already reap killed children.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use futures_util::io::{AsyncRead, AsyncWrite};

/// A boxed, sendable future: what every trait method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream both ways (an accepted TCP connection).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// A boxed accepted connection.
pub type Connection = Box<dyn AsyncStream>;

/// A bound TCP listener.
pub trait TcpListener: Send + Sync {
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The next accepted connection and its peer address.
    fn accept(&self) -> BoxFuture<'_, io::Result<(Connection, SocketAddr)>>;
}

/// A running child process. Dropping it kills the process (adapters set kill-on-drop), so an
/// abandoned request can never leave a git process behind.
pub trait ChildProcess: Send {
    /// Waits for the process to exit.
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>>;
    /// Asks the OS to kill the process now; `wait` still reaps it.
    fn start_kill(&mut self) -> io::Result<()>;
    fn id(&self) -> Option<u32>;
}

/// A spawned child with its piped standard streams (each `None` if not piped).
pub struct Child {
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub process: Box<dyn ChildProcess>,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.process.id())
            .finish()
    }
}

/// What graspd-host needs from an async runtime. Implemented by `graspd-tokio` and `graspd-smol`.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// The monotonic clock that [`Runtime::sleep_until`] measures against.
    fn now(&self) -> Instant;

    /// Wall-clock time: deadlines that survive a restart (purgatory expiry) and `since`/`until`
    /// filters, which relays compare with `created_at`.
    fn wall_clock(&self) -> SystemTime;

    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<'static, ()>);

    /// Completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;

    /// Completes `duration` from now on this runtime's clock.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.sleep_until(self.now() + duration)
    }

    /// Binds a TCP listener.
    fn bind_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn TcpListener>>>;

    /// Opens an outbound TCP connection (the relay follower's WebSockets). Name resolution is
    /// the caller's, so it can refuse private addresses before connecting.
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Connection>>;

    /// Runs a blocking closure (filesystem, gix) off the async threads; completes when it
    /// returned. Returns an error if the closure panicked.
    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send>) -> BoxFuture<'static, io::Result<()>>;

    /// Spawns `command` with stdin, stdout and stderr piped, killed when dropped.
    fn spawn_process(&self, command: std::process::Command) -> io::Result<Child>;

    /// Completes when the process is asked to stop (SIGINT or SIGTERM).
    fn shutdown_signal(&self) -> BoxFuture<'static, ()>;
}

/// Seconds since the Unix epoch on the runtime's wall clock (zero before 1970).
pub fn unix_seconds(runtime: &dyn Runtime) -> u64 {
    runtime
        .wall_clock()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs a blocking closure on the runtime's blocking pool and returns its result.
pub async fn unblock<T, F>(runtime: &dyn Runtime, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(None));
    let writer = Arc::clone(&slot);
    runtime
        .spawn_blocking(Box::new(move || {
            let value = work();
            *writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        }))
        .await?;
    let value = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    value.ok_or_else(|| io::Error::other("blocking task ended without a result"))
}
