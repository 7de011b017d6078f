//! [`MemFs`]: an in-memory file system that models durability, for crash and fault tests.
//!
//! Each file keeps two images: what was written (`data`, what reads see) and what was last made
//! durable by `sync_data` (`durable`). The directory tree likewise has a live namespace and a
//! durable one, updated by `sync_dir`. [`MemFs::crash`] throws away everything that was not made
//! durable, as a power loss would: unsynced writes vanish, files created without a directory
//! sync disappear, files removed without one come back. Directories follow the same rule: a
//! new directory survives only once its parent was synced, and with it go the files in it
//! (POSIX's minimum; the root, a path without a parent, always exists).
//!
//! Faults are armed through [`MemFs::set_faults`] and hit every handle at once.

use super::{File, FileSystem};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Faults to inject into every file of a [`MemFs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemFsFaults {
    /// Bytes that writes may still add; a write that needs more writes what fits (a short,
    /// torn write) and then fails with `StorageFull` (ENOSPC). `None` means unlimited.
    pub write_budget: Option<u64>,
    /// Every `sync_data` and `sync_dir` fails with an IO error (EIO), leaving durable state
    /// unchanged.
    pub fail_sync: bool,
}

#[derive(Debug, Default)]
struct Shared {
    faults: Mutex<MemFsFaults>,
    syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct Images {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug)]
struct MemFile {
    images: Mutex<Images>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Tree {
    live: BTreeMap<PathBuf, Arc<MemFile>>,
    durable: BTreeMap<PathBuf, Arc<MemFile>>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
}

impl Tree {
    /// True if `path`'s directory chain survives a crash: every ancestor but the root is a
    /// durable directory.
    fn durably_reachable(&self, path: &Path) -> bool {
        path.ancestors()
            .skip(1)
            .filter(|a| a.parent().is_some())
            .all(|a| self.durable_dirs.contains(a))
    }
}

/// An in-memory file system with a durability model; cheap to clone (clones share state).
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    tree: Arc<Mutex<Tree>>,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the state from the assertions that follow.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms (or, with the default value, clears) faults.
    pub fn set_faults(&self, faults: MemFsFaults) {
        *lock(&self.shared.faults) = faults;
    }

    /// How many `sync_data` calls succeeded so far, on all files.
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Simulates a power loss: every file reverts to its last durable image and the namespace
    /// to its last synced state. Handles opened before the crash are detached: writes through
    /// them no longer reach the file system.
    pub fn crash(&self) {
        let mut tree = lock(&self.tree);
        let dirs: BTreeSet<PathBuf> = tree
            .durable_dirs
            .iter()
            .filter(|d| tree.durably_reachable(d))
            .cloned()
            .collect();
        tree.durable_dirs = dirs.clone();
        tree.dirs = dirs;
        let mut fresh = BTreeMap::new();
        for (path, f) in tree
            .durable
            .iter()
            .filter(|(p, _)| tree.durably_reachable(p))
        {
            let durable = lock(&f.images).durable.clone();
            fresh.insert(
                path.clone(),
                Arc::new(MemFile {
                    images: Mutex::new(Images {
                        data: durable.clone(),
                        durable,
                    }),
                    shared: self.shared.clone(),
                }),
            );
        }
        tree.live = fresh.clone();
        tree.durable = fresh;
    }

    /// The current (not necessarily durable) contents of a file, for assertions.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let tree = lock(&self.tree);
        let f = tree.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(lock(&f.images).data.clone())
    }

    /// Replaces a file's contents, both images, as if edited on disk while the owner was down.
    pub fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let mut tree = lock(&self.tree);
        let f = Arc::new(MemFile {
            images: Mutex::new(Images {
                data: contents.to_vec(),
                durable: contents.to_vec(),
            }),
            shared: self.shared.clone(),
        });
        tree.live.insert(path.to_path_buf(), f.clone());
        tree.durable.insert(path.to_path_buf(), f);
        for dir in path.ancestors().skip(1).filter(|a| a.parent().is_some()) {
            tree.dirs.insert(dir.to_path_buf());
            tree.durable_dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }
}

impl File for MemFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let img = lock(&self.images);
        let pos = usize::try_from(pos).unwrap_or(usize::MAX);
        if pos >= img.data.len() {
            return Ok(0);
        }
        let n = buf.len().min(img.data.len() - pos);
        buf[..n].copy_from_slice(&img.data[pos..pos + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let allowed = {
            let mut faults = lock(&self.shared.faults);
            match faults.write_budget.as_mut() {
                None => buf.len(),
                Some(budget) => {
                    let n = (*budget).min(buf.len() as u64) as usize;
                    *budget -= n as u64;
                    n
                }
            }
        };
        let mut img = lock(&self.images);
        let pos = pos as usize;
        let end = pos + allowed;
        if img.data.len() < end {
            img.data.resize(end, 0);
        }
        img.data[pos..end].copy_from_slice(&buf[..allowed]);
        if allowed < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if lock(&self.shared.faults).fail_sync {
            return Err(io::Error::other("fsync failed (injected EIO)"));
        }
        let mut img = lock(&self.images);
        img.durable = img.data.clone();
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.images).data.resize(len as usize, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.images).data.len() as u64)
    }
}

impl FileSystem for MemFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = lock(&self.tree);
        for p in path.ancestors() {
            if p.parent().is_none() {
                tree.durable_dirs.insert(p.to_path_buf());
            }
            tree.dirs.insert(p.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let mut tree = lock(&self.tree);
        if let Some(f) = tree.live.get(path) {
            return Ok(f.clone());
        }
        if !create {
            return Err(not_found(path));
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !tree.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let f = Arc::new(MemFile {
            images: Mutex::new(Images::default()),
            shared: self.shared.clone(),
        });
        tree.live.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut tree = lock(&self.tree);
        tree.live
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = lock(&self.tree);
        tree.live.retain(|p, _| !p.starts_with(path));
        tree.durable.retain(|p, _| !p.starts_with(path));
        tree.dirs.retain(|p| !p.starts_with(path));
        tree.durable_dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut tree = lock(&self.tree);
        let f = tree.live.remove(from).ok_or_else(|| not_found(from))?;
        tree.live.insert(to.to_path_buf(), f);
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let tree = lock(&self.tree);
        if !tree.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = tree
            .live
            .keys()
            .filter(|p| p.parent() == Some(path))
            .cloned();
        let dirs = tree
            .dirs
            .iter()
            .filter(|p| p.parent() == Some(path))
            .cloned();
        Ok(files.chain(dirs).collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let tree = lock(&self.tree);
        tree.live.contains_key(path) || tree.dirs.contains(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if lock(&self.shared.faults).fail_sync {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        let mut tree = lock(&self.tree);
        let Tree {
            live,
            durable,
            dirs,
            durable_dirs,
        } = &mut *tree;
        if !dirs.contains(path) {
            return Err(not_found(path));
        }
        durable.retain(|p, _| p.parent() != Some(path));
        for (p, f) in live.iter() {
            if p.parent() == Some(path) {
                durable.insert(p.clone(), f.clone());
            }
        }
        durable_dirs.retain(|p| p.parent() != Some(path));
        for d in dirs.iter() {
            if d.parent() == Some(path) {
                durable_dirs.insert(d.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_data_and_names() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all_durable(dir).unwrap();
        let a = fs.open(&dir.join("a"), true).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let b = fs.open(&dir.join("b"), true).unwrap();
        b.write_all_at(b"unsynced name", 0).unwrap();
        b.sync_data().unwrap();
        fs.crash();
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"hello");
        assert!(!fs.exists(&dir.join("b")), "name was never synced");
        // Old handles are detached.
        a.write_all_at(b"zzzzz", 0).unwrap();
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"hello");
    }

    #[test]
    fn write_budget_tears_writes() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/f"), true).unwrap();
        fs.set_faults(MemFsFaults {
            write_budget: Some(3),
            ..Default::default()
        });
        let err = f.write_all_at(b"abcdef", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(fs.read_file(Path::new("/d/f")).unwrap(), b"abc");
        fs.set_faults(MemFsFaults {
            fail_sync: true,
            ..Default::default()
        });
        assert!(f.sync_data().is_err());
    }

    #[test]
    fn a_new_directory_survives_a_crash_only_once_its_parent_is_synced() {
        let fs = MemFs::new();
        let dir = Path::new("/data/topics/t/0");
        fs.create_dir_all(dir).unwrap();
        let f = fs.open(&dir.join("seg"), true).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash();
        // The file was synced and so was its directory, but no directory above it was.
        assert!(!fs.exists(dir));
        assert!(!fs.exists(&dir.join("seg")));
        assert!(!fs.exists(Path::new("/data")));

        fs.create_dir_all_durable(dir).unwrap();
        let f = fs.open(&dir.join("seg"), true).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash();
        assert_eq!(fs.read_file(&dir.join("seg")).unwrap(), b"x");
        // A sibling created later without its own sync is gone again.
        fs.create_dir_all(Path::new("/data/topics/u/0")).unwrap();
        fs.crash();
        assert!(!fs.exists(Path::new("/data/topics/u")));
        assert!(fs.exists(dir));
    }
}
