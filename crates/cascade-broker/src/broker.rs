//! [`Broker`]: one node's topics, partitions and groups, and the admin operations on them.
//!
//! The broker owns the partition actors ([`Partition`]) of every topic it hosts, reached through
//! a copy-on-write map of topic handles (a read lock held only to clone an `Arc`). Metadata
//! changes go through [`Metadata::apply`] first and are then carried out locally, so the map
//! always follows the metadata. Produce and fetch live in `produce.rs` and `fetch.rs`.

use crate::error::{BrokerError, Result};
use crate::group::{GroupCoordinator, OFFSETS_TOPIC};
pub use crate::metadata::BrokerInfo;
use crate::metadata::{ClusterMetadata, Metadata, MetadataCommand, TopicMeta};
use crate::partition::{Partition, Role};
use cascade_log::fs::FileSystem;
use cascade_types::TopicConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32};
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
    /// Members to contact when this node has no Raft state; empty: bootstrap a new cluster.
    pub seeds: Vec<String>,
    /// How often this broker heartbeats the controller.
    pub heartbeat_interval: Duration,
    /// A broker silent this long is fenced: its leaderships move, it leaves in-sync sets.
    pub session_timeout: Duration,
    /// A follower that has not caught up for this long leaves the in-sync set.
    pub replica_lag_max: Duration,
    /// Replication factor of `__consumer_offsets` (capped at the live brokers when created).
    pub offsets_replication_factor: u32,
    /// Where partition logs do their IO: the real file system, or an in-memory one whose
    /// `crash()` drops every write not yet fsynced (power-loss tests).
    pub log_fs: Arc<dyn cascade_log::fs::FileSystem>,
    /// Where the metadata Raft files (`meta/raft/`) do their IO. Apart from `log_fs` so a
    /// test can cut the power of both while failing only the partitions' disk.
    pub meta_fs: Arc<dyn cascade_log::fs::FileSystem>,
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
            seeds: Vec::new(),
            heartbeat_interval: Duration::from_millis(400),
            session_timeout: Duration::from_millis(2500),
            replica_lag_max: Duration::from_secs(5),
            offsets_replication_factor: 3,
            log_fs: Arc::new(cascade_log::fs::StdFs),
            meta_fs: Arc::new(cascade_log::fs::StdFs),
        }
    }
}

/// The running partitions of one topic.
#[derive(Debug)]
pub struct TopicHandle {
    /// The topic id these partitions belong to.
    pub id: String,
    /// This node's replicas, by partition index.
    pub partitions: BTreeMap<u32, Arc<Partition>>,
    /// The settings they run with.
    pub config: TopicConfig,
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
    /// Last heartbeat per broker, kept by the controller.
    pub(crate) liveness: crate::controller::Liveness,
    /// Running follower fetchers by partition.
    pub(crate) fetchers: crate::replication::Fetchers,
    /// One reconciliation at a time.
    pub(crate) reconcile_lock: tokio::sync::Mutex<()>,
    /// Replicas this node holds but could not open (damage a lone replica cannot repair, a
    /// failing disk), with why: they are offline, the rest of the node serves on. Retried on
    /// every reconciliation.
    pub(crate) offline: std::sync::Mutex<HashMap<(String, u32), String>>,
    /// The last reconciliation left a replica without its role (see `reconcile`): housekeeping
    /// runs another.
    pub(crate) reconcile_incomplete: AtomicBool,
    /// When each replica last failed to take its role. It stays reported offline for
    /// [`crate::reconcile::ROLE_FAILURE_HOLD`] after that even if an easier role succeeds
    /// meanwhile: otherwise it would be re-elected (and fail) at every controller pass.
    pub(crate) role_failures: std::sync::Mutex<HashMap<(String, u32), std::time::Instant>>,
    /// Replicas whose storage failed, with the durable offset they are cut back to when
    /// reopened (see `Broker::cut_unsynced`).
    unsynced: std::sync::Mutex<HashMap<(String, u32), u64>>,
    ready: tokio::sync::watch::Sender<bool>,
    /// Set during a graceful shutdown: the controller moves leadership away.
    pub(crate) leaving: AtomicBool,
    /// This process's incarnation (random, never 0), registered with the cluster: a new one
    /// is a restart (see [`MetadataCommand::RegisterBroker`]).
    incarnation: u64,
    /// The previous run of this data directory ended with a clean shutdown (every log closed).
    clean_start: bool,
    /// The data directory had no metadata: this is the node's first start.
    fresh: bool,
}

