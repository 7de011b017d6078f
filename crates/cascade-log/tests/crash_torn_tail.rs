//! Torn tails: the last batch of the active segment cut off at every byte, or zeroed from
//! the cut on (the size reached the disk, the data did not), with and without the
//! clean-shutdown marker, on MemFs and on the real file system. The reopened log must hold
//! exactly the batches before the torn one, cut the torn bytes off, ignore the stale marker,
//! and give the next append the torn batch's offset. The torn batch is one written after the
//! last fsync: a bad batch below the recovery point is damage (`crash_active_damage.rs`).

mod common;

use cascade_log::format::{CLEAN_MARKER, FileKind, RECOVERY_POINT};
use cascade_log::fs::{FileSystem, MemFs};
use cascade_log::{Log, LogConfig};
use common::crash::*;
use common::*;
use std::path::{Path, PathBuf};

/// What a torn-tail sweep needs from a file system: a template log directory to copy, and the
/// copy's files to damage and inspect.
trait TornStore {
    fn open(&self, config: LogConfig) -> Log;
    /// A fresh copy of the template, to damage.
    fn copy(&self) -> Self;
    fn read(&self, name: &Path) -> Vec<u8>;
    fn write(&self, name: &Path, contents: &[u8]);
    fn exists(&self, name: &Path) -> bool;
    fn remove(&self, name: &Path);
    fn newest_base(&self) -> u64;
}

struct MemStore(MemFs);

impl TornStore for MemStore {
    fn open(&self, config: LogConfig) -> Log {
        open_mem(&self.0, &clock(), config).unwrap()
    }
    fn copy(&self) -> Self {
        let fs = MemFs::new();
        fs.create_dir_all(mem_dir()).unwrap();
        for p in self.0.read_dir(mem_dir()).unwrap() {
            fs.write_file(&p, &self.0.read_file(&p).unwrap()).unwrap();
        }
        MemStore(fs)
    }
    fn read(&self, name: &Path) -> Vec<u8> {
        self.0.read_file(&mem_dir().join(name)).unwrap()
    }
    fn write(&self, name: &Path, contents: &[u8]) {
        self.0.write_file(&mem_dir().join(name), contents).unwrap()
    }
    fn exists(&self, name: &Path) -> bool {
        self.0.exists(&mem_dir().join(name))
    }
    fn remove(&self, name: &Path) {
        self.0.remove_file(&mem_dir().join(name)).unwrap()
    }
    fn newest_base(&self) -> u64 {
        active_base(&self.0)
    }
}

struct DiskStore {
    dir: PathBuf,
    /// Where copies go; each copy replaces the last.
    work: PathBuf,
}

impl TornStore for DiskStore {
    fn open(&self, config: LogConfig) -> Log {
        Log::open(&self.dir, config).unwrap()
    }
    fn copy(&self) -> Self {
        let _ = std::fs::remove_dir_all(&self.work);
        copy_dir(&self.dir, &self.work);
        DiskStore {
            dir: self.work.clone(),
            work: self.work.clone(),
        }
    }
    fn read(&self, name: &Path) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }
    fn write(&self, name: &Path, contents: &[u8]) {
        std::fs::write(self.dir.join(name), contents).unwrap()
    }
    fn exists(&self, name: &Path) -> bool {
        self.dir.join(name).exists()
    }
    fn remove(&self, name: &Path) {
        std::fs::remove_file(self.dir.join(name)).unwrap()
    }
    fn newest_base(&self) -> u64 {
        *bases_on_disk(&self.dir).last().unwrap()
    }
}

