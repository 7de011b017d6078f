//! v3 admin in the Confluent REST Proxy v3 shapes: `GET /v3/clusters`, one cluster, and its
//! topics (list, create, describe, delete), with a topic's configs and partitions.
//!
//! Resources carry `kind` and `metadata.self` (an absolute URL built from the request's `Host`
//! header) and link related collections with `{"related": url}`, as Confluent does. A
//! `cluster_id` other than the cluster's own is 404.

use crate::RestState;
use crate::error::{ApiError, ApiResult, ErrorBody, codes};
use crate::extract::{ApiJson, ApiPath};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cascade_client::proto as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `metadata` of a resource.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResourceMetadata {
    /// This resource's URL.
    #[serde(rename = "self")]
    pub self_url: String,
    /// Confluent resource name.
    pub resource_name: Option<String>,
}

/// `metadata` of a collection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListMetadata {
    /// This collection's URL.
    #[serde(rename = "self")]
    pub self_url: String,
    /// Next page (always null: one page).
    pub next: Option<String>,
}

/// A link to a related collection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Related {
    /// Its URL.
    pub related: String,
}

/// A cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterV3 {
    /// Always `KafkaCluster`.
    pub kind: String,
    /// Links.
    pub metadata: ResourceMetadata,
    /// The cluster id.
    pub cluster_id: String,
    /// The cluster's topics.
    pub topics: Related,
}

/// The clusters (always one).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterListV3 {
    /// Always `KafkaClusterList`.
    pub kind: String,
    /// Links.
    pub metadata: ListMetadata,
    /// The clusters.
    pub data: Vec<ClusterV3>,
}

/// A topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicV3 {
    /// Always `KafkaTopic`.
    pub kind: String,
    /// Links.
    pub metadata: ResourceMetadata,
    /// The cluster id.
    pub cluster_id: String,
    /// Topic name.
    pub topic_name: String,
    /// Internal topics (names starting with `__`) are Cascade's own.
    pub is_internal: bool,
    /// Replication factor.
    pub replication_factor: u32,
    /// Number of partitions.
    pub partitions_count: u32,
    /// The topic's partitions.
    pub partitions: Related,
    /// The topic's configuration.
    pub configs: Related,
    /// Always empty (no authorization yet).
    pub authorized_operations: Vec<String>,
}

/// The topics of a cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicListV3 {
    /// Always `KafkaTopicList`.
    pub kind: String,
    /// Links.
    pub metadata: ListMetadata,
    /// The topics.
    pub data: Vec<TopicV3>,
}

/// A configuration entry of a create request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigEntry {
    /// Kafka key, e.g. `retention.ms`.
    pub name: String,
    /// Value; null keeps the default.
    pub value: Option<String>,
}

/// A topic to create.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"topic_name": "orders", "partitions_count": 3, "replication_factor": 1,
    "configs": [{"name": "retention.ms", "value": "86400000"}]}))]
pub struct CreateTopicV3 {
    /// Topic name.
    pub topic_name: String,
    /// Number of partitions (default 1).
    #[serde(default)]
    pub partitions_count: Option<u32>,
    /// Replication factor (default 1).
    #[serde(default)]
    pub replication_factor: Option<u32>,
    /// Settings.
    #[serde(default)]
    pub configs: Vec<ConfigEntry>,
    /// Check everything, create nothing (answers 200 instead of 201).
    #[serde(default)]
    pub validate_only: bool,
}

/// One setting of a topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicConfigV3 {
    /// Always `KafkaTopicConfig`.
    pub kind: String,
    /// Links.
    pub metadata: ResourceMetadata,
    /// The cluster id.
    pub cluster_id: String,
    /// Topic name.
    pub topic_name: String,
    /// Kafka key.
    pub name: String,
    /// Value.
    pub value: Option<String>,
    /// Whether the value is the default.
    pub is_default: bool,
    /// Always false.
    pub is_read_only: bool,
    /// Always false.
    pub is_sensitive: bool,
    /// `DEFAULT_CONFIG` or `DYNAMIC_TOPIC_CONFIG`.
    pub source: String,
    /// Always empty.
    pub synonyms: Vec<String>,
}

