//! Reads on behalf of server-side consumer instances, wherever the partition is led.
//!
//! A consumer instance ([`crate::group::managed`]) lives on its group's coordinator, which
//! need not lead, or even hold a replica of, the partitions assigned to it. For those the
//! coordinator acts as a client of the leader's public `Records` service, exactly as an
//! external consumer would: fetches name the leader epoch the metadata shows (so a replaced
//! leader refuses rather than serving a shorter log), and reset positions come from the
//! leader's `ListOffsets`. Partitions this node leads are read locally. The wire conversion
//! stays in this module.
//!
//! Failure policy: a partition whose leader is unknown, moved or unreachable comes back with
//! a retriable error ([`BrokerError::LeaderNotAvailable`]); the caller skips it for this poll
//! and the next poll, with fresher metadata, tries again. Nothing here advances a position.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::fetch::{FetchOut, FetchPart, Position};
use cascade_proto::v1::{self as pb, records_client::RecordsClient};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest response accepted from a peer (a fetch answers at most its byte budget plus one
/// batch; batches are limited by max.message.bytes).
const MAX_PEER_MESSAGE: usize = 256 << 20;

fn unavailable(topic: &str, partition: u32) -> BrokerError {
    BrokerError::LeaderNotAvailable {
        topic: topic.to_string(),
        partition,
    }
}

fn failed(p: &FetchPart, e: BrokerError) -> FetchOut {
    FetchOut {
        topic: p.topic.clone(),
        partition: p.partition,
        batches: Default::default(),
        next_offset: 0,
        high_watermark: 0,
        log_start_offset: 0,
        error: Some(Arc::new(e)),
        leader_epoch: 0,
    }
}

impl Broker {
    /// The partition's leader and leader epoch per this node's metadata (None: no leader).
    fn leader_of(&self, topic: &str, partition: u32) -> Option<(u32, i32)> {
        let snap = self.meta.snapshot();
        let a = snap.assignment(topic, partition)?;
        (a.leader != 0).then_some((a.leader, a.leader_epoch))
    }

    fn records_client(&self, node: u32) -> Result<RecordsClient<tonic::transport::Channel>> {
        Ok(
            RecordsClient::new(self.peer_channel(node)?)
                .max_decoding_message_size(MAX_PEER_MESSAGE),
        )
    }

    /// Fetches `parts` from wherever each is led: the local ones through [`Broker::fetch`],
    /// the others with one request per leader, all at once. Returns when the first answer
    /// with records arrives (the rest are cancelled: nothing they read was handed out), or
    /// when every answer is in. Each part comes back at most once; a part that could not be
    /// read carries an error (retriable ones: see the module docs).
    pub(crate) async fn fetch_anywhere(
        &self,
        parts: Vec<FetchPart>,
        wait: Duration,
        max_bytes: usize,
    ) -> Vec<FetchOut> {
        let me = self.config.node_id;
        let mut local = Vec::new();
        let mut remote: BTreeMap<u32, Vec<(FetchPart, i32)>> = BTreeMap::new();
        let mut out = Vec::new();
        for p in parts {
            match self.leader_of(&p.topic, p.partition) {
                Some((leader, _)) if leader == me => local.push(p),
                Some(_) if matches!(p.position, Position::Latest) => {
                    // Instances always fetch at an offset; a relative position would need
                    // resolving on the leader first.
                    let e = BrokerError::InvalidRequest(
                        "a forwarded fetch needs an offset or a timestamp".into(),
                    );
                    out.push(failed(&p, e));
                }
                Some((leader, epoch)) => remote.entry(leader).or_default().push((p, epoch)),
                None => {
                    let e = unavailable(&p.topic, p.partition);
                    out.push(failed(&p, e));
                }
            }
        }
        let mut pending: FuturesUnordered<
            std::pin::Pin<Box<dyn Future<Output = Vec<FetchOut>> + Send + '_>>,
        > = FuturesUnordered::new();
        if !local.is_empty() {
            pending.push(Box::pin(async move {
                let fallback: Vec<FetchOut> = local
                    .iter()
                    .map(|p| failed(p, unavailable(&p.topic, p.partition)))
                    .collect();
                match self.fetch(local, wait, 1, max_bytes).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "local fetch for a consumer instance failed");
                        fallback
                    }
                }
            }));
        }
        for (leader, parts) in remote {
            pending.push(Box::pin(self.fetch_from(leader, parts, wait, max_bytes)));
        }
        while let Some(batch) = pending.next().await {
            let data = batch
                .iter()
                .any(|f| f.error.is_none() && !f.batches.is_empty());
            out.extend(batch);
            if data {
                break;
            }
        }
        out
    }

    /// One fetch from `leader` for `parts` (each with the leader epoch the metadata shows).
    async fn fetch_from(
        &self,
        leader: u32,
        parts: Vec<(FetchPart, i32)>,
        wait: Duration,
        max_bytes: usize,
    ) -> Vec<FetchOut> {
        let all_failed = |parts: &[(FetchPart, i32)], why: &str| {
            tracing::debug!(
                leader,
                error = why,
                "fetch from the leader for a consumer instance failed"
            );
            parts
                .iter()
                .map(|(p, _)| failed(p, unavailable(&p.topic, p.partition)))
                .collect::<Vec<_>>()
        };
        let mut client = match self.records_client(leader) {
            Ok(c) => c,
            Err(e) => return all_failed(&parts, &e.to_string()),
        };
        let req = pb::FetchRequest {
            partitions: parts
                .iter()
                .map(|(p, epoch)| pb::FetchPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    position: match p.position {
                        Position::Offset(o) => Some(pb::fetch_partition::Position::Offset(o)),
                        Position::Timestamp(t) => {
                            Some(pb::fetch_partition::Position::TimestampMs(t))
                        }
                        Position::Latest => None, // filtered out by the caller
                    },
                    max_bytes: u32::try_from(p.max_bytes).unwrap_or(u32::MAX),
                    current_leader_epoch: Some(*epoch),
                })
                .collect(),
            max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            min_bytes: 1,
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
        };
        // The leader holds the request up to `wait`; allow for the network on top.
        let deadline = wait + Duration::from_secs(5);
        let resp = match tokio::time::timeout(deadline, client.fetch(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return all_failed(&parts, status.message()),
            Err(_) => return all_failed(&parts, "timed out"),
        };
        resp.partitions
            .into_iter()
            .map(|f| {
                let error = f.error.map(|e| {
                    Arc::new(match pb::ErrorCode::try_from(e.code) {
                        Ok(pb::ErrorCode::OffsetOutOfRange) => BrokerError::OffsetOutOfRange {
                            topic: f.topic.clone(),
                            partition: f.partition,
                            requested: 0,
                            start: f.log_start_offset,
                            end: f.high_watermark,
                        },
                        Ok(
                            pb::ErrorCode::NotLeader
                            | pb::ErrorCode::LeaderNotAvailable
                            | pb::ErrorCode::ShuttingDown,
                        ) => unavailable(&f.topic, f.partition),
                        _ => BrokerError::InvalidRequest(format!(
                            "{}/{} on broker {leader}: {}",
                            f.topic, f.partition, e.message
                        )),
                    })
                });
                FetchOut {
                    topic: f.topic,
                    partition: f.partition,
                    batches: f.batches,
                    next_offset: f.next_offset,
                    high_watermark: f.high_watermark,
                    log_start_offset: f.log_start_offset,
                    error,
                    leader_epoch: f.leader_epoch,
                }
            })
            .collect()
    }

    /// The log start (`earliest`) or high watermark (`latest`) of a partition, from this
    /// node's replica when it leads, else from the leader.
    pub(crate) async fn offset_anywhere(
        &self,
        topic: &str,
        partition: u32,
        earliest: bool,
    ) -> Result<u64> {
        let (leader, _) = self
            .leader_of(topic, partition)
            .ok_or_else(|| unavailable(topic, partition))?;
        if leader == self.config.node_id {
            let p = self.partition(topic, partition)?;
            return Ok(if earliest {
                p.reader().start_offset()
            } else {
                p.high_watermark()
            });
        }
        let req = pb::ListOffsetsRequest {
            topic: topic.to_string(),
            partitions: vec![partition],
            spec: if earliest {
                pb::OffsetSpec::Earliest
            } else {
                pb::OffsetSpec::Latest
            } as i32,
            timestamp_ms: 0,
        };
        let mut client = self.records_client(leader)?;
        let resp = tokio::time::timeout(Duration::from_secs(5), client.list_offsets(req))
            .await
            .map_err(|_| unavailable(topic, partition))?
            .map_err(|s| {
                tracing::debug!(leader, error = %s.message(), "list offsets on the leader failed");
                unavailable(topic, partition)
            })?
            .into_inner();
        resp.offsets
            .iter()
            .find(|o| o.partition == partition)
            .map(|o| o.offset)
            .ok_or_else(|| unavailable(topic, partition))
    }
}
