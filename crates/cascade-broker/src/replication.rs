//! Partition replication: followers pull from the leader (the Kafka design).
//!
//! Follower side — one fetcher task per followed partition ([`Broker::start_fetcher`]):
//! 1. **Truncate first** (KIP-279): ask the leader where this replica's latest epoch ends in
//!    the leader's log and cut the local log there, so a suffix written under an old leader
//!    that the new leader never had is dropped before anything is copied.
//! 2. **Fetch in a loop** from the local end: append the batches as they are (offsets and
//!    epochs kept; fsync'd by the actor's group commit under `flush=always`), then take the
//!    leader's high watermark (capped by the local end). Fetching from offset N tells the
//!    leader "everything below N is durable here": that is the follower's acknowledgement.
//!    Each fetch names the epoch of the local last batch; a leader that answers `diverging`
//!    (or an append that no longer fits the local end) sends the fetcher back to step 1.
//!
//! Invariant: what a follower appends, and what a leader credits it with, is the log of the
//! epoch the fetch named. Truncating once per leader is not enough for that:
//! - a fetch waits at the leader; a leader that hands over meanwhile copies its successor's
//!   batches into the very log the wait reads, so the leader reads first, then checks that
//!   it still leads the epoch (a replica leads an epoch once), and answers not-leader if not;
//! - the follower refuses batches of an epoch newer than the one it follows, and a response
//!   that no longer starts at its log end records no epoch and sends it back to step 1;
//! - each fetch names the epoch of the follower's last batch, and the leader answers
//!   `diverging` (crediting nothing) unless its own batch below the fetch offset is of that
//!   epoch (Kafka's last-fetched-epoch check), which also sends the follower back to step 1.
//!
//! (Found by the StatefulSet rolling-restart run: an in-sync follower held an old leader's
//! batches under its new leader's, at offsets where the leader held others.)
//!
//! Leader side — [`Broker::replica_fetch`]: checks the epoch and that the follower's log
//! agrees with its own below the fetch offset, records the follower's progress,
//! recomputes the high watermark, proposes adding the follower back to the in-sync set once it
//! has caught up to the high watermark, and answers with the batches from the fetch offset
//! (long-polling the log end, then checking it still leads the fetch's epoch). [`Broker::check_isr`] (periodic) proposes removing followers
//! that have not caught up for `replica_lag_max`. In-sync set changes go through the
//! controller as compare-and-set updates on the partition epoch.

use crate::broker::Broker;
use crate::epochs::{Divergence, diverges, find_divergence, last_batch_epoch};
use crate::error::{BrokerError, Result};
use crate::metadata::{MetadataCommand, PartitionUpdate};
use crate::partition::{FollowerProgress, Partition, Role};
use cascade_proto::internal::replication_client::ReplicationClient;
use cascade_proto::internal::replication_server::Replication;
use cascade_proto::internal::{
    EpochEndOffsetRequest, EpochEndOffsetResponse, ReplicaFetchRequest, ReplicaFetchResponse,
};
use cascade_proto::v1::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Bytes a follower asks for per fetch.
const FETCH_BYTES: u32 = 4 << 20;
/// How long the leader holds a fetch that finds nothing new.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// How often a follower whose local storage failed (a full disk) tries again.
const STORAGE_RETRY: Duration = Duration::from_secs(2);

/// How one round of a follower's fetch loop ended.
enum Fetched {
    /// Batches appended (or none were new).
    Done,
    /// The leader found the local log diverging, or the batches no longer fit the local end:
    /// truncate against the leader again before the next fetch.
    TruncateAgain,
}

/// Running fetchers and channels to peers.
#[derive(Debug, Default)]
pub struct Fetchers {
    running: Mutex<HashMap<(String, u32), CancellationToken>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Broker {
    /// A channel to a broker's gRPC address (cached per address).
    pub fn peer_channel(&self, node_id: u32) -> Result<Channel> {
        let addr = self
            .meta
            .snapshot()
            .brokers
            .get(&node_id)
            .map(|b| b.grpc_addr.clone())
            .ok_or_else(|| BrokerError::NoController(format!("broker {node_id} is not known")))?;
        let mut ch = self
            .fetchers
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = ch.get(&addr) {
            return Ok(c.clone());
        }
        let c = crate::raft::network::channel(&addr)
            .map_err(|e| BrokerError::NoController(format!("{addr}: {e}")))?;
        ch.insert(addr, c.clone());
        Ok(c)
    }

    pub(crate) fn stop_fetcher(&self, topic: &str, partition: u32) {
        let t = self
            .fetchers
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(topic.to_string(), partition));
        if let Some(t) = t {
            t.cancel();
        }
    }

