//! Server-side consumer instances: group members whose whole state lives on the broker.
//!
//! A stateless client (the REST gateway, any replica of it) drives an instance by group and
//! name; the broker keeps its settings, subscription, member id and epoch, positions and last
//! committed offsets. Every call is the instance's heartbeat: it acknowledges the assignment
//! last received and applies the new one at once (committing the positions of partitions it
//! gives up, with auto-commit, before they can move to another member), so the coordinator's
//! two-step handover works unchanged. An instance not called for longer than its session
//! timeout is removed, and the coordinator evicts its member on the same timeout.
//!
//! The instance lives on the group's coordinator, which in a cluster leads only some of the
//! partitions assigned to it: the others are read from their leaders and reset positions are
//! asked of them ([`crate::forward`]). A partition whose leader is moving is skipped for that
//! poll and read again by the next.
//!
//! Concurrency: the map of instances is a std mutex held only to find or insert an `Arc`;
//! each instance has an async mutex held for the whole call, so calls on one instance are
//! serialized (a long poll blocks other calls on the same instance, never on others).

use super::assignor::Tp;
use super::state::HeartbeatIn;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::fetch::{FetchOut, FetchPart, Position};
use cascade_types::validate_group_id;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Idle time after which an instance is removed, unless it asks for another.
pub const DEFAULT_INSTANCE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest poll wait.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// Where partitions without a committed offset start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Log start.
    Earliest,
    /// High watermark.
    Latest,
}

impl Reset {
    /// Parses "earliest" / "latest" ("" means latest, the REST proxy's default).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "earliest" | "smallest" => Ok(Self::Earliest),
            "" | "latest" | "largest" => Ok(Self::Latest),
            other => Err(BrokerError::InvalidRequest(format!(
                "auto.offset.reset must be earliest or latest, not {other:?}"
            ))),
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// Settings of a new instance.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Opaque format tag kept for the client.
    pub format: String,
    /// Reset policy.
    pub reset: Reset,
    /// Commit automatically.
    pub auto_commit: bool,
    /// Idle timeout.
    pub session_timeout: Duration,
}

/// An instance as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    /// Group.
    pub group: String,
    /// Name.
    pub name: String,
    /// Format tag.
    pub format: String,
    /// Reset policy.
    pub reset: Reset,
    /// Auto-commit.
    pub auto_commit: bool,
    /// Subscription.
    pub topics: Vec<String>,
    /// Positions of the assigned partitions (the assignment is their keys).
    pub positions: BTreeMap<Tp, u64>,
}

#[derive(Debug)]
struct Instance {
    group: String,
    name: String,
    config: InstanceConfig,
    topics: Vec<String>,
    /// Member id and epoch while subscribed.
    member: Option<(String, i32)>,
    positions: BTreeMap<Tp, u64>,
    committed: BTreeMap<Tp, u64>,
    last_used: Instant,
    removed: bool,
}

impl Instance {
    fn view(&self) -> InstanceView {
        InstanceView {
            group: self.group.clone(),
            name: self.name.clone(),
            format: self.config.format.clone(),
            reset: self.config.reset,
            auto_commit: self.config.auto_commit,
            topics: self.topics.clone(),
            positions: self.positions.clone(),
        }
    }
}

type Key = (String, String);

/// The instances of this node.
#[derive(Debug, Default)]
pub struct ManagedConsumers {
    map: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Instance>>>>,
}

impl ManagedConsumers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<tokio::sync::Mutex<Instance>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_name(name: &str) -> Result<()> {
    validate_group_id(name)
        .map_err(|e| BrokerError::InvalidRequest(format!("bad consumer instance name: {e}")))?;
    if name.contains('/') {
        return Err(BrokerError::InvalidRequest(
            "consumer instance names cannot contain '/'".into(),
        ));
    }
    Ok(())
}

