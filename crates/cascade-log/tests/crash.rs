//! Crash, corruption and fault tests: torn tails, damaged sealed segments, damaged or missing
//! indexes, ENOSPC, failed fsyncs, power loss, group commit, and readers racing the writer.
//!
//! Every test damages or interrupts the log the way a real failure would and then checks the
//! contract in `lib.rs`: nothing durable is lost, nothing is invented, damage to sealed data is
//! reported with file and position, and the log opens and continues at the right offset.

mod common;

use cascade_log::format::{CLEAN_MARKER, FILE_HEADER_LEN, FileKind, segment_path};
use cascade_log::fs::{FileSystem, MemFs, MemFsFaults};
use cascade_log::record::{BatchHeader, Batches};
use cascade_log::{CorruptionPolicy, FlushPolicy, Log, LogConfig, LogError, LogReader, SharedLog};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Where one batch sits in a `.log` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placed {
    pos: u64,
    len: u64,
    base: u64,
    last: u64,
}

impl Placed {
    fn holds_byte(&self, p: u64) -> bool {
        self.pos <= p && p < self.pos + self.len
    }
}

/// The batches of a whole `.log` file's contents, which must be intact.
fn batches_in(log_bytes: &[u8]) -> Vec<Placed> {
    let mut out = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at < log_bytes.len() {
        let h = BatchHeader::parse(&log_bytes[at..]).expect("batch header");
        out.push(Placed {
            pos: at as u64,
            len: h.total_len() as u64,
            base: h.base_offset as u64,
            last: h.last_offset() as u64,
        });
        at += h.total_len();
    }
    assert_eq!(at, log_bytes.len(), "log file ends inside a batch");
    out
}

fn path_of(dir: &Path, base: u64, kind: FileKind) -> PathBuf {
    segment_path(dir, base, kind)
}

