//! The store's disk: a redb storage backend in memory that loses what was not synced when the
//! server crashes, like a file after `kill -9` on a machine that then loses power.
//!
//! Writes go to the live image and are remembered until `sync_data` (redb's durable commit)
//! copies them into the durable image. [`Disk::crash`] throws the live image away and cuts
//! off the crashed incarnation's handle, so nothing the dead server's destructors do reaches
//! the next one; [`Disk::backend`] then opens the durable image.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Image {
    durable: Vec<u8>,
    live: Vec<u8>,
    /// Writes and length changes since the last sync, in order.
    unsynced: Vec<Change>,
    incarnation: u64,
    syncs: u64,
    /// Syncs keep nothing: a crash loses every write (a disk that lies about flushing).
    lying: bool,
}

enum Change {
    Write(u64, Vec<u8>),
    Len(u64),
}

/// The disk; survives crashes. Cheap to clone.
#[derive(Clone, Default)]
pub struct Disk(Arc<Mutex<Image>>);

/// One incarnation's view of the disk, given to redb.
pub struct Backend {
    disk: Disk,
    incarnation: u64,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl Disk {
    pub fn new() -> Disk {
        Disk::default()
    }

    fn image(&self) -> MutexGuard<'_, Image> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A disk whose syncs do nothing, so a crash loses every write (for checking the checks).
    pub fn lying() -> Disk {
        let disk = Disk::default();
        disk.image().lying = true;
        disk
    }

    /// A backend for the current incarnation.
    pub fn backend(&self) -> Backend {
        Backend {
            disk: self.clone(),
            incarnation: self.image().incarnation,
        }
    }

    /// The power goes out: unsynced writes are lost, the old backend is cut off.
    pub fn crash(&self) {
        let mut image = self.image();
        image.live = image.durable.clone();
        image.unsynced.clear();
        image.incarnation += 1;
    }

    /// Durable commits so far.
    pub fn syncs(&self) -> u64 {
        self.image().syncs
    }
}

fn resize(bytes: &mut Vec<u8>, len: u64) -> io::Result<()> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("length out of range"))?;
    bytes.resize(len, 0);
    Ok(())
}

fn write_at(bytes: &mut [u8], offset: u64, data: &[u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset out of range"))?;
    let target = bytes
        .get_mut(start..start + data.len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past the end"))?;
    target.copy_from_slice(data);
    Ok(())
}

impl Backend {
    fn image(&self) -> io::Result<MutexGuard<'_, Image>> {
        let image = self.disk.image();
        if image.incarnation == self.incarnation {
            Ok(image)
        } else {
            Err(io::Error::other("this server crashed; its disk is gone"))
        }
    }
}

impl redb::StorageBackend for Backend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.image()?.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let image = self.image()?;
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset out of range"))?;
        let source = image
            .live
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut image = self.image()?;
        resize(&mut image.live, len)?;
        image.unsynced.push(Change::Len(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut image = self.image()?;
        let image = &mut *image;
        image.syncs += 1;
        if image.lying {
            return Ok(());
        }
        for change in image.unsynced.drain(..) {
            match change {
                Change::Len(len) => resize(&mut image.durable, len)?,
                Change::Write(offset, data) => write_at(&mut image.durable, offset, &data)?,
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut image = self.image()?;
        write_at(&mut image.live, offset, data)?;
        image.unsynced.push(Change::Write(offset, data.to_vec()));
        Ok(())
    }
}