impl Broker {
    fn instance(&self, group: &str, name: &str) -> Result<Arc<tokio::sync::Mutex<Instance>>> {
        self.consumers
            .lock()
            .get(&(group.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| BrokerError::UnknownConsumer {
                group: group.to_string(),
                name: name.to_string(),
            })
    }

    /// Runs `f` on a live instance, after its heartbeat.
    async fn with_instance<T>(
        &self,
        group: &str,
        name: &str,
        f: impl AsyncFnOnce(&Broker, &mut Instance) -> Result<T>,
    ) -> Result<T> {
        let arc = self.instance(group, name)?;
        let mut inst = arc.lock().await;
        if inst.removed {
            return Err(BrokerError::UnknownConsumer {
                group: group.to_string(),
                name: name.to_string(),
            });
        }
        inst.last_used = Instant::now();
        self.heartbeat_instance(&mut inst).await?;
        f(self, &mut inst).await
    }

    /// Creates an instance (a fresh name when `name` is empty).
    pub async fn consumer_create(
        &self,
        group: &str,
        name: &str,
        config: InstanceConfig,
    ) -> Result<InstanceView> {
        validate_group_id(group).map_err(BrokerError::InvalidGroupId)?;
        let name = if name.is_empty() {
            format!("consumer-{}", uuid::Uuid::new_v4().simple())
        } else {
            name.to_string()
        };
        check_name(&name)?;
        if !(super::state::MIN_SESSION_TIMEOUT..=super::state::MAX_SESSION_TIMEOUT)
            .contains(&config.session_timeout)
        {
            return Err(BrokerError::InvalidRequest(format!(
                "session timeout must be between {} and {} ms",
                super::state::MIN_SESSION_TIMEOUT.as_millis(),
                super::state::MAX_SESSION_TIMEOUT.as_millis()
            )));
        }
        let inst = Instance {
            group: group.to_string(),
            name: name.clone(),
            config,
            topics: Vec::new(),
            member: None,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            last_used: Instant::now(),
            removed: false,
        };
        let view = inst.view();
        let mut map = self.consumers.lock();
        let key = (group.to_string(), name.clone());
        if map.contains_key(&key) {
            return Err(BrokerError::ConsumerExists {
                group: group.to_string(),
                name,
            });
        }
        map.insert(key, Arc::new(tokio::sync::Mutex::new(inst)));
        Ok(view)
    }

    /// Removes an instance: commits (with auto-commit) and leaves the group.
    pub async fn consumer_delete(&self, group: &str, name: &str) -> Result<()> {
        let arc = self.instance(group, name)?;
        let mut inst = arc.lock().await;
        if inst.removed {
            return Err(BrokerError::UnknownConsumer {
                group: group.to_string(),
                name: name.to_string(),
            });
        }
        if inst.config.auto_commit
            && let Err(e) = self.commit_positions(&mut inst, None).await
        {
            tracing::warn!(group, name, error = %e, "final auto-commit failed");
        }
        self.leave(&mut inst);
        inst.removed = true;
        self.consumers
            .lock()
            .remove(&(group.to_string(), name.to_string()));
        Ok(())
    }

    /// Replaces the subscription.
    pub async fn consumer_subscribe(
        &self,
        group: &str,
        name: &str,
        topics: Vec<String>,
    ) -> Result<InstanceView> {
        if topics.is_empty() {
            return Err(BrokerError::InvalidRequest(
                "subscribe needs at least one topic".into(),
            ));
        }
        let snap = self.meta.snapshot();
        for t in &topics {
            cascade_types::validate_topic_name(t)?;
            snap.topic(t)?;
        }
        self.with_instance(group, name, async |b, inst| {
            let mut topics = topics;
            topics.sort();
            topics.dedup();
            inst.topics = topics;
            b.heartbeat_instance(inst).await?;
            Ok(inst.view())
        })
        .await
    }

    /// Drops the subscription and leaves the group.
    pub async fn consumer_unsubscribe(&self, group: &str, name: &str) -> Result<InstanceView> {
        self.with_instance(group, name, async |b, inst| {
            if inst.config.auto_commit {
                b.commit_positions(inst, None).await?;
            }
            b.leave(inst);
            inst.topics.clear();
            Ok(inst.view())
        })
        .await
    }

    /// The instance's settings, subscription, assignment and positions.
    pub async fn consumer_get(&self, group: &str, name: &str) -> Result<InstanceView> {
        self.with_instance(group, name, async |_, inst| Ok(inst.view()))
            .await
    }

    /// Returns records at the instance's positions (waiting up to `timeout`) and advances them.
    /// Each result carries the offset its records start at.
    pub async fn consumer_poll(
        &self,
        group: &str,
        name: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<(FetchOut, u64)>> {
        let timeout = timeout.min(MAX_POLL_WAIT);
        self.with_instance(group, name, async |b, inst| {
            if inst.config.auto_commit {
                b.commit_positions(inst, None).await?;
            }
            if inst.positions.is_empty() {
                // Nothing assigned (yet): behave like an empty long poll, bounded.
                tokio::select! {
                    _ = tokio::time::sleep(timeout.min(Duration::from_secs(1))) => {}
                    _ = b.shutdown.cancelled() => {}
                }
                return Ok(Vec::new());
            }
            let parts: Vec<FetchPart> = inst
                .positions
                .iter()
                .map(|(tp, o)| FetchPart {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    position: Position::Offset(*o),
                    max_bytes,
                    leader_epoch: None,
                })
                .collect();
            // Partitions led elsewhere are read from their leaders (the instance lives on the
            // group's coordinator, which need not lead them).
            let out = b.fetch_anywhere(parts, timeout, max_bytes).await;
            let mut result = Vec::new();
            for f in out {
                let tp = Tp::new(f.topic.clone(), f.partition);
                let Some(from) = inst.positions.get(&tp).copied() else {
                    continue;
                };
                if let Some(e) = &f.error {
                    match **e {
                        BrokerError::OffsetOutOfRange { .. } => {
                            let start = b.reset_position(&tp, inst.config.reset).await?;
                            inst.positions.insert(tp, start);
                            continue;
                        }
                        // The leader moved or is out of reach: the next poll tries again
                        // with fresher metadata.
                        BrokerError::NotLeader { .. }
                        | BrokerError::StaleLeader { .. }
                        | BrokerError::LeaderNotAvailable { .. } => continue,
                        _ => return Err(BrokerError::InvalidRequest(e.to_string())),
                    }
                }
                if !f.batches.is_empty() {
                    inst.positions.insert(tp, f.next_offset);
                    result.push((f, from));
                }
            }
            Ok(result)
        })
        .await
    }

    /// Commits `offsets` (each for an assigned partition), or every position when `None`.
    pub async fn consumer_commit(
        &self,
        group: &str,
        name: &str,
        offsets: Option<Vec<(Tp, u64, String)>>,
    ) -> Result<()> {
        self.with_instance(group, name, async |b, inst| {
            b.commit_positions(inst, offsets).await
        })
        .await
    }

    /// Moves positions of assigned partitions.
    pub async fn consumer_seek(
        &self,
        group: &str,
        name: &str,
        offsets: Vec<(Tp, u64)>,
        beginning: Vec<Tp>,
        end: Vec<Tp>,
    ) -> Result<InstanceView> {
        self.with_instance(group, name, async |b, inst| {
            let owned = |tp: &Tp| -> Result<()> {
                if inst.positions.contains_key(tp) {
                    Ok(())
                } else {
                    Err(BrokerError::PartitionNotAssigned {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                    })
                }
            };
            let mut moves = Vec::new();
            for (tp, o) in offsets {
                owned(&tp)?;
                moves.push((tp, o));
            }
            for tp in beginning {
                owned(&tp)?;
                let o = b.reset_position(&tp, Reset::Earliest).await?;
                moves.push((tp, o));
            }
            for tp in end {
                owned(&tp)?;
                let o = b.reset_position(&tp, Reset::Latest).await?;
                moves.push((tp, o));
            }
            for (tp, o) in moves {
                inst.positions.insert(tp, o);
            }
            Ok(inst.view())
        })
        .await
    }

    /// Removes instances idle past their session timeout (called by housekeeping).
    pub(crate) fn expire_consumers(&self) {
        let now = Instant::now();
        let candidates: Vec<(Key, Arc<tokio::sync::Mutex<Instance>>)> = self
            .consumers
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, arc) in candidates {
            // An instance busy in a call is alive by definition.
            let Ok(mut inst) = arc.try_lock() else {
                continue;
            };
            if now.saturating_duration_since(inst.last_used) > inst.config.session_timeout {
                tracing::info!(group = %key.0, name = %key.1, "consumer instance expired");
                self.leave(&mut inst);
                inst.removed = true;
                self.consumers.lock().remove(&key);
            }
        }
    }

    fn leave(&self, inst: &mut Instance) {
        if let Some((member_id, _)) = inst.member.take() {
            let _ = self.groups().heartbeat(
                &inst.group,
                HeartbeatIn {
                    member_id,
                    member_epoch: -1,
                    ..Default::default()
                },
            );
        }
        inst.positions.clear();
        inst.committed.clear();
    }

    /// Where a partition without a usable position starts: its leader's log start or high
    /// watermark (this node need not hold a replica).
    async fn reset_position(&self, tp: &Tp, reset: Reset) -> Result<u64> {
        self.offset_anywhere(&tp.topic, tp.partition, reset == Reset::Earliest)
            .await
    }

    /// Heartbeats the instance's membership (joining when it has a subscription but no
    /// membership) and applies the assignment it gets back.
    async fn heartbeat_instance(&self, inst: &mut Instance) -> Result<()> {
        if inst.topics.is_empty() {
            return Ok(());
        }
        let (member_id, member_epoch) = inst.member.clone().unwrap_or_default();
        let req = |member_id: String, member_epoch: i32| HeartbeatIn {
            member_id,
            member_epoch,
            topics: inst.topics.clone(),
            assignor: String::new(),
            session_timeout: inst.config.session_timeout,
            client_id: format!("rest:{}", inst.name),
        };
        let out = match self
            .groups()
            .heartbeat(&inst.group, req(member_id, member_epoch))
        {
            Ok(out) => out,
            Err(BrokerError::UnknownMember { .. } | BrokerError::FencedMemberEpoch { .. }) => {
                // Evicted while idle: what it owned belongs to others now. Rejoin.
                inst.positions.clear();
                inst.committed.clear();
                self.groups()
                    .heartbeat(&inst.group, req(String::new(), 0))?
            }
            Err(e) => return Err(e),
        };
        inst.member = Some((out.member_id.clone(), out.member_epoch));
        let revoked: Vec<Tp> = inst
            .positions
            .keys()
            .filter(|tp| !out.assignment.contains(*tp))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            if inst.config.auto_commit {
                // Partitions of a deleted (or re-created smaller) topic cannot be committed and
                // need not be: skip them, or the instance would fail every call from now on.
                let snap = self.meta.snapshot();
                let offsets = revoked
                    .iter()
                    .filter(|tp| {
                        snap.topic(&tp.topic)
                            .is_ok_and(|t| (tp.partition as usize) < t.partitions.len())
                    })
                    .map(|tp| (tp.clone(), inst.positions[tp], String::new()))
                    .collect();
                self.commit_positions(inst, Some(offsets)).await?;
            }
            for tp in &revoked {
                inst.positions.remove(tp);
                inst.committed.remove(tp);
            }
        }
        let added: Vec<Tp> = out
            .assignment
            .iter()
            .filter(|tp| !inst.positions.contains_key(*tp))
            .cloned()
            .collect();
        if !added.is_empty() {
            let committed = self.groups().fetch_offsets(&inst.group, &added);
            for tp in added {
                let start = match committed.get(&tp) {
                    Some(c) => {
                        inst.committed.insert(tp.clone(), c.offset);
                        c.offset
                    }
                    None => self.reset_position(&tp, inst.config.reset).await?,
                };
                inst.positions.insert(tp, start);
            }
        }
        Ok(())
    }

