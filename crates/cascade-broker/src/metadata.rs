//! Cluster metadata: brokers, topics, partition assignments, leaders and epochs.
//!
//! Changes are [`MetadataCommand`]s applied by the pure [`ClusterMetadata::apply`], which
//! validates against the current state and is deterministic: the same commands in the same order
//! give the same state. That is the shape a replicated state machine needs, so the cluster
//! replaces [`Metadata`]'s backend (today a file written atomically on this node) with a Raft
//! log without touching the request paths, which only call [`Metadata::apply`],
//! [`Metadata::snapshot`] and [`Metadata::subscribe`].
//!
//! Readers get immutable snapshots (`Arc<ClusterMetadata>`) from a watch channel: no lock on
//! the request path.

use crate::error::{BrokerError, Result};
use cascade_types::{TopicConfig, validate_topic_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Mutex, watch};

/// One broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// Its node id.
    pub node_id: u32,
    /// Where clients reach its gRPC API.
    pub grpc_addr: String,
    /// Where its HTTP listener is, if any.
    pub http_addr: String,
}

/// Where a partition lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    /// Brokers holding a replica, the preferred leader first.
    pub replicas: Vec<u32>,
    /// The current leader.
    pub leader: u32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Replicas caught up with the leader.
    pub isr: Vec<u32>,
}

/// A topic's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Its name.
    pub name: String,
    /// A fresh id per creation, so a re-created topic is never confused with the old one.
    pub id: String,
    /// One entry per partition.
    pub partitions: Vec<PartitionAssignment>,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Settings.
    pub config: TopicConfig,
    /// Internal topics (`__consumer_offsets`) are hidden from ordinary listings.
    pub internal: bool,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

/// The whole cluster's metadata at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterMetadata {
    /// Generated when the cluster is first started.
    pub cluster_id: String,
    /// Bumped by every applied command.
    pub version: u64,
    /// The controller (the node that applies commands).
    pub controller_id: u32,
    /// Known brokers by id.
    pub brokers: BTreeMap<u32, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
}

/// A change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Adds or updates a broker.
    RegisterBroker(BrokerInfo),
    /// Creates a topic; the id and time are chosen by the proposer so replay is deterministic.
    CreateTopic {
        /// Name.
        name: String,
        /// Fresh id.
        id: String,
        /// Partition count.
        partitions: u32,
        /// Replicas per partition.
        replication_factor: u32,
        /// Settings.
        config: TopicConfig,
        /// Internal topic?
        internal: bool,
        /// Creation time.
        created_ms: i64,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Raises a topic's partition count.
    CreatePartitions {
        /// Name.
        name: String,
        /// New total.
        total: u32,
    },
    /// Replaces a topic's settings.
    AlterConfig {
        /// Name.
        name: String,
        /// The new settings.
        config: TopicConfig,
    },
}

/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

