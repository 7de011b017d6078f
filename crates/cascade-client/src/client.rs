//! [`Client`]: a cluster-aware connection and every unary call of the public API.
//!
//! The client starts from seed addresses (`host:port,...`), learns the cluster from
//! `Admin.DescribeCluster` (a metadata cache, refreshed on demand and after retriable errors,
//! one refresh in flight at a time) and keeps one lazily connected HTTP/2 channel per broker
//! address, shared by every call, producer and consumer built on it.
//!
//! Routing: requests for a partition (produce, fetch, subscribe, list offsets) go to its
//! leader ([`Client::records_for`]); group and consumer-instance calls go to the group's
//! coordinator ([`Client::groups_for`], found with `Groups.FindCoordinator`); admin calls go to
//! any broker. A cluster of one node is reached through the connection the client made,
//! whatever address the node advertises, so a single node behaves as it always did.
//!
//! Retries: a call that fails with a retriable reason (`NOT_LEADER`, `LEADER_NOT_AVAILABLE`,
//! `NOT_COORDINATOR`, `SHUTTING_DOWN`, `NOT_ENOUGH_REPLICAS`, or a transport failure) is sent
//! again, to the node the server's hint names or, without a hint, after a metadata refresh,
//! with bounded exponential backoff (25 ms doubling to 400 ms) until the client's retry budget
//! ([`Client::with_retry_budget`], 15 s by default) is spent; then it fails with
//! [`ClientError::RetriesExhausted`] naming the target and the last reason. Refusals are
//! always safe to resend (the node did nothing). A transport failure is ambiguous (the node
//! may have carried the request out before the connection broke): calls that are safe to
//! repeat (reads, heartbeats, commits, configuration changes, and produce, which accepts
//! at-least-once delivery: a retried write can be stored twice) are resent; the others
//! (topic create/delete, instance create/delete/poll) fail at once. When no broker at all
//! answers a metadata refresh after a transport failure, the call fails at once rather than
//! waiting out the budget: the cluster is down, not moving.

use crate::error::{ClientError, Result, Retry, partition_error};
use crate::metadata::{BrokerInfo, ClusterMetadata, Route};
use crate::retry::{Backoff, DEFAULT_RETRY_BUDGET, next_delay};
use bytes::Bytes;
use cascade_proto::LeaderHint;
use cascade_proto::v1::{
    self as pb, admin_client::AdminClient, groups_client::GroupsClient,
    records_client::RecordsClient,
};
use futures::Stream;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Largest message the client accepts from the server.
pub(crate) const MAX_MESSAGE: usize = 256 << 20;

/// An unknown topic triggers a metadata refresh at most this often (a client producing to a
/// topic that does not exist should not turn every call into two).
const MIN_ON_DEMAND_REFRESH: Duration = Duration::from_millis(100);

/// A connection to a Cascade cluster. Cheap to clone; clones share connections and metadata.
///
/// Partition requests go to the partition's leader, group requests to the group's
/// coordinator, admin requests to any broker. Retriable failures (`NOT_LEADER`,
/// `LEADER_NOT_AVAILABLE`, `NOT_COORDINATOR`, `SHUTTING_DOWN`, `NOT_ENOUGH_REPLICAS`, a node
/// down) are retried with backoff from 25 ms doubling to 400 ms, following the server's leader
/// hint or fresh metadata, within the retry budget ([`Client::with_retry_budget`], 15 s),
/// then reported as [`ClientError::RetriesExhausted`]. Refusals are always safe to resend; a
/// transport failure may hide a request that was carried out, so it is resent only for calls
/// that are safe to repeat, and for produce, which is therefore at-least-once (a batch may be
/// stored twice). If no broker answers at all, calls fail at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    budget: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("brokers", &self.inner.brokers)
            .field("retry_budget", &self.budget)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// The broker list as given.
    brokers: String,
    /// The addresses of `brokers`.
    seeds: Vec<String>,
    /// The first connection: to the seed that answered (`connect`) or to any seed
    /// (`connect_lazy`). Used until metadata says better, and for calls any node answers.
    bootstrap: Channel,
    /// One channel per broker address, connected on first use.
    channels: Mutex<HashMap<String, Channel>>,
    meta: RwLock<MetaState>,
    /// Held while a metadata refresh is in flight: at most one at a time.
    refresh: tokio::sync::Mutex<()>,
    /// Group coordinators learned from FindCoordinator or hints.
    coordinators: Mutex<HashMap<String, LeaderHint>>,
    /// The newest leader epoch seen per partition in fetch answers. Never goes back, even
    /// when a metadata refresh answered by a lagging broker does: fetches carry it so a
    /// replaced leader that has not heard yet cannot serve a log shorter than what was read.
    leader_epochs: Mutex<HashMap<(String, u32), i32>>,
}

#[derive(Default)]
struct MetaState {
    /// Bumped by every change, so a caller can tell whether the cache moved since it looked.
    version: u64,
    snapshot: Option<Arc<ClusterMetadata>>,
    refreshed_at: Option<Instant>,
}

/// What a request is for, which decides where it goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A partition's leader.
    Partition(&'a str, u32),
    /// A group's coordinator.
    Group(&'a str),
    /// Any broker.
    Any,
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Partition(t, p) => write!(f, "{t}/{p}"),
            Self::Group(g) => write!(f, "group {g}"),
            Self::Any => f.write_str("cluster"),
        }
    }
}

/// Whether a transport failure may be retried (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Repeating the request does no harm (or, for produce, at-least-once is accepted).
    Repeatable,
    /// Repeating it could do the thing twice or fail confusingly: retry refusals only.
    Once,
}
use Idempotence::{Once, Repeatable};

/// How long to wait for acknowledgement of a produce.
pub use cascade_proto::v1::Acks;

