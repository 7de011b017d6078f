//! [`LogStore`]: the metadata Raft log and vote on disk.
//!
//! Metadata changes are rare and small (topic creations, leader and ISR changes), so the log
//! is kept whole in memory and journaled to one append-only file, `raft.log`, of frames
//! `[len: u32 LE][crc32c: u32 LE][JSON of a JournalOp]`. An op is an appended entry, a
//! truncation ("drop every entry from index i") or a purge ("entries up to log id L were
//! compacted into a snapshot"), so truncating and purging are appends too and the file is
//! only ever rewritten by compaction (write a new file, fsync, rename, fsync the directory).
//!
//! Invariants:
//! - Every op is fdatasync'd before the call that made it returns (for appends: before the
//!   flush callback fires), so what openraft was told is durable is durable.
//! - Replaying the journal from the start gives exactly the state before the crash, up to the
//!   last complete, checksummed frame; a *torn* tail frame was never acknowledged and is cut
//!   off on open.
//! - Only what a crash can leave counts as torn (the rule etcd's WAL follows): a frame that
//!   ends before its declared length, or one holding NUL bytes (blocks the disk never wrote
//!   read as zeros; the JSON of an op never holds a NUL). A frame that is all there yet fails
//!   its checksum was written whole and fsync'd, so its bytes changed afterwards: that is
//!   damage, even in the last frame. So is a short last frame whose bytes to the end of the
//!   file match its checksum (its length field is what changed).
//! - A bad frame *followed by a valid one* is not a torn write either (every write is fsync'd
//!   before the next begins, so a crash can only tear the last one).
//! - Damage refuses to open with [`JournalDamaged`], and the node does not start: the entries
//!   in and after the bad frame may have been acknowledged to a Raft leader, and dropping them
//!   would let this voter vote and count as if it never had them. A journal cut short at a
//!   frame boundary looks intact on its own; [`LogStore::check_holds_committed`] catches it when
//!   it ends before the entry this node last recorded as committed.
//! - The vote lives in `vote.json`, replaced atomically and fsync'd before `save_vote`
//!   returns. The committed log id (`committed.json`) is a hint for faster restarts and may be
//!   stale or missing after a crash, which openraft allows.

// openraft's StorageError is large and its type is fixed by the traits implemented here.
#![allow(clippy::result_large_err)]

use super::TypeConfig;
use crate::state_file::{self, write_atomically};
use cascade_log::fs::{File, FileSystem};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type NodeId = u64;
type SError = StorageError<NodeId>;

/// Rewrite the journal once it holds this many bytes more than the live entries need.
const COMPACT_SLACK: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
enum JournalOp {
    Append(Entry<TypeConfig>),
    TruncateFrom(u64),
    Purge(LogId<NodeId>),
    /// Several ops written by one call, in one frame: a write is fsynced before the next one
    /// starts, so with one frame per write only the last frame can ever be torn. (Several
    /// frames in one write could reach the disk out of order in a power loss, leaving a hole
    /// before a complete frame of the same unacknowledged write, which would read as damage.)
    Batch(Vec<JournalOp>),
}

