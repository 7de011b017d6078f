//! [`EpochCache`]: which leader epoch started at which offset, per partition replica.
//!
//! The leader stamps its epoch into every batch it appends (`partition_leader_epoch`, outside
//! the batch CRC). The cache records the first offset of each epoch so a replica can answer
//! "where does epoch E end in your log?" (KIP-279): a follower whose last epoch is E asks the
//! leader, and cuts its log at the answer, dropping a suffix the leader never had.
//!
//! Invariants:
//! - Entries are strictly increasing in both epoch and start offset.
//! - An entry is written (file replaced atomically, fsync'd) **before** the first batch of its
//!   epoch is appended, so after a crash the cache may name an epoch with no batches (harmless;
//!   trimmed on open against the log end) but never miss one that has batches.

use crate::error::{BrokerError, Result};
use crate::metadata::write_atomically;
use std::path::{Path, PathBuf};

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
    path: PathBuf,
    entries: Vec<(i32, u64)>,
}

impl EpochCache {
    /// Loads the cache of the partition in `dir`, dropping entries at or past `log_end` (they
    /// name epochs whose batches a crash or a truncation took away).
    pub fn load(dir: &Path, log_end: u64) -> Result<Self> {
        let path = file_of(dir);
        let entries: Vec<(i32, u64)> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                BrokerError::Metadata(format!("{} is damaged: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(BrokerError::Metadata(format!(
                    "read {}: {e}",
                    path.display()
                )));
            }
        };
        let mut c = Self { path, entries };
        c.truncate_from(log_end)?;
        Ok(c)
    }

    /// An empty cache that writes to `dir` (tests).
    pub fn empty(dir: &Path) -> Self {
        Self {
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
        let bytes = serde_json::to_vec(&self.entries)
            .map_err(|e| BrokerError::Metadata(format!("encoding epochs: {e}")))?;
        write_atomically(&self.path, &bytes)
    }

    /// Records that `epoch` starts at `start`, if it is newer than the latest entry.
    pub fn assign(&mut self, epoch: i32, start: u64) -> Result<()> {
        match self.entries.last() {
            Some(&(e, _)) if e >= epoch => return Ok(()),
            Some(&(_, s)) if s > start => {
                // A newer epoch cannot start before an older one; the older entry named
                // batches that are gone.
                self.entries.retain(|&(_, s)| s < start);
            }
            _ => {}
        }
        self.entries.push((epoch, start));
        self.save()
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
        let again = EpochCache::load(&dir, 12).unwrap();
        assert_eq!(again.entries(), &[(0, 0), (2, 10)]);
        let cut = EpochCache::load(&dir, 10).unwrap();
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
            path: PathBuf::from("/nonexistent"),
            entries: leader_entries.to_vec(),
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
}
