//! A file system that holds every write in process memory until the file is fsynced, so that
//! killing the process loses exactly what a power cut would lose from the page cache: what
//! was written but not yet synced. Made for power-loss runs of whole servers (the chaos
//! harness starts its nodes with the server's `--unsynced-writes-in-memory`), in the spirit of
//! Jepsen's LazyFS, where the in-memory [`MemFs`](super::MemFs) cannot be used because the
//! synced data must outlive the process.
//!
//! The model, and where it is weaker than a real power cut:
//! - Contents: a write is visible at once to every handle of the file (one shared overlay per
//!   path), and reaches the inner file system only when some handle calls `sync_data`, which
//!   writes the overlay out and then syncs. A crash drops the overlay whole; it never tears a
//!   write in the middle (MemFs's tests do that in-process).
//! - Truncation and extension (`set_len`) go to the inner file system at once, and names
//!   (create, rename, remove, directories) are as durable as the inner file system makes
//!   them: losing a name or an un-synced truncation is MemFs's job in the server's tests.
//! - When the last handle of a file is dropped (a segment closed, the process exiting
//!   cleanly) its overlay is written out without a sync, as the kernel would write back dirty
//!   pages eventually: a clean stop loses nothing a real one would keep.
//!
//! Invariant: for every open path, inner file contents overlaid with the pending extents (in
//! write order, later writes winning) is exactly what a real file would hold.

use super::{File, FileSystem};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Writes held since the last sync: non-overlapping extents by start offset.
#[derive(Debug, Default)]
struct Pending(BTreeMap<u64, Vec<u8>>);

impl Pending {
    /// Records a write, cutting whatever it overlaps out of earlier extents.
    fn write(&mut self, buf: &[u8], pos: u64) {
        if buf.is_empty() {
            return;
        }
        let end = pos + buf.len() as u64;
        let overlapping: Vec<u64> = self
            .0
            .range(..end)
            .filter(|(start, data)| **start + data.len() as u64 > pos)
            .map(|(start, _)| *start)
            .collect();
        for start in overlapping {
            let data = self.0.remove(&start).expect("listed above");
            let data_end = start + data.len() as u64;
            if start < pos {
                self.0
                    .insert(start, data[..(pos - start) as usize].to_vec());
            }
            if data_end > end {
                self.0.insert(end, data[(end - start) as usize..].to_vec());
            }
        }
        self.0.insert(pos, buf.to_vec());
    }

    /// Drops whatever lies at or past `len`.
    fn truncate(&mut self, len: u64) {
        let cut: Vec<u64> = self
            .0
            .iter()
            .filter(|(start, data)| **start + data.len() as u64 > len)
            .map(|(start, _)| *start)
            .collect();
        for start in cut {
            let data = self.0.remove(&start).expect("listed above");
            if start < len {
                self.0
                    .insert(start, data[..(len - start) as usize].to_vec());
            }
        }
    }

    /// One past the last pending byte (0 when nothing is pending).
    fn end(&self) -> u64 {
        self.0
            .iter()
            .next_back()
            .map_or(0, |(start, data)| start + data.len() as u64)
    }

