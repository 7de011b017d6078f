//! One segment: a `.log` of batches with its dense `.index` and sparse `.timeindex`.
//!
//! A [`Segment`] is shared (`Arc`) between the log's single writer and any number of readers.
//! Its file handles are positional, so readers never contend with the writer for a cursor. The
//! only mutable shared state is the segment's visible end ([`SegmentEnd`]), guarded by a mutex
//! that is held for a couple of integer copies and never across IO: readers never wait for a
//! write or an fsync. Readers bound every read by that end, so they never look at bytes the
//! writer has not finished.
//!
//! Invariants of a segment at rest:
//! - its `.log` is the file header followed by whole batches whose offsets run densely from
//!   `base` to `next_offset - 1`;
//! - its `.index` holds exactly `next_offset - base` entries, each pointing at the batch that
//!   holds the offset;
//! - its `.timeindex` entries are non-decreasing in both fields and end at or below the log end.
//!
//! Anything else is repaired by [`Segment::rebuild`] from the `.log`, the one source of truth.

use crate::error::{LogError, Result};
use crate::format::{FILE_HEADER_LEN, FileHeader, FileKind, segment_path};
use crate::fs::{File, FileSystem};
use crate::index::{Position, TIME_ENTRY_LEN, TimeIndexEntry};
use cascade_record::{BatchHeader, DecodeError, HEADER_LEN, header::LOG_OVERHEAD};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// The end of the data readers may see in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentEnd {
    /// One past the last offset in the segment.
    pub next_offset: u64,
    /// Length of the valid part of the `.log` file.
    pub log_len: u64,
}

/// A segment's files and visible end.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub created_ms: i64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub time_path: PathBuf,
    pub log: Arc<dyn File>,
    pub index: Arc<dyn File>,
    pub time: Arc<dyn File>,
    end: Mutex<SegmentEnd>,
    /// Index entries appended but not yet written to the `.index` file (see [`IndexTail`]).
    tail: Mutex<IndexTail>,
    max_timestamp: AtomicI64,
    sealed: AtomicBool,
}

/// The newest dense-index entries of the active segment, kept in memory and written to the
/// `.index` file in chunks of [`TAIL_FLUSH`] bytes (and before sealing or closing). Appends of
/// small batches thus cost one `pwrite` (the data) instead of two; readers look entries up here
/// first. Losing the tail in a crash costs nothing: a crash is recovered by rebuilding the
/// active segment's index from its log.
#[derive(Debug, Default)]
struct IndexTail {
    /// Relative offset of the first buffered entry (meaningful only when `entries` is not
    /// empty).
    first: u64,
    /// Entries, `u32` LE each.
    entries: Vec<u8>,
}

/// Buffered index bytes that trigger a write to the `.index` file.
const TAIL_FLUSH: usize = 64 * 1024;

/// What a scan of a `.log` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanOutcome {
    /// End of the valid prefix: at the first damaged batch, if any, else at the end of the file.
    pub end: SegmentEnd,
    pub max_timestamp: i64,
    /// The first damage found: byte position and reason. Everything before it is valid.
    pub damage: Option<(u64, String)>,
    /// Time index entries written.
    pub time_entries: Vec<TimeIndexEntry>,
}

const SCAN_CHUNK: usize = 1 << 20;
const PROGRESS_EVERY: u64 = 256 << 20;

fn write_header(file: &dyn File, path: &Path, kind: FileKind, base: u64, now: i64) -> Result<()> {
    let h = FileHeader {
        kind,
        base_offset: base,
        created_ms: now,
    };
    file.set_len(0)
        .and_then(|_| file.write_all_at(&h.encode(), 0))
        .map_err(|e| LogError::io("write header", path, e))
}