    pub(crate) fn start_fetcher(self: &Arc<Self>, part: Arc<Partition>, leader: u32, epoch: i32) {
        let token = self.shutdown.child_token();
        let key = (part.topic.to_string(), part.index);
        if let Some(old) = self
            .fetchers
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, token.clone())
        {
            old.cancel();
        }
        let broker = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = broker.follow(part.clone(), leader, epoch) => {}
            }
        });
    }

    /// The fetcher loop of one followed partition. Returns only when cancelled (role change);
    /// local storage errors are retried every [`STORAGE_RETRY`].
    async fn follow(self: &Arc<Self>, part: Arc<Partition>, leader: u32, epoch: i32) {
        let me = self.config.node_id;
        let mut truncated = false;
        // Truncation rounds asked for in a row (see `Fetched::TruncateAgain`).
        let mut again = 0u32;
        let mut backoff = Duration::from_millis(50);
        let mut storage_failing: Option<String> = None;
        loop {
            // A replica whose disk filled up does not fetch until a probe write shows space
            // again: fetching, it would look caught up to the leader (nothing new to write,
            // so nothing fails) and be readmitted to the in-sync set, which the controller
            // undoes while the replica reports its full disk, over and over.
            if part.disk_full().is_some() {
                match self.probe_space(&part) {
                    Ok(()) => part.clear_disk_full(),
                    Err(_) => {
                        tokio::time::sleep(STORAGE_RETRY).await;
                        continue;
                    }
                }
            }
            let r = async {
                // One round trip under the gate a damaged-log repair closes (see
                // `Partition::hold_fetches`).
                let _permit = part.fetch_permit().await;
                let mut client = ReplicationClient::new(self.peer_channel(leader)?)
                    .max_decoding_message_size(64 << 20);
                if !truncated {
                    self.truncate_to_leader(&mut client, &part, epoch).await?;
                    truncated = true;
                }
                let fetch_offset = part.reader().end_offset();
                // The epoch of the last batch: the latest entry that starts below the end.
                // Not simply the latest entry: a replica that took the leader role and wrote
                // nothing in it keeps an entry at its end, an epoch its successor may never
                // have had, and naming it would be answered `diverging` on every fetch.
                let last_fetched_epoch = last_batch_epoch(part.epochs().entries(), fetch_offset);
                let partition_epoch = self
                    .meta
                    .snapshot()
                    .assignment(&part.topic, part.index)
                    .map_or(-1, |a| a.partition_epoch);
                let mut req = Request::new(ReplicaFetchRequest {
                    partition_epoch,
                    topic: part.topic.to_string(),
                    topic_id: part.topic_id.to_string(),
                    partition: part.index,
                    replica_id: me,
                    leader_epoch: epoch,
                    fetch_offset,
                    max_bytes: FETCH_BYTES,
                    max_wait_ms: FETCH_WAIT.as_millis() as u32,
                    last_fetched_epoch,
                });
                req.set_timeout(FETCH_WAIT + Duration::from_secs(5));
                let resp = match client.fetch(req).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => {
                        let code = cascade_proto::error_code_of(&s);
                        if code == Some(ErrorCode::OffsetOutOfRange) {
                            // Below the leader's log start, or past its end after a leader
                            // change: re-run truncation, which also handles the empty case.
                            truncated = false;
                        }
                        return Err(BrokerError::from_remote(&s));
                    }
                };
                if resp.diverging {
                    tracing::info!(topic = %part.topic, partition = part.index, leader, epoch, fetch_offset, ?last_fetched_epoch, "the leader finds this replica's log diverging from its own: truncating again");
                    truncated = false;
                    return Ok(Fetched::TruncateAgain);
                }
                if !resp.records.is_empty() {
                    match part.append_replicated(resp.records.to_vec(), epoch).await {
                        Err(BrokerError::Storage(cascade_log::LogError::NonContiguous {
                            expected,
                            got,
                        })) => {
                            // The local end moved since this fetch was sent (only a cut or
                            // another append can move it): check against the leader again.
                            tracing::info!(topic = %part.topic, partition = part.index, leader, epoch, expected, got, "fetched batches no longer fit the local log end: truncating again");
                            truncated = false;
                            return Ok(Fetched::TruncateAgain);
                        }
                        r => {
                            r?;
                        }
                    }
                }
                {
                    let mut r = part.lock_repl();
                    r.leader_hw = r.leader_hw.max(resp.high_watermark);
                }
                part.update_hw();
                Ok::<Fetched, BrokerError>(Fetched::Done)
            }
            .await;
            match r {
                Ok(Fetched::Done) => {
                    if storage_failing.take().is_some() {
                        tracing::warn!(topic = %part.topic, partition = part.index, "follower storage works again; replicating");
                    }
                    backoff = Duration::from_millis(50);
                    again = 0;
                }
                Ok(Fetched::TruncateAgain) => {
                    // Once is the normal case (the log moved, or a suffix slipped through);
                    // over and over means this replica and the leader disagree about where
                    // their logs part: back off rather than spin, and say so.
                    again += 1;
                    if again > 1 {
                        if again == 5 {
                            tracing::warn!(topic = %part.topic, partition = part.index, leader, epoch, "the leader keeps finding this replica's log diverging after truncation; retrying with back-off");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
                Err(BrokerError::Storage(e)) => {
                    // A full disk (ENOSPC) is often transient: the failed append was rolled
                    // back, so keep trying, slowly, and rejoin once space returns. A poisoned
                    // log (a failed fsync) keeps failing here until the replica is reopened.
                    // Meanwhile the leader drops this replica from the in-sync set.
                    let msg = e.to_string();
                    if storage_failing.as_deref() != Some(msg.as_str()) {
                        tracing::error!(topic = %part.topic, partition = part.index, error = %msg, "follower storage failed; retrying every few seconds");
                        storage_failing = Some(msg);
                    }
                    tokio::time::sleep(STORAGE_RETRY).await;
                }
                Err(e) => {
                    tracing::debug!(topic = %part.topic, partition = part.index, leader, error = %e, "replica fetch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Writes and fsyncs a small file beside the partition's directory (`<p>.space-probe`;
    /// the directory is the storage engine's), on the partition's file system, then removes
    /// it: Ok once the disk takes writes again.
    fn probe_space(&self, part: &Partition) -> std::io::Result<()> {
        let fs = &self.config.log_fs;
        let path = crate::epochs::sibling(part.dir(), "space-probe");
        let r = fs.open(&path, true).and_then(|f| {
            f.write_all_at(&[0u8; 4096], 0)?;
            f.sync_data()
        });
        let _ = fs.remove_file(&path);
        r
    }

    /// KIP-279 truncation: cut the local log where the leader's log diverges from it (see
    /// [`find_divergence`] for why it takes as many rounds as it takes), and restart it empty at
    /// the leader's log start when it ends before it: a replica that was away while retention
    /// deleted the leader's older segments can never fetch the gap.
    async fn truncate_to_leader(
        &self,
        client: &mut ReplicationClient<Channel>,
        part: &Partition,
        epoch: i32,
    ) -> Result<()> {
        let local_end = part.reader().end_offset();
        let ask = |requested_epoch: i32| {
            let mut client = client.clone();
            let req = EpochEndOffsetRequest {
                topic: part.topic.to_string(),
                partition: part.index,
                leader_epoch: epoch,
                requested_epoch,
            };
            async move {
                let r = client
                    .epoch_end_offset(req)
                    .await
                    .map_err(|s| BrokerError::from_remote(&s))?
                    .into_inner();
                Ok::<_, BrokerError>((r.epoch, r.end_offset))
            }
        };
        // The answer for epoch -1 is (-1, leader log start).
        let (_, leader_start) = ask(-1).await?;
        let entries = part.epochs().entries().to_vec();
        if entries.is_empty() {
            // Nothing stamped here (an empty log, or data from before epochs were kept):
            // start from what the leader has, keeping nothing we cannot vouch for.
            // (An empty replica at 0 whose leader starts later, a replaced disk, restarts
            // there too: it could never fetch offset 0.)
            let has_data = local_end > 0 || part.reader().start_offset() > 0;
            if (has_data && local_end != leader_start) || local_end < leader_start {
                tracing::warn!(topic = %part.topic, partition = part.index, local_end, leader_start, "no epoch history: restarting the replica from the leader's log start");
                part.truncate_fully(leader_start, Some(epoch)).await?;
            }
            return Ok(());
        }
        let divergence = find_divergence(&entries, local_end, ask).await?;
        tracing::debug!(topic = %part.topic, partition = part.index, epoch, local_end, ?entries, ?divergence, "truncation point against the leader");
        match divergence {
            Divergence::CutAt(c) if c < part.reader().start_offset() => {
                // The divergence is below what retention left here: nothing local is shared.
                let start = c.max(leader_start);
                tracing::warn!(topic = %part.topic, partition = part.index, cut = c, start, "divergence below this replica's log start: restarting it");
                part.truncate_fully(start, Some(epoch)).await?;
                return Ok(());
            }
            Divergence::CutAt(c) if c < local_end => {
                let end = part.truncate(c, Some(epoch)).await?;
                tracing::info!(topic = %part.topic, partition = part.index, from = local_end, to = end, "truncated a divergent suffix");
            }
            Divergence::CutAt(_) => {}
            Divergence::Restart(start) => {
                tracing::warn!(topic = %part.topic, partition = part.index, "leader holds none of this replica's epochs: restarting from the leader's log start");
                part.truncate_fully(start, Some(epoch)).await?;
                return Ok(());
            }
        }
        let end = part.reader().end_offset();
        if end < leader_start {
            tracing::warn!(topic = %part.topic, partition = part.index, end, leader_start, "this replica ends before the leader's log start (retention ran meanwhile): restarting it from there");
            part.truncate_fully(leader_start, Some(epoch)).await?;
        }
        Ok(())
    }

    fn leading(&self, topic: &str, partition: u32, epoch: i32) -> Result<Arc<Partition>> {
        let part = self.local_partition(topic, partition)?;
        match part.role() {
            Role::Leader { epoch: e } if e == epoch && part.serves_followers_of(epoch) => Ok(part),
            Role::Leader { epoch: e } if epoch < e => Err(BrokerError::FencedLeaderEpoch {
                topic: topic.to_string(),
                partition,
                got: epoch,
                current: e,
            }),
            _ => Err(BrokerError::NotLeader {
                node: self.config.node_id,
                topic: topic.to_string(),
                partition,
                leader: None,
            }),
        }
    }

    /// Leader side of a follower's fetch. See the module docs.
    pub async fn replica_fetch(
        self: &Arc<Self>,
        r: ReplicaFetchRequest,
    ) -> Result<ReplicaFetchResponse> {
        let part = self.leading(&r.topic, r.partition, r.leader_epoch)?;
        if *part.topic_id != r.topic_id {
            return Err(BrokerError::UnknownTopic(r.topic.clone()));
        }
        let reader = part.reader().clone();
        let (start, end) = (reader.start_offset(), reader.end_offset());
        if r.fetch_offset < start || r.fetch_offset > end {
            return Err(BrokerError::OffsetOutOfRange {
                topic: r.topic.clone(),
                partition: r.partition,
                requested: r.fetch_offset,
                start,
                end,
            });
        }
        if let Some(last) = r.last_fetched_epoch
            && diverges(&part.epochs(), last, r.fetch_offset, start, end)
        {
            tracing::info!(topic = %r.topic, partition = r.partition, follower = r.replica_id, last_fetched_epoch = last, fetch_offset = r.fetch_offset, "a follower's log diverges from this leader's: it truncates before fetching");
            return Ok(ReplicaFetchResponse {
                records: Default::default(),
                high_watermark: part.high_watermark(),
                log_start_offset: start,
                log_end_offset: end,
                diverging: true,
            });
        }
        self.record_follower(&part, r.replica_id, r.fetch_offset, r.partition_epoch);
        // Long-poll until something past the fetch offset is acknowledged locally, or the
        // role changes (the follower then hears at once that this replica stopped leading).
        let mut end_rx = part.watch_end();
        let mut role_rx = part.watch_role();
        let wait = Duration::from_millis(u64::from(r.max_wait_ms).min(5_000));
        let _ = tokio::time::timeout(wait, async {
            loop {
                if *end_rx.borrow_and_update() > r.fetch_offset
                    || *role_rx.borrow_and_update()
                        != (Role::Leader {
                            epoch: r.leader_epoch,
                        })
                    || self.shutdown.is_cancelled()
                {
                    return;
                }
                tokio::select! {
                    r = end_rx.changed() => if r.is_err() { return },
                    r = role_rx.changed() => if r.is_err() { return },
                }
            }
        })
        .await;
        let limit = *part.watch_end().borrow();
        let max = (r.max_bytes as usize).clamp(1, 64 << 20);
        let fetched =
            tokio::task::spawn_blocking(move || reader.read_until(r.fetch_offset, max, limit))
                .await
                .map_err(|e| BrokerError::Metadata(format!("read panicked: {e}")))??;
        // Only what was read while this replica still led `leader_epoch` is that leader's log.
        // A leader that stepped down during the wait cuts its log and copies its new leader's
        // batches, possibly at the very offsets asked for: sent as this epoch's, they would sit
        // above the follower's own batches of this epoch, a mix no truncation finds (the
        // rolling-restart run found followers holding one leader's batches followed by
        // another's, in sync). A replica leads an epoch once, so the role being unchanged
        // now means it was unchanged during the read.
        self.still_leading(&part, &r.topic, r.partition, r.leader_epoch)?;
        Ok(ReplicaFetchResponse {
            records: fetched.data,
            high_watermark: part.high_watermark(),
            log_start_offset: fetched.start_offset,
            log_end_offset: limit,
            diverging: false,
        })
    }

    fn record_follower(
        self: &Arc<Self>,
        part: &Arc<Partition>,
        follower: u32,
        end: u64,
        partition_epoch: i32,
    ) {
        let now = Instant::now();
        // Only a fetch sent after the latest ISR change may bring a follower back (see the
        // proto's `partition_epoch`).
        let current = self
            .meta
            .snapshot()
            .assignment(&part.topic, part.index)
            .map_or(i32::MAX, |a| a.partition_epoch);
        let fresh = partition_epoch >= current;
        let published_hw = part.high_watermark();
        // A broker shutting down keeps fetching until it stops, but the controller has just
        // taken it out of the in-sync set: adding it back would leave a member that is about
        // to exit, and every acks=all write would wait for it until its session timed out.
        let leaving = self.liveness.is_leaving(follower);
        let expand = {
            let mut r = part.lock_repl();
            if !r.replicas.contains(&follower) {
                return;
            }
            let leader_end = r.local_end;
            let f = r.followers.entry(follower).or_insert(FollowerProgress {
                end: 0,
                last_fetch: now,
                leader_end_at_last_fetch: 0,
                last_caught_up: now,
            });
            if end >= leader_end {
                f.last_caught_up = now;
            } else if end >= f.leader_end_at_last_fetch {
                f.last_caught_up = f.last_caught_up.max(f.last_fetch);
            }
            f.end = end;
            f.last_fetch = now;
            f.leader_end_at_last_fetch = leader_end;
            let expand = fresh && !leaving && r.may_rejoin_isr(follower, end, published_hw);
            if expand {
                r.isr_change_pending = true;
                r.pending_isr_add = Some(follower);
            }
            expand
        };
        part.update_hw();
        if expand {
            let base = part.lock_repl().isr.clone();
            let mut isr = base.clone();
            isr.push(follower);
            isr.sort_unstable();
            self.propose_isr(part.clone(), base, isr);
        }
    }

    /// Proposes a new in-sync set for a partition this node leads (in the background), computed
    /// from `base`, this replica's view of the current one. Dropped unless the metadata's set
    /// is still `base`: the compare-and-set is against the partition epoch read here, and a
    /// proposal computed from a lagging view would otherwise put back a member the controller
    /// just removed (a damaged or eligible-only replica made in sync again).
    fn propose_isr(self: &Arc<Self>, part: Arc<Partition>, base: Vec<u32>, isr: Vec<u32>) {
        let broker = self.clone();
        tokio::spawn(async move {
            let snap = broker.meta.snapshot();
            let Some(a) = snap.assignment(&part.topic, part.index) else {
                return;
            };
            let sorted = |v: &[u32]| {
                let mut v = v.to_vec();
                v.sort_unstable();
                v
            };
            if sorted(&a.isr) != sorted(&base) {
                tracing::debug!(topic = %part.topic, partition = part.index, ?base, now = ?a.isr, "in-sync set change computed from a stale view; dropped");
                let mut r = part.lock_repl();
                r.isr_change_pending = false;
                r.pending_isr_add = None;
                return;
            }
            let update = PartitionUpdate {
                topic: part.topic.to_string(),
                topic_id: part.topic_id.to_string(),
                partition: part.index,
                expected_partition_epoch: a.partition_epoch,
                leader: broker.config.node_id,
                isr: isr.clone(),
                // A follower dropped for lagging holds what it held: if the set ends below
                // `min.insync.replicas` it stays eligible to lead.
                ineligible: Vec::new(),
            };
            if a.leader != broker.config.node_id {
                let mut r = part.lock_repl();
                r.isr_change_pending = false;
                r.pending_isr_add = None;
                return;
            }
            let grows = isr.len() > a.isr.len();
            let result = broker
                .meta
                .apply(MetadataCommand::UpdatePartitions(vec![update]))
                .await;
            let applied = result.as_ref().is_ok_and(|snap| {
                snap.assignment(&part.topic, part.index)
                    .is_some_and(|now| now.isr == isr)
            });
            match &result {
                Ok(_) if applied => {
                    tracing::info!(topic = %part.topic, partition = part.index, ?isr, "in-sync set changed");
                    if grows {
                        metrics::counter!("cascade_isr_expands_total").increment(1);
                    } else {
                        metrics::counter!("cascade_isr_shrinks_total").increment(1);
                    }
                }
                Ok(_) => {
                    tracing::info!(topic = %part.topic, partition = part.index, ?isr, "in-sync set change was stale; skipped")
                }
                Err(e) => {
                    tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "in-sync set change failed")
                }
            }
            // The reconciler applies a change that took (and clears an expansion's pending
            // member once the metadata has it); one that did not take leaves nothing to
            // apply, so the in-flight state is cleared here.
            if !applied {
                let mut r = part.lock_repl();
                r.isr_change_pending = false;
                r.pending_isr_add = None;
            } else if !grows {
                part.lock_repl().isr_change_pending = false;
            }
        });
    }

    /// Leader duty, run periodically: drop followers that have not caught up for
    /// `replica_lag_max` from the in-sync set.
    pub(crate) fn check_isr(self: &Arc<Self>) {
        let now = Instant::now();
        let lag_max = self.config.replica_lag_max;
        let handles: Vec<_> = self.topics_read().values().cloned().collect();
        for h in handles {
            for part in h.partitions.values() {
                let shrink = {
                    let mut r = part.lock_repl();
                    if !matches!(r.role, Role::Leader { .. }) || r.isr_change_pending {
                        continue;
                    }
                    let me = r.node_id;
                    let lagging: Vec<u32> = r
                        .isr
                        .iter()
                        .copied()
                        .filter(|&id| id != me)
                        .filter(|id| {
                            r.followers
                                .get(id)
                                .is_none_or(|f| now.duration_since(f.last_caught_up) > lag_max)
                        })
                        .collect();
                    if lagging.is_empty() {
                        continue;
                    }
                    r.isr_change_pending = true;
                    let isr: Vec<u32> = r
                        .isr
                        .iter()
                        .copied()
                        .filter(|id| !lagging.contains(id))
                        .collect();
                    tracing::warn!(topic = %part.topic, partition = part.index, ?lagging, "followers fell behind: shrinking the in-sync set");
                    (r.isr.clone(), isr)
                };
                self.propose_isr(part.clone(), shrink.0, shrink.1);
            }
        }
    }

    /// Leader side of KIP-279. Epoch -1 asks for the log start offset.
    pub fn epoch_end_offset(&self, r: &EpochEndOffsetRequest) -> Result<EpochEndOffsetResponse> {
        let part = self.leading(&r.topic, r.partition, r.leader_epoch)?;
        let end = part.reader().end_offset();
        let answer = if r.requested_epoch < 0 {
            EpochEndOffsetResponse {
                epoch: -1,
                end_offset: part.reader().start_offset(),
            }
        } else {
            match part.epochs().end_offset_for(r.requested_epoch, end) {
                Some((epoch, end_offset)) => EpochEndOffsetResponse { epoch, end_offset },
                None => EpochEndOffsetResponse {
                    epoch: -1,
                    end_offset: part.reader().start_offset(),
                },
            }
        };
        // As for a fetch: an answer read from a log that changed hands is not this epoch's.
        self.still_leading(&part, &r.topic, r.partition, r.leader_epoch)?;
        Ok(answer)
    }

    /// Ok if `part` is still this node's replica of the partition and still leads `epoch`
    /// (the error is what a request arriving now would get).
    fn still_leading(
        &self,
        part: &Arc<Partition>,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Result<()> {
        let now = self.leading(topic, partition, epoch)?;
        if Arc::ptr_eq(&now, part) {
            Ok(())
        } else {
            Err(BrokerError::NotLeader {
                node: self.config.node_id,
                topic: topic.to_string(),
                partition,
                leader: None,
            })
        }
    }
}

/// The internal `Replication` gRPC service.
#[derive(Debug, Clone)]
pub struct ReplicationService {
    broker: Arc<Broker>,
}

impl ReplicationService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn fetch(
        &self,
        req: Request<ReplicaFetchRequest>,
    ) -> Result<Response<ReplicaFetchResponse>, Status> {
        self.broker
            .replica_fetch(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn epoch_end_offset(
        &self,
        req: Request<EpochEndOffsetRequest>,
    ) -> Result<Response<EpochEndOffsetResponse>, Status> {
        self.broker
            .epoch_end_offset(req.get_ref())
            .map(Response::new)
            .map_err(Status::from)
    }
}

impl Broker {
    /// Deals with a damaged replica (see `Partition::open`, `Partition::scrub`): takes it out
    /// of the in-sync set, handing leadership to another live in-sync replica if it led, and
    /// only then cuts its log at `cut_at` so replication fetches the rest again. A replica
    /// that is the last in-sync copy keeps its data (cutting would lose acknowledged events
    /// for good) and stays flagged.
    pub(crate) async fn repair_damaged(
        self: &Arc<Self>,
        part: &Arc<Partition>,
        cut_at: Option<u64>,
    ) -> Result<()> {
        let Some(at) = cut_at else {
            // Cut at open already; only the in-sync set has to let go of it.
            if self.leave_isr(part).await? {
                tracing::info!(topic = %part.topic, partition = part.index, "damaged replica left the in-sync set: it refetches the rest as a follower");
                part.clear_damage();
                metrics::counter!("cascade_replica_repairs_total").increment(1);
            }
            return Ok(());
        };
        let _no_fetches = part.hold_fetches().await;
        self.cut_damaged(part, at).await
    }

    async fn cut_damaged(self: &Arc<Self>, part: &Arc<Partition>, at: u64) -> Result<()> {
        if !self.leave_isr(part).await? {
            return Ok(()); // the last live in-sync copy keeps its data (logged)
        }
        // Leadership has moved in the metadata, but this replica learns it through the
        // reconciler, later: until then it would still append (and, with acks=leader,
        // acknowledge) produces into the log about to be cut. Step down first.
        part.stop_leading_appends().await?;
        let end = part.cut_damaged(at).await?;
        tracing::warn!(topic = %part.topic, partition = part.index, end, "cut a damaged replica; fetching the rest from the leader");
        // A fetch sent before the fetches were held may still have readmitted the replica
        // from its uncut end: take it out once more, now that its log is short it cannot
        // come back before it has fetched everything again. If it has become the last live
        // in-sync copy meanwhile, it stays flagged: with its log cut it must not lead.
        if !self.leave_isr(part).await? {
            return Ok(());
        }
        part.clear_damage();
        metrics::counter!("cascade_replica_repairs_total").increment(1);
        Ok(())
    }

    /// A local replica whose storage failed (a failed fsync poisons its log for good): it stops
    /// leading at once, leaves the in-sync set (handing leadership to another live in-sync
    /// replica, so producers move on instead of getting `STORAGE_ERROR` forever), and is
    /// closed and dropped from this node's replicas, offline with the reason, until a
    /// reconciliation reopens it (re-running recovery; on a disk that still fails the open
    /// fails and it stays offline). The last live in-sync copy keeps its place (leaving would
    /// lose acknowledged events) but is still reopened.
    pub(crate) async fn retire_failed_replica(
        self: &Arc<Self>,
        part: Arc<Partition>,
        reason: String,
    ) {
        if !part.begin_retiring() {
            return;
        }
        tracing::error!(topic = %part.topic, partition = part.index, %reason, "replica storage failed: handing over its leadership and reopening it");
        let _ = part.stop_leading_appends().await;
        self.stop_fetcher(&part.topic, part.index);
        match self.leave_isr(&part).await {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(topic = %part.topic, partition = part.index, error = %e, "a failed replica could not leave the in-sync set")
            }
        }
        {
            let mut topics = self.topics_write();
            if let Some(h) = topics.get(&*part.topic)
                && h.partitions
                    .get(&part.index)
                    .is_some_and(|p| Arc::ptr_eq(p, &part))
            {
                let mut partitions = h.partitions.clone();
                partitions.remove(&part.index);
                let handle = crate::broker::TopicHandle {
                    id: h.id.clone(),
                    partitions,
                    config: h.config.clone(),
                };
                topics.insert(part.topic.to_string(), Arc::new(handle));
            }
        }
        self.set_offline(&part.topic, part.index, Some(reason));
        // What a failed fsync covered may never have reached the disk, though the page cache
        // still serves it: the reopened replica must not count it as its own (see
        // `Broker::open_partition`). Noted before the close, which may fsync again.
        self.note_unsynced(&part);
        if let Err(e) = part.close().await {
            tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "closing a failed replica");
        }
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "reconciling after a replica's storage failed");
        }
    }

    /// Takes this replica out of the partition's in-sync set, handing leadership to another
    /// live in-sync replica if it leads, else to a live eligible leader replica, else leaving
    /// the partition to wait for the eligible ones that are down (see
    /// `PartitionAssignment::handover_from`); it leaves the eligible leader replicas too.
    /// Ok(false): it is the only copy anyone can vouch for, so it stays (cutting it would
    /// lose acknowledged events for good). An error: the metadata update kept failing and the
    /// replica is still counted in sync.
    async fn leave_isr(self: &Arc<Self>, part: &Arc<Partition>) -> Result<bool> {
        let me = self.config.node_id;
        for _ in 0..50 {
            let snap = self.meta.snapshot();
            let Some(a) = snap.assignment(&part.topic, part.index) else {
                return Ok(true);
            };
            if !a.isr.contains(&me) && !a.elr.contains(&me) {
                return Ok(true);
            }
            let live = |r: u32| r != me && snap.brokers.get(&r).is_some_and(|b| !b.fenced);
            let (leader, isr) = if a.isr.contains(&me) {
                match a.handover_from(me, live) {
                    Some(to) => to,
                    None => {
                        tracing::error!(topic = %part.topic, partition = part.index, "damaged replica is the only copy that holds every acknowledged event: keeping its data");
                        return Ok(false);
                    }
                }
            } else {
                (a.leader, a.isr.clone())
            };
            let update = PartitionUpdate {
                topic: part.topic.to_string(),
                topic_id: part.topic_id.to_string(),
                partition: part.index,
                expected_partition_epoch: a.partition_epoch,
                leader,
                isr,
                ineligible: vec![me],
            };
            if let Err(e) = self
                .meta
                .apply(MetadataCommand::UpdatePartitions(vec![update]))
                .await
            {
                tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "leaving the in-sync set failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Still counted as in sync, perhaps still leading: cutting now would hand the
        // followers a shorter log than was acknowledged, and they would truncate to it.
        Err(BrokerError::Metadata(format!(
            "{}/{}: a damaged replica could not leave the in-sync set; its log is not cut",
            part.topic, part.index
        )))
    }

    /// Checks every replicated partition this node holds for damage, one at a time, and
    /// repairs what it finds. Run once in the background after start.
    pub(crate) fn spawn_scrub(self: &Arc<Self>) {
        let b = self.clone();
        tokio::spawn(async move {
            let snap = b.meta.snapshot();
            let handles: Vec<_> = b
                .topics_read()
                .iter()
                .map(|(n, h)| (n.clone(), h.clone()))
                .collect();
            for (name, h) in handles {
                if snap
                    .topics
                    .get(&name)
                    .is_none_or(|t| t.replication_factor < 2)
                {
                    continue;
                }
                for part in h.partitions.values() {
                    if b.shutdown.is_cancelled() {
                        return;
                    }
                    b.scrub_partition(part).await;
                }
            }
        });
    }

    /// Scrubs one partition and repairs it if damaged.
    pub(crate) async fn scrub_partition(self: &Arc<Self>, part: &Arc<Partition>) {
        match part.scrub().await {
            Ok(Some(at)) => {
                metrics::counter!("cascade_log_damage_total", "found" => "scrub").increment(1);
                // Not the "damaged when opened" flag, which the reconciler repairs on its own
                // (two repairs of one replica would race); this one cuts the log itself, and
                // only once the replica is out of the in-sync set: until then it retries.
                while let Err(e) = self.repair_damaged(part, Some(at)).await {
                    tracing::error!(topic = %part.topic, partition = part.index, error = %e, "repairing a damaged replica: could not leave the in-sync set yet; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(topic = %part.topic, partition = part.index, error = %e, "scrub failed")
            }
        }
    }
}
