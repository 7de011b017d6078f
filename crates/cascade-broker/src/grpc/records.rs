//! `cascade.v1.Records`: produce, fetch, subscribe, list offsets.

use super::idempotency::{Claim, IdempotencyCache, request_hash};
use super::{observe, to_status, wire_error};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::fetch::{DEFAULT_PARTITION_MAX_BYTES, FetchOut, FetchPart, Position};
use crate::produce::{Acks, DEFAULT_PRODUCE_TIMEOUT, OwnedRecord, ProducePart};
use cascade_proto::v1::{self as pb, records_server::Records};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest fetch budget.
const MAX_FETCH_BYTES: usize = 64 << 20;

/// The Records service.
#[derive(Debug, Clone)]
pub struct RecordsService {
    broker: Arc<Broker>,
    idempotency: Arc<IdempotencyCache>,
}

impl RecordsService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            idempotency: Arc::default(),
        }
    }

    async fn produce_once(
        &self,
        r: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, BrokerError> {
        let acks = match pb::Acks::try_from(r.acks) {
            Ok(pb::Acks::All) => Acks::All,
            Ok(pb::Acks::Leader) => Acks::Leader,
            Ok(pb::Acks::None) => Acks::None,
            Err(_) => {
                return Err(BrokerError::InvalidRequest(format!(
                    "unknown acks {}",
                    r.acks
                )));
            }
        };
        let timeout = match r.timeout_ms {
            0 => DEFAULT_PRODUCE_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let parts = r
            .partitions
            .into_iter()
            .map(|p| ProducePart {
                partition: p.partition,
                batches: p.batches,
                records: p
                    .records
                    .into_iter()
                    .map(|rec| OwnedRecord {
                        key: rec.key,
                        value: rec.value,
                        headers: rec.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                        timestamp_ms: rec.timestamp_ms,
                    })
                    .collect(),
            })
            .collect();
        let results = self.broker.produce(&r.topic, parts, acks, timeout).await?;
        Ok(pb::ProduceResponse {
            results: results
                .into_iter()
                .map(|pr| match pr.result {
                    Ok(info) => pb::PartitionProduceResult {
                        partition: pr.partition,
                        base_offset: info.map_or(0, |i| i.base_offset),
                        last_offset: info.map_or(0, |i| i.last_offset),
                        record_count: info.map_or(0, |i| i.record_count as u32),
                        error: None,
                        duplicate: info.is_some_and(|i| i.duplicate),
                    },
                    Err(e) => pb::PartitionProduceResult {
                        partition: pr.partition,
                        error: Some(wire_error(&e)),
                        ..Default::default()
                    },
                })
                .collect(),
        })
    }

    /// Produces, honouring an idempotency key if the request has one.
    async fn produce_keyed(
        &self,
        r: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, BrokerError> {
        if r.idempotency_key.is_empty() {
            return self.produce_once(r).await;
        }
        let key = r.idempotency_key.clone();
        let topic = r.topic.clone();
        let hash = request_hash(&r);
        loop {
            match self.idempotency.claim(&topic, &key, hash) {
                Claim::Answered(a) => return Ok((*a).clone()),
                Claim::Conflict => {
                    return Err(BrokerError::InvalidRequest(format!(
                        "idempotency key {key:?} was already used for a different request"
                    )));
                }
                Claim::Wait(mut rx) => {
                    // The first request with this key is still being written.
                    let answer = loop {
                        if let Some(a) = rx.borrow_and_update().clone() {
                            break a;
                        }
                        if rx.changed().await.is_err() {
                            break None;
                        }
                    };
                    if let Some(a) = answer {
                        return Ok((*a).clone());
                    }
                    // It failed as a whole: claim again and write.
                }
                Claim::First(guard) => {
                    let result = self.produce_once(r).await;
                    let answer = result.as_ref().ok().map(|a| Arc::new(a.clone()));
                    self.idempotency.finish(guard, answer);
                    return result;
                }
            }
        }
    }
}

fn position(p: Option<pb::fetch_partition::Position>) -> Position {
    match p {
        None => Position::Offset(0),
        Some(pb::fetch_partition::Position::Offset(o)) => Position::Offset(o),
        Some(pb::fetch_partition::Position::TimestampMs(t)) => Position::Timestamp(t),
    }
}

fn to_wire(f: FetchOut) -> pb::FetchedPartition {
    pb::FetchedPartition {
        topic: f.topic,
        partition: f.partition,
        batches: f.batches,
        next_offset: f.next_offset,
        high_watermark: f.high_watermark,
        log_start_offset: f.log_start_offset,
        error: f.error.as_deref().map(wire_error),
        leader_epoch: f.leader_epoch,
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::FetchedPartition, Status>> + Send>>;

#[tonic::async_trait]
impl Records for RecordsService {
    async fn produce(
        &self,
        req: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let r = req.into_inner();
        observe("produce", self.produce_keyed(r))
            .await
            .map(Response::new)
    }

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let r = req.into_inner();
        observe("fetch", async {
            let parts = r
                .partitions
                .into_iter()
                .map(|p| FetchPart {
                    topic: p.topic,
                    partition: p.partition,
                    position: position(p.position),
                    max_bytes: match p.max_bytes {
                        0 => DEFAULT_PARTITION_MAX_BYTES,
                        n => (n as usize).min(MAX_FETCH_BYTES),
                    },
                    leader_epoch: p.current_leader_epoch,
                })
                .collect();
            let max_bytes = match r.max_bytes {
                0 => MAX_FETCH_BYTES,
                n => (n as usize).min(MAX_FETCH_BYTES),
            };
            let wait = Duration::from_millis(u64::from(r.max_wait_ms)).min(MAX_WAIT);
            let out = self
                .broker
                .fetch(parts, wait, r.min_bytes as usize, max_bytes)
                .await?;
            Ok(pb::FetchResponse {
                partitions: out.into_iter().map(to_wire).collect(),
            })
        })
        .await
        .map(Response::new)
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.into_inner();
        let broker = self.broker.clone();
        let part = broker
            .partition(&r.topic, r.partition)
            .map_err(|e| to_status(&e))?;
        let pos = match r.position {
            None => Position::Offset(0),
            Some(pb::subscribe_request::Position::Offset(o)) => Position::Offset(o),
            Some(pb::subscribe_request::Position::TimestampMs(t)) => Position::Timestamp(t),
            Some(pb::subscribe_request::Position::Latest(_)) => Position::Latest,
        };
        let mut offset = broker
            .resolve_position(&part, pos)
            .map_err(|e| to_status(&e))?;
        let max_bytes = match r.max_bytes {
            0 => DEFAULT_PARTITION_MAX_BYTES,
            n => (n as usize).min(MAX_FETCH_BYTES),
        };
        // Fail fast on a bad start offset rather than on the first message.
        broker
            .read_partition(&part, offset, 1)
            .map_err(|e| to_status(&e))?;
        metrics::gauge!("cascade_subscriptions").increment(1.0);
        let token = broker.shutdown_token();
        let stream = async_stream(move |tx| async move {
            let mut hw = part.watch_high_watermark();
            loop {
                match broker.read_partition(&part, offset, max_bytes) {
                    Ok(f) if !f.batches.is_empty() => {
                        offset = f.next_offset;
                        if tx.send(Ok(to_wire(f))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(to_status(&e))).await;
                        break;
                    }
                }
                tokio::select! {
                    changed = hw.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                    _ = token.cancelled() => break,
                }
            }
            metrics::gauge!("cascade_subscriptions").decrement(1.0);
        });
        Ok(Response::new(stream))
    }

    async fn list_offsets(
        &self,
        req: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let r = req.into_inner();
        observe("list_offsets", async {
            let count = self.broker.partition_count(&r.topic)?;
            let partitions: Vec<u32> = if r.partitions.is_empty() {
                (0..count).collect()
            } else {
                r.partitions.clone()
            };
            let spec = pb::OffsetSpec::try_from(r.spec).map_err(|_| {
                BrokerError::InvalidRequest(format!("unknown offset spec {}", r.spec))
            })?;
            let mut offsets = Vec::new();
            for p in partitions {
                let part = self.broker.partition(&r.topic, p)?;
                let hw = part.high_watermark();
                let (offset, found) = match spec {
                    pb::OffsetSpec::Earliest => (part.reader().start_offset(), true),
                    pb::OffsetSpec::Latest => (hw, true),
                    pb::OffsetSpec::Timestamp => {
                        match part.reader().offset_for_timestamp(r.timestamp_ms)? {
                            Some(o) if o < hw => (o, true),
                            _ => (hw, false),
                        }
                    }
                };
                offsets.push(pb::PartitionOffset {
                    partition: p,
                    offset,
                    found,
                });
            }
            Ok(pb::ListOffsetsResponse { offsets })
        })
        .await
        .map(Response::new)
    }

    async fn init_producer_id(
        &self,
        req: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        let r = req.into_inner();
        observe("init_producer_id", async {
            let existing = match (r.producer_id, r.producer_epoch) {
                (None, None) => None,
                (Some(id), Some(epoch)) => {
                    let epoch = i16::try_from(epoch).map_err(|_| {
                        BrokerError::InvalidRequest(format!(
                            "producer_epoch {epoch} is out of range (0 to {})",
                            i16::MAX
                        ))
                    })?;
                    Some((id, epoch))
                }
                _ => {
                    return Err(BrokerError::InvalidRequest(
                        "give both producer_id and producer_epoch (to re-initialise) or neither (for a new id)".into(),
                    ));
                }
            };
            let (producer_id, epoch) = self.broker.init_producer(existing).await?;
            Ok(pb::InitProducerIdResponse {
                producer_id,
                producer_epoch: i32::from(epoch),
            })
        })
        .await
        .map(Response::new)
    }
}

/// A stream fed by a task through a bounded channel; the task sees the receiver's drop.
fn async_stream<T, F, Fut>(f: F) -> SubscribeStream
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::FetchedPartition, Status>>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
