//! Cluster metadata: brokers, topics, partition assignments, leaders and epochs.
//!
//! Changes are [`MetadataCommand`]s applied by the pure [`ClusterMetadata::apply`], which
//! validates against the current state and is deterministic: the same commands in the same order
//! give the same state. They are the entries of the metadata Raft group (`crate::raft`): the
//! controller (Raft leader) proposes them, every node applies them in log order. The request
//! paths only call [`Metadata::apply`] (which forwards to the controller when this node is not
//! it), [`Metadata::snapshot`] and [`Metadata::subscribe`].
//!
//! Readers get immutable snapshots (`Arc<ClusterMetadata>`) from a watch channel: no lock on
//! the request path.

use crate::error::{BrokerError, Result};
use crate::raft::{ApplyResponse, LogStore, MetaRaft, PROPOSE_TIMEOUT, StateMachine, raft_config};
use crate::read_coalescer::ReadCoalescer;
use cascade_proto::internal::controller_client::ControllerClient;
use cascade_proto::internal::{ProposeRequest, ReadVersionRequest};
use cascade_types::{TopicConfig, validate_topic_name};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

/// One broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BrokerInfo {
    /// Its node id.
    pub node_id: u32,
    /// Where clients reach its gRPC API.
    pub grpc_addr: String,
    /// Where its HTTP listener is, if any.
    pub http_addr: String,
    /// Fenced by the controller: it missed its heartbeats, so it leads nothing and is in no
    /// in-sync set until it is back.
    #[serde(default)]
    pub fenced: bool,
    /// The running process: a random id chosen at every start (0 when not known, as in the
    /// registration a join makes before the node registers itself). A registration with an
    /// incarnation other than the recorded one is a restart (see
    /// [`MetadataCommand::RegisterBroker`]).
    #[serde(default)]
    pub incarnation: u64,
    /// The broker epoch (Kafka's): bumped by every registration of a new incarnation.
    #[serde(default)]
    pub epoch: u64,
    /// Whether this incarnation's previous shutdown was clean: every log closed, so every
    /// event it had was on disk. Only read when the incarnation registers.
    #[serde(default)]
    pub clean_start: bool,
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
    /// Bumped on every change of leader or in-sync set: changes proposed against an older
    /// value are stale and refused (compare-and-set).
    #[serde(default)]
    pub partition_epoch: i32,
    /// The leader epoch an operator's unclean election started (see
    /// [`MetadataCommand::ElectUncleanLeader`]), while that leader holds it: the replica leads
    /// with its log as it is, even one cut for damage, because the operator accepted the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclean_leader_epoch: Option<i32>,
    /// Eligible leader replicas (KIP-966): replicas outside the in-sync set that still hold
    /// every acknowledged event. A replica joins when it leaves an in-sync set that shrinks
    /// below `min.insync.replicas`: from then on nothing more is acknowledged with
    /// `acks=all` and the leader's high watermark stands still while this set is not empty
    /// (see `ReplState::compute_hw`), so what it held at that moment is all that was
    /// promised.
    /// When no in-sync replica can lead, the controller elects one of these instead of
    /// leaving the partition to an in-sync replica that may have lost events. A member
    /// leaves when it rejoins the in-sync set, restarts after an unclean shutdown or reports
    /// damage; the set empties when the in-sync set is back at `min.insync.replicas` (new
    /// acknowledgements then need no copy on it). Never holds an in-sync replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elr: Vec<u32>,
}

impl PartitionAssignment {
    /// Replaces the in-sync set, keeping the eligible leader replicas true to their rule:
    /// replicas leaving an in-sync set that ends below `min_insync` join them unless
    /// `ineligible` (they may have lost events: damage, an unclean restart); members that
    /// are in sync again or `ineligible` leave; a set back at `min_insync` empties them.
    fn set_isr(&mut self, isr: Vec<u32>, min_insync: u32, ineligible: &[u32]) {
        let removed: Vec<u32> = self
            .isr
            .iter()
            .copied()
            .filter(|r| !isr.contains(r) && !ineligible.contains(r))
            .collect();
        if (isr.len() as u32) < min_insync {
            for r in removed {
                if !self.elr.contains(&r) {
                    self.elr.push(r);
                }
            }
            self.elr
                .retain(|r| !isr.contains(r) && !ineligible.contains(r));
            // Replica order, so every node lists (and the controller elects) the same way.
            let order = &self.replicas;
            self.elr
                .sort_by_key(|r| order.iter().position(|x| x == r).unwrap_or(usize::MAX));
        } else {
            self.elr.clear();
        }
        self.isr = isr;
    }

    /// How `node`, a replica of this partition that may have lost acknowledged events (an
    /// unclean restart, damage found), leaves the in-sync set: the (leader, in-sync set) to
    /// move to, or None when it stays. `live` says whether a broker is live.
    /// - Another live in-sync replica takes over (the current leader stays if it can).
    /// - Else a live eligible leader replica (it holds every acknowledged event).
    /// - Else, with other in-sync or eligible replicas that are all down, the partition waits
    ///   for them, leaderless, with them as its in-sync set (they hold every acknowledged
    ///   event; `node` may not), so the first to return leads; `node` leads again only once it
    ///   has caught up with one of them, or by an operator's unclean election.
    /// - Else `node` is the only copy anyone can vouch for: it stays.
    pub fn handover_from(&self, node: u32, live: impl Fn(u32) -> bool) -> Option<(u32, Vec<u32>)> {
        if !self.isr.contains(&node) {
            return None;
        }
        // In-sync replicas that are down stay in the set: the controller moves them out as
        // usual once another leads.
        let rest: Vec<u32> = self.isr.iter().copied().filter(|&r| r != node).collect();
        if let Some(&first) = rest.iter().find(|&&r| live(r)) {
            let leader = if self.leader == node || self.leader == 0 {
                first
            } else {
                self.leader
            };
            return Some((leader, rest));
        }
        let eligible: Vec<u32> = self.elr.iter().copied().filter(|&r| r != node).collect();
        if let Some(&leader) = eligible.iter().find(|&&r| live(r)) {
            let mut isr = rest;
            isr.insert(0, leader);
            return Some((leader, isr));
        }
        if rest.is_empty() && eligible.is_empty() {
            return None;
        }
        let mut isr = rest;
        isr.extend(eligible);
        Some((0, isr))
    }
}

/// One partition's new leader and in-sync set, proposed against the state it was computed
/// from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionUpdate {
    /// Topic.
    pub topic: String,
    /// Topic id, so an update never lands on a re-created topic.
    pub topic_id: String,
    /// Partition.
    pub partition: u32,
    /// The partition epoch the update was computed from.
    pub expected_partition_epoch: i32,
    /// New leader (0: none).
    pub leader: u32,
    /// New in-sync set.
    pub isr: Vec<u32>,
    /// Replicas leaving the in-sync set that may have lost acknowledged events (damage
    /// found, storage failing): they do not become eligible leader replicas, and leave that
    /// set if they are in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ineligible: Vec<u32>,
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
    /// Known brokers by id.
    pub brokers: BTreeMap<u32, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Idempotent producer ids issued so far, and their epochs.
    #[serde(default)]
    pub producers: ProducerIds,
}

/// The idempotent producer ids the cluster has issued. Issuing goes through the metadata Raft
/// log, so two producers never get the same id, and an epoch bump is decided once: the
/// instance that bumped holds the only current epoch, every older one is fenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProducerIds {
    /// The next id to issue: every id below it has been issued, none at or above.
    pub next_id: i64,
    /// The current epoch of each id re-initialised at least once; the others are at epoch 0.
    /// One small entry per re-initialised id (a restart that keeps its identity, or an
    /// epoch bump after a broken sequence), not per producer.
    pub epochs: BTreeMap<i64, i16>,
}