/// Result of producing to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// The partition written.
    pub partition: u32,
    /// First offset assigned.
    pub base_offset: u64,
    /// Last offset assigned.
    pub last_offset: u64,
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri)
        .map(|e| {
            // Large flow-control windows: fetches and batches are often far above HTTP/2's
            // default 64 KiB, which would cost a round trip per window.
            // Frequent HTTP/2 pings: a broker that hangs (SIGSTOP, a VM pause) or is cut off
            // by the network fails its connection within about three seconds, so requests in
            // flight to it error out and are retried at the new leader instead of waiting
            // for the OS to give up on the TCP connection.
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(32 << 20)
                .max_frame_size(1 << 20)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| ClientError::InvalidArgument(format!("bad broker address {addr:?}: {e}")))
}

fn seeds_of(brokers: &str) -> Vec<String> {
    brokers
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

fn admin_on(ch: Channel) -> AdminClient<Channel> {
    AdminClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

fn records_on(ch: Channel) -> RecordsClient<Channel> {
    RecordsClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

fn groups_on(ch: Channel) -> GroupsClient<Channel> {
    GroupsClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

/// The first retriable refusal in a produce answer, when every partition was refused so:
/// then nothing was written and the whole request can be sent again. A partly refused answer
/// is returned as it is (resending it would write the accepted partitions twice).
fn all_refused(topic: &str, resp: &pb::ProduceResponse) -> Result<()> {
    let mut first = None;
    for r in &resp.results {
        match partition_error(topic, r.partition, r.error.as_ref()) {
            Err(e) if e.retry() == Retry::Refused => {
                first.get_or_insert(e);
            }
            _ => return Ok(()),
        }
    }
    first.map_or(Ok(()), Err)
}

impl Client {
    fn new(brokers: &str, seeds: Vec<String>, bootstrap: Channel) -> Self {
        Self {
            inner: Arc::new(Inner {
                brokers: brokers.to_string(),
                seeds,
                bootstrap,
                channels: Mutex::new(HashMap::new()),
                meta: RwLock::new(MetaState::default()),
                refresh: tokio::sync::Mutex::new(()),
                coordinators: Mutex::new(HashMap::new()),
                leader_epochs: Mutex::new(HashMap::new()),
            }),
            budget: DEFAULT_RETRY_BUDGET,
        }
    }

    /// Connects to the first reachable broker of a comma-separated list (`host:port,...`).
    /// The others are used when it fails; the rest of the cluster is learned from it.
    pub async fn connect(brokers: &str) -> Result<Self> {
        let seeds = seeds_of(brokers);
        let mut last = String::from("no broker address given");
        for addr in &seeds {
            match endpoint(addr)?.connect().await {
                Ok(channel) => return Ok(Self::new(brokers, seeds.clone(), channel)),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(ClientError::Connect {
            brokers: brokers.to_string(),
            reason: last,
        })
    }

    /// A client that connects on first use instead of now, and reconnects after a failure:
    /// for servers that must start before their brokers answer (a node's own REST API, a
    /// gateway started next to its brokers). While no broker can be reached, calls fail
    /// fast with [`ClientError::Server`] (`UNAVAILABLE`).
    ///
    /// With several addresses (`host:port,...`), calls that any node can answer are spread
    /// over the reachable ones; partition and group calls go to their leader or coordinator.
    pub fn connect_lazy(brokers: &str) -> Result<Self> {
        let seeds = seeds_of(brokers);
        let endpoints = seeds
            .iter()
            .map(|a| endpoint(a))
            .collect::<Result<Vec<_>>>()?;
        let channel = match endpoints.len() {
            0 => {
                return Err(ClientError::InvalidArgument(
                    "no broker address given".into(),
                ));
            }
            1 => endpoints[0].connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(Self::new(brokers, seeds, channel))
    }

    /// This client with another retry budget: how long one call keeps retrying retriable
    /// failures (leader elections, coordinator moves, nodes restarting) before it fails with
    /// [`ClientError::RetriesExhausted`]. Zero disables retries. Default 15 s. The clone
    /// shares connections and metadata with `self`.
    pub fn with_retry_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// The retry budget of this client.
    pub fn retry_budget(&self) -> Duration {
        self.budget
    }

    /// The shared bootstrap connection.
    pub(crate) fn channel(&self) -> Channel {
        self.inner.bootstrap.clone()
    }

    /// The broker list this client was made with.
    pub fn brokers(&self) -> &str {
        &self.inner.brokers
    }

    /// The raw Admin client (any broker answers admin calls).
    pub fn admin(&self) -> AdminClient<Channel> {
        admin_on(self.channel())
    }

    /// The raw Records client for a partition's leader, as far as the cached metadata knows
    /// (the node reached first when it knows nothing). No retries: prefer the typed calls.
    pub fn records_for(&self, topic: &str, partition: u32) -> RecordsClient<Channel> {
        records_on(self.resolve(Target::Partition(topic, partition), 0).1)
    }

    /// The raw Groups client for a group's coordinator, as far as the cache knows (see
    /// [`Client::coordinator_of`] to look it up). No retries: prefer the typed calls.
    pub fn groups_for(&self, group: &str) -> GroupsClient<Channel> {
        groups_on(self.resolve(Target::Group(group), 0).1)
    }

    /// The channel for a group's coordinator as far as the cache knows.
    pub(crate) fn group_channel(&self, group: &str) -> Channel {
        self.resolve(Target::Group(group), 0).1
    }

    // ----- metadata -----

    /// The cached metadata, if any was fetched yet.
    pub fn metadata(&self) -> Option<Arc<ClusterMetadata>> {
        self.read_meta().1
    }

    /// Fetches fresh metadata from the cluster now (waiting for a refresh already in flight
    /// instead of starting a second one).
    pub async fn refresh_metadata(&self) -> Result<Arc<ClusterMetadata>> {
        let (version, _) = self.read_meta();
        self.refresh_since(version).await?;
        self.metadata()
            .ok_or_else(|| ClientError::Decode("no metadata after a refresh".into()))
    }

    /// The current leader of a partition: from the cache, refreshed when it does not know
    /// the topic. None while the partition has no leader (or does not exist).
    pub async fn leader_of(&self, topic: &str, partition: u32) -> Result<Option<BrokerInfo>> {
        let known = self
            .metadata()
            .is_some_and(|m| m.partition(topic, partition).is_some());
        let m = match self.metadata() {
            Some(m) if known => m,
            _ => self.refresh_metadata().await?,
        };
        Ok(m.leader(topic, partition).cloned())
    }

    /// The coordinator of a group, asked of the cluster now (any node answers).
    pub async fn coordinator_of(&self, group: &str) -> Result<LeaderHint> {
        let req = pb::FindCoordinatorRequest {
            group_id: group.into(),
        };
        let c = self
            .call(Target::Any, Repeatable, |ch| {
                let req = req.clone();
                async move { Ok(groups_on(ch).find_coordinator(req).await?.into_inner()) }
            })
            .await?;
        let hint = LeaderHint {
            node_id: c.node_id,
            grpc_addr: c.grpc_addr,
        };
        self.lock_coordinators()
            .insert(group.to_string(), hint.clone());
        Ok(hint)
    }

    /// Asks FindCoordinator of the brokers we know, in turn, once each (no backoff: the
    /// call this serves retries). Not through [`Client::call`], which uses it.
    async fn find_coordinator(&self, group: &str) -> Result<LeaderHint> {
        let req = pb::FindCoordinatorRequest {
            group_id: group.into(),
        };
        let mut candidates = vec![self.channel()];
        if let Some(m) = self.metadata() {
            candidates.extend(m.alive_addrs().iter().map(|a| self.channel_to(a)));
        }
        let mut last = None;
        for ch in candidates {
            match groups_on(ch).find_coordinator(req.clone()).await {
                Ok(c) => {
                    let c = c.into_inner();
                    let hint = LeaderHint {
                        node_id: c.node_id,
                        grpc_addr: c.grpc_addr,
                    };
                    self.apply_hint(Target::Group(group), &hint);
                    return Ok(hint);
                }
                Err(s) => last = Some(ClientError::from(s)),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidArgument("no broker".into())))
    }

    fn read_meta(&self) -> (u64, Option<Arc<ClusterMetadata>>) {
        let m = self.inner.meta.read().unwrap_or_else(|e| e.into_inner());
        (m.version, m.snapshot.clone())
    }

    fn lock_coordinators(&self) -> std::sync::MutexGuard<'_, HashMap<String, LeaderHint>> {
        self.inner
            .coordinators
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The channel to `addr`, made (lazily connecting) on first use.
    fn channel_to(&self, addr: &str) -> Channel {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return c.clone();
        }
        match endpoint(addr) {
            Ok(e) => {
                let c = e.connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
            // An address we cannot even parse: the bootstrap node will redirect or refuse.
            Err(_) => self.channel(),
        }
    }

    /// Refreshes the metadata unless it changed since `seen` (someone else refreshed while
    /// we waited for the lock): one refresh serves every caller that failed meanwhile.
    async fn refresh_since(&self, seen: u64) -> Result<()> {
        let _one = self.inner.refresh.lock().await;
        let (version, snapshot) = self.read_meta();
        if version != seen {
            return Ok(());
        }
        // The bootstrap connection first, then every live broker we know, then the seeds.
        let mut candidates: Vec<Option<String>> = vec![None];
        let known = snapshot.map(|m| m.alive_addrs()).unwrap_or_default();
        for a in known.into_iter().chain(self.inner.seeds.iter().cloned()) {
            if !candidates.contains(&Some(a.clone())) {
                candidates.push(Some(a));
            }
        }
        let mut last = None;
        for c in candidates {
            let ch = match &c {
                None => self.channel(),
                Some(a) => self.channel_to(a),
            };
            match admin_on(ch)
                .describe_cluster(pb::DescribeClusterRequest {})
                .await
            {
                Ok(d) => {
                    let mut m = ClusterMetadata::from_description(&d.into_inner());
                    m.answered_by = c;
                    let mut state = self.inner.meta.write().unwrap_or_else(|e| e.into_inner());
                    state.version += 1;
                    state.snapshot = Some(Arc::new(m));
                    state.refreshed_at = Some(Instant::now());
                    return Ok(());
                }
                Err(s) => {
                    tracing::debug!(addr = ?c, error = %s, "metadata refresh failed");
                    last = Some(ClientError::from(s));
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            brokers: self.inner.brokers.clone(),
            reason: "no broker address".into(),
        }))
    }

    /// Where `target` goes now, from the cache: (node id if known, channel, cache version).
    /// `rotation` > 0 picks another broker for calls any node answers, after a failure.
    fn resolve(&self, target: Target<'_>, rotation: usize) -> (Option<u32>, Channel, u64) {
        let (version, snapshot) = self.read_meta();
        let route = match (&snapshot, target) {
            (None, Target::Any) if rotation > 0 && !self.inner.seeds.is_empty() => {
                let seeds = &self.inner.seeds;
                Route::Node(0, seeds[(rotation - 1) % seeds.len()].clone())
            }
            (None, _) => Route::Bootstrap,
            (Some(m), Target::Partition(t, p)) => m.route_partition(t, p),
            (Some(m), Target::Group(g)) => match self.lock_coordinators().get(g) {
                Some(h) => m.route_node(h),
                None => m.route_any(),
            },
            (Some(m), Target::Any) if rotation > 0 => {
                let mut addrs = m.alive_addrs();
                for s in &self.inner.seeds {
                    if !addrs.contains(s) {
                        addrs.push(s.clone());
                    }
                }
                match addrs.len() {
                    0 => Route::Bootstrap,
                    n => Route::Node(0, addrs[(rotation - 1) % n].clone()),
                }
            }
            (Some(m), Target::Any) => m.route_any(),
        };
        match route {
            Route::Node(id, addr) => (
                Some(id).filter(|&i| i != 0),
                self.channel_to(&addr),
                version,
            ),
            Route::Bootstrap => (None, self.channel(), version),
        }
    }

    /// Makes sure the cache can route `target`: metadata fetched once, an unknown topic
    /// looked up, a group's coordinator found (failures are left to the call itself).
    async fn prepare(&self, target: Target<'_>) {
        let (version, snapshot) = self.read_meta();
        let m = match snapshot {
            Some(m) => m,
            None => {
                let _ = self.refresh_since(version).await;
                match self.metadata() {
                    Some(m) => m,
                    None => return,
                }
            }
        };
        if m.single_node() {
            return;
        }
        match target {
            Target::Partition(t, _) if !m.topics.contains_key(t) => {
                let stale = {
                    let state = self.inner.meta.read().unwrap_or_else(|e| e.into_inner());
                    state
                        .refreshed_at
                        .is_none_or(|at| at.elapsed() >= MIN_ON_DEMAND_REFRESH)
                };
                if stale {
                    let (version, _) = self.read_meta();
                    let _ = self.refresh_since(version).await;
                }
            }
            Target::Group(g) if !self.lock_coordinators().contains_key(g) => {
                let _ = self.find_coordinator(g).await;
            }
            _ => {}
        }
    }

    /// Records a hint: the partition's leader or the group's coordinator is `hint` now.
    fn apply_hint(&self, target: Target<'_>, hint: &LeaderHint) {
        match target {
            Target::Partition(t, p) => {
                let mut state = self.inner.meta.write().unwrap_or_else(|e| e.into_inner());
                if let Some(snap) = state.snapshot.as_mut() {
                    Arc::make_mut(snap).apply_leader_hint(t, p, hint);
                    state.version += 1;
                }
            }
            Target::Group(g) => {
                self.lock_coordinators().insert(g.to_string(), hint.clone());
                let mut state = self.inner.meta.write().unwrap_or_else(|e| e.into_inner());
                if let Some(snap) = state.snapshot.as_mut() {
                    Arc::make_mut(snap).learn_broker(hint);
                }
            }
            Target::Any => {}
        }
    }

    /// Runs `op` against the node `target` routes to, retrying retriable failures (see the
    /// module docs) until the retry budget is spent.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        target: Target<'_>,
        idempotence: Idempotence,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.prepare(target).await;
        let start = Instant::now();
        let mut backoff = Backoff::default();
        let mut attempts = 0u32;
        let mut rotation = 0usize;
        let mut followed_hint = false;
        loop {
            let (node, channel, version) = self.resolve(target, rotation);
            attempts += 1;
            let err = match op(channel).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let class = err.retry();
            let retry = match class {
                Retry::No => false,
                Retry::Refused => true,
                Retry::Ambiguous => idempotence == Repeatable,
            };
            if !retry || self.budget.is_zero() {
                return Err(err);
            }
            // Follow a hint at once, once: two nodes pointing at each other (both stale) must
            // not spin without a pause.
            let hint = err
                .leader_hint()
                .filter(|h| node != Some(h.node_id) && !followed_hint)
                .filter(|_| self.metadata().is_some() || matches!(target, Target::Group(_)));
            followed_hint = hint.is_some();
            if let Some(h) = hint {
                self.apply_hint(target, h);
            } else if err.reason() != Some(pb::ErrorCode::NotEnoughReplicas) {
                // The leader is right but short of replicas: nothing to learn. Otherwise the
                // cache is wrong or stale.
                if let Target::Group(g) = target {
                    self.lock_coordinators().remove(g);
                }
                let refreshed = self.refresh_since(version).await;
                if class == Retry::Ambiguous {
                    if refreshed.is_err() {
                        // No broker answers at all: the cluster is down, not moving.
                        return Err(err);
                    }
                    rotation += 1;
                }
                if let Target::Group(g) = target
                    && self.metadata().is_some_and(|m| !m.single_node())
                {
                    let _ = self.find_coordinator(g).await;
                }
            }
            match next_delay(&mut backoff, start.elapsed(), self.budget, followed_hint) {
                Some(d) => {
                    tracing::debug!(%target, attempts, error = %err, delay = ?d, "retrying");
                    if !d.is_zero() {
                        tokio::time::sleep(d).await;
                    }
                }
                None => {
                    return Err(ClientError::RetriesExhausted {
                        target: target.to_string(),
                        attempts,
                        elapsed: start.elapsed(),
                        last: Box::new(err),
                    });
                }
            }
        }
    }

    // ----- admin -----

    /// Creates a topic. Not resent after a transport failure (it may have been created).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<pb::TopicDescription> {
        let req = pb::CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor,
            configs: configs.into_iter().collect(),
            validate_only: false,
        };
        self.call(Target::Any, Once, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).create_topic(req).await?.into_inner()) }
        })
        .await
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = pb::DeleteTopicRequest { name: name.into() };
        self.call(Target::Any, Once, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).delete_topic(req).await.map(drop)?) }
        })
        .await
    }

    /// Lists topics.
    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<pb::TopicDescription>> {
        let req = pb::ListTopicsRequest { include_internal };
        self.call(Target::Any, Repeatable, |ch| async move {
            Ok(admin_on(ch).list_topics(req).await?.into_inner().topics)
        })
        .await
    }

    /// Describes a topic.
    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription> {
        let req = pb::DescribeTopicRequest { name: name.into() };
        self.call(Target::Any, Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).describe_topic(req).await?.into_inner()) }
        })
        .await
    }

    /// Raises a topic's partition count to `total`.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<pb::TopicDescription> {
        let req = pb::CreatePartitionsRequest {
            name: name.into(),
            total,
        };
        self.call(Target::Any, Once, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).create_partitions(req).await?.into_inner()) }
        })
        .await
    }

    /// Sets and resets topic settings.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        reset: Vec<String>,
    ) -> Result<pb::TopicDescription> {
        let req = pb::AlterTopicConfigRequest {
            name: name.into(),
            set: set.into_iter().collect(),
            reset,
        };
        self.call(Target::Any, Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(admin_on(ch).alter_topic_config(req).await?.into_inner()) }
        })
        .await
    }

    /// Nodes, controller and partition health.
    pub async fn describe_cluster(&self) -> Result<pb::ClusterDescription> {
        self.call(Target::Any, Repeatable, |ch| async move {
            Ok(admin_on(ch)
                .describe_cluster(pb::DescribeClusterRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Number of partitions of `topic`.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.describe_topic(topic).await?.partitions.len() as u32)
    }

    // ----- records -----

    /// Sends a produce request (several partitions, typed records, an idempotency key);
    /// per-partition errors that retries did not cure are left in the answer.
    ///
    /// When all its partitions have one leader (always on a single node) the request goes
    /// there as it is. Otherwise it is split per partition, each part sent to its leader
    /// (concurrently) and the answers merged; entries with partition -1 are then placed by
    /// the client with the broker's rule (murmur2 of the key, one partition per request for
    /// unkeyed records), and an idempotency key `K` becomes `K/<partition>` per part.
    /// A part that fails other than per partition (e.g. its leader stayed unreachable) fails
    /// the whole call, although other parts may have been written.
    pub async fn produce(&self, req: pb::ProduceRequest) -> Result<pb::ProduceResponse> {
        let topic = req.topic.clone();
        self.prepare(Target::Partition(&topic, 0)).await;
        let first = req
            .partitions
            .iter()
            .find(|p| p.partition >= 0)
            .map_or(0, |p| p.partition as u32);
        let split = self.metadata().is_some_and(|m| needs_split(&m, &req));
        if !split {
            return self
                .call(Target::Partition(&topic, first), Repeatable, |ch| {
                    let req = req.clone();
                    let topic = &topic;
                    async move {
                        let resp = records_on(ch).produce(req).await?.into_inner();
                        all_refused(topic, &resp)?;
                        Ok(resp)
                    }
                })
                .await;
        }
        let count = self
            .metadata()
            .and_then(|m| m.partition_count(&topic))
            .unwrap_or(1)
            .max(1);
        let parts = split_by_partition(req, count);
        let sends = parts.into_iter().map(|(p, sub)| {
            let topic = &topic;
            async move {
                let r = self
                    .call(Target::Partition(topic, p), Repeatable, |ch| {
                        let sub = sub.clone();
                        async move {
                            let resp = records_on(ch).produce(sub).await?.into_inner();
                            all_refused(topic, &resp)?;
                            Ok(resp)
                        }
                    })
                    .await;
                (p, r)
            }
        });
        let mut results = Vec::new();
        for (p, r) in futures::future::join_all(sends).await {
            match r {
                Ok(resp) => results.extend(resp.results),
                Err(e) => match e.reason() {
                    // Refused per partition until the budget ran out: nothing was written.
                    Some(code) if is_partition_failure(&e) => {
                        results.push(pb::PartitionProduceResult {
                            partition: p,
                            error: Some(pb::Error {
                                code: code as i32,
                                message: e.to_string(),
                            }),
                            ..Default::default()
                        });
                    }
                    _ => return Err(e),
                },
            }
        }
        Ok(pb::ProduceResponse { results })
    }

    /// Appends encoded batches to one partition (at its leader, with retries: see the module
    /// docs on at-least-once).
    pub async fn produce_batches(
        &self,
        topic: &str,
        partition: u32,
        batches: Bytes,
        acks: Acks,
    ) -> Result<Produced> {
        let req = pb::ProduceRequest {
            topic: topic.into(),
            partitions: vec![pb::PartitionRecords {
                partition: partition as i32,
                batches,
                records: vec![],
            }],
            acks: acks as i32,
            timeout_ms: 0,
            idempotency_key: String::new(),
        };
        self.call(Target::Partition(topic, partition), Repeatable, |ch| {
            let req = req.clone();
            async move { first_result(topic, records_on(ch).produce(req).await?.into_inner()) }
        })
        .await
    }

    /// Produces typed records; `partition` None lets the broker choose (key hash or sticky).
    pub async fn produce_records(
        &self,
        topic: &str,
        partition: Option<u32>,
        records: Vec<pb::Record>,
        acks: Acks,
    ) -> Result<Vec<Produced>> {
        let resp = self
            .produce(pb::ProduceRequest {
                topic: topic.into(),
                partitions: vec![pb::PartitionRecords {
                    partition: partition.map_or(-1, |p| p as i32),
                    batches: Bytes::new(),
                    records,
                }],
                acks: acks as i32,
                timeout_ms: 0,
                idempotency_key: String::new(),
            })
            .await?;
        resp.results
            .iter()
            .map(|r| {
                partition_error(topic, r.partition, r.error.as_ref())?;
                Ok(Produced {
                    partition: r.partition,
                    base_offset: r.base_offset,
                    last_offset: r.last_offset,
                })
            })
            .collect()
    }

    /// The newest leader epoch known for a partition: from fetch answers and the cached
    /// metadata, whichever is newer.
    pub(crate) fn known_leader_epoch(&self, topic: &str, partition: u32) -> Option<i32> {
        let seen = self
            .inner
            .leader_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .copied();
        let cached = self
            .metadata()
            .and_then(|m| m.partition(topic, partition).map(|p| p.leader_epoch));
        seen.max(cached)
    }

    /// Notes the leader epoch a fetch answer came from.
    pub(crate) fn saw_leader_epoch(&self, topic: &str, partition: u32, epoch: i32) {
        let mut m = self
            .inner
            .leader_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let e = m.entry((topic.to_string(), partition)).or_insert(epoch);
        *e = (*e).max(epoch);
    }

    /// Reads one partition from `offset` at its leader, waiting up to `max_wait` for data.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<pb::FetchedPartition> {
        let req = pb::FetchRequest {
            partitions: vec![pb::FetchPartition {
                topic: topic.into(),
                partition,
                position: Some(pb::fetch_partition::Position::Offset(offset)),
                max_bytes,
                current_leader_epoch: None,
            }],
            max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            min_bytes: 1,
            max_bytes,
        };
        self.call(Target::Partition(topic, partition), Repeatable, |ch| {
            let mut req = req.clone();
            // Per attempt: a retry after a refresh knows the newer epoch.
            req.partitions[0].current_leader_epoch = self.known_leader_epoch(topic, partition);
            async move {
                let mut resp = records_on(ch).fetch(req).await?.into_inner();
                let p = resp.partitions.pop().ok_or_else(|| {
                    ClientError::Decode("fetch response without partitions".into())
                })?;
                partition_error(topic, partition, p.error.as_ref())?;
                self.saw_leader_epoch(topic, partition, p.leader_epoch);
                Ok(p)
            }
        })
        .await
    }

    /// Sends a fetch of several partitions, all led by the node the first one routes to
    /// (see [`Client::route_key`]), once, without retries: the caller (a group consumer)
    /// handles per-partition and node failures by refreshing and fetching again.
    pub(crate) async fn fetch_once(
        &self,
        route_of: (&str, u32),
        req: pb::FetchRequest,
    ) -> Result<pb::FetchResponse> {
        let ch = self.resolve(Target::Partition(route_of.0, route_of.1), 0).1;
        Ok(records_on(ch).fetch(req).await?.into_inner())
    }

    /// Which node a partition's requests go to now, as a key that is equal for partitions
    /// with the same leader (None: the bootstrap connection).
    pub(crate) fn route_key(&self, topic: &str, partition: u32) -> Option<String> {
        match self.metadata()?.route_partition(topic, partition) {
            Route::Node(_, addr) => Some(addr),
            Route::Bootstrap => None,
        }
    }

    /// Makes sure metadata exists and knows `topic` (a refresh when needed).
    pub(crate) async fn ensure_topic(&self, topic: &str) {
        self.prepare(Target::Partition(topic, 0)).await;
    }

    /// Refreshes the metadata after a failure seen with the cache as it is now; an error
    /// means no broker answered.
    pub(crate) async fn invalidate(&self) -> Result<()> {
        let (version, _) = self.read_meta();
        self.refresh_since(version).await
    }

    /// Earliest, latest, or by-timestamp offsets of the given partitions (all when empty),
    /// each asked of its leader.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<pb::PartitionOffset>> {
        self.prepare(Target::Partition(topic, 0)).await;
        let ask = |partitions: Vec<u32>| {
            let req = pb::ListOffsetsRequest {
                topic: topic.into(),
                partitions: partitions.clone(),
                spec: spec as i32,
                timestamp_ms,
            };
            let first = partitions.first().copied().unwrap_or(0);
            async move {
                self.call(Target::Partition(topic, first), Repeatable, |ch| {
                    let req = req.clone();
                    async move { Ok(records_on(ch).list_offsets(req).await?.into_inner().offsets) }
                })
                .await
            }
        };
        let meta = self.metadata();
        let wanted: Vec<u32> = match (&meta, partitions.is_empty()) {
            (Some(m), true) => (0..m.partition_count(topic).unwrap_or(0)).collect(),
            _ => partitions.clone(),
        };
        let one_leader = match &meta {
            Some(m) => {
                let mut routes = wanted.iter().map(|&p| m.route_partition(topic, p));
                let first = routes.next();
                routes.all(|r| Some(r) == first)
            }
            None => true,
        };
        if one_leader {
            return ask(partitions).await;
        }
        let mut out = Vec::new();
        for r in futures::future::join_all(wanted.into_iter().map(|p| ask(vec![p]))).await {
            out.extend(r?);
        }
        out.sort_by_key(|o| o.partition);
        Ok(out)
    }

    /// Follows a partition live from a position, at its leader. The stream ends when the
    /// leader changes or its node goes away; [`Client::follow`] reconnects by itself.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        position: pb::subscribe_request::Position,
    ) -> Result<tonic::Streaming<pb::FetchedPartition>> {
        let req = pb::SubscribeRequest {
            topic: topic.into(),
            partition,
            position: Some(position),
            max_bytes: 0,
        };
        self.call(Target::Partition(topic, partition), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(records_on(ch).subscribe(req).await?.into_inner()) }
        })
        .await
    }

    /// Like [`Client::subscribe`], but the stream survives leader changes and node failures:
    /// it reconnects to the partition's (new) leader from the offset after the last message
    /// (from the original position when none arrived yet), within the retry budget per
    /// reconnection. Ends with an error that retries did not cure.
    pub fn follow(
        &self,
        topic: &str,
        partition: u32,
        position: pb::subscribe_request::Position,
    ) -> impl Stream<Item = Result<pb::FetchedPartition>> + Send + 'static {
        struct State {
            client: Client,
            topic: String,
            partition: u32,
            position: pb::subscribe_request::Position,
            upstream: Option<tonic::Streaming<pb::FetchedPartition>>,
            done: bool,
            /// Pause between reconnections, reset by every message: a stream that keeps
            /// breaking at once must not spin.
            backoff: Backoff,
        }
        let state = State {
            client: self.clone(),
            topic: topic.to_string(),
            partition,
            position,
            upstream: None,
            done: false,
            backoff: Backoff::default(),
        };
        futures::stream::unfold(state, |mut s| async move {
            use futures::StreamExt;
            loop {
                if s.done {
                    return None;
                }
                let Some(up) = s.upstream.as_mut() else {
                    match s.client.subscribe(&s.topic, s.partition, s.position).await {
                        Ok(up) => {
                            s.upstream = Some(up);
                            continue;
                        }
                        Err(e) => {
                            s.done = true;
                            return Some((Err(e), s));
                        }
                    }
                };
                let failure = match up.next().await {
                    Some(Ok(msg)) => {
                        match partition_error(&s.topic, s.partition, msg.error.as_ref()) {
                            Ok(()) => {
                                s.position =
                                    pb::subscribe_request::Position::Offset(msg.next_offset);
                                return Some((Ok(msg), s));
                            }
                            Err(e) => e,
                        }
                    }
                    Some(Err(status)) => ClientError::from(status),
                    // The node closed the stream (shutting down, leadership moved).
                    None => ClientError::Server {
                        code: tonic::Code::Unavailable,
                        reason: None,
                        message: "subscription closed by the broker".into(),
                        leader: None,
                    },
                };
                s.upstream = None;
                if failure.retry() == Retry::No {
                    s.done = true;
                    return Some((Err(failure), s));
                }
                tracing::debug!(topic = %s.topic, partition = s.partition, error = %failure,
                    "subscription interrupted: reconnecting");
                if failure.leader_hint().is_none()
                    && s.client.invalidate().await.is_err()
                    && failure.retry() == Retry::Ambiguous
                {
                    // No broker answers at all: the cluster is down, not moving.
                    s.done = true;
                    return Some((Err(failure), s));
                }
                let pause = s.backoff.next().unwrap_or_default();
                tokio::time::sleep(crate::retry::jitter(pause)).await;
            }
        })
    }

    // ----- groups -----

    /// Lists consumer groups.
    pub async fn list_groups(&self) -> Result<Vec<pb::GroupSummary>> {
        self.call(Target::Any, Repeatable, |ch| async move {
            Ok(groups_on(ch)
                .list_groups(pb::ListGroupsRequest {})
                .await?
                .into_inner()
                .groups)
        })
        .await
    }

    /// Describes a group: members, assignments, lag.
    pub async fn describe_group(&self, group: &str) -> Result<pb::GroupDescription> {
        let req = pb::DescribeGroupRequest {
            group_id: group.into(),
        };
        self.call(Target::Group(group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).describe_group(req).await?.into_inner()) }
        })
        .await
    }

    /// Committed offsets of a group (all when `partitions` is empty).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Vec<pb::TopicPartitions>,
    ) -> Result<Vec<pb::CommittedOffset>> {
        let req = pb::FetchOffsetsRequest {
            group_id: group.into(),
            partitions,
        };
        self.call(Target::Group(group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).fetch_offsets(req).await?.into_inner().offsets) }
        })
        .await
    }

    /// Commits offsets (member id empty and epoch -1 for a group without members).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: Vec<pb::OffsetCommit>,
    ) -> Result<()> {
        let req = pb::CommitOffsetsRequest {
            group_id: group.into(),
            member_id: member_id.into(),
            member_epoch,
            offsets,
        };
        // Repeatable: committing the same offsets twice is committing them once.
        self.call(Target::Group(group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).commit_offsets(req).await.map(drop)?) }
        })
        .await
    }

    /// Resets a memberless group's offsets.
    pub async fn reset_offsets(
        &self,
        req: pb::ResetOffsetsRequest,
    ) -> Result<Vec<pb::CommittedOffset>> {
        let group = req.group_id.clone();
        self.call(Target::Group(&group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).reset_offsets(req).await?.into_inner().offsets) }
        })
        .await
    }

    /// Deletes a memberless group and its offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let req = pb::DeleteGroupRequest {
            group_id: group.into(),
        };
        self.call(Target::Group(group), Once, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).delete_group(req).await.map(drop)?) }
        })
        .await
    }

    /// One group heartbeat (join with empty id and epoch 0, leave with epoch -1), at the
    /// group's coordinator. A join resent after a transport failure may leave a member the
    /// coordinator then evicts after its session timeout.
    pub async fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        let group = req.group_id.clone();
        self.call(Target::Group(&group), Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(groups_on(ch).heartbeat(req).await?.into_inner()) }
        })
        .await
    }
}