    /// Writes every extent to `inner`, in offset order; what was written is no longer pending.
    fn write_out(&mut self, inner: &dyn File) -> io::Result<()> {
        while let Some((start, data)) = self.0.pop_first() {
            if let Err(e) = inner.write_all_at(&data, start) {
                self.0.insert(start, data);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct LazyFile {
    inner: Arc<dyn File>,
    pending: Mutex<Pending>,
}

impl LazyFile {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves extents that are each whole: still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LazyFile {
    fn drop(&mut self) {
        // The last handle is gone: the kernel would write the dirty pages back in time.
        let inner = self.inner.clone();
        if let Err(e) = self.pending().write_out(&*inner) {
            tracing::warn!(error = %e, "writing back a closed file's unsynced writes");
        }
    }
}

impl File for LazyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let pending = self.pending();
        let len = self.inner.len()?.max(pending.end());
        let n = (len.saturating_sub(pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let buf = &mut buf[..n];
        // What the disk has (a sparse hole or a short file reads as zeros), then the pending
        // writes over it.
        let got = self.inner.read_full_at(buf, pos)?;
        buf[got..].fill(0);
        let end = pos + n as u64;
        for (&start, data) in pending.0.range(..end) {
            let data_end = start + data.len() as u64;
            if data_end <= pos {
                continue;
            }
            let from = start.max(pos);
            let to = data_end.min(end);
            buf[(from - pos) as usize..(to - pos) as usize]
                .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
        }
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.pending().write(buf, pos);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut pending = self.pending();
        pending.write_out(&*self.inner)?;
        drop(pending);
        self.inner.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pending = self.pending();
        // Applied to the disk at once (see the module docs); pending bytes past it are gone,
        // and the bytes a shrink removed read as zeros if the file grows again.
        pending.truncate(len);
        self.inner.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        let pending = self.pending();
        Ok(self.inner.len()?.max(pending.end()))
    }
}

/// A file system that keeps unsynced writes in memory; see the module docs.
#[derive(Debug)]
pub struct LazyFs {
    inner: Arc<dyn FileSystem>,
    /// The live handle of each open path, so every opener shares one overlay.
    open: Mutex<HashMap<PathBuf, Weak<LazyFile>>>,
}

impl LazyFs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn FileSystem>) -> Self {
        Self {
            inner,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open_files(&self) -> MutexGuard<'_, HashMap<PathBuf, Weak<LazyFile>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FileSystem for LazyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let mut open = self.open_files();
        if let Some(f) = open.get(path).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let f = Arc::new(LazyFile {
            inner: self.inner.open(path, create)?,
            pending: Mutex::default(),
        });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(path.to_path_buf(), Arc::downgrade(&f));
        Ok(f)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if let Some(f) = self.open_files().remove(path).and_then(|w| w.upgrade()) {
            // Still open elsewhere: its unsynced writes die with the name.
            f.pending().0.clear();
        }
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.open_files().retain(|p, w| {
            let under = p.starts_with(path);
            if under && let Some(f) = w.upgrade() {
                f.pending().0.clear();
            }
            !under
        });
        self.inner.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)?;
        let mut open = self.open_files();
        // The overlay follows the file; whatever was open at `to` is now unnamed.
        if let Some(gone) = open.remove(to).and_then(|w| w.upgrade()) {
            gone.pending().0.clear();
        }
        if let Some(w) = open.remove(from) {
            open.insert(to.to_path_buf(), w);
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.read_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    fn setup() -> (Arc<MemFs>, LazyFs) {
        let mem = Arc::new(MemFs::new());
        mem.create_dir_all_durable(Path::new("/d")).unwrap();
        let lazy = LazyFs::new(mem.clone());
        (mem, lazy)
    }

    fn read_all(f: &dyn File) -> Vec<u8> {
        let mut buf = vec![0u8; f.len().unwrap() as usize];
        let n = f.read_full_at(&mut buf, 0).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn unsynced_writes_are_seen_by_every_handle_and_reach_the_disk_only_at_fsync() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/a");
        let f = lazy.open(p, true).unwrap();
        lazy.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b"hello world", 0).unwrap();
        let g = lazy.open(p, false).unwrap();
        assert_eq!(read_all(&*g), b"hello world");
        assert_eq!(
            mem.read_file(p).unwrap(),
            b"",
            "nothing on disk before the sync"
        );
        f.write_all_at(b"W", 6).unwrap();
        f.write_all_at(b"!!", 11).unwrap();
        assert_eq!(read_all(&*g), b"hello World!!");
        g.sync_data().unwrap();
        assert_eq!(mem.read_file(p).unwrap(), b"hello World!!");
        // After a crash only what was synced is left.
        f.write_all_at(b"lost", 13).unwrap();
        assert_eq!(f.len().unwrap(), 17);
        mem.crash();
        assert_eq!(mem.read_file(p).unwrap(), b"hello World!!");
    }

    #[test]
    fn overlapping_writes_keep_the_latest_bytes() {
        let mut p = Pending::default();
        p.write(b"aaaaaaaa", 0);
        p.write(b"bb", 3);
        p.write(b"cccc", 6);
        p.write(b"d", 0);
        let mut out = vec![b'.'; 12];
        for (s, d) in &p.0 {
            out[*s as usize..*s as usize + d.len()].copy_from_slice(d);
        }
        assert_eq!(&out, b"daabbacccc..");
        p.truncate(7);
        assert_eq!(p.end(), 7);
    }

    #[test]
    fn a_shrink_drops_pending_bytes_past_it_and_reads_stop_there() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/b");
        let f = lazy.open(p, true).unwrap();
        f.write_all_at(b"0123456789", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"abcdef", 8).unwrap();
        f.set_len(5).unwrap();
        assert_eq!(read_all(&*f), b"01234");
        f.write_all_at(b"X", 7).unwrap();
        assert_eq!(
            read_all(&*f),
            b"01234\0\0X",
            "the gap reads as zeros, not old bytes"
        );
        f.sync_data().unwrap();
        assert_eq!(mem.read_file(p).unwrap(), b"01234\0\0X");
    }

    #[test]
    fn closing_the_last_handle_writes_back_without_a_sync() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/c");
        let f = lazy.open(p, true).unwrap();
        f.write_all_at(b"kept on a clean stop", 0).unwrap();
        drop(f);
        assert_eq!(mem.read_file(p).unwrap(), b"kept on a clean stop");
    }

    #[test]
    fn a_rename_carries_the_unsynced_writes_along() {
        let (mem, lazy) = setup();
        let (from, to) = (Path::new("/d/tmp"), Path::new("/d/final"));
        let f = lazy.open(from, true).unwrap();
        f.write_all_at(b"snapshot", 0).unwrap();
        lazy.rename(from, to).unwrap();
        let g = lazy.open(to, false).unwrap();
        assert_eq!(read_all(&*g), b"snapshot");
        g.sync_data().unwrap();
        assert_eq!(mem.read_file(to).unwrap(), b"snapshot");
    }
}
