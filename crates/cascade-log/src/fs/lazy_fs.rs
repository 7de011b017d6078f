//! A file system that holds every write in process memory until the file is fsynced, and can
//! undo every file-name change until its directory is fsynced, so that killing the process
//! loses what a power cut would lose: what was written, named, renamed or removed but not yet
//! synced. Made for power-loss runs of whole servers (the chaos harness starts its nodes with
//! the server's `--unsynced-writes-in-memory`), in the spirit of Jepsen's LazyFS, where the
//! in-memory [`MemFs`](super::MemFs) cannot be used because the synced data must outlive the
//! process. The point is to attack the server: a code path that forgets a `sync_dir` loses its
//! names to a kill under this layer, so the tests and the chaos runs see it.
//!
//! The model, and where it is weaker than a real power cut:
//! - Contents: a write is visible at once to every handle of the file (one shared overlay per
//!   path), and reaches the inner file system only when some handle calls `sync_data`, which
//!   writes the overlay out and then syncs. A kill drops the overlay whole; it never tears a
//!   write in the middle (MemFs's tests do that in-process).
//! - Names: the layer governs one root (the server's data directory, given to
//!   [`LazyFs::recover`]). Before a file under it is created, removed or renamed, the layer
//!   journals how to undo that, on disk (see `names`), and the next [`LazyFs::recover`] after a
//!   kill undoes, newest first, whatever was not yet durable:
//!   - a file created since its directory's last `sync_dir` is gone again;
//!   - a file removed since then comes back, with the contents the disk held for it (what
//!     was synced, plus what was written back when its last handle closed, as below);
//!   - a rename since then is undone: the source name comes back, and so does the file it
//!     replaced at the target. Within one directory that directory's `sync_dir` makes it
//!     durable. Across two directories it is kept only once *both* were synced after it, and
//!     until then it is undone whole. POSIX's minimum is weaker still (each directory's entry
//!     is durable on its own, so a power cut could leave both names, or neither), but ext4
//!     and xfs commit a rename as one step, and a layer that invented a lost or doubled file
//!     would blame the server for something no file system it runs on does; demanding both
//!     syncs still catches a missing one on either side.
//!
//!   A `sync_dir` covers only operations that began before it. A removed file stays in the
//!   layer's trash, taking its space, until its removal is durable. Operations that do not go
//!   through this layer (the server takes its whole data directory through it, but for a
//!   topic deletion's directory rename and removal), paths outside the root, and renames
//!   between the root and outside are as durable as the inner file system makes them.
//! - Shrinks: a `set_len` that cuts bytes the disk holds is undone (the cut bytes come back)
//!   until a `sync_data` of the file begun after it. The undo is tied to the file's name: a
//!   rename or removal of the file first makes its pending shrinks durable, so a shrink never
//!   lands on another file; a power cut could still undo them. Growing a file goes to the
//!   inner file system at once and is never undone (a power cut may undo an unsynced size).
//! - Directories: `create_dir_all` and `remove_dir_all` are durable at once (a new directory
//!   whose parent was never synced vanishing in a power cut, with all it holds, is MemFs's job
//!   in the server's tests). What was pending inside a removed directory is forgotten, and so
//!   is what was pending in an earlier directory of the same name when one is created anew
//!   (the broker removes topic directories behind the layer's back).
//! - When the last handle of a file is dropped (a segment closed, the process exiting
//!   cleanly) its overlay is written out without a sync, as the kernel would write back dirty
//!   pages eventually; likewise, when the layer itself is dropped every pending name operation
//!   is kept: a clean stop loses nothing a real one would keep.
//! - Only a kill of the process is modelled: the journal and the trash are fsynced before each
//!   operation, but a crash of the host loses whatever the inner file system loses.
//!
//! Invariant: for every open path, inner file contents overlaid with the pending extents (in
//! write order, later writes winning) is exactly what a real file would hold.

mod names;