fn first_result(topic: &str, resp: pb::ProduceResponse) -> Result<Produced> {
    let r = resp
        .results
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Decode("produce response without results".into()))?;
    partition_error(topic, r.partition, r.error.as_ref())?;
    Ok(Produced {
        partition: r.partition,
        base_offset: r.base_offset,
        last_offset: r.last_offset,
    })
}

/// True for a failure of one partition's part (refused, possibly after retries): nothing of
/// it was written.
fn is_partition_failure(e: &ClientError) -> bool {
    match e {
        ClientError::Partition { .. } => true,
        ClientError::RetriesExhausted { last, .. } => is_partition_failure(last),
        _ => false,
    }
}

/// Whether a produce request spans more than one leader (then it is split per partition).
fn needs_split(m: &ClusterMetadata, req: &pb::ProduceRequest) -> bool {
    if m.single_node() {
        return false;
    }
    let count = m.partition_count(&req.topic).unwrap_or(0);
    let mut routes = Vec::new();
    for p in &req.partitions {
        if p.partition >= 0 {
            routes.push(m.route_partition(&req.topic, p.partition as u32));
        } else {
            // Placed by the broker: anywhere in the topic.
            routes.extend((0..count).map(|q| m.route_partition(&req.topic, q)));
        }
    }
    routes.windows(2).any(|w| w[0] != w[1])
}