    /// Commits the given offsets, or every position that moved since its last commit.
    async fn commit_positions(
        &self,
        inst: &mut Instance,
        offsets: Option<Vec<(Tp, u64, String)>>,
    ) -> Result<()> {
        let Some((member_id, epoch)) = inst.member.clone() else {
            if offsets.as_ref().is_some_and(|o| !o.is_empty()) {
                return Err(BrokerError::InvalidRequest(
                    "the consumer instance has no subscription, so nothing to commit".into(),
                ));
            }
            return Ok(());
        };
        let offsets: Vec<(Tp, u64, String)> = match offsets {
            Some(list) => {
                let owned: BTreeSet<&Tp> = inst.positions.keys().collect();
                for (tp, _, _) in &list {
                    if !owned.contains(tp) {
                        return Err(BrokerError::PartitionNotAssigned {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                        });
                    }
                }
                list
            }
            None => inst
                .positions
                .iter()
                .filter(|(tp, o)| inst.committed.get(*tp) != Some(*o))
                .map(|(tp, o)| (tp.clone(), *o, String::new()))
                .collect(),
        };
        if offsets.is_empty() {
            return Ok(());
        }
        self.groups()
            .commit(&inst.group, &member_id, epoch, offsets.clone())
            .await?;
        for (tp, o, _) in offsets {
            inst.committed.insert(tp, o);
        }
        Ok(())
    }
}