/// The settings of a topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicConfigListV3 {
    /// Always `KafkaTopicConfigList`.
    pub kind: String,
    /// Links.
    pub metadata: ListMetadata,
    /// The settings.
    pub data: Vec<TopicConfigV3>,
}

/// A partition of a topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionV3 {
    /// Always `KafkaPartition`.
    pub kind: String,
    /// Links.
    pub metadata: ResourceMetadata,
    /// The cluster id.
    pub cluster_id: String,
    /// Topic name.
    pub topic_name: String,
    /// Partition number.
    pub partition_id: u32,
    /// Broker id of the leader (Cascade extension).
    pub leader_id: u32,
    /// Broker ids of the replicas (Cascade extension).
    pub replica_ids: Vec<u32>,
    /// Broker ids of the in-sync replicas (Cascade extension).
    pub isr_ids: Vec<u32>,
}

/// The partitions of a topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionListV3 {
    /// Always `KafkaPartitionList`.
    pub kind: String,
    /// Links.
    pub metadata: ListMetadata,
    /// The partitions.
    pub data: Vec<PartitionV3>,
}

/// `http://<Host>` of the request, for links.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_default()
}

/// The cluster's id, checking the one in the path (404 if different).
async fn check_cluster(state: &RestState, cluster_id: &str) -> ApiResult<String> {
    let id = state.client.describe_cluster().await?.cluster_id;
    if id != cluster_id {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("Cluster {cluster_id} cannot be found."),
        ));
    }
    Ok(id)
}

fn list_meta(url: String) -> ListMetadata {
    ListMetadata {
        self_url: url,
        next: None,
    }
}

fn topic_v3(base: &str, cluster: &str, t: &pb::TopicDescription) -> TopicV3 {
    let url = format!("{base}/v3/clusters/{cluster}/topics/{}", t.name);
    TopicV3 {
        kind: "KafkaTopic".into(),
        metadata: ResourceMetadata {
            resource_name: Some(format!("crn:///kafka={cluster}/topic={}", t.name)),
            self_url: url.clone(),
        },
        cluster_id: cluster.to_string(),
        topic_name: t.name.clone(),
        is_internal: t.internal,
        replication_factor: t.replication_factor,
        partitions_count: t.partitions.len() as u32,
        partitions: Related {
            related: format!("{url}/partitions"),
        },
        configs: Related {
            related: format!("{url}/configs"),
        },
        authorized_operations: vec![],
    }
}

/// Lists the clusters: the one this gateway serves.
#[utoipa::path(get, path = "/v3/clusters", tag = "admin (v3)",
    responses(
        (status = 200, description = "The cluster", body = ClusterListV3),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn list_clusters(
    State(state): State<RestState>,
    headers: HeaderMap,
) -> ApiResult<Json<ClusterListV3>> {
    let id = state.client.describe_cluster().await?.cluster_id;
    let base = base_url(&headers);
    Ok(Json(ClusterListV3 {
        kind: "KafkaClusterList".into(),
        metadata: list_meta(format!("{base}/v3/clusters")),
        data: vec![cluster_v3(&base, &id)],
    }))
}

fn cluster_v3(base: &str, id: &str) -> ClusterV3 {
    ClusterV3 {
        kind: "KafkaCluster".into(),
        metadata: ResourceMetadata {
            self_url: format!("{base}/v3/clusters/{id}"),
            resource_name: Some(format!("crn:///kafka={id}")),
        },
        cluster_id: id.to_string(),
        topics: Related {
            related: format!("{base}/v3/clusters/{id}/topics"),
        },
    }
}

/// Describes the cluster.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}", tag = "admin (v3)",
    params(("cluster_id" = String, Path, description = "Cluster id")),
    responses(
        (status = 200, description = "The cluster", body = ClusterV3),
        (status = 404, description = "Unknown cluster id (404)", body = ErrorBody),
    ))]
