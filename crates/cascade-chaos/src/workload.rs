//! The workload: producers writing with `acks=all` and a consumer group committing offsets,
//! both through `cascade-client`, every outcome recorded in a [`Recorder`].
//!
//! Invariants the checker relies on:
//! - every payload is unique (`<run>-p<producer>-<seq>`) and is added to `sent` before its
//!   first attempt, so a record found on disk is either someone's payload or a phantom;
//! - an acknowledgement is recorded with the offsets the broker named and two times: when the
//!   request's first attempt was sent and when the acknowledgement arrived (one monotonic
//!   clock, [`Recorder::now`]);
//! - each producer has one request in flight and retries the same bytes after a failure or a
//!   timeout (so an ambiguous attempt may leave a duplicate, which the checker counts);
//! - a commit is recorded only when acknowledged, with the offset sent;
//! - every loop ends: on the stop flag, on a count, and each attempt has a timeout.

use crate::checker::{Ack, Commit, Nanos};
use bytes::Bytes;
use cascade_client::{Acks, Client, GroupConfig, GroupConsumer, proto};
use cascade_record::{BatchBuilder, Record};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Prefix of every payload, unique per run.
    pub run_id: String,
    /// Topic written.
    pub topic: String,
    /// Its partition count.
    pub partitions: u32,
    /// Concurrent producers.
    pub producers: u32,
    /// Group members.
    pub consumers: u32,
    /// Consumer group id.
    pub group: String,
    /// Records per produce request at most.
    pub batch_max: u32,
    /// Per-attempt timeout.
    pub request_timeout: Duration,
    /// Attempts per produce request before giving up.
    pub max_attempts: u32,
    /// Events per producer at most (the duration normally ends the run first).
    pub max_events_per_producer: u64,
}

/// Counters of what the workload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadStats {
    /// Produce attempts made.
    pub produce_attempts: u64,
    /// Attempts that failed or timed out (then retried).
    pub produce_failed_attempts: u64,
    /// Requests given up after all attempts or at the stop (outcome unknown).
    pub produce_given_up: u64,
    /// Requests acknowledged.
    pub batches_acked: u64,
    /// Records consumed by the group.
    pub records_consumed: u64,
    /// Commits acknowledged.
    pub commits_acked: u64,
    /// Commits that failed.
    pub commit_failures: u64,
    /// Group polls or joins that failed.
    pub consumer_errors: u64,
    /// Produce error messages by count (first words of the message).
    pub produce_errors: BTreeMap<String, u64>,
}

