//! v2 consumer instances, in the Confluent REST Proxy's paths and shapes:
//! `POST /consumers/{group}` creates an instance, and
//! `/consumers/{group}/instances/{name}/...` subscribes it, reads records, commits, seeks and
//! deletes it.
//!
//! The gateway keeps nothing: every call is a call of the brokers' `Consumers` service
//! (`cascade_client::Client::instance_*`), which keeps the instance's settings, subscription,
//! group membership and positions. So an instance created through one gateway replica (or a
//! node's own listener) is used through any other, and every call on an instance is its
//! heartbeat (an instance left idle past its timeout is removed by the broker: 40403 after).
//!
//! What the gateway needs to read records back is kept on the broker too, in the instance's
//! `format` tag ([`Settings`]): the embedded format (`binary` or `json`) and the
//! `consumer.request.timeout.ms` given at creation.
//!
//! Semantics that follow Confluent, and the few differences:
//! - `POST .../offsets` with explicit offsets commits `offset + 1` for each (the offset named is
//!   the last record processed, as in Confluent); without offsets it commits every position
//!   (the next record to read). `GET .../offsets` answers the committed offsets as stored: the
//!   next offset to read.
//! - Reading with an `Accept` of the other embedded format is 406 with 40601; an `Accept`
//!   without an embedded format answers in the instance's format.
//! - `topic_pattern` subscriptions and manual assignment (`POST .../assignments`) are not
//!   supported (422).
//! - `consumer.instance.timeout.ms` in the create body (a Cascade extension, named after
//!   Confluent's proxy-wide setting) sets this instance's idle timeout (1000 to 300000 ms,
//!   default 300000).

use crate::RestState;
use crate::error::{ApiError, ApiResult, ErrorBody, codes};
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::format::{EmbeddedFormat, RecordJson, V2Json, accept_format};
use crate::records::{DEFAULT_MAX_BYTES, MAX_MAX_BYTES, MAX_TIMEOUT_MS};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cascade_client::proto::{self as pb, ErrorCode};
use cascade_client::{ClientError, ConsumedRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::{IntoParams, ToSchema};

/// Wait of a records request without `timeout` when the instance was created without
/// `consumer.request.timeout.ms` (Confluent's default).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 1_000;
/// Shortest idle timeout of an instance (the broker's minimum session timeout).
pub const MIN_INSTANCE_TIMEOUT_MS: u64 = 1_000;
/// Longest (and default) idle timeout of an instance.
pub const MAX_INSTANCE_TIMEOUT_MS: u64 = 300_000;

/// The instance settings the gateway keeps in the broker's opaque `format` tag:
/// `binary` or `json`, then `;request.timeout.ms=N` when the instance was created with
/// `consumer.request.timeout.ms`. An empty tag (an instance created over gRPC) is binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Embedded format of the records.
    pub format: EmbeddedFormat,
    /// Wait of a records request without `timeout`.
    pub request_timeout_ms: Option<u64>,
}

const TIMEOUT_PARAM: &str = "request.timeout.ms=";

impl Settings {
    /// The tag stored on the broker.
    pub fn tag(&self) -> String {
        let format = match self.format {
            EmbeddedFormat::Binary => "binary",
            EmbeddedFormat::Json => "json",
        };
        match self.request_timeout_ms {
            Some(ms) => format!("{format};{TIMEOUT_PARAM}{ms}"),
            None => format.to_string(),
        }
    }

    /// Reads a tag; `None` for a format this gateway cannot serve.
    pub fn parse(tag: &str) -> Option<Self> {
        let mut parts = tag.split(';');
        let format = match parts.next().unwrap_or("").trim() {
            "" | "binary" => EmbeddedFormat::Binary,
            "json" => EmbeddedFormat::Json,
            _ => return None,
        };
        let request_timeout_ms = parts
            .filter_map(|p| p.trim().strip_prefix(TIMEOUT_PARAM))
            .find_map(|v| v.parse().ok());
        Some(Self {
            format,
            request_timeout_ms,
        })
    }
}

