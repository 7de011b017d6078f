//! [`StateMachine`]: the metadata Raft group's state machine — [`ClusterMetadata`] — and its
//! snapshots.
//!
//! Applying a committed entry runs the pure [`ClusterMetadata::apply`]; a command it refuses
//! (it went stale between proposal and commit) changes nothing and answers the error. Every
//! node applies the same entries in the same order, so every node holds the same metadata at
//! the same log index. After each applied batch the new state is published on a watch channel
//! that the broker's request paths and reconciler read without locks.
//!
//! Persistence: the state is rebuilt on start from the last snapshot (`snapshot.json`,
//! replaced atomically) plus the log entries after it, which openraft re-applies. A snapshot
//! holds the state, the last applied log id and the membership.

use super::TypeConfig;
use crate::metadata::ClusterMetadata;
use crate::state_file;
use cascade_log::fs::FileSystem;
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

type NodeId = u64;
type SError = StorageError<NodeId>;

/// What applying one command answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// The metadata version after the entry.
    pub version: u64,
    /// Why the command was refused, if it was.
    pub error: Option<String>,
    /// For a producer id command: the id and epoch it issued.
    #[serde(default)]
    pub producer: Option<(i64, i16)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: ClusterMetadata,
}

#[derive(Debug)]
struct Inner {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: ClusterMetadata,
    /// The last snapshot, encoded.
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
}

/// The state machine. Cheap to clone: clones share the state.
#[derive(Debug, Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    tx: watch::Sender<Arc<ClusterMetadata>>,
}

fn sm_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl StateMachine {
    /// Loads the last snapshot in `dir` on `fs`, if any.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> std::io::Result<Self> {
        // The directory must survive a power loss, or a node forgets its cluster.
        fs.create_dir_all_durable(dir)?;
        let stored = state_file::read_metadata_json::<StoredSnapshot>(
            fs.as_ref(),
            &dir.join("snapshot.json"),
        )?;
        let mut inner = Inner {
            fs,
            dir: dir.to_path_buf(),
            last_applied: None,
            membership: StoredMembership::default(),
            state: ClusterMetadata::default(),
            snapshot: None,
            snapshot_seq: 0,
        };
        // A damaged snapshot stops the node (read above): a flipped bit that still parses
        // could change an in-sync set or a leader, and a node must not act on metadata it
        // never agreed to.
        if let Some((s, bytes)) = stored {
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.state = s.state;
            inner.snapshot = Some((s.meta, bytes));
        }
        let (tx, _) = watch::channel(Arc::new(inner.state.clone()));
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            tx,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of every published state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMetadata>> {
        self.tx.subscribe()
    }

    /// The current state.
    pub fn current(&self) -> Arc<ClusterMetadata> {
        self.tx.borrow().clone()
    }

    /// The id of the last entry applied (at open: the snapshot's).
    pub fn last_applied(&self) -> Option<openraft::LogId<NodeId>> {
        self.lock().last_applied
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let mut inner = self.lock();
        inner.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                inner.last_applied.map(|l| l.index).unwrap_or(0),
                inner.snapshot_seq
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state: inner.state.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(sm_err)?;
        state_file::write(inner.fs.as_ref(), &inner.dir.join("snapshot.json"), &bytes)
            .map_err(|e| SError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        inner.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SError> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for e in entries {
            inner.last_applied = Some(e.log_id);
            let mut producer = None;
            let error = match e.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => match inner.state.apply(&cmd) {
                    Ok(applied) => {
                        producer = applied.producer;
                        None
                    }
                    Err(err) => {
                        tracing::debug!(command = ?cmd, error = %err, "metadata command refused at apply");
                        Some(err.to_string())
                    }
                },
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    None
                }
            };
            out.push(ApplyResponse {
                version: inner.state.version,
                error,
                producer,
            });
        }
        let state = Arc::new(inner.state.clone());
        drop(inner);
        self.tx.send_replace(state);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let bytes = snapshot.into_inner();
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
            SError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let mut inner = self.lock();
        state_file::write(inner.fs.as_ref(), &inner.dir.join("snapshot.json"), &bytes).map_err(
            |e| {
                SError::from(StorageIOError::write_snapshot(
                    Some(meta.signature()),
                    AnyError::new(&e),
                ))
            },
        )?;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.state = stored.state;
        inner.snapshot = Some((meta.clone(), bytes));
        let state = Arc::new(inner.state.clone());
        drop(inner);
        self.tx.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_log::fs::StdFs;

    /// The snapshot holds the cluster's metadata as values (in-sync sets, leaders, epochs):
    /// a flipped bit that keeps the JSON valid would change what this node believes without a
    /// trace. Damage now stops the state machine from opening, naming the file.
    #[test]
    fn a_damaged_snapshot_refuses_to_open_even_when_it_still_parses() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClusterMetadata {
            version: 41,
            ..Default::default()
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta::default(),
            state,
        };
        let body = serde_json::to_vec(&stored).unwrap();
        let path = dir.path().join("snapshot.json");
        state_file::write(&StdFs, &path, &body).unwrap();
        assert_eq!(
            StateMachine::open(Arc::new(StdFs), dir.path())
                .unwrap()
                .current()
                .version,
            41
        );
        let mut bad = std::fs::read(&path).unwrap();
        let at = bad
            .windows(2)
            .position(|w| w == b"41")
            .expect("the version is in the file");
        bad[at + 1] ^= 0x02; // "41" -> "43": still valid JSON
        std::fs::write(&path, &bad).unwrap();
        let err = StateMachine::open(Arc::new(StdFs), dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("snapshot.json is damaged"),
            "{err}"
        );
    }
}
