//! [`Client`]: one connection to the cluster and every unary call of the public API.
//!
//! The connection is one HTTP/2 channel (multiplexed, reused by every call and by the
//! producers and consumers built on it). Requests for a partition go through
//! [`Client::records_for`], the single place where routing to a partition's leader belongs: on
//! a single node every partition is led by the node connected to.

use crate::error::{ClientError, Result, partition_error};
use bytes::Bytes;
use cascade_proto::v1::{
    self as pb, admin_client::AdminClient, groups_client::GroupsClient,
    records_client::RecordsClient,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest message the client accepts from the server.
const MAX_MESSAGE: usize = 256 << 20;

/// A connection to a Cascade cluster.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    brokers: String,
}

/// How long to wait for acknowledgement of a produce.
pub use cascade_proto::v1::Acks;

/// Result of producing to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// The partition written.
    pub partition: u32,
    /// First offset assigned.
    pub base_offset: u64,
    /// Last offset assigned.
    pub last_offset: u64,
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri)
        .map(|e| {
            // Large flow-control windows: fetches and batches are often far above HTTP/2's
            // default 64 KiB, which would cost a round trip per window.
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(32 << 20)
                .max_frame_size(1 << 20)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| ClientError::InvalidArgument(format!("bad broker address {addr:?}: {e}")))
}

impl Client {
    /// Connects to the first reachable broker of a comma-separated list (`host:port,...`).
    pub async fn connect(brokers: &str) -> Result<Self> {
        let mut last = String::from("no broker address given");
        for addr in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match endpoint(addr)?.connect().await {
                Ok(channel) => {
                    return Ok(Self {
                        channel,
                        brokers: brokers.to_string(),
                    });
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(ClientError::Connect {
            brokers: brokers.to_string(),
            reason: last,
        })
    }

    /// The shared connection.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A client that connects on first use instead of now, and reconnects after a failure:
    /// for servers that must start before their brokers answer (a node's own REST API, a
    /// gateway started next to its brokers). Calls fail fast with
    /// [`ClientError::Server`] (`UNAVAILABLE`) while no broker can be reached.
    ///
    /// With several addresses (`host:port,...`), calls are spread over the reachable ones.
    pub fn connect_lazy(brokers: &str) -> Result<Self> {
        let endpoints = brokers
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(endpoint)
            .collect::<Result<Vec<_>>>()?;
        let channel = match endpoints.len() {
            0 => {
                return Err(ClientError::InvalidArgument(
                    "no broker address given".into(),
                ));
            }
            1 => endpoints[0].connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(Self {
            channel,
            brokers: brokers.to_string(),
        })
    }

    /// The broker list this client was made with.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The raw Admin client.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// The raw Records client for a partition's leader.
    pub fn records_for(&self, _topic: &str, _partition: u32) -> RecordsClient<Channel> {
        RecordsClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The raw Groups client for a group's coordinator.
    pub fn groups_for(&self, _group: &str) -> GroupsClient<Channel> {
        GroupsClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    // ----- admin -----

    /// Creates a topic.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<pb::TopicDescription> {
        Ok(self
            .admin()
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor,
                configs: configs.into_iter().collect(),
                validate_only: false,
            })
            .await?
            .into_inner())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.admin()
            .delete_topic(pb::DeleteTopicRequest { name: name.into() })
            .await?;
        Ok(())
    }

    /// Lists topics.
    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<pb::TopicDescription>> {
        Ok(self
            .admin()
            .list_topics(pb::ListTopicsRequest { include_internal })
            .await?
            .into_inner()
            .topics)
    }

    /// Describes a topic.
    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription> {
        Ok(self
            .admin()
            .describe_topic(pb::DescribeTopicRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// Raises a topic's partition count to `total`.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<pb::TopicDescription> {
        Ok(self
            .admin()
            .create_partitions(pb::CreatePartitionsRequest {
                name: name.into(),
                total,
            })
            .await?
            .into_inner())
    }

    /// Sets and resets topic settings.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        reset: Vec<String>,
    ) -> Result<pb::TopicDescription> {
        Ok(self
            .admin()
            .alter_topic_config(pb::AlterTopicConfigRequest {
                name: name.into(),
                set: set.into_iter().collect(),
                reset,
            })
            .await?
            .into_inner())
    }

    /// Nodes, controller and partition health.
    pub async fn describe_cluster(&self) -> Result<pb::ClusterDescription> {
        Ok(self
            .admin()
            .describe_cluster(pb::DescribeClusterRequest {})
            .await?
            .into_inner())
    }

    /// Number of partitions of `topic`.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.describe_topic(topic).await?.partitions.len() as u32)
    }

    // ----- records -----

    /// Sends a produce request as it is (several partitions, typed records, an idempotency
    /// key); per-partition errors are left in the answer.
    pub async fn produce(&self, req: pb::ProduceRequest) -> Result<pb::ProduceResponse> {
        Ok(self
            .records_for(&req.topic.clone(), 0)
            .produce(req)
            .await?
            .into_inner())
    }

    /// Appends encoded batches to one partition.
    pub async fn produce_batches(
        &self,
        topic: &str,
        partition: u32,
        batches: Bytes,
        acks: Acks,
    ) -> Result<Produced> {
        let resp = self
            .records_for(topic, partition)
            .produce(pb::ProduceRequest {
                topic: topic.into(),
                partitions: vec![pb::PartitionRecords {
                    partition: partition as i32,
                    batches,
                    records: vec![],
                }],
                acks: acks as i32,
                timeout_ms: 0,
                idempotency_key: String::new(),
            })
            .await?
            .into_inner();
        first_result(topic, resp)
    }

    /// Produces typed records; `partition` None lets the broker choose (key hash or sticky).
    pub async fn produce_records(
        &self,
        topic: &str,
        partition: Option<u32>,
        records: Vec<pb::Record>,
        acks: Acks,
    ) -> Result<Vec<Produced>> {
        let resp = self
            .records_for(topic, partition.unwrap_or(0))
            .produce(pb::ProduceRequest {
                topic: topic.into(),
                partitions: vec![pb::PartitionRecords {
                    partition: partition.map_or(-1, |p| p as i32),
                    batches: Bytes::new(),
                    records,
                }],
                acks: acks as i32,
                timeout_ms: 0,
                idempotency_key: String::new(),
            })
            .await?
            .into_inner();
        resp.results
            .iter()
            .map(|r| {
                partition_error(topic, r.partition, r.error.as_ref())?;
                Ok(Produced {
                    partition: r.partition,
                    base_offset: r.base_offset,
                    last_offset: r.last_offset,
                })
            })
            .collect()
    }

    /// Reads one partition from `offset`, waiting up to `max_wait` for data.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<pb::FetchedPartition> {
        let mut resp = self
            .records_for(topic, partition)
            .fetch(pb::FetchRequest {
                partitions: vec![pb::FetchPartition {
                    topic: topic.into(),
                    partition,
                    position: Some(pb::fetch_partition::Position::Offset(offset)),
                    max_bytes,
                }],
                max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
                min_bytes: 1,
                max_bytes,
            })
            .await?
            .into_inner();
        let p = resp
            .partitions
            .pop()
            .ok_or_else(|| ClientError::Decode("fetch response without partitions".into()))?;
        partition_error(topic, partition, p.error.as_ref())?;
        Ok(p)
    }

    /// Earliest, latest, or by-timestamp offsets of the given partitions (all when empty).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<pb::PartitionOffset>> {
        Ok(self
            .records_for(topic, 0)
            .list_offsets(pb::ListOffsetsRequest {
                topic: topic.into(),
                partitions,
                spec: spec as i32,
                timestamp_ms,
            })
            .await?
            .into_inner()
            .offsets)
    }

