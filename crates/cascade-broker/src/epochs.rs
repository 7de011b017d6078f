//! [`EpochCache`]: which leader epoch started at which offset, per partition replica.
//!
//! The leader stamps its epoch into every batch it appends (`partition_leader_epoch`, outside
//! the batch CRC). The cache records the first offset of each epoch so a replica can answer
//! "where does epoch E end in your log?" (KIP-279): a follower whose last epoch is E asks the
//! leader, and cuts its log at the answer, dropping a suffix the leader never had. Every fetch
//! is checked against the same history (`diverges`, `last_batch_epoch`): a follower names
//! the epoch of its last batch and a leader whose log disagrees refuses to count the fetch.
//!
//! Invariants:
//! - Entries are strictly increasing in both epoch and start offset.
//! - An entry is written (file replaced atomically, fsync'd) **before** the first batch of its
//!   epoch is appended, so after a crash the cache may name an epoch with no batches (harmless;
//!   trimmed on open against the log end) but never miss one that has batches.
//! - The file has no checksum of its own, so it is checked against the log when a replica
//!   opens ([`EpochCache::load_checked`]): every entry that has batches must name the epoch
//!   stamped on the batch where it says the epoch starts, and the batch before must be older.
//!   A file that does not parse or does not match (a flipped bit can turn one valid number
//!   into another) is rebuilt from the batches' own epochs and rewritten. A wrong cache would
//!   give followers wrong truncation points, keeping a suffix the leader never had.

use crate::error::{BrokerError, Result};
use crate::state_file::write_atomically;
use cascade_log::LogReader;
use cascade_log::fs::FileSystem;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The epoch entries a log's batches imply: one at each batch whose epoch differs from the
/// batch before. Reads the whole log: only done when the cache file cannot be trusted.
fn scan_epochs(log: &LogReader) -> Result<Vec<(i32, u64)>> {
    let mut entries: Vec<(i32, u64)> = Vec::new();
    let mut next = log.start_offset();
    let end = log.end_offset();
    while next < end {
        let f = log.read(next, 1 << 20)?;
        let mut rest: &[u8] = &f.data;
        while rest.len() >= cascade_record::HEADER_LEN {
            let h = cascade_record::BatchHeader::parse(rest)
                .map_err(|e| BrokerError::Metadata(format!("scanning epochs: {e}")))?;
            if entries.last().is_none_or(|&(e, _)| e != h.leader_epoch) {
                entries.push((h.leader_epoch, h.base_offset.max(0) as u64));
            }
            rest = &rest[h.total_len().min(rest.len())..];
        }
        if f.next_offset <= next {
            break;
        }
        next = f.next_offset;
    }
    Ok(entries)
}

/// The cache file of partition directory `dir`: beside it (`<topic>/<p>.leader-epochs`), as
/// the storage engine owns everything inside it.
pub fn file_of(dir: &Path) -> PathBuf {
    sibling(dir, "leader-epochs")
}

