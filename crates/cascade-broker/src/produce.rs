//! The produce path: choose partitions, encode typed records, enforce size limits, append.
//!
//! Client-encoded batches (the fast path) are checked for size here and validated by the log
//! (CRC, framing) on append; typed records are encoded into one batch per partition. Keyed
//! records without a partition go where Kafka's default partitioner would put them; unkeyed
//! ones all go to one partition per request, rotating between requests (sticky), which keeps
//! batches large.

use crate::broker::{Broker, now_ms};
use crate::error::{BrokerError, Result};
use crate::partition::{Partition, Role};
use bytes::{Bytes, BytesMut};
use cascade_log::AppendInfo;
use cascade_record::{BatchBuilder, BatchHeader, Record};
use cascade_types::partition_for_key;
use futures::future::join_all;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The longest a refusal waits for the controller to confirm this node still leads.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// After the in-sync replicas have it (and it is fsynced under flush=always).
    All,
    /// After the leader has it (fsynced under flush=always).
    Leader,
    /// Do not wait.
    None,
}

/// A typed record to produce.
#[derive(Debug, Clone, Default)]
pub struct OwnedRecord {
    /// Key, or null.
    pub key: Option<Bytes>,
    /// Value, or null.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// ms since the epoch; 0 means now.
    pub timestamp_ms: i64,
}

/// Records for one partition, or for the broker to partition (`partition == -1`).
#[derive(Debug, Clone, Default)]
pub struct ProducePart {
    /// Target partition, or -1.
    pub partition: i32,
    /// Client-encoded batches, back to back.
    pub batches: Bytes,
    /// Typed records.
    pub records: Vec<OwnedRecord>,
}

/// The outcome for one partition.
#[derive(Debug)]
pub struct PartResult {
    /// The partition.
    pub partition: u32,
    /// Where the records landed (absent with acks=none), or why they were refused.
    pub result: Result<Option<AppendInfo>>,
}

/// Default wait for acknowledgements.
pub const DEFAULT_PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

fn encode(records: &[&OwnedRecord]) -> Vec<u8> {
    let now = now_ms();
    let size: usize = records
        .iter()
        .map(|r| {
            r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()) + 32
        })
        .sum();
    let mut b = BatchBuilder::with_capacity(size + 64);
    for r in records {
        let headers: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        b.push(Record {
            timestamp: if r.timestamp_ms == 0 {
                now
            } else {
                r.timestamp_ms
            },
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: &headers,
        });
    }
    b.finish()
}

/// A buffer the log may stamp offsets into, without copying `bytes` when nothing else holds
/// its memory.
fn unshared(bytes: Bytes) -> BytesMut {
    bytes
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

/// A freshly encoded batch as an appendable buffer (no copy).
fn owned(batch: Vec<u8>) -> BytesMut {
    unshared(Bytes::from(batch))
}

/// Checks each batch in `bytes` against the size limit, reading only headers.
fn check_sizes(topic: &str, bytes: &[u8], max: u32) -> Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let h = BatchHeader::parse(&bytes[at..])
            .map_err(|e| BrokerError::InvalidRecord(format!("at byte {at}: {e}")))?;
        let len = h.total_len();
        if len > max as usize {
            return Err(BrokerError::RecordTooLarge {
                topic: topic.to_string(),
                size: len,
                max,
            });
        }
        if at + len > bytes.len() {
            return Err(BrokerError::InvalidRecord(format!(
                "batch at byte {at} is truncated"
            )));
        }
        at += len;
    }
    Ok(())
}

/// How long a produce waits for the controller's view of a producer id or epoch this node
/// does not know yet.
const PRODUCER_ID_CATCH_UP: Duration = Duration::from_secs(2);