#[derive(Debug)]
struct Inner {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    file: Arc<dyn File>,
    file_len: u64,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The Raft log storage. Cheap to clone: clones share one journal.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn frame(op: &JournalOp) -> Result<Vec<u8>, SError> {
    let json = serde_json::to_vec(op).map_err(io)?;
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// The one op (so one frame, see [`JournalOp::Batch`]) that appends `entries`.
fn append_op(entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> JournalOp {
    let mut ops: Vec<JournalOp> = entries.into_iter().map(JournalOp::Append).collect();
    if ops.len() == 1 {
        ops.pop().expect("one op")
    } else {
        JournalOp::Batch(ops)
    }
}

/// The frame at `at`, if a complete, checksummed one starts there.
fn frame_at(bytes: &[u8], at: usize) -> Option<(JournalOp, usize)> {
    let header = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let body = bytes.get(at + 8..(at + 8).checked_add(len)?)?;
    // Every op is a JSON object; checking that first keeps a scan for a valid frame cheap.
    if body.first() != Some(&b'{') || crc32c::crc32c(body) != crc {
        return None;
    }
    let op = serde_json::from_slice(body).ok()?;
    Some((op, 8 + len))
}

/// Reads the frames of a journal; returns the ops and the length of the valid prefix.
fn replay(bytes: &[u8]) -> (Vec<JournalOp>, u64) {
    let mut ops = Vec::new();
    let mut at = 0usize;
    while let Some((op, len)) = frame_at(bytes, at) {
        ops.push(op);
        at += len;
    }
    (ops, at as u64)
}

/// The first position after `from` where a valid frame starts, if any: evidence that the bad
/// bytes at `from` are damage inside the journal, not a write torn by a crash.
fn valid_frame_after(bytes: &[u8], from: usize) -> Option<usize> {
    (from + 1..bytes.len().saturating_sub(8)).find(|&at| frame_at(bytes, at).is_some())
}

/// Whether the bad bytes from `from` to the end of the journal are what a crash during the last
/// write can leave (see the module docs): a frame cut short, or one with unwritten (zeroed)
/// blocks. Anything else there is damage.
fn tail_is_torn(bytes: &[u8], from: usize) -> bool {
    let rest = &bytes[from.min(bytes.len())..];
    let Some(header) = rest.get(..8) else {
        return true; // not even a whole header
    };
    if header.iter().all(|b| *b == 0) {
        return true; // a header the disk never wrote
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    match rest.get(8..8usize.saturating_add(len)) {
        // Short: torn, unless the bytes that are there are exactly the checksummed body (then
        // the frame is whole and its length field changed).
        None => crc32c::crc32c(&rest[8..]) != crc,
        Some(body) => body.contains(&0),
    }
}

/// The Raft journal holds a bad frame with valid frames after it. See the module docs.
#[derive(Debug, thiserror::Error)]
#[error(
    "the metadata Raft journal {path} is damaged: {what}. Entries this node acknowledged to the \
     cluster may be lost, so it must not vote as if it had them, and it refuses to start. \
     Restore the file from a backup, or replace this node: see \"A damaged metadata journal\" \
     in docs/operations.md"
)]
pub struct JournalDamaged {
    /// The journal file.
    pub path: PathBuf,
    /// Where the valid prefix ends (for a journal cut short: its end).
    pub at: u64,
    /// What is wrong there.
    pub what: String,
}

impl JournalDamaged {
    fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

impl Inner {
    fn apply_op(&mut self, op: JournalOp) {
        match op {
            JournalOp::Append(e) => {
                self.entries.insert(e.log_id.index, e);
            }
            JournalOp::TruncateFrom(i) => {
                self.entries.split_off(&i);
            }
            JournalOp::Purge(id) => {
                self.entries = self.entries.split_off(&(id.index + 1));
                if self.last_purged.is_none_or(|p| p.index < id.index) {
                    self.last_purged = Some(id);
                }
            }
            JournalOp::Batch(ops) => {
                for op in ops {
                    self.apply_op(op);
                }
            }
        }
    }

    fn write_ops(&mut self, ops: &[JournalOp]) -> Result<(), SError> {
        let mut buf = Vec::new();
        for op in ops {
            buf.extend(frame(op)?);
        }
        self.file.write_all_at(&buf, self.file_len).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.file_len += buf.len() as u64;
        Ok(())
    }

    /// Rewrites the journal with only what is live, when it has grown well past that.
    fn maybe_compact(&mut self) -> Result<(), SError> {
        if self.file_len < COMPACT_SLACK {
            return Ok(());
        }
        let mut ops = Vec::new();
        if let Some(p) = self.last_purged {
            ops.push(JournalOp::Purge(p));
        }
        ops.extend(self.entries.values().cloned().map(JournalOp::Append));
        let mut buf = Vec::new();
        for op in &ops {
            buf.extend(frame(op)?);
        }
        if buf.len() as u64 * 2 > self.file_len {
            return Ok(()); // not worth it yet
        }
        let path = self.dir.join("raft.log");
        write_atomically(self.fs.as_ref(), &path, &buf).map_err(io)?;
        self.file = self.fs.open(&path, false).map_err(io)?;
        self.file_len = buf.len() as u64;
        Ok(())
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir` on `fs`, cutting a torn tail.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> std::io::Result<Self> {
        // The directory must survive a power loss, or a node forgets its cluster.
        fs.create_dir_all_durable(dir)?;
        let path = dir.join("raft.log");
        let existed = fs.exists(&path);
        let bytes = state_file::read_whole(fs.as_ref(), &path)?.unwrap_or_default();
        let (ops, valid) = replay(&bytes);
        let what = match valid_frame_after(&bytes, valid as usize) {
            Some(next) => Some(format!(
                "bytes {valid}.. do not form a valid frame, yet a valid frame starts at byte {next}"
            )),
            None if !tail_is_torn(&bytes, valid as usize) => Some(format!(
                "its last frame (bytes {valid}..{}) is whole but fails its checksum, which no \
                 crash leaves behind",
                bytes.len()
            )),
            None => None,
        };
        if let Some(what) = what {
            return Err(JournalDamaged {
                path,
                at: valid,
                what,
            }
            .into_io());
        }
        let file = fs.open(&path, true)?;
        if valid < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() as u64 - valid,
                "cutting a torn tail off the Raft journal"
            );
            file.set_len(valid)?;
            file.sync_data()?;
        }
        if !existed {
            // A new file: its directory entry must survive a crash too.
            fs.sync_dir(dir)?;
        }
        // A damaged vote must stop the node: voting again in a term it already voted in could
        // elect two leaders. The committed id is a hint (see the module docs): dropped.
        let vote = read_json(fs.as_ref(), &dir.join("vote.json"))?;
        let committed = read_json(fs.as_ref(), &dir.join("committed.json")).unwrap_or(None);
        let mut inner = Inner {
            fs,
            dir: dir.to_path_buf(),
            file,
            file_len: valid,
            entries: BTreeMap::new(),
            last_purged: None,
            vote,
            committed,
        };
        for op in ops {
            inner.apply_op(op);
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Fails with [`JournalDamaged`] if the journal ends before the entry this node last
    /// recorded as committed, and no snapshot (`applied`, the state machine's last applied
    /// id) covers the gap. A journal cut short at a frame boundary reads as intact, and the
    /// committed hint is written only after the entries it names were fsync'd here (openraft
    /// commits no entry before this node's log holds it), so such a gap means lost entries.
    pub fn check_holds_committed(&self, applied: Option<LogId<NodeId>>) -> std::io::Result<()> {
        let inner = self.lock();
        let Some(committed) = inner.committed else {
            return Ok(());
        };
        let held = [
            inner.entries.keys().next_back().copied(),
            inner.last_purged.map(|p| p.index),
            applied.map(|a| a.index),
        ]
        .into_iter()
        .flatten()
        .max();
        if held.is_some_and(|h| h >= committed.index) {
            return Ok(());
        }
        Err(JournalDamaged {
            path: inner.dir.join("raft.log"),
            at: inner.file_len,
            what: format!(
                "it ends at entry {} ({} bytes), yet this node recorded entry {} as committed \
                 (committed.json): the journal lost its end",
                held.map_or_else(|| "none".to_string(), |h| h.to_string()),
                inner.file_len,
                committed.index
            ),
        }
        .into_io())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads a checksummed JSON state file ([`state_file`]); damage is an `InvalidData` error
/// naming the file.
fn read_json<T: for<'de> Deserialize<'de>>(
    fs: &dyn FileSystem,
    path: &Path,
) -> std::io::Result<Option<T>> {
    Ok(state_file::read_metadata_json(fs, path)?.map(|(v, _)| v))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(io)?;
        state_file::write(inner.fs.as_ref(), &inner.dir.join("vote.json"), &bytes)
            .map_err(|e| SError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        let mut inner = self.lock();
        inner.committed = committed;
        // A hint only (see the module docs): no fsync, and a failure is not fatal.
        let path = inner.dir.join("committed.json");
        if let Ok(bytes) = serde_json::to_vec(&committed) {
            let _ = state_file::write_hint(inner.fs.as_ref(), &path, &state_file::encode(&bytes));
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let op = append_op(entries);
        let mut inner = self.lock();
        let r = inner.write_ops(std::slice::from_ref(&op));
        match r {
            Ok(()) => {
                inner.apply_op(op);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let mut inner = self.lock();
        let op = JournalOp::TruncateFrom(log_id.index);
        inner.write_ops(std::slice::from_ref(&op))?;
        inner.apply_op(op);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let mut inner = self.lock();
        let op = JournalOp::Purge(log_id);
        inner.write_ops(std::slice::from_ref(&op))?;
        inner.apply_op(op);
        inner.maybe_compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_log::fs::StdFs;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_the_rest_replays() {
        let ops = [
            JournalOp::Append(entry(1)),
            JournalOp::Append(entry(2)),
            JournalOp::Append(entry(3)),
            JournalOp::TruncateFrom(3),
            JournalOp::Purge(entry(1).log_id),
        ];
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for op in &ops {
            bytes.extend(frame(op).unwrap());
            ends.push(bytes.len() as u64);
        }
        let (all, valid) = replay(&bytes);
        assert_eq!((all.len(), valid), (5, bytes.len() as u64));
        // Cut anywhere inside the last frame: the first four survive.
        for cut in ends[3] as usize..bytes.len() {
            let (got, valid) = replay(&bytes[..cut]);
            assert_eq!((got.len(), valid), (4, ends[3]), "cut at {cut}");
        }
        // A flipped byte in the third frame ends the replay before it, and the frames after
        // it show it is damage, not a torn tail.
        let mut bad = bytes.clone();
        bad[ends[1] as usize + 10] ^= 0xff;
        assert_eq!(replay(&bad).0.len(), 2);
        assert_eq!(
            valid_frame_after(&bad, ends[1] as usize),
            Some(ends[2] as usize)
        );
        // A flipped byte in the last frame ends the replay there too, with no valid frame
        // after it; but the frame is whole, so it is damage, not a torn write.
        let last_start = ends[3] as usize;
        for at in [0, 4, 9, bytes.len() - last_start - 1] {
            let mut last = bytes.clone();
            last[last_start + at] ^= 0x01;
            assert_eq!(replay(&last).0.len(), 4, "flip at {at}");
            assert_eq!(valid_frame_after(&last, last_start), None);
            assert!(
                !tail_is_torn(&last, last_start),
                "flip at {at} of the last frame"
            );
        }
        // What a crash leaves is torn: any cut inside the last frame, or its end never written.
        for cut in last_start..bytes.len() {
            assert_eq!(valid_frame_after(&bytes[..cut], last_start), None);
            assert!(tail_is_torn(&bytes[..cut], last_start), "cut at {cut}");
            let mut zeroed = bytes.clone();
            zeroed[cut..].fill(0);
            assert!(tail_is_torn(&zeroed, last_start), "zeroed from {cut}");
        }
    }

    /// Damage anywhere but the last frame — a flipped bit in a length, a checksum or a body,
    /// or a zeroed block — stops the journal from opening instead of silently dropping the
    /// entries after it (a voter would forget entries it acknowledged).
    #[test]
    fn damage_before_the_last_frame_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.log");
        {
            let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            let mut inner = store.lock();
            for i in 1..=20 {
                inner.write_ops(&[JournalOp::Append(entry(i))]).unwrap();
            }
        }
        let good = std::fs::read(&path).unwrap();
        let mut starts = vec![0usize];
        for i in 1..=20 {
            let end = starts.last().unwrap() + frame(&JournalOp::Append(entry(i))).unwrap().len();
            starts.push(end);
        }
        assert_eq!(starts[20], good.len());
        let last_start = starts[19];
        for (what, damage) in [
            ("length", 2usize),
            ("checksum", 5),
            ("body", 20),
            ("end of body", usize::MAX),
        ] {
            for frame in [0, 7, 18] {
                let mut bad = good.clone();
                let at = if damage == usize::MAX {
                    starts[frame + 1] - 1
                } else {
                    starts[frame] + damage
                };
                bad[at] ^= 0x10;
                std::fs::write(&path, &bad).unwrap();
                let err = LogStore::open(Arc::new(StdFs), dir.path()).expect_err(what);
                let damaged = err
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<JournalDamaged>())
                    .unwrap_or_else(|| panic!("{what} in frame {frame}: {err}"));
                assert_eq!(damaged.at, starts[frame] as u64, "{what} in frame {frame}");
                // Nothing was cut: the evidence stays for whoever repairs it.
                assert_eq!(std::fs::read(&path).unwrap(), bad);
            }
        }
        let mut zeroed = good.clone();
        zeroed[starts[3]..starts[5]].fill(0);
        std::fs::write(&path, &zeroed).unwrap();
        assert!(LogStore::open(Arc::new(StdFs), dir.path()).is_err());
        // The same damage in the last frame refuses too: it is whole, so no crash tore it.
        // (Before, it was cut as a torn tail and the voter forgot entry 20.)
        for damage in [2usize, 5, 20] {
            let mut bad = good.clone();
            bad[last_start + damage] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err =
                LogStore::open(Arc::new(StdFs), dir.path()).expect_err("a flip in the last frame");
            assert!(err.to_string().contains("is damaged"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), bad);
        }
        // A last frame cut short or zero-filled is what a crash leaves: cut, the rest opens.
        for torn in [good[..good.len() - 3].to_vec(), {
            let mut z = good.clone();
            z[last_start + 12..].fill(0);
            z
        }] {
            std::fs::write(&path, &torn).unwrap();
            let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            assert_eq!(store.lock().entries.len(), 19);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64);
        }
    }

    /// A journal cut short at a frame boundary is a valid journal on its own. The committed
    /// hint shows what it lost: opening refuses when the journal (and the snapshot) end before
    /// the entry this node recorded as committed; a stale hint below the end is fine.
    #[tokio::test]
    async fn a_journal_cut_below_what_this_node_committed_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.log");
        let mut ends = Vec::new();
        {
            let mut store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            for i in 1..=10 {
                store
                    .lock()
                    .write_ops(&[JournalOp::Append(entry(i))])
                    .unwrap();
                ends.push(std::fs::metadata(&path).unwrap().len());
            }
            store.save_committed(Some(entry(8).log_id)).await.unwrap();
        }
        let good = std::fs::read(&path).unwrap();
        for keep in [10usize, 9, 8] {
            std::fs::write(&path, &good[..ends[keep - 1] as usize]).unwrap();
            let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            store.check_holds_committed(None).expect("holds entry 8");
        }
        for keep in [7usize, 3, 0] {
            let end = if keep == 0 {
                0
            } else {
                ends[keep - 1] as usize
            };
            std::fs::write(&path, &good[..end]).unwrap();
            let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            let err = store.check_holds_committed(None).expect_err("lost entry 8");
            assert!(err.to_string().contains("is damaged"), "{err}");
            assert!(err.to_string().contains("committed"), "{err}");
            // A snapshot that covers the gap makes it whole again.
            store
                .check_holds_committed(Some(entry(8).log_id))
                .expect("the snapshot holds entry 8");
        }
    }

    /// Entries appended together are one frame: a power loss can only tear that frame (never
    /// leave a complete frame after a hole), and the batch replays whole.
    #[test]
    fn entries_appended_together_are_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            let op = append_op((1..=5).map(entry));
            store.lock().write_ops(std::slice::from_ref(&op)).unwrap();
        }
        let bytes = std::fs::read(dir.path().join("raft.log")).unwrap();
        let (ops, valid) = replay(&bytes);
        assert_eq!((ops.len(), valid), (1, bytes.len() as u64));
        // Any tear inside it is a torn tail, cut quietly.
        for cut in [9, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(dir.path().join("raft.log"), &bytes[..cut]).unwrap();
            let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            assert!(store.lock().entries.is_empty());
        }
        std::fs::write(dir.path().join("raft.log"), &bytes).unwrap();
        let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
        assert_eq!(store.lock().entries.len(), 5);
    }

    #[test]
    fn reopen_applies_truncations_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
            let mut inner = store.lock();
            let ops: Vec<JournalOp> = (1..=5).map(|i| JournalOp::Append(entry(i))).collect();
            inner.write_ops(&ops).unwrap();
            inner.write_ops(&[JournalOp::TruncateFrom(4)]).unwrap();
            inner
                .write_ops(&[JournalOp::Purge(entry(1).log_id)])
                .unwrap();
        }
        // A torn frame at the end, as a crash mid-write leaves.
        let path = dir.path().join("raft.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).unwrap();
        let store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
        let inner = store.lock();
        assert_eq!(
            inner.entries.keys().copied().collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(inner.last_purged.map(|l| l.index), Some(1));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), inner.file_len);
    }

    /// The store does its IO through the node's file system, so the power-loss layer reaches
    /// it: on a [`MemFs`](cascade_log::fs::MemFs), whose `crash()` drops every write and name
    /// not fsynced, everything the store reported done survives each power loss (appends,
    /// truncations, purges, the vote, a compacted journal, the new file's own name), and the
    /// committed hint, written without an fsync, never names more than the journal holds.
    #[tokio::test]
    async fn what_the_store_reported_done_survives_a_power_loss() {
        use cascade_log::fs::MemFs;
        let fs = MemFs::new();
        let dir = Path::new("/node/meta/raft");
        let open = || LogStore::open(Arc::new(fs.clone()), dir).unwrap();
        let store = open();
        // A first append, then the power goes out: the new journal's name must be durable.
        {
            let mut inner = store.lock();
            let op = JournalOp::Append(entry(1));
            inner.write_ops(std::slice::from_ref(&op)).unwrap();
        }
        drop(store);
        fs.crash();
        let mut store = open();
        assert_eq!(store.lock().entries.len(), 1, "the journal's name was lost");
        let mut next = 2;
        for round in 0..6u64 {
            // Appends (up to the 4 MiB compaction slack over the rounds), a truncation of the
            // newest few, a purge of the oldest, a new vote; then the power goes out.
            let batch = 12_000;
            {
                let mut inner = store.lock();
                for chunk in (next..next + batch).collect::<Vec<_>>().chunks(500) {
                    let op = append_op(chunk.iter().map(|&i| entry(i)));
                    inner.write_ops(std::slice::from_ref(&op)).unwrap();
                    inner.apply_op(op);
                }
            }
            next += batch;
            next -= 3;
            store.truncate(entry(next).log_id).await.unwrap();
            let purged = next - 2_000;
            store.purge(entry(purged).log_id).await.unwrap();
            store
                .save_committed(Some(entry(next - 1).log_id))
                .await
                .unwrap();
            let vote = Vote::new(round + 2, 1);
            store.save_vote(&vote).await.unwrap();
            drop(store);
            fs.crash();
            store = open();
            let inner = store.lock();
            let keys: Vec<u64> = inner.entries.keys().copied().collect();
            assert_eq!(keys.first(), Some(&(purged + 1)), "round {round}");
            assert_eq!(keys.last(), Some(&(next - 1)), "round {round}");
            assert_eq!(keys.len() as u64, next - 1 - purged, "round {round}");
            assert_eq!(inner.last_purged.map(|p| p.index), Some(purged));
            assert_eq!(inner.vote, Some(vote));
            drop(inner);
            store.check_holds_committed(None).unwrap();
        }
        // The journal was compacted along the way (it would hold 72,000 entries otherwise).
        let len = fs.read_file(&dir.join("raft.log")).unwrap().len() as u64;
        assert!(len < COMPACT_SLACK, "{len}");
    }

    /// The vote is read back as a value: a flipped bit that keeps the JSON valid (a term of
    /// 7 read as 5) would let this voter vote again in a term it already voted in, and elect a
    /// second leader. Every such flip now stops the store from opening, naming the file.
    #[tokio::test]
    async fn a_damaged_vote_refuses_to_open_even_when_it_still_parses() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
        let vote = Vote::new_committed(7, 2);
        store.save_vote(&vote).await.unwrap();
        drop(store);
        let mut store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        drop(store);
        let path = dir.path().join("vote.json");
        let good = std::fs::read(&path).unwrap();
        let text = String::from_utf8(good.clone()).unwrap();
        let term = text.rfind('7').expect("the term is in the file");
        let mut bad = good.clone();
        bad[term] ^= 0x02; // '7' -> '5': still valid JSON
        std::fs::write(&path, &bad).unwrap();
        let err = LogStore::open(Arc::new(StdFs), dir.path()).unwrap_err();
        assert!(err.to_string().contains("vote.json is damaged"), "{err}");
        // A vote written by an older version (no checksum header) is still read.
        std::fs::write(&path, serde_json::to_vec(&vote).unwrap()).unwrap();
        let mut store = LogStore::open(Arc::new(StdFs), dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    }
}
