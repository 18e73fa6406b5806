//! Request bodies (gzip or identity, chunked or not, capped after decoding) and response
//! bodies (buffered, or streamed from a git process).

use std::fmt;
use std::io::{self, Write};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::io::AsyncRead;
use futures_util::{future, Stream};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};

use crate::git::process::Watched;
use crate::runtime::{BoxFuture, Runtime};

/// Every response body.
pub type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// How much and how slowly a client may send.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    /// Largest body (a push's pack) after gzip decoding.
    pub max_bytes: u64,
    /// Largest `git-upload-pack` body (fetch negotiation: wants and haves) after decoding.
    pub max_upload_request_bytes: u64,
    /// A body that sends nothing for this long is ended.
    pub idle_timeout: Duration,
    /// A body still arriving after this long is ended.
    pub total_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> BodyLimits {
        BodyLimits {
            max_bytes: 512 * 1024 * 1024,
            max_upload_request_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(3600),
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// More than `limit` bytes (after gzip decoding).
    TooLarge {
        limit: u64,
    },
    /// No byte arrived for `secs` seconds.
    Idle {
        secs: u64,
    },
    /// The body was still arriving after `secs` seconds.
    TooSlow {
        secs: u64,
    },
    BadGzip(String),
    Read(String),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge { limit } => {
                write!(
                    f,
                    "request body larger than this server's limit of {limit} bytes"
                )
            }
            BodyError::Idle { secs } => {
                write!(f, "request body sent nothing for {secs} s; try again")
            }
            BodyError::TooSlow { secs } => write!(
                f,
                "request body took longer than this server's limit of {secs} s"
            ),
            BodyError::BadGzip(e) => write!(f, "request body is not valid gzip: {e}"),
            BodyError::Read(e) => write!(f, "reading the request body failed: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    /// The `BodyError` inside an `io::Error` made by [`RequestBody`], if any.
    pub fn from_io(error: &io::Error) -> Option<&BodyError> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<BodyError>())
    }

    /// What went wrong reading a body, from the `io::Error` a [`RequestBody`] gave.
    pub fn from_io_error(error: &io::Error) -> BodyError {
        BodyError::from_io(error)
            .cloned()
            .unwrap_or_else(|| BodyError::Read(error.to_string()))
    }

    /// A timeout, as opposed to a size or format problem.
    pub fn is_timeout(&self) -> bool {
        matches!(self, BodyError::Idle { .. } | BodyError::TooSlow { .. })
    }
}

/// How long an unwanted request body is read and dropped after an early answer.
pub const LINGER: Duration = Duration::from_secs(30);

/// Compressed input is fed to the decoder in slices this big, so one chunk of a gzip bomb
/// can only expand so far (deflate's ratio is at most about 1:1032, so 1 MiB) before the
/// limit is checked.
const GZIP_SLICE: usize = 1024;

/// Inflated bytes handed on at once: what is left of a received chunk waits, compressed,
/// until these are taken, so a request's memory does not grow with its size limit.
const INFLATED_CHUNK: usize = 256 * 1024;

/// Reads and drops `incoming` in the background for at most [`LINGER`] (see
/// [`RequestBody::linger`]).
pub fn linger(runtime: &Arc<dyn Runtime>, mut incoming: Incoming) {
    let deadline = runtime.sleep(LINGER);
    runtime.spawn(Box::pin(async move {
        let drain = async { while let Some(Ok(_)) = incoming.frame().await {} };
        future::select(pin!(drain), deadline).await;
    }));
}

/// A request body as a stream of decoded chunks, failing once it exceeds its size limit or
/// its client stalls (see [`BodyLimits`]).
pub struct RequestBody {
    incoming: Incoming,
    gzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    /// Compressed bytes received but not inflated yet.
    uninflated: Bytes,
    limit: u64,
    decoded: u64,
    done: bool,
    clock: BodyClock,
}

/// The idle and total deadlines of one body. The idle time counts from when the reader
/// started waiting for the client, so time the server spent elsewhere is never charged to it.
struct BodyClock {
    runtime: Arc<dyn Runtime>,
    idle: Duration,
    total: Duration,
    started: Instant,
    waiting_since: Option<Instant>,
    alarm: Option<(Instant, BoxFuture<'static, ()>)>,
}

impl BodyClock {
    /// The error if a deadline has passed; otherwise arms a wake-up for the next one.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<BodyError> {
        loop {
            let now = self.runtime.now();
            let waiting_since = *self.waiting_since.get_or_insert(now);
            let (idle_at, total_at) = (waiting_since + self.idle, self.started + self.total);
            if now >= total_at {
                return Some(BodyError::TooSlow {
                    secs: self.total.as_secs(),
                });
            }
            if now >= idle_at {
                return Some(BodyError::Idle {
                    secs: self.idle.as_secs(),
                });
            }
            let at = idle_at.min(total_at);
            // An alarm armed for an earlier deadline is kept: when it rings, the deadlines
            // are checked again and the next one armed.
            if !matches!(&self.alarm, Some((armed, _)) if *armed <= at) {
                self.alarm = Some((at, self.runtime.sleep_until(at)));
            }
            let (_, alarm) = self.alarm.as_mut().expect("armed above");
            if alarm.as_mut().poll(cx).is_pending() {
                return None;
            }
            self.alarm = None;
        }
    }
}