fn flag_schema() -> OneOfBuilder {
    OneOfBuilder::new()
        .description(Some(
            "`\"true\"` (default) or `\"false\"` (a JSON boolean works too): commit positions before each read, when partitions are given up and on delete. `enable.auto.commit` is accepted as another spelling.",
        ))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["true", "false"])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

/// A number of ms in `min..=max`, as a JSON integer or a string of digits.
fn millis_schema(description: &str, min: u64, max: Option<u64>) -> OneOfBuilder {
    OneOfBuilder::new()
        .description(Some(description))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(min))
                .maximum(max),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,15}$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

fn request_timeout_schema() -> OneOfBuilder {
    millis_schema(
        "How long a records request without `timeout` waits for records, in ms (default 1000; above 30000 means 30000). An integer or a string of digits.",
        0,
        None,
    )
}

fn instance_timeout_schema() -> OneOfBuilder {
    millis_schema(
        "Cascade extension: this instance's idle timeout, in ms (1000 to 300000, default 300000). An instance not called for that long is removed. An integer or a string of digits.",
        MIN_INSTANCE_TIMEOUT_MS,
        Some(MAX_INSTANCE_TIMEOUT_MS),
    )
}

fn fetch_min_bytes_schema() -> OneOfBuilder {
    OneOfBuilder::new()
        .description(Some(
            "Accepted for compatibility and ignored: a read answers as soon as any record is there. An integer or a string of one.",
        ))
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^-?[0-9]{1,15}$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

/// Where partitions without a committed offset start (documentation type of
/// `auto.offset.reset`).
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum OffsetReset {
    /// The log start.
    Earliest,
    /// The high watermark: only records written from now on (the default).
    Latest,
}

/// A consumer instance to create (every field optional; an empty body creates a binary
/// instance with a generated name).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"name": "my_consumer", "format": "json",
    "auto.offset.reset": "earliest", "auto.commit.enable": "false"}))]
pub struct CreateConsumerRequest {
    /// Instance name, unique in the group (1 to 255 characters, no control characters or `/`);
    /// generated when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Confluent's older spelling of `name`; wins over it.
    #[serde(default)]
    pub id: Option<String>,
    /// Embedded format of the records read: `binary` (default, base64) or `json`.
    #[serde(default)]
    #[schema(value_type = Option<EmbeddedFormat>)]
    pub format: Option<String>,
    /// `earliest` or `latest` (default; `smallest` and `largest` are accepted too): where
    /// partitions without a committed offset start.
    #[serde(default, rename = "auto.offset.reset")]
    #[schema(value_type = Option<OffsetReset>)]
    pub auto_offset_reset: Option<String>,
    /// `"true"` (default) or `"false"` (a JSON boolean works too): commit positions before
    /// each read, when partitions are given up and on delete. `enable.auto.commit` is accepted
    /// as another spelling.
    #[serde(default, rename = "auto.commit.enable", alias = "enable.auto.commit")]
    #[schema(schema_with = flag_schema)]
    pub auto_commit_enable: Option<Value>,
    /// How long a records request without `timeout` waits for records, in ms (default 1000,
    /// at most 30000); an integer or a string of digits.
    #[serde(default, rename = "consumer.request.timeout.ms")]
    #[schema(schema_with = request_timeout_schema)]
    pub request_timeout_ms: Option<Value>,
    /// Cascade extension: this instance's idle timeout, in ms (1000 to 300000, default
    /// 300000). An instance not called for that long is removed.
    #[serde(default, rename = "consumer.instance.timeout.ms")]
    #[schema(schema_with = instance_timeout_schema)]
    pub instance_timeout_ms: Option<Value>,
    /// Accepted for compatibility and ignored: a read answers as soon as any record is there.
    #[serde(default, rename = "fetch.min.bytes")]
    #[schema(schema_with = fetch_min_bytes_schema)]
    pub fetch_min_bytes: Option<Value>,
}

/// A created instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"instance_id": "my_consumer",
    "base_uri": "http://localhost:8082/consumers/my_group/instances/my_consumer"}))]
pub struct CreateConsumerResponse {
    /// The instance's name.
    pub instance_id: String,
    /// The instance's URL (from the request's `Host`), to which `/subscription`, `/records`...
    /// are appended.
    pub base_uri: String,
}

