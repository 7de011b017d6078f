//! Consumers: [`PartitionConsumer`] follows one partition from an offset; [`GroupConsumer`]
//! joins a consumer group and reads the partitions the coordinator assigns it.
//!
//! Both follow the cluster: fetches go to each partition's leader, and one that hits a leader
//! change or a dead node refreshes the metadata and continues from the same offset (nothing
//! is skipped or read twice by the consumer itself). Group calls go to the coordinator and
//! follow it when it moves; a member the new coordinator does not know (`UNKNOWN_MEMBER`
//! after a failover, or evicted) rejoins with epoch 0 and resumes from the committed offsets,
//! so records read but not yet committed are read again (at-least-once).
//!
//! Records are decoded from the stored batches without copying payloads: keys, values and
//! header values are slices of the fetched buffer (`Bytes`).

use crate::client::Client;
use crate::error::{ClientError, Result, Retry};
use crate::retry::Backoff;
use bytes::Bytes;
use cascade_proto::v1 as pb;
use cascade_record::Batches;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Decodes the records at or after `from` in fetched batches.
pub fn decode_records(
    topic: &str,
    partition: u32,
    batches: &Bytes,
    from: u64,
) -> Result<Vec<ConsumedRecord>> {
    let slice = |s: &[u8]| batches.slice_ref(s);
    let mut out = Vec::new();
    for b in Batches::new(batches) {
        let b = b.map_err(|e| ClientError::Decode(e.to_string()))?;
        for r in b
            .records()
            .map_err(|e| ClientError::Decode(e.to_string()))?
        {
            if (r.offset as u64) < from {
                continue;
            }
            out.push(ConsumedRecord {
                topic: topic.to_string(),
                partition,
                offset: r.offset as u64,
                timestamp_ms: r.timestamp,
                key: r.key.map(slice),
                value: r.value.map(slice),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.map(slice)))
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// Reads one partition in order from a position.
#[derive(Debug, Clone)]
pub struct PartitionConsumer {
    client: Client,
    topic: String,
    partition: u32,
    position: u64,
    high_watermark: u64,
    /// Bytes per fetch.
    pub max_bytes: u32,
}

impl PartitionConsumer {
    /// Starts at `offset`.
    pub fn new(client: Client, topic: &str, partition: u32, offset: u64) -> Self {
        Self {
            client,
            topic: topic.to_string(),
            partition,
            position: offset,
            high_watermark: 0,
            max_bytes: 1 << 20,
        }
    }

    /// The next offset to read.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The high watermark seen by the last fetch.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Moves to `offset`.
    pub fn seek(&mut self, offset: u64) {
        self.position = offset;
    }

    /// Fetches the next records, waiting up to `max_wait` when there are none yet. Leader
    /// changes are followed within the client's retry budget (see [`Client::fetch`]).
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>> {
        let f = self
            .client
            .fetch(
                &self.topic,
                self.partition,
                self.position,
                self.max_bytes,
                max_wait,
            )
            .await?;
        self.high_watermark = f.high_watermark;
        let recs = decode_records(&self.topic, self.partition, &f.batches, self.position)?;
        if !f.batches.is_empty() {
            self.position = f.next_offset;
        }
        Ok(recs)
    }
}

/// True when the coordinator no longer counts us as a member.
fn must_rejoin(e: &ClientError) -> bool {
    matches!(
        e.reason(),
        Some(pb::ErrorCode::UnknownMember | pb::ErrorCode::FencedMemberEpoch)
    )
}

/// Where a group consumer starts on a partition with no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The log start.
    #[default]
    Earliest,
    /// The high watermark (only new records).
    Latest,
}

/// Group consumer settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Group id.
    pub group: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// "range" or "roundrobin".
    pub assignor: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Start for partitions without a committed offset.
    pub offset_reset: OffsetReset,
    /// Commit positions automatically on every poll and before giving up partitions.
    pub auto_commit: bool,
    /// Client id shown in describes.
    pub client_id: String,
}

impl GroupConfig {
    /// Defaults for `group` consuming `topics`.
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            assignor: String::new(),
            session_timeout: Duration::from_secs(10),
            offset_reset: OffsetReset::Earliest,
            auto_commit: true,
            client_id: "cascade-client".into(),
        }
    }
}

