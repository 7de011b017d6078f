//! [`LogReader`]: concurrent reads of a log by offset and by timestamp.
//!
//! A reader takes a snapshot of the segment list (an `Arc` clone under a read lock that the
//! writer holds only to swap the list), then reads with positional IO. It never waits for an
//! append or an fsync. Every read is bounded by the segment's published end, and checked
//! against the truncation generation afterwards: a read that raced a truncation is retried,
//! never returned.
//!
//! Batches from sealed segments are CRC-checked on every read, so damage on disk surfaces as
//! [`LogError::Corrupt`] naming the file and byte, never as garbage handed to a consumer. The
//! active segment's batches were checked when appended or recovered.

use crate::bufpool;
use crate::error::{LogError, Result};
use crate::log::Shared;
use crate::segment::{Segment, batch_len_prefix};
use bytes::Bytes;
use cascade_record::{BatchHeader, Batches, Compression, HEADER_LEN, header::compute_crc};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Whole batches read from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Complete batches back to back, exactly as stored. The first batch holds the requested
    /// offset and may start before it: skip records below the offset you asked for.
    pub data: Bytes,
    /// Offset after the last batch in `data`: where the next read continues.
    pub next_offset: u64,
    /// The log start offset when the read was made.
    pub start_offset: u64,
    /// The log end offset when the read was made.
    pub end_offset: u64,
}

