//! Request bodies (gzip or identity, chunked or not, capped after decoding) and response
//! bodies (buffered, or streamed from a git process).

use std::fmt;
use std::io::{self, Write};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::io::AsyncRead;
use futures_util::{future, Stream};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};

use crate::runtime::{ChildProcess, Runtime};

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

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// More than `limit` bytes (after gzip decoding).
    TooLarge {
        limit: u64,
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
}

/// How long an unwanted request body is read and dropped after an early answer.
pub const LINGER: Duration = Duration::from_secs(30);

/// Compressed input is fed to the decoder in slices this big, so one chunk of a gzip bomb
/// can only expand so far before the limit is checked.
const GZIP_SLICE: usize = 8 * 1024;

/// A request body as a stream of decoded chunks, failing once it exceeds its limit.
pub struct RequestBody {
    incoming: Incoming,
    gzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    limit: u64,
    decoded: u64,
    done: bool,
}

impl RequestBody {
    pub fn new(incoming: Incoming, gzip: bool, limit: u64) -> RequestBody {
        RequestBody {
            incoming,
            gzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            limit,
            decoded: 0,
            done: false,
        }
    }

    /// Reads the whole body into memory.
    pub async fn collect(&mut self) -> Result<Bytes, BodyError> {
        use futures_util::StreamExt;
        let mut out = Vec::new();
        while let Some(chunk) = self.next().await {
            out.extend_from_slice(&chunk.map_err(|e| to_body_error(&e))?);
        }
        Ok(out.into())
    }

    /// Reads and drops whatever the client still sends, in the background, for at most
    /// [`LINGER`]: a client that is still uploading when we answer early (413, a refused
    /// push) then reads our answer instead of a connection reset (nginx's "lingering close").
    pub fn linger(self, runtime: &Arc<dyn Runtime>) {
        let mut incoming = self.incoming;
        let deadline = runtime.sleep(LINGER);
        runtime.spawn(Box::pin(async move {
            let drain = async { while let Some(Ok(_)) = incoming.frame().await {} };
            future::select(pin!(drain), deadline).await;
        }));
    }

    fn decode(&mut self, data: &[u8]) -> Result<Bytes, BodyError> {
        let out = match &mut self.gzip {
            None => Bytes::copy_from_slice(data),
            Some(decoder) => {
                let mut out = Vec::new();
                for slice in data.chunks(GZIP_SLICE) {
                    decoder
                        .write_all(slice)
                        .map_err(|e| BodyError::BadGzip(e.to_string()))?;
                    out.append(decoder.get_mut());
                    check(self.decoded, out.len() as u64, self.limit)?;
                }
                out.into()
            }
        };
        check(self.decoded, out.len() as u64, self.limit)?;
        self.decoded += out.len() as u64;
        Ok(out)
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

fn to_body_error(e: &io::Error) -> BodyError {
    BodyError::from_io(e)
        .cloned()
        .unwrap_or_else(|| BodyError::Read(e.to_string()))
}

impl Stream for RequestBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let result = match ready!(Pin::new(&mut this.incoming).poll_frame(cx)) {
                None => {
                    this.done = true;
                    this.finish()
                }
                Some(Err(e)) => Err(BodyError::Read(e.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.decode(&data),
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

/// A response body streamed from a git process's stdout; dropping it kills the process.
pub struct ProcessBody {
    stdout: Box<dyn AsyncRead + Send + Unpin>,
    _process: Box<dyn ChildProcess>,
    buf: Box<[u8]>,
    done: bool,
}

impl ProcessBody {
    pub fn new(stdout: Box<dyn AsyncRead + Send + Unpin>, process: Box<dyn ChildProcess>) -> Self {
        ProcessBody {
            stdout,
            _process: process,
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
        match ready!(Pin::new(&mut this.stdout).poll_read(cx, &mut this.buf)) {
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
