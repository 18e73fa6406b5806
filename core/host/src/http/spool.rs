//! A request body received to a file before git sees it, so no repository lock is held while a
//! client takes its time: the body arrives (bounded by the body limits) with no lock, and git
//! later reads it from local disk.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::io::AsyncRead;
use futures_util::{stream, StreamExt, TryStreamExt};

use super::body::{BodyError, RequestBody};
use crate::runtime::{unblock, Runtime};

/// Bytes gathered in memory before each write to the file.
const WRITE_CHUNK: usize = 1024 * 1024;

/// Bytes handed to git per read of the file.
const READ_CHUNK: usize = 256 * 1024;

/// Why a body could not be spooled.
#[derive(Debug)]
pub enum SpoolError {
    Body(BodyError),
    Io(io::Error),
}

/// A request body on disk; the file is removed when this is dropped.
#[derive(Debug)]
pub struct Spooled {
    path: PathBuf,
    len: u64,
}

/// Writes `head` and then the rest of `body` to a new file at `path`.
pub async fn spool(
    runtime: &Arc<dyn Runtime>,
    path: PathBuf,
    head: Vec<u8>,
    body: &mut RequestBody,
) -> Result<Spooled, SpoolError> {
    let create = path.clone();
    let file = unblock(&**runtime, move || {
        if let Some(dir) = create.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::create(create)
    })
    .await
    .and_then(|r| r)
    .map_err(SpoolError::Io)?;
    // From here on the file is removed however this ends.
    let mut spooled = Spooled { path, len: 0 };
    let mut file = Some(file);
    let mut pending = head;
    loop {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => return Err(SpoolError::Body(BodyError::from_io_error(&e))),
            None => None,
        };
        let last = chunk.is_none();
        if let Some(chunk) = chunk {
            pending.extend_from_slice(&chunk);
        }
        if pending.len() >= WRITE_CHUNK || (last && !pending.is_empty()) {
            let mut open = file.take().expect("the file is put back after every write");
            let data = std::mem::take(&mut pending);
            spooled.len += data.len() as u64;
            let written = unblock(&**runtime, move || open.write_all(&data).map(|()| open))
                .await
                .and_then(|r| r)
                .map_err(SpoolError::Io)?;
            file = Some(written);
        }
        if last {
            return Ok(spooled);
        }
    }
}

impl Spooled {
    /// Bytes spooled (the whole request).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The body, read back in chunks off the async threads.
    pub fn reader(&self, runtime: &Arc<dyn Runtime>) -> io::Result<impl AsyncRead + Send + Unpin> {
        let file = File::open(&self.path)?;
        let runtime = Arc::clone(runtime);
        let chunks = stream::try_unfold(file, move |mut file| {
            let runtime = Arc::clone(&runtime);
            async move {
                let (file, chunk) = unblock(&*runtime, move || {
                    let mut buf = vec![0u8; READ_CHUNK];
                    let n = file.read(&mut buf)?;
                    buf.truncate(n);
                    Ok::<_, io::Error>((file, buf))
                })
                .await??;
                Ok((!chunk.is_empty()).then_some((chunk, file)))
            }
        });
        Ok(chunks.boxed().into_async_read())
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
