//! The membership state machine of one consumer group, without IO or clocks (time is passed
//! in), so every rule is unit-tested directly.
//!
//! Rules (the KIP-848 idea, server-side assignment):
//! - Any membership or subscription change, or a change in the subscribed topics' partition
//!   counts, bumps the **group epoch** and recomputes the **target assignment**.
//! - Each heartbeat of a member acknowledges the assignment it was last sent (it now owns
//!   exactly that) and gets a new one: what it owns that is still its target, plus target
//!   partitions that **no other member owns or was sent**. So a partition moves only after its
//!   previous owner has heartbeated without it: two members never own one partition at once.
//! - A member's **epoch** rises whenever its assignment changes; commits must carry the
//!   member's current epoch, and an evicted or departed member's commits are refused.
//! - A member silent for longer than its session timeout is evicted. Members are told to
//!   heartbeat every third of their session timeout (at most every 3 s), so a live member
//!   always heartbeats well within its session, whatever timeout it chose.

use super::assignor::{Assignor, Tp};
use crate::error::{BrokerError, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Default session timeout (Kafka's `session.timeout.ms`).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);
/// Shortest session timeout accepted.
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest session timeout accepted.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest heartbeat interval members are told to use.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);

/// How often a member with `session_timeout` must heartbeat: a third of the timeout, at most
/// [`MAX_HEARTBEAT_INTERVAL`], so that a member is never evicted between two heartbeats.
pub fn heartbeat_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 3).min(MAX_HEARTBEAT_INTERVAL)
}

/// One member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Id given by the coordinator.
    pub id: String,
    /// The client's self-description.
    pub client_id: String,
    /// Current member epoch.
    pub epoch: i32,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Evicted after this much silence.
    pub session_timeout: Duration,
    /// Last heartbeat.
    pub last_seen: Instant,
    /// What the member owns (acknowledged by its last heartbeat).
    pub owned: BTreeSet<Tp>,
    /// What it was last sent (owned once it heartbeats again).
    pub sent: BTreeSet<Tp>,
}

/// A heartbeat as the state machine sees it.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatIn {
    /// Empty to join.
    pub member_id: String,
    /// 0 to join, -1 to leave.
    pub member_epoch: i32,
    /// Subscribed topics (empty: unchanged).
    pub topics: Vec<String>,
    /// Assignor name.
    pub assignor: String,
    /// Session timeout; zero means the default.
    pub session_timeout: Duration,
    /// Client id.
    pub client_id: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatOut {
    /// The member's id.
    pub member_id: String,
    /// Its epoch now.
    pub member_epoch: i32,
    /// What it owns now.
    pub assignment: BTreeSet<Tp>,
    /// How often it must heartbeat (see [`heartbeat_interval`]).
    pub heartbeat_interval: Duration,
}

/// One group's live membership.
#[derive(Debug, Clone)]
pub struct Group {
    /// Group id.
    pub id: String,
    /// Bumped on every target change.
    pub epoch: i32,
    /// The strategy (set by the first member to join an empty group).
    pub assignor: Assignor,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    target: BTreeMap<String, BTreeSet<Tp>>,
    counts: BTreeMap<String, u32>,
}

