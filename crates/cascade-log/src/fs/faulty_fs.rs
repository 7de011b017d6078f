//! A file system that fails on command: wraps another one and, while a [`DiskFault`] is
//! switched on, answers as a failing, full or slow disk would. Made for fault-injection runs
//! of whole servers (the chaos harness switches it through a control file; see the server's
//! `--fault-file`), where [`MemFs`](super::MemFs) cannot be used because the data must outlive
//! the process.
//!
//! What each fault does (reads always pass, so recovery and repair can read what is there):
//! - [`DiskFault::Failing`]: every write, fsync, truncate, create, rename and removal fails
//!   with EIO, as a dying disk or a lost volume does.
//! - [`DiskFault::Full`]: writes, growing truncates and creations fail with ENOSPC; fsyncs of
//!   what was already written, shrinking truncates and removals pass (a full disk still frees
//!   space and syncs the page cache).
//! - [`DiskFault::Slow`]: every fsync first waits the given time (a disk at the end of its
//!   life, or a saturated network volume).
//!
//! Invariant: switching a fault off restores the inner file system's behaviour at once; the
//! layer keeps no data of its own, so what it let through is exactly what the inner one holds.

use super::{File, FileSystem};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The linux errno values the faults answer with (`io::Error::from_raw_os_error` maps them to
/// the right `ErrorKind`, so callers see what a real disk would give them).
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// A disk fault that can be switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// No fault.
    Healthy,
    /// Writes and fsyncs fail with EIO.
    Failing,
    /// Writes that need space fail with ENOSPC.
    Full,
    /// Each fsync waits this long first.
    Slow(Duration),
}

impl DiskFault {
    /// Parses the control file's text: empty or `healthy`, `eio`, `full`, or `slow <ms>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        let fault = match words.next() {
            None | Some("healthy") => Self::Healthy,
            Some("eio") => Self::Failing,
            Some("full") => Self::Full,
            Some("slow") => {
                let ms: u64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| {
                    format!("`slow` needs milliseconds, as in `slow 1500`: {text:?}")
                })?;
                Self::Slow(Duration::from_millis(ms))
            }
            Some(other) => {
                return Err(format!(
                    "unknown disk fault {other:?} (healthy, eio, full, slow <ms>)"
                ));
            }
        };
        match words.next() {
            None => Ok(fault),
            Some(extra) => Err(format!("unexpected {extra:?} after the fault in {text:?}")),
        }
    }

    fn encode(self) -> u64 {
        match self {
            Self::Healthy => 0,
            Self::Failing => 1,
            Self::Full => 2,
            // Milliseconds in the upper bits; 3 in the low two.
            Self::Slow(d) => ((d.as_millis() as u64) << 2) | 3,
        }
    }

    fn decode(v: u64) -> Self {
        match v & 3 {
            0 => Self::Healthy,
            1 => Self::Failing,
            2 => Self::Full,
            _ => Self::Slow(Duration::from_millis(v >> 2)),
        }
    }
}

impl fmt::Display for DiskFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Healthy => write!(f, "healthy"),
            Self::Failing => write!(f, "eio"),
            Self::Full => write!(f, "full"),
            Self::Slow(d) => write!(f, "slow {}", d.as_millis()),
        }
    }
}

/// The fault in force, shared by a [`FaultyFs`] and whoever switches it.
#[derive(Debug, Default)]
pub struct FaultSwitch(AtomicU64);

impl FaultSwitch {
    /// Switches to `fault`; returns the one it replaces.
    pub fn set(&self, fault: DiskFault) -> DiskFault {
        DiskFault::decode(self.0.swap(fault.encode(), Ordering::SeqCst))
    }

    /// The fault in force.
    pub fn get(&self) -> DiskFault {
        DiskFault::decode(self.0.load(Ordering::SeqCst))
    }
}

fn eio(what: &str, path: &Path) -> io::Error {
    let e = io::Error::from_raw_os_error(EIO);
    io::Error::new(
        e.kind(),
        format!("{what} {}: {e} (injected)", path.display()),
    )
}

fn enospc(what: &str, path: &Path) -> io::Error {
    let e = io::Error::from_raw_os_error(ENOSPC);
    io::Error::new(
        e.kind(),
        format!("{what} {}: {e} (injected)", path.display()),
    )
}

/// A file system whose writes fail or slow down while its switch says so; see the module docs.
#[derive(Debug, Clone)]
pub struct FaultyFs {
    inner: Arc<dyn FileSystem>,
    switch: Arc<FaultSwitch>,
}