use super::{File, FileSystem};
use names::Names;
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
    names: Arc<Names>,
    /// The file's name while it has one (renames move it, a removal clears it): a shrink is
    /// journaled under it.
    path: Mutex<Option<PathBuf>>,
}

impl LazyFile {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves extents that are each whole: still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self) -> MutexGuard<'_, Option<PathBuf>> {
        self.path.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a simulated kill a handle reaches nothing, as one of a dead process would.
    fn alive(&self) -> io::Result<()> {
        if self.names.killed() {
            return Err(io::Error::other("the lazy file system was killed"));
        }
        Ok(())
    }
}

impl Drop for LazyFile {
    fn drop(&mut self) {
        if self.names.killed() {
            return;
        }
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
        self.alive()?;
        self.pending().write(buf, pos);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.alive()?;
        // Only shrinks journaled before the sync began are covered by it.
        let before = Names::next_id(&self.names.lock());
        let mut pending = self.pending();
        pending.write_out(&*self.inner)?;
        drop(pending);
        self.inner.sync_data()?;
        let mut j = self.names.lock();
        let path = self.path().clone();
        match path {
            Some(path) => self.names.finish_shrinks(&mut j, &path, before),
            None => Ok(()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.alive()?;
        // The journal before the file's own locks, as for every name operation.
        let mut j = self.names.lock();
        let mut pending = self.pending();
        let on_disk = self.inner.len()?;
        let path = self.path().clone().filter(|p| self.names.governs(p));
        let shrink = match path {
            // What the disk holds past `len` is kept in the trash first, so a kill before the
            // file is fsynced can put it back.
            Some(path) if len < on_disk => {
                let id = Names::next_id(&j);
                let trash = self.names.trash(id);
                let fs = self.names.inner();
                let cut = fs.open(&trash, true)?;
                cut.set_len(0)?;
                names::copy(&*self.inner, len, on_disk, &*cut, 0)?;
                cut.sync_data()?;
                Some(self.names.record(&mut j, names::Op::Shrink { path, len })?)
            }
            _ => None,
        };
        // Pending bytes past `len` are gone, and the bytes a shrink removed read as zeros if
        // the file grows again.
        pending.truncate(len);
        let r = self.inner.set_len(len);
        if r.is_err()
            && let Some(id) = shrink
        {
            self.names.finish(&mut j, &[id])?;
        }
        r
    }

    fn len(&self) -> io::Result<u64> {
        let pending = self.pending();
        Ok(self.inner.len()?.max(pending.end()))
    }
}

/// A file system that keeps unsynced writes in memory and can undo unsynced name operations
/// after a kill; see the module docs.
#[derive(Debug)]
pub struct LazyFs {
    inner: Arc<dyn FileSystem>,
    /// The live handle of each open path, so every opener shares one overlay.
    open: Mutex<HashMap<PathBuf, Weak<LazyFile>>>,
    names: Arc<Names>,
}

impl LazyFs {
    /// Wraps `inner`, governing the names under `root` (a server's data directory): first
    /// undoes every name operation and shrink that a kill of the previous process left without
    /// the fsync that would have made it durable, as a power cut would have lost it. Keeps its
    /// journal in `<root>/.lazyfs/`, which [`FileSystem::read_dir`] of `root` does not list.
    pub fn recover(inner: Arc<dyn FileSystem>, root: &Path) -> io::Result<Self> {
        let names = Arc::new(Names::recover(inner.clone(), root)?);
        Ok(Self {
            inner,
            open: Mutex::new(HashMap::new()),
            names,
        })
    }

    fn open_files(&self) -> MutexGuard<'_, HashMap<PathBuf, Weak<LazyFile>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a kill of the process: forgets every unsynced write and pending name
    /// operation without writing anything, and leaves every handle dead.
    #[cfg(test)]
    fn kill(self) {
        self.names.kill();
        for f in self.open_files().values().filter_map(Weak::upgrade) {
            f.pending().0.clear();
        }
    }

    /// Detaches the open file at `path`, whose name is gone: its unsynced writes die with it.
    fn unname(open: &mut HashMap<PathBuf, Weak<LazyFile>>, path: &Path) {
        if let Some(f) = open.remove(path).and_then(|w| w.upgrade()) {
            f.pending().0.clear();
            *f.path() = None;
        }
    }
}

impl FileSystem for LazyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut j = self.names.governs(path).then(|| self.names.lock());
        if let Some(j) = &mut j
            && let Some(new) = path
                .ancestors()
                .take_while(|a| !self.inner.exists(a))
                .last()
        {
            // Directories are durable at once (see the module docs). One created anew holds
            // nothing a kill could restore: whatever was pending in an earlier directory of
            // this name went when it was removed (possibly behind this layer's back).
            self.names.finish_under(j, new)?;
        }
        self.inner.create_dir_all(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let mut j = (create && self.names.governs(path)).then(|| self.names.lock());
        let mut open = self.open_files();
        if let Some(f) = open.get(path).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let created = match &mut j {
            Some(j) if !self.inner.exists(path) => Some(self.names.record(
                j,
                names::Op::Create {
                    path: path.to_path_buf(),
                },
            )?),
            _ => None,
        };
        let inner = match self.inner.open(path, create) {
            Ok(f) => f,
            Err(e) => {
                if let (Some(j), Some(id)) = (&mut j, created) {
                    self.names.finish(j, &[id])?;
                }
                return Err(e);
            }
        };
        let f = Arc::new(LazyFile {
            inner,
            pending: Mutex::default(),
            names: self.names.clone(),
            path: Mutex::new(Some(path.to_path_buf())),
        });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(path.to_path_buf(), Arc::downgrade(&f));
        Ok(f)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let j = self.names.governs(path).then(|| self.names.lock());
        // A directory is not a file: let the inner file system refuse it (and a missing file).
        let Some(mut j) =
            j.filter(|_| self.inner.exists(path) && self.inner.read_dir(path).is_err())
        else {
            Self::unname(&mut self.open_files(), path);
            return self.inner.remove_file(path);
        };
        // A shrink is undone only under the name it was made under.
        self.names.finish_shrinks(&mut j, path, u64::MAX)?;
        let id = self.names.record(
            &mut j,
            names::Op::Remove {
                path: path.to_path_buf(),
            },
        )?;
        // Moved, not removed: the trash keeps the contents a kill brings back.
        if let Err(e) = self.inner.rename(path, &self.names.trash(id)) {
            self.names.finish(&mut j, &[id])?;
            return Err(e);
        }
        Self::unname(&mut self.open_files(), path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        if self.names.governs(path) {
            // Durable at once: nothing pending under it can come back.
            let mut j = self.names.lock();
            self.names.finish_under(&mut j, path)?;
        }
        self.open_files().retain(|p, w| {
            let under = p.starts_with(path);
            if under && let Some(f) = w.upgrade() {
                f.pending().0.clear();
                *f.path() = None;
            }
            !under
        });
        self.inner.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let governed = self.names.governs(from) && self.names.governs(to) && from != to;
        let j = governed.then(|| self.names.lock());
        // A missing source: nothing to journal, let the inner file system report it.
        let mut j = j.filter(|_| self.inner.exists(from));
        if let Some(j) = &mut j {
            self.names.finish_shrinks(j, from, u64::MAX)?;
            self.names.finish_shrinks(j, to, u64::MAX)?;
            let id = Names::next_id(j);
            // A copy, not a move, of the file the rename replaces: the rename stays one atomic
            // step, and `to` never goes missing in between.
            let replaced = self.inner.exists(to);
            if replaced {
                let src = self.inner.open(to, false)?;
                let copy = self.inner.open(&self.names.trash(id), true)?;
                copy.set_len(0)?;
                names::copy(&*src, 0, src.len()?, &*copy, 0)?;
                copy.sync_data()?;
            }
            let op = names::Op::Rename {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            };
            let id = self.names.record(j, op)?;
            if let Err(e) = self.inner.rename(from, to) {
                self.names.finish(j, &[id])?;
                return Err(e);
            }
        } else {
            self.inner.rename(from, to)?;
        }
        let mut open = self.open_files();
        // The overlay follows the file; whatever was open at `to` is now unnamed.
        Self::unname(&mut open, to);
        if let Some(w) = open.remove(from) {
            if let Some(f) = w.upgrade() {
                *f.path() = Some(to.to_path_buf());
            }
            open.insert(to.to_path_buf(), w);
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut entries = self.inner.read_dir(path)?;
        // The journal is the layer's, not the data's.
        entries.retain(|p| p != self.names.state_dir());
        Ok(entries)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if !self.names.governs(path) {
            return self.inner.sync_dir(path);
        }
        // Only name changes made before the fsync began are covered by it.
        let before = Names::next_id(&self.names.lock());
        self.inner.sync_dir(path)?;
        let mut j = self.names.lock();
        self.names.dir_synced(&mut j, path, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    fn setup() -> (Arc<MemFs>, LazyFs) {
        let mem = Arc::new(MemFs::new());
        mem.create_dir_all_durable(Path::new("/d")).unwrap();
        let lazy = LazyFs::recover(mem.clone(), Path::new("/d")).unwrap();
        (mem, lazy)
    }

    /// Kills the process that used `lazy` and starts a new one on the same disk.
    fn restart(mem: &Arc<MemFs>, lazy: LazyFs) -> LazyFs {
        lazy.kill();
        LazyFs::recover(mem.clone(), Path::new("/d")).unwrap()
    }

    /// Creates `path` holding `contents`, all of it durable (data and name).
    fn durable_file(lazy: &LazyFs, path: &Path, contents: &[u8]) {
        let f = lazy.open(path, true).unwrap();
        f.write_all_at(contents, 0).unwrap();
        f.sync_data().unwrap();
        lazy.sync_dir(path.parent().unwrap()).unwrap();
    }

    /// Nothing is left pending: the journal is empty and so is the trash.
    fn assert_settled(mem: &MemFs) {
        assert_eq!(mem.read_file(Path::new("/d/.lazyfs/journal")).unwrap(), b"");
        assert_eq!(
            mem.read_dir(Path::new("/d/.lazyfs/trash")).unwrap(),
            Vec::<PathBuf>::new()
        );
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

    #[test]
    fn a_kill_undoes_a_create_until_its_directory_is_synced() {
        let (mem, lazy) = setup();
        let (lost, kept) = (Path::new("/d/lost"), Path::new("/d/kept"));
        let f = lazy.open(lost, true).unwrap();
        f.write_all_at(b"synced data, unsynced name", 0).unwrap();
        f.sync_data().unwrap();
        let lazy = restart(&mem, lazy);
        assert!(!mem.exists(lost), "the name was never made durable");

        let f = lazy.open(kept, true).unwrap();
        f.write_all_at(b"both synced", 0).unwrap();
        f.sync_data().unwrap();
        lazy.sync_dir(Path::new("/d")).unwrap();
        let _lazy = restart(&mem, lazy);
        assert_eq!(mem.read_file(kept).unwrap(), b"both synced");
        assert_settled(&mem);
    }

    #[test]
    fn a_kill_undoes_a_removal_until_its_directory_is_synced() {
        let (mem, lazy) = setup();
        let (back, gone) = (Path::new("/d/back"), Path::new("/d/gone"));
        durable_file(&lazy, back, b"synced");
        durable_file(&lazy, gone, b"synced too");
        lazy.remove_file(gone).unwrap();
        lazy.sync_dir(Path::new("/d")).unwrap();
        let f = lazy.open(back, false).unwrap();
        f.write_all_at(b" and never synced", 6).unwrap();
        lazy.remove_file(back).unwrap();
        assert!(!lazy.exists(back));
        let _lazy = restart(&mem, lazy);
        assert_eq!(
            mem.read_file(back).unwrap(),
            b"synced",
            "the removal is undone, with the synced contents only"
        );
        assert!(!mem.exists(gone), "a synced removal stays");
        assert_settled(&mem);
    }

    #[test]
    fn a_kill_undoes_a_rename_and_brings_back_the_file_it_replaced() {
        let (mem, lazy) = setup();
        let (tmp, target, plain) = (
            Path::new("/d/tmp"),
            Path::new("/d/target"),
            Path::new("/d/plain"),
        );
        durable_file(&lazy, target, b"old");
        durable_file(&lazy, tmp, b"new");
        durable_file(&lazy, plain, b"plain");
        lazy.rename(tmp, target).unwrap();
        lazy.rename(plain, Path::new("/d/renamed")).unwrap();
        assert_eq!(read_all(&*lazy.open(target, false).unwrap()), b"new");
        let lazy = restart(&mem, lazy);
        assert_eq!(
            mem.read_file(target).unwrap(),
            b"old",
            "the replaced file is back"
        );
        assert_eq!(
            mem.read_file(tmp).unwrap(),
            b"new",
            "the source name is back"
        );
        assert_eq!(mem.read_file(plain).unwrap(), b"plain");
        assert!(!mem.exists(Path::new("/d/renamed")));
        assert_settled(&mem);

        lazy.rename(tmp, target).unwrap();
        lazy.sync_dir(Path::new("/d")).unwrap();
        let _lazy = restart(&mem, lazy);
        assert_eq!(
            mem.read_file(target).unwrap(),
            b"new",
            "a synced rename stays"
        );
        assert!(!mem.exists(tmp));
        assert_settled(&mem);
    }

    #[test]
    fn a_rename_across_directories_is_kept_only_once_both_are_synced() {
        let (mem, lazy) = setup();
        let (a, b) = (Path::new("/d/a"), Path::new("/d/b"));
        lazy.create_dir_all_durable(a).unwrap();
        lazy.create_dir_all_durable(b).unwrap();
        let (from, to) = (a.join("f"), b.join("f"));
        durable_file(&lazy, &from, b"moving");
        lazy.rename(&from, &to).unwrap();
        lazy.sync_dir(b).unwrap();
        let lazy = restart(&mem, lazy);
        assert_eq!(mem.read_file(&from).unwrap(), b"moving");
        assert!(!mem.exists(&to), "the source directory was never synced");

        lazy.rename(&from, &to).unwrap();
        lazy.sync_dir(b).unwrap();
        lazy.sync_dir(a).unwrap();
        let _lazy = restart(&mem, lazy);
        assert_eq!(mem.read_file(&to).unwrap(), b"moving");
        assert!(!mem.exists(&from));
        assert_settled(&mem);
    }

    #[test]
    fn a_kill_undoes_a_shrink_until_the_file_is_synced() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/s");
        durable_file(&lazy, p, b"0123456789");
        let f = lazy.open(p, false).unwrap();
        f.set_len(4).unwrap();
        f.write_all_at(b"xy", 4).unwrap();
        assert_eq!(read_all(&*f), b"0123xy");
        drop(f);
        let lazy = restart(&mem, lazy);
        assert_eq!(
            mem.read_file(p).unwrap(),
            b"0123456789",
            "the cut bytes are back"
        );

        let f = lazy.open(p, false).unwrap();
        f.set_len(4).unwrap();
        f.sync_data().unwrap();
        let _lazy = restart(&mem, lazy);
        assert_eq!(mem.read_file(p).unwrap(), b"0123", "a synced shrink stays");
        assert_settled(&mem);
    }

    #[test]
    fn undoing_runs_backwards_through_a_chain_of_operations() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/p");
        durable_file(&lazy, p, b"first");
        // Removed, created again, renamed away and created once more, none of it synced.
        lazy.remove_file(p).unwrap();
        let f = lazy.open(p, true).unwrap();
        f.write_all_at(b"second", 0).unwrap();
        f.sync_data().unwrap();
        lazy.rename(p, Path::new("/d/q")).unwrap();
        lazy.open(p, true).unwrap();
        let _lazy = restart(&mem, lazy);
        assert_eq!(mem.read_file(p).unwrap(), b"first");
        assert!(!mem.exists(Path::new("/d/q")));
        assert_settled(&mem);
    }

    #[test]
    fn a_record_whose_operation_never_ran_undoes_nothing_and_a_torn_one_is_ignored() {
        let (mem, lazy) = setup();
        let (x, y) = (Path::new("/d/x"), Path::new("/d/y"));
        durable_file(&lazy, x, b"x");
        durable_file(&lazy, y, b"y");
        drop(lazy);
        // As a kill right after journaling each, before doing it, would leave them.
        // Journaled relative to the root.
        let hex = |p: &Path| names::tests::hex_of(p.strip_prefix("/d").unwrap());
        let journal = format!(
            "rename 0 {} {} 0\nremove 1 {}\ncreate 2 {}\nrename 3 {}",
            hex(x),
            hex(y),
            hex(y),
            hex(Path::new("/d/never")),
            hex(y)
        );
        mem.write_file(Path::new("/d/.lazyfs/journal"), journal.as_bytes())
            .unwrap();
        let _lazy = LazyFs::recover(mem.clone(), Path::new("/d")).unwrap();
        assert_eq!(mem.read_file(x).unwrap(), b"x");
        assert_eq!(mem.read_file(y).unwrap(), b"y");
        assert_settled(&mem);
    }

    #[test]
    fn a_clean_stop_keeps_every_name() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/unsynced-name");
        lazy.open(p, true).unwrap();
        drop(lazy);
        let _lazy = LazyFs::recover(mem.clone(), Path::new("/d")).unwrap();
        assert!(
            mem.exists(p),
            "the kernel would have written the directory back"
        );
        assert_settled(&mem);
    }

    #[test]
    fn a_directory_created_anew_gets_nothing_back_from_an_earlier_one() {
        let (mem, lazy) = setup();
        let dir = Path::new("/d/topic/0");
        lazy.create_dir_all_durable(dir).unwrap();
        let seg = dir.join("seg");
        durable_file(&lazy, &seg, b"old topic");
        lazy.remove_file(&seg).unwrap();
        // Deleted and created again behind the layer's back, as the broker does with a topic.
        mem.remove_dir_all(Path::new("/d/topic")).unwrap();
        lazy.create_dir_all_durable(dir).unwrap();
        let _lazy = restart(&mem, lazy);
        assert!(mem.exists(dir));
        assert!(!mem.exists(&seg), "the old topic's file stays gone");
        assert_settled(&mem);
    }

    #[test]
    fn the_journal_is_not_listed_with_the_data() {
        let (_mem, lazy) = setup();
        durable_file(&lazy, Path::new("/d/a"), b"");
        assert_eq!(
            lazy.read_dir(Path::new("/d")).unwrap(),
            vec![PathBuf::from("/d/a")]
        );
    }

    #[test]
    fn a_kill_loses_the_unsynced_writes_of_files_still_open() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/open");
        durable_file(&lazy, p, b"synced");
        let f = lazy.open(p, false).unwrap();
        f.write_all_at(b"!", 6).unwrap();
        let _lazy = restart(&mem, lazy);
        drop(f);
        assert_eq!(
            mem.read_file(p).unwrap(),
            b"synced",
            "a dead process writes nothing back"
        );
    }

    #[test]
    fn a_kill_during_recovery_does_not_undo_anything_twice() {
        let (mem, lazy) = setup();
        let p = Path::new("/d/p");
        durable_file(&lazy, p, b"first");
        lazy.remove_file(p).unwrap();
        lazy.open(p, true).unwrap();
        lazy.kill();
        // And a record the kill tore: the records recovery adds must not be glued to it.
        let journal = Path::new("/d/.lazyfs/journal");
        let mut bytes = mem.read_file(journal).unwrap();
        bytes.extend_from_slice(b"create 99 2f");
        mem.write_file(journal, &bytes).unwrap();
        // A directory in the trash stops recovery after every undo, before the journal is
        // emptied: as a kill there would.
        let stuck = Path::new("/d/.lazyfs/trash/stuck");
        mem.create_dir_all(stuck).unwrap();
        LazyFs::recover(mem.clone(), Path::new("/d")).unwrap_err();
        assert_eq!(mem.read_file(p).unwrap(), b"first");
        mem.remove_dir_all(stuck).unwrap();
        // Undoing the second create again would remove the file the first undo brought back.
        let _lazy = LazyFs::recover(mem.clone(), Path::new("/d")).unwrap();
        assert_eq!(mem.read_file(p).unwrap(), b"first");
        assert_settled(&mem);
    }

    #[test]
    fn a_journal_holding_a_long_pending_operation_is_compacted() {
        let (mem, lazy) = setup();
        lazy.create_dir_all_durable(Path::new("/d/a")).unwrap();
        lazy.create_dir_all_durable(Path::new("/d/b")).unwrap();
        let never = Path::new("/d/a/never-synced");
        lazy.open(never, true).unwrap();
        for i in 0..400 {
            lazy.open(&Path::new("/d/b").join(i.to_string()), true)
                .unwrap();
            lazy.sync_dir(Path::new("/d/b")).unwrap();
        }
        let journal = mem.read_file(Path::new("/d/.lazyfs/journal")).unwrap();
        assert!(journal.len() < 5 << 10, "{} bytes", journal.len());
        let _lazy = restart(&mem, lazy);
        assert!(!mem.exists(never), "still pending after the compactions");
        assert!(mem.exists(Path::new("/d/b/399")));
        assert_settled(&mem);
    }

    #[test]
    fn a_data_directory_copied_elsewhere_is_recovered_in_place() {
        let (mem, lazy) = setup();
        let x = Path::new("/d/x");
        durable_file(&lazy, x, b"x");
        lazy.remove_file(x).unwrap();
        lazy.kill();
        fn copy_tree(mem: &MemFs, from: &Path, to: &Path) {
            mem.create_dir_all(to).unwrap();
            for p in mem.read_dir(from).unwrap() {
                let dest = to.join(p.file_name().unwrap());
                match mem.read_file(&p) {
                    Ok(bytes) => mem.write_file(&dest, &bytes).unwrap(),
                    Err(_) => copy_tree(mem, &p, &dest),
                }
            }
        }
        copy_tree(&mem, Path::new("/d"), Path::new("/e"));
        let _lazy = LazyFs::recover(mem.clone(), Path::new("/e")).unwrap();
        assert_eq!(mem.read_file(Path::new("/e/x")).unwrap(), b"x");
        assert!(!mem.exists(x), "the original is left alone");
    }

    #[test]
    fn a_shrink_is_never_undone_onto_another_file() {
        let (mem, lazy) = setup();
        let (s, t) = (Path::new("/d/s"), Path::new("/d/t"));
        durable_file(&lazy, s, b"0123456789");
        lazy.open(s, false).unwrap().set_len(4).unwrap();
        // Renamed away durably, and another file (empty: nothing synced) takes the name.
        lazy.rename(s, t).unwrap();
        lazy.open(s, true).unwrap();
        lazy.sync_dir(Path::new("/d")).unwrap();
        let _lazy = restart(&mem, lazy);
        assert_eq!(mem.read_file(s).unwrap(), b"");
        assert_eq!(mem.read_file(t).unwrap(), b"0123");
        assert_settled(&mem);
    }
}
