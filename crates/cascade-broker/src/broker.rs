//! [`Broker`]: one node's topics, partitions and groups, and the admin operations on them.
//!
//! The broker owns the partition actors ([`Partition`]) of every topic it hosts, reached through
//! a copy-on-write map of topic handles (a read lock held only to clone an `Arc`). Metadata
//! changes go through [`Metadata::apply`] first and are then carried out locally, so the map
//! always follows the metadata. Produce and fetch live in `produce.rs` and `fetch.rs`.

use crate::error::{BrokerError, Result};
use crate::group::{GroupCoordinator, OFFSETS_TOPIC};
use crate::metadata::{BrokerInfo, ClusterMetadata, Metadata, MetadataCommand, TopicMeta};
use crate::partition::Partition;
use cascade_types::TopicConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Settings of a broker node.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where logs and metadata live.
    pub data_dir: PathBuf,
    /// This node's id.
    pub node_id: u32,
    /// gRPC address clients should use for this node.
    pub advertised_grpc_addr: String,
    /// HTTP address of this node ("" if none).
    pub advertised_http_addr: String,
    /// Partitions of `__consumer_offsets` (fixed once created).
    pub offsets_partitions: u32,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// Defaults for topics created without explicit settings.
    pub default_topic_config: TopicConfig,
}

impl BrokerConfig {
    /// Defaults for a node with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            node_id: 1,
            advertised_grpc_addr: "127.0.0.1:50051".into(),
            advertised_http_addr: String::new(),
            offsets_partitions: 4,
            retention_check_interval: Duration::from_secs(30),
            default_topic_config: TopicConfig::default(),
        }
    }
}

/// The running partitions of one topic.
#[derive(Debug)]
pub struct TopicHandle {
    /// The topic id these partitions belong to.
    pub id: String,
    /// Partitions by index.
    pub partitions: Vec<Arc<Partition>>,
}

/// One broker node. See the module docs.
#[derive(Debug)]
pub struct Broker {
    pub(crate) config: BrokerConfig,
    pub(crate) meta: Arc<Metadata>,
    pub(crate) topics: RwLock<HashMap<String, Arc<TopicHandle>>>,
    pub(crate) groups: OnceLock<GroupCoordinator>,
    /// Server-side consumer instances (driven by stateless clients such as the REST gateway).
    pub(crate) consumers: crate::group::ManagedConsumers,
    /// Partition chosen for unkeyed records without an explicit partition (sticky, rotated
    /// per request).
    pub(crate) sticky: AtomicU32,
    pub(crate) shutdown: CancellationToken,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn topic_dir(data: &Path, topic: &str) -> PathBuf {
    data.join("topics").join(topic)
}

impl Broker {
    /// Opens the node's metadata and every partition (recovering logs as needed), loads the
    /// consumer groups, and starts housekeeping. Stop it with [`Broker::shutdown`].
    pub async fn start(config: BrokerConfig) -> Result<Arc<Self>> {
        let node = BrokerInfo {
            node_id: config.node_id,
            grpc_addr: config.advertised_grpc_addr.clone(),
            http_addr: config.advertised_http_addr.clone(),
        };
        let meta = Arc::new(Metadata::open(&config.data_dir.join("meta"), node).await?);
        let broker = Arc::new(Self {
            config,
            meta,
            topics: RwLock::new(HashMap::new()),
            groups: OnceLock::new(),
            consumers: Default::default(),
            sticky: AtomicU32::new(rand::random()),
            shutdown: CancellationToken::new(),
        });
        if !broker.meta.snapshot().topics.contains_key(OFFSETS_TOPIC) {
            broker
                .meta
                .apply(MetadataCommand::CreateTopic {
                    name: OFFSETS_TOPIC.into(),
                    id: uuid::Uuid::new_v4().to_string(),
                    partitions: broker.config.offsets_partitions.max(1),
                    replication_factor: 1,
                    config: TopicConfig {
                        retention_ms: -1,
                        segment_bytes: 64 << 20,
                        ..TopicConfig::default()
                    },
                    internal: true,
                    created_ms: now_ms(),
                })
                .await?;
        }
        broker.open_all_topics().await?;
        let store = broker.topic_handle(OFFSETS_TOPIC)?.partitions.clone();
        let meta = broker.meta.clone();
        let groups = tokio::task::spawn_blocking(move || GroupCoordinator::load(meta, store))
            .await
            .map_err(|e| BrokerError::Metadata(format!("loading groups panicked: {e}")))??;
        let _ = broker.groups.set(groups);
        crate::housekeeping::spawn(broker.clone());
        Ok(broker)
    }