type Tp = (String, u32);

/// A member of a consumer group. Call [`GroupConsumer::poll`] in a loop: it heartbeats, follows
/// assignment changes (committing what it gives up), and fetches from its partitions.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    member_id: String,
    epoch: i32,
    interval: Duration,
    last_heartbeat: Option<Instant>,
    /// Positions of owned partitions.
    positions: BTreeMap<Tp, u64>,
    /// Positions already committed.
    committed: BTreeMap<Tp, u64>,
    /// Partitions whose fetches fail retriably (leader moving, node down), since when and
    /// why: they are retried on every poll until the client's retry budget is spent.
    stalled: BTreeMap<Tp, (Instant, ClientError)>,
    /// Partitions whose position is past the end of the log that answered, since when.
    beyond_end: BTreeMap<Tp, Instant>,
    /// Pause between polls while some fetch fails, so a caller's loop does not spin.
    backoff: Backoff,
}

impl GroupConsumer {
    /// Joins the group.
    pub async fn join(client: Client, config: GroupConfig) -> Result<Self> {
        let mut c = Self {
            client,
            config,
            member_id: String::new(),
            epoch: 0,
            interval: Duration::from_secs(3),
            last_heartbeat: None,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            stalled: BTreeMap::new(),
            beyond_end: BTreeMap::new(),
            backoff: Backoff::default(),
        };
        c.heartbeat().await?;
        Ok(c)
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// This member's epoch.
    pub fn member_epoch(&self) -> i32 {
        self.epoch
    }

    /// The partitions owned now.
    pub fn assignment(&self) -> BTreeSet<Tp> {
        self.positions.keys().cloned().collect()
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let req = pb::HeartbeatRequest {
            group_id: self.config.group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.epoch,
            topics: self.config.topics.clone(),
            assignor: self.config.assignor.clone(),
            session_timeout_ms: self.config.session_timeout.as_millis() as u32,
            client_id: self.config.client_id.clone(),
        };
        let resp = match self.client.heartbeat(req).await {
            Ok(r) => r,
            Err(e) if must_rejoin(&e) && !(self.member_id.is_empty() && self.epoch == 0) => {
                // Evicted, fenced, or unknown to a new coordinator after a failover: whatever
                // we owned may be someone else's now. Rejoin and start from committed offsets.
                tracing::info!(group = %self.config.group, error = %e, "rejoining group");
                self.forget_membership();
                return Box::pin(self.heartbeat()).await;
            }
            Err(e) => return Err(e),
        };
        self.member_id = resp.member_id;
        self.epoch = resp.member_epoch;
        self.interval = Duration::from_millis(u64::from(resp.heartbeat_interval_ms.max(100)));
        self.last_heartbeat = Some(Instant::now());
        let new: BTreeSet<Tp> = resp
            .assignment
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
            .collect();
        let revoked: Vec<Tp> = self
            .positions
            .keys()
            .filter(|tp| !new.contains(*tp))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            if self.config.auto_commit {
                self.commit_some(&revoked).await?;
            }
            for tp in &revoked {
                self.positions.remove(tp);
                self.committed.remove(tp);
                self.stalled.remove(tp);
                self.beyond_end.remove(tp);
            }
        }
        let added: Vec<Tp> = new
            .iter()
            .filter(|tp| !self.positions.contains_key(*tp))
            .cloned()
            .collect();
        if !added.is_empty() {
            self.start_positions(&added).await?;
        }
        Ok(())
    }

    fn forget_membership(&mut self) {
        self.positions.clear();
        self.committed.clear();
        self.stalled.clear();
        self.beyond_end.clear();
        self.member_id.clear();
        self.epoch = 0;
    }