impl Group {
    /// An empty group.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            epoch: 0,
            assignor: Assignor::Range,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// "empty", "stable" (every member owns its target) or "reconciling".
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.members.values().all(|m| {
            m.sent == *self.target.get(&m.id).unwrap_or(&BTreeSet::new()) && m.owned == m.sent
        }) {
            "stable"
        } else {
            "reconciling"
        }
    }

    /// Topics any member subscribes to.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Handles a heartbeat. `counts` gives a topic's partition count (None if it does not
    /// exist); `new_id` makes ids for joining members.
    pub fn heartbeat(
        &mut self,
        req: HeartbeatIn,
        now: Instant,
        counts: &dyn Fn(&str) -> Option<u32>,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<HeartbeatOut> {
        if req.member_epoch == -1 {
            self.member(&req.member_id)?;
            self.members.remove(&req.member_id);
            self.retarget(counts);
            return Ok(HeartbeatOut {
                member_id: req.member_id,
                member_epoch: -1,
                assignment: BTreeSet::new(),
                heartbeat_interval: MAX_HEARTBEAT_INTERVAL,
            });
        }
        let timeout = if req.session_timeout.is_zero() {
            DEFAULT_SESSION_TIMEOUT
        } else {
            req.session_timeout
        };
        if !(MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT).contains(&timeout) {
            return Err(BrokerError::InvalidRequest(format!(
                "session timeout must be between {} and {} ms",
                MIN_SESSION_TIMEOUT.as_millis(),
                MAX_SESSION_TIMEOUT.as_millis()
            )));
        }
        let assignor = Assignor::parse(&req.assignor).ok_or_else(|| {
            BrokerError::InvalidRequest(format!(
                "unknown assignor {:?} (use range or roundrobin)",
                req.assignor
            ))
        })?;
        let mut changed = false;
        let id = if req.member_epoch == 0 && req.member_id.is_empty() {
            if req.topics.is_empty() {
                return Err(BrokerError::InvalidRequest(
                    "joining needs at least one topic".into(),
                ));
            }
            if self.members.is_empty() {
                self.assignor = assignor;
            }
            let id = new_id();
            self.members.insert(
                id.clone(),
                Member {
                    id: id.clone(),
                    client_id: req.client_id.clone(),
                    epoch: 0,
                    topics: dedup(req.topics.clone()),
                    session_timeout: timeout,
                    last_seen: now,
                    owned: BTreeSet::new(),
                    sent: BTreeSet::new(),
                },
            );
            changed = true;
            id
        } else {
            let m = self.member(&req.member_id)?;
            if req.member_epoch != m.epoch {
                let current = m.epoch;
                // A fenced member's partitions are free for others at once.
                self.members.remove(&req.member_id);
                self.retarget(counts);
                return Err(BrokerError::FencedMemberEpoch {
                    group: self.id.clone(),
                    member: req.member_id,
                    got: req.member_epoch,
                    current,
                });
            }
            let m = self.members.get_mut(&req.member_id).expect("checked");
            m.last_seen = now;
            m.session_timeout = timeout;
            m.owned = m.sent.clone();
            let topics = dedup(req.topics.clone());
            if !topics.is_empty() && topics != m.topics {
                m.topics = topics;
                changed = true;
            }
            req.member_id.clone()
        };
        if changed || self.counts_changed(counts) {
            self.retarget(counts);
        }
        Ok(self.reconcile(&id))
    }

    fn member(&self, id: &str) -> Result<&Member> {
        self.members
            .get(id)
            .ok_or_else(|| BrokerError::UnknownMember {
                group: self.id.clone(),
                member: id.to_string(),
            })
    }

    fn counts_changed(&self, counts: &dyn Fn(&str) -> Option<u32>) -> bool {
        self.subscribed_topics()
            .iter()
            .any(|t| counts(t) != self.counts.get(t).copied())
    }

    fn retarget(&mut self, counts: &dyn Fn(&str) -> Option<u32>) {
        self.counts = self
            .subscribed_topics()
            .into_iter()
            .filter_map(|t| counts(&t).map(|c| (t, c)))
            .collect();
        let subs = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.topics.clone()))
            .collect();
        self.target = self.assignor.assign(&subs, &self.counts);
        self.epoch += 1;
    }

    /// The new assignment for `id`: kept partitions plus free target partitions.
    fn reconcile(&mut self, id: &str) -> HeartbeatOut {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let taken: BTreeSet<&Tp> = self
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.owned.iter().chain(m.sent.iter()))
            .collect();
        let m = &self.members[id];
        let next: BTreeSet<Tp> = target
            .iter()
            .filter(|tp| m.owned.contains(*tp) || !taken.contains(tp))
            .cloned()
            .collect();
        let group_epoch = self.epoch;
        let m = self.members.get_mut(id).expect("member");
        if next != m.sent || m.epoch == 0 {
            m.epoch = (m.epoch + 1).max(group_epoch);
        }
        m.sent = next.clone();
        HeartbeatOut {
            member_id: id.to_string(),
            member_epoch: m.epoch,
            assignment: next,
            heartbeat_interval: heartbeat_interval(m.session_timeout),
        }
    }

    /// Removes members silent past their session timeout; returns their ids.
    pub fn expire(&mut self, now: Instant, counts: &dyn Fn(&str) -> Option<u32>) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| now.saturating_duration_since(m.last_seen) > m.session_timeout)
            .map(|m| m.id.clone())
            .collect();
        if !gone.is_empty() {
            for id in &gone {
                self.members.remove(id);
            }
            self.retarget(counts);
        }
        gone
    }

    /// Checks that a commit from `member_id` at `epoch` may proceed.
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<()> {
        if member_id.is_empty() {
            if self.members.is_empty() {
                return Ok(());
            }
            return Err(BrokerError::GroupNotEmpty(self.id.clone()));
        }
        let m = self.member(member_id)?;
        if m.epoch != epoch {
            return Err(BrokerError::FencedMemberEpoch {
                group: self.id.clone(),
                member: member_id.to_string(),
                got: epoch,
                current: m.epoch,
            });
        }
        Ok(())
    }
}

