//! [`Producer`]: batches records per partition, sends batches encoded client-side (the broker
//! stores them as they are) to each partition's leader, with linger, a bound on requests in
//! flight, and retries.
//!
//! Records for one partition accumulate in a [`BatchBuilder`] until it reaches `batch_bytes`
//! or `linger` has passed since its first record; then the batch is sent as one request to the
//! partition's leader through [`Client::produce_batches`], which follows leader changes and
//! retries retriable failures within the client's retry budget (see the `client` module).
//! Keyed records go to Kafka's murmur2 partition of their key; unkeyed ones stick to one
//! partition until its batch is sent, then move on (sticky partitioning), which keeps batches
//! full.
//!
//! What it guarantees, per partition:
//! - Batches are formed and dispatched in send order; a batch is acknowledged whole or fails
//!   whole, and every record's future resolves with its offset or the batch's error.
//! - Delivery is at least once: a batch whose request failed in transport (node died, leader
//!   moved mid-request) is sent again and may be stored twice.
//! - With `max_in_flight = 1`, a partition's records are stored in send order (possibly with
//!   such duplicates, never reordered). With more requests in flight, a batch that is retried
//!   can land after a later batch of the same partition.
use crate::client::{Acks, Client};
use crate::error::{ClientError, Result};
use bytes::Bytes;
use cascade_record::{BatchBuilder, Record};
use cascade_types::partition_for_key;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, oneshot};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level.
    pub acks: Acks,
    /// How long a batch waits for more records.
    pub linger: Duration,
    /// Send a batch once it reaches this size.
    pub batch_bytes: usize,
    /// Requests in flight at once, over all partitions.
    pub max_in_flight: usize,
    /// Further retries of a batch on errors the client does not retry itself (`TIMEOUT`,
    /// deadline exceeded). Leader changes, unreachable nodes and too few in-sync replicas are
    /// retried by the [`Client`] within its retry budget.
    pub retries: u32,
    /// Wait between those retries (doubled each time).
    pub retry_backoff: Duration,
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
        }
    }
}

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

struct Inner {
    client: Client,
    topic: String,
    config: ProducerConfig,
    partitions: u32,
    accums: Mutex<HashMap<u32, Accum>>,
    inflight: Arc<Semaphore>,
    sticky: AtomicU32,
    generation: AtomicU64,
    /// Batches dispatched and not yet answered, for `flush`.
    outstanding: AtomicU64,
    idle: tokio::sync::Notify,
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
    /// A producer for `topic` (which must exist).
    pub async fn new(client: Client, topic: &str, config: ProducerConfig) -> Result<Self> {
        if config.max_in_flight == 0 || config.batch_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "max_in_flight and batch_bytes must be > 0".into(),
            ));
        }
        let partitions = client.partition_count(topic).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                inflight: Arc::new(Semaphore::new(config.max_in_flight)),
                client,
                topic: topic.to_string(),
                config,
                partitions,
                accums: Mutex::new(HashMap::new()),
                sticky: AtomicU32::new(rand::random()),
                generation: AtomicU64::new(0),
                outstanding: AtomicU64::new(0),
                idle: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Queues a record; the returned future resolves once it is acknowledged.
    pub fn send(
        &self,
        rec: ProducerRecord,
    ) -> impl Future<Output = Result<RecordMetadata>> + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self.enqueue(rec, tx);
        async move {
            queued?;
            rx.await.map_err(|_| ClientError::Closed)?
        }
    }

    fn enqueue(&self, rec: ProducerRecord, tx: Waiter) -> Result<()> {
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
        let mut full = None;
        let mut start_timer = None;
        {
            let mut accums = inner.accums.lock().unwrap_or_else(|e| e.into_inner());
            let acc = accums.entry(partition).or_insert_with(|| Accum {
                builder: BatchBuilder::with_capacity(inner.config.batch_bytes.min(1 << 20)),
                waiters: Vec::new(),
                generation: inner.generation.fetch_add(1, Ordering::Relaxed),
            });
            if acc.waiters.is_empty() {
                start_timer = Some(acc.generation);
            }
            acc.builder.push(record);
            acc.waiters.push(tx);
            if acc.builder.size_bytes() >= inner.config.batch_bytes {
                full = accums.remove(&partition);
            }
        }
        if let Some(acc) = full {
            if rec.key.is_none() && rec.partition.is_none() {
                inner.sticky.fetch_add(1, Ordering::Relaxed);
            }
            self.dispatch(partition, acc);
        } else if let Some(generation) = start_timer {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.inner.config.linger).await;
                this.flush_if(partition, Some(generation));
            });
        }
        Ok(())
    }

    /// Sends the partition's pending batch if it is still the one of `generation`.
    fn flush_if(&self, partition: u32, generation: Option<u64>) {
        let acc = {
            let mut accums = self.inner.accums.lock().unwrap_or_else(|e| e.into_inner());
            match accums.get(&partition) {
                Some(a) if generation.is_none_or(|g| g == a.generation) => {
                    accums.remove(&partition)
                }
                _ => None,
            }
        };
        if let Some(acc) = acc {
            self.inner.sticky.fetch_add(1, Ordering::Relaxed);
            self.dispatch(partition, acc);
        }
    }

    fn dispatch(&self, partition: u32, acc: Accum) {
        let inner = self.inner.clone();
        inner.outstanding.fetch_add(1, Ordering::SeqCst);
        let permit = inner.inflight.clone().try_acquire_owned();
        tokio::spawn(async move {
            let _done = Outstanding(inner.clone());
            let _permit = match permit {
                Ok(p) => p,
                Err(_) => match inner.inflight.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let batch = Bytes::from(acc.builder.finish());
            let mut backoff = inner.config.retry_backoff;
            let mut attempt = 0;
            let result = loop {
                let r = inner
                    .client
                    .produce_batches(&inner.topic, partition, batch.clone(), inner.config.acks)
                    .await;
                match r {
                    Err(e) if e.is_retriable() && attempt < inner.config.retries => {
                        attempt += 1;
                        tracing::debug!(error = %e, attempt, "retrying produce");
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                    other => break other,
                }
            };
            match result {
                Ok(p) => {
                    for (i, w) in acc.waiters.into_iter().enumerate() {
                        let _ = w.send(Ok(RecordMetadata {
                            partition,
                            offset: p.base_offset + i as u64,
                        }));
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = %inner.topic, partition, error = %e, "batch failed");
                    for w in acc.waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
            }
        });
    }

    /// Sends every pending batch now and waits until all requests in flight are answered.
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

/// Marks a dispatched batch as answered when dropped (also on panic or cancellation).
struct Outstanding(Arc<Inner>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        if self.0.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