    async fn start_positions(&mut self, added: &[Tp]) -> Result<()> {
        let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (t, p) in added {
            by_topic.entry(t.clone()).or_default().push(*p);
        }
        let committed = self
            .client
            .fetch_offsets(
                &self.config.group,
                by_topic
                    .iter()
                    .map(|(t, ps)| pb::TopicPartitions {
                        topic: t.clone(),
                        partitions: ps.clone(),
                    })
                    .collect(),
            )
            .await?;
        let committed: BTreeMap<Tp, u64> = committed
            .into_iter()
            .map(|c| ((c.topic, c.partition), c.offset))
            .collect();
        for (topic, parts) in by_topic {
            let spec = match self.config.offset_reset {
                OffsetReset::Earliest => pb::OffsetSpec::Earliest,
                OffsetReset::Latest => pb::OffsetSpec::Latest,
            };
            let resets = self
                .client
                .list_offsets(&topic, parts.clone(), spec, 0)
                .await?;
            for p in parts {
                let tp = (topic.clone(), p);
                let start = match committed.get(&tp) {
                    Some(o) => *o,
                    None => resets
                        .iter()
                        .find(|o| o.partition == p)
                        .map_or(0, |o| o.offset),
                };
                if let Some(o) = committed.get(&tp) {
                    self.committed.insert(tp.clone(), *o);
                }
                self.positions.insert(tp, start);
            }
        }
        Ok(())
    }

    /// Heartbeats if due, then fetches from the owned partitions (waiting up to `max_wait`).
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>> {
        if self
            .last_heartbeat
            .is_none_or(|t| t.elapsed() >= self.interval)
        {
            self.heartbeat().await?;
        }
        if self.config.auto_commit {
            self.commit().await?;
        }
        if self.positions.is_empty() {
            tokio::time::sleep(max_wait.min(self.interval)).await;
            return Ok(Vec::new());
        }
        let wait = max_wait.min(self.interval / 2);
        // One fetch per leader. With several leaders, a first round that does not wait gives
        // every node its turn; only when none has data do they all long-poll, and the first
        // answer with records ends the poll (a cancelled fetch changes nothing: positions
        // only move with answers we process).
        let mut by_leader: BTreeMap<Option<String>, Vec<(Tp, u64)>> = BTreeMap::new();
        for t in self.config.topics.clone() {
            self.client.ensure_topic(&t).await;
        }
        for (tp, o) in &self.positions {
            by_leader
                .entry(self.client.route_key(&tp.0, tp.1))
                .or_default()
                .push((tp.clone(), *o));
        }
        let groups: Vec<Vec<(Tp, u64)>> = by_leader.into_values().collect();
        let mut out = Vec::new();
        let mut failed = false;
        if groups.len() == 1 {
            let r = self.fetch_group(&groups[0], wait).await;
            failed |= self.absorb(&groups[0], r, &mut out).await?;
        } else {
            let answers = futures::future::join_all(
                groups.iter().map(|g| self.fetch_group(g, Duration::ZERO)),
            )
            .await;
            for (g, r) in groups.iter().zip(answers) {
                failed |= self.absorb(g, r, &mut out).await?;
            }
            if out.is_empty() && !failed && !wait.is_zero() {
                let mut pending: futures::stream::FuturesUnordered<_> = groups
                    .iter()
                    .map(|g| {
                        let fetch = self.fetch_group(g, wait);
                        async move { (g, fetch.await) }
                    })
                    .collect();
                let mut answers = Vec::new();
                while let Some((g, r)) = futures::StreamExt::next(&mut pending).await {
                    let has_data = r
                        .as_ref()
                        .is_ok_and(|resp| resp.partitions.iter().any(|p| !p.batches.is_empty()));
                    answers.push((g, r));
                    if has_data {
                        break;
                    }
                }
                drop(pending);
                for (g, r) in answers {
                    failed |= self.absorb(g, r, &mut out).await?;
                }
            }
        }
        self.check_stalled()?;
        if failed {
            if self.client.invalidate().await.is_err()
                && let Some((_, e)) = self
                    .stalled
                    .values()
                    .find(|(_, e)| e.retry() == Retry::Ambiguous)
            {
                // No broker answers at all: the cluster is down, not moving.
                return Err(e.clone());
            }
            if out.is_empty()
                && let Some(d) = self.backoff.next()
            {
                tokio::time::sleep(d.min(max_wait.max(Duration::from_millis(25)))).await;
            }
        } else {
            self.backoff = Backoff::default();
        }
        Ok(out)
    }

