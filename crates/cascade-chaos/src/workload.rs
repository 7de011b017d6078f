//! The workload: pipelined idempotent producers writing with `acks=all` and a consumer group
//! committing offsets, both through `cascade-client`, every outcome recorded in a
//! [`Recorder`].
//!
//! Producers: each workload producer is one idempotent [`Producer`] (`acks=all`, up to
//! [`WorkloadConfig::max_in_flight`] requests in flight per partition) writing a steady stream
//! of records to explicit partitions: bursts of 1..=`batch_max` records to one of its
//! partitions in turn, every partition of the topic (so several producers share every
//! partition), one burst per [`WorkloadConfig::send_interval`]. The producer batches them
//! (linger) and numbers its batches per partition; the broker must store each producer's
//! records once and in send order, which the checker verifies.
//!
//! Invariants the checker relies on:
//! - every payload is unique (`<run>-p<producer>-<n>`) and is recorded as [`Sent`] (with its
//!   producer, producer session, partition and send order) *before* `send` is called, so a
//!   record found on disk is either attributable or a phantom;
//! - the send order `seq` is per workload producer and partition, taken in the order `send` is
//!   called; a producer session is one `Producer` instance (a new one, with a new producer id,
//!   is made only if the current one is fenced or closed: order is promised per session);
//! - an acknowledgement is recorded with the offset the producer returned and two times: when
//!   `send` was called and when the acknowledgement arrived (one monotonic clock,
//!   [`Recorder::now`]); a failed `send` is recorded as failed with its error, and a record
//!   not answered within [`WorkloadConfig::record_timeout`] (or by the end of the drain at the
//!   stop) stays unknown. Both may or may not be stored;
//! - a commit is recorded only when acknowledged, with the offset sent;
//! - every loop ends: on the stop flag, on a count, and every wait has a timeout (a record's
//!   answer, the producer's creation, the drain at the stop, each consumer call); at most
//!   [`WorkloadConfig::max_outstanding`] records per producer and partition await an answer
//!   at once (a partition at its limit is skipped, not waited for).

use crate::checker::{Commit, Nanos, SendOutcome, Sent};
use bytes::Bytes;
use cascade_client::{
    Acks, Client, ClientError, GroupConfig, GroupConsumer, Producer, ProducerConfig,
    ProducerRecord, proto,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

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
    /// Records per burst to one partition at most.
    pub batch_max: u32,
    /// Pause between two bursts of one producer.
    pub send_interval: Duration,
    /// Requests in flight per partition in each producer (at most 5: idempotence).
    pub max_in_flight: usize,
    /// Records of one producer awaiting an answer per partition at most: a partition whose
    /// backlog is full is skipped until answers come (back-pressure while it cannot take
    /// writes, without holding up the producer's other partitions).
    pub max_outstanding: usize,
    /// How long a record's answer is awaited before it counts as unknown.
    pub record_timeout: Duration,
    /// At the stop, how long the records still pending are awaited.
    pub drain_timeout: Duration,
    /// Timeout of a commit (and of creating a producer).
    pub request_timeout: Duration,
    /// Events per producer at most (the duration normally ends the run first).
    pub max_events_per_producer: u64,
}

/// Counters of what the workload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadStats {
    /// Records handed to a producer's `send`.
    pub records_sent: u64,
    /// Records acknowledged.
    pub records_acked: u64,
    /// Records whose `send` failed (ambiguous: may be stored).
    pub records_failed: u64,
    /// Records never answered: timed out, or still pending when the drain ended (ambiguous).
    pub records_unknown: u64,
    /// Producer instances created (one per producer unless one had to be replaced).
    pub producer_sessions: u64,
    /// Failed attempts to create a producer (get a producer id).
    pub producer_init_failures: u64,
    /// Sends skipped because the partition's backlog was full (it was not taking writes).
    pub backlog_full: u64,
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

impl WorkloadStats {
    /// Sets the record counters from `sent` (a snapshot: answers keep arriving until the
    /// producers are gone, so the report counts the snapshot the checker was given).
    pub fn count_records(&mut self, sent: &[Sent]) {
        self.records_sent = sent.len() as u64;
        self.records_acked = 0;
        self.records_failed = 0;
        self.records_unknown = 0;
        for s in sent {
            match s.outcome {
                SendOutcome::Acked { .. } => self.records_acked += 1,
                SendOutcome::Failed(_) => self.records_failed += 1,
                SendOutcome::Unknown => self.records_unknown += 1,
            }
        }
    }
}

