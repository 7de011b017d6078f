//! [`Producer`]: batches records per partition and sends the batches, encoded client-side (the
//! broker stores them as they are), to each partition's leader, keeping up to
//! `max_in_flight` requests per partition in flight. Idempotent by default.
//!
//! Records for one partition accumulate in a [`BatchBuilder`] until it reaches `batch_bytes`
//! or `linger` has passed since its first record; the finished batch goes to the producer's
//! sender task, which owns every partition's queue and in-flight window. Keyed records go to
//! Kafka's murmur2 partition of their key; unkeyed ones stick to one partition until its
//! batch is sent, then move on (sticky partitioning), which keeps batches full.
//!
//! **Idempotent (the default, Kafka's `enable.idempotence=true`).** The producer gets an id
//! and epoch from the cluster (`InitProducerId`) and numbers its batches per partition: the
//! sender writes the id, the epoch and the batch's first sequence into the header when it
//! sends the batch. The partition appends a producer's batches only in sequence, answers an
//! exact retry of one of the last five with the original offsets without writing it again,
//! and refuses anything out of order. What that gives, per partition:
//! - Order: batches are stored in the order `send` was called, with up to `max_in_flight`
//!   requests in flight, across retries, leader changes and reconnections.
//! - Exactly once: a batch retried after a lost answer, a timeout or a leader change is
//!   stored once (as long as the partition remembers the producer: `producer.id.expiration.ms`,
//!   one day by default).
//! - A batch refused as out of order is sent again once every batch before it is stored
//!   (only the window's first is resent, so a disturbed window recovers in order, never
//!   spinning). A batch refused outright (too large, invalid, unknown topic) fails alone: the
//!   batches behind it, which the partition then refuses as out of order, are renumbered under
//!   a new epoch (the producer first waits until no request is in flight anywhere, bumps its
//!   epoch through the cluster, then restarts every partition's sequence at 0) and sent again
//!   in order. A batch whose request kept failing ambiguously (the retry budget ran out with
//!   the cluster unreachable) fails with that error: it may or may not be stored, and nothing
//!   behind it is stored before it.
//! - Fencing: another instance that re-initialises the same producer id
//!   ([`ProducerConfig::resume`]) bumps the epoch; this one then fails every pending and
//!   later send with `PRODUCER_FENCED`.
//! - Idempotence needs `acks=all` (as Kafka's does): with fewer acknowledgements an
//!   acknowledged batch can vanish in a failover, and the partition would then wait for a
//!   sequence that never comes.
//!
//! **Not idempotent** (`idempotence: false`, or any `acks` other than `all`): batches carry no
//! producer id; delivery is at least once (a batch whose request failed in transport is sent
//! again and may be stored twice), and with more than one request in flight a partition's
//! batches may be stored out of send order.
use crate::client::{Acks, Client};
use crate::error::{ClientError, Result};
use bytes::Bytes;
use cascade_proto::v1::ErrorCode;
use cascade_record::{BatchBuilder, Record};
use cascade_types::partition_for_key;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level. Idempotence needs [`Acks::All`].
    pub acks: Acks,
    /// How long a batch waits for more records.
    pub linger: Duration,
    /// Largest batch: a record that would take a batch past this size starts the next one
    /// (a record larger than this alone gets a batch of its own). Keep it within the topic's
    /// `max.message.bytes`, which the broker enforces per batch.
    pub batch_bytes: usize,
    /// Requests in flight at once per partition (Kafka's
    /// `max.in.flight.requests.per.connection`; at most 5 with idempotence, as the partition
    /// remembers a producer's last five batches).
    pub max_in_flight: usize,
    /// Further retries of a batch on errors the client does not retry itself (`TIMEOUT`,
    /// deadline exceeded). Leader changes, unreachable nodes and too few in-sync replicas are
    /// retried by the [`Client`] within its retry budget.
    pub retries: u32,
    /// Wait between those retries (doubled each time).
    pub retry_backoff: Duration,
    /// Idempotent delivery (see the module docs). Default true.
    pub idempotence: bool,
    /// Re-initialise this producer identity (id, epoch) instead of getting a new one: the
    /// cluster bumps its epoch, fencing every older instance that still uses it.
    pub resume: Option<(i64, i16)>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 64 * 1024,
            max_in_flight: 5,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            idempotence: true,
            resume: None,
        }
    }
}

