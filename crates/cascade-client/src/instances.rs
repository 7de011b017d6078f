//! Calls of the `Consumers` service: server-side consumer instances, whose state lives on
//! the broker so that a stateless client (the REST gateway) can drive them from anywhere.

use crate::client::Client;
use crate::consumer::{ConsumedRecord, decode_records};
use crate::error::Result;
use cascade_proto::v1::{self as pb, consumers_client::ConsumersClient};
use tonic::transport::Channel;

fn reference(group: &str, name: &str) -> pb::ConsumerRef {
    pb::ConsumerRef {
        group_id: group.into(),
        name: name.into(),
    }
}

impl Client {
    /// The raw Consumers client for a group's coordinator.
    pub fn consumers_for(&self, _group: &str) -> ConsumersClient<Channel> {
        ConsumersClient::new(self.channel()).max_decoding_message_size(256 << 20)
    }

    /// Creates a server-side consumer instance.
    pub async fn instance_create(
        &self,
        req: pb::CreateConsumerRequest,
    ) -> Result<pb::ConsumerInstance> {
        Ok(self
            .consumers_for(&req.group_id.clone())
            .create(req)
            .await?
            .into_inner())
    }

    /// Deletes an instance (leaving its group).
    pub async fn instance_delete(&self, group: &str, name: &str) -> Result<()> {
        self.consumers_for(group)
            .delete(reference(group, name))
            .await?;
        Ok(())
    }

    /// Replaces an instance's subscription.
    pub async fn instance_subscribe(
        &self,
        group: &str,
        name: &str,
        topics: Vec<String>,
    ) -> Result<pb::ConsumerInstance> {
        Ok(self
            .consumers_for(group)
            .subscribe(pb::ConsumerSubscribeRequest {
                consumer: Some(reference(group, name)),
                topics,
            })
            .await?
            .into_inner())
    }

    /// Drops an instance's subscription.
    pub async fn instance_unsubscribe(
        &self,
        group: &str,
        name: &str,
    ) -> Result<pb::ConsumerInstance> {
        Ok(self
            .consumers_for(group)
            .unsubscribe(reference(group, name))
            .await?
            .into_inner())
    }

    /// An instance's settings, subscription, assignment and positions.
    pub async fn instance_get(&self, group: &str, name: &str) -> Result<pb::ConsumerInstance> {
        Ok(self
            .consumers_for(group)
            .get(reference(group, name))
            .await?
            .into_inner())
    }

    /// Records at the instance's positions (which advance), decoded.
    pub async fn instance_poll(
        &self,
        group: &str,
        name: &str,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<Vec<ConsumedRecord>> {
        let resp = self
            .consumers_for(group)
            .poll(pb::ConsumerPollRequest {
                consumer: Some(reference(group, name)),
                max_bytes,
                timeout_ms,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        for p in resp.partitions {
            let Some(d) = p.data else { continue };
            crate::error::partition_error(&d.topic, d.partition, d.error.as_ref())?;
            out.extend(decode_records(
                &d.topic,
                d.partition,
                &d.batches,
                p.from_offset,
            )?);
        }
        Ok(out)
    }

    /// Commits offsets for an instance (every position when `offsets` is empty).
    pub async fn instance_commit(
        &self,
        group: &str,
        name: &str,
        offsets: Vec<pb::OffsetCommit>,
    ) -> Result<()> {
        self.consumers_for(group)
            .commit(pb::ConsumerCommitRequest {
                consumer: Some(reference(group, name)),
                offsets,
            })
            .await?;
        Ok(())
    }

    /// Moves an instance's positions.
    pub async fn instance_seek(
        &self,
        group: &str,
        name: &str,
        offsets: Vec<pb::PartitionPosition>,
        beginning: Vec<pb::TopicPartitions>,
        end: Vec<pb::TopicPartitions>,
    ) -> Result<pb::ConsumerInstance> {
        Ok(self
            .consumers_for(group)
            .seek(pb::ConsumerSeekRequest {
                consumer: Some(reference(group, name)),
                offsets,
                beginning,
                end,
            })
            .await?
            .into_inner())
    }
}
