//! [`GroupCoordinator`]: consumer groups' membership (in memory) and committed offsets
//! (persisted in the internal topic `__consumer_offsets`).
//!
//! Commits are appended as records to the offsets partition chosen by the group id's hash
//! (so the same group always lands on the same partition, as in Kafka) and applied in memory
//! only once the append is acknowledged by every in-sync replica (`acks=all`). A node
//! coordinates exactly the groups whose offsets partition it leads: when it becomes leader of
//! one it replays that partition ([`GroupCoordinator::load_partition`]; the last record for a
//! key wins and a null value deletes it), and when it stops leading it drops those groups
//! ([`GroupCoordinator::unload_partition`]). Requests for other groups get `NotCoordinator`.
//! Membership is not persisted: after a restart or a coordinator change members rejoin, as
//! their next heartbeat gets `UNKNOWN_MEMBER`; committed offsets survive both.
//!
//! Locking: one std mutex over the groups, held only for in-memory work, never across an
//! await; the offsets append happens outside it.

use super::assignor::Tp;
use super::state::{Group, HeartbeatIn, HeartbeatOut};
use crate::error::{BrokerError, Result};
use crate::metadata::Metadata;
use crate::partition::{Partition, Role};
use cascade_record::{BatchBuilder, Batches, Record};
use cascade_types::{partition_for_key, validate_group_id};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How long a read barrier may wait for the in-sync replicas before the coordinator gives
/// up (and answers NOT_COORDINATOR, which clients retry elsewhere).
const BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Name of the internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Next offset to consume.
    pub offset: u64,
    /// Free-form client metadata.
    #[serde(default)]
    pub metadata: String,
    /// When it was committed.
    pub timestamp_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct OffsetKey {
    g: String,
    t: String,
    p: u32,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// The group's state, epoch and members.
    pub group: Group,
    /// Committed offsets.
    pub offsets: BTreeMap<Tp, Committed>,
}

#[derive(Default)]
struct Inner {
    groups: BTreeMap<String, Group>,
    offsets: BTreeMap<String, BTreeMap<Tp, Committed>>,
    /// The offsets-partition offset of the record that set each committed offset: a commit's
    /// answer may come back after a later commit's (different members, one partition), and
    /// memory must end as the log does, with the later record winning.
    set_at: BTreeMap<(String, Tp), u64>,
}

