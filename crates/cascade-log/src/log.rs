//! [`Log`]: the single writer of one partition's log.
//!
//! The writer owns the active segment and is the only code that appends, rolls, truncates or
//! deletes segments; it takes `&mut self`, so one writer per log is a compile-time fact. Readers
//! get a [`LogReader`] that shares the segment list through [`Shared`] and never take the
//! writer's side: the writer publishes a new end only after the bytes and index entries are
//! written, and swaps the segment list (a brief write lock, no IO under it) only on roll,
//! retention and truncation.
//!
//! Durability: `append` writes but does not fsync. Under [`FlushPolicy::Always`] the owner
//! calls [`Log::flush_if_due`] (or [`Log::sync`]) after a group of appends and acknowledges them
//! only then, so one fsync covers the whole group; [`crate::SharedLog`] does this for threads.
//! A failed fsync poisons the log: every later write fails with [`LogError::Poisoned`].
//!
//! Idempotent producers: the writer owns the partition's [`ProducerStates`]. `append` checks
//! every producer batch against it before writing anything (in sequence, exact retry of a kept
//! batch, or refused) and records the written batches; `append_replicated` records without
//! checking, so followers hold the same state as their leader. The state is saved in snapshot
//! files at every roll and at close, and rebuilt (newest usable snapshot, then the batch
//! headers after it) on open and after a truncation; see [`crate::snapshots`] for why that is
//! always the state of the log as it is.

use crate::config::{Clock, FlushPolicy, LogConfig};
use crate::error::{LogError, Result};
use crate::format::{CLEAN_MARKER, CleanMarker, FILE_HEADER_LEN};
use crate::fs::{File, FileSystem};
use crate::index::{Position, TimeIndexEntry};
use crate::producers::{Overlay, ProducerStates, SeqCheck, last_sequence};
use crate::reader::LogReader;
use crate::segment::{Segment, SegmentEnd};
use crate::snapshots::{self, invalid_producer_fields, is_producer_batch};
use cascade_record::{BatchHeader, header::set_base_offset, validate_batch};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// State shared between the writer and its readers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    /// The segments in offset order; the last one is active. Replaced whole (copy on write).
    pub segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    /// Bumped before any truncation changes files, so a reader can tell its read raced one.
    pub generation: AtomicU64,
    pub start_offset: AtomicU64,
    pub end_offset: AtomicU64,
    /// Offsets below this are fsynced.
    pub durable_offset: AtomicU64,
    pub poisoned: Mutex<Option<String>>,
}

impl Shared {
    pub fn segments(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn replace_segments(&self, segs: Vec<Arc<Segment>>) {
        let start = segs.first().map(|s| s.base).unwrap_or(0);
        *self.segments.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(segs);
        self.start_offset.store(start, Ordering::SeqCst);
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended (of a duplicate: of the original batch).
    pub base_offset: u64,
    /// Offset of the last record appended (of a duplicate: of the original batch).
    pub last_offset: u64,
    /// Number of records appended (of a duplicate: in the original batches).
    pub record_count: u64,
    /// Bytes appended (0 for a duplicate).
    pub bytes: u64,
    /// True when every batch was an exact retry of a producer batch already in the log:
    /// nothing was written, and the offsets are those the originals were written at.
    pub duplicate: bool,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of log deleted.
    pub bytes_deleted: u64,
    /// The log start offset afterwards.
    pub start_offset: u64,
}

/// Writer-side state of the active segment.
#[derive(Debug)]
pub(crate) struct Active {
    pub seg: Arc<Segment>,
    pub next_offset: u64,
    pub log_len: u64,
    pub max_ts: i64,
    pub since_time_entry: u64,
    pub time_entries: u64,
    pub last_time_entry: Option<TimeIndexEntry>,
}

impl Active {
    pub fn new(seg: Arc<Segment>) -> Result<Self> {
        let end = seg.end();
        let time_entries = seg.time_entry_count()?;
        let last_time_entry = match time_entries {
            0 => None,
            n => Some(seg.time_entry(n - 1)?),
        };
        Ok(Self {
            next_offset: end.next_offset,
            log_len: end.log_len,
            max_ts: seg.max_timestamp(),
            since_time_entry: 0,
            time_entries,
            last_time_entry,
            seg,
        })
    }

    fn is_empty(&self) -> bool {
        self.next_offset == self.seg.base
    }
}

/// One partition's log: the writer half. See the module docs.
#[derive(Debug)]
pub struct Log {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: LogConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) active: Active,
    /// Reused buffer for index entries, so appends allocate nothing in steady state.
    pub(crate) scratch: Vec<u8>,
    pub(crate) last_sync: Instant,
    /// The idempotent producers' state as of the log end.
    pub(crate) producers: ProducerStates,
    /// Offsets of the producer snapshots in the directory.
    pub(crate) snapshots: BTreeSet<u64>,
    /// The recovery-point file ([`crate::format::RECOVERY_POINT`]), rewritten after every
    /// fsync; None if it could not be opened (recovery is then only less strict).
    pub(crate) recovery: Option<Arc<dyn File>>,
}

impl Log {
    /// A reader sharing this log's segments; clone it freely.
    pub fn reader(&self) -> LogReader {
        LogReader::new(self.shared.clone())
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings for everything from now on: roll thresholds, retention and the
    /// flush policy. `initial_offset` and `on_corruption` only matter when opening.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.shared.start_offset.load(Ordering::SeqCst)
    }

