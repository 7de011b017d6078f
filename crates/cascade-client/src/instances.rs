//! Calls of the `Consumers` service: server-side consumer instances, whose state lives on
//! the broker so that a stateless client (the REST gateway) can drive them from anywhere.
//!
//! An instance is a member of its consumer group, so every call goes to the group's
//! coordinator and follows it when it moves (`NOT_COORDINATOR`), like the `Groups` calls.
//! Calls that change nothing or set absolute state (get, subscribe, unsubscribe, commit,
//! seek) are resent after a transport failure; create, delete and poll are not (a poll
//! answered into a broken connection advanced the positions, and resending it would skip
//! those records silently), so a caller sees that failure and decides.

use crate::client::{Client, Idempotence, MAX_MESSAGE, Target};
use crate::consumer::{ConsumedRecord, decode_records};
use crate::error::Result;
use cascade_proto::v1::{self as pb, consumers_client::ConsumersClient};
use tonic::transport::Channel;

fn consumers_on(ch: Channel) -> ConsumersClient<Channel> {
    ConsumersClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

fn reference(group: &str, name: &str) -> pb::ConsumerRef {
    pb::ConsumerRef {
        group_id: group.into(),
        name: name.into(),
    }
}

impl Client {
    /// The raw Consumers client for a group's coordinator, as far as the cached metadata
    /// knows. No retries: prefer the typed calls.
    pub fn consumers_for(&self, group: &str) -> ConsumersClient<Channel> {
        consumers_on(self.group_channel(group))
    }

    /// Creates a server-side consumer instance.
    pub async fn instance_create(
        &self,
        req: pb::CreateConsumerRequest,
    ) -> Result<pb::ConsumerInstance> {
        let group = req.group_id.clone();
        self.call(Target::Group(&group), Idempotence::Once, |ch| {
            let req = req.clone();
            async move { Ok(consumers_on(ch).create(req).await?.into_inner()) }
        })
        .await
    }

    /// Deletes an instance (leaving its group).
    pub async fn instance_delete(&self, group: &str, name: &str) -> Result<()> {
        self.call(Target::Group(group), Idempotence::Once, |ch| async move {
            Ok(consumers_on(ch)
                .delete(reference(group, name))
                .await
                .map(drop)?)
        })
        .await
    }

    /// Replaces an instance's subscription.
    pub async fn instance_subscribe(
        &self,
        group: &str,
        name: &str,
        topics: Vec<String>,
    ) -> Result<pb::ConsumerInstance> {
        let req = pb::ConsumerSubscribeRequest {
            consumer: Some(reference(group, name)),
            topics,
        };
        self.call(Target::Group(group), Idempotence::Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(consumers_on(ch).subscribe(req).await?.into_inner()) }
        })
        .await
    }

    /// Drops an instance's subscription.
    pub async fn instance_unsubscribe(
        &self,
        group: &str,
        name: &str,
    ) -> Result<pb::ConsumerInstance> {
        self.call(
            Target::Group(group),
            Idempotence::Repeatable,
            |ch| async move {
                Ok(consumers_on(ch)
                    .unsubscribe(reference(group, name))
                    .await?
                    .into_inner())
            },
        )
        .await
    }

    /// An instance's settings, subscription, assignment and positions.
    pub async fn instance_get(&self, group: &str, name: &str) -> Result<pb::ConsumerInstance> {
        self.call(
            Target::Group(group),
            Idempotence::Repeatable,
            |ch| async move {
                Ok(consumers_on(ch)
                    .get(reference(group, name))
                    .await?
                    .into_inner())
            },
        )
        .await
    }

    /// Records at the instance's positions (which advance), decoded.
    pub async fn instance_poll(
        &self,
        group: &str,
        name: &str,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<Vec<ConsumedRecord>> {
        let req = pb::ConsumerPollRequest {
            consumer: Some(reference(group, name)),
            max_bytes,
            timeout_ms,
        };
        let resp = self
            .call(Target::Group(group), Idempotence::Once, |ch| {
                let req = req.clone();
                async move { Ok(consumers_on(ch).poll(req).await?.into_inner()) }
            })
            .await?;
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
        let req = pb::ConsumerCommitRequest {
            consumer: Some(reference(group, name)),
            offsets,
        };
        self.call(Target::Group(group), Idempotence::Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(consumers_on(ch).commit(req).await.map(drop)?) }
        })
        .await
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
        let req = pb::ConsumerSeekRequest {
            consumer: Some(reference(group, name)),
            offsets,
            beginning,
            end,
        };
        self.call(Target::Group(group), Idempotence::Repeatable, |ch| {
            let req = req.clone();
            async move { Ok(consumers_on(ch).seek(req).await?.into_inner()) }
        })
        .await
    }
}
