//! `cascade.v1.Consumers`: server-side consumer instances (see `group::managed`).

use super::{observe, wire_error};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::group::Tp;
use crate::group::managed::{DEFAULT_INSTANCE_TIMEOUT, InstanceConfig, InstanceView, Reset};
use cascade_proto::v1::{self as pb, consumers_server::Consumers};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The Consumers service.
#[derive(Debug, Clone)]
pub struct ConsumersService {
    broker: Arc<Broker>,
}

impl ConsumersService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

fn view(v: InstanceView) -> pb::ConsumerInstance {
    pb::ConsumerInstance {
        assignment: super::groups::by_topic(v.positions.keys()),
        positions: v
            .positions
            .iter()
            .map(|(tp, o)| pb::PartitionPosition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: *o,
            })
            .collect(),
        group_id: v.group,
        name: v.name,
        format: v.format,
        auto_offset_reset: v.reset.name().to_string(),
        auto_commit: v.auto_commit,
        topics: v.topics,
    }
}

fn reference(r: Option<pb::ConsumerRef>) -> Result<pb::ConsumerRef, BrokerError> {
    r.ok_or_else(|| BrokerError::InvalidRequest("missing consumer reference".into()))
}

fn tps(list: Vec<pb::TopicPartitions>) -> Vec<Tp> {
    list.into_iter()
        .flat_map(|t| {
            let topic = t.topic;
            t.partitions
                .into_iter()
                .map(move |p| Tp::new(topic.clone(), p))
        })
        .collect()
}

#[tonic::async_trait]
impl Consumers for ConsumersService {
    async fn create(
        &self,
        req: Request<pb::CreateConsumerRequest>,
    ) -> Result<Response<pb::ConsumerInstance>, Status> {
        let r = req.into_inner();
        observe("consumer_create", async {
            self.broker.own_group(&r.group_id).await?;
            let config = InstanceConfig {
                format: r.format,
                reset: Reset::parse(&r.auto_offset_reset)?,
                auto_commit: r.auto_commit,
                session_timeout: match r.session_timeout_ms {
                    0 => DEFAULT_INSTANCE_TIMEOUT,
                    ms => Duration::from_millis(u64::from(ms)),
                },
            };
            Ok(view(
                self.broker
                    .consumer_create(&r.group_id, &r.name, config)
                    .await?,
            ))
        })
        .await
        .map(Response::new)
    }

    async fn delete(
        &self,
        req: Request<pb::ConsumerRef>,
    ) -> Result<Response<pb::DeleteConsumerResponse>, Status> {
        let r = req.into_inner();
        observe("consumer_delete", async {
            self.broker.consumer_delete(&r.group_id, &r.name).await?;
            Ok(pb::DeleteConsumerResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn subscribe(
        &self,
        req: Request<pb::ConsumerSubscribeRequest>,
    ) -> Result<Response<pb::ConsumerInstance>, Status> {
        let r = req.into_inner();
        observe("consumer_subscribe", async {
            let c = reference(r.consumer)?;
            Ok(view(
                self.broker
                    .consumer_subscribe(&c.group_id, &c.name, r.topics)
                    .await?,
            ))
        })
        .await
        .map(Response::new)
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::ConsumerRef>,
    ) -> Result<Response<pb::ConsumerInstance>, Status> {
        let r = req.into_inner();
        observe("consumer_unsubscribe", async {
            Ok(view(
                self.broker
                    .consumer_unsubscribe(&r.group_id, &r.name)
                    .await?,
            ))
        })
        .await
        .map(Response::new)
    }

    async fn get(
        &self,
        req: Request<pb::ConsumerRef>,
    ) -> Result<Response<pb::ConsumerInstance>, Status> {
        let r = req.into_inner();
        observe("consumer_get", async {
            Ok(view(self.broker.consumer_get(&r.group_id, &r.name).await?))
        })
        .await
        .map(Response::new)
    }

    async fn poll(
        &self,
        req: Request<pb::ConsumerPollRequest>,
    ) -> Result<Response<pb::ConsumerPollResponse>, Status> {
        let r = req.into_inner();
        observe("consumer_poll", async {
            let c = reference(r.consumer)?;
            let max_bytes = match r.max_bytes {
                0 => 1 << 20,
                n => (n as usize).min(64 << 20),
            };
            let out = self
                .broker
                .consumer_poll(
                    &c.group_id,
                    &c.name,
                    max_bytes,
                    Duration::from_millis(u64::from(r.timeout_ms)),
                )
                .await?;
            Ok(pb::ConsumerPollResponse {
                partitions: out
                    .into_iter()
                    .map(|(f, from)| pb::PolledPartition {
                        data: Some(pb::FetchedPartition {
                            topic: f.topic,
                            partition: f.partition,
                            batches: f.batches,
                            next_offset: f.next_offset,
                            high_watermark: f.high_watermark,
                            log_start_offset: f.log_start_offset,
                            error: f.error.as_deref().map(wire_error),
                            leader_epoch: f.leader_epoch,
                        }),
                        from_offset: from,
                    })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn commit(
        &self,
        req: Request<pb::ConsumerCommitRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let r = req.into_inner();
        observe("consumer_commit", async {
            let c = reference(r.consumer)?;
            let offsets = (!r.offsets.is_empty()).then(|| {
                r.offsets
                    .into_iter()
                    .map(|o| (Tp::new(o.topic, o.partition), o.offset, o.metadata))
                    .collect()
            });
            self.broker
                .consumer_commit(&c.group_id, &c.name, offsets)
                .await?;
            Ok(pb::CommitOffsetsResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn seek(
        &self,
        req: Request<pb::ConsumerSeekRequest>,
    ) -> Result<Response<pb::ConsumerInstance>, Status> {
        let r = req.into_inner();
        observe("consumer_seek", async {
            let c = reference(r.consumer)?;
            let offsets = r
                .offsets
                .into_iter()
                .map(|p| (Tp::new(p.topic, p.partition), p.offset))
                .collect();
            Ok(view(
                self.broker
                    .consumer_seek(&c.group_id, &c.name, offsets, tps(r.beginning), tps(r.end))
                    .await?,
            ))
        })
        .await
        .map(Response::new)
    }
}