/// A cheap, cloneable, thread-safe read handle on a [`crate::Log`].
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// How often a read that raced a truncation is retried before giving up.
const RACE_RETRIES: usize = 16;

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Why the log refuses writes, if a failed fsync poisoned it (see [`crate::Log`]): the
    /// owner must stop using it and reopen it, which re-runs recovery.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned()
    }

    /// First offset in the log.
    pub fn start_offset(&self) -> u64 {
        self.shared.start_offset.load(Ordering::SeqCst)
    }

    /// Offset the next append will get.
    pub fn end_offset(&self) -> u64 {
        self.shared.end_offset.load(Ordering::SeqCst)
    }

    /// Offsets below this are fsynced.
    pub fn durable_offset(&self) -> u64 {
        self.shared.durable_offset.load(Ordering::SeqCst)
    }

    /// Bytes of log data over all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.segments().iter().map(|s| s.size_bytes()).sum()
    }

    /// Reads whole batches starting with the one holding `offset`, up to about `max_bytes`
    /// (at least one batch, however large, so a consumer always makes progress). Reading at the
    /// end offset returns no data; outside `[start, end]` is an error.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Fetched> {
        self.read_until(offset, max_bytes, u64::MAX)
    }

    /// Like [`LogReader::read`], but returns no batch holding an offset at or above `limit`
    /// (a high watermark: consumers must not see what replication may still roll back).
    pub fn read_until(&self, offset: u64, max_bytes: usize, limit: u64) -> Result<Fetched> {
        for _ in 0..RACE_RETRIES {
            let generation = self.shared.generation.load(Ordering::SeqCst);
            let result = self.try_read(offset, max_bytes, limit, generation);
            if generation != self.shared.generation.load(Ordering::SeqCst) {
                continue; // raced a truncation: whatever it read, success or error, is stale
            }
            if let Some(f) = result? {
                return Ok(f);
            }
        }
        Err(LogError::Corrupt {
            path: self.shared.dir.clone(),
            position: 0,
            reason: format!("read at offset {offset} kept racing truncations"),
        })
    }

    /// One attempt; `None` means the snapshot went stale under us and the caller retries.
    fn try_read(
        &self,
        offset: u64,
        max_bytes: usize,
        limit: u64,
        generation: u64,
    ) -> Result<Option<Fetched>> {
        let raced = || self.shared.generation.load(Ordering::SeqCst) != generation;
        let segs = self.shared.segments();
        let start = segs.first().map(|s| s.base).unwrap_or(0);
        let end = self.end_offset();
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let empty = Fetched {
            data: Bytes::new(),
            next_offset: offset,
            start_offset: start,
            end_offset: end,
        };
        let limit = limit.min(end);
        if offset >= limit {
            return Ok(Some(empty));
        }
        let seg = &segs[segs.partition_point(|s| s.base <= offset) - 1];
        let seg_end = seg.end();
        if offset >= seg_end.next_offset {
            return Ok(None); // the snapshot is older than the end we read
        }
        let pos = seg.position_of(offset)?;
        let limit_pos = if limit < seg_end.next_offset {
            seg.position_of(limit)?
        } else {
            seg_end.log_len
        };
        if pos >= limit_pos {
            // The limit falls inside the batch holding `offset`.
            return Ok(Some(empty));
        }
        let avail = (limit_pos - pos) as usize;
        // `buf` may be longer than asked and hold stale bytes from an earlier read (it comes
        // from the buffer pool): only `buf[..len]`, filled below, is ever looked at.
        let want = max_bytes.max(HEADER_LEN).min(avail);
        let mut buf = bufpool::take(want);
        let mut len = seg
            .log
            .read_full_at(&mut buf[..want], pos)
            .map_err(|e| LogError::io("read", &seg.log_path, e))?;
        // At least one whole batch, however large.
        if let Some(first_len) = batch_len_prefix(&buf[..len])
            && first_len > len
            && first_len <= avail
        {
            if buf.len() < first_len {
                buf.resize(first_len, 0);
            }
            let n = seg
                .log
                .read_full_at(&mut buf[len..first_len], pos + len as u64)
                .map_err(|e| LogError::io("read", &seg.log_path, e))?;
            len += n;
        }
        let whole = whole_batches(&buf[..len]);
        if whole == 0 {
            if raced() {
                return Ok(None);
            }
            let reason = match BatchHeader::parse(&buf[..len]) {
                Err(e) => format!("batch header: {e}"),
                Ok(_) => "batch runs past the end of the segment".to_string(),
            };
            return Err(LogError::corrupt(&seg.log_path, pos, reason));
        }
        let data = &buf[..whole];
        let first = BatchHeader::parse(data)
            .map_err(|e| LogError::corrupt(&seg.log_path, pos, format!("batch header: {e}")))?;
        if first.base_offset < 0
            || first.base_offset as u64 > offset
            || (first.last_offset() as u64) < offset
        {
            if raced() {
                return Ok(None);
            }
            return Err(LogError::corrupt(
                &seg.index_path,
                crate::index::Position::file_offset(offset - seg.base),
                format!("index entry for offset {offset} points at a batch that does not hold it"),
            ));
        }
        let next_offset = match check_batches(seg, pos, data, seg.is_sealed()) {
            Ok(next) => next,
            Err(_) if raced() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Fetched {
            data: bufpool::freeze(buf, whole),
            next_offset,
            start_offset: start,
            end_offset: end,
        }))
    }

    /// [`crate::Log::find_damage`] for the sealed segments only: reads and checks every batch
    /// of the segments that were sealed when it started, without the writer (sealed segments
    /// never change, so appends go on meanwhile). Returns the damage found, if any, and the
    /// base of the first segment it did not check: pass that to
    /// [`crate::Log::find_damage_from`] to finish. A scan that raced a truncation is repeated;
    /// damage found in a segment that retention deleted meanwhile is not reported.
    pub fn find_damage_in_sealed(&self) -> Result<(Option<(u64, LogError)>, u64)> {
        for _ in 0..RACE_RETRIES {
            let generation = self.shared.generation.load(Ordering::SeqCst);
            let segs = self.shared.segments();
            let sealed = segs.iter().take_while(|s| s.is_sealed()).count();
            let rest = segs.get(sealed).map_or(u64::MAX, |s| s.base);
            // Time-index entries are not needed to verify: no interval.
            let found = crate::log::find_damage_in(&segs[..sealed], u64::MAX);
            if generation != self.shared.generation.load(Ordering::SeqCst) {
                continue;
            }
            let found = match found? {
                Some((at, _)) if at < self.start_offset() => None,
                other => other,
            };
            return Ok((found, rest));
        }
        Err(LogError::Corrupt {
            path: self.shared.dir.clone(),
            position: 0,
            reason: "damage scan kept racing truncations".into(),
        })
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, or `None` if
    /// every record is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        for _ in 0..RACE_RETRIES {
            let generation = self.shared.generation.load(Ordering::SeqCst);
            let result = self.try_offset_for_timestamp(timestamp_ms);
            if generation == self.shared.generation.load(Ordering::SeqCst) {
                return result;
            }
            // Raced a truncation: the time index may have shrunk under the search.
        }
        Err(LogError::Corrupt {
            path: self.shared.dir.clone(),
            position: 0,
            reason: format!("timestamp lookup for {timestamp_ms} kept racing truncations"),
        })
    }

    fn try_offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let segs = self.shared.segments();
        for seg in segs.iter() {
            if seg.max_timestamp() < timestamp_ms {
                continue;
            }
            let mut offset = seg.base + start_hint(seg, timestamp_ms)?;
            let seg_end = seg.end().next_offset;
            while offset < seg_end {
                let f = self.read_until(offset, 64 * 1024, seg_end)?;
                if f.data.is_empty() {
                    break;
                }
                for batch in Batches::new(&f.data) {
                    let batch = batch
                        .map_err(|e| LogError::corrupt(&seg.log_path, 0, format!("batch: {e}")))?;
                    let h = batch.header();
                    if h.max_timestamp < timestamp_ms || (h.last_offset() as u64) < offset {
                        continue;
                    }
                    if h.compression() != Compression::None {
                        return Ok(Some((h.base_offset as u64).max(offset)));
                    }
                    let hit = batch
                        .records()
                        .expect("uncompressed")
                        .find(|r| r.offset as u64 >= offset && r.timestamp >= timestamp_ms);
                    if let Some(r) = hit {
                        return Ok(Some(r.offset as u64));
                    }
                }
                offset = f.next_offset;
            }
        }
        Ok(None)
    }
}

