//! Controller duties and the internal `Controller` gRPC service.
//!
//! The controller is whichever node leads the metadata Raft group. Every broker heartbeats
//! every other member every `heartbeat_interval`; each node keeps the last heartbeat per
//! broker in memory ([`Liveness`]), and the controller, every tick:
//! - fences a broker silent for `session_timeout` and unfences one that heartbeats again;
//! - for every partition, removes fenced (or shutting-down) brokers, and replicas their broker
//!   reports it cannot serve (offline: not opened; repairing: damaged), from the in-sync set
//!   and, if the leader is one of them or there is none, elects the first live in-sync replica in
//!   replica order (the preferred replica first). Only in-sync replicas are ever elected, or,
//!   when none can lead, an eligible leader replica (KIP-966: out of the in-sync set but
//!   holding every acknowledged event, see `PartitionAssignment::elr`), which becomes the
//!   in-sync set; with neither alive the partition stays offline, keeping its last in-sync
//!   set, until one returns. Replicas reported damaged are dropped from the eligible ones;
//! - moves leadership back to the preferred replica once it is in sync again, so leadership
//!   stays spread evenly after failures.
//!
//! A new controller already holds recent heartbeats (every node receives them), so a dead
//! broker is fenced one session after its last heartbeat even when it was the controller; a
//! broker the new controller has never heard from gets a full session first. All decisions are metadata commands through Raft, compare-and-set on each
//! partition's epoch, so a stale decision is skipped, never applied.
//!
//! It also raises `__consumer_offsets` to `offsets_replication_factor` replicas once enough
//! brokers are live (it was created with fewer if fewer were up at first use).
//!
//! Every node also runs the leader-side in-sync checks of its own partitions
//! ([`Broker::check_isr`]) from the same tick.

use crate::broker::{Broker, BrokerInfo};
use crate::error::{BrokerError, Result};
use crate::group::OFFSETS_TOPIC;
use crate::metadata::{ClusterMetadata, MetadataCommand, PartitionUpdate};
use cascade_proto::internal::controller_client::ControllerClient;
use cascade_proto::internal::controller_server::Controller;
use cascade_proto::internal::{
    BrokerHeartbeatRequest, BrokerHeartbeatResponse, IdentifyRequest, IdentifyResponse,
    JoinRequest, JoinResponse, ProposeRequest, ProposeResponse, ReadVersionRequest,
    ReadVersionResponse, ReplicaProblem,
};
use openraft::BasicNode;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// The state a broker reports for a replica whose disk is full (see `Partition::disk_full`).
pub(crate) const DISK_FULL: &str = "disk-full";
/// The state a broker reports for a replica whose log was found damaged (being cut and
/// fetched again).
pub(crate) const REPAIRING: &str = "repairing";

/// The controller's view of broker liveness.
#[derive(Debug, Default)]
pub struct Liveness {
    inner: Mutex<LivenessInner>,
}

#[derive(Debug, Default)]
struct LivenessInner {
    /// The Raft term this table was started in (reset when this node becomes controller).
    since_term: Option<u64>,
    last: HashMap<u32, Instant>,
    leaving: BTreeSet<u32>,
    /// The replicas each broker reported it cannot serve, from its last heartbeat.
    problems: HashMap<u32, Vec<ReplicaProblem>>,
    /// Brokers fenced in the metadata at the previous tick: one that is unfenced now without
    /// this controller doing it registered again after a restart, which is logged here.
    fenced_seen: BTreeSet<u32>,
}

impl Liveness {
    /// What `node` last reported about its replica of `topic`/`partition`, if anything is
    /// wrong with it: (state, reason).
    pub(crate) fn problem(
        &self,
        node: u32,
        topic: &str,
        partition: u32,
    ) -> Option<(String, String)> {
        self.lock().problems.get(&node).and_then(|v| {
            v.iter()
                .find(|p| p.topic == topic && p.partition == partition)
                .map(|p| (p.state.clone(), p.reason.clone()))
        })
    }

    /// The replicas that must not lead nor count as in sync, as (topic, partition, node):
    /// every reported problem, except a full disk on a replica with no other live in-sync
    /// replica free of problems. A full replica still holds every acknowledged event and
    /// serves reads; taking it out would leave the partition with no leader at all, while
    /// keeping it costs only the writes, which fail until space returns either way.
    /// Nor is the leader an operator elected uncleanly, during its epoch, for the damage it
    /// reported: the operator accepted it (its node clears the report as it takes the role),
    /// and demoting it would undo the election.
    fn unusable(&self, snap: &ClusterMetadata) -> BTreeSet<(String, u32, u32)> {
        let l = self.lock();
        let troubled: BTreeSet<(String, u32, u32)> = l
            .problems
            .iter()
            .flat_map(|(&node, v)| v.iter().map(move |p| (p.topic.clone(), p.partition, node)))
            .collect();
        let full = |t: &str, p: u32, node: u32| {
            l.problems.get(&node).is_some_and(|v| {
                v.iter()
                    .any(|x| x.topic == t && x.partition == p && x.state == DISK_FULL)
            })
        };
        let elected_uncleanly = |t: &str, p: u32, node: u32| {
            snap.assignment(t, p)
                .is_some_and(|a| a.leader == node && a.unclean_leader_epoch == Some(a.leader_epoch))
                && l.problems.get(&node).is_some_and(|v| {
                    v.iter()
                        .filter(|x| x.topic == t && x.partition == p)
                        .all(|x| x.state == REPAIRING)
                })
        };
        troubled
            .iter()
            .filter(|(t, p, node)| !elected_uncleanly(t, *p, *node))
            .filter(|(t, p, node)| {
                !full(t, *p, *node)
                    || snap.assignment(t, *p).is_some_and(|a| {
                        a.isr.iter().any(|other| {
                            other != node
                                && snap.brokers.get(other).is_some_and(|b| !b.fenced)
                                && !troubled.contains(&(t.clone(), *p, *other))
                        })
                    })
            })
            .cloned()
            .collect()
    }

