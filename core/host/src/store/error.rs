//! What can go wrong with the store, phrased so an operator knows what to do.

use std::fmt;
use std::path::PathBuf;

/// A store failure. Every variant names the file or database; opening failures say how to recover.
///
/// graspd never deletes or overwrites a store file it cannot read: recovery is always the
/// operator's decision (move the file aside, restore a backup, or upgrade graspd).
#[derive(Debug)]
pub enum StoreError {
    /// The file exists but is not a redb database, or is damaged.
    Unreadable { path: PathBuf, detail: String },
    /// The file was written by a newer graspd with a store format this build does not know.
    NewerFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// Another process (probably another graspd) has the file open.
    InUse { path: PathBuf },
    /// Reading or writing failed while the server was running (disk full, IO error, ...).
    /// For PostgreSQL, `path` is the database's URL without its password.
    Io { path: PathBuf, detail: String },
    /// The PostgreSQL database (`--database-url`, shown without its password) cannot be
    /// reached or prepared at start-up.
    Database { url: String, detail: String },
    /// The PostgreSQL database's schema was migrated by a newer graspd.
    NewerSchema {
        url: String,
        found: u64,
        supported: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unreadable { path, detail } => write!(
                f,
                "cannot open the event store {}: {detail}. graspd leaves the file untouched: if \
                 it is damaged, move it aside (for example `mv {0} {0}.broken`) and restart to \
                 begin with an empty store, or put a backup in its place",
                path.display()
            ),
            StoreError::NewerFormat {
                path,
                found,
                supported,
            } => write!(
                f,
                "the event store {} has format version {found}, but this graspd understands \
                 only up to version {supported}: it was written by a newer graspd. Run that \
                 newer version, or move the file aside (for example `mv {0} {0}.newer`) to start \
                 with an empty store; graspd leaves the file untouched",
                path.display()
            ),
            StoreError::InUse { path } => write!(
                f,
                "the event store {} is already open in another process (is another graspd \
                 running with the same data directory?)",
                path.display()
            ),
            StoreError::Io { path, detail } => {
                write!(f, "event store {}: {detail}", path.display())
            }
            StoreError::Database { url, detail } => write!(
                f,
                "cannot use the PostgreSQL database {url}: {detail}. Check that it is running \
                 and reachable, and that --database-url (GRASPD_DATABASE_URL) names it with a \
                 user allowed to create tables"
            ),
            StoreError::NewerSchema {
                url,
                found,
                supported,
            } => write!(
                f,
                "the PostgreSQL database {url} has schema version {found}, but this graspd \
                 understands only up to version {supported}: it was migrated by a newer graspd. \
                 Run that newer version, or point --database-url at another database; graspd \
                 leaves this one untouched"
            ),
        }
    }
}

impl std::error::Error for StoreError {}
