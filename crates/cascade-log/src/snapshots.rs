//! Producer-state snapshots on disk, and rebuilding [`ProducerStates`] from the log.
//!
//! The state is a function of the producer batches in the log (see [`crate::producers`]), so
//! it can always be rebuilt by replaying batch *headers* (the producer fields are in the
//! header; no record is decoded). A snapshot `<offset>.producers` holds the state as of
//! `offset` so that a rebuild only replays the log from there: the writer saves one at every
//! segment roll (offset = the new segment's base) and at a clean close (offset = the end),
//! keeping the [`KEPT_SNAPSHOTS`] newest.
//!
//! A snapshot is only an accelerator: one that is missing or damaged is ignored (with a
//! warning) and the state is rebuilt from an older one or from the log start. What correctness
//! does depend on is that no snapshot ever describes a history other than the log's: a
//! snapshot above the end is deleted, durably, before the log accepts another write (on open,
//! after a crash cut the tail; on truncation). A snapshot at or below the end describes the
//! log's own prefix, because that prefix only changes by truncation below it.

use crate::error::{LogError, Result};
use crate::format::{FILE_HEADER_LEN, snapshot_path, snapshot_tmp_path};
use crate::fs::{File, FileSystem};
use crate::producers::{ProducerStates, last_sequence};
use crate::segment::Segment;
use cascade_record::{BatchHeader, HEADER_LEN};
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// How many snapshots the writer keeps (the newest ones).
pub(crate) const KEPT_SNAPSHOTS: usize = 3;

/// Bytes read at a time while replaying headers: small batches are read in chunks, large ones
/// cost one read each.
const REPLAY_CHUNK: usize = 16 * 1024;

/// Why a batch's producer fields are invalid, if they are: a producer id below -1, or a
/// producer id ≥ 0 with a negative epoch or base sequence.
pub(crate) fn invalid_producer_fields(h: &BatchHeader) -> Option<String> {
    if h.producer_id < -1 {
        return Some(format!(
            "producer id {} (must be -1 for no producer, or ≥ 0)",
            h.producer_id
        ));
    }
    if h.producer_id >= 0 && h.producer_epoch < 0 {
        return Some(format!(
            "producer {} has a negative epoch {}",
            h.producer_id, h.producer_epoch
        ));
    }
    if h.producer_id >= 0 && h.base_sequence < 0 {
        return Some(format!(
            "producer {} has a negative base sequence {}",
            h.producer_id, h.base_sequence
        ));
    }
    None
}

/// True when `h` is a batch of an idempotent producer that the state tracks.
pub(crate) fn is_producer_batch(h: &BatchHeader) -> bool {
    h.producer_id >= 0 && invalid_producer_fields(h).is_none()
}

/// Records `h` (a batch in the log, with its final offsets) if it is a producer batch.
pub(crate) fn record_batch(states: &mut ProducerStates, h: &BatchHeader, now_ms: i64) {
    if is_producer_batch(h) {
        states.record(
            h.producer_id,
            h.producer_epoch,
            h.base_sequence,
            last_sequence(h.base_sequence, h.record_count),
            h.base_offset as u64,
            h.last_offset() as u64,
            now_ms,
        );
    }
}

/// Writes the snapshot of `states` at `offset` atomically: a temporary file, written and
/// fsynced, renamed into place, then the directory fsynced. On failure the temporary file is
/// removed and no snapshot file is left changed.
pub(crate) fn write(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: u64,
    states: &ProducerStates,
) -> Result<()> {
    let tmp = snapshot_tmp_path(dir, offset);
    let path = snapshot_path(dir, offset);
    let bytes = states.encode(offset);
    let written = (|| -> Result<()> {
        let f = fs
            .open(&tmp, true)
            .map_err(|e| LogError::io("create", &tmp, e))?;
        f.set_len(0)
            .and_then(|_| f.write_all_at(&bytes, 0))
            .map_err(|e| LogError::io("write", &tmp, e))?;
        f.sync_data().map_err(|e| LogError::io("fsync", &tmp, e))?;
        fs.rename(&tmp, &path)
            .map_err(|e| LogError::io("rename", &tmp, e))
    })();
    if let Err(e) = written {
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    fs.sync_dir(dir)
        .map_err(|e| LogError::io("fsync directory", dir, e))
}

/// Reads the snapshot at `offset`; `None` (with a warning) when it cannot be read or does not
/// decode, or names another offset than its file name.
pub(crate) fn read(fs: &dyn FileSystem, dir: &Path, offset: u64) -> Option<ProducerStates> {
    let path = snapshot_path(dir, offset);
    let bytes = (|| -> io::Result<Vec<u8>> {
        let f = fs.open(&path, false)?;
        let len = usize::try_from(f.len()?).map_err(io::Error::other)?;
        let mut b = vec![0u8; len];
        let n = f.read_full_at(&mut b, 0)?;
        b.truncate(n);
        Ok(b)
    })();
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "ignoring an unreadable producer snapshot; rebuilding from the log");
            return None;
        }
    };
    match ProducerStates::decode(&bytes) {
        Some((o, states)) if o == offset => Some(states),
        Some((o, _)) => {
            tracing::warn!(path = %path.display(), covers = o,
                "ignoring a producer snapshot whose contents name another offset; rebuilding from the log");
            None
        }
        None => {
            tracing::warn!(path = %path.display(), bytes = bytes.len(),
                "ignoring a damaged producer snapshot; rebuilding from the log");
            None
        }
    }
}