/// Everything the workload observed, shared by its tasks.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    sent: Mutex<Vec<Sent>>,
    commits: Mutex<Vec<Commit>>,
    /// Every record the consumers were given (read-then-lost is checked against them).
    reads: Mutex<Vec<crate::checker::Read>>,
    errors: Mutex<BTreeMap<String, u64>>,
    producer_sessions: AtomicU64,
    producer_init_failures: AtomicU64,
    backlog_full: AtomicU64,
    records_consumed: AtomicU64,
    commit_failures: AtomicU64,
    consumer_errors: AtomicU64,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            sent: Mutex::default(),
            commits: Mutex::default(),
            reads: Mutex::default(),
            errors: Mutex::default(),
            producer_sessions: AtomicU64::new(0),
            producer_init_failures: AtomicU64::new(0),
            backlog_full: AtomicU64::new(0),
            records_consumed: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            consumer_errors: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    /// Every record sent so far, with its outcome as known now.
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.sent).clone()
    }

    /// The acknowledged commits so far.
    pub fn commits(&self) -> Vec<Commit> {
        lock(&self.commits).clone()
    }

    /// Every record the consumers were given so far.
    pub fn reads(&self) -> Vec<crate::checker::Read> {
        lock(&self.reads).clone()
    }

    /// The counters.
    pub fn stats(&self) -> WorkloadStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut st = WorkloadStats {
            producer_sessions: get(&self.producer_sessions),
            producer_init_failures: get(&self.producer_init_failures),
            backlog_full: get(&self.backlog_full),
            records_consumed: get(&self.records_consumed),
            commits_acked: lock(&self.commits).len() as u64,
            commit_failures: get(&self.commit_failures),
            consumer_errors: get(&self.consumer_errors),
            produce_errors: lock(&self.errors).clone(),
            ..Default::default()
        };
        st.count_records(&lock(&self.sent));
        st
    }

    /// Notes a record about to be sent; returns its index for [`Recorder::answered`].
    fn sending(&self, s: Sent) -> usize {
        let mut sent = lock(&self.sent);
        sent.push(s);
        sent.len() - 1
    }

    /// Records the outcome of the record at `index`.
    fn answered(&self, index: usize, outcome: SendOutcome) {
        if let Some(s) = lock(&self.sent).get_mut(index) {
            s.outcome = outcome;
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

/// Every sent record, one a line (for reading a kept run's history): producer, session,
/// partition, send order, time of `send` (ns), outcome (`acked`, `failed`, `unknown`), offset
/// and time of the acknowledgement (or the error), payload.
pub fn sent_tsv(sent: &[Sent]) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "producer\tsession\tpartition\tseq\tinvoked_ns\toutcome\toffset\tacked_ns_or_error\tpayload\n",
    );
    for s in sent {
        let (outcome, offset, detail) = match &s.outcome {
            SendOutcome::Acked { offset, at } => ("acked", offset.to_string(), at.to_string()),
            SendOutcome::Failed(e) => ("failed", "-".into(), e.replace(['\t', '\n'], " ")),
            SendOutcome::Unknown => ("unknown", "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{outcome}\t{offset}\t{detail}\t{}",
            s.producer,
            s.session,
            s.partition,
            s.seq,
            s.invoked,
            String::from_utf8_lossy(&s.payload)
        );
    }
    out
}

/// Makes an idempotent producer, retrying (each attempt bounded) until it works or the stop.
async fn new_producer(
    client: &Client,
    cfg: &WorkloadConfig,
    rec: &Recorder,
    stop: &AtomicBool,
) -> Option<Producer> {
    let pcfg = ProducerConfig {
        acks: Acks::All,
        max_in_flight: cfg.max_in_flight,
        idempotence: true,
        ..ProducerConfig::default()
    };
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(
            cfg.request_timeout * 4,
            Producer::new(client.clone(), &cfg.topic, pcfg.clone()),
        )
        .await
        {
            Ok(Ok(p)) => {
                rec.producer_sessions.fetch_add(1, Ordering::Relaxed);
                return Some(p);
            }
            Ok(Err(e)) => rec.error(&format!("creating the producer: {e}")),
            Err(_) => rec.error("creating the producer: timed out"),
        }
        rec.producer_init_failures.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// True for errors after which the producer instance sends nothing more.
fn producer_is_done(e: &ClientError) -> bool {
    matches!(e, ClientError::Closed)
        || matches!(
            e.reason(),
            Some(proto::ErrorCode::ProducerFenced | proto::ErrorCode::InvalidProducerEpoch)
        )
}

/// One producer: an idempotent [`Producer`] sending bursts of 1..=`batch_max` records to each
/// partition in turn, one burst per `send_interval`, without waiting for answers (at most
/// `max_outstanding` pending per partition; a full partition's turn is skipped), until `stop`
/// is set or its event budget is spent; then it waits (at most `drain_timeout`) for the
/// answers still pending.
pub async fn producer(
    id: u32,
    client: Client,
    cfg: Arc<WorkloadConfig>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let Some(mut producer) = new_producer(&client, &cfg, &rec, &stop).await else {
        return;
    };
    let mut session: u32 = 0;
    // Set by an answer after which this producer instance is of no more use.
    let broken = Arc::new(AtomicBool::new(false));
    // Per partition: records awaiting an answer (a slot each), at most `max_outstanding`.
    let slots: Vec<Arc<Semaphore>> = (0..cfg.partitions)
        .map(|_| Arc::new(Semaphore::new(cfg.max_outstanding)))
        .collect();
    let mut next_seq: Vec<u64> = vec![0; cfg.partitions as usize];
    let mut n: u64 = 0;
    let mut round: u64 = 0;
    let mut ticker = tokio::time::interval(cfg.send_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) && n < cfg.max_events_per_producer {
        ticker.tick().await;
        if broken.swap(false, Ordering::Relaxed) {
            // Fenced or closed: what it had pending is answered (failed); a new instance with
            // a new producer id carries on, as a new session (order is promised per session).
            let Some(p) = new_producer(&client, &cfg, &rec, &stop).await else {
                break;
            };
            producer = p;
            session += 1;
        }
        let partition = ((u64::from(id) + round) % u64::from(cfg.partitions)) as u32;
        let burst = 1 + (round.wrapping_mul(7) + u64::from(id)) % u64::from(cfg.batch_max.max(1));
        round += 1;
        for _ in 0..burst {
            // A partition whose backlog is full (it cannot take writes now) is skipped, so
            // the producer's other partitions keep their steady stream.
            let Ok(permit) = slots[partition as usize].clone().try_acquire_owned() else {
                rec.backlog_full.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let payload = format!("{}-p{id}-{n}", cfg.run_id).into_bytes();
            n += 1;
            let seq = &mut next_seq[partition as usize];
            let index = rec.sending(Sent {
                payload: payload.clone(),
                producer: id,
                session,
                partition,
                seq: *seq,
                invoked: rec.now(),
                outcome: SendOutcome::Unknown,
            });
            *seq += 1;
            let answer = producer.send(ProducerRecord {
                value: Some(Bytes::from(payload)),
                partition: Some(partition),
                ..Default::default()
            });
            let (rec, broken, timeout) = (rec.clone(), broken.clone(), cfg.record_timeout);
            tokio::spawn(async move {
                let outcome = match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(md)) if md.partition == partition => SendOutcome::Acked {
                        offset: md.offset,
                        at: rec.now(),
                    },
                    Ok(Ok(md)) => {
                        // Not a cluster fault: the producer put it elsewhere. Recorded as
                        // failed so the checker reports it as misplaced if it is stored.
                        let e = format!(
                            "acknowledged in partition {}, sent to {partition}",
                            md.partition
                        );
                        rec.error(&e);
                        SendOutcome::Failed(e)
                    }
                    Ok(Err(e)) => {
                        rec.error(&e.to_string());
                        if producer_is_done(&e) {
                            broken.store(true, Ordering::Relaxed);
                        }
                        SendOutcome::Failed(e.to_string())
                    }
                    Err(_) => {
                        rec.error("no answer within the record timeout");
                        SendOutcome::Unknown
                    }
                };
                rec.answered(index, outcome);
                drop(permit);
            });
        }
    }
    // Drain: send what is lingering and wait for the answers, within the drain timeout.
    // Whatever is still pending then stays unknown.
    let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
    let _ = tokio::time::timeout_at(deadline, producer.flush()).await;
    let all = u32::try_from(cfg.max_outstanding).unwrap_or(u32::MAX);
    for s in &slots {
        let _ = tokio::time::timeout_at(deadline, s.acquire_many(all)).await;
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
        lock(&rec.reads).extend(records.iter().map(|r| crate::checker::Read {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            payload: r.value.as_deref().unwrap_or_default().to_vec(),
        }));
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