    /// The replicas their brokers reported damaged (being cut and fetched again), as
    /// (topic, partition, node): they may have lost acknowledged events, so they are no
    /// eligible leader replicas (see `PartitionAssignment::elr`).
    fn damaged(&self) -> BTreeSet<(String, u32, u32)> {
        self.lock()
            .problems
            .iter()
            .flat_map(|(&node, v)| {
                v.iter()
                    .filter(|p| p.state == REPAIRING)
                    .map(move |p| (p.topic.clone(), p.partition, node))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LivenessInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `node` said in its last heartbeat that it is shutting down (every node hears
    /// every broker's heartbeats, not only the controller).
    pub(crate) fn is_leaving(&self, node: u32) -> bool {
        self.lock().leaving.contains(&node)
    }

    fn heard(&self, node: u32, leaving: bool, problems: Vec<ReplicaProblem>) {
        let mut l = self.lock();
        l.last.insert(node, Instant::now());
        if problems.is_empty() {
            l.problems.remove(&node);
        } else {
            l.problems.insert(node, problems);
        }
        if leaving {
            l.leaving.insert(node);
        } else {
            l.leaving.remove(&node);
        }
    }
}

pub(crate) fn spawn(broker: Arc<Broker>) {
    // Controller duties and in-sync checks.
    let b = broker.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = b.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            b.check_isr();
            if let Err(e) = b.controller_tick().await {
                tracing::debug!(error = %e, "controller tick");
            }
        }
    });
    // Heartbeats to the controller.
    let b = broker;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(b.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = b.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = send_heartbeat(&b).await {
                tracing::debug!(error = %e, "heartbeat to the controller failed");
            }
        }
    });
}

/// Sends one heartbeat to every other member (and records this node's own). Every node keeps
/// the liveness table, not only the controller, so a newly elected controller already knows
/// who is alive and fences a dead broker one session after its last heartbeat, not one session
/// after the election.
pub(crate) async fn send_heartbeat(b: &Arc<Broker>) -> Result<()> {
    let leaving = b.leaving.load(std::sync::atomic::Ordering::SeqCst);
    let me = b.config.node_id;
    let problems = b.replica_problems();
    b.liveness.heard(me, leaving, problems.clone());
    let version = b.meta.snapshot().version;
    let sends = b
        .meta
        .voters()
        .into_iter()
        .filter(|&id| id != me)
        .filter_map(|id| {
            let addr = b.meta.member_addr(id)?;
            let channel = crate::raft::network::channel(&addr).ok()?;
            let mut req = Request::new(BrokerHeartbeatRequest {
                node_id: me,
                metadata_version: version,
                shutting_down: leaving,
                problems: problems.clone(),
            });
            req.set_timeout(Duration::from_secs(1));
            Some(async move { ControllerClient::new(channel).heartbeat(req).await })
        });
    let results = futures::future::join_all(sends).await;
    match results.into_iter().find_map(|r| r.err()) {
        Some(s) if b.meta.voters().len() <= 1 => Err(BrokerError::from_remote(&s)),
        _ => Ok(()),
    }
}