fn dedup(mut topics: Vec<String>) -> Vec<String> {
    topics.sort();
    topics.dedup();
    topics
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Env {
        now: Instant,
        next: u32,
    }

    impl Env {
        fn hb(
            &mut self,
            g: &mut Group,
            id: &str,
            epoch: i32,
            topics: &[&str],
        ) -> Result<HeartbeatOut> {
            let counts = |t: &str| match t {
                "t" => Some(4),
                "u" => Some(2),
                _ => None,
            };
            let mut mk = || {
                self.next += 1;
                format!("m{}", self.next)
            };
            g.heartbeat(
                HeartbeatIn {
                    member_id: id.into(),
                    member_epoch: epoch,
                    topics: topics.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                self.now,
                &counts,
                &mut mk,
            )
        }
    }

    fn parts(out: &HeartbeatOut) -> Vec<u32> {
        out.assignment.iter().map(|tp| tp.partition).collect()
    }

    #[test]
    fn partitions_move_only_after_release() {
        let mut env = Env {
            now: Instant::now(),
            next: 0,
        };
        let mut g = Group::new("g");
        let a = env.hb(&mut g, "", 0, &["t"]).unwrap();
        assert_eq!(parts(&a), [0, 1, 2, 3]);
        let b = env.hb(&mut g, "", 0, &["t"]).unwrap();
        assert!(b.assignment.is_empty(), "a still owns everything");
        // a heartbeats: it gives up 2 and 3.
        let a2 = env.hb(&mut g, &a.member_id, a.member_epoch, &[]).unwrap();
        assert_eq!(parts(&a2), [0, 1]);
        assert!(a2.member_epoch > a.member_epoch);
        let b2 = env.hb(&mut g, &b.member_id, b.member_epoch, &[]).unwrap();
        assert!(
            b2.assignment.is_empty(),
            "a has not acknowledged the revocation yet"
        );
        let a3 = env.hb(&mut g, &a.member_id, a2.member_epoch, &[]).unwrap();
        assert_eq!(parts(&a3), [0, 1]);
        let b3 = env.hb(&mut g, &b.member_id, b2.member_epoch, &[]).unwrap();
        assert_eq!(parts(&b3), [2, 3]);
        env.hb(&mut g, &b.member_id, b3.member_epoch, &[]).unwrap();
        assert_eq!(g.state(), "stable");
    }

    #[test]
    fn fencing_eviction_and_leaving() {
        let mut env = Env {
            now: Instant::now(),
            next: 0,
        };
        let mut g = Group::new("g");
        let a = env.hb(&mut g, "", 0, &["t"]).unwrap();
        assert!(g.check_commit(&a.member_id, a.member_epoch).is_ok());
        assert!(matches!(
            g.check_commit(&a.member_id, a.member_epoch - 1),
            Err(BrokerError::FencedMemberEpoch { .. })
        ));
        assert!(matches!(
            g.check_commit("", -1),
            Err(BrokerError::GroupNotEmpty(_))
        ));
        assert!(matches!(
            env.hb(&mut g, "nobody", 3, &[]),
            Err(BrokerError::UnknownMember { .. })
        ));
        let b = env.hb(&mut g, "", 0, &["t"]).unwrap();
        // a goes silent past its session timeout.
        env.now += DEFAULT_SESSION_TIMEOUT + Duration::from_secs(1);
        env.hb(&mut g, &b.member_id, b.member_epoch, &[]).unwrap();
        let gone = g.expire(env.now, &|_| Some(4));
        assert_eq!(gone, std::slice::from_ref(&a.member_id));
        assert!(matches!(
            g.check_commit(&a.member_id, a.member_epoch),
            Err(BrokerError::UnknownMember { .. })
        ));
        let epoch = g.members[&b.member_id].epoch;
        let b2 = env.hb(&mut g, &b.member_id, epoch, &[]).unwrap();
        assert_eq!(parts(&b2), [0, 1, 2, 3], "a's partitions went to b");
        let left = env.hb(&mut g, &b.member_id, -1, &[]).unwrap();
        assert_eq!(left.member_epoch, -1);
        assert_eq!(g.state(), "empty");
        assert!(g.check_commit("", -1).is_ok());
    }

    #[test]
    fn stale_epoch_is_fenced_and_frees_partitions() {
        let mut env = Env {
            now: Instant::now(),
            next: 0,
        };
        let mut g = Group::new("g");
        let a = env.hb(&mut g, "", 0, &["t"]).unwrap();
        let err = env
            .hb(&mut g, &a.member_id, a.member_epoch + 5, &[])
            .unwrap_err();
        assert!(matches!(err, BrokerError::FencedMemberEpoch { .. }));
        assert!(g.members.is_empty());
        let b = env.hb(&mut g, "", 0, &["t"]).unwrap();
        assert_eq!(parts(&b), [0, 1, 2, 3]);
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut env = Env {
            now: Instant::now(),
            next: 0,
        };
        let mut g = Group::new("g");
        assert!(env.hb(&mut g, "", 0, &[]).is_err(), "no topics");
        let mut req = HeartbeatIn {
            topics: vec!["t".into()],
            assignor: "sticky-ish".into(),
            ..Default::default()
        };
        let now = Instant::now();
        assert!(
            g.heartbeat(req.clone(), now, &|_| Some(1), &mut || "x".into())
                .is_err()
        );
        req.assignor = String::new();
        req.session_timeout = Duration::from_millis(10);
        assert!(
            g.heartbeat(req, now, &|_| Some(1), &mut || "x".into())
                .is_err()
        );
        assert!(g.members.is_empty(), "refused joins leave no member behind");
    }

    #[test]
    fn members_are_told_to_heartbeat_well_within_their_session() {
        assert_eq!(heartbeat_interval(MIN_SESSION_TIMEOUT).as_millis(), 333);
        assert_eq!(
            heartbeat_interval(DEFAULT_SESSION_TIMEOUT),
            MAX_HEARTBEAT_INTERVAL
        );
        let mut g = Group::new("g");
        let join = HeartbeatIn {
            topics: vec!["t".into()],
            session_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let a = g
            .heartbeat(join, Instant::now(), &|_| Some(1), &mut || "a".into())
            .unwrap();
        assert!(a.heartbeat_interval * 2 < Duration::from_secs(2), "{a:?}");
    }

    #[test]
    fn partition_growth_retargets() {
        let mut g = Group::new("g");
        let now = Instant::now();
        let join = HeartbeatIn {
            topics: vec!["t".into()],
            ..Default::default()
        };
        let a = g
            .heartbeat(join, now, &|_| Some(2), &mut || "a".into())
            .unwrap();
        assert_eq!(a.assignment.len(), 2);
        let hb = HeartbeatIn {
            member_id: "a".into(),
            member_epoch: a.member_epoch,
            ..Default::default()
        };
        let a2 = g
            .heartbeat(hb, now, &|_| Some(5), &mut || unreachable!())
            .unwrap();
        assert_eq!(a2.assignment.len(), 5);
    }
}