/// Base offsets of the segments (`.log` files) in a real directory, in order.
fn bases_on_disk(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(|s| s.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn set_file_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// XORs the bytes at `at..at + n` of a file with 0xff.
fn flip_bytes(path: &Path, at: u64, n: usize) {
    let mut b = std::fs::read(path).unwrap();
    for x in &mut b[at as usize..at as usize + n] {
        *x ^= 0xff;
    }
    std::fs::write(path, b).unwrap();
}

/// Every stored batch from `from` to the end of the log, as (base offset, exact bytes).
fn raw_batches(r: &LogReader, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    let end = r.end_offset();
    while next < end {
        let f = r.read(next, 8192).expect("read");
        assert!(!f.data.is_empty(), "empty read at {next} below end {end}");
        for b in Batches::new(&f.data) {
            let b = b.expect("valid batch");
            let h = b.header();
            assert_eq!(h.base_offset as u64, next, "batches must run on densely");
            out.push((next, b.bytes().to_vec()));
            next = h.next_offset() as u64;
        }
        assert_eq!(next, f.next_offset);
    }
    out
}

/// A small deterministic PRNG (splitmix64), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

fn mem_dir() -> &'static Path {
    Path::new("/data/t-0")
}

fn assert_corrupt_at(err: &LogError, path: &Path, batch: &Placed) {
    match err {
        LogError::Corrupt {
            path: p, position, ..
        } => {
            assert_eq!(p, path, "{err}");
            assert!(
                batch.holds_byte(*position),
                "position {position} is not in the damaged batch {batch:?}: {err}"
            );
        }
        other => panic!("expected Corrupt naming {}, got {other:?}", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Torn tail
// ---------------------------------------------------------------------------------------------

/// What a torn-tail sweep needs from a file system: a template log directory to copy, and the
/// copy's files to damage and inspect.
trait TornStore {
    fn open(&self, config: LogConfig) -> Log;
    /// A fresh copy of the template, to damage.
    fn copy(&self) -> Self;
    fn read(&self, name: &Path) -> Vec<u8>;
    fn write(&self, name: &Path, contents: &[u8]);
    fn exists(&self, name: &Path) -> bool;
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
    log.append(&mut batch(&["last"], 2000)).unwrap();
    expected.push("last".into());
    assert_eq!(values(&log.reader(), 0), expected);
    if with_marker {
        log.close().unwrap();
        assert!(template.exists(Path::new(CLEAN_MARKER)));
    } else {
        log.sync().unwrap();
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

// ---------------------------------------------------------------------------------------------
// 2. Damage inside a sealed segment
// ---------------------------------------------------------------------------------------------

/// A log of several segments on the real file system, closed cleanly; returns what it holds.
fn build_segmented(dir: &Path, segments: usize) -> Vec<(u64, Vec<u8>)> {
    let mut log = Log::open(dir, small_config()).unwrap();
    let mut i = 0u8;
    while log.segment_count() < segments {
        let n = usize::from(i % 3) + 1;
        log.append(&mut sized_batch(n, 60, i, 1_000 + i64::from(i) * 10))
            .unwrap();
        i += 1;
    }
    // Some data in the active segment too.
    for _ in 0..3 {
        log.append(&mut sized_batch(2, 60, i, 1_000 + i64::from(i) * 10))
            .unwrap();
        i += 1;
    }
    let all = read_all(&log.reader(), 0);
    log.close().unwrap();
    all
}

#[test]
fn flipped_bytes_in_a_sealed_segment_are_reported_never_returned() {
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    let all = build_segmented(&template, 5);
    let bases = bases_on_disk(&template);
    assert!(bases.len() >= 5);
    // Damage the middle batch of the second segment (sealed, not the last).
    let seg = bases[1];
    let placed = batches_in(&std::fs::read(path_of(&template, seg, FileKind::Log)).unwrap());
    assert!(placed.len() >= 3);
    let bad = placed[placed.len() / 2];
    assert!(bad.len > 80);

    for index_damage in [None, Some("deleted"), Some("cut")] {
        let dir = root.path().join(format!("case-{index_damage:?}"));
        copy_dir(&template, &dir);
        let log_path = path_of(&dir, seg, FileKind::Log);
        let index_path = path_of(&dir, seg, FileKind::Index);
        // Flip bytes in the CRC-covered record area, in the middle of the batch.
        flip_bytes(&log_path, bad.pos + bad.len / 2, 3);

        match index_damage {
            None => {
                // The quick check passes: the damage is found on read, and only there.
                let log = Log::open(&dir, LogConfig::default()).unwrap();
                let r = log.reader();
                assert_eq!(log.end_offset(), all.len() as u64);
                for off in bad.base..=bad.last {
                    let err = r.read(off, 1).unwrap_err();
                    assert_corrupt_at(&err, &log_path, &bad);
                }
                // A read that starts earlier in the segment and runs into the damage fails too.
                let err = r.read(seg, 1 << 20).unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);
                // Every other offset reads back exactly, batch by batch.
                for (off, value) in &all {
                    if (bad.base..=bad.last).contains(off) {
                        continue;
                    }
                    let f = r.read(*off, 1).unwrap();
                    let got = Batches::new(&f.data)
                        .flat_map(|b| b.unwrap().records().unwrap().collect::<Vec<_>>())
                        .find(|rec| rec.offset as u64 == *off)
                        .expect("offset in the returned batch");
                    assert_eq!(got.value.unwrap(), &value[..], "offset {off}");
                }
                let later = bases[2];
                assert_eq!(
                    read_all(&r, later),
                    all[later as usize..].to_vec(),
                    "later segments read fine"
                );
                let err = log.verify().unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);
            }
            Some(how) => {
                if how == "deleted" {
                    std::fs::remove_file(&index_path).unwrap();
                } else {
                    set_file_len(&index_path, file_len(&index_path) - 2);
                }
                // A rescan is forced, finds the damage, and the default policy refuses to open.
                let err = Log::open(&dir, LogConfig::default()).unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);
                let err = Log::open(&dir, LogConfig::default()).unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);

                // Truncate: cut just before the damaged batch, later segments removed.
                let config = LogConfig {
                    on_corruption: CorruptionPolicy::Truncate,
                    ..small_config()
                };
                let mut log = Log::open(&dir, config.clone()).unwrap();
                assert_eq!(log.end_offset(), bad.base);
                assert_eq!(log.segment_count(), 2);
                assert_eq!(bases_on_disk(&dir), bases[..2].to_vec());
                for &later in &bases[2..] {
                    for kind in [FileKind::Log, FileKind::Index, FileKind::TimeIndex] {
                        assert!(!path_of(&dir, later, kind).exists(), "{later} {kind:?}");
                    }
                }
                assert_eq!(file_len(&log_path), bad.pos);
                assert_eq!(
                    read_all(&log.reader(), 0),
                    all[..bad.base as usize].to_vec()
                );
                log.verify().unwrap();
                let a = log.append(&mut batch(&["again"], 9_000)).unwrap();
                assert_eq!(a.base_offset, bad.base);
                let b = log.append(&mut batch(&["and again"], 9_001)).unwrap();
                assert_eq!(b.base_offset, bad.base + 1);
                drop(log);
                // The repaired log opens with the default policy, after a crash and a close.
                let log = Log::open(&dir, LogConfig::default()).unwrap();
                assert_eq!(log.end_offset(), bad.base + 2);
                let got = values(&log.reader(), bad.base);
                assert_eq!(got, ["again", "and again"]);
                log.verify().unwrap();
                log.close().unwrap();
                let log = Log::open(&dir, LogConfig::default()).unwrap();
                assert_eq!(log.end_offset(), bad.base + 2);
                assert_eq!(
                    read_all(&log.reader(), 0)[..bad.base as usize],
                    all[..bad.base as usize]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. Damaged or missing indexes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexDamage {
    IndexDeleted,
    /// Cut mid-entry.
    IndexCut,
    /// Garbage appended.
    IndexLong,
    /// The last entry points at the segment's first batch.
    WrongLastEntry,
    /// The first entry points at the segment's last batch.
    WrongFirstEntry,
    TimeIndexDeleted,
    /// Cut mid-entry.
    TimeIndexCut,
}

fn damage_index(dir: &Path, base: u64, damage: IndexDamage) {
    let index = path_of(dir, base, FileKind::Index);
    let time = path_of(dir, base, FileKind::TimeIndex);
    let placed = batches_in(&std::fs::read(path_of(dir, base, FileKind::Log)).unwrap());
    let write_entry = |entry: u64, pos: u64| {
        let mut b = std::fs::read(&index).unwrap();
        let at = FILE_HEADER_LEN + 4 * entry as usize;
        b[at..at + 4].copy_from_slice(&(pos as u32).to_le_bytes());
        std::fs::write(&index, b).unwrap();
    };
    match damage {
        IndexDamage::IndexDeleted => std::fs::remove_file(&index).unwrap(),
        IndexDamage::IndexCut => set_file_len(&index, file_len(&index) - 2),
        IndexDamage::IndexLong => {
            let mut b = std::fs::read(&index).unwrap();
            b.extend_from_slice(&[0xab; 1000]);
            std::fs::write(&index, b).unwrap();
        }
        IndexDamage::WrongLastEntry => {
            let count = placed.last().unwrap().last + 1 - base;
            write_entry(count - 1, placed[0].pos);
        }
        IndexDamage::WrongFirstEntry => write_entry(0, placed.last().unwrap().pos),
        IndexDamage::TimeIndexDeleted => std::fs::remove_file(&time).unwrap(),
        IndexDamage::TimeIndexCut => set_file_len(&time, file_len(&time) - 5),
    }
}

/// Timestamp lookups whose answers must survive any index repair.
fn timestamp_answers(r: &LogReader) -> Vec<Option<u64>> {
    (0..120)
        .map(|i| r.offset_for_timestamp(990 + i * 5).unwrap())
        .collect()
}

fn index_images(dir: &Path) -> BTreeMap<u64, Vec<u8>> {
    bases_on_disk(dir)
        .into_iter()
        .map(|b| (b, std::fs::read(path_of(dir, b, FileKind::Index)).unwrap()))
        .collect()
}

/// Builds a log, closes it cleanly or "crashes" (drops it), damages the chosen segments'
/// indexes, reopens, and checks every read, the rebuilt dense indexes byte for byte, and
/// timestamp lookups.
fn check_index_repair(
    root: &Path,
    name: &str,
    damage: IndexDamage,
    targets: impl Fn(&[u64]) -> Vec<u64>,
    clean: bool,
) {
    let dir = root.join(name);
    let mut log = Log::open(&dir, small_config()).unwrap();
    let mut i = 0u8;
    while log.segment_count() < 4 {
        let n = usize::from(i % 4) + 1;
        log.append(&mut sized_batch(n, 40, i, 1_000 + i64::from(i) * 7))
            .unwrap();
        i += 1;
    }
    for _ in 0..4 {
        log.append(&mut sized_batch(2, 40, i, 1_000 + i64::from(i) * 7))
            .unwrap();
        i += 1;
    }
    let all = read_all(&log.reader(), 0);
    let answers = timestamp_answers(&log.reader());
    assert!(answers.iter().any(|a| a.is_some_and(|o| o > 0)));
    if clean {
        log.close().unwrap();
    } else {
        // Write out the in-memory index tail so the files hold the complete indexes that a
        // rebuild must reproduce byte for byte.
        log.flush_index().unwrap();
        log.sync().unwrap();
        drop(log);
    }
    let original = index_images(&dir);
    let bases = bases_on_disk(&dir);
    for base in targets(&bases) {
        damage_index(&dir, base, damage);
    }
    let mut log = Log::open(&dir, small_config())
        .unwrap_or_else(|e| panic!("{name}: open after {damage:?}: {e}"));
    let r = log.reader();
    assert_eq!(log.end_offset(), all.len() as u64, "{name}");
    assert_eq!(read_all(&r, 0), all, "{name}");
    for (off, _) in &all {
        r.read(*off, 1)
            .unwrap_or_else(|e| panic!("{name}: offset {off}: {e}"));
    }
    assert_eq!(
        index_images(&dir),
        original,
        "{name}: indexes rebuilt byte for byte"
    );
    assert_eq!(timestamp_answers(&r), answers, "{name}");
    log.verify().unwrap();
    // Timestamp 0: no lookup below may find it, so the answers stay comparable.
    let a = log.append(&mut batch(&["next"], 0)).unwrap();
    assert_eq!(a.base_offset, all.len() as u64, "{name}");
    log.close().unwrap();
    let log = Log::open(&dir, small_config()).unwrap();
    assert_eq!(read_all(&log.reader(), 0)[..all.len()], all[..], "{name}");
    assert_eq!(timestamp_answers(&log.reader()), answers, "{name}");
}

#[test]
fn deleted_indexes_are_rebuilt_byte_identical() {
    let root = tempfile::tempdir().unwrap();
    for clean in [true, false] {
        let all_segments = |b: &[u64]| b.to_vec();
        let sealed = |b: &[u64]| vec![b[1]];
        let active = |b: &[u64]| vec![*b.last().unwrap()];
        let dmg = IndexDamage::IndexDeleted;
        check_index_repair(
            root.path(),
            &format!("all-{clean}"),
            dmg,
            all_segments,
            clean,
        );
        check_index_repair(root.path(), &format!("sealed-{clean}"), dmg, sealed, clean);
        check_index_repair(root.path(), &format!("active-{clean}"), dmg, active, clean);
    }
}

#[test]
fn short_long_and_inconsistent_indexes_are_rebuilt() {
    let root = tempfile::tempdir().unwrap();
    use IndexDamage::*;
    for damage in [
        IndexCut,
        IndexLong,
        WrongLastEntry,
        WrongFirstEntry,
        TimeIndexDeleted,
        TimeIndexCut,
    ] {
        for clean in [true, false] {
            let sealed = |b: &[u64]| vec![b[1]];
            let first = |b: &[u64]| vec![b[0]];
            let active = |b: &[u64]| vec![*b.last().unwrap()];
            let name = |t: &str| format!("{damage:?}-{t}-{clean}");
            check_index_repair(root.path(), &name("sealed"), damage, sealed, clean);
            check_index_repair(root.path(), &name("first"), damage, first, clean);
            // A clean-shutdown marker vouches for the active segment's index contents (it was
            // fsynced with them); only lengths and headers are checked against it, so a wrong
            // entry value there is tested after a crash, when the segment is always rescanned.
            let entry_damage = matches!(damage, WrongLastEntry | WrongFirstEntry);
            if !(clean && entry_damage) {
                check_index_repair(root.path(), &name("active"), damage, active, clean);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. ENOSPC
// ---------------------------------------------------------------------------------------------

/// Base offset of the newest `.log` in the MemFs log directory: the active segment.
fn active_base(fs: &MemFs) -> u64 {
    fs.read_dir(mem_dir())
        .unwrap()
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .max()
        .unwrap()
}

fn file_lens(fs: &MemFs) -> BTreeMap<PathBuf, u64> {
    fs.read_dir(mem_dir())
        .unwrap()
        .into_iter()
        .map(|p| {
            let len = fs.read_file(&p).unwrap().len() as u64;
            (p, len)
        })
        .collect()
}

/// Tears appends at every byte of the log write and the index write (and the roll's writes),
/// and checks that a failed append leaves no trace and the log goes on where it was.
#[test]
fn enospc_mid_append_leaves_no_trace() {
    let fs = MemFs::new();
    let clock = clock();
    let config = LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 200,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    };
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut synced_end = 0;
    let mut tag = 0u8;
    let mut torn = 0;
    let mut torn_rolls = 0;
    while log.segment_count() < 6 {
        tag = tag.wrapping_add(1);
        let n = usize::from(tag % 3) + 1;
        let template = sized_batch(n, 30, tag, i64::from(tag));
        let active_path = segment_path(mem_dir(), active_base(&fs), FileKind::Log);
        let active_len = fs.read_file(&active_path).unwrap().len();
        let will_roll = active_len > FILE_HEADER_LEN
            && (active_len + template.len()) as u64 > config.segment_bytes;
        // What this append needs: the batch, its index entries, maybe a time index entry,
        // and, when it rolls, the seal entry and three file headers.
        let need = template.len() + 4 * n + 12 + 12 + 3 * FILE_HEADER_LEN;
        // Tear it at every budget short of that on some appends and on every roll.
        let budgets: Vec<usize> = if tag.is_multiple_of(5) || will_roll {
            (0..need).collect()
        } else {
            vec![
                0,
                1,
                template.len() / 2,
                template.len() - 1,
                template.len() + 1,
            ]
        };
        let mut appended = false;
        for budget in budgets {
            let before = file_lens(&fs);
            let end = log.end_offset();
            let segments = log.segment_count();
            fs.set_faults(MemFsFaults {
                write_budget: Some(budget as u64),
                ..Default::default()
            });
            let mut b = template.clone();
            let result = log.append(&mut b);
            fs.set_faults(MemFsFaults::default());
            match result {
                Ok(a) => {
                    // The budget sufficed (only the sparse time index may have been skipped).
                    assert_eq!(a.base_offset, end);
                    model.push((a.base_offset, b));
                    appended = true;
                    break;
                }
                Err(e) => {
                    torn += 1;
                    if will_roll {
                        torn_rolls += 1;
                    }
                    match &e {
                        LogError::Io { source, .. } => {
                            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{e}")
                        }
                        other => panic!("budget {budget}: expected Io, got {other:?}"),
                    }
                    assert_eq!(log.end_offset(), end, "budget {budget}");
                    assert_eq!(log.reader().end_offset(), end);
                    // Nothing of the append is left in the files: every `.log` and `.index` is
                    // exactly as long as before. A roll that got as far as the old segment's
                    // seal entry may have added it (or a torn piece of it, which the next time
                    // index write overwrites); a roll that completed before the write failed
                    // leaves a new segment that holds nothing.
                    let after = file_lens(&fs);
                    for (p, len) in &before {
                        match p.extension().and_then(|e| e.to_str()) {
                            Some("timeindex") => {
                                assert!(after[p] >= *len && after[p] <= *len + 12, "{p:?}")
                            }
                            // The newest index entries are buffered in memory, so a roll may
                            // have written earlier appends' entries; never one for an offset
                            // at or past the end (this append's), and never a torn one.
                            Some("index") => {
                                let base: u64 = p
                                    .file_stem()
                                    .and_then(|s| s.to_str())
                                    .and_then(|s| s.parse().ok())
                                    .unwrap();
                                let most = FILE_HEADER_LEN as u64 + 4 * (end - base);
                                assert!(
                                    after[p] >= *len
                                        && after[p] <= most
                                        && (after[p] - FILE_HEADER_LEN as u64).is_multiple_of(4),
                                    "budget {budget}: {p:?} is {} bytes ({len} before, at most {most})",
                                    after[p]
                                );
                            }
                            _ => assert_eq!(after[p], *len, "budget {budget}: {p:?}"),
                        }
                    }
                    let new: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
                    if log.segment_count() == segments {
                        assert!(
                            new.is_empty(),
                            "budget {budget}: half-created segment {new:?}"
                        );
                    } else {
                        assert!(will_roll, "budget {budget}");
                        assert_eq!(log.segment_count(), segments + 1);
                        assert_eq!(new.len(), 3, "{new:?}");
                        for p in new {
                            let name = p.file_name().unwrap().to_str().unwrap();
                            assert!(name.starts_with(&format!("{end:020}.")), "{name}");
                            assert_eq!(after[p], FILE_HEADER_LEN as u64, "{p:?} holds data");
                        }
                    }
                    assert_eq!(raw_batches(&log.reader(), 0), model, "budget {budget}");
                }
            }
        }
        if !appended {
            let mut b = template.clone();
            let a = log.append(&mut b).unwrap();
            model.push((a.base_offset, b));
        }
        assert_eq!(
            raw_batches(&log.reader(), 0),
            model,
            "everything appended reads back"
        );
        if tag.is_multiple_of(4) {
            log.flush_if_due().unwrap();
            synced_end = log.durable_offset();
        }
    }
    assert!(torn > 100, "{torn} torn appends");
    assert!(torn_rolls > 50, "{torn_rolls} torn rolls");
    // Unsynced appends may go; everything synced must survive a power loss.
    let written_end = log.end_offset();
    drop(log);
    fs.crash();
    let mut log = open_mem(&fs, &clock, config).unwrap();
    let end = log.end_offset();
    assert!(end >= synced_end && end <= written_end);
    let got = raw_batches(&log.reader(), 0);
    let keep: Vec<_> = model.iter().filter(|(b, _)| *b < end).cloned().collect();
    assert_eq!(got, keep);
    assert_eq!(log.append(&mut batch(&["x"], 0)).unwrap().base_offset, end);
    log.verify().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 6. fsync failure
// ---------------------------------------------------------------------------------------------

fn fail_sync(fs: &MemFs) {
    fs.set_faults(MemFsFaults {
        fail_sync: true,
        ..Default::default()
    });
}

fn assert_poisoned<T: std::fmt::Debug>(r: cascade_log::Result<T>) {
    match r {
        Err(LogError::Poisoned { .. }) => {}
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

#[test]
fn failed_fsync_poisons_the_log_until_reopened() {
    // Where the fsync fails: an explicit sync, flush_if_due, a roll inside append.
    for (case, crash) in [
        ("sync", false),
        ("sync", true),
        ("flush", false),
        ("flush", true),
        ("roll", false),
        ("roll", true),
    ] {
        let fs = MemFs::new();
        let clock = clock();
        let config = LogConfig {
            segment_bytes: 1024,
            ..LogConfig::default()
        };
        let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
        for i in 0..20u8 {
            log.append(&mut sized_batch(2, 50, i, 0)).unwrap();
            log.flush_if_due().unwrap();
        }
        let durable = log.durable_offset();
        assert_eq!(durable, log.end_offset());
        let durable_data = raw_batches(&log.reader(), 0);
        // Written, not yet durable.
        log.append(&mut sized_batch(1, 10, 100, 0)).unwrap();
        let written = raw_batches(&log.reader(), 0);
        fail_sync(&fs);
        let err = match case {
            "sync" => log.sync().unwrap_err(),
            "flush" => log.flush_if_due().unwrap_err(),
            _ => {
                // Append until one rolls (and so fsyncs).
                let segments = log.segment_count();
                loop {
                    match log.append(&mut sized_batch(1, 300, 7, 0)) {
                        Ok(_) => assert_eq!(log.segment_count(), segments),
                        Err(e) => break e,
                    }
                }
            }
        };
        assert!(matches!(err, LogError::Io { .. }), "{case}: {err}");
        assert_eq!(log.durable_offset(), durable, "{case}");
        // Fail-stop: no more writes of any kind, even with the fault gone.
        fs.set_faults(MemFsFaults::default());
        assert_poisoned(log.append(&mut batch(&["no"], 0)));
        assert_poisoned(log.append_replicated(&written[0].1));
        assert_poisoned(log.sync());
        assert_poisoned(log.flush_if_due());
        assert_poisoned(log.roll());
        assert_poisoned(log.apply_retention());
        assert_poisoned(log.truncate_to(1));
        assert_poisoned(log.truncate_fully(0));
        // Reads go on.
        let r = log.reader();
        let now = raw_batches(&r, 0);
        assert!(now.len() >= written.len(), "{case}");
        assert_eq!(now[..written.len()], written[..], "{case}");
        let end = log.end_offset();
        assert_poisoned(log.close());
        if crash {
            fs.crash();
        }
        let mut log =
            open_mem(&fs, &clock, config.clone()).unwrap_or_else(|e| panic!("{case}: reopen: {e}"));
        let got = raw_batches(&log.reader(), 0);
        assert!(log.end_offset() >= durable, "{case}");
        assert!(log.end_offset() <= end, "{case}");
        assert_eq!(
            got[..durable_data.len()],
            durable_data[..],
            "{case}: durable data lost"
        );
        if !crash {
            // Nothing was lost at all: only the process "restarted".
            assert_eq!(log.end_offset(), end, "{case}");
        }
        let next = log.end_offset();
        assert_eq!(
            log.append(&mut batch(&["yes"], 0)).unwrap().base_offset,
            next
        );
        log.sync().unwrap();
        log.verify().unwrap();
    }
}

#[test]
fn failed_fsync_fails_shared_log_appends_then_poisons() {
    let fs = MemFs::new();
    let clock = clock();
    let log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    let shared = SharedLog::new(log);
    for i in 0..10 {
        let a = shared.append(&mut batch(&["v"], i)).unwrap();
        assert!(shared.reader().durable_offset() > a.last_offset);
    }
    fail_sync(&fs);
    assert!(matches!(
        shared.append(&mut batch(&["w"], 0)),
        Err(LogError::Io { .. })
    ));
    fs.set_faults(MemFsFaults::default());
    assert_poisoned(shared.append(&mut batch(&["x"], 0)));
    assert_eq!(shared.reader().durable_offset(), 10);
    assert_eq!(values(&shared.reader(), 0).len(), 11);
    drop(shared);
    fs.crash();
    let log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), 10);
    assert_eq!(values(&log.reader(), 0), vec!["v"; 10]);
}

// ---------------------------------------------------------------------------------------------
// 7. Power loss
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Before {
    Nothing,
    Roll,
    Retention,
    Truncate,
    TruncateIntoSealed,
}

/// Appends with acknowledgements (fsync), rolls, retention and truncation, then some more
/// appends that are never synced, then a power loss; over several seeds and crash points.
#[test]
fn power_loss_keeps_every_acknowledged_record() {
    let mut seen = PowerLossStats::default();
    for seed in 0..12u64 {
        for before in [
            Before::Nothing,
            Before::Roll,
            Before::Retention,
            Before::Truncate,
            Before::TruncateIntoSealed,
        ] {
            power_loss_case(seed, before, &mut seen);
        }
    }
    // The variations did what they claim.
    assert!(seen.segments_deleted > 10, "{seen:?}");
    assert!(seen.truncations_into_sealed > 10, "{seen:?}");
    assert!(seen.unsynced_lost > 50, "{seen:?}");
}

#[derive(Debug, Default)]
struct PowerLossStats {
    segments_deleted: usize,
    truncations_into_sealed: usize,
    /// Records written without an fsync and gone after the crash.
    unsynced_lost: u64,
}

fn power_loss_case(seed: u64, before: Before, seen: &mut PowerLossStats) {
    let mut rng = Rng(seed * 7919 + before as u64);
    let fs = MemFs::new();
    let clock = clock();
    let config = LogConfig {
        segment_bytes: rng.range(600, 3000),
        index_interval_bytes: rng.range(50, 500),
        retention_bytes: Some(4000),
        retention_age: None,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    };
    let ctx = format!("seed {seed}, {before:?}");
    // The log as written: base offset -> exact bytes, including what was never synced.
    let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    let mut tag = 0u8;
    let mut append = |log: &mut Log, model: &mut BTreeMap<u64, Vec<u8>>, rng: &mut Rng| {
        tag = tag.wrapping_add(1);
        let n = rng.range(1, 5) as usize;
        let mut b = sized_batch(
            n,
            rng.range(1, 120) as usize,
            tag,
            rng.range(0, 1000) as i64,
        );
        let a = log.append(&mut b).unwrap();
        model.insert(a.base_offset, b);
    };
    for round in 0..4 {
        let ctx = format!("{ctx}, round {round}");
        // Acknowledged appends: each is fsynced (group commit of one) before it counts.
        let mut acked = log.durable_offset();
        for _ in 0..rng.range(5, 40) {
            append(&mut log, &mut model, &mut rng);
            log.flush_if_due().unwrap();
            assert!(log.durable_offset() >= log.end_offset());
            acked = log.durable_offset();
            if rng.chance(8) {
                log.roll().unwrap();
            }
        }
        match before {
            Before::Nothing => {}
            Before::Roll => log.roll().unwrap(),
            Before::Retention => {
                seen.segments_deleted += log.apply_retention().unwrap().segments_deleted;
            }
            Before::Truncate | Before::TruncateIntoSealed => {
                let (start, end) = (log.start_offset(), log.end_offset());
                let lo = if matches!(before, Before::TruncateIntoSealed) {
                    start
                } else {
                    start + (end - start) / 2
                };
                if end > lo {
                    let segments = log.segment_count();
                    let new_end = log.truncate_to(rng.range(lo, end)).unwrap();
                    if log.segment_count() < segments {
                        seen.truncations_into_sealed += 1;
                    }
                    model.retain(|&b, _| b < new_end);
                    acked = acked.min(new_end);
                    assert_eq!(log.durable_offset(), new_end, "{ctx}");
                }
            }
        }
        acked = acked.max(log.durable_offset());
        // Written but never synced (unless a roll seals them on the way).
        for _ in 0..rng.range(0, 6) {
            append(&mut log, &mut model, &mut rng);
        }
        let durable = log.durable_offset();
        assert!(durable >= acked, "{ctx}");
        let start = log.start_offset();
        let written_end = log.end_offset();
        model.retain(|&b, _| b >= start);
        drop(log);
        fs.crash();
        log = open_mem(&fs, &clock, config.clone())
            .unwrap_or_else(|e| panic!("{ctx}: reopen after crash: {e}"));
        let end = log.end_offset();
        seen.unsynced_lost += written_end.saturating_sub(end);
        assert_eq!(log.start_offset(), start, "{ctx}");
        assert!(end >= durable, "{ctx}: end {end} < durable {durable}");
        assert!(
            end <= written_end,
            "{ctx}: end {end} > written {written_end}"
        );
        // Every batch is one that was written there, byte for byte: acknowledged ones are
        // all present, and nothing is invented.
        let got = raw_batches(&log.reader(), start);
        let want: Vec<(u64, Vec<u8>)> = model.range(..end).map(|(b, v)| (*b, v.clone())).collect();
        assert_eq!(got.len(), want.len(), "{ctx}");
        assert!(
            got == want,
            "{ctx}: recovered batches differ from those written"
        );
        log.verify().unwrap();
        // What was lost is gone from the model too; the next append continues at the end.
        model.retain(|&b, _| b < end);
        append(&mut log, &mut model, &mut rng);
        assert_eq!(*model.keys().last().unwrap(), end, "{ctx}");
        log.flush_if_due().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Group commit
// ---------------------------------------------------------------------------------------------

#[test]
fn group_commit_shares_fsyncs_between_threads() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 200;
    // MemFs underneath; each fsync takes 200µs, as a fast real one does, instead of the
    // nanoseconds of a memory copy (nothing below depends on timing).
    let slow = GateFs::new(std::time::Duration::from_micros(200));
    let fs = slow.inner.clone();
    let clock = clock();
    let config = LogConfig {
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    };
    let log = Log::open_with(Arc::new(slow), clock.clone(), mem_dir(), config.clone()).unwrap();
    let shared = Arc::new(SharedLog::new(log));
    let syncs_before = fs.sync_count();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let shared = shared.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::with_capacity(PER_THREAD);
                for i in 0..PER_THREAD {
                    let v = format!("t{t}-{i}");
                    let a = shared.append(&mut batch(&[&v], i as i64)).unwrap();
                    assert_eq!(a.record_count, 1);
                    assert_eq!(a.base_offset, a.last_offset);
                    // Returned only once durable.
                    assert!(shared.reader().durable_offset() > a.last_offset);
                    mine.push((a.base_offset, v));
                }
                mine
            })
        })
        .collect();
    let mut appended: Vec<(u64, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let total = THREADS * PER_THREAD;
    let syncs = fs.sync_count() - syncs_before;
    appended.sort();
    assert_eq!(appended.len(), total);
    for (i, (off, _)) in appended.iter().enumerate() {
        assert_eq!(*off, i as u64, "every offset handed out exactly once");
    }
    let want: Vec<String> = appended.iter().map(|(_, v)| v.clone()).collect();
    let mut distinct = want.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), total);
    assert_eq!(
        values(&shared.reader(), 0),
        want,
        "each record once, at its offset"
    );
    assert!(
        syncs < total as u64,
        "{syncs} fsyncs for {total} appends: none were shared"
    );
    // And they really were durable.
    drop(shared);
    fs.crash();
    let log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(values(&log.reader(), 0), want);
}

// ---------------------------------------------------------------------------------------------
// 9. Readers racing the writer
// ---------------------------------------------------------------------------------------------

/// A batch whose record values name their own offsets ("o<offset>"), given the log end.
fn self_describing_batch(end: u64, n: u64, ts: i64) -> Vec<u8> {
    let vals: Vec<String> = (0..n).map(|j| format!("o{}", end + j)).collect();
    let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
    batch(&refs, ts)
}

fn check_fetch(offset: u64, f: &cascade_log::Fetched) {
    if f.data.is_empty() {
        assert!(
            offset >= f.end_offset,
            "empty read at {offset} below the end {}",
            f.end_offset
        );
        return;
    }
    let mut next: Option<u64> = None;
    for (i, b) in Batches::new(&f.data).enumerate() {
        let b = b.unwrap_or_else(|e| panic!("read at {offset}: invalid batch: {e}"));
        let h = b.header();
        if i == 0 {
            assert!(
                h.base_offset as u64 <= offset && offset <= h.last_offset() as u64,
                "read at {offset} returned a batch holding {}..={}",
                h.base_offset,
                h.last_offset()
            );
        }
        if let Some(n) = next {
            assert_eq!(
                h.base_offset as u64, n,
                "read at {offset}: batches not contiguous"
            );
        }
        for rec in b.records().unwrap() {
            let want = format!("o{}", rec.offset);
            assert_eq!(rec.value.unwrap(), want.as_bytes(), "read at {offset}");
        }
        next = Some(h.next_offset() as u64);
    }
    assert_eq!(
        next,
        Some(f.next_offset),
        "read at {offset}: whole batches only"
    );
}

#[test]
fn readers_never_see_errors_or_wrong_batches_while_the_writer_works() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of dozens of batches, so that truncating one does real work while readers are
    // in it; retention keeps only the newest few.
    let config = LogConfig {
        segment_bytes: 8 * 1024,
        index_interval_bytes: 1024,
        retention_bytes: Some(24 * 1024),
        retention_age: None,
        flush: FlushPolicy::Never,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let r = log.reader();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(1000 + t);
                let (mut reads, mut out_of_range) = (0u64, 0u64);
                for i in 0..5_000_000u64 {
                    if done.load(Ordering::SeqCst) && i > 1000 {
                        break;
                    }
                    let (start, end) = (r.start_offset(), r.end_offset());
                    if end <= start {
                        continue;
                    }
                    // Half the reads near the end, where truncations cut.
                    let lo = if rng.chance(2) {
                        start.max(end.saturating_sub(300))
                    } else {
                        start
                    };
                    let offset = rng.range(lo, end);
                    let max_bytes = rng.range(1, 3000) as usize;
                    match r.read(offset, max_bytes) {
                        Ok(f) => {
                            check_fetch(offset, &f);
                            reads += 1;
                        }
                        Err(LogError::OffsetOutOfRange { .. }) => out_of_range += 1,
                        Err(e) => panic!("read at {offset} in [{start}, {end}): {e}"),
                    }
                }
                (reads, out_of_range)
            })
        })
        .collect();
    let mut rng = Rng(7);
    let (mut truncations, mut retentions, mut rolls) = (0, 0, 0);
    for i in 0..4000u64 {
        let n = rng.range(1, 5);
        let end = log.end_offset();
        let a = log
            .append(&mut self_describing_batch(end, n, i as i64))
            .unwrap();
        assert_eq!(a.base_offset, end);
        if i % 10 == 0 && log.apply_retention().unwrap().segments_deleted > 0 {
            retentions += 1;
        }
        if i % 150 == 149 {
            log.roll().unwrap();
            rolls += 1;
        }
        if i % 20 == 19 {
            let (start, end) = (log.start_offset(), log.end_offset());
            if end > start {
                // Usually inside the active segment, sometimes back into a sealed one.
                let back = if rng.chance(10) { 200 } else { 30 };
                let to = rng.range(start.max(end.saturating_sub(back)), end);
                log.truncate_to(to).unwrap();
                truncations += 1;
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut total_reads = 0;
    for h in readers {
        let (reads, _out_of_range) = h.join().unwrap();
        total_reads += reads;
    }
    assert!(
        truncations > 150 && retentions > 10 && rolls > 20,
        "{truncations} truncations, {retentions} retentions, {rolls} rolls"
    );
    assert!(total_reads > 1000, "{total_reads} reads");
    log.verify().unwrap();
    let r = log.reader();
    assert_eq!(
        read_all(&r, r.start_offset()).len() as u64,
        r.end_offset() - r.start_offset()
    );
}

/// A [`MemFs`] wrapper that can hold one chosen thread inside its next read of a `.index` or
/// `.log` file, so a test can run the writer at exactly that point of a read; and that can make
/// every fsync take a while, as a real one does.
#[derive(Debug, Clone)]
struct GateFs {
    inner: MemFs,
    gate: Arc<Gate>,
    sync_delay: std::time::Duration,
}

impl GateFs {
    fn new(sync_delay: std::time::Duration) -> Self {
        Self {
            inner: MemFs::new(),
            gate: Arc::new(Gate::default()),
            sync_delay,
        }
    }
}

#[derive(Debug, Default)]
struct Gate {
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    armed: Option<(std::thread::ThreadId, &'static str)>,
    arrived: bool,
    released: bool,
}

impl Gate {
    /// Holds the calling thread in its next read of a file with extension `ext`.
    fn arm_for_me(&self, ext: &'static str) {
        self.state.lock().unwrap().armed = Some((std::thread::current().id(), ext));
    }

    fn wait_arrived(&self) {
        let mut st = self.state.lock().unwrap();
        while !st.arrived {
            st = self.changed.wait(st).unwrap();
        }
    }

    fn release(&self) {
        self.state.lock().unwrap().released = true;
        self.changed.notify_all();
    }

    fn pass(&self, path: &Path) {
        let mut st = self.state.lock().unwrap();
        let ext = path.extension().and_then(|e| e.to_str());
        match st.armed {
            Some((tid, want)) if tid == std::thread::current().id() && ext == Some(want) => {
                st.armed = None;
                st.arrived = true;
                self.changed.notify_all();
                while !st.released {
                    st = self.changed.wait(st).unwrap();
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
struct GateFile {
    inner: Arc<dyn cascade_log::fs::File>,
    path: PathBuf,
    gate: Arc<Gate>,
    sync_delay: std::time::Duration,
}

impl cascade_log::fs::File for GateFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        self.gate.pass(&self.path);
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        std::thread::sleep(self.sync_delay);
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
}

impl FileSystem for GateFs {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn cascade_log::fs::File>> {
        Ok(Arc::new(GateFile {
            inner: self.inner.open(path, create)?,
            path: path.to_path_buf(),
            gate: self.gate.clone(),
            sync_delay: self.sync_delay,
        }))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn read_dir(&self, path: &Path) -> std::io::Result<Vec<PathBuf>> {
        self.inner.read_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
}

/// A read that has found its segment and bounds, then is held inside its index or log read
/// while the writer truncates below the offset (and, in some cases, appends over the cut):
/// the read must notice the race and answer for the log as it is now, never fail with
/// `Corrupt` because the files shrank under it.
#[test]
fn a_read_overtaken_by_a_truncation_retries_instead_of_failing() {
    // Where to cut, relative to the active segment that holds the offset read.
    #[derive(Debug, Clone, Copy)]
    enum Cut {
        /// Inside the reader's segment, which shrinks.
        SameSegment,
        /// At the reader's segment's base: it shrinks to nothing.
        SegmentStart,
        /// Into an earlier segment: the reader's segment is deleted.
        EarlierSegment,
    }
    for held_in in ["index", "log"] {
        for cut in [Cut::SameSegment, Cut::SegmentStart, Cut::EarlierSegment] {
            for refill in [0u64, 1, 6] {
                let ctx = format!("held in .{held_in}, {cut:?}, refill {refill}");
                let fs = GateFs::new(std::time::Duration::ZERO);
                let config = LogConfig {
                    segment_bytes: 600,
                    ..LogConfig::default()
                };
                let mut log =
                    Log::open_with(Arc::new(fs.clone()), clock(), mem_dir(), config).unwrap();
                for i in 0..20u64 {
                    let end = log.end_offset();
                    log.append(&mut self_describing_batch(end, 1, i as i64))
                        .unwrap();
                }
                assert!(log.segment_count() > 2, "{ctx}");
                let active = active_base(&fs.inner);
                let x = log.end_offset() - 1;
                assert!(x > active + 1, "{ctx}");
                let to = match cut {
                    Cut::SameSegment => active + 1,
                    Cut::SegmentStart => active,
                    Cut::EarlierSegment => active - 2,
                };
                // The newest index entries live in memory until written out; write them, so
                // the reader really reads the `.index` file it is held in.
                log.flush_index().unwrap();
                let r = log.reader();
                let gate = fs.gate.clone();
                let reader = std::thread::spawn(move || {
                    gate.arm_for_me(held_in);
                    r.read(x, 10_000)
                });
                fs.gate.wait_arrived();
                assert_eq!(log.truncate_to(to).unwrap(), to, "{ctx}");
                for i in 0..refill {
                    let end = log.end_offset();
                    log.append(&mut self_describing_batch(end, 1, i as i64))
                        .unwrap();
                }
                fs.gate.release();
                let end = log.end_offset();
                match reader.join().unwrap() {
                    Ok(f) => {
                        assert!(x <= end, "{ctx}: read data at {x} with the end at {end}");
                        check_fetch(x, &f);
                    }
                    Err(LogError::OffsetOutOfRange { requested, .. }) => {
                        assert_eq!(requested, x);
                        assert!(x > end, "{ctx}: {x} is in the log [.., {end})")
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
        }
    }
}