/// Joins an existing cluster through `contacts` (seeds, or the known members when this node
/// only needs its new address recorded), retrying until it succeeds (a stop cancels the
/// caller).
pub(crate) async fn join(b: &Arc<Broker>, contacts: &[String]) -> Result<()> {
    if contacts.is_empty() {
        return Err(BrokerError::NoController("no seeds to join through".into()));
    }
    let mut attempts = 0u32;
    loop {
        if join_once(b, contacts, attempts.is_multiple_of(10)).await {
            return Ok(());
        }
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asks each contact in turn to add this node to its cluster; true once one did. `log`:
/// warn about the failures.
pub(crate) async fn join_once(b: &Arc<Broker>, contacts: &[String], log: bool) -> bool {
    let req = JoinRequest {
        node_id: b.config.node_id,
        grpc_addr: b.config.advertised_grpc_addr.clone(),
        http_addr: b.config.advertised_http_addr.clone(),
    };
    for seed in contacts {
        let Ok(channel) = crate::raft::network::channel(seed) else {
            continue;
        };
        let mut r = Request::new(req.clone());
        r.set_timeout(Duration::from_secs(30));
        match ControllerClient::new(channel).join(r).await {
            Ok(_) => {
                tracing::info!(seed = %seed, "joined the cluster");
                return true;
            }
            Err(s) if log => {
                tracing::warn!(seed = %seed, error = %s.message(), "join failed; retrying");
            }
            Err(_) => {}
        }
    }
    false
}

/// What [`Broker::elect_unclean_leader`] did.
#[derive(Debug, Clone)]
pub struct UncleanElection {
    /// The topic after the election.
    pub topic: crate::metadata::TopicMeta,
    /// The node elected.
    pub leader: u32,
    /// Each eligible replica's log end as its node answered (`None`: no answer).
    pub candidates: Vec<(u32, Option<u64>)>,
}

impl Broker {
    /// An operator's unclean leader election (`cascade topic elect-leader --unclean`, see
    /// [`MetadataCommand::ElectUncleanLeader`]): for a partition none of whose in-sync replicas
    /// can lead, because their brokers are down (perhaps for good) or their copies are
    /// damaged or cannot be opened. Elects `replica`, or else the first replica in replica
    /// order on a live broker with its replica open, as the only in-sync replica; returns the
    /// topic after the change and the node elected.
    ///
    /// Refused, changing nothing, while an in-sync or eligible leader replica could lead (the
    /// controller elects those itself, losing nothing; a full disk still serves reads and is waited out), and
    /// for a replica that is not on a live broker or not open. Never automatic: it gives up
    /// whatever only the lost in-sync replicas held, so an operator must ask for it.
    pub async fn elect_unclean_leader(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        replica: Option<u32>,
    ) -> Result<UncleanElection> {
        let snap = self.meta.snapshot();
        let t = snap.topic(topic)?;
        let a = t.partitions.get(partition as usize).ok_or_else(|| {
            BrokerError::InvalidRequest(format!("{topic} has no partition {partition}"))
        })?;
        let live = |n: u32| snap.brokers.get(&n).is_some_and(|b| !b.fenced);
        let problem = |n: u32| self.liveness.problem(n, topic, partition).map(|(s, _)| s);
        if let Some(n) = a
            .isr
            .iter()
            .chain(&a.elr)
            .copied()
            .find(|&n| live(n) && !matches!(problem(n).as_deref(), Some("offline" | REPAIRING)))
        {
            let what = if a.isr.contains(&n) {
                "an in-sync replica"
            } else {
                "an eligible leader replica"
            };
            return Err(BrokerError::InvalidRequest(format!(
                "{topic}/{partition} has {what} that can lead (node {n}): the \
                 controller elects it without losing anything; an unclean election is only for \
                 a partition whose every in-sync and eligible replica is down or damaged"
            )));
        }
        let why_not = |n: u32| -> Option<String> {
            if !a.replicas.contains(&n) {
                Some(format!(
                    "node {n} holds no replica of it (replicas {:?})",
                    a.replicas
                ))
            } else if !live(n) {
                Some(format!("node {n} is down"))
            } else if problem(n).as_deref() == Some("offline") {
                Some(format!("node {n} could not open its replica"))
            } else {
                None
            }
        };
        if let Some(n) = replica
            && let Some(why) = why_not(n)
        {
            return Err(BrokerError::InvalidRequest(format!(
                "cannot elect node {n} for {topic}/{partition}: {why}"
            )));
        }
        let eligible: Vec<u32> = match replica {
            Some(n) => vec![n],
            None => a
                .replicas
                .iter()
                .copied()
                .filter(|&n| why_not(n).is_none())
                .collect(),
        };
        let candidates: Vec<(u32, Option<u64>)> = futures::future::join_all(
            eligible
                .iter()
                .map(|&n| async move { (n, self.replica_end(n, topic, partition).await) }),
        )
        .await;
        // Choosing among some of them could elect a shorter copy than one that did not answer,
        // losing more than needed: without an answer from each, the operator has to choose.
        if replica.is_none()
            && let Some((n, _)) = candidates.iter().find(|(_, end)| end.is_none())
        {
            return Err(BrokerError::InvalidRequest(format!(
                "node {n} did not say how long its copy of {topic}/{partition} is, so the longest \
                 copy is unknown: try again, or name the replica to elect"
            )));
        }
        // The longest log loses least; unknown ends count as shortest, replica order breaks ties.
        let leader = candidates
            .iter()
            .rev()
            .max_by_key(|(_, end)| end.map_or(0, |e| e + 1))
            .map(|&(n, _)| n)
            .ok_or_else(|| {
                BrokerError::InvalidRequest(format!(
                    "no replica of {topic}/{partition} is on a live broker with its copy open: nothing to elect"
                ))
            })?;
        let after = self
            .meta
            .apply(MetadataCommand::ElectUncleanLeader {
                topic: topic.to_string(),
                topic_id: t.id.clone(),
                partition,
                expected_partition_epoch: a.partition_epoch,
                leader,
            })
            .await?;
        tracing::warn!(topic, partition, leader, lost_isr = ?a.isr, "unclean leader election: events only the lost in-sync replicas held are gone");
        metrics::counter!("cascade_unclean_elections_total").increment(1);
        // The election is committed; this node's own roles follow on the next pass if this
        // one fails, so a failure here must not tell the operator it did not happen.
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "reconciling after an unclean election; retried on the next pass");
        }
        Ok(UncleanElection {
            topic: after.topic(topic)?.clone(),
            leader,
            candidates,
        })
    }

    /// The end of `node`'s local copy of the partition: read here for this node, else asked
    /// of that node (its `DescribeTopic` shows its own copy); `None` if it does not answer
    /// within 3 s.
    async fn replica_end(&self, node: u32, topic: &str, partition: u32) -> Option<u64> {
        if node == self.config.node_id {
            return self
                .local_partition(topic, partition)
                .ok()
                .map(|p| p.reader().end_offset());
        }
        let mut client =
            cascade_proto::v1::admin_client::AdminClient::new(self.peer_channel(node).ok()?);
        let req = cascade_proto::v1::DescribeTopicRequest {
            name: topic.to_string(),
        };
        let t = tokio::time::timeout(Duration::from_secs(3), client.describe_topic(req))
            .await
            .ok()?
            .ok()?
            .into_inner();
        t.partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.log_end_offset)
    }

    async fn controller_tick(self: &Arc<Self>) -> Result<()> {
        if !self.meta.is_controller() {
            self.liveness.lock().since_term = None;
            return Ok(());
        }
        let term = self.meta.raft().metrics().borrow().current_term;
        let snap = self.meta.snapshot();
        let me = self.config.node_id;
        let session = self.config.session_timeout;
        let (dead, leaving) = {
            let mut l = self.liveness.lock();
            if l.since_term != Some(term) {
                // New controller: a broker it has never heard from gets a full session before
                // being judged; the others are judged by the heartbeats already received.
                l.since_term = Some(term);
                let now = Instant::now();
                for &id in snap.brokers.keys() {
                    l.last.entry(id).or_insert(now);
                }
            }
            // A broker unfenced since the last tick without this controller doing it has
            // registered again after a restart: that counts as hearing from it (its last
            // heartbeat is from before the restart, and judging by it would fence it again
            // at once, a spurious fence/unfence pair on every rejoin).
            let fenced_now: BTreeSet<u32> = snap
                .brokers
                .values()
                .filter(|b| b.fenced)
                .map(|b| b.node_id)
                .collect();
            let back: Vec<u32> = l
                .fenced_seen
                .difference(&fenced_now)
                .copied()
                .filter(|id| snap.brokers.contains_key(id))
                .collect();
            for id in back {
                tracing::warn!(
                    node = id,
                    fenced = false,
                    "broker liveness changed (registered again)"
                );
                l.last.insert(id, Instant::now());
            }
            l.fenced_seen = fenced_now;
            let now = Instant::now();
            let dead: BTreeSet<u32> = snap
                .brokers
                .keys()
                .copied()
                .filter(|id| *id != me)
                .filter(|id| {
                    l.last
                        .get(id)
                        .is_none_or(|t| now.duration_since(*t) > session)
                })
                .collect();
            (dead, l.leaving.clone())
        };
        for b in snap.brokers.values() {
            let should = dead.contains(&b.node_id);
            if b.fenced != should {
                tracing::warn!(node = b.node_id, fenced = should, "broker liveness changed");
                if !should {
                    // Logged just now: the next tick must not report it again.
                    self.liveness.lock().fenced_seen.remove(&b.node_id);
                }
                self.meta
                    .propose_local(MetadataCommand::SetFenced {
                        node_id: b.node_id,
                        fenced: should,
                    })
                    .await?;
            }
        }
        let snap = self.meta.snapshot();
        let unusable = self.liveness.unusable(&snap);
        let damaged = self.liveness.damaged();
        let updates = plan_partition_updates(&snap, &leaving, &unusable, &damaged);
        if !updates.is_empty() {
            let elections = updates
                .iter()
                .filter(|u| {
                    snap.assignment(&u.topic, u.partition)
                        .is_some_and(|a| a.leader != u.leader)
                })
                .count();
            tracing::info!(
                updates = updates.len(),
                elections,
                "controller: updating partitions"
            );
            // Fencing a broker takes it out of in-sync sets here rather than at the leader,
            // so the controller counts those shrinks itself.
            let shrinks = updates
                .iter()
                .filter(|u| {
                    snap.assignment(&u.topic, u.partition)
                        .is_some_and(|a| u.isr.len() < a.isr.len())
                })
                .count();
            metrics::counter!("cascade_leader_elections_total").increment(elections as u64);
            metrics::counter!("cascade_isr_shrinks_total").increment(shrinks as u64);
            self.meta
                .propose_local(MetadataCommand::UpdatePartitions(updates))
                .await?;
        }
        self.raise_offsets_replication().await
    }

    /// `__consumer_offsets` is created on first use with as many replicas as brokers are live
    /// then, up to `offsets_replication_factor`; a cluster whose first group appeared while
    /// only one broker was up would keep every committed offset on that broker alone. Raise
    /// it as brokers become live (the new replicas join the in-sync set once caught up).
    async fn raise_offsets_replication(self: &Arc<Self>) -> Result<()> {
        let snap = self.meta.snapshot();
        let Some(t) = snap.topics.get(OFFSETS_TOPIC) else {
            return Ok(());
        };
        let live = snap.live_brokers().len() as u32;
        let want = self.config.offsets_replication_factor.min(live);
        if t.replication_factor >= want {
            // Once every partition's in-sync set has caught up, `min.insync.replicas` follows
            // the creation rule (`rf.min(2)`): raised earlier, it would refuse commits while
            // the new replicas were still catching up.
            let min = t.replication_factor.min(2);
            if t.config.min_insync_replicas < min
                && t.partitions.iter().all(|p| p.isr.len() as u32 >= min)
            {
                tracing::info!(min, "raising min.insync.replicas of {OFFSETS_TOPIC}");
                self.meta
                    .propose_local(MetadataCommand::AlterConfig {
                        name: OFFSETS_TOPIC.into(),
                        config: cascade_types::TopicConfig {
                            min_insync_replicas: min,
                            ..t.config.clone()
                        },
                    })
                    .await?;
            }
            return Ok(());
        }
        tracing::info!(
            from = t.replication_factor,
            to = want,
            "raising the replication factor of {OFFSETS_TOPIC} now that enough brokers are live"
        );
        self.meta
            .propose_local(MetadataCommand::RaiseReplicationFactor {
                name: OFFSETS_TOPIC.into(),
                topic_id: t.id.clone(),
                replication_factor: want,
            })
            .await?;
        Ok(())
    }
}