fn read_header(file: &dyn File, path: &Path, kind: FileKind, base: u64) -> Result<FileHeader> {
    let mut b = [0u8; FILE_HEADER_LEN];
    let n = file
        .read_full_at(&mut b, 0)
        .map_err(|e| LogError::io("read header", path, e))?;
    let h = FileHeader::decode(&b[..n], kind).map_err(|r| LogError::corrupt(path, 0, r))?;
    if h.base_offset != base {
        return Err(LogError::corrupt(
            path,
            16,
            format!(
                "header says base offset {}, file name says {base}",
                h.base_offset
            ),
        ));
    }
    Ok(h)
}

impl Segment {
    /// Creates a new empty segment's three files and fsyncs them. The caller syncs the
    /// directory before relying on the segment's existence.
    pub fn create(fs: &dyn FileSystem, dir: &Path, base: u64, now_ms: i64) -> Result<Self> {
        let seg = Self::open_files(fs, dir, base, true)?;
        for (f, p, k) in seg.files() {
            write_header(f, p, k, base, now_ms)?;
            f.sync_data().map_err(|e| LogError::io("fsync", p, e))?;
        }
        Ok(Self {
            created_ms: now_ms,
            ..seg
        })
    }

    /// Opens an existing segment's files. A missing index or time index is created empty (the
    /// caller's checks will then find it short and rebuild it).
    pub fn open(fs: &dyn FileSystem, dir: &Path, base: u64) -> Result<Self> {
        let mut seg = Self::open_files(fs, dir, base, false)?;
        let h = read_header(&*seg.log, &seg.log_path, FileKind::Log, base)?;
        seg.created_ms = h.created_ms;
        Ok(seg)
    }

    fn open_files(fs: &dyn FileSystem, dir: &Path, base: u64, create: bool) -> Result<Self> {
        let log_path = segment_path(dir, base, FileKind::Log);
        let index_path = segment_path(dir, base, FileKind::Index);
        let time_path = segment_path(dir, base, FileKind::TimeIndex);
        let log = fs
            .open(&log_path, create)
            .map_err(|e| LogError::io("open", &log_path, e))?;
        let index = fs
            .open(&index_path, true)
            .map_err(|e| LogError::io("open", &index_path, e))?;
        let time = fs
            .open(&time_path, true)
            .map_err(|e| LogError::io("open", &time_path, e))?;
        Ok(Self {
            base,
            created_ms: 0,
            log_path,
            index_path,
            time_path,
            log,
            index,
            time,
            end: Mutex::new(SegmentEnd {
                next_offset: base,
                log_len: FILE_HEADER_LEN as u64,
            }),
            tail: Mutex::new(IndexTail::default()),
            max_timestamp: AtomicI64::new(i64::MIN),
            sealed: AtomicBool::new(false),
        })
    }

    fn files(&self) -> [(&dyn File, &Path, FileKind); 3] {
        [
            (&*self.log, &self.log_path, FileKind::Log),
            (&*self.index, &self.index_path, FileKind::Index),
            (&*self.time, &self.time_path, FileKind::TimeIndex),
        ]
    }

