//! Idempotency keys for produce: the first answer to a keyed request is remembered, and a retry
//! with the same key gets that answer instead of writing the records again.
//!
//! The memory is per node and in memory only: bounded in size ([`CAPACITY`] keys) and time
//! ([`TTL`]), and lost on restart. A retry that arrives while the first request is still being
//! written waits for its answer. Requests that failed as a whole (a gRPC error) are forgotten,
//! so a retry writes; per-partition failures are part of the answer and are remembered. The
//! request's bytes are hashed: the same key with a different request is refused.

use cascade_proto::v1 as pb;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Keys remembered at most.
pub const CAPACITY: usize = 100_000;
/// How long a key is remembered.
pub const TTL: Duration = Duration::from_secs(15 * 60);

type Answer = Option<Arc<pb::ProduceResponse>>;

enum Entry {
    /// Being written; the watch carries the answer (or None if it failed). The instant is
    /// when the key was claimed: it ties the entry to its place in the expiry queue.
    InFlight(u64, watch::Receiver<Option<Answer>>, Instant),
    Done(u64, Arc<pb::ProduceResponse>, Instant),
}

/// What to do with a keyed request.
pub enum Claim {
    /// First of its key: write, then [`IdempotencyCache::finish`] (or drop the guard, which
    /// forgets the key: a request cancelled half-way must not leave waiters hanging).
    First(FirstGuard),
    /// Already answered.
    Answered(Arc<pb::ProduceResponse>),
    /// Being written by another request: wait on this.
    Wait(watch::Receiver<Option<Answer>>),
    /// Same key, different request.
    Conflict,
}

type Key = (String, String);

/// Entries by (topic, key), and the keys in claim order for expiry.
type State = (HashMap<Key, Entry>, VecDeque<(Key, Instant)>);

/// The remembered answers.
#[derive(Default)]
pub struct IdempotencyCache {
    inner: Mutex<State>,
}

impl std::fmt::Debug for IdempotencyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyCache").finish_non_exhaustive()
    }
}

/// A stable hash of the request without its key.
pub fn request_hash(req: &pb::ProduceRequest) -> u64 {
    use prost::Message;
    let mut r = req.clone();
    r.idempotency_key.clear();
    let mut h = DefaultHasher::new();
    r.encode_to_vec().hash(&mut h);
    h.finish()
}

impl IdempotencyCache {
    /// Claims `key` for a request with `hash`.
    pub fn claim(&self, topic: &str, key: &str, hash: u64) -> Claim {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        let now = Instant::now();
        // Forget expired keys, and the oldest ones beyond capacity.
        while let Some((k, at)) = order.front() {
            if now.duration_since(*at) < TTL && map.len() <= CAPACITY {
                break;
            }
            // Only the entry this queue slot was made for (a key forgotten after a failure and
            // claimed again has a newer slot).
            if let Some(Entry::Done(_, _, claimed)) = map.get(k)
                && claimed == at
            {
                map.remove(k);
            }
            order.pop_front();
        }
        let k = (topic.to_string(), key.to_string());
        let abandoned = matches!(map.get(&k), Some(Entry::InFlight(_, rx, _))
            if rx.has_changed().is_err() || rx.borrow().as_ref().is_some_and(|a| a.is_none()));
        if abandoned {
            // Its first request was dropped unfinished: the key is free again.
            map.remove(&k);
        }
        match map.get(&k) {
            Some(Entry::Done(h, _, _)) | Some(Entry::InFlight(h, _, _)) if *h != hash => {
                Claim::Conflict
            }
            Some(Entry::Done(_, answer, _)) => Claim::Answered(answer.clone()),
            Some(Entry::InFlight(_, rx, _)) => Claim::Wait(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                map.insert(k.clone(), Entry::InFlight(hash, rx, now));
                order.push_back((k, now));
                Claim::First(FirstGuard {
                    tx: Some(tx),
                    topic: topic.to_string(),
                    key: key.to_string(),
                    hash,
                })
            }
        }
    }

    /// Records the outcome of a [`Claim::First`]: the answer, or `None` if the request failed
    /// as a whole (then the key is forgotten and a retry writes).
    pub fn finish(&self, mut guard: FirstGuard, answer: Answer) {
        let tx = guard.tx.take().expect("finished once");
        self.settle(&guard.topic, &guard.key, guard.hash, tx, answer);
    }