/// Builds a log in `template` with several sealed segments and at least three batches in the
/// active one, the last a small single-record batch; closes it (leaving the clean-shutdown
/// marker) or drops it after an fsync. Then tears that last batch at every byte position in
/// `positions` (0 = its first byte), in two ways: the file ends at the cut, or it keeps its
/// length but everything from the cut on is zeros (the size reached the disk, the data did
/// not; only without the marker, since a clean shutdown fsyncs the data before writing it).
/// Each time the reopened log must hold exactly the batches before the torn one, have cut the
/// torn bytes off, ignore the marker (which no longer matches), and give the next append the
/// torn batch's offset.
fn sweep_torn_tail<S: TornStore>(
    template: &S,
    with_marker: bool,
    positions: impl Fn(u64) -> Vec<u64>,
    reopen_every: u64,
) {
    let mut log = template.open(small_config());
    let mut expected = Vec::new();
    let mut i = 0;
    let active_batches = || {
        let name = path_of(Path::new(""), template.newest_base(), FileKind::Log);
        batches_in(&template.read(&name)).len()
    };
    while log.segment_count() < 3 || active_batches() < 2 {
        let vals: Vec<String> = (0..i % 3 + 1).map(|j| format!("v{i}.{j}")).collect();
        let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
        log.append(&mut batch(&refs, 1000 + i as i64)).unwrap();
        expected.extend(vals);
        i += 1;
    }
    // Everything before the last batch is durable; the last batch is what a crash tears:
    // written after the last fsync (the recovery point stays before it).
    log.sync().unwrap();
    log.append(&mut batch(&["last"], 2000)).unwrap();
    expected.push("last".into());
    assert_eq!(values(&log.reader(), 0), expected);
    if with_marker {
        log.close().unwrap();
        assert!(template.exists(Path::new(CLEAN_MARKER)));
    } else {
        drop(log);
    }
    let log_name = path_of(Path::new(""), template.newest_base(), FileKind::Log);
    let template_log = template.read(&log_name);
    let placed = batches_in(&template_log);
    assert!(placed.len() >= 3);
    let last = *placed.last().unwrap();
    assert_eq!(last.last as usize + 1, expected.len());
    let tears: &[bool] = if with_marker {
        &[false]
    } else {
        &[false, true]
    };
    let mut swept = 0;
    for &zeros in tears {
        for rel in positions(last.len) {
            let cut = last.pos + rel;
            let ctx = format!("cut at {cut}, zeros {zeros}, marker {with_marker}");
            let mut damaged = template_log.clone();
            if zeros {
                if damaged[cut as usize..].iter().all(|&b| b == 0) {
                    continue; // the batch already ends in zeros there: nothing is torn
                }
                damaged[cut as usize..].fill(0);
            } else {
                damaged.truncate(cut as usize);
            }
            swept += 1;
            let store = template.copy();
            store.write(&log_name, &damaged);
            if with_marker {
                // A clean shutdown made the last batch durable, so tearing it now is damage
                // (crash_active_damage.rs). What is tested here is that a stale marker is
                // ignored: as for a log whose recovery point is unknown (written before they
                // existed, or lost), a bad tail is then cut as torn.
                store.remove(Path::new(RECOVERY_POINT));
            }
            let mut log = store.open(small_config());
            assert!(!store.exists(Path::new(CLEAN_MARKER)), "{ctx}");
            assert_eq!(log.end_offset(), last.base, "{ctx}");
            assert_eq!(
                store.read(&log_name).len() as u64,
                last.pos,
                "{ctx}: torn bytes cut off"
            );
            assert_eq!(
                values(&log.reader(), 0),
                expected[..last.base as usize],
                "{ctx}"
            );
            // The torn batch is gone for good: reading at its offset is reading at the end.
            assert!(log.reader().read(last.base, 100).unwrap().data.is_empty());
            let a = log.append(&mut batch(&["after"], 5000)).unwrap();
            assert_eq!(a.base_offset, last.base, "{ctx}");
            let mut want = expected[..last.base as usize].to_vec();
            want.push("after".into());
            assert_eq!(values(&log.reader(), 0), want, "{ctx}");
            log.sync().unwrap();
            drop(log);
            if rel % reopen_every == 0 {
                let log = store.open(small_config());
                assert_eq!(values(&log.reader(), 0), want, "{ctx}");
            }
        }
    }
    assert!(swept as u64 >= positions(last.len).len() as u64, "{swept}");
}

/// Every byte of the last batch, on MemFs.
#[test]
fn torn_tail_is_cut_at_every_byte_of_the_last_batch() {
    for with_marker in [false, true] {
        let template = MemStore(MemFs::new());
        sweep_torn_tail(&template, with_marker, |len| (0..len).collect(), 1);
    }
}

/// A sample of the bytes (the sweep costs fsyncs per position), on the real file system.
#[test]
fn torn_tail_is_cut_on_the_real_file_system() {
    let root = tempfile::tempdir().unwrap();
    for with_marker in [false, true] {
        let template = DiskStore {
            dir: root.path().join(format!("template-{with_marker}")),
            work: root.path().join("work"),
        };
        let sample = |len: u64| {
            let mut v: Vec<u64> = (0..len).step_by(7).collect();
            v.extend([1, 11, 12, 60, 61, len - 1]);
            v.sort_unstable();
            v.dedup();
            v
        };
        sweep_torn_tail(&template, with_marker, sample, 4);
    }
}