impl ProducerIds {
    /// The current epoch of `id`, or None if it was never issued.
    pub fn current_epoch(&self, id: i64) -> Option<i16> {
        (0..self.next_id)
            .contains(&id)
            .then(|| self.epochs.get(&id).copied().unwrap_or(0))
    }
}

/// What applying a command produced, beyond the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// For [`MetadataCommand::InitProducer`]: the id and epoch issued.
    pub producer: Option<(i64, i16)>,
}

/// A change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Names a new cluster; only the first one counts.
    InitCluster {
        /// The id.
        cluster_id: String,
    },
    /// Adds or updates a broker (a registering broker is unfenced). A registration with a new
    /// incarnation is a restart, and the broker comes back with a new broker epoch:
    /// - every partition it leads gets a new leader epoch, so nothing its old incarnation
    ///   wrote or was told can be taken for the new one's, and its followers check their
    ///   logs against it (truncation by epoch) before copying anything;
    /// - a replica that may have lost acknowledged events is not eligible to lead until it has
    ///   caught up: after an unclean shutdown (whatever the flush policy: a disk can lose
    ///   fsynced writes) it leaves the in-sync set and its leaderships move to a live in-sync
    ///   replica, else to a live eligible leader replica, else the partition waits for the
    ///   in-sync and eligible replicas that are down (KIP-966; see
    ///   [`PartitionAssignment::handover_from`]). Only when no other replica is in sync or
    ///   eligible does it stay: no other copy can hold more.
    RegisterBroker(BrokerInfo),
    /// Fences or unfences a broker (the controller's liveness verdict).
    SetFenced {
        /// The broker.
        node_id: u32,
        /// Fenced?
        fenced: bool,
    },
    /// Changes leaders and in-sync sets. Each update applies only if its expected partition
    /// epoch is current; stale ones are skipped.
    UpdatePartitions(Vec<PartitionUpdate>),
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
    /// Raises a topic's replication factor: every partition gets new replicas (live brokers
    /// holding the fewest replicas first, deterministically), which join the in-sync set once
    /// they have caught up. `min.insync.replicas` is left alone: raising it before the new
    /// replicas are in sync would refuse every `acks=all` write meanwhile (the controller
    /// raises it for the offsets topic once every in-sync set is large enough).
    RaiseReplicationFactor {
        /// Name.
        name: String,
        /// The topic's id, so a re-created topic is never changed by a stale proposal.
        topic_id: String,
        /// The new factor; larger than the current one.
        replication_factor: u32,
    },
    /// An operator's unclean leader election (`cascade topic elect-leader --unclean`): makes
    /// `leader`, a replica on a live broker, the partition's only in-sync replica and its
    /// leader at a new epoch, accepting that events only the lost in-sync replicas held are
    /// gone (Kafka's unclean election, here never automatic). For a partition none of whose
    /// in-sync replicas can serve (their brokers lost for good, or every copy damaged); the
    /// proposer checks that, this command checks the partition has not changed since.
    ElectUncleanLeader {
        /// Topic.
        topic: String,
        /// Topic id, so a re-created topic is never changed by a stale proposal.
        topic_id: String,
        /// Partition.
        partition: u32,
        /// The partition epoch the proposer checked.
        expected_partition_epoch: i32,
        /// The new leader.
        leader: u32,
    },
    /// Issues an idempotent producer id (`existing` None), or bumps the epoch of an issued
    /// one whose current epoch is `existing`'s (fencing older instances). An id whose epoch
    /// is exhausted gets a fresh id instead, as Kafka does.
    InitProducer {
        /// The id and epoch of the instance re-initialising, if any.
        existing: Option<(i64, i16)>,
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

    /// Brokers not fenced, by id.
    pub fn live_brokers(&self) -> Vec<u32> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.node_id)
            .collect()
    }

    /// The assignment of one partition.
    pub fn assignment(&self, topic: &str, partition: u32) -> Option<&PartitionAssignment> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    /// Places `count` partitions starting at `first` over the brokers, spreading leaders
    /// round-robin so each broker leads about the same number.
    fn place(&self, first: u32, count: u32, rf: u32) -> Vec<PartitionAssignment> {
        let ids = self.live_brokers();
        // Start where the previous topics left off, so leaders of many small topics spread
        // over the brokers too (deterministic: it depends only on the state).
        let offset: usize = self.topics.values().map(|t| t.partitions.len()).sum();
        (first..first + count)
            .map(|p| {
                let replicas: Vec<u32> = (0..rf)
                    .map(|r| ids[(offset + p as usize + r as usize) % ids.len()])
                    .collect();
                PartitionAssignment {
                    leader: replicas[0],
                    leader_epoch: 0,
                    isr: replicas.clone(),
                    replicas,
                    partition_epoch: 0,
                    unclean_leader_epoch: None,
                    elr: Vec::new(),
                }
            })
            .collect()
    }

    /// The replicas of a broker that registered a new incarnation (see
    /// [`MetadataCommand::RegisterBroker`]).
    fn restart_replicas(&mut self, node: u32, clean: bool) {
        let brokers = &self.brokers;
        let live = |id: u32| id != node && brokers.get(&id).is_some_and(|b| !b.fenced);
        for t in self.topics.values_mut() {
            let min = t.config.min_insync_replicas;
            for a in &mut t.partitions {
                // Only a clean shutdown (every log closed and fsynced, then the marker) proves
                // the replica holds what it acknowledged. After a crash or power loss even
                // `flush=always` is not proof: a disk that lies about fsync, or a file cut
                // behind the log's back, leaves a clean-looking short log (KIP-966 removes an
                // uncleanly shut down replica from the eligible set for the same reason).
                let handover = if clean {
                    None
                } else {
                    a.handover_from(node, live)
                };
                let mut changed = false;
                match handover {
                    Some((leader, isr)) => {
                        if a.leader != leader {
                            a.leader = leader;
                            a.leader_epoch += 1;
                        }
                        a.set_isr(isr, min, &[node]);
                        changed = true;
                    }
                    // It keeps leading, under a new epoch.
                    None if a.leader == node && a.isr.contains(&node) => {
                        a.leader_epoch += 1;
                        changed = true;
                    }
                    None => {}
                }
                if !clean && a.elr.contains(&node) {
                    a.elr.retain(|&r| r != node);
                    changed = true;
                }
                if changed {
                    a.partition_epoch += 1;
                }
            }
        }
    }

    /// Validates `cmd` against the current state and applies it; on error nothing changes.
    pub fn apply(&mut self, cmd: &MetadataCommand) -> Result<Applied> {
        let mut applied = Applied::default();
        match cmd {
            MetadataCommand::InitCluster { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                }
            }
            MetadataCommand::RegisterBroker(b) => {
                let prev = self.brokers.get(&b.node_id);
                let mut b = b.clone();
                b.fenced = false;
                let restarted = match prev {
                    // A registration that does not know the incarnation (a join) keeps the
                    // recorded one.
                    Some(p) if b.incarnation == 0 => {
                        b.incarnation = p.incarnation;
                        b.epoch = p.epoch;
                        b.clean_start = p.clean_start;
                        false
                    }
                    Some(p) if p.incarnation == b.incarnation => {
                        b.epoch = p.epoch;
                        false
                    }
                    Some(p) => {
                        b.epoch = p.epoch + 1;
                        true
                    }
                    None => {
                        b.epoch = u64::from(b.incarnation != 0);
                        false
                    }
                };
                let (id, clean) = (b.node_id, b.clean_start);
                self.brokers.insert(id, b);
                if restarted {
                    self.restart_replicas(id, clean);
                }
            }
            MetadataCommand::SetFenced { node_id, fenced } => {
                let b = self.brokers.get_mut(node_id).ok_or_else(|| {
                    BrokerError::InvalidRequest(format!("unknown broker {node_id}"))
                })?;
                b.fenced = *fenced;
            }
            MetadataCommand::UpdatePartitions(updates) => {
                for u in updates {
                    let Some(t) = self.topics.get_mut(&u.topic) else {
                        continue;
                    };
                    if t.id != u.topic_id {
                        continue;
                    }
                    let Some(a) = t.partitions.get_mut(u.partition as usize) else {
                        continue;
                    };
                    if a.partition_epoch != u.expected_partition_epoch
                        || u.isr.iter().any(|r| !a.replicas.contains(r))
                        || (u.leader != 0 && !u.isr.contains(&u.leader))
                        || u.isr.is_empty()
                    {
                        continue;
                    }
                    if a.leader != u.leader {
                        a.leader_epoch += 1;
                    }
                    // An unclean election's mark is used up by the next change: it vouches
                    // only for the damage the operator saw when electing.
                    a.unclean_leader_epoch = None;
                    a.leader = u.leader;
                    a.set_isr(u.isr.clone(), t.config.min_insync_replicas, &u.ineligible);
                    a.partition_epoch += 1;
                }
            }
            MetadataCommand::ElectUncleanLeader {
                topic,
                topic_id,
                partition,
                expected_partition_epoch,
                leader,
            } => {
                let live = self.brokers.get(leader).is_some_and(|b| !b.fenced);
                let t = self
                    .topics
                    .get_mut(topic)
                    .filter(|t| t.id == *topic_id)
                    .ok_or_else(|| BrokerError::UnknownTopic(topic.clone()))?;
                let a = t.partitions.get_mut(*partition as usize).ok_or_else(|| {
                    BrokerError::InvalidRequest(format!("{topic} has no partition {partition}"))
                })?;
                if a.partition_epoch != *expected_partition_epoch {
                    return Err(BrokerError::InvalidRequest(format!(
                        "{topic}/{partition} changed while the election was prepared; look again and retry"
                    )));
                }
                if !a.replicas.contains(leader) {
                    return Err(BrokerError::InvalidRequest(format!(
                        "node {leader} holds no replica of {topic}/{partition} (replicas {:?})",
                        a.replicas
                    )));
                }
                if !live {
                    return Err(BrokerError::InvalidRequest(format!(
                        "node {leader} is not live: only a replica on a live broker can be elected"
                    )));
                }
                a.leader = *leader;
                a.isr = vec![*leader];
                // The operator accepted the loss of what only the lost replicas held; the
                // others are followers to be cut to the new leader's log like any.
                a.elr.clear();
                a.leader_epoch += 1;
                a.partition_epoch += 1;
                a.unclean_leader_epoch = Some(a.leader_epoch);
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
                let brokers = self.live_brokers().len() as u32;
                if *replication_factor == 0 || *replication_factor > brokers {
                    return Err(BrokerError::InvalidReplicationFactor(format!(
                        "replication factor must be between 1 and the number of live brokers ({brokers}), got {replication_factor}"
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
                if rf as usize > self.live_brokers().len() {
                    return Err(BrokerError::InvalidReplicationFactor(format!(
                        "topic {name:?} has replication factor {rf} but only {} brokers are live",
                        self.live_brokers().len()
                    )));
                }
                let more = self.place(current, total - current, rf);
                self.topics
                    .get_mut(name)
                    .expect("checked")
                    .partitions
                    .extend(more);
            }
            MetadataCommand::RaiseReplicationFactor {
                name,
                topic_id,
                replication_factor: rf,
            } => {
                let t = self.topic(name)?;
                if t.id != *topic_id {
                    return Err(BrokerError::UnknownTopic(name.clone()));
                }
                if *rf <= t.replication_factor {
                    return Err(BrokerError::InvalidReplicationFactor(format!(
                        "topic {name:?} already has replication factor {}; the new one must be larger, got {rf}",
                        t.replication_factor
                    )));
                }
                let live = self.live_brokers();
                if *rf as usize > live.len() {
                    return Err(BrokerError::InvalidReplicationFactor(format!(
                        "replication factor {rf} for topic {name:?} needs {rf} live brokers, only {} are",
                        live.len()
                    )));
                }
                let mut load: BTreeMap<u32, usize> = live.iter().map(|&b| (b, 0)).collect();
                for p in self.topics.values().flat_map(|t| &t.partitions) {
                    for r in &p.replicas {
                        if let Some(n) = load.get_mut(r) {
                            *n += 1;
                        }
                    }
                }
                let t = self.topics.get_mut(name).expect("checked");
                for p in &mut t.partitions {
                    while p.replicas.len() < *rf as usize {
                        let next = load
                            .iter()
                            .filter(|(b, _)| !p.replicas.contains(b))
                            .min_by_key(|&(&b, &n)| (n, b))
                            .map(|(&b, _)| b)
                            .expect("enough live brokers: checked");
                        p.replicas.push(next);
                        *load.get_mut(&next).expect("live") += 1;
                    }
                    p.partition_epoch += 1;
                }
                t.replication_factor = *rf;
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
                let t = self.topics.get_mut(name).expect("checked");
                t.config = config.clone();
                // An in-sync set at the (new) minimum commits again without the eligible
                // leader replicas, which then no longer hold everything acknowledged.
                for a in &mut t.partitions {
                    if !a.elr.is_empty() && a.isr.len() as u32 >= config.min_insync_replicas {
                        a.elr.clear();
                        a.partition_epoch += 1;
                    }
                }
            }
            MetadataCommand::InitProducer { existing } => {
                let ids = &mut self.producers;
                let issued = match *existing {
                    Some((id, epoch)) => {
                        let current =
                            ids.current_epoch(id)
                                .ok_or(BrokerError::UnknownProducerId {
                                    producer_id: id,
                                    detail: "it was never issued".into(),
                                })?;
                        if epoch != current {
                            return Err(BrokerError::ProducerFenced {
                                producer_id: id,
                                epoch,
                                current,
                            });
                        }
                        if current == i16::MAX {
                            None
                        } else {
                            ids.epochs.insert(id, current + 1);
                            Some((id, current + 1))
                        }
                    }
                    None => None,
                };
                applied.producer = Some(issued.unwrap_or_else(|| {
                    let id = ids.next_id;
                    ids.next_id += 1;
                    (id, 0)
                }));
            }
        }
        self.version += 1;
        Ok(applied)
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
///
/// Backed by the metadata Raft group: [`Metadata::apply`] proposes through the controller and
/// returns once this node has applied the command, so a caller that applied something reads
/// it back from [`Metadata::snapshot`] at once.
pub struct Metadata {
    node_id: u32,
    raft: MetaRaft,
    sm: StateMachine,
    /// Serializes local proposals so each is validated against the state its predecessors left.
    propose: Mutex<()>,
    /// Cancelled by [`Metadata::shutdown`] before it stops Raft: every call into the Raft core
    /// (local proposals, reads, membership changes, peers' messages) gives up (see
    /// [`crate::raft::gated`]).
    stopping: CancellationToken,
    /// Linearizable reads in flight, shared (see [`Metadata::read_linearizable`]).
    reads: ReadCoalescer,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn raft_err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Metadata(format!("metadata Raft: {e}"))
}

impl Metadata {
    /// Opens this node's Raft storage in `dir` and starts its Raft node. The node does nothing
    /// useful until it is part of a cluster: see [`Metadata::bootstrap`] and
    /// [`Metadata::join`].
    pub async fn open(
        fs: Arc<dyn cascade_log::fs::FileSystem>,
        dir: &Path,
        node_id: u32,
    ) -> Result<Self> {
        let raft_dir = dir.join("raft");
        let log =
            LogStore::open(fs.clone(), &raft_dir).map_err(|e| meta_err(&raft_dir, "open", e))?;
        let sm = StateMachine::open(fs, &raft_dir).map_err(|e| meta_err(&raft_dir, "open", e))?;
        log.check_holds_committed(sm.last_applied())
            .map_err(|e| meta_err(&raft_dir, "open", e))?;
        let raft = MetaRaft::new(
            u64::from(node_id),
            raft_config(),
            crate::raft::network::Network::default(),
            log,
            sm.clone(),
        )
        .await
        .map_err(raft_err)?;
        Ok(Self {
            node_id,
            raft,
            sm,
            propose: Mutex::new(()),
            stopping: CancellationToken::new(),
            reads: ReadCoalescer::default(),
        })
    }

    /// Stops the Raft node once no local proposal is waiting on it. A proposal that cannot
    /// commit (the other voters are gone, as in a whole-cluster stop) is abandoned first:
    /// stopping Raft under a waiting caller makes openraft log an error for an ordinary stop.
    pub async fn shutdown(&self) -> Result<()> {
        self.stopping.cancel();
        let _no_proposal = self.propose.lock().await;
        self.raft.shutdown().await.map_err(raft_err)
    }

    /// The internal `Raft` gRPC service for this node's Raft node, refusing peers' messages
    /// once [`Metadata::shutdown`] has begun.
    pub fn raft_service(&self) -> crate::raft::RaftService {
        crate::raft::RaftService::new(self.raft.clone(), self.stopping.clone())
    }

    /// Runs `call`, a call into this node's Raft core, unless the node is stopping (see
    /// [`crate::raft::gated`]).
    pub async fn raft_call<T>(&self, call: impl std::future::Future<Output = T>) -> Result<T> {
        crate::raft::gated(&self.stopping, call)
            .await
            .ok_or(BrokerError::ShuttingDown)
    }

    /// True if this node already belongs to a cluster (it has Raft state).
    pub async fn is_member(&self) -> Result<bool> {
        self.raft_call(self.raft.is_initialized())
            .await?
            .map_err(raft_err)
    }

    /// Starts a new cluster with this node as its only voter.
    pub async fn bootstrap(&self, grpc_addr: &str) -> Result<()> {
        let mut members = BTreeMap::new();
        members.insert(
            u64::from(self.node_id),
            BasicNode {
                addr: grpc_addr.to_string(),
            },
        );
        match self.raft_call(self.raft.initialize(members)).await? {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(raft_err(e)),
        }
    }

    /// The Raft node.
    pub fn raft(&self) -> &MetaRaft {
        &self.raft
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// The controller (Raft leader) as far as this node knows.
    pub fn controller_id(&self) -> Option<u32> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map(|id| id as u32)
    }

    /// True if this node is the controller.
    pub fn is_controller(&self) -> bool {
        self.controller_id() == Some(self.node_id)
    }

    /// The gRPC address of a member of the Raft group.
    pub fn member_addr(&self, node_id: u32) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .nodes()
            .find(|(id, _)| **id == u64::from(node_id))
            .map(|(_, n)| n.addr.clone())
    }

    /// Voters of the Raft group.
    pub fn voters(&self) -> Vec<u32> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .voter_ids()
            .map(|id| id as u32)
            .collect()
    }

    /// The current metadata.
    pub fn snapshot(&self) -> Arc<ClusterMetadata> {
        self.sm.current()
    }

    /// A receiver that sees every new version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMetadata>> {
        self.sm.subscribe()
    }

    /// Waits until this node has applied metadata version `version` (bounded).
    pub async fn wait_for_version(&self, version: u64) -> Result<Arc<ClusterMetadata>> {
        let mut rx = self.subscribe();
        let r = tokio::time::timeout(PROPOSE_TIMEOUT, rx.wait_for(|m| m.version >= version)).await;
        match r {
            Ok(Ok(m)) => Ok(m.clone()),
            _ => Err(BrokerError::Timeout(PROPOSE_TIMEOUT.as_millis() as u64)),
        }
    }

    /// On the controller: confirms it still leads (a heartbeat round answered by a quorum of
    /// voters) and that its state machine has applied every entry committed before the call;
    /// returns the metadata version it has then applied. Any metadata change that completed
    /// before this call began is at or below that version.
    pub async fn confirmed_version(&self) -> Result<u64> {
        // As `raft_call`, written out: the generic wrapper nests this future (which produce
        // paths await) deeper than the compiler's layout query depth allows.
        if self.stopping.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let confirmed = tokio::select! {
            biased;
            _ = self.stopping.cancelled() => return Err(BrokerError::ShuttingDown),
            r = self.raft.ensure_linearizable() => r,
        };
        confirmed
            .map_err(|e| BrokerError::NoController(format!("confirming the controller: {e}")))?;
        Ok(self.snapshot().version)
    }

    /// One ReadIndex round: the version the controller confirms with a quorum (see
    /// [`Metadata::confirmed_version`]), asked over the network unless this node is it.
    async fn controller_version(&self, deadline: tokio::time::Instant) -> Result<u64> {
        match self.controller_id() {
            Some(c) if c == self.node_id => self.confirmed_version().await,
            Some(c) => {
                let mut req = tonic::Request::new(ReadVersionRequest {});
                req.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
                let r = self
                    .controller_client(c)?
                    .read_version(req)
                    .await
                    .map_err(|s| BrokerError::from_remote(&s))?;
                Ok(r.into_inner().version)
            }
            None => Err(BrokerError::NoController("no controller elected".into())),
        }
    }

    /// The metadata as fresh as the controller's at some instant after this call began (a
    /// linearizable read, Raft's ReadIndex from any node): the controller confirms its
    /// leadership with a quorum and answers its applied version, then this node waits until
    /// it has applied that version. Everything the metadata said at that instant holds in
    /// what is returned (or was superseded later). Fails within `timeout` when no controller
    /// can confirm, as when this node is cut off, or the controller it knows of was deposed
    /// or is paused: the caller then knows nothing new.
    pub async fn read_linearizable(&self, timeout: Duration) -> Result<Arc<ClusterMetadata>> {
        let timed_out = || BrokerError::Timeout(timeout.as_millis() as u64);
        let deadline = tokio::time::Instant::now() + timeout;
        // Shared with concurrent callers: a burst costs the controller one or two rounds.
        let version = self
            .reads
            .read(deadline, || async {
                self.controller_version(deadline)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(BrokerError::NoController)?;
        let mut rx = self.subscribe();
        match tokio::time::timeout_at(deadline, rx.wait_for(|m| m.version >= version)).await {
            Ok(Ok(m)) => Ok(m.clone()),
            _ => Err(timed_out()),
        }
    }

    /// Applies `cmd` through the controller and returns the metadata once this node has
    /// applied it. Validation errors come back typed when this node can see them itself.
    pub async fn apply(&self, cmd: MetadataCommand) -> Result<Arc<ClusterMetadata>> {
        Ok(self.propose(cmd).await?.0)
    }

    /// Issues a producer id, or bumps the epoch of `existing` (see
    /// [`MetadataCommand::InitProducer`]); returns the id and epoch once this node has applied
    /// the command, so its own produce checks already know them.
    pub async fn init_producer(&self, existing: Option<(i64, i16)>) -> Result<(i64, i16)> {
        let (_, applied) = self
            .propose(MetadataCommand::InitProducer { existing })
            .await?;
        applied.producer.ok_or_else(|| {
            BrokerError::Metadata("the controller did not say which producer id it issued".into())
        })
    }

    /// [`Metadata::apply`], also returning what the command produced.
    async fn propose(&self, cmd: MetadataCommand) -> Result<(Arc<ClusterMetadata>, Applied)> {
        // Check locally first: the common refusals (exists, unknown, bad factor) come back
        // with their precise error without a round trip.
        let mut dry = (*self.snapshot()).clone();
        dry.apply(&cmd)?;
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        loop {
            let r = match self.controller_id() {
                Some(c) if c == self.node_id => self.propose_local(cmd.clone()).await,
                Some(c) => self.forward(c, &cmd).await,
                None => Err(BrokerError::NoController(
                    "no controller elected yet".into(),
                )),
            };
            match r {
                Ok(resp) => {
                    let applied = Applied {
                        producer: resp.producer,
                    };
                    return Ok((self.wait_for_version(resp.version).await?, applied));
                }
                Err(e @ (BrokerError::NoController(_) | BrokerError::NotLeader { .. }))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, "metadata proposal: retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A client of the `Controller` service on node `controller`.
    fn controller_client(
        &self,
        controller: u32,
    ) -> Result<ControllerClient<tonic::transport::Channel>> {
        let addr = self.member_addr(controller).ok_or_else(|| {
            BrokerError::NoController(format!("controller {controller} has no known address"))
        })?;
        let channel = crate::raft::network::channel(&addr)
            .map_err(|e| BrokerError::NoController(format!("{addr}: {e}")))?;
        Ok(ControllerClient::new(channel))
    }

    async fn forward(&self, controller: u32, cmd: &MetadataCommand) -> Result<ApplyResponse> {
        let mut client = self.controller_client(controller)?;
        let json = serde_json::to_vec(cmd)
            .map_err(|e| BrokerError::Metadata(format!("encoding command: {e}")))?;
        let mut req = tonic::Request::new(ProposeRequest {
            command_json: json.into(),
        });
        req.set_timeout(PROPOSE_TIMEOUT);
        match client.propose(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let producer = match (r.producer_id, r.producer_epoch) {
                    (Some(id), Some(epoch)) => Some((id, epoch as i16)),
                    _ => None,
                };
                Ok(ApplyResponse {
                    version: r.version,
                    error: None,
                    producer,
                })
            }
            // A controller that is stopping (it keeps serving until it has left Raft) refuses
            // proposals: another will be elected, so this is retried like no controller.
            Err(s) => match BrokerError::from_remote(&s) {
                BrokerError::Remote {
                    code: cascade_proto::v1::ErrorCode::ShuttingDown,
                    ..
                } => Err(BrokerError::NoController(format!(
                    "controller {controller} is stopping"
                ))),
                e => Err(e),
            },
        }
    }

    /// Proposes `cmd` on this node, which must be the controller; returns what applying it
    /// answered (the version after it, and what it produced).
    pub async fn propose_local(&self, cmd: MetadataCommand) -> Result<ApplyResponse> {
        let _guard = self.propose.lock().await;
        // Once shutdown began, Raft may already be stopped: a write sent to a stopped core is
        // refused and openraft logs it as an error. Check first, and prefer the stop branch
        // (an unbiased select could poll the write first even when stopping is set).
        if self.stopping.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let mut dry = (*self.snapshot()).clone();
        dry.apply(&cmd)?;
        let write = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(cmd));
        let r = tokio::select! {
            biased;
            _ = self.stopping.cancelled() => return Err(BrokerError::ShuttingDown),
            r = write => r.map_err(|_| BrokerError::Timeout(PROPOSE_TIMEOUT.as_millis() as u64))?,
        };
        match r {
            Ok(resp) => match resp.data.error {
                None => Ok(resp.data),
                Some(e) => Err(BrokerError::InvalidRequest(e)),
            },
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => Err(BrokerError::NoController(format!(
                "this node is no longer the controller (now {:?})",
                f.leader_id
            ))),
            Err(e) => Err(raft_err(e)),
        }
    }
}

fn meta_err(path: &Path, op: &str, e: std::io::Error) -> BrokerError {
    BrokerError::Metadata(format!("{op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(m: &mut ClusterMetadata, existing: Option<(i64, i16)>) -> Result<(i64, i16)> {
        let before = m.clone();
        let r = m
            .apply(&MetadataCommand::InitProducer { existing })
            .map(|a| a.producer.expect("an id"));
        if r.is_err() {
            assert_eq!(*m, before, "a refused command changes nothing");
        }
        r
    }

    #[test]
    fn producer_ids_are_issued_once_and_epochs_bump_only_from_the_current_one() {
        let mut m = ClusterMetadata::default();
        assert_eq!(init(&mut m, None).unwrap(), (0, 0));
        assert_eq!(init(&mut m, None).unwrap(), (1, 0));
        // Re-initialising id 0 at its current epoch bumps it and fences the old epoch.
        assert_eq!(init(&mut m, Some((0, 0))).unwrap(), (0, 1));
        assert!(matches!(
            init(&mut m, Some((0, 0))),
            Err(BrokerError::ProducerFenced {
                producer_id: 0,
                epoch: 0,
                current: 1
            })
        ));
        assert_eq!(init(&mut m, Some((0, 1))).unwrap(), (0, 2));
        assert_eq!(m.producers.current_epoch(0), Some(2));
        assert_eq!(m.producers.current_epoch(1), Some(0));
        // Ids never issued, or from the future, are refused.
        assert!(matches!(
            init(&mut m, Some((2, 0))),
            Err(BrokerError::UnknownProducerId { producer_id: 2, .. })
        ));
        assert_eq!(m.producers.current_epoch(2), None);
        assert_eq!(m.producers.current_epoch(-1), None);
        // An exhausted epoch gets a fresh id.
        m.producers.epochs.insert(1, i16::MAX);
        assert_eq!(init(&mut m, Some((1, i16::MAX))).unwrap(), (2, 0));
        // The same commands give the same state (replay is deterministic).
        let mut replay = ClusterMetadata::default();
        for existing in [None, None, Some((0, 0)), Some((0, 1))] {
            init(&mut replay, existing).unwrap();
        }
        assert_eq!(replay.producers.next_id, 2);
        assert_eq!(replay.producers.current_epoch(0), Some(2));
    }

    fn register(m: &mut ClusterMetadata, id: u32, incarnation: u64, clean: bool) {
        m.apply(&MetadataCommand::RegisterBroker(BrokerInfo {
            node_id: id,
            grpc_addr: format!("n{id}:50051"),
            incarnation,
            clean_start: clean,
            ..Default::default()
        }))
        .unwrap();
    }

    /// Three brokers; topic `a` fsyncs every acknowledgement, `n` never does; both have three
    /// partitions over three replicas, led by 1, 2 and 3.
    fn restart_cluster() -> ClusterMetadata {
        let mut m = ClusterMetadata::default();
        for id in 1..=3 {
            register(&mut m, id, 10 + u64::from(id), false);
        }
        for (name, flush) in [
            ("a", cascade_types::FlushMode::Always),
            ("n", cascade_types::FlushMode::Never),
        ] {
            m.apply(&MetadataCommand::CreateTopic {
                name: name.into(),
                id: format!("{name}-id"),
                partitions: 3,
                replication_factor: 3,
                config: TopicConfig {
                    flush,
                    ..TopicConfig::default()
                },
                internal: false,
                created_ms: 0,
            })
            .unwrap();
        }
        m
    }

    /// A broker that restarts inside its session (never fenced) comes back as a new
    /// incarnation: a new broker epoch, a new leader epoch for everything it leads, and, since
    /// its shutdown was unclean, out of the in-sync sets with its leaderships moved, whatever
    /// the flush policy (a disk can lose fsynced writes). Before, it kept everything at the
    /// same epochs; later, `flush=always` replicas were still trusted.
    #[test]
    fn a_restarted_broker_is_a_new_incarnation() {
        let mut m = restart_cluster();
        let before = m.clone();
        assert_eq!(m.brokers[&1].epoch, 1);
        register(&mut m, 1, 99, false);
        assert_eq!(m.brokers[&1].epoch, 2, "a new broker epoch");
        for t in ["a", "n"] {
            for (p, p0) in m.topics[t]
                .partitions
                .iter()
                .zip(&before.topics[t].partitions)
            {
                assert!(
                    !p.isr.contains(&1),
                    "{t}: not eligible until caught up: {p:?}"
                );
                if p0.leader == 1 {
                    // Leadership moves to the next replica, under a new epoch.
                    assert_eq!(p.leader, p0.replicas[1], "{t}");
                    assert_eq!(p.leader_epoch, p0.leader_epoch + 1, "{t}");
                } else {
                    assert_eq!(
                        p.leader, p0.leader,
                        "{t}: followers only leave the in-sync set"
                    );
                    assert_eq!(p.leader_epoch, p0.leader_epoch, "{t}");
                }
                assert_eq!(p.partition_epoch, p0.partition_epoch + 1, "{t}");
            }
        }
        // A retried registration of the same incarnation, and a join's registration (which
        // does not know the incarnation), change nothing.
        let after = m.clone();
        register(&mut m, 1, 99, false);
        register(&mut m, 1, 0, false);
        assert_eq!(m.brokers, after.brokers);
        assert_eq!(m.topics, after.topics);
    }

    /// After a clean shutdown every log was closed (fsynced): the replica stays in sync
    /// whatever the flush policy, and only gets new leader epochs.
    #[test]
    fn a_cleanly_restarted_broker_stays_in_sync() {
        let mut m = restart_cluster();
        let before = m.clone();
        register(&mut m, 2, 77, true);
        for t in ["a", "n"] {
            for (p, p0) in m.topics[t]
                .partitions
                .iter()
                .zip(&before.topics[t].partitions)
            {
                assert_eq!((p.leader, &p.isr), (p0.leader, &p0.isr));
                let bump = i32::from(p.leader == 2);
                assert_eq!(p.leader_epoch, p0.leader_epoch + bump);
            }
        }
    }

    /// The only live in-sync replica, back from an unclean restart while the other in-sync
    /// replicas are down, does not lead: they may hold events it lost, so the partition waits,
    /// leaderless, for the first of them (before, it led, and the others truncated to it when
    /// they returned). Alone in the in-sync set, with nobody else to vouch for more, it stays.
    #[test]
    fn an_uncleanly_restarted_replica_waits_for_the_in_sync_replicas_that_are_down() {
        let mut m = restart_cluster();
        for id in [2, 3] {
            m.apply(&MetadataCommand::SetFenced {
                node_id: id,
                fenced: true,
            })
            .unwrap();
        }
        let before = m.clone();
        register(&mut m, 1, 5, false);
        for t in ["a", "n"] {
            for (p, p0) in m.topics[t]
                .partitions
                .iter()
                .zip(&before.topics[t].partitions)
            {
                assert_eq!(p.leader, 0, "{p:?}");
                assert!(!p.isr.contains(&1), "{p:?}");
                assert_eq!(p.isr.len(), p0.isr.len() - 1, "{p:?}");
            }
        }
        // Node 2 back: the controller elects it.
        m.apply(&MetadataCommand::SetFenced {
            node_id: 2,
            fenced: false,
        })
        .unwrap();
        let plan = crate::controller::plan_partition_updates(
            &m,
            &Default::default(),
            &Default::default(),
            &Default::default(),
        );
        assert_eq!(plan.len(), 6);
        assert!(
            plan.iter().all(|u| u.leader == 2 && u.isr == [2]),
            "{plan:?}"
        );
        // Alone in the in-sync set with no eligible replica: it stays and leads again.
        let mut m = elr_cluster(1);
        set_isr(&mut m, 1, &[1], &[]);
        fence(&mut m, 2, true);
        fence(&mut m, 3, true);
        register(&mut m, 1, 99, false);
        let a = &m.topics["e"].partitions[0];
        assert_eq!((a.leader, &a.isr[..]), (1, &[1][..]));
    }

    /// Three brokers and topic `e`: one partition over replicas 1, 2, 3 (led by 1) with
    /// `min.insync.replicas` `min`.
    fn elr_cluster(min: u32) -> ClusterMetadata {
        let mut m = ClusterMetadata::default();
        for id in 1..=3 {
            register(&mut m, id, 10 + u64::from(id), false);
        }
        m.apply(&MetadataCommand::CreateTopic {
            name: "e".into(),
            id: "e-id".into(),
            partitions: 1,
            replication_factor: 3,
            config: TopicConfig {
                min_insync_replicas: min,
                ..TopicConfig::default()
            },
            internal: false,
            created_ms: 0,
        })
        .unwrap();
        assert_eq!(m.topics["e"].partitions[0].replicas, [1, 2, 3]);
        m
    }

    fn set_isr(m: &mut ClusterMetadata, leader: u32, isr: &[u32], ineligible: &[u32]) {
        let epoch = m.topics["e"].partitions[0].partition_epoch;
        m.apply(&MetadataCommand::UpdatePartitions(vec![PartitionUpdate {
            topic: "e".into(),
            topic_id: "e-id".into(),
            partition: 0,
            expected_partition_epoch: epoch,
            leader,
            isr: isr.to_vec(),
            ineligible: ineligible.to_vec(),
        }]))
        .unwrap();
    }

    fn fence(m: &mut ClusterMetadata, id: u32, fenced: bool) {
        m.apply(&MetadataCommand::SetFenced {
            node_id: id,
            fenced,
        })
        .unwrap();
    }

    /// The "last replica standing" loss KIP-966 fixes, as a 3-node chaos soak found it
    /// (seed 3131: 4,098 acknowledged events lost): with `min.insync.replicas` 2, node 2
    /// leaves the in-sync set (full disk), then node 3 (paused), leaving node 1 alone; node 1
    /// then loses fsynced writes and restarts uncleanly. Node 3 left as the set fell below
    /// the minimum, after which nothing more was acknowledged: it holds every acknowledged
    /// event and must lead, or the partition must wait for it; node 1 must not lead with its
    /// short log (before, it stayed as "the last live in-sync replica" and the others were
    /// cut to it).
    #[test]
    fn the_last_replica_standing_hands_over_to_an_eligible_leader_replica() {
        let mut m = elr_cluster(2);
        let p = |m: &ClusterMetadata| m.topics["e"].partitions[0].clone();
        set_isr(&mut m, 1, &[1, 3], &[]);
        assert!(p(&m).elr.is_empty(), "still at the minimum: {:?}", p(&m));
        set_isr(&mut m, 1, &[1], &[]);
        assert_eq!(p(&m).elr, [3], "left as the set fell below the minimum");
        let shrunk = m.clone();

        // Node 3 is live when node 1 comes back: it leads at once.
        let mut live = shrunk.clone();
        let before = p(&live);
        register(&mut live, 1, 99, false);
        let a = p(&live);
        assert_eq!(
            (a.leader, &a.isr[..], &a.elr[..]),
            (3, &[3][..], &[][..]),
            "{a:?}"
        );
        assert_eq!(a.leader_epoch, before.leader_epoch + 1);

        // Node 3 is down (paused) when node 1 comes back: nobody leads, and node 3 is the
        // in-sync set to wait for; node 1 is in neither set.
        let mut down = shrunk.clone();
        fence(&mut down, 3, true);
        register(&mut down, 1, 99, false);
        let a = p(&down);
        assert_eq!(
            (a.leader, &a.isr[..], &a.elr[..]),
            (0, &[3][..], &[][..]),
            "{a:?}"
        );
        let plan = |m: &ClusterMetadata| {
            crate::controller::plan_partition_updates(
                m,
                &Default::default(),
                &Default::default(),
                &Default::default(),
            )
        };
        assert!(
            plan(&down).is_empty(),
            "no one to elect while node 3 is down"
        );
        fence(&mut down, 3, false);
        let u = plan(&down);
        assert_eq!((u[0].leader, &u[0].isr[..]), (3, &[3][..]), "{u:?}");

        // With node 1 simply gone (fenced, not restarted), the controller elects node 3
        // from the eligible set; node 1 becomes eligible in turn (it holds everything).
        let mut gone = shrunk.clone();
        fence(&mut gone, 1, true);
        let u = plan(&gone);
        assert_eq!((u[0].leader, &u[0].isr[..]), (3, &[3][..]), "{u:?}");
        gone.apply(&MetadataCommand::UpdatePartitions(u)).unwrap();
        let a = p(&gone);
        assert_eq!(
            (a.leader, &a.isr[..], &a.elr[..]),
            (3, &[3][..], &[1][..]),
            "{a:?}"
        );
        // Its unclean restart then takes it out of the eligible set.
        register(&mut gone, 1, 99, false);
        assert!(p(&gone).elr.is_empty(), "{:?}", p(&gone));
    }

    /// Who enters and leaves the eligible leader replicas.
    #[test]
    fn eligible_leader_replicas_follow_their_rule() {
        let p = |m: &ClusterMetadata| m.topics["e"].partitions[0].clone();
        let mut m = elr_cluster(2);
        // Two leave at once below the minimum: both hold everything.
        set_isr(&mut m, 1, &[1], &[]);
        assert_eq!(p(&m).elr, [2, 3]);
        // Back at the minimum: new acknowledgements need no copy on node 3.
        set_isr(&mut m, 1, &[1, 2], &[]);
        assert!(p(&m).elr.is_empty());
        // A replica leaving for damage is not eligible; one that reports damage leaves.
        set_isr(&mut m, 1, &[1], &[2]);
        assert!(p(&m).elr.is_empty());
        let mut m = elr_cluster(2);
        set_isr(&mut m, 1, &[1], &[]);
        set_isr(&mut m, 1, &[1], &[3]);
        assert_eq!(p(&m).elr, [2]);
        // A clean restart keeps it eligible, an unclean one does not.
        register(&mut m, 2, 50, true);
        assert_eq!(p(&m).elr, [2]);
        register(&mut m, 2, 51, false);
        assert!(p(&m).elr.is_empty());
        // Rejoining the in-sync set leaves the eligible set.
        let mut m = elr_cluster(3);
        set_isr(&mut m, 1, &[1, 2], &[]);
        assert_eq!(p(&m).elr, [3]);
        set_isr(&mut m, 1, &[1, 3], &[]);
        assert_eq!(p(&m).elr, [2]);
        // Lowering `min.insync.replicas` to the in-sync set's size lets it commit alone:
        // they no longer hold everything acknowledged.
        let config = m.topics["e"].config.clone();
        m.apply(&MetadataCommand::AlterConfig {
            name: "e".into(),
            config: TopicConfig {
                min_insync_replicas: 3,
                ..config.clone()
            },
        })
        .unwrap();
        assert_eq!(p(&m).elr, [2], "still below the minimum");
        m.apply(&MetadataCommand::AlterConfig {
            name: "e".into(),
            config: TopicConfig {
                min_insync_replicas: 2,
                ..config.clone()
            },
        })
        .unwrap();
        assert!(p(&m).elr.is_empty(), "{:?}", p(&m));
        m.apply(&MetadataCommand::AlterConfig {
            name: "e".into(),
            config,
        })
        .unwrap();
        set_isr(&mut m, 1, &[1], &[]);
        assert_eq!(p(&m).elr, [3]);
        // An unclean election gives up on them.
        let epoch = p(&m).partition_epoch;
        m.apply(&MetadataCommand::ElectUncleanLeader {
            topic: "e".into(),
            topic_id: "e-id".into(),
            partition: 0,
            expected_partition_epoch: epoch,
            leader: 2,
        })
        .unwrap();
        assert!(p(&m).elr.is_empty());
        // With `min.insync.replicas` 1 there are never any: the last in-sync replica is all
        // an acknowledgement promised.
        let mut m = elr_cluster(1);
        set_isr(&mut m, 1, &[1], &[]);
        assert!(p(&m).elr.is_empty());
        fence(&mut m, 2, true);
        fence(&mut m, 3, true);
        register(&mut m, 1, 99, false);
        assert_eq!((p(&m).leader, &p(&m).isr[..]), (1, &[1][..]));
    }

    fn two_brokers() -> ClusterMetadata {
        let mut m = ClusterMetadata::default();
        for id in [1, 2] {
            m.apply(&MetadataCommand::RegisterBroker(BrokerInfo {
                node_id: id,
                grpc_addr: format!("n{id}:50051"),
                http_addr: String::new(),
                fenced: false,
                ..Default::default()
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

    /// The offsets topic created on one broker, raised to three once three are live: every
    /// partition gets two new, distinct replicas spread evenly, keeps its leader and in-sync
    /// set (the new replicas join it when caught up), and changes epoch so stale updates
    /// computed before are refused; `min.insync.replicas` is left for later.
    #[test]
    fn raising_the_replication_factor_adds_spread_replicas() {
        let mut m = ClusterMetadata::default();
        m.apply(&MetadataCommand::RegisterBroker(BrokerInfo {
            node_id: 1,
            grpc_addr: "n1:50051".into(),
            http_addr: String::new(),
            fenced: false,
            ..Default::default()
        }))
        .unwrap();
        let MetadataCommand::CreateTopic { config, .. } = create("o", 6, 1) else {
            unreachable!()
        };
        m.apply(&MetadataCommand::CreateTopic {
            name: "o".into(),
            id: "oid".into(),
            partitions: 6,
            replication_factor: 1,
            config: TopicConfig {
                min_insync_replicas: 1,
                ..config
            },
            internal: true,
            created_ms: 0,
        })
        .unwrap();
        let raise = |rf, id: &str| MetadataCommand::RaiseReplicationFactor {
            name: "o".into(),
            topic_id: id.into(),
            replication_factor: rf,
        };
        assert!(m.apply(&raise(3, "oid")).is_err(), "only one live broker");
        for id in [2, 3] {
            m.apply(&MetadataCommand::RegisterBroker(BrokerInfo {
                node_id: id,
                grpc_addr: format!("n{id}:50051"),
                http_addr: String::new(),
                fenced: false,
                ..Default::default()
            }))
            .unwrap();
        }
        assert!(m.apply(&raise(3, "old-id")).is_err(), "another topic's id");
        let before = m.clone();
        m.apply(&raise(3, "oid")).unwrap();
        let t = &m.topics["o"];
        assert_eq!((t.replication_factor, t.config.min_insync_replicas), (3, 1));
        for (p, b) in t.partitions.iter().zip(&before.topics["o"].partitions) {
            let mut r = p.replicas.clone();
            r.sort();
            assert_eq!(r, [1, 2, 3]);
            assert_eq!(
                p.replicas[0], b.replicas[0],
                "the preferred leader stays first"
            );
            assert_eq!((p.leader, &p.isr), (b.leader, &b.isr));
            assert_eq!(p.partition_epoch, b.partition_epoch + 1);
        }
        // Replay gives the same placement.
        let mut again = before.clone();
        again.apply(&raise(3, "oid")).unwrap();
        assert_eq!(again, m);
        assert!(m.apply(&raise(3, "oid")).is_err(), "not larger");
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
        let id = m.topics["t"].id.clone();
        let rf = m.topics["t"].replication_factor;
        let raise = |rf| MetadataCommand::RaiseReplicationFactor {
            name: "t".into(),
            topic_id: id.clone(),
            replication_factor: rf,
        };
        let before = m.clone();
        assert!(m.apply(&raise(rf)).is_err());
        assert!(m.apply(&raise(99)).is_err());
        assert_eq!(m, before, "a refused raise changes nothing");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_reopen_through_raft() {
        let dir = tempfile::tempdir().unwrap();
        let node = BrokerInfo {
            node_id: 1,
            grpc_addr: "127.0.0.1:1".into(),
            http_addr: "b".into(),
            fenced: false,
            ..Default::default()
        };
        let m = Metadata::open(Arc::new(cascade_log::fs::StdFs), dir.path(), 1)
            .await
            .unwrap();
        assert!(!m.is_member().await.unwrap());
        m.bootstrap(&node.grpc_addr).await.unwrap();
        m.apply(MetadataCommand::RegisterBroker(node.clone()))
            .await
            .unwrap();
        m.apply(MetadataCommand::InitCluster {
            cluster_id: "c1".into(),
        })
        .await
        .unwrap();
        m.apply(create("t", 3, 1)).await.unwrap();
        let err = m.apply(create("t", 3, 1)).await.unwrap_err();
        assert!(matches!(err, BrokerError::TopicExists(_)), "{err}");
        let version = m.snapshot().version;
        m.raft().shutdown().await.unwrap();
        drop(m);
        let m = Metadata::open(Arc::new(cascade_log::fs::StdFs), dir.path(), 1)
            .await
            .unwrap();
        assert!(m.is_member().await.unwrap());
        // The state comes back once the log is re-applied (after the node leads again).
        let snap = m.wait_for_version(version).await.unwrap();
        assert_eq!(snap.cluster_id, "c1");
        assert_eq!(snap.topics["t"].partitions.len(), 3);
        m.raft().shutdown().await.unwrap();
    }

    #[test]
    fn fencing_and_partition_updates_are_compare_and_set() {
        let mut m = two_brokers();
        m.apply(&create("t", 2, 2)).unwrap();
        let a = m.topics["t"].partitions[0].clone();
        let upd = |expected, leader, isr: Vec<u32>| {
            MetadataCommand::UpdatePartitions(vec![PartitionUpdate {
                topic: "t".into(),
                topic_id: "id".into(),
                partition: 0,
                expected_partition_epoch: expected,
                leader,
                isr,
                ineligible: Vec::new(),
            }])
        };
        let other = if a.leader == 1 { 2 } else { 1 };
        m.apply(&upd(0, other, vec![other])).unwrap();
        let b = &m.topics["t"].partitions[0];
        assert_eq!((b.leader, b.leader_epoch, b.partition_epoch), (other, 1, 1));
        // Stale: skipped, nothing changes.
        let before = m.topics.clone();
        m.apply(&upd(0, a.leader, vec![a.leader])).unwrap();
        // A leader outside the in-sync set, or a replica that is not one, is refused.
        m.apply(&upd(1, a.leader, vec![other])).unwrap();
        m.apply(&upd(1, other, vec![other, 9])).unwrap();
        assert_eq!(m.topics, before);
        // ISR-only change keeps the leader epoch.
        m.apply(&upd(1, other, vec![1, 2])).unwrap();
        let c = &m.topics["t"].partitions[0];
        assert_eq!(
            (c.leader_epoch, c.partition_epoch, c.isr.clone()),
            (1, 2, vec![1, 2])
        );
        // A fenced broker gets no new replicas.
        m.apply(&MetadataCommand::SetFenced {
            node_id: 2,
            fenced: true,
        })
        .unwrap();
        assert!(m.apply(&create("u", 1, 2)).is_err());
        m.apply(&create("u", 2, 1)).unwrap();
        assert!(m.topics["u"].partitions.iter().all(|p| p.leader == 1));
    }

    /// An unclean election makes the named live replica the only in-sync one and the leader
    /// at a new epoch, marked as unclean for that epoch; it is compare-and-set like every
    /// partition change, and refuses a replica that is not one or whose broker is fenced,
    /// changing nothing. The next change of the partition uses the mark up.
    #[test]
    fn an_unclean_election_is_checked_and_marks_its_epoch() {
        let mut m = restart_cluster();
        let a = m.topics["a"].partitions[0].clone();
        let elect = |expected, leader| MetadataCommand::ElectUncleanLeader {
            topic: "a".into(),
            topic_id: "a-id".into(),
            partition: 0,
            expected_partition_epoch: expected,
            leader,
        };
        m.apply(&MetadataCommand::SetFenced {
            node_id: 3,
            fenced: true,
        })
        .unwrap();
        let before = m.topics.clone();
        for (cmd, why) in [
            (elect(a.partition_epoch + 1, 2), "changed"),
            (elect(a.partition_epoch, 9), "no replica"),
            (elect(a.partition_epoch, 3), "not live"),
        ] {
            let err = m.apply(&cmd).expect_err(why).to_string();
            assert!(err.contains(why), "{err}");
            assert_eq!(m.topics, before, "a refused election changes nothing");
        }
        let wrong_id = MetadataCommand::ElectUncleanLeader {
            topic: "a".into(),
            topic_id: "older".into(),
            partition: 0,
            expected_partition_epoch: a.partition_epoch,
            leader: 2,
        };
        assert!(m.apply(&wrong_id).is_err());
        m.apply(&elect(a.partition_epoch, 2)).unwrap();
        let b = m.topics["a"].partitions[0].clone();
        assert_eq!((b.leader, b.isr.clone()), (2, vec![2]));
        assert_eq!(b.leader_epoch, a.leader_epoch + 1);
        assert_eq!(b.partition_epoch, a.partition_epoch + 1);
        assert_eq!(b.unclean_leader_epoch, Some(b.leader_epoch));
        // The next change, even of the in-sync set alone, uses the mark up.
        m.apply(&MetadataCommand::UpdatePartitions(vec![PartitionUpdate {
            topic: "a".into(),
            topic_id: "a-id".into(),
            partition: 0,
            expected_partition_epoch: b.partition_epoch,
            leader: 2,
            isr: vec![1, 2],
            ineligible: Vec::new(),
        }]))
        .unwrap();
        let c = &m.topics["a"].partitions[0];
        assert_eq!(
            (c.leader_epoch, c.unclean_leader_epoch),
            (b.leader_epoch, None)
        );
    }
}
