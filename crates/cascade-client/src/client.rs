//! [`Client`]: a cluster-aware connection to the public API, its routing and its retries.
//! The calls themselves are in the submodules: `admin`, `records`, `groups` (and the REST-style
//! consumer instances in [`crate::instances`]).
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

use crate::error::{ClientError, Result, Retry};
use crate::metadata::{BrokerInfo, ClusterMetadata, Route};
use crate::retry::{Backoff, DEFAULT_RETRY_BUDGET, next_delay};
use cascade_proto::LeaderHint;
use cascade_proto::v1::{
    self as pb, admin_client::AdminClient, groups_client::GroupsClient,
    records_client::RecordsClient,
};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

mod admin;
mod groups;
mod records;

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
    /// Broker addresses reached at another address (see [`Client::with_address_overrides`]).
    overrides: Arc<HashMap<String, String>>,
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
            overrides: Arc::default(),
        }
    }

    /// This client, reaching the brokers named in `overrides` (their advertised `host:port`)
    /// at the address each maps to instead, as `curl --resolve` does: for a client outside the
    /// network whose names the brokers advertise (Kubernetes' `pod.headless.ns.svc`, a
    /// Compose service name), through an address it can reach (a port-forward, a container
    /// IP). Other addresses are used as they are. The clone shares connections and metadata
    /// with `self`.
    pub fn with_address_overrides(mut self, overrides: HashMap<String, String>) -> Self {
        self.overrides = Arc::new(overrides);
        self
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
        let addr = self.overrides.get(addr).map_or(addr, String::as_str);
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
}