/// A subscription.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"topics": ["orders", "payments"]}))]
pub struct SubscriptionRequest {
    /// The topics, at least one. Replaces the current subscription.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub topics: Option<Vec<String>>,
    /// Not supported (422): list the topics instead.
    #[serde(default)]
    pub topic_pattern: Option<String>,
}

/// The topics an instance is subscribed to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionResponse {
    /// Topics, sorted.
    pub topics: Vec<String>,
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct TopicPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
}

/// The partitions assigned to an instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssignmentResponse {
    /// Partitions, sorted.
    pub partitions: Vec<TopicPartition>,
}

/// Partitions to read committed offsets of, or to seek to their beginning or end.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"partitions": [{"topic": "orders", "partition": 0}]}))]
pub struct PartitionsRequest {
    /// The partitions.
    pub partitions: Vec<TopicPartition>,
}

/// An offset to commit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The offset of the last record processed: `offset + 1` is committed.
    pub offset: u64,
    /// Free text stored with the commit.
    #[serde(default)]
    pub metadata: Option<String>,
}

/// Offsets to commit; none (or no body) commits every position.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 41}]}))]
pub struct CommitRequest {
    /// The offsets; absent or empty: every position of the instance.
    #[serde(default)]
    pub offsets: Option<Vec<CommitOffset>>,
}

/// A committed offset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommittedOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The committed offset: the next record the group reads.
    pub offset: u64,
    /// The metadata committed with it.
    pub metadata: String,
}

/// The committed offsets of partitions (those never committed are left out).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommittedOffsetsResponse {
    /// Offsets, sorted by topic and partition.
    pub offsets: Vec<CommittedOffset>,
}

/// A position to seek to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeekOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
}

/// Positions to seek to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"offsets": [{"topic": "orders", "partition": 0, "offset": 10}]}))]
pub struct SeekRequest {
    /// The positions, each of a partition assigned to the instance.
    pub offsets: Vec<SeekOffset>,
}

/// Query of a records request.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordsParams {
    /// Wait up to this many ms for records when there are none yet (default: the instance's
    /// `consumer.request.timeout.ms`, else 1000; at most 30000).
    pub timeout: Option<u64>,
    /// Byte budget (default 1 MiB, at most 16 MiB); at least one whole batch is returned.
    pub max_bytes: Option<u64>,
}

fn invalid_config(message: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable(
        codes::INVALID_CONSUMER_CONFIG,
        format!("Invalid consumer configuration: {message}"),
    )
}

/// Reads a number of ms given as a JSON integer or a string of digits.
fn millis(v: &Value, field: &str) -> ApiResult<u64> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| {
        invalid_config(format!(
            "{field} must be a non-negative integer number of milliseconds, got {v}"
        ))
    })
}