    async fn open_all_topics(&self) -> Result<()> {
        let snap = self.meta.snapshot();
        let topics_root = self.config.data_dir.join("topics");
        std::fs::create_dir_all(&topics_root)
            .map_err(|e| BrokerError::Metadata(format!("create {}: {e}", topics_root.display())))?;
        // Directories of topics the metadata no longer has were left by a crash during delete.
        if let Ok(entries) = std::fs::read_dir(&topics_root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !snap.topics.contains_key(&name) {
                    tracing::warn!(dir = %e.path().display(), "removing data of a deleted topic");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let total: usize = snap.topics.values().map(|t| t.partitions.len()).sum();
        tracing::info!(
            topics = snap.topics.len(),
            partitions = total,
            "opening partitions"
        );
        for t in snap.topics.values() {
            let handle = self.open_partitions(t, 0).await?;
            self.topics_write().insert(t.name.clone(), Arc::new(handle));
        }
        Ok(())
    }

    /// Opens partitions `from..` of `t` (blocking work on the blocking pool).
    async fn open_partitions(&self, t: &TopicMeta, from: u32) -> Result<TopicHandle> {
        let dir = topic_dir(&self.config.data_dir, &t.name);
        let meta = t.clone();
        let existing = self
            .topics_read()
            .get(&t.name)
            .filter(|h| h.id == t.id)
            .map(|h| h.partitions.clone())
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || -> Result<TopicHandle> {
            let name: Arc<str> = Arc::from(meta.name.as_str());
            let mut partitions = existing;
            partitions.truncate(from as usize);
            for p in from..meta.partitions.len() as u32 {
                let part =
                    Partition::open(name.clone(), p, &dir.join(p.to_string()), &meta.config)?;
                partitions.push(Arc::new(part));
            }
            Ok(TopicHandle {
                id: meta.id.clone(),
                partitions,
            })
        })
        .await
        .map_err(|e| BrokerError::Metadata(format!("opening partitions panicked: {e}")))?
    }

    pub(crate) fn topics_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<TopicHandle>>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn topics_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<TopicHandle>>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The running partitions of `topic`.
    pub fn topic_handle(&self, topic: &str) -> Result<Arc<TopicHandle>> {
        self.topics_read()
            .get(topic)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))
    }