/// Splits a produce request into one request per partition, placing records of entries
/// with partition -1 as the broker would (murmur2 of the key; one partition for the
/// request's unkeyed records). Keeps the order of entries within a partition.
pub(crate) fn split_by_partition(
    req: pb::ProduceRequest,
    partitions: u32,
) -> Vec<(u32, pb::ProduceRequest)> {
    let sticky = match req.idempotency_key.as_str() {
        "" => rand::random::<u32>() % partitions,
        k => cascade_types::partition_for_key(k.as_bytes(), partitions),
    };
    let mut by_partition: BTreeMap<u32, Vec<pb::PartitionRecords>> = BTreeMap::new();
    let mut order = Vec::new();
    let mut put = |p: u32, e: pb::PartitionRecords| {
        if !by_partition.contains_key(&p) {
            order.push(p);
        }
        by_partition.entry(p).or_default().push(e);
    };
    for e in req.partitions {
        if e.partition >= 0 {
            put(e.partition as u32, e);
            continue;
        }
        // Only typed records may have partition -1; batches with -1 go to partition 0's
        // leader, which refuses them as the broker always did.
        if e.records.is_empty() {
            put(0, e);
            continue;
        }
        let mut placed: BTreeMap<u32, Vec<pb::Record>> = BTreeMap::new();
        for r in e.records {
            let p = match &r.key {
                Some(k) => cascade_types::partition_for_key(k, partitions),
                None => sticky,
            };
            placed.entry(p).or_default().push(r);
        }
        for (p, records) in placed {
            put(
                p,
                pb::PartitionRecords {
                    partition: p as i32,
                    batches: Bytes::new(),
                    records,
                },
            );
        }
    }
    order
        .into_iter()
        .map(|p| {
            let sub = pb::ProduceRequest {
                topic: req.topic.clone(),
                partitions: by_partition.remove(&p).unwrap_or_default(),
                acks: req.acks,
                timeout_ms: req.timeout_ms,
                idempotency_key: if req.idempotency_key.is_empty() {
                    String::new()
                } else {
                    format!("{}/{p}", req.idempotency_key)
                },
            };
            (p, sub)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: Option<&'static str>) -> pb::Record {
        pb::Record {
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        }
    }

    fn entry(partition: i32, records: Vec<pb::Record>) -> pb::PartitionRecords {
        pb::PartitionRecords {
            partition,
            batches: Bytes::new(),
            records,
        }
    }

    #[test]
    fn split_places_records_like_the_broker() {
        let req = pb::ProduceRequest {
            topic: "t".into(),
            partitions: vec![
                entry(2, vec![rec(None)]),
                entry(-1, vec![rec(Some("alice")), rec(None), rec(Some("bob"))]),
                entry(2, vec![rec(Some("x"))]),
            ],
            acks: Acks::All as i32,
            timeout_ms: 7,
            idempotency_key: "k".into(),
        };
        let parts = split_by_partition(req, 4);
        let alice = cascade_types::partition_for_key(b"alice", 4);
        let bob = cascade_types::partition_for_key(b"bob", 4);
        let sticky = cascade_types::partition_for_key(b"k", 4);
        // Partition 2 first (first seen), with its two entries in order.
        assert_eq!(parts[0].0, 2);
        let p2 = &parts[0].1;
        let n2 = if alice == 2 || bob == 2 || sticky == 2 {
            3
        } else {
            2
        };
        assert!(p2.partitions.len() >= 2 && p2.partitions.len() <= n2);
        assert_eq!(p2.partitions[0].records[0].key, None);
        assert_eq!(
            p2.partitions.last().unwrap().records[0].key.as_deref(),
            Some(&b"x"[..])
        );
        for (p, sub) in &parts {
            assert_eq!(sub.idempotency_key, format!("k/{p}"));
            assert_eq!((sub.timeout_ms, sub.topic.as_str()), (7, "t"));
            assert!(sub.partitions.iter().all(|e| e.partition == *p as i32));
        }
        let placed = |key: Option<&[u8]>| {
            parts
                .iter()
                .find(|(_, sub)| {
                    sub.partitions.iter().any(|e| {
                        e.records
                            .iter()
                            .any(|r| r.key.as_deref() == key && key.is_some())
                    })
                })
                .map(|(p, _)| *p)
        };
        assert_eq!(placed(Some(b"alice")), Some(alice));
        assert_eq!(placed(Some(b"bob")), Some(bob));
        let total: usize = parts
            .iter()
            .flat_map(|(_, s)| &s.partitions)
            .map(|e| e.records.len())
            .sum();
        assert_eq!(total, 5, "no record lost or duplicated");
    }

    #[test]
    fn produce_is_resent_only_when_every_partition_was_refused() {
        let refused = |p: u32| pb::PartitionProduceResult {
            partition: p,
            error: Some(pb::Error {
                code: pb::ErrorCode::NotLeader as i32,
                message: "moved".into(),
            }),
            ..Default::default()
        };
        let ok = |p: u32| pb::PartitionProduceResult {
            partition: p,
            ..Default::default()
        };
        let all = pb::ProduceResponse {
            results: vec![refused(0), refused(1)],
        };
        assert_eq!(all_refused("t", &all).unwrap_err().retry(), Retry::Refused);
        let mixed = pb::ProduceResponse {
            results: vec![refused(0), ok(1)],
        };
        assert!(
            all_refused("t", &mixed).is_ok(),
            "partition 1 would be written twice"
        );
        assert!(all_refused("t", &pb::ProduceResponse::default()).is_ok());
    }

    #[test]
    fn needs_split_only_across_leaders() {
        let desc = |leaders: &[u32]| {
            ClusterMetadata::from_description(&pb::ClusterDescription {
                brokers: (1..=2)
                    .map(|n| pb::BrokerDescription {
                        node_id: n,
                        grpc_addr: format!("10.0.0.{n}:1"),
                        http_addr: String::new(),
                        alive: true,
                    })
                    .collect(),
                topics: vec![pb::TopicDescription {
                    name: "t".into(),
                    partitions: leaders
                        .iter()
                        .enumerate()
                        .map(|(i, l)| pb::PartitionDescription {
                            partition: i as u32,
                            leader: *l,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
        };
        let req = |parts: &[i32]| pb::ProduceRequest {
            topic: "t".into(),
            partitions: parts.iter().map(|p| entry(*p, vec![rec(None)])).collect(),
            ..Default::default()
        };
        let m = desc(&[1, 2, 1]);
        assert!(!needs_split(&m, &req(&[0, 2])), "both on node 1");
        assert!(needs_split(&m, &req(&[0, 1])));
        assert!(
            needs_split(&m, &req(&[-1])),
            "the broker could pick either node"
        );
        assert!(!needs_split(&desc(&[1, 1]), &req(&[-1])));
    }
}