    /// The visible end.
    pub fn end(&self) -> SegmentEnd {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a new visible end (after the bytes and index entries are written).
    pub fn set_end(&self, end: SegmentEnd) {
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = end;
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    pub fn set_max_timestamp(&self, ts: i64) {
        self.max_timestamp.store(ts, Ordering::Release);
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub fn set_sealed(&self, sealed: bool) {
        self.sealed.store(sealed, Ordering::Release);
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, IndexTail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds index entries (`u32` LE each) for relative offsets from `rel` on, writing the
    /// buffered tail to the `.index` file once it is large. Only the writer calls this. A
    /// failed write keeps the entries buffered (the data is safe in the log; the index is
    /// derived) and is retried with the next write, or reported by [`Segment::flush_index`].
    pub fn push_index(&self, rel: u64, entries: &[u8]) {
        let full = {
            let mut t = self.tail();
            if t.entries.is_empty() {
                t.first = rel;
            }
            debug_assert_eq!(t.first + t.entries.len() as u64 / 4, rel);
            t.entries.extend_from_slice(entries);
            t.entries.len() >= TAIL_FLUSH
        };
        if full && let Err(e) = self.flush_index() {
            tracing::warn!(error = %e, "index write failed; entries stay buffered");
        }
    }

    /// Writes the buffered index entries to the `.index` file.
    pub fn flush_index(&self) -> Result<()> {
        // Copy out under the lock and write without it, so readers keep finding the entries in
        // the buffer; drop them only once the file has them.
        let (first, bytes) = {
            let t = self.tail();
            if t.entries.is_empty() {
                return Ok(());
            }
            (t.first, t.entries.clone())
        };
        let at = Position::file_offset(first);
        if let Err(e) = self.index.write_all_at(&bytes, at) {
            // Leave no torn entries behind: the file ends where its complete entries end, and
            // the buffered ones are written again next time.
            let _ = self.index.set_len(at);
            return Err(LogError::io("write", &self.index_path, e));
        }
        let mut t = self.tail();
        t.entries.drain(..bytes.len());
        t.first += bytes.len() as u64 / 4;
        Ok(())
    }

    /// Forgets buffered entries (after the `.index` file was rewritten or cut).
    fn reset_tail(&self) {
        let mut t = self.tail();
        t.entries.clear();
    }

    /// Reads the dense index entry for `offset`, which must be inside the segment.
    pub fn position_of(&self, offset: u64) -> Result<u64> {
        let rel = offset - self.base;
        {
            let t = self.tail();
            if !t.entries.is_empty() && rel >= t.first {
                let i = ((rel - t.first) * 4) as usize;
                if let Some(b) = t.entries.get(i..i + 4) {
                    return Ok(u64::from(u32::from_le_bytes(
                        b.try_into().expect("4 bytes"),
                    )));
                }
            }
        }
        let at = Position::file_offset(rel);
        let mut b = [0u8; 4];
        let n = self
            .index
            .read_full_at(&mut b, at)
            .map_err(|e| LogError::io("read", &self.index_path, e))?;
        if n < 4 {
            return Err(LogError::corrupt(
                &self.index_path,
                at,
                format!("index has no entry for offset {offset}"),
            ));
        }
        Ok(u64::from(Position::decode(b).0))
    }

    /// Reads the header of the batch at `pos` in the `.log`.
    pub fn batch_header_at(&self, pos: u64) -> Result<BatchHeader> {
        let mut b = [0u8; HEADER_LEN];
        let n = self
            .log
            .read_full_at(&mut b, pos)
            .map_err(|e| LogError::io("read", &self.log_path, e))?;
        BatchHeader::parse(&b[..n])
            .map_err(|e| LogError::corrupt(&self.log_path, pos, format!("batch header: {e}")))
    }

    /// Number of entries in the `.timeindex` (a torn trailing entry is not counted).
    pub fn time_entry_count(&self) -> Result<u64> {
        let len = self
            .time
            .len()
            .map_err(|e| LogError::io("stat", &self.time_path, e))?;
        Ok(len.saturating_sub(FILE_HEADER_LEN as u64) / TIME_ENTRY_LEN)
    }

    /// Reads time index entry `i`.
    pub fn time_entry(&self, i: u64) -> Result<TimeIndexEntry> {
        let mut b = [0u8; 12];
        let at = TimeIndexEntry::file_offset(i);
        let n = self
            .time
            .read_full_at(&mut b, at)
            .map_err(|e| LogError::io("read", &self.time_path, e))?;
        if n < 12 {
            return Err(LogError::corrupt(
                &self.time_path,
                at,
                "time index entry truncated",
            ));
        }
        Ok(TimeIndexEntry::decode(&b))
    }

    /// Appends a time index entry as entry number `i`.
    pub fn write_time_entry(&self, i: u64, e: TimeIndexEntry) -> Result<()> {
        self.time
            .write_all_at(&e.encode(), TimeIndexEntry::file_offset(i))
            .map_err(|err| LogError::io("write", &self.time_path, err))
    }

    /// Checks a sealed segment cheaply, in a few reads, assuming it should hold offsets up to
    /// `next_base` (exclusive): headers, index length, the first and last index entries, the
    /// last batch and the time index's last entry. Returns the reason on the first mismatch.
    pub fn quick_check(&self, next_base: u64) -> Result<Option<String>> {
        let count = next_base.saturating_sub(self.base);
        if count == 0 {
            return Ok(Some("segment holds no offsets".into()));
        }
        for (f, p, k) in &self.files()[1..] {
            let mut b = [0u8; FILE_HEADER_LEN];
            let n = f
                .read_full_at(&mut b, 0)
                .map_err(|e| LogError::io("read header", *p, e))?;
            match FileHeader::decode(&b[..n], *k) {
                Ok(h) if h.base_offset == self.base => {}
                Ok(_) => return Ok(Some(format!("{} header has the wrong base", k.extension()))),
                Err(r) => return Ok(Some(format!("{} header: {r}", k.extension()))),
            }
        }
        let stat = |f: &dyn File, p: &Path| f.len().map_err(|e| LogError::io("stat", p, e));
        let log_len = stat(&*self.log, &self.log_path)?;
        let index_len = stat(&*self.index, &self.index_path)?;
        if index_len != Position::file_offset(count) {
            return Ok(Some(format!(
                "index holds {} bytes, {count} entries need {}",
                index_len,
                Position::file_offset(count)
            )));
        }
        if log_len > u64::from(u32::MAX) {
            return Ok(Some("log larger than 4-byte positions can address".into()));
        }
        if self.position_of(self.base)? != FILE_HEADER_LEN as u64 {
            return Ok(Some(
                "first index entry does not point at the first batch".into(),
            ));
        }
        let last = next_base - 1;
        let pos = self.position_of(last)?;
        let h = match self.batch_header_at(pos) {
            Ok(h) => h,
            Err(_) => return Ok(Some(format!("last index entry {pos} is not a batch"))),
        };
        if h.base_offset < 0
            || (h.base_offset as u64) > last
            || h.last_offset() as u64 != last
            || pos + h.total_len() as u64 != log_len
        {
            return Ok(Some(
                "last batch does not end the segment where expected".into(),
            ));
        }
        let entries = self.time_entry_count()?;
        let time_len = stat(&*self.time, &self.time_path)?;
        if entries == 0 || time_len != TimeIndexEntry::file_offset(entries) {
            return Ok(Some("time index is empty or torn".into()));
        }
        let e = self.time_entry(entries - 1)?;
        if u64::from(e.relative_offset) != count {
            return Ok(Some("time index does not end at the segment end".into()));
        }
        self.set_max_timestamp(e.max_timestamp);
        self.set_end(SegmentEnd {
            next_offset: next_base,
            log_len,
        });
        Ok(None)
    }

    /// Scans the `.log` from its first batch, checking every batch (CRC, records, dense
    /// offsets starting at `base`), and rewrites the `.index` and `.timeindex` to cover exactly
    /// the valid prefix. Stops at the first damaged, torn or out-of-sequence batch and reports
    /// it; it never truncates the `.log` itself (the caller decides whether it may).
    pub fn rebuild(&self, index_interval_bytes: u64) -> Result<ScanOutcome> {
        self.scan(index_interval_bytes, true)
    }

    /// Scans like [`Segment::rebuild`]; with `write_indexes` false it only reads (verification).
    pub fn scan(&self, index_interval_bytes: u64, write_indexes: bool) -> Result<ScanOutcome> {
        let log_len = self
            .log
            .len()
            .map_err(|e| LogError::io("stat", &self.log_path, e))?;
        let mut pos = FILE_HEADER_LEN as u64;
        let mut next = self.base;
        let mut max_ts = i64::MIN;
        let mut damage = None;
        let mut index_buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut index_written = 0u64;
        let mut time_entries = Vec::new();
        let mut since_time_entry = 0u64;
        let mut buf = vec![0u8; SCAN_CHUNK];
        let mut next_progress = PROGRESS_EVERY;
        // The last batch read: (leader epoch, position, base offset).
        let mut prev: Option<(i32, u64, u64)> = None;
        if write_indexes {
            self.reset_tail();
            // Start both indexes afresh; entries are written as the scan goes.
            write_header(
                &*self.index,
                &self.index_path,
                FileKind::Index,
                self.base,
                self.created_ms,
            )?;
        }
        let io_log = |e| LogError::io("read", &self.log_path, e);
        let io_idx = |e| LogError::io("write", &self.index_path, e);
        'scan: while pos < log_len {
            let want = buf.len().min((log_len - pos) as usize);
            let n = self
                .log
                .read_full_at(&mut buf[..want], pos)
                .map_err(io_log)?;
            let mut at = 0usize;
            while at < n {
                let rest = &buf[at..n];
                let header = match BatchHeader::parse(rest) {
                    Ok(h) => h,
                    Err(DecodeError::Truncated { .. }) if at > 0 => break,
                    Err(e) => {
                        // Every `break 'scan` first moves `pos` to the damaged batch, so the
                        // valid prefix ends there, not at the start of this chunk.
                        pos += at as u64;
                        damage = Some((pos, format!("batch header: {e}")));
                        break 'scan;
                    }
                };
                let len = header.total_len();
                if rest.len() < len {
                    if at > 0 {
                        break; // read the batch whole in the next chunk
                    }
                    if pos + len as u64 > log_len {
                        damage = Some((pos, "batch runs past the end of the file".into()));
                        break 'scan;
                    }
                    // A batch larger than the scan buffer: grow it for this batch.
                    buf.resize(len, 0);
                    continue 'scan;
                }
                let batch = match cascade_record::validate_batch(&rest[..len]) {
                    Ok(b) => b,
                    Err(e) => {
                        pos += at as u64;
                        damage = Some((pos, e.to_string()));
                        break 'scan;
                    }
                };
                let h = batch.header();
                if h.base_offset as u64 != next {
                    pos += at as u64;
                    damage = Some((
                        pos,
                        format!("batch starts at offset {}, expected {next}", h.base_offset),
                    ));
                    break 'scan;
                }
                // The leader epoch lies outside the batch checksum (a leader stamps it into
                // batches it did not encode), so a flipped bit there passes every check above.
                // Epochs never go back in a log: a decrease means one of the two headers is
                // damaged, and since a spike reads as a decrease at the batch after it, the
                // valid prefix is taken to end before the earlier of the two.
                if let Some((epoch, at_pos, at_offset)) = prev
                    && h.leader_epoch < epoch
                {
                    damage = Some((
                        at_pos,
                        format!(
                            "leader epoch {} at offset {} follows epoch {epoch} at offset {at_offset}: epochs never go back, so one of the two batch headers is damaged",
                            h.leader_epoch, h.base_offset
                        ),
                    ));
                    pos = at_pos;
                    next = at_offset;
                    break 'scan;
                }
                prev = Some((h.leader_epoch, pos + at as u64, next));
                let batch_pos = (pos + at as u64) as u32;
                for _ in 0..h.record_count {
                    index_buf.extend_from_slice(&batch_pos.to_le_bytes());
                }
                if !write_indexes {
                    index_buf.clear();
                } else if index_buf.len() >= 64 * 1024 {
                    self.index
                        .write_all_at(&index_buf, FILE_HEADER_LEN as u64 + index_written)
                        .map_err(io_idx)?;
                    index_written += index_buf.len() as u64;
                    index_buf.clear();
                }
                next = h.next_offset() as u64;
                max_ts = max_ts.max(h.max_timestamp);
                since_time_entry += len as u64;
                if since_time_entry >= index_interval_bytes {
                    since_time_entry = 0;
                    time_entries.push(TimeIndexEntry {
                        max_timestamp: max_ts,
                        relative_offset: (next - self.base) as u32,
                    });
                }
                at += len;
            }
            pos += at as u64;
            if pos >= next_progress {
                tracing::info!(
                    segment = %self.log_path.display(),
                    scanned_mib = pos >> 20,
                    total_mib = log_len >> 20,
                    "{}",
                    if write_indexes { "recovering segment" } else { "verifying segment" }
                );
                next_progress += PROGRESS_EVERY;
            }
            if at == 0 {
                break;
            }
        }
        if damage.is_none() && pos < log_len {
            damage = Some((pos, "torn batch at the end of the file".into()));
        }
        let end = SegmentEnd {
            next_offset: next,
            log_len: pos,
        };
        // Entries already taken for batches past the end (a damaged batch found after the
        // one before it was counted) are dropped: the index holds one per offset up to `next`.
        let keep = (next - self.base) * 4;
        if index_written > keep {
            index_written = keep;
            index_buf.clear();
        } else {
            index_buf.truncate((keep - index_written) as usize);
        }
        time_entries.retain(|e| u64::from(e.relative_offset) <= next - self.base);
        if !write_indexes {
            return Ok(ScanOutcome {
                end,
                max_timestamp: max_ts,
                damage,
                time_entries,
            });
        }
        self.index
            .write_all_at(&index_buf, FILE_HEADER_LEN as u64 + index_written)
            .map_err(io_idx)?;
        index_written += index_buf.len() as u64;
        self.index
            .set_len(FILE_HEADER_LEN as u64 + index_written)
            .map_err(io_idx)?;
        self.rewrite_time_index(&time_entries)?;
        self.set_end(end);
        self.set_max_timestamp(max_ts);
        Ok(ScanOutcome {
            end,
            max_timestamp: max_ts,
            damage,
            time_entries,
        })
    }

    /// Replaces the time index with `entries`.
    pub fn rewrite_time_index(&self, entries: &[TimeIndexEntry]) -> Result<()> {
        write_header(
            &*self.time,
            &self.time_path,
            FileKind::TimeIndex,
            self.base,
            self.created_ms,
        )?;
        let mut b = Vec::with_capacity(entries.len() * 12);
        for e in entries {
            b.extend_from_slice(&e.encode());
        }
        self.time
            .write_all_at(&b, FILE_HEADER_LEN as u64)
            .map_err(|e| LogError::io("write", &self.time_path, e))
    }

    /// Cuts the segment's files to end at `end` (a batch boundary), keeping the time index
    /// entries that end at or below it.
    pub fn truncate_files(&self, end: SegmentEnd) -> Result<()> {
        self.flush_index()?;
        self.reset_tail();
        self.log
            .set_len(end.log_len)
            .map_err(|e| LogError::io("truncate", &self.log_path, e))?;
        let count = end.next_offset - self.base;
        self.index
            .set_len(Position::file_offset(count))
            .map_err(|e| LogError::io("truncate", &self.index_path, e))?;
        let entries = self.time_entry_count()?;
        let mut keep = 0;
        while keep < entries && u64::from(self.time_entry(keep)?.relative_offset) <= count {
            keep += 1;
        }
        self.time
            .set_len(TimeIndexEntry::file_offset(keep))
            .map_err(|e| LogError::io("truncate", &self.time_path, e))?;
        self.set_end(end);
        Ok(())
    }

    /// Writes the index tail, then fsyncs all three files (before sealing and on clean
    /// shutdown).
    pub fn sync_all(&self) -> Result<()> {
        self.flush_index()?;
        for (f, p, _) in self.files() {
            f.sync_data().map_err(|e| LogError::io("fsync", p, e))?;
        }
        Ok(())
    }

    /// Bytes of data in the segment (log length, for size-based retention).
    pub fn size_bytes(&self) -> u64 {
        self.end().log_len
    }

    /// The three file paths, `.log` first.
    pub fn paths(&self) -> [&Path; 3] {
        [&self.log_path, &self.index_path, &self.time_path]
    }
}

/// Total length of the batch whose first 12 bytes are at the front of `buf`.
pub(crate) fn batch_len_prefix(buf: &[u8]) -> Option<usize> {
    let len = i32::from_be_bytes(buf.get(8..12)?.try_into().ok()?);
    usize::try_from(len).ok().map(|l| l + LOG_OVERHEAD)
}