/// What a create request asks for, validated.
fn validate_create(
    group: &str,
    req: CreateConsumerRequest,
) -> ApiResult<pb::CreateConsumerRequest> {
    let format = match req.format.as_deref().map(str::trim) {
        None | Some("binary") => EmbeddedFormat::Binary,
        Some("json") => EmbeddedFormat::Json,
        Some(f @ ("avro" | "jsonschema" | "protobuf")) => {
            return Err(invalid_config(format!(
                "format {f:?} needs a schema registry, which Cascade does not have: use binary or json"
            )));
        }
        Some(other) => {
            return Err(invalid_config(format!(
                "format must be binary or json, not {other:?}"
            )));
        }
    };
    let reset = match req.auto_offset_reset.as_deref().map(str::trim) {
        None | Some("latest" | "largest") => "latest",
        Some("earliest" | "smallest") => "earliest",
        Some(other) => {
            return Err(invalid_config(format!(
                "auto.offset.reset must be earliest or latest, not {other:?}"
            )));
        }
    };
    let auto_commit = match &req.auto_commit_enable {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => false,
        Some(other) => {
            return Err(invalid_config(format!(
                "auto.commit.enable must be \"true\" or \"false\", not {other}"
            )));
        }
    };
    let request_timeout_ms = match &req.request_timeout_ms {
        None | Some(Value::Null) => None,
        Some(v) => Some(millis(v, "consumer.request.timeout.ms")?.min(MAX_TIMEOUT_MS)),
    };
    let session_timeout_ms = match &req.instance_timeout_ms {
        None | Some(Value::Null) => 0,
        Some(v) => {
            let ms = millis(v, "consumer.instance.timeout.ms")?;
            if !(MIN_INSTANCE_TIMEOUT_MS..=MAX_INSTANCE_TIMEOUT_MS).contains(&ms) {
                return Err(invalid_config(format!(
                    "consumer.instance.timeout.ms must be between {MIN_INSTANCE_TIMEOUT_MS} and {MAX_INSTANCE_TIMEOUT_MS}, not {ms}"
                )));
            }
            ms as u32
        }
    };
    match &req.fetch_min_bytes {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {}
        Some(other) => {
            return Err(invalid_config(format!(
                "fetch.min.bytes must be an integer, not {other}"
            )));
        }
    }
    let name = req.id.or(req.name).unwrap_or_default();
    if req_name_is_blank(&name) {
        return Err(invalid_config("name cannot be blank"));
    }
    if name == "." || name == ".." {
        return Err(invalid_config(format!(
            "name cannot be {name:?}: it cannot be addressed in a URL"
        )));
    }
    Ok(pb::CreateConsumerRequest {
        group_id: group.to_string(),
        name,
        format: Settings {
            format,
            request_timeout_ms,
        }
        .tag(),
        auto_offset_reset: reset.into(),
        auto_commit,
        session_timeout_ms,
    })
}

/// A given name that is all whitespace (an empty name asks for a generated one).
fn req_name_is_blank(name: &str) -> bool {
    !name.is_empty() && name.trim().is_empty()
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A broker failure on an instance call, with Confluent's wording for its consumer codes.
fn instance_error(e: ClientError) -> ApiError {
    let mut a = ApiError::from_client(&e);
    match e.reason() {
        Some(ErrorCode::ConsumerInstanceExists) => {
            a.message = format!(
                "Consumer instance with the specified name already exists: {}",
                a.message
            );
        }
        Some(ErrorCode::UnknownConsumerInstance) => {
            a.message = format!("Consumer instance not found: {}", a.message);
        }
        Some(ErrorCode::PartitionNotAssigned) => {
            a.message = format!("Illegal state: {}", a.message);
        }
        Some(ErrorCode::InvalidTopicName) => {
            a = ApiError::new(StatusCode::NOT_FOUND, codes::TOPIC_NOT_FOUND, a.message);
        }
        _ => {}
    }
    a
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Creates a consumer instance in a group. The group is joined on the first subscription.
#[utoipa::path(post, path = "/consumers/{group}", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group")),
    request_body(description = "Settings (optional)", content(
        (Option<CreateConsumerRequest> = "application/vnd.kafka.v2+json"),
        (Option<CreateConsumerRequest> = "application/json"))),
    responses(
        (status = 200, description = "Created", body = CreateConsumerResponse, content_type = "application/vnd.kafka.v2+json"),
        (status = 400, description = "Malformed JSON (400); bad group id or instance name (40002)", body = ErrorBody),
        (status = 409, description = "An instance with that name exists in the group (40902)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "Invalid setting: format, auto.offset.reset, auto.commit.enable, a timeout (42204)", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn create_consumer(
    State(state): State<RestState>,
    ApiPath(group): ApiPath<String>,
    headers: HeaderMap,
    OptionalJson(req): OptionalJson<CreateConsumerRequest>,
) -> ApiResult<V2Json<CreateConsumerResponse>> {
    let req = validate_create(&group, req.unwrap_or_default())?;
    let inst = state
        .client
        .instance_create(req)
        .await
        .map_err(instance_error)?;
    let base_uri = format!(
        "{}/consumers/{}/instances/{}",
        crate::v3::base_url(&headers),
        encode_segment(&group),
        encode_segment(&inst.name)
    );
    Ok(V2Json(CreateConsumerResponse {
        instance_id: inst.name,
        base_uri,
    }))
}

/// Deletes an instance: commits its positions (with auto-commit) and leaves the group.
#[utoipa::path(delete, path = "/consumers/{group}/instances/{name}", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn delete_consumer(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    state
        .client
        .instance_delete(&group, &name)
        .await
        .map_err(instance_error)?;
    Ok(no_content())
}

/// Subscribes an instance to topics, replacing its subscription.
#[utoipa::path(post, path = "/consumers/{group}/instances/{name}/subscription", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    request_body(content(
        (SubscriptionRequest = "application/vnd.kafka.v2+json"),
        (SubscriptionRequest = "application/json"))),
    responses(
        (status = 204, description = "Subscribed"),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Consumer instance (40403) or topic (40401) not found", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "No topics, or a topic_pattern (not supported)", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn subscribe(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SubscriptionRequest>,
) -> ApiResult<Response> {
    if req.topic_pattern.is_some() {
        return Err(ApiError::unprocessable(
            codes::UNPROCESSABLE,
            "topic_pattern subscriptions are not supported: list the topics in \"topics\"",
        ));
    }
    let topics = req.topics.unwrap_or_default();
    if topics.is_empty() {
        return Err(ApiError::unprocessable(
            codes::UNPROCESSABLE,
            "topics must name at least one topic",
        ));
    }
    state
        .client
        .instance_subscribe(&group, &name, topics)
        .await
        .map_err(instance_error)?;
    Ok(no_content())
}