pub async fn get_cluster(
    State(state): State<RestState>,
    ApiPath(cluster_id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<ClusterV3>> {
    let id = check_cluster(&state, &cluster_id).await?;
    Ok(Json(cluster_v3(&base_url(&headers), &id)))
}

/// Lists the cluster's topics (internal ones included, flagged `is_internal`).
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics", tag = "admin (v3)",
    params(("cluster_id" = String, Path, description = "Cluster id")),
    responses(
        (status = 200, description = "Topics", body = TopicListV3),
        (status = 404, description = "Unknown cluster id (404)", body = ErrorBody),
    ))]
pub async fn list_topics(
    State(state): State<RestState>,
    ApiPath(cluster_id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Json<TopicListV3>> {
    let id = check_cluster(&state, &cluster_id).await?;
    let base = base_url(&headers);
    let mut topics = state.client.list_topics(true).await?;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(TopicListV3 {
        kind: "KafkaTopicList".into(),
        metadata: list_meta(format!("{base}/v3/clusters/{id}/topics")),
        data: topics.iter().map(|t| topic_v3(&base, &id, t)).collect(),
    }))
}

/// Creates a topic (201), or only validates it with `validate_only` (200).
#[utoipa::path(post, path = "/v3/clusters/{cluster_id}/topics", tag = "admin (v3)",
    params(("cluster_id" = String, Path, description = "Cluster id")),
    request_body(content = CreateTopicV3, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = TopicV3),
        (status = 200, description = "Valid (validate_only: nothing created)", body = TopicV3),
        (status = 400, description = "Malformed body (400); bad name, partitions, replication factor or config, or the topic exists (40002)", body = ErrorBody),
        (status = 404, description = "Unknown cluster id (404)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
    ))]
pub async fn create_topic(
    State(state): State<RestState>,
    ApiPath(cluster_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateTopicV3>,
) -> ApiResult<Response> {
    let id = check_cluster(&state, &cluster_id).await?;
    let configs: BTreeMap<String, String> = req
        .configs
        .into_iter()
        .filter_map(|c| c.value.map(|v| (c.name, v)))
        .collect();
    let t = state
        .client
        .admin()
        .create_topic(pb::CreateTopicRequest {
            name: req.topic_name,
            partitions: req.partitions_count.unwrap_or(1),
            replication_factor: req.replication_factor.unwrap_or(1),
            configs: configs.into_iter().collect(),
            validate_only: req.validate_only,
        })
        .await
        .map_err(|s| ApiError::from(cascade_client::ClientError::from(s)))?
        .into_inner();
    let status = if req.validate_only {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(topic_v3(&base_url(&headers), &id, &t))).into_response())
}

/// Describes a topic.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics/{topic_name}", tag = "admin (v3)",
    params(("cluster_id" = String, Path, description = "Cluster id"),
        ("topic_name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicV3),
        (status = 404, description = "Unknown cluster (404) or topic (40401)", body = ErrorBody),
    ))]
