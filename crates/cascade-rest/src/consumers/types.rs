//! The v2 consumer endpoints' settings, request and response types (with their OpenAPI
//! schemas) and the validation of a create request; the handlers are in the parent module.

use crate::error::{ApiError, ApiResult, codes};
use crate::format::EmbeddedFormat;
use crate::records::MAX_TIMEOUT_MS;
use cascade_client::proto::{self as pb};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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

pub(super) fn flag_schema() -> OneOfBuilder {
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
pub(super) fn millis_schema(description: &str, min: u64, max: Option<u64>) -> OneOfBuilder {
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

pub(super) fn request_timeout_schema() -> OneOfBuilder {
    millis_schema(
        "How long a records request without `timeout` waits for records, in ms (default 1000; above 30000 means 30000). An integer or a string of digits.",
        0,
        None,
    )
}

pub(super) fn instance_timeout_schema() -> OneOfBuilder {
    millis_schema(
        "Cascade extension: this instance's idle timeout, in ms (1000 to 300000, default 300000). An instance not called for that long is removed. An integer or a string of digits.",
        MIN_INSTANCE_TIMEOUT_MS,
        Some(MAX_INSTANCE_TIMEOUT_MS),
    )
}

pub(super) fn fetch_min_bytes_schema() -> OneOfBuilder {
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
pub(super) enum OffsetReset {
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

pub(super) fn invalid_config(message: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable(
        codes::INVALID_CONSUMER_CONFIG,
        format!("Invalid consumer configuration: {message}"),
    )
}

/// Reads a number of ms given as a JSON integer or a string of digits.
pub(super) fn millis(v: &Value, field: &str) -> ApiResult<u64> {
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
pub(super) fn validate_create(
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
pub(super) fn req_name_is_blank(name: &str) -> bool {
    !name.is_empty() && name.trim().is_empty()
}