/// The topics an instance is subscribed to.
#[utoipa::path(get, path = "/consumers/{group}/instances/{name}/subscription", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionResponse, content_type = "application/vnd.kafka.v2+json"),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn subscription(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
) -> ApiResult<V2Json<SubscriptionResponse>> {
    let inst = state
        .client
        .instance_get(&group, &name)
        .await
        .map_err(instance_error)?;
    Ok(V2Json(SubscriptionResponse {
        topics: inst.topics,
    }))
}

/// Drops an instance's subscription (it leaves the group and keeps existing).
#[utoipa::path(delete, path = "/consumers/{group}/instances/{name}/subscription", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    responses(
        (status = 204, description = "Unsubscribed"),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn unsubscribe(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    state
        .client
        .instance_unsubscribe(&group, &name)
        .await
        .map_err(instance_error)?;
    Ok(no_content())
}

fn flatten(assignment: &[pb::TopicPartitions]) -> Vec<TopicPartition> {
    let mut out: Vec<TopicPartition> = assignment
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|&partition| TopicPartition {
                topic: t.topic.clone(),
                partition,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn grouped(partitions: &[TopicPartition]) -> Vec<pb::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            partitions.dedup();
            pb::TopicPartitions {
                topic: topic.to_string(),
                partitions,
            }
        })
        .collect()
}

/// The partitions assigned to an instance by its group.
#[utoipa::path(get, path = "/consumers/{group}/instances/{name}/assignments", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, description = "The assignment", body = AssignmentResponse, content_type = "application/vnd.kafka.v2+json"),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn assignments(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
) -> ApiResult<V2Json<AssignmentResponse>> {
    let inst = state
        .client
        .instance_get(&group, &name)
        .await
        .map_err(instance_error)?;
    Ok(V2Json(AssignmentResponse {
        partitions: flatten(&inst.assignment),
    }))
}

/// Manual assignment: not supported (422); subscribe instead.
#[utoipa::path(post, path = "/consumers/{group}/instances/{name}/assignments", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    responses(
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 422, description = "Manual assignment is not supported", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn assign(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    state
        .client
        .instance_get(&group, &name)
        .await
        .map_err(instance_error)?;
    Err(ApiError::unprocessable(
        codes::UNPROCESSABLE,
        "manual partition assignment is not supported: subscribe to topics and let the group assign partitions",
    ))
}

fn format_mismatch(instance: EmbeddedFormat) -> ApiError {
    ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        codes::FORMAT_MISMATCH,
        format!(
            "The requested embedded data format does not match the deserializer for this consumer instance: it reads {}, so Accept {} (or a type without an embedded format)",
            match instance {
                EmbeddedFormat::Binary => "binary",
                EmbeddedFormat::Json => "json",
            },
            instance.media_type()
        ),
    )
}