impl ClusterMetadata {
    /// The topic, or `UnknownTopic`.
    pub fn topic(&self, name: &str) -> Result<&TopicMeta> {
        self.topics
            .get(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    /// Places `count` partitions starting at `first` over the brokers, spreading leaders
    /// round-robin so each broker leads about the same number.
    fn place(&self, first: u32, count: u32, rf: u32) -> Vec<PartitionAssignment> {
        let ids: Vec<u32> = self.brokers.keys().copied().collect();
        (first..first + count)
            .map(|p| {
                let replicas: Vec<u32> = (0..rf)
                    .map(|r| ids[(p as usize + r as usize) % ids.len()])
                    .collect();
                PartitionAssignment {
                    leader: replicas[0],
                    leader_epoch: 0,
                    isr: replicas.clone(),
                    replicas,
                }
            })
            .collect()
    }

    /// Validates `cmd` against the current state and applies it; on error nothing changes.
    pub fn apply(&mut self, cmd: &MetadataCommand) -> Result<()> {
        match cmd {
            MetadataCommand::RegisterBroker(b) => {
                self.brokers.insert(b.node_id, b.clone());
            }
            MetadataCommand::CreateTopic {
                name,
                id,
                partitions,
                replication_factor,
                config,
                internal,
                created_ms,
            } => {
                validate_topic_name(name)?;
                if self.topics.contains_key(name) {
                    return Err(BrokerError::TopicExists(name.clone()));
                }
                check_partitions(*partitions)?;
                let brokers = self.brokers.len() as u32;
                if *replication_factor == 0 || *replication_factor > brokers {
                    return Err(BrokerError::InvalidReplicationFactor(format!(
                        "replication factor must be between 1 and the number of brokers ({brokers}), got {replication_factor}"
                    )));
                }
                if config.min_insync_replicas > *replication_factor {
                    return Err(BrokerError::InvalidConfig(
                        cascade_types::TopicConfigError::BadValue {
                            key: "min.insync.replicas".into(),
                            value: config.min_insync_replicas.to_string(),
                            reason: format!(
                                "cannot exceed the replication factor {replication_factor}"
                            ),
                        },
                    ));
                }
                let assignments = self.place(0, *partitions, *replication_factor);
                self.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name: name.clone(),
                        id: id.clone(),
                        partitions: assignments,
                        replication_factor: *replication_factor,
                        config: config.clone(),
                        internal: *internal,
                        created_ms: *created_ms,
                    },
                );
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topic(name)?;
                self.topics.remove(name);
            }
            MetadataCommand::CreatePartitions { name, total } => {
                let t = self.topic(name)?;
                let current = t.partitions.len() as u32;
                if *total <= current {
                    return Err(BrokerError::InvalidPartitions(format!(
                        "topic {name:?} has {current} partitions; the new total must be larger, got {total}"
                    )));
                }
                check_partitions(*total)?;
                let rf = t.replication_factor;
                let more = self.place(current, total - current, rf);
                self.topics
                    .get_mut(name)
                    .expect("checked")
                    .partitions
                    .extend(more);
            }
            MetadataCommand::AlterConfig { name, config } => {
                let t = self.topic(name)?;
                if config.min_insync_replicas > t.replication_factor {
                    return Err(BrokerError::InvalidConfig(
                        cascade_types::TopicConfigError::BadValue {
                            key: "min.insync.replicas".into(),
                            value: config.min_insync_replicas.to_string(),
                            reason: "cannot exceed the replication factor".into(),
                        },
                    ));
                }
                self.topics.get_mut(name).expect("checked").config = config.clone();
            }
        }
        self.version += 1;
        Ok(())
    }
}

fn check_partitions(n: u32) -> Result<()> {
    if n == 0 || n > MAX_PARTITIONS {
        return Err(BrokerError::InvalidPartitions(format!(
            "partition count must be between 1 and {MAX_PARTITIONS}, got {n}"
        )));
    }
    Ok(())
}

/// The metadata of this node's cluster: apply commands, read snapshots, watch changes.
#[derive(Debug)]
pub struct Metadata {
    path: PathBuf,
    /// Serializes writers; readers use the watch channel.
    write: Mutex<()>,
    tx: watch::Sender<Arc<ClusterMetadata>>,
}