/// Consumer groups of this node. See the module docs.
pub struct GroupCoordinator {
    meta: Arc<Metadata>,
    /// Partitions of `__consumer_offsets` (fixed once the topic exists).
    count: u32,
    /// The offsets partitions this node leads and has loaded.
    store: Mutex<BTreeMap<u32, Arc<Partition>>>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl GroupCoordinator {
    /// A coordinator with nothing loaded, for an offsets topic of `count` partitions.
    pub fn new(meta: Arc<Metadata>, count: u32) -> Self {
        Self {
            meta,
            count: count.max(1),
            store: Mutex::new(BTreeMap::new()),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The offsets partition of `group`.
    pub fn partition_of(&self, group: &str) -> u32 {
        partition_for_key(group.as_bytes(), self.count)
    }

    /// Partitions of the offsets topic.
    pub fn offsets_partitions(&self) -> u32 {
        self.count
    }

    /// Ok if this node coordinates `group`, else `NotCoordinator` (no hint: the gRPC layer
    /// checks with [`crate::broker::Broker::own_group`] first, which names the coordinator).
    pub fn check_owner(&self, group: &str) -> Result<()> {
        if self.owns(group) {
            Ok(())
        } else {
            Err(BrokerError::NotCoordinator {
                node: self.meta.node_id(),
                group: group.to_string(),
                coordinator: None,
            })
        }
    }

    /// True if this node coordinates `group` now.
    pub fn owns(&self, group: &str) -> bool {
        let p = self.partition_of(group);
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&p)
    }

    /// Takes over the groups of offsets partition `p` (this node now leads it): replays it.
    pub async fn load_partition(&self, p: u32, part: Arc<Partition>) -> Result<()> {
        let reader = part.reader().clone();
        let (offsets, set_at, records) = tokio::task::spawn_blocking(move || replay(&reader))
            .await
            .map_err(|e| BrokerError::Metadata(format!("replaying offsets panicked: {e}")))??;
        let groups = offsets.len();
        {
            let mut inner = self.lock();
            inner
                .offsets
                .retain(|g, _| partition_for_key(g.as_bytes(), self.count) != p);
            inner
                .set_at
                .retain(|(g, _), _| partition_for_key(g.as_bytes(), self.count) != p);
            inner.offsets.extend(offsets);
            inner.set_at.extend(set_at);
        }
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p, part);
        tracing::info!(
            partition = p,
            groups,
            records,
            "coordinating the groups of an offsets partition"
        );
        Ok(())
    }

    /// Gives up the groups of offsets partition `p` (another node leads it now).
    pub fn unload_partition(&self, p: u32) {
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        let mut inner = self.lock();
        let count = self.count;
        inner
            .offsets
            .retain(|g, _| partition_for_key(g.as_bytes(), count) != p);
        inner
            .groups
            .retain(|g, _| partition_for_key(g.as_bytes(), count) != p);
        inner
            .set_at
            .retain(|(g, _), _| partition_for_key(g.as_bytes(), count) != p);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn partition_count(&self) -> impl Fn(&str) -> Option<u32> + use<> {
        let snap = self.meta.snapshot();
        move |t: &str| snap.topics.get(t).map(|m| m.partitions.len() as u32)
    }

    /// Handles a member heartbeat (join, stay, leave).
    pub fn heartbeat(&self, group: &str, req: HeartbeatIn) -> Result<HeartbeatOut> {
        validate_group_id(group).map_err(BrokerError::InvalidGroupId)?;
        self.check_owner(group)?;
        let counts = self.partition_count();
        let mut inner = self.lock();
        let g = inner
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group));
        let mut new_id = || uuid::Uuid::new_v4().to_string();
        let out = g.heartbeat(req, Instant::now(), &counts, &mut new_id);
        if g.members.is_empty() && !inner.offsets.contains_key(group) {
            inner.groups.remove(group);
        }
        out
    }

    /// Evicts members whose session expired, in every group.
    pub fn expire_members(&self) {
        let counts = self.partition_count();
        let now = Instant::now();
        let mut inner = self.lock();
        for g in inner.groups.values_mut() {
            for id in g.expire(now, &counts) {
                tracing::info!(group = %g.id, member = %id, "member evicted: session timed out");
            }
        }
    }