/// Moves the positions of the partitions of `records` back to their first record, so that
/// records a failed answer did not deliver are read again (best effort: a partition given up
/// meanwhile starts at its committed offset with its new owner anyway).
async fn rewind(state: &RestState, group: &str, name: &str, records: &[ConsumedRecord]) {
    let mut first: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for r in records {
        first.entry((&r.topic, r.partition)).or_insert(r.offset);
    }
    let offsets = first
        .into_iter()
        .map(|((topic, partition), offset)| pb::PartitionPosition {
            topic: topic.to_string(),
            partition,
            offset,
        })
        .collect();
    if let Err(e) = state
        .client
        .instance_seek(group, name, offsets, vec![], vec![])
        .await
    {
        tracing::warn!(group, name, error = %e, "could not rewind after a failed read");
    }
}

/// Reads records from the instance's assigned partitions at its positions, which then
/// advance (waiting up to `timeout` ms when there are none yet). Keys and values are embedded
/// in the instance's format.
#[utoipa::path(get, path = "/consumers/{group}/instances/{name}/records", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name"),
        RecordsParams),
    responses(
        (status = 200, description = "Records (empty when none arrived in time)", content(
            (Vec<RecordJson> = "application/vnd.kafka.binary.v2+json"),
            (Vec<RecordJson> = "application/vnd.kafka.json.v2+json"))),
        (status = 400, description = "Bad timeout or max_bytes", body = ErrorBody),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 406, description = "Accept names the other embedded format, or a stored key or value is not JSON for a json instance (40601); Accept names no servable type (406)", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn records(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RecordsParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let accept = accept_format(&headers)?;
    let inst = state
        .client
        .instance_get(&group, &name)
        .await
        .map_err(instance_error)?;
    let settings = Settings::parse(&inst.format).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            codes::FORMAT_MISMATCH,
            format!(
                "this consumer instance was created with format {:?}, which the REST API cannot read",
                inst.format
            ),
        )
    })?;
    if accept.is_some_and(|f| f != settings.format) {
        return Err(format_mismatch(settings.format));
    }
    let wait = q
        .timeout
        .or(settings.request_timeout_ms)
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS)
        .min(MAX_TIMEOUT_MS);
    let max_bytes = q.max_bytes.map_or(DEFAULT_MAX_BYTES, |b| {
        b.clamp(1, u64::from(MAX_MAX_BYTES)) as u32
    });
    let recs = state
        .client
        .instance_poll(&group, &name, max_bytes, wait as u32)
        .await
        .map_err(instance_error)?;
    let mut out = Vec::with_capacity(recs.len());
    for r in &recs {
        match RecordJson::from_record(r, settings.format) {
            Ok(j) => out.push(j),
            Err(mut e) => {
                rewind(&state, &group, &name, &recs).await;
                e.message = format!(
                    "the key or value of {}/{} at offset {} is not JSON, so this json consumer instance cannot return it; nothing was consumed: seek past it (POST .../positions) or read it with a binary consumer instance",
                    r.topic, r.partition, r.offset
                );
                return Err(e);
            }
        }
    }
    let body = serde_json::to_vec(&out).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, settings.format.media_type())], body).into_response())
}