/// The controller's decision for every partition, given who is fenced (in `snap`), who is
/// shutting down, which replicas their brokers reported they cannot serve (`unusable`:
/// topic, partition, node; offline or under repair) and which of those may have lost events
/// (`damaged`: they must not stay eligible leader replicas). Pure, so it is tested without a
/// cluster.
pub fn plan_partition_updates(
    snap: &ClusterMetadata,
    leaving: &BTreeSet<u32>,
    unusable: &BTreeSet<(String, u32, u32)>,
    damaged: &BTreeSet<(String, u32, u32)>,
) -> Vec<PartitionUpdate> {
    let mut out = Vec::new();
    for t in snap.topics.values() {
        for (i, a) in t.partitions.iter().enumerate() {
            let key = |id: u32| (t.name.clone(), i as u32, id);
            let usable = |id: &u32| {
                snap.brokers.get(id).is_some_and(|b| !b.fenced)
                    && !leaving.contains(id)
                    && !unusable.contains(&key(*id))
            };
            let ineligible: Vec<u32> = a
                .isr
                .iter()
                .chain(&a.elr)
                .copied()
                .filter(|&id| damaged.contains(&key(id)))
                .collect();
            let live_isr: Vec<u32> = a.isr.iter().copied().filter(|id| usable(id)).collect();
            // With no in-sync replica able to lead, an eligible leader replica that can (it
            // holds every acknowledged event, see `PartitionAssignment::elr`).
            let from_elr = if live_isr.is_empty() {
                a.replicas
                    .iter()
                    .copied()
                    .find(|r| a.elr.contains(r) && usable(r) && !ineligible.contains(r))
            } else {
                None
            };
            // Never empty the in-sync set: with no live member it keeps its last members, who
            // alone hold every acknowledged event.
            let isr = match from_elr {
                Some(r) => vec![r],
                None if live_isr.is_empty() => a.isr.clone(),
                None => live_isr.clone(),
            };
            let preferred = a.replicas.iter().copied().find(|r| live_isr.contains(r));
            let leader = if a.leader != 0 && usable(&a.leader) && live_isr.contains(&a.leader) {
                // Move back to the preferred replica when it is in sync.
                match a.replicas.first() {
                    Some(&p) if p != a.leader && live_isr.contains(&p) => p,
                    _ => a.leader,
                }
            } else {
                from_elr.or(preferred).unwrap_or(0)
            };
            let drops_eligible = a.elr.iter().any(|r| ineligible.contains(r));
            if leader != a.leader || isr != a.isr || drops_eligible {
                out.push(PartitionUpdate {
                    topic: t.name.clone(),
                    topic_id: t.id.clone(),
                    partition: i as u32,
                    expected_partition_epoch: a.partition_epoch,
                    leader,
                    isr,
                    ineligible,
                });
            }
        }
    }
    out
}