impl Broker {
    /// Issues an idempotent producer id, or bumps the epoch of `existing` (fencing its older
    /// instances); see `MetadataCommand::InitProducer`.
    pub async fn init_producer(&self, existing: Option<(i64, i16)>) -> Result<(i64, i16)> {
        if let Some((id, epoch)) = existing
            && (id < 0 || epoch < 0)
        {
            return Err(BrokerError::InvalidRequest(format!(
                "producer id and epoch must not be negative, got id {id} epoch {epoch}"
            )));
        }
        self.meta.init_producer(existing).await
    }

    /// Checks the producer fields of every batch in `batches` against the ids and epochs the
    /// cluster issued: an id never issued, an epoch never issued ("from the future") and an
    /// epoch older than the current one (another instance took over) are refused; batches
    /// without a producer (id -1) pass. The sequence itself is the partition's to check.
    async fn check_producers(&self, batches: &[u8]) -> Result<()> {
        let mut at = 0;
        while at < batches.len() {
            let Ok(h) = BatchHeader::parse(&batches[at..]) else {
                return Ok(()); // framing errors are reported by the size check and the log
            };
            at += h.total_len();
            let (id, epoch) = (h.producer_id, h.producer_epoch);
            if id == -1 {
                continue;
            }
            if id < -1 || epoch < 0 || h.base_sequence < 0 {
                return Err(BrokerError::InvalidRecord(format!(
                    "producer id {id}, epoch {epoch}, base sequence {}: an idempotent batch needs an id, epoch and sequence >= 0 (or id -1 for none)",
                    h.base_sequence
                )));
            }
            let known = |m: &crate::metadata::ClusterMetadata| {
                m.producers.current_epoch(id).is_some_and(|c| c >= epoch)
            };
            let mut meta = self.meta.snapshot();
            if !known(&meta) {
                // This node's metadata may lag (one issued through another node a moment ago,
                // or this node was cut off): "never issued" tells a producer its batch is not
                // stored anywhere, so it renumbers, and only the controller's current view
                // can say so. When no controller confirms, the answer is retriable.
                meta = self
                    .meta
                    .read_linearizable(PRODUCER_ID_CATCH_UP)
                    .await
                    .map_err(|e| {
                        BrokerError::NoController(format!(
                            "producer id {id} epoch {epoch} is not known here yet and the controller cannot be asked: {e}"
                        ))
                    })?;
            }
            match meta.producers.current_epoch(id) {
                None => {
                    return Err(BrokerError::UnknownProducerId {
                        producer_id: id,
                        detail: "the cluster never issued it (InitProducerId issues ids)".into(),
                    });
                }
                Some(current) if epoch > current => {
                    return Err(BrokerError::InvalidProducerEpoch {
                        producer_id: id,
                        epoch,
                        current,
                    });
                }
                Some(current) if epoch < current => {
                    return Err(BrokerError::ProducerFenced {
                        producer_id: id,
                        epoch,
                        current,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A refusal that tells an idempotent producer its batch is not stored
    /// (`OUT_OF_ORDER_SEQUENCE`, `UNKNOWN_PRODUCER_ID`) makes it renumber the batch under a
    /// new epoch and send it again. That is only safe when the refusal comes from the
    /// partition's current leader: a deposed leader that has not yet learned it was replaced
    /// (paused, or cut off with the controller) lacks what the new leader stored, so its
    /// refusal of a retry would get the batch stored twice. So the refusal stands only once a
    /// linearizable read of the metadata shows this node still leads at the epoch it had
    /// before the append (the role did not change in between either); otherwise, or when no
    /// controller can confirm in time, the answer is `NOT_LEADER`, which a producer retries
    /// as it is. Refusals are rare, so the round to the controller costs nothing that counts.
    async fn confirm_refusal(
        &self,
        part: &Partition,
        leading: Role,
        refusal: BrokerError,
        left: Duration,
    ) -> BrokerError {
        let (topic, index) = (part.topic.to_string(), part.index);
        let Role::Leader { epoch } = leading else {
            // The role changed between the partition lookup and the append (it became leader
            // just then): nothing to confirm the refusal against, so let the producer retry.
            return self.not_leader_error(&self.meta.snapshot(), &topic, index);
        };
        let confirmed = match self.meta.read_linearizable(left.min(CONFIRM_TIMEOUT)).await {
            Ok(m) => {
                let holds = m
                    .assignment(&topic, index)
                    .is_some_and(|a| a.leader == self.config.node_id && a.leader_epoch == epoch)
                    && part.role() == leading;
                holds.then_some(()).ok_or(Ok(m))
            }
            Err(e) => Err(Err(e)),
        };
        match confirmed {
            Ok(()) => refusal,
            Err(seen) => {
                metrics::counter!("cascade_produce_refusals_unconfirmed_total", "topic" => topic.clone())
                    .increment(1);
                tracing::info!(
                    topic = %topic,
                    partition = index,
                    epoch,
                    refusal = %refusal,
                    "a producer refusal this node could not confirm as leader: answered not-leader instead"
                );
                match seen {
                    Ok(m) => self.not_leader_error(&m, &topic, index),
                    Err(e) => BrokerError::NoController(format!(
                        "node {} cannot confirm it still leads {topic}/{index}, so it does not answer {}: {e}",
                        self.config.node_id,
                        refusal.code().as_str_name()
                    )),
                }
            }
        }
    }

    /// Produces to `topic`. Request-level problems (unknown topic, internal topic) fail the
    /// call; partition-level ones are reported per partition.
    pub async fn produce(
        &self,
        topic: &str,
        parts: Vec<ProducePart>,
        acks: Acks,
        timeout: Duration,
    ) -> Result<Vec<PartResult>> {
        let started = tokio::time::Instant::now();
        let meta = self.meta.snapshot();
        let t = meta.topic(topic)?;
        if t.internal {
            return Err(BrokerError::InvalidRequest(format!(
                "cannot produce to internal topic {topic:?}"
            )));
        }
        if parts.is_empty() {
            return Err(BrokerError::InvalidRequest("no records to produce".into()));
        }
        let count = t.partitions.len() as u32;
        let max = t.config.max_message_bytes;
        // Producer fields checked against what the cluster issued, before anything is queued.
        let mut refused: BTreeMap<u32, BrokerError> = BTreeMap::new();
        for part in &parts {
            if part.partition >= 0
                && !part.batches.is_empty()
                && let Err(e) = self.check_producers(&part.batches).await
            {
                refused.entry(part.partition as u32).or_insert(e);
            }
        }
        // Gather the bytes to append per partition, in request order. The first chunk of a
        // partition is taken as is: a client batch decoded from the request is usually the
        // only owner of its buffer, so it reaches the log without a copy.
        let mut per_partition: BTreeMap<u32, Result<BytesMut>> = BTreeMap::new();
        let mut add = |p: u32, r: Result<BytesMut>| match (per_partition.get_mut(&p), r) {
            (None, r) => {
                per_partition.insert(p, r);
            }
            (Some(Ok(buf)), Ok(bytes)) => buf.extend_from_slice(&bytes),
            (Some(slot @ Ok(_)), Err(e)) => *slot = Err(e),
            (Some(Err(_)), _) => {}
        };
        for part in parts {
            if part.batches.is_empty() && part.records.is_empty() {
                return Err(BrokerError::InvalidRequest(
                    "a partition entry has neither batches nor records".into(),
                ));
            }
            if part.partition < 0 {
                if part.partition != -1 || !part.batches.is_empty() {
                    return Err(BrokerError::InvalidRequest(
                        "partition -1 (broker chooses) is only valid with typed records".into(),
                    ));
                }
                let sticky = self.sticky.fetch_add(1, Ordering::Relaxed) % count;
                let mut groups: BTreeMap<u32, Vec<&OwnedRecord>> = BTreeMap::new();
                for r in &part.records {
                    let p = match &r.key {
                        Some(k) => partition_for_key(k, count),
                        None => sticky,
                    };
                    groups.entry(p).or_default().push(r);
                }
                for (p, recs) in groups {
                    let batch = encode(&recs);
                    let checked = check_sizes(topic, &batch, max).map(|_| owned(batch));
                    add(p, checked);
                }
                continue;
            }
            let p = part.partition as u32;
            if p >= count {
                return Err(BrokerError::UnknownPartition {
                    topic: topic.to_string(),
                    partition: part.partition.into(),
                    count,
                });
            }
            if !part.batches.is_empty() {
                let checked = check_sizes(topic, &part.batches, max)
                    .and_then(|()| refused.remove(&p).map_or(Ok(()), Err));
                add(p, checked.map(|_| unshared(part.batches)));
            }
            if !part.records.is_empty() {
                let recs: Vec<&OwnedRecord> = part.records.iter().collect();
                let batch = encode(&recs);
                add(p, check_sizes(topic, &batch, max).map(|_| owned(batch)));
            }
        }
        let futures = per_partition.into_iter().map(|(p, bytes)| {
            let part = self.partition(topic, p);
            async move {
                let result = match (bytes, part) {
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    (Ok(bytes), Ok(part)) => {
                        let leading = part.role();
                        let r = match acks {
                            Acks::None => part.append_detached(bytes).await.map(|_| None),
                            Acks::Leader => {
                                match tokio::time::timeout(timeout, part.append_local(bytes)).await {
                                    Ok(r) => r.map(Some),
                                    Err(_) => Err(BrokerError::Timeout(timeout.as_millis() as u64)),
                                }
                            }
                            Acks::All => match tokio::time::timeout(timeout, part.append(bytes)).await {
                                Ok(r) => r.map(Some),
                                Err(_) => Err(BrokerError::Timeout(timeout.as_millis() as u64)),
                            },
                        };
                        match &r {
                            Ok(Some(info)) if info.duplicate => {
                                metrics::counter!("cascade_produce_duplicates_total", "topic" => part.topic.to_string())
                                    .increment(1);
                            }
                            Ok(Some(info)) => {
                                metrics::counter!("cascade_produced_records_total", "topic" => part.topic.to_string())
                                    .increment(info.record_count);
                                metrics::counter!("cascade_produced_bytes_total", "topic" => part.topic.to_string())
                                    .increment(info.bytes);
                            }
                            Err(BrokerError::OutOfOrderSequence { .. }) => {
                                metrics::counter!("cascade_produce_out_of_order_total", "topic" => part.topic.to_string())
                                    .increment(1);
                            }
                            _ => {}
                        }
                        match r {
                            Err(e @ (BrokerError::OutOfOrderSequence { .. }
                            | BrokerError::UnknownProducerId { .. })) => {
                                {
                                    // What is left of the request's time, so the answer is
                                    // not later than the client was told to wait.
                                    let left = timeout.saturating_sub(started.elapsed());
                                    Err(self.confirm_refusal(&part, leading, e, left).await)
                                }
                            }
                            r => r,
                        }
                    }
                };
                PartResult {
                    partition: p,
                    result,
                }
            }
        });
        Ok(join_all(futures).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_buffer_nothing_else_holds_reaches_the_log_uncopied() {
        let request = Bytes::from(vec![7u8; 4096]);
        let batch = request.slice(100..2100);
        let at = batch.as_ptr();
        drop(request);
        let owned = unshared(batch);
        assert_eq!(
            owned.as_ptr(),
            at,
            "a unique buffer must be taken, not copied"
        );
        assert_eq!(owned.len(), 2000);

        // Still shared: copied, and stamping the copy leaves the original alone.
        let request = Bytes::from(vec![7u8; 4096]);
        let mut owned = unshared(request.slice(0..10));
        owned[0] = 1;
        assert_eq!(request[0], 7);
    }
}