    /// Commits offsets for `group` on behalf of a member (or of no member, when the group is
    /// empty). Offsets are durable when this returns.
    pub async fn commit(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: Vec<(Tp, u64, String)>,
    ) -> Result<()> {
        validate_group_id(group).map_err(BrokerError::InvalidGroupId)?;
        self.check_owner(group)?;
        if offsets.is_empty() {
            return Ok(());
        }
        {
            let inner = self.lock();
            match inner.groups.get(group) {
                Some(g) => g.check_commit(member_id, member_epoch)?,
                None if member_id.is_empty() => {}
                None => {
                    return Err(BrokerError::UnknownMember {
                        group: group.into(),
                        member: member_id.into(),
                    });
                }
            }
        }
        let snap = self.meta.snapshot();
        for (tp, _, _) in &offsets {
            let t = snap.topic(&tp.topic)?;
            if tp.partition as usize >= t.partitions.len() {
                return Err(BrokerError::UnknownPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition.into(),
                    count: t.partitions.len() as u32,
                });
            }
        }
        let ts = now_ms();
        let entries: Vec<(Tp, Committed)> = offsets
            .into_iter()
            .map(|(tp, offset, metadata)| {
                (
                    tp,
                    Committed {
                        offset,
                        metadata,
                        timestamp_ms: ts,
                    },
                )
            })
            .collect();
        let at = self
            .persist(group, entries.iter().map(|(tp, c)| (tp, Some(c))), ts)
            .await?;
        let mut inner = self.lock();
        for (tp, c) in entries {
            let key = (group.to_string(), tp.clone());
            if inner.set_at.get(&key).is_some_and(|&prev| prev > at) {
                continue; // a later record already set it
            }
            inner.set_at.insert(key, at);
            inner
                .offsets
                .entry(group.to_string())
                .or_default()
                .insert(tp, c);
        }
        inner
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group));
        Ok(())
    }

    async fn persist<'a>(
        &self,
        group: &str,
        entries: impl Iterator<Item = (&'a Tp, Option<&'a Committed>)>,
        ts: i64,
    ) -> Result<u64> {
        let mut b = BatchBuilder::new();
        for (tp, c) in entries {
            let key = serde_json::to_vec(&OffsetKey {
                g: group.to_string(),
                t: tp.topic.clone(),
                p: tp.partition,
            })
            .expect("serializable");
            let value = c.map(|c| serde_json::to_vec(c).expect("serializable"));
            b.push(Record {
                timestamp: ts,
                key: Some(&key),
                value: value.as_deref(),
                headers: &[],
            });
        }
        if b.is_empty() {
            return Ok(0);
        }
        let p = self.partition_of(group);
        let part = self
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
            .cloned()
            .ok_or_else(|| BrokerError::NotCoordinator {
                node: self.meta.node_id(),
                group: group.to_string(),
                coordinator: None,
            })?;
        Ok(part.append(b.finish().as_slice().into()).await?.base_offset)
    }

    /// Makes sure this node still coordinates `group` before it answers a read from memory:
    /// appends a marker (a record without key, which replay skips) to the group's offsets
    /// partition and waits for every in-sync replica to have it. A deposed coordinator that
    /// has not yet learned it was replaced (it was paused or cut off while another took over)
    /// cannot get the marker acknowledged — its old followers now follow the new leader — so
    /// it fails instead of serving committed offsets that may be stale. A partition with a
    /// single replica cannot change hands, so it needs no marker (and a read leaves its log
    /// untouched).
    pub async fn read_barrier(&self, group: &str) -> Result<()> {
        let p = self.partition_of(group);
        let part = self
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
            .cloned()
            .ok_or_else(|| BrokerError::NotCoordinator {
                node: self.meta.node_id(),
                group: group.to_string(),
                coordinator: None,
            })?;
        if part.lock_repl().replicas.len() <= 1 {
            return match part.role() {
                Role::Leader { .. } => Ok(()),
                _ => Err(BrokerError::NotCoordinator {
                    node: self.meta.node_id(),
                    group: group.to_string(),
                    coordinator: None,
                }),
            };
        }
        let mut b = BatchBuilder::new();
        b.push(Record {
            timestamp: now_ms(),
            key: None,
            value: None,
            headers: &[],
        });
        match tokio::time::timeout(BARRIER_TIMEOUT, part.append(b.finish().as_slice().into())).await
        {
            Ok(r) => r.map(|_| ()).map_err(|e| match e {
                BrokerError::NotLeader { .. } | BrokerError::LeaderNotAvailable { .. } => {
                    BrokerError::NotCoordinator {
                        node: self.meta.node_id(),
                        group: group.to_string(),
                        coordinator: None,
                    }
                }
                other => other,
            }),
            Err(_) => Err(BrokerError::NotCoordinator {
                node: self.meta.node_id(),
                group: group.to_string(),
                coordinator: None,
            }),
        }
    }

    /// Committed offsets of `group`, all or those in `filter`.
    pub fn fetch_offsets(&self, group: &str, filter: &[Tp]) -> BTreeMap<Tp, Committed> {
        let inner = self.lock();
        let Some(all) = inner.offsets.get(group) else {
            return BTreeMap::new();
        };
        if filter.is_empty() {
            return all.clone();
        }
        filter
            .iter()
            .filter_map(|tp| all.get(tp).map(|c| (tp.clone(), c.clone())))
            .collect()
    }

    /// Every known group: (id, state, member count).
    pub fn list(&self) -> Vec<(String, &'static str, usize)> {
        let inner = self.lock();
        let mut ids: Vec<&String> = inner.groups.keys().chain(inner.offsets.keys()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| match inner.groups.get(id) {
                Some(g) => (id.clone(), g.state(), g.members.len()),
                None => (id.clone(), "empty", 0),
            })
            .collect()
    }

    /// One group's members and offsets.
    pub fn describe(&self, group: &str) -> Result<GroupView> {
        self.check_owner(group)?;
        let inner = self.lock();
        let offsets = inner.offsets.get(group).cloned();
        match (inner.groups.get(group), offsets) {
            (None, None) => Err(BrokerError::GroupNotFound(group.to_string())),
            (g, o) => Ok(GroupView {
                group: g.cloned().unwrap_or_else(|| Group::new(group)),
                offsets: o.unwrap_or_default(),
            }),
        }
    }

    /// Deletes a group with no members, with its committed offsets.
    pub async fn delete(&self, group: &str) -> Result<()> {
        self.check_owner(group)?;
        let offsets = {
            let inner = self.lock();
            if let Some(g) = inner.groups.get(group)
                && !g.members.is_empty()
            {
                return Err(BrokerError::GroupNotEmpty(group.to_string()));
            }
            match inner.offsets.get(group) {
                Some(o) => o.clone(),
                None if inner.groups.contains_key(group) => BTreeMap::new(),
                None => return Err(BrokerError::GroupNotFound(group.to_string())),
            }
        };
        self.persist(group, offsets.keys().map(|tp| (tp, None)), now_ms())
            .await?;
        let mut inner = self.lock();
        inner.offsets.remove(group);
        if inner
            .groups
            .get(group)
            .is_some_and(|g| g.members.is_empty())
        {
            inner.groups.remove(group);
        }
        Ok(())
    }

    /// Forgets committed offsets of a deleted topic, in memory and durably.
    pub async fn forget_topic(&self, topic: &str) {
        let affected: Vec<(String, Vec<Tp>)> = {
            let inner = self.lock();
            inner
                .offsets
                .iter()
                .map(|(g, m)| {
                    (
                        g.clone(),
                        m.keys()
                            .filter(|tp| tp.topic == topic)
                            .cloned()
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, tps)| !tps.is_empty())
                .collect()
        };
        for (g, tps) in affected {
            if let Err(e) = self
                .persist(&g, tps.iter().map(|tp| (tp, None)), now_ms())
                .await
            {
                tracing::warn!(group = %g, error = %e, "could not forget offsets of a deleted topic");
                continue;
            }
            let mut inner = self.lock();
            if let Some(m) = inner.offsets.get_mut(&g) {
                for tp in &tps {
                    m.remove(tp);
                }
            }
        }
    }
}