/// Removes the snapshot at `offset` (a missing one is fine). The caller syncs the directory
/// when the removal must be durable.
pub(crate) fn remove(fs: &dyn FileSystem, dir: &Path, offset: u64) -> Result<()> {
    let path = snapshot_path(dir, offset);
    match fs.remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io("remove", &path, e)),
    }
}

/// Removes the oldest snapshots beyond the [`KEPT_SNAPSHOTS`] newest, from disk and from
/// `snapshots`. Best effort and not durable: an old snapshot that survives (or comes back after
/// a power loss) is still a valid base, only an older one.
pub(crate) fn prune(fs: &dyn FileSystem, dir: &Path, snapshots: &mut BTreeSet<u64>) {
    while snapshots.len() > KEPT_SNAPSHOTS {
        let oldest = *snapshots.first().expect("not empty");
        if let Err(e) = remove(fs, dir, oldest) {
            tracing::warn!(error = %e, "old producer snapshot not removed");
            return;
        }
        snapshots.remove(&oldest);
    }
}

/// Removes every snapshot above `end` from disk and from `snapshots`. Not durable by itself:
/// the caller syncs the directory before the log accepts a write.
pub(crate) fn remove_above(
    fs: &dyn FileSystem,
    dir: &Path,
    snapshots: &mut BTreeSet<u64>,
    end: u64,
) -> Result<()> {
    let above: Vec<u64> = snapshots.range(end + 1..).copied().collect();
    for offset in above {
        tracing::info!(dir = %dir.display(), offset, end,
            "removing a producer snapshot beyond the log end");
        remove(fs, dir, offset)?;
        snapshots.remove(&offset);
    }
    Ok(())
}

/// Why a replay stopped.
#[derive(Debug)]
pub(crate) enum ReplayError {
    /// An IO error.
    Io(LogError),
    /// The headers of segment `seg` (an index into the replayed segments) do not chain at byte
    /// `pos` of its `.log`.
    Damage {
        seg: usize,
        pos: u64,
        reason: String,
    },
}

impl From<LogError> for ReplayError {
    fn from(e: LogError) -> Self {
        Self::Io(e)
    }
}

impl ReplayError {
    /// The error to report: IO as is, damage as [`LogError::Corrupt`] naming the `.log`.
    pub fn into_log_error(self, segs: &[Arc<Segment>]) -> LogError {
        match self {
            Self::Io(e) => e,
            Self::Damage { seg, pos, reason } => {
                LogError::corrupt(&segs[seg].log_path, pos, reason)
            }
        }
    }
}