    /// One fetch of a group of partitions that share a leader.
    fn fetch_group(
        &self,
        group: &[(Tp, u64)],
        wait: Duration,
    ) -> impl Future<Output = Result<pb::FetchResponse>> + use<> {
        let req = pb::FetchRequest {
            partitions: group
                .iter()
                .map(|((t, p), o)| pb::FetchPartition {
                    topic: t.clone(),
                    partition: *p,
                    position: Some(pb::fetch_partition::Position::Offset(*o)),
                    max_bytes: 1 << 20,
                    current_leader_epoch: self.client.known_leader_epoch(t, *p),
                })
                .collect(),
            max_wait_ms: wait.as_millis() as u32,
            min_bytes: 1,
            max_bytes: 8 << 20,
        };
        let client = self.client.clone();
        let first = group.first().map(|((t, p), _)| (t.clone(), *p));
        async move {
            let (t, p) = first.unwrap_or_default();
            client.fetch_once((&t, p), req).await
        }
    }

    /// Takes a fetch answer in: records into `out`, positions forward, retriable failures
    /// noted as stalled partitions (true if there was one), other failures returned.
    async fn absorb(
        &mut self,
        group: &[(Tp, u64)],
        r: Result<pb::FetchResponse>,
        out: &mut Vec<ConsumedRecord>,
    ) -> Result<bool> {
        let resp = match r {
            Ok(resp) => resp,
            Err(e) if e.retry() != Retry::No => {
                for (tp, _) in group {
                    self.stall(tp, e.clone());
                }
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        let mut failed = false;
        for p in resp.partitions {
            let tp = (p.topic.clone(), p.partition);
            let Some(pos) = self.positions.get(&tp).copied() else {
                continue;
            };
            if let Some(e) = &p.error {
                if e.code == pb::ErrorCode::OffsetOutOfRange as i32 {
                    // Past the end of the log that answered: most likely a replica that has
                    // not learned it was replaced (and knows no newer epoch to be fenced by)
                    // or a stale metadata answer. Refresh and retry like a leader move; only
                    // a position that stays past the end for the whole retry budget is reset.
                    // Before the start, retention moved past us: reset now.
                    let beyond_end = pos >= p.log_start_offset;
                    let since = *self
                        .beyond_end
                        .entry(tp.clone())
                        .or_insert_with(Instant::now);
                    if beyond_end && since.elapsed() < self.client.retry_budget() {
                        tracing::debug!(
                            topic = %tp.0, partition = tp.1, position = pos, reason = %e.message,
                            "position past the end of the log that answered: retrying"
                        );
                        failed = true;
                        continue;
                    }
                    self.beyond_end.remove(&tp);
                    tracing::warn!(
                        group = %self.config.group, topic = %tp.0, partition = tp.1,
                        position = pos, reason = %e.message,
                        "position out of range: applying the offset reset policy"
                    );
                    self.positions.remove(&tp);
                    self.committed.remove(&tp);
                    self.start_positions_reset(&tp).await?;
                    continue;
                }
                if let Err(e) = crate::error::partition_error(&p.topic, p.partition, Some(e)) {
                    if e.retry() == Retry::No {
                        return Err(e);
                    }
                    // Leader moved or none yet: same offset next time, at the new leader.
                    self.stall(&tp, e);
                    failed = true;
                    continue;
                }
            }
            self.stalled.remove(&tp);
            self.beyond_end.remove(&tp);
            self.client
                .saw_leader_epoch(&p.topic, p.partition, p.leader_epoch);
            out.extend(decode_records(&p.topic, p.partition, &p.batches, pos)?);
            if !p.batches.is_empty() {
                self.positions.insert(tp, p.next_offset);
            }
        }
        Ok(failed)
    }

    fn stall(&mut self, tp: &Tp, e: ClientError) {
        tracing::debug!(topic = %tp.0, partition = tp.1, error = %e, "fetch failed: retrying");
        let since = self.stalled.get(tp).map_or_else(Instant::now, |s| s.0);
        self.stalled.insert(tp.clone(), (since, e));
    }

    /// Fails once a partition has been failing for longer than the client's retry budget.
    fn check_stalled(&self) -> Result<()> {
        let budget = self.client.retry_budget();
        match self
            .stalled
            .iter()
            .find(|(_, (since, _))| since.elapsed() >= budget)
        {
            Some(((t, p), (since, e))) => Err(ClientError::RetriesExhausted {
                target: format!("{t}/{p}"),
                attempts: 0,
                elapsed: since.elapsed(),
                last: Box::new(e.clone()),
            }),
            None => Ok(()),
        }
    }

    async fn start_positions_reset(&mut self, tp: &Tp) -> Result<()> {
        let spec = match self.config.offset_reset {
            OffsetReset::Earliest => pb::OffsetSpec::Earliest,
            OffsetReset::Latest => pb::OffsetSpec::Latest,
        };
        let o = self.client.list_offsets(&tp.0, vec![tp.1], spec, 0).await?;
        self.positions
            .insert(tp.clone(), o.first().map_or(0, |o| o.offset));
        Ok(())
    }

    /// Moves the position of an owned partition (e.g. back to the first record the
    /// application did not process); ignored for partitions not owned.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) {
        if let Some(p) = self.positions.get_mut(&(topic.to_string(), partition)) {
            *p = offset;
        }
    }

    /// Commits the positions of every owned partition that moved since the last commit.
    pub async fn commit(&mut self) -> Result<()> {
        let tps: Vec<Tp> = self.positions.keys().cloned().collect();
        self.commit_some(&tps).await
    }

    async fn commit_some(&mut self, tps: &[Tp]) -> Result<()> {
        let offsets: Vec<pb::OffsetCommit> = tps
            .iter()
            .filter_map(|tp| {
                let pos = *self.positions.get(tp)?;
                (self.committed.get(tp) != Some(&pos)).then(|| pb::OffsetCommit {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset: pos,
                    metadata: String::new(),
                })
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let r = self
            .client
            .commit_offsets(
                &self.config.group,
                &self.member_id,
                self.epoch,
                offsets.clone(),
            )
            .await;
        match r {
            Ok(()) => {}
            Err(e) if must_rejoin(&e) => {
                // The coordinator no longer knows us (failover or eviction): these positions
                // are not ours to commit. Rejoin; the partitions resume from their committed
                // offsets, wherever they are assigned.
                // The commit did not happen: say so (as Kafka's CommitFailed does), after
                // rejoining, so the caller knows its records may be delivered again.
                tracing::info!(group = %self.config.group, error = %e, "commit refused: rejoining");
                self.forget_membership();
                Box::pin(self.heartbeat()).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        for o in offsets {
            self.committed.insert((o.topic, o.partition), o.offset);
        }
        Ok(())
    }

    /// Commits (with auto-commit) and leaves the group, handing its partitions to the others.
    pub async fn close(mut self) -> Result<()> {
        if self.config.auto_commit {
            self.commit().await?;
        }
        self.client
            .heartbeat(pb::HeartbeatRequest {
                group_id: self.config.group.clone(),
                member_id: self.member_id.clone(),
                member_epoch: -1,
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}