/// A file beside a partition directory: `<topic>/<p>.<ext>`.
pub fn sibling(dir: &Path, ext: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    dir.with_file_name(format!("{name}.{ext}"))
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct EpochCache {
    /// The file system the partition lives on.
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    entries: Vec<(i32, u64)>,
}

fn save_entries(fs: &dyn FileSystem, path: &Path, entries: &[(i32, u64)]) -> Result<()> {
    let bytes = serde_json::to_vec(entries)
        .map_err(|e| BrokerError::Metadata(format!("encoding epochs: {e}")))?;
    write_atomically(fs, path, &bytes)
}

impl EpochCache {
    /// Loads the cache of the partition in `dir`, dropping entries at or past `log_end` (they
    /// name epochs whose batches a crash or a truncation took away).
    pub fn load(fs: Arc<dyn FileSystem>, dir: &Path, log_end: u64) -> Result<Self> {
        let path = file_of(dir);
        let entries: Vec<(i32, u64)> = match crate::state_file::read_whole(fs.as_ref(), &path) {
            Ok(Some(b)) => serde_json::from_slice(&b).map_err(|e| {
                BrokerError::Metadata(format!("{} is damaged: {e}", path.display()))
            })?,
            Ok(None) => Vec::new(),
            Err(e) => {
                return Err(BrokerError::Metadata(format!(
                    "read {}: {e}",
                    path.display()
                )));
            }
        };
        let mut c = Self { fs, path, entries };
        c.truncate_from(log_end)?;
        Ok(c)
    }

    /// [`EpochCache::load`], checked against `log` (see the module docs) and rebuilt from the
    /// log's batches when it is damaged or disagrees with them.
    pub fn load_checked(fs: Arc<dyn FileSystem>, dir: &Path, log: &LogReader) -> Result<Self> {
        let end = log.end_offset();
        match Self::load(fs.clone(), dir, end) {
            Ok(c) if c.agrees_with(log) => return Ok(c),
            Ok(_) => {
                tracing::error!(path = %file_of(dir).display(), "leader-epoch cache disagrees with the log: rebuilding it from the batches");
            }
            Err(e) => {
                tracing::error!(path = %file_of(dir).display(), error = %e, "leader-epoch cache unreadable: rebuilding it from the batches");
            }
        }
        metrics::counter!("cascade_log_damage_total", "found" => "open").increment(1);
        let c = Self {
            fs,
            path: file_of(dir),
            entries: scan_epochs(log)?,
        };
        c.save()?;
        Ok(c)
    }

    /// True if the entries describe the log's batches exactly: each epoch's range (from its
    /// start to the next entry's) begins with a batch of that epoch at that very offset and
    /// ends with one of that epoch, which, epochs only growing along a log, means every batch
    /// in between is of it too. Two header reads per entry.
    fn agrees_with(&self, log: &LogReader) -> bool {
        let (start, end) = (log.start_offset(), log.end_offset());
        let epoch_at = |offset: u64| -> Option<(u64, i32)> {
            let f = log.read(offset, 1).ok()?;
            let h = cascade_record::BatchHeader::parse(&f.data).ok()?;
            Some((u64::try_from(h.base_offset).ok()?, h.leader_epoch))
        };
        if self
            .entries
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return false;
        }
        if start < end && self.entries.first().is_none_or(|&(_, s)| s > start) {
            return false; // batches no entry covers
        }
        for (i, &(epoch, at)) in self.entries.iter().enumerate() {
            let next = self.entries.get(i + 1).map_or(end, |&(_, n)| n.min(end));
            let (lo, hi) = (at.max(start), next);
            if lo >= hi {
                continue; // an epoch with no batches here (none written, or all retained away)
            }
            let first = epoch_at(lo);
            let base_ok = if at >= start {
                first == Some((at, epoch))
            } else {
                first.is_some_and(|(_, e)| e == epoch)
            };
            if !base_ok || epoch_at(hi - 1).is_none_or(|(_, e)| e != epoch) {
                return false;
            }
        }
        true
    }

    /// An empty cache that writes to `dir` on the real file system (tests).
    pub fn empty(dir: &Path) -> Self {
        Self {
            fs: Arc::new(cascade_log::fs::StdFs),
            path: file_of(dir),
            entries: Vec::new(),
        }
    }

    /// The latest epoch and its start offset.
    pub fn latest(&self) -> Option<(i32, u64)> {
        self.entries.last().copied()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(i32, u64)] {
        &self.entries
    }

    fn save(&self) -> Result<()> {
        save_entries(self.fs.as_ref(), &self.path, &self.entries)
    }

    /// Records that `epoch` starts at `start`, if it is newer than the latest entry. The entry
    /// counts only once it is on disk: a failed write leaves the cache as it was, so a retry
    /// writes it again instead of finding it already there (a replica that failed to take
    /// the leader role at `epoch` once led at it on the retry with the epoch never saved).
    pub fn assign(&mut self, epoch: i32, start: u64) -> Result<()> {
        let mut next = self.entries.clone();
        // Entries starting at or past `start` name no batch below it, and `start` is where
        // the next batch goes (the log end): they are epochs led or followed without a batch
        // written, or whose batches are gone. Kept, such an entry would claim the batches
        // about to be written (an epoch-3 batch appended after an empty epoch-4 entry at the
        // same offset would be taken for epoch 4, and a follower of epoch 3 told it diverges
        // on every fetch). The same epoch taken again keeps the start it first had.
        if next.last().is_some_and(|&(e, s)| e == epoch && s <= start) {
            return Ok(());
        }
        next.retain(|&(_, s)| s < start);
        if next.last().is_some_and(|&(e, _)| e >= epoch) {
            // An older epoch after a newer one's batches: not a history any leader writes.
            return Ok(());
        }
        next.push((epoch, start));
        save_entries(self.fs.as_ref(), &self.path, &next)?;
        self.entries = next;
        Ok(())
    }

    /// Forgets epochs starting at or after `offset` (the log was cut there).
    pub fn truncate_from(&mut self, offset: u64) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|&(_, s)| s < offset);
        if self.entries.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Forgets everything (the log restarts empty at some offset).
    pub fn clear(&mut self) -> Result<()> {
        self.entries.clear();
        self.save()
    }

    /// KIP-279: the largest epoch `<= requested` and the offset where it ends in a log whose
    /// end is `log_end` (the start of the next epoch, or `log_end` for the latest). `None` if
    /// every epoch here is newer than `requested`.
    pub fn end_offset_for(&self, requested: i32, log_end: u64) -> Option<(i32, u64)> {
        let i = self.entries.iter().rposition(|&(e, _)| e <= requested)?;
        let end = self.entries.get(i + 1).map(|&(_, s)| s).unwrap_or(log_end);
        Some((self.entries[i].0, end))
    }
}

