//! The narrow file-system interface the log does all its IO through.
//!
//! Two implementations: [`StdFs`], the real one, and [`MemFs`], an in-memory one that keeps
//! what was written apart from what was made durable, so tests can inject faults (short writes,
//! ENOSPC, fsync errors) and simulate a power loss that drops everything not yet synced. Two
//! wrappers serve fault-injection runs of whole servers: [`FaultyFs`] fails or slows down on
//! command, and [`LazyFs`] holds unsynced writes in process memory and undoes unsynced name
//! changes at the next start, so that killing the process is a power cut.
//!
//! The interface is positional (`read_at`/`write_all_at`, like `pread`/`pwrite`): many readers
//! can share one handle with the single writer without a cursor to fight over, and a reader of a
//! file that was truncated under it sees a short read, never a fault (unlike a memory map).

mod faulty_fs;
mod lazy_fs;
mod mem_fs;
mod std_fs;

pub use faulty_fs::{DiskFault, FaultSwitch, FaultyFs};
pub use lazy_fs::LazyFs;
pub use mem_fs::{MemFs, MemFsFaults};
pub use std_fs::StdFs;

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open file. Shared (`Arc`) between the writer, readers and group-commit syncers.
#[allow(clippy::len_without_is_empty)] // a file of length 0 is not a special case here
pub trait File: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `pos`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `pos`. On error, any prefix of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;

    /// Makes everything written so far durable (`fdatasync`).
    ///
    /// After an error the file's durable state is unknown: callers must stop writing (the log
    /// poisons itself) rather than retry, since a retried fsync may report success for data the
    /// kernel already dropped.
    fn sync_data(&self) -> io::Result<()>;

    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Current length of the file.
    fn len(&self) -> io::Result<u64>;

    /// Reads at `pos` until `buf` is full or the file ends; returns the bytes read.
    fn read_full_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// A file system: directories and the files in them.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates `path` and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Opens `path` for reading and writing, creating it (empty) when `create` is true.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>>;

    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Renames a file, replacing any file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Lists the entries of a directory (full paths, in no particular order).
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;

    /// True if a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;

    /// Makes the directory's entries durable: files created, removed or renamed in it since
    /// the last call survive a power loss only after this returns.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Creates `path` and any missing parents, and makes every new name durable: each
    /// directory it was created in is fsynced, and so is `path`'s parent even when `path`
    /// already existed (an earlier run may have created it and stopped before the sync). A new
    /// name is durable only once its directory is fsynced (POSIX; ext4 and xfs usually order
    /// it for you, other file systems do not), and a directory that vanishes in a power loss
    /// takes every file in it along, however well each file was fsynced.
    fn create_dir_all_durable(&self, path: &Path) -> io::Result<()> {
        let missing: Vec<&Path> = path.ancestors().take_while(|p| !self.exists(p)).collect();
        self.create_dir_all(path)?;
        let mut synced: Vec<&Path> = Vec::new();
        for dir in missing.iter().rev().copied().chain(std::iter::once(path)) {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
                && !synced.contains(&parent)
            {
                self.sync_dir(parent)?;
                synced.push(parent);
            }
        }
        Ok(())
    }
}