/// The state as of the end of `segs`: from the newest snapshot in `snapshots` at or below the
/// end that reads back (damaged ones are removed, from disk and the set), replaying the log
/// from there (or from its start, when the snapshot is older than the start or there is none).
pub(crate) fn rebuild(
    fs: &dyn FileSystem,
    dir: &Path,
    segs: &[Arc<Segment>],
    snapshots: &mut BTreeSet<u64>,
    now_ms: i64,
) -> std::result::Result<ProducerStates, ReplayError> {
    let start = segs.first().map_or(0, |s| s.base);
    let end = segs.last().map_or(start, |s| s.end().next_offset);
    let candidates: Vec<u64> = snapshots.range(..=end).rev().copied().collect();
    let mut base = None;
    for offset in candidates {
        match read(fs, dir, offset) {
            Some(states) => {
                base = Some((offset, states));
                break;
            }
            None => {
                if let Err(e) = remove(fs, dir, offset) {
                    tracing::warn!(error = %e, "could not remove a damaged producer snapshot");
                }
                snapshots.remove(&offset);
            }
        }
    }
    let snapshot = base.as_ref().map(|(o, _)| *o);
    let (from, mut states) = match base {
        Some((offset, states)) => (offset.max(start), states),
        None => (start, ProducerStates::new()),
    };
    let replayed = replay(segs, from, &mut states, now_ms)?;
    tracing::debug!(dir = %dir.display(), ?snapshot, from, end, replayed,
        producers = states.len(), "rebuilt producer state");
    Ok(states)
}

/// Records every producer batch of `segs` at or above `from` (a batch boundary) into `states`,
/// reading batch headers only and skipping each batch by its length; returns how many batches
/// were read. Checks that the headers chain (each batch starts where the previous one ended,
/// and the last one ends the segment); a header that does not is reported as damage. The
/// CRC is not checked here: reads check it.
pub(crate) fn replay(
    segs: &[Arc<Segment>],
    from: u64,
    states: &mut ProducerStates,
    now_ms: i64,
) -> std::result::Result<u64, ReplayError> {
    let mut batches = 0;
    for (i, seg) in segs.iter().enumerate() {
        let end = seg.end();
        if end.next_offset <= from {
            continue;
        }
        let mut cur = Cursor::default();
        let io = |e| ReplayError::Io(LogError::io("read", &seg.log_path, e));
        let damage = |pos, reason| ReplayError::Damage {
            seg: i,
            pos,
            reason,
        };
        // Start at the batch holding `from`, found through the index; if the index does not
        // lead there (it is derived data), scan the segment from its first batch instead.
        let (mut pos, mut next) = (FILE_HEADER_LEN as u64, seg.base);
        if from > seg.base
            && let Ok(p) = seg.position_of(from)
            && let Ok(h) = BatchHeader::parse(cur.header(&*seg.log, p, end.log_len).map_err(io)?)
            && h.base_offset >= 0
            && (h.base_offset as u64) <= from
            && from <= h.last_offset() as u64
        {
            (pos, next) = (p, h.base_offset as u64);
        }
        while pos < end.log_len {
            let h = BatchHeader::parse(cur.header(&*seg.log, pos, end.log_len).map_err(io)?)
                .map_err(|e| damage(pos, format!("batch header: {e}")))?;
            if h.base_offset != next as i64 {
                return Err(damage(
                    pos,
                    format!("batch starts at offset {}, expected {next}", h.base_offset),
                ));
            }
            let len = h.total_len() as u64;
            if pos + len > end.log_len {
                return Err(damage(pos, "batch runs past the end of the segment".into()));
            }
            if h.base_offset as u64 >= from {
                record_batch(states, &h, now_ms);
            }
            batches += 1;
            next = h.next_offset() as u64;
            pos += len;
        }
        if next != end.next_offset {
            return Err(damage(
                pos,
                format!(
                    "segment's batches end at offset {next}, expected {}",
                    end.next_offset
                ),
            ));
        }
    }
    Ok(batches)
}

/// A read-ahead buffer over one `.log`, so that replaying small batches does not cost a read
/// per batch.
#[derive(Default)]
struct Cursor {
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    at: u64,
    /// Valid bytes in `buf`.
    len: usize,
}

impl Cursor {
    /// The (up to [`HEADER_LEN`]) bytes at `pos`, not reading at or past `limit`.
    fn header(&mut self, f: &dyn File, pos: u64, limit: u64) -> io::Result<&[u8]> {
        let want = (limit.saturating_sub(pos)).min(HEADER_LEN as u64) as usize;
        let cached = pos >= self.at && pos + want as u64 <= self.at + self.len as u64;
        if !cached {
            let n = (limit.saturating_sub(pos)).min(REPLAY_CHUNK as u64) as usize;
            self.buf.resize(n.max(HEADER_LEN), 0);
            self.len = f.read_full_at(&mut self.buf[..n], pos)?;
            self.at = pos;
        }
        let s = (pos - self.at) as usize;
        Ok(&self.buf[s..self.len.min(s + want)])
    }
}