impl FaultyFs {
    /// Wraps `inner`; `switch` turns faults on and off.
    pub fn new(inner: Arc<dyn FileSystem>, switch: Arc<FaultSwitch>) -> Self {
        Self { inner, switch }
    }

    /// Fails a call that changes names or contents while the disk fails (or is full, when
    /// `needs_space`).
    fn check(&self, what: &str, path: &Path, needs_space: bool) -> io::Result<()> {
        match self.switch.get() {
            DiskFault::Failing => Err(eio(what, path)),
            DiskFault::Full if needs_space => Err(enospc(what, path)),
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn File>,
    path: PathBuf,
    switch: Arc<FaultSwitch>,
}

impl File for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        match self.switch.get() {
            DiskFault::Failing => Err(eio("writing", &self.path)),
            DiskFault::Full => Err(enospc("writing", &self.path)),
            _ => self.inner.write_all_at(buf, pos),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        match self.switch.get() {
            DiskFault::Failing => Err(eio("syncing", &self.path)),
            DiskFault::Slow(d) => {
                std::thread::sleep(d);
                self.inner.sync_data()
            }
            _ => self.inner.sync_data(),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match self.switch.get() {
            DiskFault::Failing => Err(eio("truncating", &self.path)),
            DiskFault::Full if len > self.inner.len()? => Err(enospc("extending", &self.path)),
            _ => self.inner.set_len(len),
        }
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl FileSystem for FaultyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        if !self.inner.exists(path) {
            self.check("creating", path, true)?;
        }
        self.inner.create_dir_all(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        if create && !self.inner.exists(path) {
            self.check("creating", path, true)?;
        }
        let inner = self.inner.open(path, create)?;
        Ok(Arc::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            switch: self.switch.clone(),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check("removing", path, false)?;
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check("removing", path, false)?;
        self.inner.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check("renaming", from, false)?;
        self.inner.rename(from, to)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.read_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        match self.switch.get() {
            DiskFault::Failing => Err(eio("syncing directory", path)),
            DiskFault::Slow(d) => {
                std::thread::sleep(d);
                self.inner.sync_dir(path)
            }
            _ => self.inner.sync_dir(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    #[test]
    fn the_control_text_parses_and_round_trips() {
        for (text, fault) in [
            ("", DiskFault::Healthy),
            ("healthy\n", DiskFault::Healthy),
            ("eio", DiskFault::Failing),
            (" full ", DiskFault::Full),
            ("slow 1500", DiskFault::Slow(Duration::from_millis(1500))),
        ] {
            assert_eq!(DiskFault::parse(text), Ok(fault), "{text:?}");
            assert_eq!(DiskFault::parse(&fault.to_string()), Ok(fault));
            assert_eq!(DiskFault::decode(fault.encode()), fault);
        }
        for bad in ["slow", "slow x", "melt", "eio now"] {
            assert!(DiskFault::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_fault_fails_what_it_should_and_switching_off_heals() {
        let mem = Arc::new(MemFs::new());
        let switch = Arc::new(FaultSwitch::default());
        let fs = FaultyFs::new(mem.clone(), switch.clone());
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let f = fs.open(&dir.join("a"), true).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();

        switch.set(DiskFault::Failing);
        let e = f.write_all_at(b"x", 5).unwrap_err();
        assert!(e.to_string().contains("/d/a"), "names the file: {e}");
        assert!(f.sync_data().is_err());
        assert!(fs.open(&dir.join("b"), true).is_err());
        assert!(fs.rename(&dir.join("a"), &dir.join("c")).is_err());
        let mut buf = [0u8; 5];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 5, "reads still pass");

        switch.set(DiskFault::Full);
        let e = f.write_all_at(b"x", 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(
            f.set_len(10).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        f.set_len(3).unwrap();
        f.sync_data().unwrap();
        assert!(fs.open(&dir.join("b"), true).is_err());

        assert_eq!(switch.set(DiskFault::Healthy), DiskFault::Full);
        f.write_all_at(b"lo!", 3).unwrap();
        f.sync_data().unwrap();
        assert_eq!(mem.read_file(&dir.join("a")).unwrap(), b"hello!");
    }

    #[test]
    fn a_slow_disk_delays_each_fsync() {
        let switch = Arc::new(FaultSwitch::default());
        let fs = FaultyFs::new(Arc::new(MemFs::new()), switch.clone());
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/s"), true).unwrap();
        switch.set(DiskFault::Slow(Duration::from_millis(50)));
        let t = std::time::Instant::now();
        f.sync_data().unwrap();
        // A lower bound only: a sleep never ends early.
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