/// Most requests in flight per partition with idempotence.
pub const MAX_IDEMPOTENT_IN_FLIGHT: usize = 5;

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Key (decides the partition unless one is given).
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Explicit partition.
    pub partition: Option<u32>,
    /// Timestamp (ms); now if absent.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with just a value.
    pub fn value(v: impl Into<Bytes>) -> Self {
        Self {
            value: Some(v.into()),
            ..Default::default()
        }
    }

    /// A keyed record.
    pub fn keyed(k: impl Into<Bytes>, v: impl Into<Bytes>) -> Self {
        Self {
            key: Some(k.into()),
            value: Some(v.into()),
            ..Default::default()
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

type Waiter = oneshot::Sender<Result<RecordMetadata>>;

struct Accum {
    builder: BatchBuilder,
    waiters: Vec<Waiter>,
    generation: u64,
}

/// A finished batch on its way to the sender.
struct Ready {
    partition: u32,
    /// The encoded batch (producer fields written when it is sent).
    batch: Bytes,
    records: u32,
    waiters: Vec<Waiter>,
}

struct Inner {
    topic: String,
    config: ProducerConfig,
    partitions: u32,
    accums: Mutex<HashMap<u32, Accum>>,
    sticky: AtomicU32,
    generation: AtomicU64,
    /// Batches handed to the sender and not yet resolved, for `flush`.
    outstanding: AtomicU64,
    idle: tokio::sync::Notify,
    to_sender: mpsc::UnboundedSender<Ready>,
    /// The identity in use (for [`Producer::identity`]); the sender owns the real one.
    identity: Mutex<Option<(i64, i16)>>,
}

/// A batching producer for one topic. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.inner.topic)
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    /// A producer for `topic` (which must exist). With idempotence, this asks the cluster for
    /// a producer id (or re-initialises [`ProducerConfig::resume`]).
    pub async fn new(client: Client, topic: &str, config: ProducerConfig) -> Result<Self> {
        if config.max_in_flight == 0 || config.batch_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "max_in_flight and batch_bytes must be > 0".into(),
            ));
        }
        if config.idempotence && config.acks != Acks::All {
            return Err(ClientError::InvalidArgument(
                "an idempotent producer needs acks=all (turn idempotence off for acks leader or none)".into(),
            ));
        }
        if config.idempotence && config.max_in_flight > MAX_IDEMPOTENT_IN_FLIGHT {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer keeps at most {MAX_IDEMPOTENT_IN_FLIGHT} requests in flight per partition"
            )));
        }
        let partitions = client.partition_count(topic).await?;
        let identity = if config.idempotence {
            Some(client.init_producer_id(config.resume).await?)
        } else {
            None
        };
        let (to_sender, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            topic: topic.to_string(),
            config: config.clone(),
            partitions,
            accums: Mutex::new(HashMap::new()),
            sticky: AtomicU32::new(rand::random()),
            generation: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            idle: tokio::sync::Notify::new(),
            to_sender,
            identity: Mutex::new(identity),
        });
        let sender = Sender {
            producer: Arc::downgrade(&inner),
            client,
            topic: topic.to_string(),
            config,
            identity,
            parts: HashMap::new(),
            inflight: FuturesUnordered::new(),
            bump: None,
            fenced: None,
            next_slot: 0,
        };
        tokio::spawn(sender.run(rx));
        Ok(Self { inner })
    }

    /// The producer id and epoch in use (None without idempotence).
    pub fn identity(&self) -> Option<(i64, i16)> {
        *self
            .inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a record; the returned future resolves once it is acknowledged.
    pub fn send(
        &self,
        rec: ProducerRecord,
    ) -> impl Future<Output = Result<RecordMetadata>> + use<> {
        self.send_many(vec![rec])
            .pop()
            .expect("one future per record")
    }

    /// Queues records in order, all at once: records of one partition share batches as far
    /// as they fit (no linger timer can cut in between them). One future per record, in order.
    pub fn send_many(
        &self,
        recs: Vec<ProducerRecord>,
    ) -> Vec<impl Future<Output = Result<RecordMetadata>> + use<>> {
        let mut timers = Vec::new();
        let out: Vec<_> = {
            // Batches are handed over under this lock: a partition's batches reach the sender
            // in the order their records were sent.
            let mut accums = self.inner.accums.lock().unwrap_or_else(|e| e.into_inner());
            recs.into_iter()
                .map(|rec| {
                    let (tx, rx) = oneshot::channel();
                    let queued = self.enqueue(&mut accums, rec, tx, &mut timers);
                    async move {
                        queued?;
                        rx.await.map_err(|_| ClientError::Closed)?
                    }
                })
                .collect()
        };
        for (partition, generation) in timers {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.inner.config.linger).await;
                this.flush_if(partition, Some(generation));
            });
        }
        out
    }

    /// Adds a record to its partition's batch (handing batches over as they fill); notes in
    /// `timers` a batch that was started and needs its linger timer.
    fn enqueue(
        &self,
        accums: &mut HashMap<u32, Accum>,
        rec: ProducerRecord,
        tx: Waiter,
        timers: &mut Vec<(u32, u64)>,
    ) -> Result<()> {
        let inner = &self.inner;
        let n = inner.partitions;
        let partition = match (rec.partition, &rec.key) {
            (Some(p), _) if p >= n => {
                return Err(ClientError::InvalidArgument(format!(
                    "topic {} has {n} partitions, no partition {p}",
                    inner.topic
                )));
            }
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => inner.sticky.load(Ordering::Relaxed) % n,
        };
        let headers: Vec<(&str, Option<&[u8]>)> = rec
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let record = Record {
            timestamp: rec.timestamp_ms.unwrap_or_else(now_ms),
            key: rec.key.as_deref(),
            value: rec.value.as_deref(),
            headers: &headers,
        };
        if let Some(acc) = accums.get(&partition)
            && !acc.builder.is_empty()
            && acc.builder.size_bytes() + acc.builder.record_size(&record)
                > inner.config.batch_bytes
            && let Some(acc) = accums.remove(&partition)
        {
            self.hand_over(partition, acc);
        }
        let acc = accums.entry(partition).or_insert_with(|| Accum {
            builder: BatchBuilder::with_capacity(inner.config.batch_bytes.min(1 << 20)),
            waiters: Vec::new(),
            generation: inner.generation.fetch_add(1, Ordering::Relaxed),
        });
        if acc.waiters.is_empty() {
            timers.push((partition, acc.generation));
        }
        acc.builder.push(record);
        acc.waiters.push(tx);
        if acc.builder.size_bytes() >= inner.config.batch_bytes
            && let Some(acc) = accums.remove(&partition)
        {
            self.hand_over(partition, acc);
            if rec.key.is_none() && rec.partition.is_none() {
                inner.sticky.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Sends the partition's pending batch if it is still the one of `generation`.
    fn flush_if(&self, partition: u32, generation: Option<u64>) {
        let mut accums = self.inner.accums.lock().unwrap_or_else(|e| e.into_inner());
        let take = matches!(accums.get(&partition),
            Some(a) if generation.is_none_or(|g| g == a.generation));
        if take && let Some(acc) = accums.remove(&partition) {
            self.inner.sticky.fetch_add(1, Ordering::Relaxed);
            self.hand_over(partition, acc);
        }
    }

    /// Finishes a batch and gives it to the sender (called with the accumulators locked).
    fn hand_over(&self, partition: u32, acc: Accum) {
        let inner = &self.inner;
        inner.outstanding.fetch_add(1, Ordering::SeqCst);
        let ready = Ready {
            partition,
            records: acc.builder.record_count() as u32,
            batch: Bytes::from(acc.builder.finish()),
            waiters: acc.waiters,
        };
        if let Err(mpsc::error::SendError(ready)) = inner.to_sender.send(ready) {
            // The sender is gone (the runtime is shutting down).
            resolve(inner, ready.waiters, Err(ClientError::Closed));
        }
    }

    /// Sends every pending batch now and waits until all of them are answered.
    pub async fn flush(&self) {
        let parts: Vec<u32> = {
            let accums = self.inner.accums.lock().unwrap_or_else(|e| e.into_inner());
            accums.keys().copied().collect()
        };
        for p in parts {
            self.flush_if(p, None);
        }
        loop {
            let idle = self.inner.idle.notified();
            if self.inner.outstanding.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Number of partitions of the topic.
    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }
}

/// Answers a batch's waiters and marks it resolved for `flush`.
fn resolve(inner: &Inner, waiters: Vec<Waiter>, r: Result<crate::client::Produced>) {
    answer_waiters(waiters, r);
    if inner.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
        inner.idle.notify_waiters();
    }
}

/// Gives each record of a batch its offset, or the batch's error.
fn answer_waiters(waiters: Vec<Waiter>, r: Result<crate::client::Produced>) {
    match r {
        Ok(p) => {
            for (i, w) in waiters.into_iter().enumerate() {
                let _ = w.send(Ok(RecordMetadata {
                    partition: p.partition,
                    offset: p.base_offset + i as u64,
                }));
            }
        }
        Err(e) => {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sender: one task per producer owns every partition's queue and window.

/// Where a sent batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Its request is out.
    InFlight,
    /// Stored; kept only while a batch before it is not (its waiters are answered).
    Acked,
    /// Refused as out of order while a batch before it was not stored yet: resent once every
    /// batch before it is.
    Resend,
    /// Certainly not stored, and its sequence can no longer follow on: sent again under a
    /// new epoch.
    Renumber,
    /// Failed for good (its waiters have the error; it may or may not be stored). It keeps
    /// its place until every batch before it is resolved, so the window never holds more
    /// than `max_in_flight` batches past an unresolved one: the partition remembers a
    /// producer's last five batches, and a stored batch must stay among them until its
    /// retry is answered, or the retry would be refused as out of order and the batch
    /// renumbered and stored twice.
    Failed,
}

struct Sent {
    id: u64,
    seq: i32,
    state: Slot,
    batch: Bytes,
    records: u32,
    /// Empty once answered.
    waiters: Vec<Waiter>,
}

#[derive(Default)]
struct PartState {
    queue: VecDeque<Ready>,
    /// Sent batches in sequence order.
    window: VecDeque<Sent>,
    next_seq: i32,
}

type Outcome = (u32, u64, Result<crate::client::Produced>);

struct Sender {
    producer: std::sync::Weak<Inner>,
    client: Client,
    topic: String,
    config: ProducerConfig,
    identity: Option<(i64, i16)>,
    parts: HashMap<u32, PartState>,
    inflight: FuturesUnordered<BoxFuture<'static, Outcome>>,
    bump: Option<BoxFuture<'static, Result<(i64, i16)>>>,
    fenced: Option<ClientError>,
    next_slot: u64,
}

/// Sequences wrap from `i32::MAX` to 0.
fn seq_add(seq: i32, n: u32) -> i32 {
    ((i64::from(seq) + i64::from(n)).rem_euclid(1 << 31)) as i32
}

/// A refusal that says the batch was certainly not written and will not be if sent again
/// as it is.
fn refused_outright(e: &ClientError) -> bool {
    matches!(
        e.reason(),
        Some(
            ErrorCode::RecordTooLarge
                | ErrorCode::InvalidRecord
                | ErrorCode::InvalidRequest
                | ErrorCode::UnknownTopic
                | ErrorCode::UnknownPartition
                | ErrorCode::RequestTooLarge
        )
    )
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Ready>) {
        let mut open = true;
        loop {
            let busy = !self.inflight.is_empty() || self.bump.is_some();
            if !open && !busy && self.parts.values().all(|p| p.queue.is_empty()) {
                return;
            }
            tokio::select! {
                r = rx.recv(), if open => match r {
                    Some(ready) => self.arrive(ready),
                    None => open = false,
                },
                Some((p, id, r)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.complete(p, id, r);
                }
                r = async { self.bump.as_mut().expect("checked").await }, if self.bump.is_some() => {
                    self.bump = None;
                    self.bumped(r);
                }
            }
            self.pump();
        }
    }

    fn inner(&self) -> Option<Arc<Inner>> {
        self.producer.upgrade()
    }

    fn answer(&self, waiters: Vec<Waiter>, r: Result<crate::client::Produced>) {
        match self.inner() {
            Some(inner) => resolve(&inner, waiters, r),
            // Every handle is gone: nobody counts, but the futures may still be awaited.
            None => answer_waiters(waiters, r),
        }
    }

    fn arrive(&mut self, ready: Ready) {
        if let Some(e) = &self.fenced {
            let e = e.clone();
            self.answer(ready.waiters, Err(e));
            return;
        }
        self.parts
            .entry(ready.partition)
            .or_default()
            .queue
            .push_back(ready);
    }

    /// True while batches must be renumbered: nothing new is sent until the epoch is bumped.
    fn renumbering(&self) -> bool {
        self.bump.is_some()
            || self
                .parts
                .values()
                .any(|p| p.window.iter().any(|s| s.state == Slot::Renumber))
    }

    /// Sends what may be sent: a window's first batch waiting to be resent, and new batches
    /// while the window has room and nothing in it waits.
    fn pump(&mut self) {
        if self.fenced.is_some() {
            return;
        }
        if self.renumbering() {
            self.start_bump();
            return;
        }
        let max = self.config.max_in_flight;
        let mut sends = Vec::new();
        for (&p, part) in self.parts.iter_mut() {
            if let Some(front) = part.window.front_mut()
                && front.state == Slot::Resend
            {
                front.state = Slot::InFlight;
                sends.push((p, front.id, front.batch.clone()));
            }
            if part
                .window
                .iter()
                .any(|s| matches!(s.state, Slot::Resend | Slot::Renumber))
            {
                continue;
            }
            while part.window.len() < max
                && let Some(ready) = part.queue.pop_front()
            {
                let seq = part.next_seq;
                let mut batch = ready.batch;
                if let Some((pid, epoch)) = self.identity {
                    // In place when nothing else holds the buffer (a fresh batch); a batch
                    // renumbered after a failed send may still be shared with that request.
                    let mut bytes = batch
                        .try_into_mut()
                        .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
                    cascade_record::header::set_producer(&mut bytes, pid, epoch, seq);
                    batch = bytes.freeze();
                    part.next_seq = seq_add(seq, ready.records);
                }
                let id = self.next_slot;
                self.next_slot += 1;
                sends.push((p, id, batch.clone()));
                part.window.push_back(Sent {
                    id,
                    seq,
                    state: Slot::InFlight,
                    batch,
                    records: ready.records,
                    waiters: ready.waiters,
                });
            }
        }
        for (p, id, batch) in sends {
            self.send(p, id, batch);
        }
    }

    fn send(&mut self, partition: u32, id: u64, batch: Bytes) {
        let client = self.client.clone();
        let topic = self.topic.clone();
        let (acks, retries, backoff) = (
            self.config.acks,
            self.config.retries,
            self.config.retry_backoff,
        );
        self.inflight.push(Box::pin(async move {
            let mut backoff = backoff;
            let mut attempt = 0;
            let r = loop {
                let r = client
                    .produce_batches(&topic, partition, batch.clone(), acks)
                    .await;
                match r {
                    // The client retried leader changes and transport failures itself; a
                    // timeout is retried here (an idempotent retry is stored once).
                    Err(e) if e.is_retriable() && attempt < retries => {
                        attempt += 1;
                        tracing::debug!(error = %e, attempt, "retrying produce");
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                    other => break other,
                }
            };
            (partition, id, r)
        }));
    }

    fn complete(&mut self, p: u32, id: u64, r: Result<crate::client::Produced>) {
        let idempotent = self.identity.is_some();
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        let Some(at) = part.window.iter().position(|s| s.id == id) else {
            return;
        };
        let mut answers: Vec<(Vec<Waiter>, Result<crate::client::Produced>)> = Vec::new();
        let mut fence = None;
        match r {
            Ok(produced) => {
                let s = &mut part.window[at];
                s.state = Slot::Acked;
                answers.push((std::mem::take(&mut s.waiters), Ok(produced)));
            }
            Err(e) if idempotent && e.reason() == Some(ErrorCode::OutOfOrderSequence) => {
                let earlier: Vec<Slot> = part.window.iter().take(at).map(|s| s.state).collect();
                let s = &mut part.window[at];
                s.state = if earlier
                    .iter()
                    .all(|e| matches!(e, Slot::Acked | Slot::Failed | Slot::Renumber))
                {
                    // Everything before it is resolved and the partition still refuses it: it
                    // is not stored (were it, it would be among the five batches the partition
                    // remembers, see `Slot::Failed`), and its sequence will never be taken.
                    // Renumber under a new epoch.
                    Slot::Renumber
                } else {
                    Slot::Resend
                };
                tracing::debug!(topic = %self.topic, partition = p, seq = s.seq, state = ?s.state, "out of order");
            }
            Err(e) if idempotent && e.reason() == Some(ErrorCode::UnknownProducerId) => {
                // The partition forgot this producer (idle past producer.id.expiration.ms):
                // the batch was not written; renumber from a new epoch.
                part.window[at].state = Slot::Renumber;
            }
            Err(e)
                if matches!(
                    e.reason(),
                    Some(ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch)
                ) =>
            {
                fence = Some(e);
            }
            Err(e) => {
                // Refused outright (certainly not written: the batches behind it will be
                // refused as out of order and renumbered), or failed ambiguously after every
                // retry (it may be stored; what is behind it cannot be stored before it).
                if !refused_outright(&e) {
                    tracing::warn!(topic = %self.topic, partition = p, error = %e, "batch failed; it may or may not be stored");
                }
                let s = &mut part.window[at];
                s.state = Slot::Failed;
                answers.push((std::mem::take(&mut s.waiters), Err(e)));
            }
        }
        while part
            .window
            .front()
            .is_some_and(|s| matches!(s.state, Slot::Acked | Slot::Failed))
        {
            part.window.pop_front();
        }
        for (waiters, r) in answers {
            if !waiters.is_empty() {
                self.answer(waiters, r);
            }
        }
        if let Some(e) = fence {
            self.fence(e);
        }
    }

    /// Another instance took over the producer id: every pending and later send fails.
    fn fence(&mut self, e: ClientError) {
        tracing::warn!(topic = %self.topic, error = %e, "producer fenced");
        self.fenced = Some(e.clone());
        let mut waiters = Vec::new();
        for part in self.parts.values_mut() {
            for s in part.window.drain(..) {
                waiters.push(s.waiters);
            }
            for r in part.queue.drain(..) {
                waiters.push(r.waiters);
            }
        }
        for w in waiters {
            if !w.is_empty() {
                self.answer(w, Err(e.clone()));
            }
        }
    }

    /// Starts the epoch bump once no request is in flight anywhere (see the module docs).
    fn start_bump(&mut self) {
        if self.bump.is_some() || !self.inflight.is_empty() {
            return;
        }
        let Some(current) = self.identity else {
            return;
        };
        let client = self.client.clone();
        tracing::info!(topic = %self.topic, producer_id = current.0, epoch = current.1, "renumbering batches under a new producer epoch");
        self.bump = Some(Box::pin(async move {
            match client.init_producer_id(Some(current)).await {
                Ok(id) => Ok(id),
                Err(e) if e.reason() == Some(ErrorCode::ProducerFenced) => Err(e),
                // Unanswered: the bump may have happened, and asking again with the old epoch
                // would look like a takeover. A fresh id is always safe.
                Err(e) => {
                    tracing::debug!(error = %e, "epoch bump failed; asking for a new producer id");
                    client.init_producer_id(None).await
                }
            }
        }));
    }

    fn bumped(&mut self, r: Result<(i64, i16)>) {
        match r {
            Ok(identity) => {
                self.identity = Some(identity);
                if let Some(inner) = self.inner() {
                    *inner.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity);
                }
                for (&p, part) in self.parts.iter_mut() {
                    part.next_seq = 0;
                    // Every batch left in the window but the answered ones (stored, or failed
                    // for good) is certainly not stored: back to the queue, in order.
                    for s in part.window.drain(..).rev() {
                        if matches!(s.state, Slot::Acked | Slot::Failed) {
                            continue;
                        }
                        part.queue.push_front(Ready {
                            partition: p,
                            batch: s.batch,
                            records: s.records,
                            waiters: s.waiters,
                        });
                    }
                }
            }
            Err(e) if e.reason() == Some(ErrorCode::ProducerFenced) => self.fence(e),
            Err(e) => {
                // The cluster cannot issue ids now: everything waiting fails, and new sends
                // try again.
                tracing::warn!(topic = %self.topic, error = %e, "cannot renumber batches: no producer id");
                let mut waiters = Vec::new();
                for part in self.parts.values_mut() {
                    for s in part.window.drain(..) {
                        waiters.push(s.waiters);
                    }
                }
                for w in waiters {
                    if !w.is_empty() {
                        self.answer(w, Err(e.clone()));
                    }
                }
            }
        }
    }
}