/// Everything the workload observed, shared by its tasks.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    acks: Mutex<Vec<Ack>>,
    sent: Mutex<HashSet<Vec<u8>>>,
    commits: Mutex<Vec<Commit>>,
    errors: Mutex<BTreeMap<String, u64>>,
    produce_attempts: AtomicU64,
    produce_failed_attempts: AtomicU64,
    produce_given_up: AtomicU64,
    batches_acked: AtomicU64,
    records_consumed: AtomicU64,
    commit_failures: AtomicU64,
    consumer_errors: AtomicU64,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            acks: Mutex::default(),
            sent: Mutex::default(),
            commits: Mutex::default(),
            errors: Mutex::default(),
            produce_attempts: AtomicU64::new(0),
            produce_failed_attempts: AtomicU64::new(0),
            produce_given_up: AtomicU64::new(0),
            batches_acked: AtomicU64::new(0),
            records_consumed: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            consumer_errors: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    /// The acknowledged events so far.
    pub fn acks(&self) -> Vec<Ack> {
        lock(&self.acks).clone()
    }

    /// Every payload sent so far.
    pub fn sent(&self) -> HashSet<Vec<u8>> {
        lock(&self.sent).clone()
    }

    /// The acknowledged commits so far.
    pub fn commits(&self) -> Vec<Commit> {
        lock(&self.commits).clone()
    }

    /// The counters.
    pub fn stats(&self) -> WorkloadStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkloadStats {
            produce_attempts: get(&self.produce_attempts),
            produce_failed_attempts: get(&self.produce_failed_attempts),
            produce_given_up: get(&self.produce_given_up),
            batches_acked: get(&self.batches_acked),
            records_consumed: get(&self.records_consumed),
            commits_acked: lock(&self.commits).len() as u64,
            commit_failures: get(&self.commit_failures),
            consumer_errors: get(&self.consumer_errors),
            produce_errors: lock(&self.errors).clone(),
        }
    }

    fn error(&self, message: &str) {
        // Keep the kind of error, not the details (addresses, offsets) that make every
        // message distinct.
        let key: String = message
            .split_whitespace()
            .take(8)
            .collect::<Vec<_>>()
            .join(" ");
        let mut errors = lock(&self.errors);
        if errors.len() < 50 || errors.contains_key(&key) {
            *errors.entry(key).or_default() += 1;
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One producer: batches of 1..=`batch_max` records to the partitions in turn, one request in
/// flight, until `stop` is set or its event budget is spent.
pub async fn producer(
    id: u32,
    client: Client,
    cfg: Arc<WorkloadConfig>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut seq: u64 = 0;
    let mut round: u64 = 0;
    while !stop.load(Ordering::Relaxed) && seq < cfg.max_events_per_producer {
        let partition = ((u64::from(id) + round) % u64::from(cfg.partitions)) as u32;
        let n = 1 + (round % u64::from(cfg.batch_max.max(1)));
        round += 1;
        let payloads: Vec<Vec<u8>> = (seq..seq + n)
            .map(|s| format!("{}-p{id}-{s}", cfg.run_id).into_bytes())
            .collect();
        seq += n;
        let mut builder = BatchBuilder::new();
        let ts = wall_ms();
        for p in &payloads {
            builder.push(Record {
                timestamp: ts,
                key: None,
                value: Some(p),
                headers: &[],
            });
        }
        let batch = Bytes::from(builder.finish());
        lock(&rec.sent).extend(payloads.iter().cloned());
        let invoked = rec.now();
        let mut acked = false;
        for attempt in 1..=cfg.max_attempts {
            rec.produce_attempts.fetch_add(1, Ordering::Relaxed);
            let r = tokio::time::timeout(
                cfg.request_timeout,
                client.produce_batches(&cfg.topic, partition, batch.clone(), Acks::All),
            )
            .await;
            match r {
                Ok(Ok(p)) => {
                    let at = rec.now();
                    let mut acks = lock(&rec.acks);
                    for (i, payload) in payloads.iter().enumerate() {
                        acks.push(Ack {
                            topic: cfg.topic.clone(),
                            partition,
                            offset: p.base_offset + i as u64,
                            payload: payload.clone(),
                            invoked,
                            acked: at,
                        });
                    }
                    drop(acks);
                    rec.batches_acked.fetch_add(1, Ordering::Relaxed);
                    acked = true;
                    break;
                }
                Ok(Err(e)) => rec.error(&e.to_string()),
                Err(_) => rec.error("request timed out"),
            }
            rec.produce_failed_attempts.fetch_add(1, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) || attempt == cfg.max_attempts {
                break;
            }
            // Any error is retried: retrying is always safe for the checker (a duplicate at
            // worst), and the cluster decides which errors are transient during faults.
            tokio::time::sleep(
                Duration::from_millis(100 * u64::from(attempt)).min(Duration::from_secs(1)),
            )
            .await;
        }
        if !acked {
            rec.produce_given_up.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One consumer group member: polls, and commits after each poll the offset after the last
/// record it got from each partition. It rejoins after repeated failures, and leaves at the
/// stop.
pub async fn consumer(
    id: u32,
    client: Client,
    cfg: Arc<WorkloadConfig>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut gcfg = GroupConfig::new(&cfg.group, &[cfg.topic.as_str()]);
    gcfg.auto_commit = false;
    gcfg.session_timeout = Duration::from_secs(6);
    gcfg.client_id = format!("chaos-consumer-{id}");
    let mut member: Option<GroupConsumer> = None;
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = member.as_mut() else {
            match tokio::time::timeout(
                Duration::from_secs(10),
                GroupConsumer::join(client.clone(), gcfg.clone()),
            )
            .await
            {
                Ok(Ok(c)) => member = Some(c),
                _ => {
                    rec.consumer_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            continue;
        };
        let polled =
            tokio::time::timeout(Duration::from_secs(10), c.poll(Duration::from_millis(500))).await;
        let records = match polled {
            Ok(Ok(r)) => {
                failures = 0;
                r
            }
            _ => {
                rec.consumer_errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                if failures >= 3 {
                    // Start over as a new member; the old one's session expires on its own.
                    member = None;
                    failures = 0;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        rec.records_consumed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut next: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for r in &records {
            let e = next.entry((r.topic.clone(), r.partition)).or_default();
            *e = (*e).max(r.offset + 1);
        }
        if next.is_empty() {
            continue;
        }
        let offsets: Vec<proto::OffsetCommit> = next
            .iter()
            .map(|((t, p), o)| proto::OffsetCommit {
                topic: t.clone(),
                partition: *p,
                offset: *o,
                metadata: String::new(),
            })
            .collect();
        let invoked = rec.now();
        let by = format!(
            "consumer {id} member {} epoch {}",
            c.member_id(),
            c.member_epoch()
        );
        let r = tokio::time::timeout(
            cfg.request_timeout,
            client.commit_offsets(&cfg.group, c.member_id(), c.member_epoch(), offsets),
        )
        .await;
        if let Ok(Ok(())) = r {
            let at = rec.now();
            lock(&rec.commits).extend(next.into_iter().map(|((topic, partition), offset)| {
                Commit {
                    topic,
                    partition,
                    offset,
                    invoked,
                    acked: at,
                    by: by.clone(),
                }
            }));
        } else {
            rec.commit_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(c) = member {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.close()).await;
    }
}
