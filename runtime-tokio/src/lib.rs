//! graspd's runtime adapter for tokio: [`TokioRuntime`] implements [`graspd_host::Runtime`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use graspd_host::runtime::{BoxFuture, Child, ChildProcess, Connection, TcpListener};
use graspd_host::Runtime;
use tokio::io::ReadBuf;

/// Runs graspd's tasks, timers, sockets and processes on a tokio runtime.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    pub fn new(handle: tokio::runtime::Handle) -> TokioRuntime {
        TokioRuntime { handle }
    }

    /// The runtime this is called from. Panics outside a tokio runtime.
    pub fn current() -> TokioRuntime {
        TokioRuntime::new(tokio::runtime::Handle::current())
    }
}

impl Runtime for TokioRuntime {
    fn now(&self) -> Instant {
        // tokio's clock, which `sleep_until` measures against (and a paused test clock moves).
        tokio::time::Instant::now().into_std()
    }

    fn wall_clock(&self) -> SystemTime {
        SystemTime::now()
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.handle.spawn(future);
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let _context = self.handle.enter();
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn bind_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn TcpListener>>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            let listener = handle.spawn(tokio::net::TcpListener::bind(addr)).await??;
            Ok(Box::new(TokioListener(listener)) as Box<dyn TcpListener>)
        })
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Connection>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            let stream = handle.spawn(tokio::net::TcpStream::connect(addr)).await??;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(Compat(stream)) as Connection)
        })
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send>) -> BoxFuture<'static, io::Result<()>> {
        let task = self.handle.spawn_blocking(work);
        Box::pin(async move { task.await.map_err(io::Error::other) })
    }

    fn spawn_process(&self, command: std::process::Command) -> io::Result<Child> {
        let _context = self.handle.enter();
        let mut command = tokio::process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        Ok(Child {
            stdin: child.stdin.take().map(|s| Box::new(Compat(s)) as _),
            stdout: child.stdout.take().map(|s| Box::new(Compat(s)) as _),
            stderr: child.stderr.take().map(|s| Box::new(Compat(s)) as _),
            process: Box::new(TokioChild(child)),
        })
    }

    fn shutdown_signal(&self) -> BoxFuture<'static, ()> {
        let handle = self.handle.clone();
        Box::pin(async move {
            // Signal streams must be created inside the runtime.
            let _ = handle.spawn(shutdown_signal()).await;
        })
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct TokioListener(tokio::net::TcpListener);

impl TcpListener for TokioListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(Connection, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(Compat(stream)) as Connection, peer))
        })
    }
}

struct TokioChild(tokio::process::Child);

impl ChildProcess for TokioChild {
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(self.0.wait())
    }

    fn start_kill(&mut self) -> io::Result<()> {
        self.0.start_kill()
    }

    fn id(&self) -> Option<u32> {
        self.0.id()
    }
}

/// tokio's IO traits seen as futures-io's.
struct Compat<T>(T);

impl<T: tokio::io::AsyncRead + Unpin> futures_io::AsyncRead for Compat<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut read_buf = ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read_buf.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> futures_io::AsyncWrite for Compat<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
