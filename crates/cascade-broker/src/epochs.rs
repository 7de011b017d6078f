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
}