    fn settle(
        &self,
        topic: &str,
        key: &str,
        hash: u64,
        tx: watch::Sender<Option<Answer>>,
        answer: Answer,
    ) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (topic.to_string(), key.to_string());
        let claimed = match guard.0.get(&k) {
            Some(Entry::InFlight(_, _, at)) => *at,
            _ => Instant::now(),
        };
        match &answer {
            Some(a) => {
                guard.0.insert(k, Entry::Done(hash, a.clone(), claimed));
            }
            None => {
                guard.0.remove(&k);
            }
        }
        let _ = tx.send(Some(answer));
    }
}

/// The claim of the first request with a key. Pass it to [`IdempotencyCache::finish`]; if it
/// is dropped unfinished (the request was cancelled), waiters are told the attempt failed and
/// the next claim of the key starts afresh.
pub struct FirstGuard {
    tx: Option<watch::Sender<Option<Answer>>>,
    topic: String,
    key: String,
    hash: u64,
}

impl Drop for FirstGuard {
    fn drop(&mut self) {
        // Tell waiters the attempt is over; the key's entry is replaced by the next claim
        // (see `claim`'s handling of an abandoned in-flight entry).
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(value: &str, key: &str) -> pb::ProduceRequest {
        pb::ProduceRequest {
            topic: "t".into(),
            partitions: vec![pb::PartitionRecords {
                partition: 0,
                batches: Default::default(),
                records: vec![pb::Record {
                    value: Some(value.as_bytes().to_vec().into()),
                    ..Default::default()
                }],
            }],
            acks: 0,
            timeout_ms: 0,
            idempotency_key: key.into(),
        }
    }

    fn answer(offset: u64) -> Answer {
        Some(Arc::new(pb::ProduceResponse {
            results: vec![pb::PartitionProduceResult {
                base_offset: offset,
                ..Default::default()
            }],
        }))
    }

    #[test]
    fn first_answer_is_remembered_per_topic_and_key() {
        let c = IdempotencyCache::default();
        let h = request_hash(&req("a", "k1"));
        assert_eq!(
            h,
            request_hash(&req("a", "k2")),
            "the key is not part of the hash"
        );
        assert_ne!(h, request_hash(&req("b", "k1")));
        let Claim::First(guard) = c.claim("t", "k1", h) else {
            panic!("first")
        };
        assert!(matches!(c.claim("t", "k1", h), Claim::Wait(_)));
        assert!(matches!(c.claim("t", "k1", h + 1), Claim::Conflict));
        let other_topic = c.claim("u", "k1", h);
        assert!(matches!(other_topic, Claim::First(_)), "keys are per topic");
        c.finish(guard, answer(7));
        match c.claim("t", "k1", h) {
            Claim::Answered(a) => assert_eq!(a.results[0].base_offset, 7),
            _ => panic!("answered"),
        }
    }

    #[test]
    fn a_failed_first_attempt_is_forgotten() {
        let c = IdempotencyCache::default();
        let Claim::First(guard) = c.claim("t", "k", 1) else {
            panic!("first")
        };
        let Claim::Wait(mut rx) = c.claim("t", "k", 1) else {
            panic!("wait")
        };
        c.finish(guard, None);
        assert_eq!(
            *rx.borrow_and_update(),
            Some(None),
            "the waiter learns it failed"
        );
        assert!(matches!(c.claim("t", "k", 1), Claim::First(_)));
    }

    #[test]
    fn a_cancelled_first_attempt_frees_the_key_and_its_waiters() {
        let c = IdempotencyCache::default();
        let Claim::First(guard) = c.claim("t", "k", 1) else {
            panic!("first")
        };
        let Claim::Wait(mut rx) = c.claim("t", "k", 1) else {
            panic!("wait")
        };
        drop(guard); // the request future was dropped half-way
        assert_eq!(*rx.borrow_and_update(), Some(None));
        let again = c.claim("t", "k", 1);
        assert!(matches!(again, Claim::First(_)), "the key is free again");
        assert!(
            matches!(c.claim("t", "k", 2), Claim::Conflict),
            "and held by the new claim"
        );
    }
}
