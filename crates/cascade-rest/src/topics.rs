//! v2 topic metadata: `GET /topics`, `GET /topics/{topic}`, its partitions and their offsets,
//! in the Confluent REST Proxy v2 shapes.

use crate::RestState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiPath;
use crate::format::V2Json;
use axum::extract::State;
use cascade_client::proto::{self as pb, OffsetSpec};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A topic (v2).
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({"name": "orders", "configs": {"retention.ms": "604800000"},
    "partitions": [{"partition": 0, "leader": 1, "replicas": [{"broker": 1, "leader": true, "in_sync": true}]}]}))]
pub struct TopicV2 {
    /// Topic name.
    pub name: String,
    /// Every setting, defaults included.
    pub configs: BTreeMap<String, String>,
    /// Partitions.
    pub partitions: Vec<PartitionV2>,
}

/// A partition (v2).
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct PartitionV2 {
    /// Partition number.
    pub partition: u32,
    /// Broker id of the leader.
    pub leader: u32,
    /// Replicas.
    pub replicas: Vec<ReplicaV2>,
}

/// A partition replica (v2).
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct ReplicaV2 {
    /// Broker id.
    pub broker: u32,
    /// Whether this replica leads.
    pub leader: bool,
    /// Whether this replica is in sync.
    pub in_sync: bool,
}

/// A partition's offsets (v2).
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct PartitionOffsetsV2 {
    /// The first offset still in the log.
    pub beginning_offset: u64,
    /// The high watermark: the offset the next record will get.
    pub end_offset: u64,
}

/// Converts a partition description.
pub(crate) fn partition_v2(p: &pb::PartitionDescription) -> PartitionV2 {
    PartitionV2 {
        partition: p.partition,
        leader: p.leader,
        replicas: p
            .replicas
            .iter()
            .map(|&b| ReplicaV2 {
                broker: b,
                leader: b == p.leader,
                in_sync: p.isr.contains(&b),
            })
            .collect(),
    }
}

fn topic_v2(t: pb::TopicDescription) -> TopicV2 {
    TopicV2 {
        partitions: t.partitions.iter().map(partition_v2).collect(),
        name: t.name,
        configs: t.configs.into_iter().collect(),
    }
}

/// Describes a topic, mapping "no such topic" to 40401 (also for names the broker would call
/// invalid: such a topic cannot exist).
pub(crate) async fn describe(state: &RestState, topic: &str) -> ApiResult<pb::TopicDescription> {
    state.client.describe_topic(topic).await.map_err(|e| {
        let api = ApiError::from_client(&e);
        if api.status == axum::http::StatusCode::NOT_FOUND
            || e.reason() == Some(pb::ErrorCode::InvalidTopicName)
        {
            ApiError::topic_not_found(topic)
        } else {
            api
        }
    })
}

/// Describes a partition of a topic (40401 / 40402 when missing).
pub(crate) async fn describe_partition(
    state: &RestState,
    topic: &str,
    partition: u32,
) -> ApiResult<(pb::TopicDescription, usize)> {
    let t = describe(state, topic).await?;
    let count = t.partitions.len() as u32;
    match t.partitions.iter().position(|p| p.partition == partition) {
        Some(i) => Ok((t, i)),
        None => Err(ApiError::partition_not_found(
            topic,
            partition.into(),
            count,
        )),
    }
}

/// Lists topic names (internal topics excluded).
#[utoipa::path(get, path = "/topics", tag = "topics (v2)",
    responses(
        (status = 200, description = "Topic names", body = Vec<String>, content_type = "application/vnd.kafka.v2+json",
            example = json!(["orders", "payments"])),
        (status = "5XX", description = "Brokers unavailable", body = ErrorBody),
    ))]
pub async fn list_topics(State(state): State<RestState>) -> ApiResult<V2Json<Vec<String>>> {
    let topics = state.client.list_topics(false).await?;
    let mut names: Vec<String> = topics.into_iter().map(|t| t.name).collect();
    names.sort();
    Ok(V2Json(names))
}

/// Describes a topic: configuration and partitions.
#[utoipa::path(get, path = "/topics/{topic}", tag = "topics (v2)",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicV2, content_type = "application/vnd.kafka.v2+json"),
        (status = 404, description = "Topic not found (40401)", body = ErrorBody),
    ))]
pub async fn get_topic(
    State(state): State<RestState>,
    ApiPath(topic): ApiPath<String>,
) -> ApiResult<V2Json<TopicV2>> {
    Ok(V2Json(topic_v2(describe(&state, &topic).await?)))
}

/// Lists a topic's partitions.
#[utoipa::path(get, path = "/topics/{topic}/partitions", tag = "topics (v2)",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "Partitions", body = Vec<PartitionV2>, content_type = "application/vnd.kafka.v2+json"),
        (status = 404, description = "Topic not found (40401)", body = ErrorBody),
    ))]
pub async fn list_partitions(
    State(state): State<RestState>,
    ApiPath(topic): ApiPath<String>,
) -> ApiResult<V2Json<Vec<PartitionV2>>> {
    let t = describe(&state, &topic).await?;
    Ok(V2Json(t.partitions.iter().map(partition_v2).collect()))
}

/// Describes one partition.
#[utoipa::path(get, path = "/topics/{topic}/partitions/{partition}", tag = "topics (v2)",
    params(("topic" = String, Path, description = "Topic name"),
           ("partition" = u32, Path, description = "Partition number")),
    responses(
        (status = 200, description = "The partition", body = PartitionV2, content_type = "application/vnd.kafka.v2+json"),
        (status = 400, description = "Partition is not a non-negative integer", body = ErrorBody),
        (status = 404, description = "Topic (40401) or partition (40402) not found", body = ErrorBody),
    ))]
pub async fn get_partition(
    State(state): State<RestState>,
    ApiPath((topic, partition)): ApiPath<(String, u32)>,
) -> ApiResult<V2Json<PartitionV2>> {
    let (t, i) = describe_partition(&state, &topic, partition).await?;
    Ok(V2Json(partition_v2(&t.partitions[i])))
}

/// A partition's first offset and high watermark.
#[utoipa::path(get, path = "/topics/{topic}/partitions/{partition}/offsets", tag = "topics (v2)",
    params(("topic" = String, Path, description = "Topic name"),
           ("partition" = u32, Path, description = "Partition number")),
    responses(
        (status = 200, description = "Offsets", body = PartitionOffsetsV2, content_type = "application/vnd.kafka.v2+json"),
        (status = 400, description = "Partition is not a non-negative integer", body = ErrorBody),
        (status = 404, description = "Topic (40401) or partition (40402) not found", body = ErrorBody),
    ))]
pub async fn get_partition_offsets(
    State(state): State<RestState>,
    ApiPath((topic, partition)): ApiPath<(String, u32)>,
) -> ApiResult<V2Json<PartitionOffsetsV2>> {
    describe_partition(&state, &topic, partition).await?;
    let one = |spec| {
        let c = state.client.clone();
        let topic = topic.clone();
        async move {
            c.list_offsets(&topic, vec![partition], spec, 0)
                .await
                .map_err(ApiError::from)?
                .first()
                .map(|o| o.offset)
                .ok_or_else(|| ApiError::internal("list_offsets answered without offsets"))
        }
    };
    let (beginning_offset, end_offset) =
        futures::try_join!(one(OffsetSpec::Earliest), one(OffsetSpec::Latest))?;
    Ok(V2Json(PartitionOffsetsV2 {
        beginning_offset,
        end_offset,
    }))
}