/// Name of the broker's clean-shutdown marker in the data directory: written once every log
/// was closed, taken (removed durably) when the node opens.
pub const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads and removes the broker's clean-shutdown marker, durably, before anything else runs:
/// a crash later in this run must not find it again.
fn take_clean_marker(fs: &dyn FileSystem, data: &Path) -> Result<bool> {
    let io = |what: &str, e: std::io::Error| {
        BrokerError::Metadata(format!("{what} {}: {e}", data.display()))
    };
    fs.create_dir_all_durable(data)
        .map_err(|e| io("creating", e))?;
    let path = data.join(CLEAN_SHUTDOWN_MARKER);
    if !fs.exists(&path) {
        return Ok(false);
    }
    fs.remove_file(&path)
        .map_err(|e| io("removing the clean-shutdown marker in", e))?;
    fs.sync_dir(data).map_err(|e| io("fsync", e))?;
    Ok(true)
}

/// Writes the broker's clean-shutdown marker durably (every log is closed by then).
fn write_clean_marker(fs: &dyn FileSystem, data: &Path) -> std::io::Result<()> {
    let f = fs.open(&data.join(CLEAN_SHUTDOWN_MARKER), true)?;
    f.sync_data()?;
    fs.sync_dir(data)
}

fn topic_dir(data: &Path, topic: &str) -> PathBuf {
    data.join("topics").join(topic)
}

impl Broker {
    /// Opens the node's metadata Raft storage. The node joins or forms a cluster and opens its
    /// partitions in [`Broker::start`], which needs the internal gRPC services to be serving
    /// already (peers call them while this node joins).
    pub async fn open(config: BrokerConfig) -> Result<Arc<Self>> {
        let fresh = !config.data_dir.join("meta").exists();
        let clean_start = take_clean_marker(&*config.log_fs, &config.data_dir)?;
        let meta = Arc::new(
            Metadata::open(
                config.meta_fs.clone(),
                &config.data_dir.join("meta"),
                config.node_id,
            )
            .await?,
        );
        let (ready, _) = tokio::sync::watch::channel(false);
        Ok(Arc::new(Self {
            groups: OnceLock::new(),
            consumers: Default::default(),
            sticky: AtomicU32::new(rand::random()),
            shutdown: CancellationToken::new(),
            topics: RwLock::new(HashMap::new()),
            liveness: Default::default(),
            fetchers: Default::default(),
            reconcile_lock: tokio::sync::Mutex::new(()),
            offline: Default::default(),
            reconcile_incomplete: AtomicBool::new(false),
            role_failures: Default::default(),
            unsynced: Default::default(),
            ready,
            leaving: AtomicBool::new(false),
            incarnation: rand::random::<u64>().max(1),
            clean_start,
            fresh,
            meta,
            config,
        }))
    }

    /// Opens a node and starts it (see [`Broker::start`]); for nodes that need no peers to
    /// reach them while starting (a single node, tests).
    pub async fn open_and_start(config: BrokerConfig) -> Result<Arc<Self>> {
        let b = Self::open(config).await?;
        b.start().await?;
        Ok(b)
    }

