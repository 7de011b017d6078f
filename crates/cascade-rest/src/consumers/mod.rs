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

mod types;

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
use std::collections::BTreeMap;
pub use types::*;

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
    use serde_json::Value;

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