impl Metadata {
    /// Loads the metadata kept in `dir`, or starts a new cluster there, and registers `node`.
    pub async fn open(dir: &Path, node: BrokerInfo) -> Result<Self> {
        let path = dir.join("cluster.json");
        std::fs::create_dir_all(dir).map_err(|e| meta_err(dir, "create", e))?;
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<ClusterMetadata>(&bytes).map_err(|e| {
                BrokerError::Metadata(format!("{} is not valid metadata: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClusterMetadata {
                cluster_id: uuid::Uuid::new_v4().simple().to_string()[..22].to_string(),
                controller_id: node.node_id,
                ..Default::default()
            },
            Err(e) => return Err(meta_err(&path, "read", e)),
        };
        let (tx, _) = watch::channel(Arc::new(state));
        let meta = Self {
            path,
            write: Mutex::new(()),
            tx,
        };
        meta.apply(MetadataCommand::RegisterBroker(node)).await?;
        Ok(meta)
    }

    /// The current metadata.
    pub fn snapshot(&self) -> Arc<ClusterMetadata> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every new version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMetadata>> {
        self.tx.subscribe()
    }

    /// Applies `cmd`, makes the result durable, then publishes it.
    pub async fn apply(&self, cmd: MetadataCommand) -> Result<Arc<ClusterMetadata>> {
        let _guard = self.write.lock().await;
        let mut next = (*self.snapshot()).clone();
        next.apply(&cmd)?;
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| BrokerError::Metadata(format!("encoding metadata: {e}")))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| BrokerError::Metadata(format!("metadata writer panicked: {e}")))??;
        let next = Arc::new(next);
        self.tx.send_replace(next.clone());
        Ok(next)
    }
}

fn meta_err(path: &Path, op: &str, e: std::io::Error) -> BrokerError {
    BrokerError::Metadata(format!("{op} {}: {e}", path.display()))
}

/// Writes a file so that a crash leaves either the old or the new contents: write a temporary
/// file, fsync it, rename it over the old one, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| meta_err(&tmp, "create", e))?;
    f.write_all(bytes).map_err(|e| meta_err(&tmp, "write", e))?;
    f.sync_all().map_err(|e| meta_err(&tmp, "fsync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| meta_err(path, "rename", e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| meta_err(dir, "fsync", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_brokers() -> ClusterMetadata {
        let mut m = ClusterMetadata::default();
        for id in [1, 2] {
            m.apply(&MetadataCommand::RegisterBroker(BrokerInfo {
                node_id: id,
                grpc_addr: format!("n{id}:50051"),
                http_addr: String::new(),
            }))
            .unwrap();
        }
        m
    }

    fn create(name: &str, partitions: u32, rf: u32) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            id: "id".into(),
            partitions,
            replication_factor: rf,
            config: TopicConfig::default(),
            internal: false,
            created_ms: 0,
        }
    }

    #[test]
    fn create_validates_and_spreads_leaders() {
        let mut m = two_brokers();
        m.apply(&create("t", 4, 2)).unwrap();
        let leaders: Vec<u32> = m.topics["t"].partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders, [1, 2, 1, 2]);
        let before = m.clone();
        for bad in [
            create("t", 1, 1),
            create("u", 0, 1),
            create("u", 1, 3),
            create("a b", 1, 1),
        ] {
            assert!(m.apply(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(m, before, "refused commands change nothing");
    }

    #[test]
    fn partitions_only_grow() {
        let mut m = two_brokers();
        m.apply(&create("t", 2, 1)).unwrap();
        let grow = |total| MetadataCommand::CreatePartitions {
            name: "t".into(),
            total,
        };
        assert!(m.apply(&grow(2)).is_err());
        m.apply(&grow(5)).unwrap();
        assert_eq!(m.topics["t"].partitions.len(), 5);
        m.apply(&MetadataCommand::DeleteTopic { name: "t".into() })
            .unwrap();
        assert!(
            m.apply(&MetadataCommand::DeleteTopic { name: "t".into() })
                .is_err()
        );
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let node = BrokerInfo {
            node_id: 1,
            grpc_addr: "a".into(),
            http_addr: "b".into(),
        };
        let m = Metadata::open(dir.path(), node.clone()).await.unwrap();
        m.apply(create("t", 3, 1)).await.unwrap();
        let id = m.snapshot().cluster_id.clone();
        drop(m);
        let m = Metadata::open(dir.path(), node).await.unwrap();
        assert_eq!(m.snapshot().cluster_id, id);
        assert_eq!(m.snapshot().topics["t"].partitions.len(), 3);
    }
}