/// The leader epoch of the batch just below `end` in a log with these epoch entries: the
/// latest entry starting below it (entries at or past the end name epochs with no batches
/// here yet); `None` for an empty log.
pub(crate) fn last_batch_epoch(entries: &[(i32, u64)], end: u64) -> Option<i32> {
    entries
        .iter()
        .rev()
        .find(|&&(_, start)| start < end)
        .map(|&(e, _)| e)
}

/// Whether a follower whose last batch has leader epoch `last` and whose log ends at
/// `fetch_offset` diverges from a leader with these epochs and log range `[start, end)`: the
/// leader's batch at `fetch_offset - 1` is not of epoch `last` (the leader never had that
/// epoch, or its epoch `last` ends before `fetch_offset` or starts after that batch), so the
/// follower holds batches below `fetch_offset` that the leader does not (KIP-279's check,
/// done on every fetch as Kafka does with a fetch's last fetched epoch). A follower at the
/// leader's log start is never diverging: nothing below it can be compared.
pub(crate) fn diverges(
    epochs: &EpochCache,
    last: i32,
    fetch_offset: u64,
    start: u64,
    end: u64,
) -> bool {
    if fetch_offset <= start {
        return false;
    }
    let entries = epochs.entries();
    // The leader's latest epoch at or before `last`; none: every epoch here is newer, so the
    // follower's last batch is of an epoch this log never had, at an offset it holds.
    let Some(i) = entries.iter().rposition(|&(e, _)| e <= last) else {
        return true;
    };
    let (epoch, epoch_start) = entries[i];
    let epoch_end = entries.get(i + 1).map_or(end, |&(_, s)| s);
    epoch != last || epoch_start >= fetch_offset || epoch_end < fetch_offset
}

/// Where a follower's log stops agreeing with its leader's, found by [`find_divergence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// Cut the local log at this offset (it may equal the local end: nothing to cut).
    CutAt(u64),
    /// The leader holds none of the local epochs (its log starts after all of them): drop
    /// everything and restart empty at the leader's log start, given here.
    Restart(u64),
}