/// Commits offsets: the given ones (`offset + 1` each: the offset named is the last record
/// processed), or with no body or no `offsets` every position of the instance (the next
/// record it reads). Answers Confluent's empty list.
#[utoipa::path(post, path = "/consumers/{group}/instances/{name}/offsets", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    request_body(description = "Offsets to commit (optional)", content(
        (Option<CommitRequest> = "application/vnd.kafka.v2+json"),
        (Option<CommitRequest> = "application/json"))),
    responses(
        (status = 200, description = "Committed (an empty list, as Confluent answers)", body = Vec<CommittedOffset>, content_type = "application/vnd.kafka.v2+json", example = json!([])),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 409, description = "A partition not assigned to the instance, or no subscription (40903)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "An offset too large to commit", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn commit_offsets(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
    OptionalJson(req): OptionalJson<CommitRequest>,
) -> ApiResult<V2Json<Vec<CommittedOffset>>> {
    let offsets = req
        .and_then(|r| r.offsets)
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let next = o.offset.checked_add(1).ok_or_else(|| {
                ApiError::unprocessable(
                    codes::UNPROCESSABLE,
                    format!(
                        "{}/{}: offset {} is too large to commit",
                        o.topic, o.partition, o.offset
                    ),
                )
            })?;
            Ok(pb::OffsetCommit {
                topic: o.topic,
                partition: o.partition,
                offset: next,
                metadata: o.metadata.unwrap_or_default(),
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let explicit = !offsets.is_empty();
    state
        .client
        .instance_commit(&group, &name, offsets)
        .await
        .map_err(|e| {
            if explicit && e.reason() == Some(ErrorCode::InvalidRequest) {
                // The broker's one refusal of a well-formed commit: no subscription.
                ApiError::new(
                    StatusCode::CONFLICT,
                    codes::ILLEGAL_STATE,
                    format!("Illegal state: {e}"),
                )
            } else {
                instance_error(e)
            }
        })?;
    Ok(V2Json(Vec::new()))
}

/// The group's committed offsets of the given partitions (with no body: of the partitions
/// assigned to the instance). Partitions never committed are left out.
#[utoipa::path(get, path = "/consumers/{group}/instances/{name}/offsets", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    request_body(description = "Partitions (optional; default: the instance's assignment)", content(
        (Option<PartitionsRequest> = "application/vnd.kafka.v2+json"),
        (Option<PartitionsRequest> = "application/json"))),
    responses(
        (status = 200, description = "Committed offsets", body = CommittedOffsetsResponse, content_type = "application/vnd.kafka.v2+json"),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn committed_offsets(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
    OptionalJson(req): OptionalJson<PartitionsRequest>,
) -> ApiResult<V2Json<CommittedOffsetsResponse>> {
    let inst = state
        .client
        .instance_get(&group, &name)
        .await
        .map_err(instance_error)?;
    let partitions = match req {
        Some(r) => r.partitions,
        None => flatten(&inst.assignment),
    };
    // An empty filter would mean "every partition of the group".
    if partitions.is_empty() {
        return Ok(V2Json(CommittedOffsetsResponse { offsets: vec![] }));
    }
    let committed = state
        .client
        .fetch_offsets(&group, grouped(&partitions))
        .await
        .map_err(instance_error)?;
    let mut offsets: Vec<CommittedOffset> = committed
        .into_iter()
        .map(|c| CommittedOffset {
            topic: c.topic,
            partition: c.partition,
            offset: c.offset,
            metadata: c.metadata,
        })
        .collect();
    offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(V2Json(CommittedOffsetsResponse { offsets }))
}

async fn seek(
    state: &RestState,
    group: &str,
    name: &str,
    offsets: Vec<pb::PartitionPosition>,
    beginning: Vec<pb::TopicPartitions>,
    end: Vec<pb::TopicPartitions>,
) -> ApiResult<Response> {
    state
        .client
        .instance_seek(group, name, offsets, beginning, end)
        .await
        .map_err(instance_error)?;
    Ok(no_content())
}

/// Sets the next offset to read of assigned partitions.
#[utoipa::path(post, path = "/consumers/{group}/instances/{name}/positions", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    request_body(content(
        (SeekRequest = "application/vnd.kafka.v2+json"),
        (SeekRequest = "application/json"))),
    responses(
        (status = 204, description = "Moved"),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 409, description = "A partition not assigned to the instance (40903)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn seek_to_offsets(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SeekRequest>,
) -> ApiResult<Response> {
    let offsets = req
        .offsets
        .into_iter()
        .map(|o| pb::PartitionPosition {
            topic: o.topic,
            partition: o.partition,
            offset: o.offset,
        })
        .collect();
    seek(&state, &group, &name, offsets, vec![], vec![]).await
}