    /// Forms a new cluster with this node as its only voter; refused when the data directory
    /// holds partition data (see below).
    async fn bootstrap_cluster(&self) -> Result<()> {
        let me = self.config.node_id;
        // Partition data with no metadata: this node belonged to a cluster and lost (or had
        // moved aside) its journal. A new cluster here would know none of those topics, and
        // the start-up cleanup would delete their data as a deleted topic's.
        let topics = self.config.data_dir.join("topics");
        let held: Vec<String> = std::fs::read_dir(&topics)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        if !held.is_empty() {
            return Err(BrokerError::Metadata(format!(
                "refusing to bootstrap a new cluster: {} holds the data of {} topic(s) ({}…) \
                 but there is no metadata journal (meta/raft is missing or was moved \
                 aside); a new cluster would delete that data. Start this node with \
                 --seeds naming the other members to rejoin its cluster, or restore \
                 meta/ from a backup (docs/operations.md, \"A damaged metadata journal\")",
                topics.display(),
                held.len(),
                held.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        tracing::info!(node = me, "no Raft state: bootstrapping a new cluster");
        self.meta.bootstrap(&self.config.advertised_grpc_addr).await
    }

    /// Joins the cluster (with no Raft state: bootstrapping a new one without seeds, else
    /// joining or forming the seeds' cluster, see `crate::formation`), registers this broker, opens its partitions in the roles the metadata gives
    /// them, and starts the background loops: reconciler, controller duties, heartbeats,
    /// housekeeping.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        let me = self.config.node_id;
        if !self.meta.is_member().await? {
            if self.config.seeds.is_empty() {
                self.bootstrap_cluster().await?;
            } else {
                let seeds = self.config.seeds.clone();
                crate::formation::join_or_form(self, &seeds, || self.bootstrap_cluster()).await?;
            }
        } else if self
            .meta
            .member_addr(me)
            .is_some_and(|a| a != self.config.advertised_grpc_addr)
            && self.meta.voters() != [me]
        {
            // Back with a new address: peers must learn it before they can reach this node.
            let mut contacts = self.config.seeds.clone();
            for id in self.meta.voters() {
                if id != me
                    && let Some(a) = self.meta.member_addr(id)
                {
                    contacts.push(a);
                }
            }
            tracing::info!(old = ?self.meta.member_addr(me), new = %self.config.advertised_grpc_addr, "this node's address changed: telling the cluster");
            crate::controller::join(self, &contacts).await?;
        }
        let node = BrokerInfo {
            node_id: me,
            grpc_addr: self.config.advertised_grpc_addr.clone(),
            http_addr: self.config.advertised_http_addr.clone(),
            fenced: false,
            incarnation: self.incarnation,
            epoch: 0,
            clean_start: self.clean_start,
        };
        // A node restarting while most of its cluster is down waits here until a majority is
        // back (in a full restart every node waits for the others), so nodes must be started
        // independently of each other's readiness.
        let mut attempts = 0u32;
        loop {
            let r = self
                .meta
                .apply(MetadataCommand::RegisterBroker(node.clone()))
                .await;
            match r {
                Ok(snap) => {
                    let epoch = snap.brokers.get(&me).map_or(0, |b| b.epoch);
                    tracing::info!(
                        node = me,
                        broker_epoch = epoch,
                        incarnation = format_args!("{:016x}", self.incarnation),
                        previous_shutdown = match (self.fresh, self.clean_start) {
                            (true, _) => "none (first start)",
                            (false, true) => "clean",
                            (false, false) => "unclean",
                        },
                        "registered with the cluster"
                    );
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    if attempts % 10 == 1 {
                        tracing::warn!(error = %e, "registering with the controller (is a majority of the cluster up?): retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        if self.meta.is_controller()
            && self
                .meta
                .member_addr(me)
                .is_some_and(|a| a != self.config.advertised_grpc_addr)
        {
            // The only voter, back on a new address: record it itself.
            let node = openraft::BasicNode {
                addr: self.config.advertised_grpc_addr.clone(),
            };
            let nodes = [(u64::from(me), node)].into_iter().collect();
            let change = self
                .meta
                .raft()
                .change_membership(openraft::ChangeMembers::SetNodes(nodes), true);
            self.meta.raft_call(change).await?.map_err(|e| {
                BrokerError::Metadata(format!("recording this node's new address: {e}"))
            })?;
        }
        if self.meta.snapshot().cluster_id.is_empty() {
            self.meta
                .apply(MetadataCommand::InitCluster {
                    cluster_id: uuid::Uuid::new_v4().simple().to_string()[..22].to_string(),
                })
                .await?;
        }
        let offsets_count = self
            .meta
            .snapshot()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as u32)
            .unwrap_or(self.config.offsets_partitions.max(1));
        let _ = self
            .groups
            .set(GroupCoordinator::new(self.meta.clone(), offsets_count));
        self.cleanup_deleted_dirs();
        // Subscribed before the first pass: a change that pass makes itself (a damaged replica
        // leaving the in-sync set) must wake the loop, or the replica would wait for some
        // unrelated change to get its role.
        let changes = self.meta.subscribe();
        self.reconcile().await?;
        crate::reconcile::spawn(self.clone(), changes);
        crate::controller::spawn(self.clone());
        crate::housekeeping::spawn(self.clone());
        self.spawn_scrub();
        self.ready.send_replace(true);
        tracing::info!(node = me, "broker started");
        Ok(())
    }

    /// True once [`Broker::start`] finished.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Removes directories of topics the metadata no longer has (left by a crash during delete
    /// or by a delete while this node was down).
    fn cleanup_deleted_dirs(&self) {
        let snap = self.meta.snapshot();
        let topics_root = self.config.data_dir.join("topics");
        let fs = self.config.log_fs.as_ref();
        let _ = fs.create_dir_all_durable(&topics_root);
        if let Ok(entries) = fs.read_dir(&topics_root) {
            for path in entries {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                if !snap.topics.contains_key(&name) {
                    tracing::warn!(dir = %path.display(), "removing data of a deleted topic");
                    let _ = fs.remove_dir_all(&path);
                }
            }
        }
    }

    /// Opens one partition replica (blocking work on the blocking pool).
    pub(crate) async fn open_partition(&self, t: &TopicMeta, p: u32) -> Result<Arc<Partition>> {
        let part = self.open_partition_files(t, p).await?;
        self.cut_unsynced(&part, t, p).await?;
        Ok(part)
    }

    /// Opens the replica's files (on the blocking pool).
    async fn open_partition_files(&self, t: &TopicMeta, p: u32) -> Result<Arc<Partition>> {
        let dir = topic_dir(&self.config.data_dir, &t.name).join(p.to_string());
        let name: Arc<str> = Arc::from(t.name.as_str());
        let id: Arc<str> = Arc::from(t.id.as_str());
        let config = t.config.clone();
        let node = self.config.node_id;
        let repairable = t.replication_factor > 1;
        let fs = self.config.log_fs.clone();
        // The topic id marks whose data a directory holds, so a re-created topic never adopts
        // an old one's files.
        let idfile = topic_dir(&self.config.data_dir, &t.name).join("topic-id");
        let want = t.id.clone();
        tokio::task::spawn_blocking(move || -> Result<Arc<Partition>> {
            // Whose data the directory holds. A damaged id file is refused (the replica is
            // offline, naming the file) rather than read as another topic's: that reading
            // deleted the directory.
            let have = crate::state_file::read(fs.as_ref(), &idfile)
                .map_err(|e| BrokerError::Metadata(format!("read {}: {e}", idfile.display())))?
                .body_if(|b| std::str::from_utf8(b).is_ok_and(|s| {
                    let s = s.trim();
                    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                }))
                .map_err(|why| BrokerError::Metadata(format!("{} is damaged: {why}", idfile.display())))?
                .map(|b| String::from_utf8_lossy(&b).trim().to_string());
            match have {
                Some(have) if have == want => {}
                Some(_) => {
                    let parent = idfile.parent().expect("has parent");
                    tracing::warn!(dir = %parent.display(), "removing data of an older topic of the same name");
                    let _ = fs.remove_dir_all(parent);
                    fs.create_dir_all_durable(parent).map_err(|e| BrokerError::Metadata(format!("create {}: {e}", parent.display())))?;
                    crate::state_file::write(fs.as_ref(), &idfile, want.as_bytes())?;
                }
                None => {
                    let parent = idfile.parent().expect("has parent");
                    fs.create_dir_all_durable(parent).map_err(|e| BrokerError::Metadata(format!("create {}: {e}", parent.display())))?;
                    crate::state_file::write(fs.as_ref(), &idfile, want.as_bytes())?;
                }
            }
            Ok::<_, BrokerError>(Arc::new(Partition::open(
                fs, name, id, p, node, &dir, &config, repairable,
            )?))
        })
        .await
        .map_err(|e| BrokerError::Metadata(format!("opening a partition panicked: {e}")))?
    }

    /// Notes that `part`'s storage failed: everything above its durable offset (the end of
    /// its last successful fsync) is suspect. In memory and in `<partition>.unsynced` beside
    /// its directory (for a restart before the replica is reopened).
    pub(crate) fn note_unsynced(&self, part: &Partition) {
        let durable = part.reader().durable_offset();
        let key = (part.topic.to_string(), part.index);
        self.unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, durable);
        let dir = topic_dir(&self.config.data_dir, &part.topic).join(part.index.to_string());
        let marker = crate::epochs::sibling(&dir, "unsynced");
        let fs = self.config.log_fs.as_ref();
        if let Err(e) = crate::state_file::write(fs, &marker, durable.to_string().as_bytes()) {
            tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "could not record the replica's durable offset (kept in memory)");
        }
    }

    /// True if a live broker other than this one holds an in-sync replica of the partition.
    fn another_live_in_sync_copy(&self, topic: &str, partition: u32) -> bool {
        let snap = self.meta.snapshot();
        let me = self.config.node_id;
        snap.assignment(topic, partition).is_some_and(|a| {
            a.isr
                .iter()
                .any(|&r| r != me && snap.brokers.get(&r).is_some_and(|b| !b.fenced))
        })
    }

    /// After a failed fsync the page cache may hold events the disk never got, and a reopen
    /// reads them as if they were durable (Linux keeps serving pages whose writeback failed).
    /// Cuts a replica noted by [`Broker::note_unsynced`] back to its last durable offset
    /// before it takes any role: the events above were never acknowledged by it under
    /// `flush=always`, and it fetches them again from the leader (it left the in-sync set
    /// when its storage failed).
    async fn cut_unsynced(&self, part: &Partition, t: &TopicMeta, p: u32) -> Result<()> {
        let key = (t.name.clone(), p);
        let dir = topic_dir(&self.config.data_dir, &t.name).join(p.to_string());
        let marker = crate::epochs::sibling(&dir, "unsynced");
        let remembered = self
            .unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let durable = remembered.or_else(|| {
            match crate::state_file::read(self.config.log_fs.as_ref(), &marker)
                .map_err(|e| e.to_string())
                .and_then(|c| c.body_if(crate::state_file::is_number))
            {
                Ok(b) => b
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.trim().parse().ok()),
                // Where the last good fsync ended is unknown: nothing past the log start can
                // be trusted, so a replica with another live in-sync copy refetches
                // everything. The last copy keeps its data (nothing could replace it) and
                // says so.
                Err(why) if self.another_live_in_sync_copy(&t.name, p) => {
                    tracing::error!(file = %marker.display(), %why, "damaged durable-offset record: refetching the whole replica");
                    Some(part.reader().start_offset())
                }
                Err(why) => {
                    tracing::error!(file = %marker.display(), %why, "damaged durable-offset record on the last in-sync copy: keeping its data");
                    None
                }
            }
        });
        let Some(durable) = durable else {
            return Ok(());
        };
        let end = part.reader().end_offset();
        if end > durable {
            tracing::warn!(topic = %t.name, partition = p, durable, end, "cutting what a failed fsync may never have written to disk; it is fetched again from the leader");
            part.truncate(durable, None).await?;
        }
        let fs = self.config.log_fs.as_ref();
        match fs.remove_file(&marker) {
            Ok(()) => {
                let parent = marker.parent().unwrap_or(Path::new("."));
                fs.sync_dir(parent).map_err(|e| {
                    BrokerError::Metadata(format!("fsync {}: {e}", parent.display()))
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BrokerError::Metadata(format!(
                    "remove {}: {e}",
                    marker.display()
                )));
            }
        }
        self.unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        Ok(())
    }

    pub(crate) fn topics_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<TopicHandle>>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn topics_write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<TopicHandle>>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The running partitions of `topic`.
    pub fn topic_handle(&self, topic: &str) -> Result<Arc<TopicHandle>> {
        self.topics_read()
            .get(topic)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))
    }

    /// This node's replica of a partition, whatever its role (replication, admin).
    pub fn local_partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let snap = self.meta.snapshot();
        let t = snap.topic(topic)?;
        if partition as usize >= t.partitions.len() {
            return Err(BrokerError::UnknownPartition {
                topic: topic.to_string(),
                partition: partition.into(),
                count: t.partitions.len() as u32,
            });
        }
        self.topic_handle(topic)
            .ok()
            .filter(|h| h.id == t.id)
            .and_then(|h| h.partitions.get(&partition).cloned())
            .ok_or_else(|| match self.offline_reason(topic, partition) {
                // An offline replica that does not lead (its leadership moved away when its
                // storage failed) sends clients to the leader, so they move on.
                Some(_)
                    if snap
                        .assignment(topic, partition)
                        .is_some_and(|a| a.leader != self.config.node_id && a.leader != 0) =>
                {
                    self.not_leader_error(&snap, topic, partition)
                }
                Some(reason) => BrokerError::ReplicaOffline {
                    node: self.config.node_id,
                    topic: topic.to_string(),
                    partition,
                    reason,
                },
                None => self.not_leader_error(&snap, topic, partition),
            })
    }

    /// This node's replicas that cannot serve (offline, or damaged and not yet cut), as its
    /// heartbeats report them.
    pub(crate) fn replica_problems(&self) -> Vec<cascade_proto::internal::ReplicaProblem> {
        let mut out: Vec<cascade_proto::internal::ReplicaProblem> = self
            .offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(
                |((topic, partition), reason)| cascade_proto::internal::ReplicaProblem {
                    topic: topic.clone(),
                    partition: *partition,
                    state: "offline".into(),
                    reason: reason.clone(),
                },
            )
            .collect();
        for (name, h) in self.topics_read().iter() {
            for (&i, p) in &h.partitions {
                if let Some(at) = p.damaged_at_open() {
                    out.push(cascade_proto::internal::ReplicaProblem {
                        topic: name.clone(),
                        partition: i,
                        state: crate::controller::REPAIRING.into(),
                        reason: format!("damaged log: valid up to offset {at}"),
                    });
                } else if let Some(reason) = p.disk_full() {
                    out.push(cascade_proto::internal::ReplicaProblem {
                        topic: name.clone(),
                        partition: i,
                        state: crate::controller::DISK_FULL.into(),
                        reason,
                    });
                }
            }
        }
        out
    }

    /// Why this node's replica of `topic`/`partition` is offline, if it is.
    pub(crate) fn offline_reason(&self, topic: &str, partition: u32) -> Option<String> {
        self.offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Notes whether a replica could be opened (logging each change, and counting offline
    /// replicas in `cascade_partitions_offline`).
    pub(crate) fn set_offline(&self, topic: &str, partition: u32, reason: Option<String>) {
        let mut offline = self.offline.lock().unwrap_or_else(|e| e.into_inner());
        let key = (topic.to_string(), partition);
        match reason {
            Some(r) => {
                if offline.get(&key) != Some(&r) {
                    tracing::error!(topic, partition, reason = %r, "replica offline (it could not be opened, or take its role); the rest of the node serves on");
                }
                offline.insert(key, r);
            }
            None => {
                if offline.remove(&key).is_some() {
                    tracing::info!(topic, partition, "replica opened: online again");
                }
            }
        }
        metrics::gauge!("cascade_partitions_offline").set(offline.len() as f64);
    }

    /// The partition if this node leads it; otherwise `NotLeader` naming the leader, or
    /// `LeaderNotAvailable`. The gate of every produce and consumer fetch.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let p = self.local_partition(topic, partition)?;
        match p.role() {
            Role::Leader { .. } => Ok(p),
            _ => Err(self.not_leader_error(&self.meta.snapshot(), topic, partition)),
        }
    }

    pub(crate) fn not_leader_error(
        &self,
        snap: &ClusterMetadata,
        topic: &str,
        partition: u32,
    ) -> BrokerError {
        let leader = snap
            .assignment(topic, partition)
            .map(|a| a.leader)
            .unwrap_or(0);
        match snap.brokers.get(&leader) {
            Some(b) if leader != self.config.node_id => BrokerError::NotLeader {
                node: self.config.node_id,
                topic: topic.to_string(),
                partition,
                leader: Some(cascade_proto::LeaderHint {
                    node_id: leader,
                    grpc_addr: b.grpc_addr.clone(),
                }),
            },
            _ => BrokerError::LeaderNotAvailable {
                topic: topic.to_string(),
                partition,
            },
        }
    }

    /// The partition count of a topic (from the metadata).
    pub fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.meta.snapshot().topic(topic)?.partitions.len() as u32)
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

    /// This process's incarnation (random per start, never 0).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Cancelled when the broker stops; long-running streams end on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Creates a topic (or only validates, with `validate_only`).
    pub async fn create_topic(
        self: &Arc<Self>,
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
        if replication_factor >= 3 && !configs.contains_key("min.insync.replicas") {
            // An acks=all write must survive the loss of any one replica by default.
            config.min_insync_replicas = config.min_insync_replicas.max(2);
        }
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
        self.reconcile().await?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(t)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<()> {
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
        self.reconcile().await?;
        if let Some(g) = self.groups.get() {
            g.forget_topic(name).await;
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Raises a topic's partition count.
    pub async fn create_partitions(self: &Arc<Self>, name: &str, total: u32) -> Result<TopicMeta> {
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
        self.reconcile().await?;
        Ok(t)
    }

    /// Sets and resets topic configuration entries.
    pub async fn alter_config(
        self: &Arc<Self>,
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
        self.reconcile().await?;
        Ok(snap.topics[name].clone())
    }

    /// Creates `__consumer_offsets` if it does not exist yet, with
    /// `offsets_replication_factor` replicas (capped at the live brokers). Created on first
    /// use, as Kafka does, so a cluster started one node at a time gets it replicated.
    pub async fn ensure_offsets_topic(self: &Arc<Self>) -> Result<()> {
        let snap = self.meta.snapshot();
        if snap.topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let rf = self
            .config
            .offsets_replication_factor
            .clamp(1, snap.live_brokers().len().max(1) as u32);
        let r = self
            .meta
            .apply(MetadataCommand::CreateTopic {
                name: OFFSETS_TOPIC.into(),
                id: uuid::Uuid::new_v4().to_string(),
                partitions: self.groups().offsets_partitions(),
                replication_factor: rf,
                config: TopicConfig {
                    retention_ms: -1,
                    segment_bytes: 64 << 20,
                    min_insync_replicas: rf.min(2),
                    ..TopicConfig::default()
                },
                internal: true,
                created_ms: now_ms(),
            })
            .await;
        match r {
            Ok(_) | Err(BrokerError::TopicExists(_)) => {}
            Err(BrokerError::Remote {
                code: cascade_proto::v1::ErrorCode::TopicAlreadyExists,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(replication_factor = rf, "created {OFFSETS_TOPIC}");
        self.reconcile().await
    }

    /// The node coordinating `group`: the leader of the group's `__consumer_offsets`
    /// partition (the topic is created on first use).
    pub async fn coordinator_for(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<cascade_proto::LeaderHint> {
        cascade_types::validate_group_id(group).map_err(BrokerError::InvalidGroupId)?;
        self.ensure_offsets_topic().await?;
        let snap = self.meta.snapshot();
        let p = self.groups().partition_of(group);
        let leader = snap
            .assignment(OFFSETS_TOPIC, p)
            .map(|a| a.leader)
            .unwrap_or(0);
        snap.brokers
            .get(&leader)
            .map(|b| cascade_proto::LeaderHint {
                node_id: b.node_id,
                grpc_addr: b.grpc_addr.clone(),
            })
            .ok_or(BrokerError::LeaderNotAvailable {
                topic: OFFSETS_TOPIC.into(),
                partition: p,
            })
    }

    /// Ok if this node coordinates `group` now; otherwise `NotCoordinator` naming the node
    /// that does (or `LeaderNotAvailable` during an election).
    pub async fn own_group(self: &Arc<Self>, group: &str) -> Result<()> {
        let c = self.coordinator_for(group).await?;
        if c.node_id == self.config.node_id {
            // Leader by the metadata; wait briefly for the reconciler to load the partition.
            for _ in 0..50 {
                if self.groups().owns(group) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Err(BrokerError::LeaderNotAvailable {
                topic: OFFSETS_TOPIC.into(),
                partition: self.groups().partition_of(group),
            });
        }
        Err(BrokerError::NotCoordinator {
            node: self.config.node_id,
            group: group.to_string(),
            coordinator: Some(c),
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

    /// Moves this node's partition leaderships to other in-sync replicas (through the
    /// controller) and waits until it leads nothing or `timeout` passes, so a rolling restart
    /// costs clients a retry, not an outage.
    pub async fn hand_off_leadership(self: &Arc<Self>, timeout: Duration) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let led = self.leaderships(&self.meta.snapshot());
            if led == 0 || tokio::time::Instant::now() >= deadline {
                if led > 0 {
                    tracing::warn!(
                        partitions = led,
                        "still leading partitions at shutdown (no other in-sync replica)"
                    );
                }
                return;
            }
            let _ = crate::controller::send_heartbeat(self).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Partitions `node` leads (from this node's metadata).
    pub(crate) fn leaderships_of(&self, node: u32) -> u32 {
        self.meta
            .snapshot()
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|a| a.leader == node)
            .count() as u32
    }

    /// Partitions this node leads that another in-sync replica could take over.
    pub(crate) fn leaderships(&self, snap: &ClusterMetadata) -> u32 {
        let me = self.config.node_id;
        snap.topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|a| a.leader == me && a.isr.iter().any(|&r| r != me))
            .count() as u32
    }

    /// Stops housekeeping and closes every partition cleanly (clean-shutdown markers written).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let handles: Vec<Arc<TopicHandle>> = self.topics_read().values().cloned().collect();
        let mut clean = true;
        for h in handles {
            for p in h.partitions.values() {
                if let Err(e) = p.close().await {
                    clean = false;
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "closing partition");
                }
            }
        }
        tracing::info!("all partitions closed");
        if clean && let Err(e) = write_clean_marker(&*self.config.log_fs, &self.config.data_dir) {
            tracing::warn!(error = %e, "writing the clean-shutdown marker (the next start counts as unclean)");
        }
        if let Err(e) = self.meta.shutdown().await {
            tracing::warn!(error = %e, "stopping the metadata Raft node");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_log::fs::MemFs;

    /// The marker says "clean" once, and only when it reached the disk: taking it is durable,
    /// so a crash after a start that saw it does not see it again.
    #[test]
    fn the_clean_shutdown_marker_is_durable_and_taken_once() {
        let fs = MemFs::new();
        let data = Path::new("/data");
        assert!(!take_clean_marker(&fs, data).unwrap(), "a fresh directory");
        write_clean_marker(&fs, data).unwrap();
        fs.crash();
        assert!(take_clean_marker(&fs, data).unwrap(), "written durably");
        fs.crash();
        assert!(
            !take_clean_marker(&fs, data).unwrap(),
            "taken durably: the crash after the start must not find it again"
        );
    }
}