/// KIP-279's truncation loop, follower side. `local` are the follower's epoch entries, `end`
/// its log end; `ask(e)` asks the leader for the largest epoch `<= e` it has and where that
/// epoch ends in its log (`(-1, leader_log_start)` if it has none).
///
/// One round is not enough: when the leader answers an epoch the follower never had, the
/// follower's last batches of an *older* epoch may still diverge (the leader's copy of that
/// older epoch can end sooner). So the follower cuts everything past the answered epoch, then
/// asks again for its new latest epoch, until the leader answers an epoch the follower has (the
/// logs agree up to the smaller of the two ends of it) or the follower has no epochs left.
/// Every round removes at least one local epoch, so the loop ends.
pub async fn find_divergence<E, F>(
    local: &[(i32, u64)],
    end: u64,
    mut ask: impl FnMut(i32) -> F,
) -> std::result::Result<Divergence, E>
where
    F: Future<Output = std::result::Result<(i32, u64), E>>,
{
    let mut entries = local.to_vec();
    let mut end = end;
    while let Some(&(mine, _)) = entries.last() {
        let (theirs, their_end) = ask(mine).await?;
        if theirs < 0 {
            return Ok(Divergence::Restart(their_end));
        }
        // Local epochs newer than the answer are not in the leader's history: our end of the
        // answered epoch is where the first of them starts.
        let newer = entries.partition_point(|&(e, _)| e <= theirs);
        let our_end = entries.get(newer).map_or(end, |&(_, s)| s);
        end = end.min(our_end).min(their_end);
        entries.truncate(newer);
        entries.retain(|&(_, s)| s < end);
        if entries.last().is_some_and(|&(e, _)| e == theirs) || theirs >= mine {
            break;
        }
    }
    Ok(Divergence::CutAt(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed write of a new epoch leaves the cache as it was: the retry writes it again.
    /// Before, the entry stayed in memory, the retry found it there and succeeded without
    /// writing, and the replica led at an epoch its file did not have (found by
    /// `cluster::a_replica_that_cannot_take_the_leader_role_is_passed_over`, which then read a
    /// different value at an acknowledged offset).
    #[test]
    fn a_failed_save_adds_no_epoch() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        let mut c = EpochCache::empty(&dir);
        c.assign(1, 0).unwrap();
        let obstacle = root.path().join("0.leader-epochs.tmp");
        std::fs::create_dir(&obstacle).unwrap();
        assert!(c.assign(2, 5).is_err());
        assert_eq!(c.entries(), &[(1, 0)], "nothing added in memory");
        assert!(
            c.assign(2, 5).is_err(),
            "the retry fails too, rather than finding it"
        );
        std::fs::remove_dir(&obstacle).unwrap();
        c.assign(2, 5).unwrap();
        assert_eq!(
            EpochCache::load(Arc::new(cascade_log::fs::StdFs), &dir, 10)
                .unwrap()
                .entries(),
            &[(1, 0), (2, 5)]
        );
    }

    /// An epoch led without a batch written leaves an entry at the log end; the batches
    /// then written there, of an older epoch (a follower copying its new leader's history),
    /// must be recorded as that epoch's, not left under the empty one (found in review: a
    /// follower of this replica would then be told its log diverges on every fetch).
    #[test]
    fn an_epoch_without_batches_gives_way_to_the_batches_written_at_its_start() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        let mut c = EpochCache::empty(&dir);
        c.assign(2, 0).unwrap();
        c.assign(4, 90).unwrap(); // led epoch 4 at 90, wrote nothing
        c.assign(3, 90).unwrap(); // then copied the epoch-3 batches from 90 on
        assert_eq!(c.entries(), &[(2, 0), (3, 90)]);
        c.assign(5, 100).unwrap();
        c.assign(5, 120).unwrap(); // taken again later: keeps its first start
        assert_eq!(c.entries(), &[(2, 0), (3, 90), (5, 100)]);
        c.assign(6, 100).unwrap(); // epoch 5 had no batch: epoch 6 takes its place
        assert_eq!(c.entries(), &[(2, 0), (3, 90), (6, 100)]);
        assert_eq!(
            EpochCache::load(Arc::new(cascade_log::fs::StdFs), &dir, 200)
                .unwrap()
                .entries(),
            &[(2, 0), (3, 90), (6, 100)],
            "what is on disk"
        );
    }

    #[test]
    fn end_offsets_follow_kip_279() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        let mut c = EpochCache::empty(&dir);
        c.assign(0, 0).unwrap();
        c.assign(2, 10).unwrap();
        c.assign(5, 25).unwrap();
        c.assign(4, 30).unwrap(); // older epoch: ignored
        assert_eq!(c.end_offset_for(0, 40), Some((0, 10)));
        assert_eq!(c.end_offset_for(1, 40), Some((0, 10)));
        assert_eq!(c.end_offset_for(3, 40), Some((2, 25)));
        assert_eq!(c.end_offset_for(9, 40), Some((5, 40)));
        assert_eq!(c.end_offset_for(-1, 40), None);
        c.truncate_from(25).unwrap();
        assert_eq!(c.latest(), Some((2, 10)));
        let again = EpochCache::load(Arc::new(cascade_log::fs::StdFs), &dir, 12).unwrap();
        assert_eq!(again.entries(), &[(0, 0), (2, 10)]);
        let cut = EpochCache::load(Arc::new(cascade_log::fs::StdFs), &dir, 10).unwrap();
        assert_eq!(cut.entries(), &[(0, 0)]);
    }

    /// Runs `find_divergence` against a leader with these epochs and log bounds; returns the
    /// outcome and the epochs the follower asked about.
    fn diverge(
        leader_entries: &[(i32, u64)],
        leader_start: u64,
        leader_end: u64,
        local: &[(i32, u64)],
        end: u64,
    ) -> (Divergence, Vec<i32>) {
        let leader = EpochCache {
            entries: leader_entries.to_vec(),
            ..EpochCache::empty(Path::new("/nonexistent"))
        };
        let mut asked = Vec::new();
        let d = futures::executor::block_on(find_divergence(local, end, |e| {
            asked.push(e);
            std::future::ready(Ok::<_, ()>(
                leader
                    .end_offset_for(e, leader_end)
                    .unwrap_or((-1, leader_start)),
            ))
        }))
        .unwrap();
        (d, asked)
    }

    #[test]
    fn truncation_loops_until_the_epochs_agree() {
        // The case: the follower's epoch 1 runs to 10, the leader's only to 8 (its
        // epoch 2 starts there); the follower never had epoch 2, the leader never had 3. One
        // round (ask 3, told "epoch 2 ends at 15") would cut at 10 and keep offsets 8 and 9 of
        // a history the leader does not share.
        let (d, asked) = diverge(&[(1, 0), (2, 8), (4, 15)], 0, 30, &[(1, 0), (3, 10)], 20);
        assert_eq!(d, Divergence::CutAt(8));
        assert_eq!(asked, [3, 1]);
        // Same history: nothing to cut, one round.
        let (d, asked) = diverge(&[(1, 0), (2, 8)], 0, 30, &[(1, 0), (2, 8)], 20);
        assert_eq!((d, asked), (Divergence::CutAt(20), vec![2]));
        // The follower is ahead inside the leader's latest epoch (it had not replicated the
        // leader's cut yet): cut at the leader's end of it.
        let (d, _) = diverge(&[(1, 0), (2, 8)], 0, 12, &[(1, 0), (2, 8)], 20);
        assert_eq!(d, Divergence::CutAt(12));
        // Every local epoch is newer than the leader's history: nothing shared after the
        // leader's epoch 1 ends.
        let (d, asked) = diverge(&[(1, 0), (2, 5)], 0, 9, &[(1, 0), (3, 4), (5, 7)], 9);
        assert_eq!(d, Divergence::CutAt(4));
        assert_eq!(asked, [5, 1]);
        // The leader's log starts after everything here (retention ran while we were away).
        let (d, _) = diverge(&[(6, 100)], 100, 120, &[(1, 0), (3, 10)], 20);
        assert_eq!(d, Divergence::Restart(100));
        // No local epochs: nothing to ask.
        let (d, asked) = diverge(&[(1, 0)], 0, 5, &[], 3);
        assert_eq!((d, asked), (Divergence::CutAt(3), vec![]));
    }

    /// A log of 3-record batches: offsets 0..6 in epoch 1, 6..12 in epoch 3, 12..15 in epoch 4.
    fn log_with_epochs(dir: &Path) -> cascade_log::Log {
        let mut log = cascade_log::Log::open(dir, cascade_log::LogConfig::default()).unwrap();
        for (base, epoch) in [(0u64, 1i32), (3, 1), (6, 3), (9, 3), (12, 4)] {
            let mut b = cascade_record::BatchBuilder::new();
            for _ in 0..3 {
                b.push(cascade_record::Record {
                    timestamp: 1,
                    key: None,
                    value: Some(b"v"),
                    headers: &[],
                });
            }
            let mut bytes = b.finish();
            bytes[0..8].copy_from_slice(&(base as i64).to_be_bytes());
            bytes[12..16].copy_from_slice(&epoch.to_be_bytes());
            log.append_replicated(&bytes).unwrap();
        }
        log
    }

    /// The cache file has no checksum: whatever a flipped bit turns it into (unparsable, or
    /// other valid numbers), the replica opens with the epochs its batches carry. Before, a
    /// changed digit was trusted (wrong truncation points for followers) and an unparsable
    /// file left the replica offline for good.
    #[test]
    fn a_damaged_epoch_cache_is_rebuilt_from_the_log() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        let log = log_with_epochs(&dir);
        let truth = [(1, 0), (3, 6), (4, 12)];
        let mut c = EpochCache::empty(&dir);
        for (e, s) in truth {
            c.assign(e, s).unwrap();
        }
        // An epoch whose leader wrote nothing (5 at 15, the end) is trimmed, not "damage".
        c.assign(5, 15).unwrap();
        let r = log.reader();
        assert_eq!(
            EpochCache::load_checked(Arc::new(cascade_log::fs::StdFs), &dir, &r)
                .unwrap()
                .entries(),
            truth
        );
        let path = file_of(&dir);
        let good = std::fs::read(&path).unwrap();
        for bad in [
            b"[[1,0],[3,6],[4,12".to_vec(),   // cut
            b"[[1,0],[3,7],[4,12]]".to_vec(), // a digit changed: mid-batch start
            b"[[1,0],[2,6],[4,12]]".to_vec(), // another epoch
            b"[[1,0],[4,12]]".to_vec(),       // an entry missing
            b"[[1,0],[3,6],[4,9]]".to_vec(),  // starts early
            b"[[3,0],[3,6],[4,12]]".to_vec(), // not increasing
        ] {
            std::fs::write(&path, &bad).unwrap();
            let c = EpochCache::load_checked(Arc::new(cascade_log::fs::StdFs), &dir, &r).unwrap();
            assert_eq!(
                c.entries(),
                truth,
                "from {:?}",
                String::from_utf8_lossy(&bad)
            );
            assert_eq!(
                EpochCache::load(Arc::new(cascade_log::fs::StdFs), &dir, 15)
                    .unwrap()
                    .entries(),
                truth,
                "rewritten"
            );
        }
        std::fs::write(&path, &good).unwrap();
        // An empty epoch in the middle: 2 started at 6 and wrote nothing before 3 did (as
        // files written before `assign` dropped such entries hold it).
        save_entries(
            &cascade_log::fs::StdFs,
            &file_of(&dir),
            &[(1, 0), (2, 6), (3, 6), (4, 12)],
        )
        .unwrap();
        assert_eq!(
            EpochCache::load_checked(Arc::new(cascade_log::fs::StdFs), &dir, &r)
                .unwrap()
                .entries(),
            [(1, 0), (2, 6), (3, 6), (4, 12)],
            "an epoch with no batches is not damage"
        );
    }

    /// Epochs 1@0, 3@10, 4@20 (2 never existed here), log [0, 30).
    fn fetch_leader() -> (tempfile::TempDir, EpochCache) {
        let root = tempfile::tempdir().unwrap();
        let mut c = EpochCache::empty(&root.path().join("0"));
        for (e, s) in [(1, 0), (3, 10), (4, 20)] {
            c.assign(e, s).unwrap();
        }
        (root, c)
    }

    #[test]
    fn a_follower_that_agrees_with_the_leader_is_not_diverging() {
        let (_root, c) = fetch_leader();
        for (last, at) in [(1, 10), (1, 5), (3, 20), (3, 11), (4, 30), (4, 21)] {
            assert!(
                !diverges(&c, last, at, 0, 30),
                "epoch {last} ending at {at}"
            );
        }
    }

    #[test]
    fn a_follower_with_batches_the_leader_does_not_have_is_diverging() {
        let (_root, c) = fetch_leader();
        for (last, at, why) in [
            (1, 11, "epoch 1 ends at 10 here"),
            (2, 12, "epoch 2 never existed here"),
            (3, 21, "epoch 3 ends at 20 here"),
            (3, 10, "epoch 3 starts at 10: the batch at 9 is epoch 1"),
            (5, 30, "a newer epoch than any here"),
            (0, 5, "an epoch older than any here"),
        ] {
            assert!(diverges(&c, last, at, 0, 30), "{why}");
        }
    }

    /// A replica that led an epoch without writing in it keeps that epoch's entry at its
    /// end; its last batch is of the epoch before, and that is the one it names (naming the
    /// empty one had a follower answered `diverging` on every fetch, truncating to the same
    /// place each time, found by the StatefulSet rolling-restart run).
    #[test]
    fn the_last_batchs_epoch_skips_epochs_without_batches() {
        let entries = [(1, 0), (3, 10), (4, 20)];
        assert_eq!(
            last_batch_epoch(&entries, 20),
            Some(3),
            "epoch 4 has no batch yet"
        );
        assert_eq!(last_batch_epoch(&entries, 21), Some(4));
        assert_eq!(last_batch_epoch(&entries, 10), Some(1));
        assert_eq!(last_batch_epoch(&entries, 0), None, "an empty log");
        assert_eq!(last_batch_epoch(&[], 5), None);
        let (_root, c) = fetch_leader();
        // A follower that led epoch 5 (its entry at its end, 30) without writing, fetching
        // from a leader that never had epoch 5: it names 4, which agrees.
        assert!(!diverges(
            &c,
            last_batch_epoch(&[(1, 0), (3, 10), (4, 20), (5, 30)], 30).unwrap(),
            30,
            0,
            30
        ));
    }

    #[test]
    fn nothing_below_the_leaders_log_start_is_judged() {
        let (_root, c) = fetch_leader();
        assert!(
            !diverges(&c, 0, 15, 15, 30),
            "a follower restarting at the log start"
        );
        assert!(!diverges(&c, 7, 0, 0, 30), "an empty follower");
    }
}