/// Moves assigned partitions to their first offset.
#[utoipa::path(post, path = "/consumers/{group}/instances/{name}/positions/beginning", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    request_body(content(
        (PartitionsRequest = "application/vnd.kafka.v2+json"),
        (PartitionsRequest = "application/json"))),
    responses(
        (status = 204, description = "Moved"),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 409, description = "A partition not assigned to the instance (40903)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn seek_to_beginning(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<PartitionsRequest>,
) -> ApiResult<Response> {
    seek(
        &state,
        &group,
        &name,
        vec![],
        grouped(&req.partitions),
        vec![],
    )
    .await
}

/// Moves assigned partitions to their end (the high watermark: only new records are read).
#[utoipa::path(post, path = "/consumers/{group}/instances/{name}/positions/end", tag = "consumers (v2)",
    params(("group" = String, Path, description = "Consumer group"),
        ("name" = String, Path, description = "Instance name")),
    request_body(content(
        (PartitionsRequest = "application/vnd.kafka.v2+json"),
        (PartitionsRequest = "application/json"))),
    responses(
        (status = 204, description = "Moved"),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Consumer instance not found (40403)", body = ErrorBody),
        (status = 409, description = "A partition not assigned to the instance (40903)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn seek_to_end(
    State(state): State<RestState>,
    ApiPath((group, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<PartitionsRequest>,
) -> ApiResult<Response> {
    seek(
        &state,
        &group,
        &name,
        vec![],
        vec![],
        grouped(&req.partitions),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_the_tag() {
        for s in [
            Settings {
                format: EmbeddedFormat::Binary,
                request_timeout_ms: None,
            },
            Settings {
                format: EmbeddedFormat::Json,
                request_timeout_ms: Some(250),
            },
        ] {
            assert_eq!(Settings::parse(&s.tag()), Some(s));
        }
        assert_eq!(
            Settings::parse("json"),
            Some(Settings {
                format: EmbeddedFormat::Json,
                request_timeout_ms: None
            })
        );
        assert_eq!(Settings::parse("").unwrap().format, EmbeddedFormat::Binary);
        assert_eq!(Settings::parse("avro"), None);
    }

    #[test]
    fn create_requests_are_validated() {
        let ok = |v: Value| validate_create("g", serde_json::from_value(v).unwrap());
        let r = ok(
            serde_json::json!({"name": "c", "format": "json", "auto.offset.reset": "earliest",
            "auto.commit.enable": "false", "consumer.request.timeout.ms": "500",
            "consumer.instance.timeout.ms": 2000, "fetch.min.bytes": -1}),
        )
        .unwrap();
        assert_eq!(r.name, "c");
        assert_eq!(r.format, "json;request.timeout.ms=500");
        assert_eq!(r.auto_offset_reset, "earliest");
        assert!(!r.auto_commit);
        assert_eq!(r.session_timeout_ms, 2000);
        let d = ok(serde_json::json!({})).unwrap();
        assert_eq!(
            (
                d.name.as_str(),
                d.format.as_str(),
                d.auto_offset_reset.as_str(),
                d.auto_commit,
                d.session_timeout_ms
            ),
            ("", "binary", "latest", true, 0)
        );
        assert!(ok(serde_json::json!({"enable.auto.commit": false})).is_ok_and(|r| !r.auto_commit));
        for bad in [
            serde_json::json!({"format": "avro"}),
            serde_json::json!({"format": "xml"}),
            serde_json::json!({"auto.offset.reset": "none"}),
            serde_json::json!({"auto.commit.enable": "yes"}),
            serde_json::json!({"auto.commit.enable": 1}),
            serde_json::json!({"consumer.request.timeout.ms": -1}),
            serde_json::json!({"consumer.request.timeout.ms": "soon"}),
            serde_json::json!({"consumer.instance.timeout.ms": 10}),
            serde_json::json!({"consumer.instance.timeout.ms": 300_001}),
            serde_json::json!({"fetch.min.bytes": "x"}),
            serde_json::json!({"name": "  "}),
            serde_json::json!({"name": ".."}),
        ] {
            let e = ok(bad.clone()).unwrap_err();
            assert_eq!(
                (e.status, e.error_code),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    codes::INVALID_CONSUMER_CONFIG
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("my_group-1.x~"), "my_group-1.x~");
        assert_eq!(encode_segment("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
    }
}