type Offsets = BTreeMap<String, BTreeMap<Tp, Committed>>;

/// Reads a whole offsets partition: the committed offsets it holds, the offset of the record
/// that set each, and how many records.
#[allow(clippy::type_complexity)]
fn replay(reader: &cascade_log::LogReader) -> Result<(Offsets, BTreeMap<(String, Tp), u64>, u64)> {
    let mut offsets: Offsets = BTreeMap::new();
    let mut set_at = BTreeMap::new();
    let mut records = 0u64;
    let mut next = reader.start_offset();
    let end = reader.end_offset();
    while next < end {
        let f = reader.read_until(next, 1 << 20, end)?;
        if f.data.is_empty() {
            break;
        }
        for batch in Batches::new(&f.data) {
            let batch = batch.map_err(|e| BrokerError::InvalidRecord(e.to_string()))?;
            for rec in batch
                .records()
                .map_err(|e| BrokerError::InvalidRecord(e.to_string()))?
            {
                if (rec.offset as u64) < next {
                    continue;
                }
                records += 1;
                let Some(key) = rec
                    .key
                    .and_then(|k| serde_json::from_slice::<OffsetKey>(k).ok())
                else {
                    continue;
                };
                let tp = Tp::new(key.t, key.p);
                match rec
                    .value
                    .and_then(|v| serde_json::from_slice::<Committed>(v).ok())
                {
                    Some(c) => {
                        set_at.insert((key.g.clone(), tp.clone()), rec.offset as u64);
                        offsets.entry(key.g).or_default().insert(tp, c);
                    }
                    None => {
                        if let Some(m) = offsets.get_mut(&key.g) {
                            m.remove(&tp);
                            if m.is_empty() {
                                offsets.remove(&key.g);
                            }
                        }
                    }
                }
            }
        }
        next = f.next_offset;
    }
    Ok((offsets, set_at, records))
}