    /// Offset the next appended record gets.
    pub fn end_offset(&self) -> u64 {
        self.active.next_offset
    }

    /// Offsets below this are fsynced.
    pub fn durable_offset(&self) -> u64 {
        self.shared.durable_offset.load(Ordering::SeqCst)
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.shared.segments().len()
    }

    /// Bytes of log data over all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.segments().iter().map(|s| s.size_bytes()).sum()
    }

    fn check_poisoned(&self) -> Result<()> {
        match self.shared.poisoned() {
            Some(reason) => Err(LogError::Poisoned {
                dir: self.shared.dir.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn poison(&self, reason: String) {
        tracing::error!(dir = %self.shared.dir.display(), %reason, "log poisoned");
        let mut p = self
            .shared
            .poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.get_or_insert(reason);
    }

    /// The idempotent producers' state as of the log end.
    pub fn producer_states(&self) -> &ProducerStates {
        &self.producers
    }

    /// Forgets the producers not seen for longer than [`LogConfig::producer_id_expiration`]
    /// (by this log's clock); returns how many. The owner calls it periodically. Expiry is not
    /// replicated: each replica applies it by its own clock, and a rebuild after a crash may
    /// bring back a producer seen in the replayed part of the log for one more period.
    pub fn expire_producers(&mut self) -> usize {
        let Some(idle) = self.config.producer_id_expiration else {
            return 0;
        };
        let idle_ms = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        let n = self.producers.expire(self.clock.now_ms(), idle_ms);
        if n > 0 {
            tracing::debug!(dir = %self.shared.dir.display(), expired = n,
                producers = self.producers.len(), "expired idle producers");
        }
        n
    }

    /// Appends one or more batches laid end to end in `batches`, assigning their offsets.
    ///
    /// Every batch is validated first (CRC, record framing, producer fields); if any is invalid
    /// nothing is written. Then every batch of an idempotent producer (producer id ≥ 0) is
    /// checked in order against the producer state ([`ProducerStates::check`]; several batches
    /// of one producer must each follow the previous one): any refusal
    /// ([`LogError::OutOfOrderSequence`], [`LogError::ProducerFenced`],
    /// [`LogError::UnknownProducerId`]) writes nothing. If every batch is an exact retry of a
    /// batch already in the log, nothing is written and the answer is the originals' offsets
    /// with [`AppendInfo::duplicate`] set; retries mixed with new batches are refused
    /// ([`LogError::MixedDuplicates`]).
    ///
    /// The base offset field of each batch in `batches` is overwritten with its assigned
    /// offset; nothing else in the caller's bytes changes (the CRC does not cover the offset).
    /// The data is visible to readers when this returns, and durable once
    /// [`Log::durable_offset`] passes it (for a duplicate: once it passes `last_offset`, as for
    /// the original).
    pub fn append(&mut self, batches: &mut [u8]) -> Result<AppendInfo> {
        self.check_poisoned()?;
        let v = validate_all(batches, true)?;
        if v.producers
            && let Some(dup) = self.check_producers(batches)?
        {
            return Ok(dup);
        }
        self.prepare_room(batches.len() as u64)?;
        let mut next = self.active.next_offset;
        let mut at = 0;
        while at < batches.len() {
            let h = BatchHeader::parse(&batches[at..]).expect("validated above");
            set_base_offset(&mut batches[at..], next as i64);
            next += h.record_count as u64;
            at += h.total_len();
        }
        let info = self.write(batches, v.count, v.max_ts)?;
        if v.producers {
            self.record_producers(batches);
        }
        Ok(info)
    }

    /// Checks the producer batches of an append in order without changing the state; `Some`
    /// when the whole append is a retry, with the originals' offsets.
    fn check_producers(&self, batches: &[u8]) -> Result<Option<AppendInfo>> {
        let now = self.clock.now_ms();
        let mut overlay = Overlay::new(&self.producers);
        let mut next = self.active.next_offset;
        // (first offset, last offset, records) of the retries so far.
        let mut dups: Option<(u64, u64, u64)> = None;
        let mut any_new = false;
        let mut at = 0;
        while at < batches.len() {
            let h = BatchHeader::parse(&batches[at..]).expect("validated above");
            let n = h.record_count as u64;
            let verdict = if h.producer_id >= 0 {
                overlay.check(
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.record_count,
                )?
            } else {
                SeqCheck::Append
            };
            match verdict {
                SeqCheck::Append => {
                    if dups.is_some() {
                        return Err(LogError::MixedDuplicates {
                            position: at,
                            reason: "a new batch after a retry of a batch already in the log"
                                .into(),
                        });
                    }
                    if h.producer_id >= 0 {
                        overlay.record(
                            h.producer_id,
                            h.producer_epoch,
                            h.base_sequence,
                            last_sequence(h.base_sequence, h.record_count),
                            next,
                            next + n - 1,
                            now,
                        );
                    }
                    any_new = true;
                    next += n;
                }
                SeqCheck::Duplicate(m) => {
                    if any_new {
                        return Err(LogError::MixedDuplicates {
                            position: at,
                            reason: format!(
                                "a retry of the batch at offsets {}..={} after new batches",
                                m.first_offset, m.last_offset
                            ),
                        });
                    }
                    dups = Some(match dups {
                        None => (m.first_offset, m.last_offset, m.record_count()),
                        Some((first, last, count)) if m.first_offset > last => {
                            (first, m.last_offset, count + m.record_count())
                        }
                        Some((_, last, _)) => {
                            return Err(LogError::MixedDuplicates {
                                position: at,
                                reason: format!(
                                    "retries out of order: the batch at offsets {}..={} \
                                     after one ending at {last}",
                                    m.first_offset, m.last_offset
                                ),
                            });
                        }
                    });
                }
            }
            at += h.total_len();
        }
        Ok(dups.map(|(first, last, count)| {
            tracing::debug!(dir = %self.shared.dir.display(), first, last,
                "duplicate producer batches answered with their original offsets");
            AppendInfo {
                base_offset: first,
                last_offset: last,
                record_count: count,
                bytes: 0,
                duplicate: true,
            }
        }))
    }

    /// Records the producer batches of `batches`, which are in the log with their offsets.
    fn record_producers(&mut self, batches: &[u8]) {
        let now = self.clock.now_ms();
        let mut at = 0;
        while at < batches.len() {
            let h = BatchHeader::parse(&batches[at..]).expect("validated above");
            snapshots::record_batch(&mut self.producers, &h, now);
            at += h.total_len();
        }
    }

    /// Appends batches that already carry their offsets, as a follower copies a leader's log.
    /// The first batch must start at the log end and offsets must run on densely. Producer
    /// batches are not checked (the leader did) but recorded, so the follower's producer state
    /// follows the leader's.
    pub fn append_replicated(&mut self, batches: &[u8]) -> Result<AppendInfo> {
        self.check_poisoned()?;
        let ValidBatches {
            count,
            max_ts,
            producers,
        } = validate_all(batches, false)?;
        let mut expected = self.active.next_offset;
        let mut at = 0;
        while at < batches.len() {
            let h = BatchHeader::parse(&batches[at..]).expect("validated above");
            if h.base_offset as u64 != expected {
                return Err(LogError::NonContiguous {
                    expected,
                    got: h.base_offset as u64,
                });
            }
            expected = h.next_offset() as u64;
            at += h.total_len();
        }
        self.prepare_room(batches.len() as u64)?;
        let info = self.write(batches, count, max_ts)?;
        if producers {
            self.record_producers(batches);
        }
        Ok(info)
    }

    /// Rolls first if the append would overflow the segment or the segment is too old.
    fn prepare_room(&mut self, size: u64) -> Result<()> {
        let max = u64::from(u32::MAX) - FILE_HEADER_LEN as u64;
        if size > max {
            return Err(LogError::TooLarge { size, max });
        }
        if self.active.is_empty() {
            return Ok(());
        }
        let too_big = self.active.log_len + size > self.config.segment_bytes;
        let too_old = self.config.segment_age.is_some_and(|age| {
            self.clock.now_ms() - self.active.seg.created_ms >= age.as_millis() as i64
        });
        if too_big || too_old {
            self.roll()?;
        }
        Ok(())
    }

    /// Writes validated batches with final offsets at the end of the active segment, adds their
    /// index entries (to the segment's in-memory index tail), then publishes the new end. On
    /// failure the `.log` is cut back so that nothing of this append remains; if even that
    /// fails the log is poisoned.
    fn write(&mut self, batches: &[u8], count: u64, max_ts: i64) -> Result<AppendInfo> {
        let a = &mut self.active;
        let seg = a.seg.clone();
        let base = a.next_offset;
        let old_len = a.log_len;
        self.scratch.clear();
        self.scratch.reserve(count as usize * 4);
        let mut at = 0;
        while at < batches.len() {
            let h = BatchHeader::parse(&batches[at..]).expect("validated above");
            let pos = ((old_len + at as u64) as u32).to_le_bytes();
            for _ in 0..h.record_count {
                self.scratch.extend_from_slice(&pos);
            }
            at += h.total_len();
        }
        let written = seg
            .log
            .write_all_at(batches, old_len)
            .map_err(|e| LogError::io("write", &seg.log_path, e));
        if let Err(e) = written {
            self.undo_write(&seg, old_len);
            return Err(e);
        }
        // Before the end is published, so readers always find the entries.
        seg.push_index(base - seg.base, &self.scratch);
        let a = &mut self.active;
        a.next_offset = base + count;
        a.log_len = old_len + batches.len() as u64;
        a.max_ts = a.max_ts.max(max_ts);
        a.since_time_entry += batches.len() as u64;
        if a.since_time_entry >= self.config.index_interval_bytes {
            let entry = TimeIndexEntry {
                max_timestamp: a.max_ts,
                relative_offset: (a.next_offset - seg.base) as u32,
            };
            // The time index is sparse: a failed entry costs lookups a longer scan, not
            // correctness, as long as no torn entry is left behind.
            match seg.write_time_entry(a.time_entries, entry) {
                Ok(()) => {
                    a.time_entries += 1;
                    a.last_time_entry = Some(entry);
                    a.since_time_entry = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "time index entry not written");
                    if seg
                        .time
                        .set_len(TimeIndexEntry::file_offset(a.time_entries))
                        .is_err()
                    {
                        self.poison(format!("cannot cut back time index after: {e}"));
                    }
                }
            }
        }
        let a = &self.active;
        seg.set_max_timestamp(a.max_ts);
        seg.set_end(SegmentEnd {
            next_offset: a.next_offset,
            log_len: a.log_len,
        });
        self.shared
            .end_offset
            .store(a.next_offset, Ordering::SeqCst);
        Ok(AppendInfo {
            base_offset: base,
            last_offset: a.next_offset - 1,
            record_count: count,
            bytes: batches.len() as u64,
            duplicate: false,
        })
    }

    fn undo_write(&self, seg: &Segment, old_len: u64) {
        if let Err(e) = seg.log.set_len(old_len) {
            self.poison(format!("cannot cut back a failed append: {e}"));
        }
    }

    /// Writes the active segment's buffered index entries to its `.index` file (they are
    /// otherwise written in 64 KiB chunks, when the segment is sealed and on close). The index
    /// is derived data: this is for tools that read the files, not for durability.
    pub fn flush_index(&mut self) -> Result<()> {
        self.active.seg.flush_index()
    }

    /// fsyncs everything appended so far; returns the durable end offset.
    pub fn sync(&mut self) -> Result<u64> {
        self.check_poisoned()?;
        let end = self.active.next_offset;
        if self.durable_offset() >= end {
            return Ok(end);
        }
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let r = self.active.seg.log.sync_data();
        let path = self.active.seg.log_path.clone();
        self.complete_sync(end, generation, r, &path)
    }

    /// fsyncs if the flush policy says it is time: always after an append under `Always`,
    /// after the interval under `Interval`, never under `Never`.
    pub fn flush_if_due(&mut self) -> Result<()> {
        let dirty = self.durable_offset() < self.active.next_offset;
        let due = match self.config.flush {
            FlushPolicy::Always => dirty,
            FlushPolicy::Interval(d) => dirty && self.last_sync.elapsed() >= d,
            FlushPolicy::Never => false,
        };
        if due {
            self.sync()?;
        }
        Ok(())
    }

    /// What a concurrent syncer needs: the end to be covered, the file to fsync, and the
    /// generation it belongs to. Used by [`crate::SharedLog`] to fsync outside the log's lock.
    pub(crate) fn sync_target(&self) -> Result<(u64, Arc<dyn File>, u64, PathBuf)> {
        self.check_poisoned()?;
        Ok((
            self.active.next_offset,
            self.active.seg.log.clone(),
            self.shared.generation.load(Ordering::SeqCst),
            self.active.seg.log_path.clone(),
        ))
    }

    /// Records the result of an fsync that covered offsets below `end`.
    pub(crate) fn complete_sync(
        &mut self,
        end: u64,
        generation: u64,
        result: std::io::Result<()>,
        path: &Path,
    ) -> Result<u64> {
        match result {
            Ok(()) => {
                // A truncation in between may have removed what was synced: only a sync of the
                // current generation may move the durable offset.
                if generation == self.shared.generation.load(Ordering::SeqCst) {
                    self.shared.durable_offset.fetch_max(end, Ordering::SeqCst);
                    self.note_recovery_point(false);
                }
                self.last_sync = Instant::now();
                Ok(self.durable_offset())
            }
            Err(e) => {
                self.poison(format!("fsync {}: {e}", path.display()));
                Err(LogError::io("fsync", path, e))
            }
        }
    }

    /// Seals the active segment and starts a new one at the log end, then saves the producer
    /// state as the snapshot at the new base. Does nothing while the active segment is empty:
    /// it already starts at the log end, and a new segment there would share its base offset
    /// and so its files.
    pub fn roll(&mut self) -> Result<()> {
        self.check_poisoned()?;
        if self.active.is_empty() {
            return Ok(());
        }
        let seg = self.active.seg.clone();
        let count = self.active.next_offset - seg.base;
        if self
            .active
            .last_time_entry
            .map(|e| u64::from(e.relative_offset))
            != Some(count)
        {
            let entry = TimeIndexEntry {
                max_timestamp: self.active.max_ts,
                relative_offset: count as u32,
            };
            seg.write_time_entry(self.active.time_entries, entry)?;
            self.active.time_entries += 1;
            self.active.last_time_entry = Some(entry);
        }
        // A failed index write (ENOSPC) aborts the roll and leaves the log as it was; only a
        // failed fsync poisons it.
        seg.flush_index()?;
        if let Err(e) = seg.sync_all() {
            self.poison(e.to_string());
            return Err(e);
        }
        let next = self.active.next_offset;
        self.shared.durable_offset.fetch_max(next, Ordering::SeqCst);
        self.note_recovery_point(false);
        let fresh = match Segment::create(&*self.fs, &self.shared.dir, next, self.clock.now_ms()) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                for p in crate::segment_paths(&self.shared.dir, next) {
                    let _ = self.fs.remove_file(&p);
                }
                return Err(e);
            }
        };
        self.sync_dir()?;
        seg.set_sealed(true);
        let mut segs = (*self.shared.segments()).clone();
        segs.push(fresh.clone());
        self.shared.replace_segments(segs);
        self.active = Active::new(fresh)?;
        tracing::debug!(dir = %self.shared.dir.display(), base = next, "rolled segment");
        self.save_snapshot(next);
        Ok(())
    }

    /// Saves the producer state as the snapshot at `offset` (the log end), keeping the three
    /// newest. Best effort: a snapshot only speeds up rebuilding the state, so a failure is
    /// logged and the old snapshots stay.
    fn save_snapshot(&mut self, offset: u64) {
        debug_assert_eq!(offset, self.active.next_offset);
        let dir = &self.shared.dir;
        if let Err(e) = snapshots::write(&*self.fs, dir, offset, &self.producers) {
            tracing::warn!(dir = %dir.display(), offset, error = %e,
                "producer snapshot not written; the state will be rebuilt from the log");
            return;
        }
        self.snapshots.insert(offset);
        snapshots::prune(&*self.fs, dir, &mut self.snapshots);
    }

    pub(crate) fn sync_dir(&self) -> Result<()> {
        self.fs
            .sync_dir(&self.shared.dir)
            .map_err(|e| LogError::io("fsync directory", &self.shared.dir, e))
    }

    /// Deletes whole sealed segments past the retention age or beyond the retention size,
    /// oldest first. The active segment is never deleted. Producer snapshots below the new
    /// start are deleted too, but the newest of them; the producer state is kept (producers
    /// are forgotten by expiry, not by retention).
    pub fn apply_retention(&mut self) -> Result<RetentionOutcome> {
        self.check_poisoned()?;
        let segs = self.shared.segments();
        let now = self.clock.now_ms();
        let mut remaining: u64 = segs.iter().map(|s| s.size_bytes()).sum();
        let mut delete = 0;
        let mut bytes_deleted = 0;
        for seg in &segs[..segs.len() - 1] {
            let size = seg.size_bytes();
            let too_old = self
                .config
                .retention_age
                .is_some_and(|age| seg.max_timestamp() < now - age.as_millis() as i64);
            let too_big = self
                .config
                .retention_bytes
                .is_some_and(|max| remaining - size >= max);
            if !(too_old || too_big) {
                break;
            }
            delete += 1;
            remaining -= size;
            bytes_deleted += size;
        }
        if delete == 0 {
            return Ok(RetentionOutcome {
                start_offset: self.start_offset(),
                ..Default::default()
            });
        }
        self.shared.replace_segments(segs[delete..].to_vec());
        self.delete_segment_files(&segs[..delete])?;
        let start = self.start_offset();
        // Snapshots below the new start are of no use but the newest of them, which is still
        // a valid base to replay from (usually it is exactly at the start).
        let below: Vec<u64> = self.snapshots.range(..start).copied().collect();
        for &old in below.iter().rev().skip(1) {
            match snapshots::remove(&*self.fs, &self.shared.dir, old) {
                Ok(()) => {
                    self.snapshots.remove(&old);
                }
                Err(e) => tracing::warn!(error = %e, "old producer snapshot not removed"),
            }
        }
        tracing::info!(dir = %self.shared.dir.display(), segments = delete, bytes = bytes_deleted,
            start_offset = start, "retention deleted segments");
        Ok(RetentionOutcome {
            segments_deleted: delete,
            bytes_deleted,
            start_offset: start,
        })
    }

    /// Removes segments' files, the `.log` first: a crash half-way leaves orphan indexes,
    /// which opening deletes, never a log without its successor's data.
    fn delete_segment_files(&self, segs: &[Arc<Segment>]) -> Result<()> {
        for seg in segs {
            for p in seg.paths() {
                match self.fs.remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io("remove", p, e)),
                }
            }
        }
        self.sync_dir()
    }

    /// Before a cut at damage ([`Log::truncate_to`] at `offset`): keeps what the cut will drop
    /// (the tail of the segment holding `offset`, from the batch holding it, and every later
    /// segment's log) under the log's `damaged/` directory, durably (see
    /// [`crate::quarantine`]). Returns where, or `None` when nothing would be cut.
    pub fn keep_from(&self, offset: u64) -> Result<Option<PathBuf>> {
        self.check_poisoned()?;
        if offset >= self.end_offset() || offset < self.start_offset() {
            return Ok(None);
        }
        let segs = self.shared.segments();
        let idx = segs.partition_point(|s| s.base <= offset) - 1;
        let seg = &segs[idx];
        // The damaged batch itself may not parse: keep from the indexed position of `offset`,
        // or, failing that, the whole segment.
        let pos = seg.position_of(offset).unwrap_or(0);
        let later: Vec<u64> = segs[idx + 1..].iter().map(|s| s.base).collect();
        crate::quarantine::keep_cut(&*self.fs, &self.shared.dir, seg.base, pos, &later).map(Some)
    }

    /// Removes every record at `offset` and above, as a follower drops a divergent suffix.
    ///
    /// The log is cut at a batch boundary: the batch holding `offset` goes entirely, so the
    /// new end may be below `offset`; the new end is returned. Truncating at or past the end
    /// does nothing. An offset below the log start is an error (use
    /// [`Log::truncate_fully`]). Producer snapshots above the new end are deleted and the
    /// producer state is rebuilt as of the new end, so a producer's retry of a batch that was
    /// cut off is appended again rather than answered as a duplicate.
    pub fn truncate_to(&mut self, offset: u64) -> Result<u64> {
        self.check_poisoned()?;
        let end = self.end_offset();
        if offset >= end {
            return Ok(end);
        }
        let start = self.start_offset();
        if offset < start {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let segs = self.shared.segments();
        let idx = segs.partition_point(|s| s.base <= offset) - 1;
        let seg = segs[idx].clone();
        let pos = seg.position_of(offset)?;
        let h = seg.batch_header_at(pos)?;
        if h.base_offset < 0 || h.base_offset as u64 > offset || (h.last_offset() as u64) < offset {
            return Err(LogError::corrupt(
                &seg.index_path,
                Position::file_offset(offset - seg.base),
                format!("index entry for offset {offset} points at a batch that does not hold it"),
            ));
        }
        let new_end = SegmentEnd {
            next_offset: h.base_offset as u64,
            log_len: pos,
        };
        // Publish the new end, then bump the generation, then shrink files. A reader that saw
        // any old end loaded the generation before the bump, so it notices and retries; one
        // that loaded it after the bump sees only the new ends and reads below them, where
        // the truncation changes nothing.
        seg.set_end(new_end);
        self.shared
            .end_offset
            .store(new_end.next_offset, Ordering::SeqCst);
        self.shared
            .durable_offset
            .fetch_min(new_end.next_offset, Ordering::SeqCst);
        self.shared.replace_segments(segs[..=idx].to_vec());
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        let result = self
            .finish_truncate(&seg, new_end, &segs[idx + 1..])
            .and_then(|()| self.rebuild_producers());
        if let Err(e) = &result {
            self.poison(format!("truncation failed half-way: {e}"));
        }
        result?;
        tracing::info!(dir = %self.shared.dir.display(), requested = offset,
            new_end = new_end.next_offset, "truncated log");
        Ok(new_end.next_offset)
    }

    fn finish_truncate(
        &mut self,
        seg: &Arc<Segment>,
        new_end: SegmentEnd,
        dropped: &[Arc<Segment>],
    ) -> Result<()> {
        // Snapshots above the new end describe the removed suffix: they go first, durably
        // (the directory syncs below), before the log can be appended to again.
        snapshots::remove_above(
            &*self.fs,
            &self.shared.dir,
            &mut self.snapshots,
            new_end.next_offset,
        )?;
        self.delete_segment_files(dropped)?;
        seg.truncate_files(new_end)?;
        seg.set_sealed(false);
        // Checks what is left and recomputes its max timestamp; truncation is rare. The scan
        // only reads: readers may be using the index entries below the cut, which stay valid,
        // so the index must not be rewritten under them.
        let outcome = seg.scan(self.config.index_interval_bytes, false)?;
        if let Some((pos, reason)) = outcome.damage {
            return Err(LogError::corrupt(&seg.log_path, pos, reason));
        }
        if outcome.end != new_end {
            return Err(LogError::corrupt(
                &seg.log_path,
                outcome.end.log_len,
                format!(
                    "segment ends at offset {} after truncation, expected {}",
                    outcome.end.next_offset, new_end.next_offset
                ),
            ));
        }
        seg.set_max_timestamp(outcome.max_timestamp);
        seg.sync_all()?;
        self.sync_dir()?;
        self.active = Active::new(seg.clone())?;
        self.shared
            .durable_offset
            .store(new_end.next_offset, Ordering::SeqCst);
        // Lowered at once, durably: what is appended next may be torn by a crash, and a tear
        // below a stale recovery point would look like damage.
        self.note_recovery_point(true);
        Ok(())
    }

    /// Rebuilds the producer state as of the log end from the newest usable snapshot at or
    /// below it and the log after it.
    fn rebuild_producers(&mut self) -> Result<()> {
        let segs = self.shared.segments();
        self.producers = snapshots::rebuild(
            &*self.fs,
            &self.shared.dir,
            &segs,
            &mut self.snapshots,
            self.clock.now_ms(),
        )
        .map_err(|e| e.into_log_error(&segs))?;
        Ok(())
    }

    /// Deletes everything and restarts the log empty at `start`, as a follower does when the
    /// leader's log no longer holds anything the follower has. The producer state is cleared
    /// and every producer snapshot deleted (first, durably).
    ///
    /// Not atomic across a crash: a crash half-way can leave the old segments beside the new
    /// one (opening then reports the gap) or none (the log reopens empty at
    /// `initial_offset`). Its caller, replication, must re-run it after a restart.
    pub fn truncate_fully(&mut self, start: u64) -> Result<()> {
        self.check_poisoned()?;
        // Past the first removal the in-memory log no longer matches its files: a failure from
        // there on (ENOSPC creating the fresh segment) poisons the log, so the owner reopens
        // it from what is on disk instead of retrying against segments that are half gone.
        let result = self.truncate_fully_inner(start);
        if let Err(e) = &result {
            self.poison(format!("full truncation failed half-way: {e}"));
        }
        result
    }

    fn truncate_fully_inner(&mut self, start: u64) -> Result<()> {
        // A file already gone (an earlier attempt removed it before failing) is what removal
        // wants.
        let remove = |fs: &dyn FileSystem, p: &Path| match fs.remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::io("remove", p, e)),
            _ => Ok(()),
        };
        // Nothing here stays durable: lower the recovery point file first, so a log reopened
        // after a crash or failure half-way reads as cut short on purpose, not as damage. (The
        // durable offset in memory stays: the owner records it if this fails, and cuts the
        // reopened log back to it.)
        self.write_recovery_point(0, true);
        // Every snapshot describes data about to go: remove them durably first, so none can
        // outlive a crash half-way.
        self.producers.clear();
        while let Some(&offset) = self.snapshots.first() {
            snapshots::remove(&*self.fs, &self.shared.dir, offset)?;
            self.snapshots.remove(&offset);
        }
        self.sync_dir()?;
        let segs = self.shared.segments();
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        // Every old segment goes (durably) before the fresh one exists: a crash in between
        // leaves an empty directory, which opens as an empty log, never old segments with a
        // gap before the fresh one, which would read as damage. Files are unlinked, not
        // rewritten: readers still holding a segment keep reading its open file.
        for seg in segs.iter() {
            for p in seg.paths() {
                remove(&*self.fs, p)?;
            }
        }
        self.sync_dir()?;
        let fresh = Arc::new(Segment::create(
            &*self.fs,
            &self.shared.dir,
            start,
            self.clock.now_ms(),
        )?);
        // The fresh segment's name is durable before the log counts on it.
        self.sync_dir()?;
        self.shared.replace_segments(vec![fresh.clone()]);
        self.shared.end_offset.store(start, Ordering::SeqCst);
        self.shared.durable_offset.store(start, Ordering::SeqCst);
        self.note_recovery_point(true);
        self.active = Active::new(fresh)?;
        Ok(())
    }

    /// Records the durable offset as the recovery point (see
    /// [`crate::format::RECOVERY_POINT`]). Without an fsync, except when it moves down
    /// (`durable`): a recovery point that is too old only makes recovery less strict, one that
    /// is too new would make a torn write look like damage.
    pub(crate) fn note_recovery_point(&self, durable: bool) {
        self.write_recovery_point(self.durable_offset(), durable);
    }

    fn write_recovery_point(&self, offset: u64, durable: bool) {
        let Some(f) = &self.recovery else {
            return;
        };
        let bytes = crate::format::encode_recovery_point(offset);
        let r = f
            .write_all_at(&bytes, 0)
            .and_then(|()| if durable { f.sync_data() } else { Ok(()) });
        if let Err(e) = r {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "recovery point not written");
        }
    }

    /// Reads every batch of every segment and checks it (CRC, framing, dense offsets) without
    /// changing anything. Returns the first damage found.
    pub fn verify(&self) -> Result<()> {
        match self.find_damage()? {
            None => Ok(()),
            Some((_, e)) => Err(e),
        }
    }

    /// Like [`Log::verify`], but also says where the undamaged prefix of the log ends: the
    /// offset (a batch boundary) up to which every batch checks out, so a replica can cut the
    /// log there with [`Log::truncate_to`] and fetch the rest again.
    pub fn find_damage(&self) -> Result<Option<(u64, LogError)>> {
        find_damage_in(&self.shared.segments(), self.config.index_interval_bytes)
    }

    /// [`Log::find_damage`] for the segments starting at or after `base`: what
    /// [`crate::LogReader::find_damage_in_sealed`] left unchecked (usually just the active
    /// segment), so the writer does only that bounded part itself.
    pub fn find_damage_from(&self, base: u64) -> Result<Option<(u64, LogError)>> {
        let segs = self.shared.segments();
        let from = segs.partition_point(|s| s.base < base);
        find_damage_in(&segs[from..], self.config.index_interval_bytes)
    }

    /// Flushes everything, saves the producer state as the snapshot at the end, and writes the
    /// clean-shutdown marker, so the next open need not rescan the active segment nor replay
    /// any batch header. Dropping a `Log` without closing it is a crash, as far as the
    /// next open can tell: always safe, only slower to reopen.
    pub fn close(mut self) -> Result<()> {
        self.check_poisoned()?;
        self.active.seg.sync_all()?;
        self.shared
            .durable_offset
            .fetch_max(self.active.next_offset, Ordering::SeqCst);
        self.note_recovery_point(false);
        self.save_snapshot(self.active.next_offset);
        let seg = &self.active.seg;
        let marker = CleanMarker {
            active_base: seg.base,
            next_offset: self.active.next_offset,
            log_len: self.active.log_len,
            max_timestamp: self.active.max_ts,
        };
        let path = self.shared.dir.join(CLEAN_MARKER);
        let f = self
            .fs
            .open(&path, true)
            .map_err(|e| LogError::io("create", &path, e))?;
        f.set_len(0)
            .and_then(|_| f.write_all_at(&marker.encode(), 0))
            .and_then(|_| f.sync_data())
            .map_err(|e| LogError::io("write", &path, e))?;
        self.sync_dir()
    }
}