impl RequestBody {
    pub fn new(
        runtime: &Arc<dyn Runtime>,
        incoming: Incoming,
        gzip: bool,
        limit: u64,
        limits: &BodyLimits,
    ) -> RequestBody {
        RequestBody {
            incoming,
            gzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            uninflated: Bytes::new(),
            limit,
            decoded: 0,
            done: false,
            clock: BodyClock {
                runtime: Arc::clone(runtime),
                idle: limits.idle_timeout,
                total: limits.total_timeout,
                started: runtime.now(),
                waiting_since: None,
                alarm: None,
            },
        }
    }

    /// Reads and drops whatever the client still sends, in the background, for at most
    /// [`LINGER`]: a client that is still uploading when we answer early (413, a refused
    /// push) then reads our answer instead of a connection reset (nginx's "lingering close").
    pub fn linger(self, runtime: &Arc<dyn Runtime>) {
        linger(runtime, self.incoming);
    }

    /// A received chunk: passed on as it is, or kept to be inflated ([`Self::inflate`]).
    fn decode(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        if self.gzip.is_some() {
            self.uninflated = data;
            return self.inflate();
        }
        check(self.decoded, data.len() as u64, self.limit)?;
        self.decoded += data.len() as u64;
        Ok(data)
    }

    /// Inflates what was received, up to about [`INFLATED_CHUNK`] bytes of output.
    fn inflate(&mut self) -> Result<Bytes, BodyError> {
        let Some(decoder) = &mut self.gzip else {
            return Ok(Bytes::new());
        };
        let mut out = Vec::new();
        while !self.uninflated.is_empty() && out.len() < INFLATED_CHUNK {
            let slice = self
                .uninflated
                .split_to(self.uninflated.len().min(GZIP_SLICE));
            decoder
                .write_all(&slice)
                .map_err(|e| BodyError::BadGzip(e.to_string()))?;
            out.append(decoder.get_mut());
            check(self.decoded, out.len() as u64, self.limit)?;
        }
        self.decoded += out.len() as u64;
        Ok(out.into())
    }

    fn finish(&mut self) -> Result<Bytes, BodyError> {
        let Some(decoder) = &mut self.gzip else {
            return Ok(Bytes::new());
        };
        decoder
            .try_finish()
            .map_err(|e| BodyError::BadGzip(e.to_string()))?;
        let out = std::mem::take(decoder.get_mut());
        check(self.decoded, out.len() as u64, self.limit)?;
        self.decoded += out.len() as u64;
        Ok(out.into())
    }
}

fn check(decoded: u64, pending: u64, limit: u64) -> Result<(), BodyError> {
    if decoded.saturating_add(pending) > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(())
}

impl Stream for RequestBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.uninflated.is_empty() {
                match this.inflate() {
                    Ok(chunk) if chunk.is_empty() => continue,
                    Ok(chunk) => return Poll::Ready(Some(Ok(chunk))),
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(io::Error::other(e))));
                    }
                }
            }
            let frame = match Pin::new(&mut this.incoming).poll_frame(cx) {
                Poll::Ready(frame) => {
                    this.clock.waiting_since = None;
                    frame
                }
                Poll::Pending => match this.clock.poll_expired(cx) {
                    None => return Poll::Pending,
                    Some(expired) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(io::Error::other(expired))));
                    }
                },
            };
            let result = match frame {
                None => {
                    this.done = true;
                    this.finish()
                }
                Some(Err(e)) => Err(BodyError::Read(e.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.decode(data),
                    Err(_trailers) => continue,
                },
            };
            match result {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => return Poll::Ready(Some(Ok(chunk))),
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
            }
        }
    }
}

/// A response body streamed from a git process's stdout; dropping it kills the process. If
/// the process was killed (its deadline, or its request broke a limit), the body ends with an
/// error rather than a clean end, so the client cannot take a cut answer for a whole one.
pub struct ProcessBody {
    stdout: Box<dyn AsyncRead + Send + Unpin>,
    process: Watched,
    /// Read from stdout before the response started, sent first.
    first: Option<Bytes>,
    buf: Box<[u8]>,
    done: bool,
}

impl ProcessBody {
    pub fn new(stdout: Box<dyn AsyncRead + Send + Unpin>, process: Watched, first: Bytes) -> Self {
        ProcessBody {
            stdout,
            process,
            first: (!first.is_empty()).then_some(first),
            buf: vec![0; 64 * 1024].into(),
            done: false,
        }
    }
}

impl Body for ProcessBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match ready!(Pin::new(&mut this.stdout).poll_read(cx, &mut this.buf)) {
            Ok(0) if this.process.was_killed() => {
                this.done = true;
                Poll::Ready(Some(Err(io::Error::other(
                    "git was stopped before its answer was complete",
                ))))
            }
            Ok(0) => {
                this.done = true;
                Poll::Ready(None)
            }
            Ok(n) => Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(
                &this.buf[..n],
            ))))),
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