/// Relative offset to start scanning for `ts` from: the `r` of the last time index entry whose
/// max timestamp is below `ts` (binary search, a pread per probe), or 0.
fn start_hint(seg: &Segment, ts: i64) -> Result<u64> {
    let (mut lo, mut hi) = (0u64, seg.time_entry_count()?);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if seg.time_entry(mid)?.max_timestamp < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(match lo {
        0 => 0,
        n => u64::from(seg.time_entry(n - 1)?.relative_offset),
    })
}

/// Length of the prefix of `buf` made of whole batches.
fn whole_batches(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(len) = batch_len_prefix(&buf[at..]) {
        if len < HEADER_LEN || at + len > buf.len() {
            break;
        }
        at += len;
    }
    at
}

/// Checks that the batches in `buf` (read at `pos`) continue each other's offsets and, when
/// `verify_crc`, their checksums; returns the offset after the last one.
fn check_batches(seg: &Segment, pos: u64, buf: &[u8], verify_crc: bool) -> Result<u64> {
    let mut at = 0;
    let mut next: Option<i64> = None;
    while at < buf.len() {
        let bad = |reason: String| LogError::corrupt(&seg.log_path, pos + at as u64, reason);
        let h = BatchHeader::parse(&buf[at..]).map_err(|e| bad(format!("batch header: {e}")))?;
        let len = h.total_len();
        if let Some(n) = next
            && h.base_offset != n
        {
            return Err(bad(format!(
                "batch starts at offset {}, expected {n}",
                h.base_offset
            )));
        }
        if verify_crc {
            let computed = compute_crc(&buf[at..at + len]);
            if computed != h.crc {
                return Err(bad(format!(
                    "checksum mismatch: stored {:#010x}, computed {computed:#010x}",
                    h.crc
                )));
            }
        }
        next = Some(h.next_offset());
        at += len;
    }
    Ok(next.unwrap_or(0) as u64)
}
