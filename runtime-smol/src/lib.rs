//! graspd's runtime adapter for smol: [`SmolRuntime`] implements [`graspd_host::Runtime`]
//! with smol's global executor, async-io timers, async-net, async-process and blocking.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{ExitStatus, Stdio};
use std::time::{Instant, SystemTime};

use graspd_host::runtime::{BoxFuture, Child, ChildProcess, Connection, TcpListener};
use graspd_host::Runtime;
use smol::stream::StreamExt;

/// Runs graspd's tasks on smol's global executor.
#[derive(Clone, Debug, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_clock(&self) -> SystemTime {
        SystemTime::now()
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        smol::spawn(future).detach();
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            async_io::Timer::at(deadline).await;
        })
    }

    fn bind_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn TcpListener>>> {
        Box::pin(async move {
            let listener = async_net::TcpListener::bind(addr).await?;
            Ok(Box::new(SmolListener(listener)) as Box<dyn TcpListener>)
        })
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Connection>> {
        Box::pin(async move {
            let stream = async_net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as Connection)
        })
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send>) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(async move {
            blocking::unblock(move || catch_unwind(AssertUnwindSafe(work)))
                .await
                .map_err(|_| io::Error::other("blocking task panicked"))
        })
    }

    fn spawn_process(&self, command: std::process::Command) -> io::Result<Child> {
        let mut command = async_process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        Ok(Child {
            stdin: child.stdin.take().map(|s| Box::new(s) as _),
            stdout: child.stdout.take().map(|s| Box::new(s) as _),
            stderr: child.stderr.take().map(|s| Box::new(s) as _),
            process: Box::new(SmolChild(child)),
        })
    }

    fn shutdown_signal(&self) -> BoxFuture<'static, ()> {
        use async_signal::{Signal, Signals};
        Box::pin(async move {
            match Signals::new([Signal::Int, Signal::Term]) {
                Ok(mut signals) => {
                    let _ = signals.next().await;
                }
                Err(e) => {
                    warn_no_signals(&e);
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

fn warn_no_signals(error: &io::Error) {
    eprintln!("graspd: cannot watch SIGINT/SIGTERM ({error}); stop the server with SIGKILL");
}

struct SmolListener(async_net::TcpListener);

impl TcpListener for SmolListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(Connection, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as Connection, peer))
        })
    }
}

struct SmolChild(async_process::Child);

impl ChildProcess for SmolChild {
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(self.0.status())
    }

    fn start_kill(&mut self) -> io::Result<()> {
        self.0.kill()
    }

    fn id(&self) -> Option<u32> {
        Some(self.0.id())
    }
}