/// What [`validate_all`] found.
struct ValidBatches {
    /// Records in all batches.
    count: u64,
    /// The largest timestamp.
    max_ts: i64,
    /// True when some batch belongs to an idempotent producer.
    producers: bool,
}

/// Validates every batch in `buf` (and, with `producer_fields`, their producer fields).
fn validate_all(buf: &[u8], producer_fields: bool) -> Result<ValidBatches> {
    if buf.is_empty() {
        return Err(LogError::InvalidBatch {
            position: 0,
            source: cascade_record::DecodeError::Truncated { what: "batch" },
        });
    }
    let mut at = 0;
    let mut v = ValidBatches {
        count: 0,
        max_ts: i64::MIN,
        producers: false,
    };
    while at < buf.len() {
        let b = validate_batch(&buf[at..]).map_err(|source| LogError::InvalidBatch {
            position: at,
            source,
        })?;
        let h = b.header();
        if producer_fields && let Some(reason) = invalid_producer_fields(h) {
            return Err(LogError::InvalidProducerFields {
                position: at,
                reason,
            });
        }
        v.count += h.record_count as u64;
        v.max_ts = v.max_ts.max(h.max_timestamp);
        v.producers |= is_producer_batch(h);
        at += b.bytes().len();
    }
    Ok(v)
}

/// Checks `segs` in order (see [`Log::find_damage`]): the first damage, with the offset where
/// the undamaged prefix ends.
pub(crate) fn find_damage_in(
    segs: &[Arc<Segment>],
    index_interval_bytes: u64,
) -> Result<Option<(u64, LogError)>> {
    for seg in segs {
        let out = seg.scan(index_interval_bytes, false)?;
        if let Some((pos, reason)) = out.damage {
            return Ok(Some((
                out.end.next_offset,
                LogError::corrupt(&seg.log_path, pos, reason),
            )));
        }
        let end = seg.end();
        if out.end != end {
            return Ok(Some((
                out.end.next_offset,
                LogError::corrupt(
                    &seg.log_path,
                    out.end.log_len,
                    format!(
                        "segment ends at offset {}, expected {}",
                        out.end.next_offset, end.next_offset
                    ),
                ),
            )));
        }
    }
    Ok(None)
}