    /// Follows a partition live from a position.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        position: pb::subscribe_request::Position,
    ) -> Result<tonic::Streaming<pb::FetchedPartition>> {
        Ok(self
            .records_for(topic, partition)
            .subscribe(pb::SubscribeRequest {
                topic: topic.into(),
                partition,
                position: Some(position),
                max_bytes: 0,
            })
            .await?
            .into_inner())
    }

    // ----- groups -----

    /// Lists consumer groups.
    pub async fn list_groups(&self) -> Result<Vec<pb::GroupSummary>> {
        Ok(self
            .groups_for("")
            .list_groups(pb::ListGroupsRequest {})
            .await?
            .into_inner()
            .groups)
    }

    /// Describes a group: members, assignments, lag.
    pub async fn describe_group(&self, group: &str) -> Result<pb::GroupDescription> {
        Ok(self
            .groups_for(group)
            .describe_group(pb::DescribeGroupRequest {
                group_id: group.into(),
            })
            .await?
            .into_inner())
    }

    /// Committed offsets of a group (all when `partitions` is empty).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Vec<pb::TopicPartitions>,
    ) -> Result<Vec<pb::CommittedOffset>> {
        Ok(self
            .groups_for(group)
            .fetch_offsets(pb::FetchOffsetsRequest {
                group_id: group.into(),
                partitions,
            })
            .await?
            .into_inner()
            .offsets)
    }

    /// Commits offsets (member id empty and epoch -1 for a group without members).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: Vec<pb::OffsetCommit>,
    ) -> Result<()> {
        self.groups_for(group)
            .commit_offsets(pb::CommitOffsetsRequest {
                group_id: group.into(),
                member_id: member_id.into(),
                member_epoch,
                offsets,
            })
            .await?;
        Ok(())
    }

    /// Resets a memberless group's offsets.
    pub async fn reset_offsets(
        &self,
        req: pb::ResetOffsetsRequest,
    ) -> Result<Vec<pb::CommittedOffset>> {
        Ok(self
            .groups_for(&req.group_id.clone())
            .reset_offsets(req)
            .await?
            .into_inner()
            .offsets)
    }

    /// Deletes a memberless group and its offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.groups_for(group)
            .delete_group(pb::DeleteGroupRequest {
                group_id: group.into(),
            })
            .await?;
        Ok(())
    }

    /// One group heartbeat (join with empty id and epoch 0, leave with epoch -1).
    pub async fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        Ok(self
            .groups_for(&req.group_id.clone())
            .heartbeat(req)
            .await?
            .into_inner())
    }
}

fn first_result(topic: &str, resp: pb::ProduceResponse) -> Result<Produced> {
    let r = resp
        .results
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Decode("produce response without results".into()))?;
    partition_error(topic, r.partition, r.error.as_ref())?;
    Ok(Produced {
        partition: r.partition,
        base_offset: r.base_offset,
        last_offset: r.last_offset,
    })
}