    /// One partition.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let h = self.topic_handle(topic)?;
        h.partitions
            .get(partition as usize)
            .cloned()
            .ok_or(BrokerError::UnknownPartition {
                topic: topic.to_string(),
                partition: partition.into(),
                count: h.partitions.len() as u32,
            })
    }

    /// The consumer group coordinator.
    pub fn groups(&self) -> &GroupCoordinator {
        self.groups.get().expect("set during start")
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// This node's settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Cancelled when the broker stops; long-running streams end on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Creates a topic (or only validates, with `validate_only`).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicMeta> {
        if name.starts_with("__") {
            return Err(BrokerError::InvalidTopicName(
                cascade_types::NameError::InternalPrefix(name.to_string()),
            ));
        }
        let mut config = self.config.default_topic_config.clone();
        for (k, v) in configs {
            config.set(k, v)?;
        }
        let cmd = MetadataCommand::CreateTopic {
            name: name.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            partitions,
            replication_factor,
            config,
            internal: false,
            created_ms: now_ms(),
        };
        if validate_only {
            let mut dry = (*self.meta.snapshot()).clone();
            dry.apply(&cmd)?;
            return Ok(dry.topics[name].clone());
        }
        let snap = self.meta.apply(cmd).await?;
        let t = snap.topics[name].clone();
        // A directory left over from a topic of the same name must not be adopted.
        let dir = topic_dir(&self.config.data_dir, name);
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let handle = self.open_partitions(&t, 0).await?;
        self.topics_write()
            .insert(name.to_string(), Arc::new(handle));
        tracing::info!(topic = name, partitions, "created topic");
        Ok(t)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let t = self.meta.snapshot().topic(name)?.clone();
        if t.internal {
            return Err(BrokerError::InvalidRequest(format!(
                "{name:?} is an internal topic and cannot be deleted"
            )));
        }
        self.meta
            .apply(MetadataCommand::DeleteTopic {
                name: name.to_string(),
            })
            .await?;
        let handle = self.topics_write().remove(name);
        if let Some(h) = handle {
            for p in &h.partitions {
                let _ = p.close().await;
            }
        }
        // Rename first so a topic created again at once never sees the old files.
        let dir = topic_dir(&self.config.data_dir, name);
        let doomed = self
            .config
            .data_dir
            .join("topics")
            .join(format!(".{name}.{}.deleted", t.id));
        if std::fs::rename(&dir, &doomed).is_ok() {
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(doomed));
        }
        if let Some(g) = self.groups.get() {
            g.forget_topic(name).await;
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Raises a topic's partition count.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<TopicMeta> {
        if self.meta.snapshot().topic(name)?.internal {
            return Err(BrokerError::InvalidRequest(format!(
                "{name:?} is an internal topic"
            )));
        }
        let snap = self
            .meta
            .apply(MetadataCommand::CreatePartitions {
                name: name.to_string(),
                total,
            })
            .await?;
        let t = snap.topics[name].clone();
        let from = self.topic_handle(name)?.partitions.len() as u32;
        let handle = self.open_partitions(&t, from).await?;
        self.topics_write()
            .insert(name.to_string(), Arc::new(handle));
        Ok(t)
    }

    /// Sets and resets topic configuration entries.
    pub async fn alter_config(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        reset: &[String],
    ) -> Result<TopicMeta> {
        let mut config = self.meta.snapshot().topic(name)?.config.clone();
        let defaults = self.config.default_topic_config.to_map();
        for k in reset {
            let v = defaults
                .get(k)
                .ok_or_else(|| cascade_types::TopicConfigError::UnknownKey(k.clone()))?;
            config.set(k, v)?;
        }
        for (k, v) in set {
            config.set(k, v)?;
        }
        let snap = self
            .meta
            .apply(MetadataCommand::AlterConfig {
                name: name.to_string(),
                config: config.clone(),
            })
            .await?;
        for p in &self.topic_handle(name)?.partitions {
            p.reconfigure(&config).await?;
        }
        Ok(snap.topics[name].clone())
    }

    /// The node coordinating `group`: the leader of the group's `__consumer_offsets`
    /// partition.
    pub fn coordinator_for(&self, group: &str) -> Result<cascade_proto::LeaderHint> {
        cascade_types::validate_group_id(group).map_err(BrokerError::InvalidGroupId)?;
        let snap = self.meta.snapshot();
        let t = snap.topic(OFFSETS_TOPIC)?;
        let p = cascade_types::partition_for_key(group.as_bytes(), t.partitions.len() as u32);
        let a = &t.partitions[p as usize];
        snap.brokers
            .get(&a.leader)
            .map(|b| cascade_proto::LeaderHint {
                node_id: b.node_id,
                grpc_addr: b.grpc_addr.clone(),
            })
            .ok_or(BrokerError::LeaderNotAvailable {
                topic: OFFSETS_TOPIC.into(),
                partition: p,
            })
    }

    /// The current metadata.
    pub fn cluster(&self) -> Arc<ClusterMetadata> {
        self.meta.snapshot()
    }

    /// First step of stopping: ends subscriptions and long polls (they return what they have)
    /// and stops housekeeping, so the listeners can drain quickly. Produce still works.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops housekeeping and closes every partition cleanly (clean-shutdown markers written).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let handles: Vec<Arc<TopicHandle>> = self.topics_read().values().cloned().collect();
        for h in handles {
            for p in &h.partitions {
                if let Err(e) = p.close().await {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "closing partition");
                }
            }
        }
        tracing::info!("all partitions closed");
    }
}