/// The internal `Controller` gRPC service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    broker: Arc<Broker>,
}

impl ControllerService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    fn not_controller(&self) -> Status {
        let hint = self.broker.meta.controller_id().and_then(|c| {
            self.broker
                .meta
                .member_addr(c)
                .map(|addr| cascade_proto::LeaderHint {
                    node_id: c,
                    grpc_addr: addr,
                })
        });
        Status::from(BrokerError::NotLeader {
            node: self.broker.config.node_id,
            topic: "(metadata)".into(),
            partition: 0,
            leader: hint,
        })
    }

    async fn forward_join(&self, req: JoinRequest) -> Result<Response<JoinResponse>, Status> {
        let c = self
            .broker
            .meta
            .controller_id()
            .ok_or_else(|| self.not_controller())?;
        let addr = self
            .broker
            .meta
            .member_addr(c)
            .ok_or_else(|| self.not_controller())?;
        let ch =
            crate::raft::network::channel(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
        ControllerClient::new(ch).join(req).await
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = req.into_inner();
        let b = &self.broker;
        if !b.meta.is_controller() {
            return self.forward_join(r).await;
        }
        let id = u64::from(r.node_id);
        tracing::info!(node = r.node_id, addr = %r.grpc_addr, "node joining");
        let raft = b.meta.raft();
        let learner = BasicNode {
            addr: r.grpc_addr.clone(),
        };
        b.meta
            .raft_call(raft.add_learner(id, learner, true))
            .await
            .map_err(Status::from)?
            .map_err(|e| Status::unavailable(format!("adding learner: {e}")))?;
        let voters: BTreeSet<u64> = b.meta.voters().into_iter().map(u64::from).collect();
        if !voters.contains(&id) {
            let mut all = voters;
            all.insert(id);
            b.meta
                .raft_call(raft.change_membership(all, false))
                .await
                .map_err(Status::from)?
                .map_err(|e| Status::unavailable(format!("adding voter: {e}")))?;
        }
        // Heard before it is registered unfenced: the liveness check runs beside this call and,
        // between the two, would see an unfenced broker last heard before its restart and fence
        // it again (a spurious fence/unfence pair on every rejoin).
        b.liveness.heard(r.node_id, false, Vec::new());
        b.meta
            .propose_local(MetadataCommand::RegisterBroker(BrokerInfo {
                node_id: r.node_id,
                grpc_addr: r.grpc_addr,
                http_addr: r.http_addr,
                fenced: false,
                ..Default::default()
            }))
            .await
            .map_err(Status::from)?;
        Ok(Response::new(JoinResponse {
            controller_id: b.config.node_id,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<BrokerHeartbeatRequest>,
    ) -> Result<Response<BrokerHeartbeatResponse>, Status> {
        let r = req.into_inner();
        let b = &self.broker;
        // Every node keeps the table (see `send_heartbeat`); only the controller acts on it.
        b.liveness.heard(r.node_id, r.shutting_down, r.problems);
        Ok(Response::new(BrokerHeartbeatResponse {
            controller_id: b.meta.controller_id().unwrap_or(0),
            leaderships: b.leaderships_of(r.node_id),
        }))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let b = &self.broker;
        if !b.meta.is_controller() {
            return Err(self.not_controller());
        }
        let cmd: MetadataCommand = serde_json::from_slice(&req.get_ref().command_json)
            .map_err(|e| Status::invalid_argument(format!("bad command: {e}")))?;
        let applied = b.meta.propose_local(cmd).await.map_err(Status::from)?;
        Ok(Response::new(ProposeResponse {
            version: applied.version,
            producer_id: applied.producer.map(|(id, _)| id),
            producer_epoch: applied.producer.map(|(_, e)| i32::from(e)),
        }))
    }

    async fn identify(
        &self,
        _req: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        let b = &self.broker;
        Ok(Response::new(IdentifyResponse {
            node_id: b.config.node_id,
            member: b.meta.is_member().await.map_err(Status::from)?,
            cluster_id: b.meta.snapshot().cluster_id.clone(),
            incarnation: b.incarnation(),
        }))
    }

    async fn read_version(
        &self,
        _req: Request<ReadVersionRequest>,
    ) -> Result<Response<ReadVersionResponse>, Status> {
        let b = &self.broker;
        if !b.meta.is_controller() {
            return Err(self.not_controller());
        }
        let version = b.meta.confirmed_version().await.map_err(Status::from)?;
        Ok(Response::new(ReadVersionResponse { version }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{PartitionAssignment, TopicMeta};
    use cascade_types::TopicConfig;

    fn cluster(fenced: &[u32], parts: Vec<PartitionAssignment>) -> ClusterMetadata {
        let mut m = ClusterMetadata::default();
        for id in 1..=3 {
            m.brokers.insert(
                id,
                BrokerInfo {
                    node_id: id,
                    grpc_addr: format!("n{id}"),
                    http_addr: String::new(),
                    fenced: fenced.contains(&id),
                    ..Default::default()
                },
            );
        }
        m.topics.insert(
            "t".into(),
            TopicMeta {
                name: "t".into(),
                id: "id".into(),
                partitions: parts,
                replication_factor: 3,
                config: TopicConfig::default(),
                internal: false,
                created_ms: 0,
            },
        );
        m
    }

    fn part(leader: u32, isr: &[u32]) -> PartitionAssignment {
        PartitionAssignment {
            replicas: vec![1, 2, 3],
            leader,
            leader_epoch: 4,
            isr: isr.to_vec(),
            partition_epoch: 7,
            unclean_leader_epoch: None,
            elr: Vec::new(),
        }
    }

    #[test]
    fn dead_leader_is_replaced_by_a_live_in_sync_replica() {
        let m = cluster(&[1], vec![part(1, &[1, 2, 3])]);
        let u = plan_partition_updates(&m, &BTreeSet::new(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].leader, 2);
        assert_eq!(u[0].isr, vec![2, 3]);
        assert_eq!(u[0].expected_partition_epoch, 7);
    }

    #[test]
    fn only_in_sync_replicas_are_elected() {
        // 3 is alive but out of sync: the partition goes offline rather than lose data.
        let m = cluster(&[1, 2], vec![part(1, &[1, 2])]);
        let u = plan_partition_updates(&m, &BTreeSet::new(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(u[0].leader, 0);
        assert_eq!(u[0].isr, vec![1, 2], "the last in-sync set is kept");
        // When 2 comes back it leads.
        let mut m2 = cluster(&[1], vec![part(0, &[1, 2])]);
        m2.topics.get_mut("t").unwrap().partitions[0].leader = 0;
        let u = plan_partition_updates(&m2, &BTreeSet::new(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!((u[0].leader, u[0].isr.clone()), (2, vec![2]));
    }

    #[test]
    fn dead_follower_leaves_the_isr_and_healthy_partitions_are_untouched() {
        let m = cluster(&[3], vec![part(1, &[1, 2, 3]), part(2, &[1, 2])]);
        let u = plan_partition_updates(&m, &BTreeSet::new(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(u.len(), 2);
        assert_eq!((u[0].leader, u[0].isr.clone()), (1, vec![1, 2]));
        // The second moves back to its preferred replica 1, which is in sync.
        assert_eq!((u[1].leader, u[1].isr.clone()), (1, vec![1, 2]));
        let healthy = cluster(&[], vec![part(1, &[1, 2, 3])]);
        assert!(
            plan_partition_updates(
                &healthy,
                &BTreeSet::new(),
                &BTreeSet::new(),
                &BTreeSet::new()
            )
            .is_empty()
        );
    }

    /// With no in-sync replica able to lead, the controller elects an eligible leader
    /// replica (in replica order) that is live, open and not damaged, and drops damaged ones
    /// from the eligible set; with a live in-sync replica it never looks at them.
    #[test]
    fn an_eligible_leader_replica_leads_when_no_in_sync_replica_can() {
        let with_elr = |leader: u32, isr: &[u32], elr: &[u32]| PartitionAssignment {
            elr: elr.to_vec(),
            ..part(leader, isr)
        };
        let (nobody, none) = (BTreeSet::new(), BTreeSet::new());
        let key = |node: u32| ("t".to_string(), 0, node);
        // Leader 1 is fenced; 2 and 3 are eligible: 2 leads alone in sync.
        let m = cluster(&[1], vec![with_elr(1, &[1], &[2, 3])]);
        let u = plan_partition_updates(&m, &nobody, &none, &none);
        assert_eq!((u[0].leader, &u[0].isr[..]), (2, &[2][..]), "{u:?}");
        assert!(u[0].ineligible.is_empty(), "fenced is not damaged: {u:?}");
        // 2 cannot serve (offline): 3.
        let offline: BTreeSet<_> = [key(2)].into();
        let u = plan_partition_updates(&m, &nobody, &offline, &none);
        assert_eq!(u[0].leader, 3, "{u:?}");
        // 2 is damaged: 3 leads and 2 leaves the eligible set.
        let u = plan_partition_updates(&m, &nobody, &offline, &offline);
        assert_eq!((u[0].leader, &u[0].ineligible[..]), (3, &[2][..]), "{u:?}");
        // Every eligible one down: offline, the in-sync set kept.
        let m = cluster(&[1, 2, 3], vec![with_elr(1, &[1], &[2, 3])]);
        let u = plan_partition_updates(&m, &nobody, &none, &none);
        assert_eq!((u[0].leader, &u[0].isr[..]), (0, &[1][..]), "{u:?}");
        // A live in-sync replica leads; a damaged eligible one is still dropped.
        let m = cluster(&[], vec![with_elr(1, &[1], &[2, 3])]);
        assert!(plan_partition_updates(&m, &nobody, &none, &none).is_empty());
        let damaged: BTreeSet<_> = [key(3)].into();
        let u = plan_partition_updates(&m, &nobody, &damaged, &damaged);
        assert_eq!((u[0].leader, &u[0].isr[..]), (1, &[1][..]), "{u:?}");
        assert_eq!(u[0].ineligible, [3], "{u:?}");
    }

    #[test]
    fn a_leaving_broker_hands_over_leadership() {
        let m = cluster(&[], vec![part(1, &[1, 2, 3])]);
        let leaving: BTreeSet<u32> = [1].into();
        let u = plan_partition_updates(&m, &leaving, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!((u[0].leader, u[0].isr.clone()), (2, vec![2, 3]));
    }

    /// A replica its broker reports offline (or under repair) hands over leadership and
    /// leaves the in-sync set, unless it is the last live in-sync copy; the same partition on
    /// other nodes, and other partitions on that node, are untouched.
    #[test]
    fn a_replica_reported_unusable_hands_over_and_leaves_the_isr() {
        let m = cluster(
            &[],
            vec![part(1, &[1, 2, 3]), part(1, &[1, 2, 3]), part(1, &[1])],
        );
        let unusable: BTreeSet<(String, u32, u32)> =
            [("t".to_string(), 0, 1), ("t".to_string(), 2, 1)].into();
        let u = plan_partition_updates(&m, &BTreeSet::new(), &unusable, &BTreeSet::new());
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(
            (u[0].partition, u[0].leader, u[0].isr.clone()),
            (0, 2, vec![2, 3])
        );
        // Partition 2: node 1 is its only in-sync replica; the set is never emptied, and the
        // partition is offline (no leader) until the replica can serve again.
        assert_eq!(
            (u[1].partition, u[1].leader, u[1].isr.clone()),
            (2, 0, vec![1])
        );
    }

    #[test]
    fn a_full_disk_hands_over_only_when_another_in_sync_replica_can_write() {
        let m = cluster(
            &[],
            vec![part(1, &[1, 2, 3]), part(1, &[1]), part(1, &[1, 2])],
        );
        let problem = |partition: u32, state: &str| ReplicaProblem {
            topic: "t".into(),
            partition,
            state: state.into(),
            reason: "no space left on device".into(),
        };
        let l = Liveness::default();
        // Node 1 is full everywhere; node 2's replica of partition 2 is offline.
        l.heard(
            1,
            false,
            vec![
                problem(0, DISK_FULL),
                problem(1, DISK_FULL),
                problem(2, DISK_FULL),
            ],
        );
        l.heard(2, false, vec![problem(2, "offline")]);
        let unusable = l.unusable(&m);
        // Partition 0 has writable in-sync replicas: node 1 hands over. Partitions 1 and 2
        // have none (alone; beside an offline one): node 1 keeps leading, for reads and for
        // the writes that come once space returns, rather than leaving them with no leader.
        assert!(unusable.contains(&("t".to_string(), 0, 1)), "{unusable:?}");
        assert!(!unusable.contains(&("t".to_string(), 1, 1)), "{unusable:?}");
        assert!(!unusable.contains(&("t".to_string(), 2, 1)), "{unusable:?}");
        assert!(unusable.contains(&("t".to_string(), 2, 2)), "{unusable:?}");
        let u = plan_partition_updates(&m, &BTreeSet::new(), &unusable, &BTreeSet::new());
        let leaders: Vec<(u32, u32)> = u.iter().map(|u| (u.partition, u.leader)).collect();
        assert_eq!(leaders, vec![(0, 2), (2, 1)], "{u:?}");
        assert_eq!(
            u[1].isr,
            vec![1],
            "the offline replica leaves the in-sync set"
        );
    }

    /// The leader an operator elected uncleanly still reports the damage it had (its node
    /// clears the report only as it takes the role, up to a heartbeat later): the controller
    /// must not demote it for that damage, or the next tick would undo the election. The same
    /// damage on a leader elected the ordinary way still takes it out.
    #[test]
    fn an_uncleanly_elected_leader_is_not_demoted_for_the_damage_it_was_elected_with() {
        let mut elected = part(2, &[2]);
        elected.unclean_leader_epoch = Some(elected.leader_epoch);
        let stale = PartitionAssignment {
            unclean_leader_epoch: Some(elected.leader_epoch - 1),
            ..part(2, &[2])
        };
        let m = cluster(&[], vec![elected, stale, part(2, &[2, 3])]);
        let l = Liveness::default();
        let repairing = |partition: u32| ReplicaProblem {
            topic: "t".into(),
            partition,
            state: "repairing".into(),
            reason: "damaged log: valid up to offset 100".into(),
        };
        l.heard(2, false, vec![repairing(0), repairing(1), repairing(2)]);
        let unusable = l.unusable(&m);
        assert!(!unusable.contains(&("t".to_string(), 0, 2)), "{unusable:?}");
        assert!(unusable.contains(&("t".to_string(), 1, 2)), "{unusable:?}");
        assert!(unusable.contains(&("t".to_string(), 2, 2)), "{unusable:?}");
        let u = plan_partition_updates(&m, &BTreeSet::new(), &unusable, &BTreeSet::new());
        assert!(u.iter().all(|u| u.partition != 0), "{u:?}");
        assert_eq!(
            u.iter().find(|u| u.partition == 2).map(|u| u.leader),
            Some(3)
        );
    }
}