pub async fn get_topic(
    State(state): State<RestState>,
    ApiPath((cluster_id, topic)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<TopicV3>> {
    let id = check_cluster(&state, &cluster_id).await?;
    let t = crate::topics::describe(&state, &topic).await?;
    Ok(Json(topic_v3(&base_url(&headers), &id, &t)))
}

/// Deletes a topic and its data (204).
#[utoipa::path(delete, path = "/v3/clusters/{cluster_id}/topics/{topic_name}", tag = "admin (v3)",
    params(("cluster_id" = String, Path, description = "Cluster id"),
        ("topic_name" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The topic cannot be deleted (internal) (40002)", body = ErrorBody),
        (status = 404, description = "Unknown cluster (404) or topic (40401)", body = ErrorBody),
    ))]
pub async fn delete_topic(
    State(state): State<RestState>,
    ApiPath((cluster_id, topic)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    check_cluster(&state, &cluster_id).await?;
    state.client.delete_topic(&topic).await.map_err(|e| {
        if e.reason() == Some(pb::ErrorCode::InvalidTopicName) {
            ApiError::topic_not_found(&topic)
        } else {
            e.into()
        }
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a topic's settings, defaults included.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics/{topic_name}/configs", tag = "admin (v3)",
    params(("cluster_id" = String, Path, description = "Cluster id"),
        ("topic_name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "Settings", body = TopicConfigListV3),
        (status = 404, description = "Unknown cluster (404) or topic (40401)", body = ErrorBody),
    ))]
pub async fn list_topic_configs(
    State(state): State<RestState>,
    ApiPath((cluster_id, topic)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<TopicConfigListV3>> {
    let id = check_cluster(&state, &cluster_id).await?;
    let t = crate::topics::describe(&state, &topic).await?;
    let base = base_url(&headers);
    let url = format!("{base}/v3/clusters/{id}/topics/{topic}/configs");
    let defaults = cascade_types::TopicConfig::default().to_map();
    let configs: BTreeMap<String, String> = t.configs.into_iter().collect();
    let data = configs
        .into_iter()
        .map(|(name, value)| {
            let is_default = defaults.get(&name) == Some(&value);
            TopicConfigV3 {
                kind: "KafkaTopicConfig".into(),
                metadata: ResourceMetadata {
                    self_url: format!("{url}/{name}"),
                    resource_name: Some(format!("crn:///kafka={id}/topic={topic}/config={name}")),
                },
                cluster_id: id.clone(),
                topic_name: topic.clone(),
                source: if is_default {
                    "DEFAULT_CONFIG"
                } else {
                    "DYNAMIC_TOPIC_CONFIG"
                }
                .into(),
                name,
                value: Some(value),
                is_default,
                is_read_only: false,
                is_sensitive: false,
                synonyms: vec![],
            }
        })
        .collect();
    Ok(Json(TopicConfigListV3 {
        kind: "KafkaTopicConfigList".into(),
        metadata: list_meta(url),
        data,
    }))
}

/// Lists a topic's partitions.
#[utoipa::path(get, path = "/v3/clusters/{cluster_id}/topics/{topic_name}/partitions", tag = "admin (v3)",
    params(("cluster_id" = String, Path, description = "Cluster id"),
        ("topic_name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "Partitions", body = PartitionListV3),
        (status = 404, description = "Unknown cluster (404) or topic (40401)", body = ErrorBody),
    ))]
pub async fn list_topic_partitions(
    State(state): State<RestState>,
    ApiPath((cluster_id, topic)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<PartitionListV3>> {
    let id = check_cluster(&state, &cluster_id).await?;
    let t = crate::topics::describe(&state, &topic).await?;
    let base = base_url(&headers);
    let url = format!("{base}/v3/clusters/{id}/topics/{topic}/partitions");
    let data = t
        .partitions
        .iter()
        .map(|p| PartitionV3 {
            kind: "KafkaPartition".into(),
            metadata: ResourceMetadata {
                self_url: format!("{url}/{}", p.partition),
                resource_name: Some(format!(
                    "crn:///kafka={id}/topic={topic}/partition={}",
                    p.partition
                )),
            },
            cluster_id: id.clone(),
            topic_name: topic.clone(),
            partition_id: p.partition,
            leader_id: p.leader,
            replica_ids: p.replicas.clone(),
            isr_ids: p.isr.clone(),
        })
        .collect();
    Ok(Json(PartitionListV3 {
        kind: "KafkaPartitionList".into(),
        metadata: list_meta(url),
        data,
    }))
}
