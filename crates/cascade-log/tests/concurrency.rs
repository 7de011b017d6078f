//! Threads against one log. Group commit: concurrent `SharedLog` appends each get a distinct
//! offset, return only once durable, and share fsyncs. Readers racing the writer (appends,
//! rolls, retention, truncations) never see an error other than `OffsetOutOfRange`, nor a
//! wrong or partial batch; and a read held inside its index or log read while the writer
//! truncates under it retries instead of reporting corruption.

mod common;

use cascade_log::fs::{FileSystem, MemFs};
use cascade_log::record::Batches;
use cascade_log::{FlushPolicy, Log, LogConfig, LogError, SharedLog};
use common::crash::*;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

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
