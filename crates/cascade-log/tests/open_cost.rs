//! Opening a cleanly closed log must not rescan it: the clean-shutdown marker vouches for the
//! active segment, and sealed segments get only a few-read check. Measured in bytes read (a
//! counting file system), not time, so the test is deterministic.

mod common;

use cascade_log::fs::{File, FileSystem, MemFs};
use cascade_log::{Log, LogConfig};
use common::*;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone)]
struct CountingFs {
    inner: MemFs,
    read: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn File>,
    read: Arc<AtomicU64>,
}

impl File for CountingFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, pos)?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl FileSystem for CountingFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.open(path, create)?,
            read: self.read.clone(),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
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

fn open(fs: &CountingFs, config: LogConfig) -> Log {
    Log::open_with(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        clock(),
        Path::new("/data/t-0"),
        config,
    )
    .unwrap()
}

#[test]
fn clean_open_reads_a_constant_amount_unclean_open_rescans() {
    let fs = CountingFs {
        inner: MemFs::new(),
        read: Arc::new(AtomicU64::new(0)),
    };
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    };
    let mut log = open(&fs, config.clone());
    // ~4 MiB over several segments: 40 000 events of 100 B in batches of 100.
    for i in 0..400u32 {
        log.append(&mut sized_batch(100, 100, i as u8, i64::from(i)))
            .unwrap();
    }
    let size = log.size_bytes();
    let segments = log.segment_count();
    assert!(segments >= 4, "{segments} segments");
    log.close().unwrap();

    fs.read.store(0, Ordering::SeqCst);
    let log = open(&fs, config.clone());
    let clean = fs.read.swap(0, Ordering::SeqCst);
    assert_eq!(log.end_offset(), 40_000);
    // A few headers and index entries per segment, never the data.
    assert!(
        clean < 1024 * segments as u64,
        "clean open read {clean} bytes of a {size}-byte log"
    );
    drop(log); // no close: the next open is a crash recovery

    let mut logs: Vec<PathBuf> = fs
        .inner
        .read_dir(Path::new("/data/t-0"))
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let active = fs.inner.read_file(logs.last().unwrap()).unwrap().len() as u64;
    assert!(
        active > 100_000,
        "the active segment holds data ({active} bytes)"
    );
    let log = open(&fs, config);
    let unclean = fs.read.swap(0, Ordering::SeqCst);
    assert_eq!(log.end_offset(), 40_000);
    assert!(
        unclean >= active - 32,
        "unclean open must rescan the active segment ({active} bytes), read {unclean}"
    );
    assert_eq!(read_all(&log.reader(), 0).len(), 40_000);
}
