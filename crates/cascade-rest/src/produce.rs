//! v2 produce: `POST /topics/{topic}` and `POST /topics/{topic}/partitions/{partition}`.
//!
//! The whole request is validated before anything is sent to a broker: the content type (415),
//! the JSON (400), each key, value and header in the embedded format (422: 42201 key, 42202
//! value), the topic (40401) and explicit partitions (40402), and the size of every batch
//! against the topic's `max.message.bytes` (413). So a refused request writes nothing.
//!
//! Records go through the Rust client's idempotent [`Producer`], one per topic, shared by
//! every request this server handles (as Confluent's REST Proxy shares one Kafka producer):
//! each record is sent in request order and answered with its own offset, so the records of a
//! request that go to one partition are stored in request order, each exactly once, even when
//! the producer retries after a lost answer or a leader change. Partitions are chosen as every
//! Cascade producer chooses them: an explicit partition wins; a keyed record goes to Kafka's
//! murmur2 partition of its key bytes ([`cascade_types::partition_for_key`]); the unkeyed
//! records of one request all go to one partition picked at random. A producer is rebuilt
//! when its topic's partition count or `max.message.bytes` changes.
//!
//! A request with an `Idempotency-Key` takes another path: its records are sent as one
//! `Produce` call carrying the key, typed, so the broker can answer a retry of the whole
//! request (through any gateway) with the first answer ([`crate::idempotency`]); the unkeyed
//! records of such a request all go to one partition derived from the key, so a retry is the
//! same request. One call, so its records are in request order too.

use crate::RestState;
use crate::error::{ApiError, ApiResult, ErrorBody, codes};
use crate::extract::{ApiPath, RawBody, parse_json};
use crate::format::{
    EmbeddedFormat, HeaderJson, V2Json, decode_base64, minify_json, request_format,
};
use crate::idempotency;
use axum::extract::State;
use axum::http::HeaderMap;
use bytes::Bytes;
use cascade_client::proto as pb;
use cascade_client::{Producer, ProducerConfig, ProducerRecord};
use cascade_record::{BatchBuilder, Record};
use cascade_types::partition_for_key;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// Kafka's default `max.message.bytes`, used if the topic does not report one.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// A produce request (v2).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"records": [{"key": "alice", "value": {"amount": 10}},
    {"value": [1, 2, 3], "partition": 0, "headers": [{"name": "trace", "value": "YWJj"}]}]}))]
pub struct ProduceRequest {
    /// The records, at least one.
    pub records: Vec<ProduceRecord>,
}

/// A record to produce.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProduceRecord {
    /// Key: any JSON value (json format) or a base64 string (binary format); null or absent
    /// for no key.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub key: Option<Box<RawValue>>,
    /// Value, in the same form as the key; null or absent for a null value.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub value: Option<Box<RawValue>>,
    /// Target partition; absent to partition by key.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Headers, values in base64.
    #[serde(default)]
    pub headers: Option<Vec<HeaderJson>>,
}

/// Where one record landed, or why it was not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OffsetResult {
    /// Partition.
    pub partition: Option<u32>,
    /// Offset, null when the record was not written.
    pub offset: Option<u64>,
    /// Error code when the record was not written (50002, or 50003 when retrying may work).
    pub error_code: Option<u32>,
    /// Error message when the record was not written.
    pub error: Option<String>,
}

/// A produce answer (v2): one entry per record, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"offsets": [{"partition": 1, "offset": 0, "error_code": null, "error": null}],
    "key_schema_id": null, "value_schema_id": null}))]
pub struct ProduceResponse {
    /// Per record, in request order.
    pub offsets: Vec<OffsetResult>,
    /// Always null (no schema registry).
    pub key_schema_id: Option<i32>,
    /// Always null (no schema registry).
    pub value_schema_id: Option<i32>,
}

struct Prepared {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    partition: Option<u32>,
}

fn embedded(
    raw: Option<&RawValue>,
    format: EmbeddedFormat,
    index: usize,
    what: &str,
    code: u32,
) -> ApiResult<Option<Vec<u8>>> {
    let Some(raw) = raw else { return Ok(None) };
    match format {
        EmbeddedFormat::Json => Ok(Some(minify_json(raw.get()).into_bytes())),
        EmbeddedFormat::Binary => {
            let s: String = serde_json::from_str(raw.get()).map_err(|_| {
                ApiError::unprocessable(
                    code,
                    format!("records[{index}].{what}: in the binary format a {what} must be a base64 string or null"),
                )
            })?;
            decode_base64(&s).map(Some).ok_or_else(|| {
                ApiError::unprocessable(
                    code,
                    format!("records[{index}].{what} is not valid base64"),
                )
            })
        }
    }
}

fn prepare(
    req: ProduceRequest,
    format: EmbeddedFormat,
    path_partition: Option<u32>,
) -> ApiResult<Vec<Prepared>> {
    if req.records.is_empty() {
        return Err(ApiError::unprocessable(
            codes::UNPROCESSABLE,
            "records must hold at least one record",
        ));
    }
    req.records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = embedded(r.key.as_deref(), format, i, "key", codes::INVALID_KEY)?;
            let value = embedded(r.value.as_deref(), format, i, "value", codes::INVALID_VALUE)?;
            let headers = r
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|h| {
                    let value = match &h.value {
                        None => None,
                        Some(v) => Some(decode_base64(v).ok_or_else(|| {
                            ApiError::unprocessable(
                                codes::UNPROCESSABLE,
                                format!(
                                    "records[{i}].headers: the value of {:?} is not valid base64",
                                    h.name
                                ),
                            )
                        })?),
                    };
                    Ok((h.name, value))
                })
                .collect::<ApiResult<Vec<_>>>()?;
            let partition = match (path_partition, r.partition) {
                (Some(p), Some(q)) if p != q => {
                    return Err(ApiError::unprocessable(
                        codes::UNPROCESSABLE,
                        format!(
                            "records[{i}].partition is {q} but the request is for partition {p}"
                        ),
                    ));
                }
                (p, q) => p.or(q),
            };
            Ok(Prepared {
                key,
                value,
                headers,
                partition,
            })
        })
        .collect()
}

/// Splits the records of one partition (indexes in request order) into runs whose batch, as
/// the broker will encode it, stays within `max` bytes (413 for a record too large alone).
fn split(records: &[Prepared], indexes: &[usize], max: usize) -> ApiResult<Vec<Vec<usize>>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut builder = BatchBuilder::new();
    for &i in indexes {
        let r = &records[i];
        let headers: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        // The broker stamps every record of a request with the same time: deltas are 0.
        let rec = Record {
            timestamp: 0,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: &headers,
        };
        if !builder.is_empty() && builder.size_bytes() + builder.record_size(&rec) > max {
            builder = BatchBuilder::new();
            runs.push(std::mem::take(&mut run));
        }
        let alone = builder.is_empty();
        builder.push(rec);
        run.push(i);
        if alone && builder.size_bytes() > max {
            return Err(ApiError::too_large(format!(
                "records[{i}] needs a batch of {} bytes, above the topic's max.message.bytes = {max}",
                builder.size_bytes()
            )));
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    Ok(runs)
}

fn to_wire(r: &Prepared) -> pb::Record {
    pb::Record {
        key: r.key.clone().map(Bytes::from),
        value: r.value.clone().map(Bytes::from),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| pb::Header {
                key: k.clone(),
                value: v.clone().map(Bytes::from),
            })
            .collect(),
        timestamp_ms: 0,
    }
}

/// A topic's shared producer, with the partition count and batch limit it was made for.
type PooledProducer = (u32, usize, Producer);

/// The shared idempotent producers, by topic.
#[derive(Debug, Clone, Default)]
pub(crate) struct Producers(Arc<tokio::sync::Mutex<HashMap<String, PooledProducer>>>);

impl Producers {
    /// The producer of `topic`, made (or made again) for its current partition count and
    /// batch limit.
    async fn get(
        &self,
        client: &cascade_client::Client,
        topic: &str,
        partitions: u32,
        max: usize,
    ) -> ApiResult<Producer> {
        let mut all = self.0.lock().await;
        if let Some((p, m, producer)) = all.get(topic)
            && (*p, *m) == (partitions, max)
        {
            return Ok(producer.clone());
        }
        let config = ProducerConfig {
            // Records of one request are pushed together, before any wait: they share
            // batches without lingering.
            linger: std::time::Duration::ZERO,
            batch_bytes: max.min(ProducerConfig::default().batch_bytes),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), topic, config)
            .await
            .map_err(|e| ApiError::from_client(&e))?;
        all.insert(topic.to_string(), (partitions, max, producer.clone()));
        Ok(producer)
    }
}

/// Runs a produce whose body is already validated.
async fn produce(
    state: &RestState,
    topic: &str,
    records: Vec<Prepared>,
    idempotency_key: Option<String>,
) -> ApiResult<ProduceResponse> {
    let t = crate::topics::describe(state, topic).await?;
    let count = t.partitions.len() as u32;
    if count == 0 {
        return Err(ApiError::internal(format!(
            "topic {topic:?} has no partitions"
        )));
    }
    let max = t
        .configs
        .get("max.message.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if idempotency_key.is_none() {
        return produce_idempotent(state, topic, records, count, max).await;
    }
    // One partition for the request's unkeyed records; derived from the idempotency key when
    // there is one, so that a retry is the same request.
    let sticky = match &idempotency_key {
        Some(k) => partition_for_key(k.as_bytes(), count),
        None => rand::random::<u32>() % count,
    };
    // Record indexes per partition, in request order.
    let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut assigned = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let p = match (r.partition, &r.key) {
            (Some(p), _) if p >= count => {
                return Err(ApiError::partition_not_found(topic, p.into(), count));
            }
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => sticky,
        };
        by_partition.entry(p).or_default().push(i);
        assigned.push(p);
    }
    let mut parts = Vec::new();
    for (&p, indexes) in &by_partition {
        for run in split(&records, indexes, max)? {
            parts.push(pb::PartitionRecords {
                partition: p as i32,
                batches: Bytes::new(),
                records: run.iter().map(|&i| to_wire(&records[i])).collect(),
            });
        }
    }
    let keyed = idempotency_key.is_some();
    let req = pb::ProduceRequest {
        topic: topic.to_string(),
        partitions: parts,
        acks: pb::Acks::All as i32,
        timeout_ms: 0,
        idempotency_key: idempotency_key.unwrap_or_default(),
    };
    // Spawned: the write runs to completion (and the broker records its answer for the
    // idempotency key) even if the HTTP client goes away meanwhile.
    let client = state.client.clone();
    let resp = tokio::spawn(async move { client.produce(req).await })
        .await
        .map_err(|e| ApiError::internal(format!("produce task failed: {e}")))?
        .map_err(|e| {
            if keyed && e.reason() == Some(pb::ErrorCode::InvalidRequest) {
                ApiError::unprocessable(codes::UNPROCESSABLE, e.to_string())
            } else {
                ApiError::from_client(&e)
            }
        })?;
    let results: BTreeMap<u32, &pb::PartitionProduceResult> =
        resp.results.iter().map(|r| (r.partition, r)).collect();
    let failed = |r: &pb::PartitionProduceResult| {
        r.error
            .as_ref()
            .filter(|e| e.code != pb::ErrorCode::None as i32)
            .cloned()
    };
    // Every partition refused: answer with that error (e.g. the topic was deleted meanwhile).
    if !results.is_empty()
        && let Some(e) = results
            .values()
            .map(|r| failed(r))
            .collect::<Option<Vec<_>>>()
    {
        let reason = pb::ErrorCode::try_from(e[0].code).unwrap_or(pb::ErrorCode::Internal);
        let (status, code) = crate::error::reason_status(reason);
        return Err(ApiError::new(status, code, e[0].message.clone()));
    }
    let mut offsets = Vec::with_capacity(records.len());
    let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
    for &p in &assigned {
        let n = seen.entry(p).or_insert(0);
        let entry = match results.get(&p) {
            Some(res) => match failed(res) {
                None => OffsetResult {
                    partition: Some(p),
                    offset: Some(res.base_offset + *n),
                    error_code: None,
                    error: None,
                },
                Some(e) => per_record_error(p, &e),
            },
            None => per_record_error(
                p,
                &pb::Error {
                    code: pb::ErrorCode::Internal as i32,
                    message: "the broker did not answer for this partition".into(),
                },
            ),
        };
        *n += 1;
        offsets.push(entry);
    }
    Ok(ProduceResponse {
        offsets,
        key_schema_id: None,
        value_schema_id: None,
    })
}

/// The path without an `Idempotency-Key`: every record through the topic's shared producer.
async fn produce_idempotent(
    state: &RestState,
    topic: &str,
    records: Vec<Prepared>,
    count: u32,
    max: usize,
) -> ApiResult<ProduceResponse> {
    // Refused before anything is sent: an explicit partition that does not exist, a record
    // too large for a batch of its own.
    for (i, r) in records.iter().enumerate() {
        if let Some(p) = r.partition
            && p >= count
        {
            return Err(ApiError::partition_not_found(topic, p.into(), count));
        }
        split(&records, &[i], max)?;
    }
    let producer = state
        .producers
        .get(&state.client, topic, count, max)
        .await?;
    // The unkeyed records of one request share one partition (as on the keyed path), so
    // they are stored together and in request order.
    let sticky = rand::random::<u32>() % count;
    let partitions: Vec<u32> = records
        .iter()
        .map(|r| match (r.partition, &r.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => sticky,
        })
        .collect();
    let sends = producer.send_many(
        records
            .into_iter()
            .zip(&partitions)
            .map(|(r, &p)| ProducerRecord {
                key: r.key.map(Bytes::from),
                value: r.value.map(Bytes::from),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, v.map(Bytes::from)))
                    .collect(),
                partition: Some(p),
                timestamp_ms: None,
            })
            .collect(),
    );
    let sends: Vec<_> = sends
        .into_iter()
        .zip(partitions)
        .map(|(send, p)| async move { (Some(p), send.await) })
        .collect();
    // Spawned: the records are sent (and their answers awaited) even if the HTTP client goes
    // away meanwhile.
    let results = tokio::spawn(futures::future::join_all(sends))
        .await
        .map_err(|e| ApiError::internal(format!("produce task failed: {e}")))?;
    let error_of = |e: &cascade_client::Error| pb::Error {
        code: e.reason().unwrap_or(pb::ErrorCode::Internal) as i32,
        message: e.to_string(),
    };
    // Every record refused: answer with that error (e.g. the topic was deleted meanwhile).
    if let Some((_, Err(e))) = results.first()
        && results.iter().all(|(_, r)| r.is_err())
    {
        let (status, code) =
            crate::error::reason_status(e.reason().unwrap_or(pb::ErrorCode::Internal));
        return Err(ApiError::new(status, code, e.to_string()));
    }
    let offsets = results
        .into_iter()
        .map(|(partition, r)| match r {
            Ok(m) => OffsetResult {
                partition: Some(m.partition),
                offset: Some(m.offset),
                error_code: None,
                error: None,
            },
            Err(e) => OffsetResult {
                partition,
                ..per_record_error(0, &error_of(&e))
            },
        })
        .collect();
    Ok(ProduceResponse {
        offsets,
        key_schema_id: None,
        value_schema_id: None,
    })
}

fn per_record_error(p: u32, e: &pb::Error) -> OffsetResult {
    let reason = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Internal);
    let retriable = matches!(
        reason,
        pb::ErrorCode::NotLeader
            | pb::ErrorCode::LeaderNotAvailable
            | pb::ErrorCode::NotCoordinator
            | pb::ErrorCode::NotEnoughReplicas
            | pb::ErrorCode::Timeout
            | pb::ErrorCode::ShuttingDown
    );
    OffsetResult {
        partition: Some(p),
        offset: None,
        error_code: Some(if retriable {
            codes::KAFKA_RETRIABLE
        } else {
            codes::KAFKA_ERROR
        }),
        error: Some(e.message.clone()),
    }
}

/// Validates, then produces (with the `Idempotency-Key`, if any, passed to the broker).
async fn handle(
    state: RestState,
    topic: String,
    path_partition: Option<u32>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<V2Json<ProduceResponse>> {
    let format = request_format(&headers)?;
    let key = idempotency::key_from(&headers)?;
    let req: ProduceRequest = parse_json(&body)?;
    let records = prepare(req, format, path_partition)?;
    Ok(V2Json(produce(&state, &topic, records, key).await?))
}

/// Produces records to a topic: explicit partitions are honoured, keyed records go to the
/// murmur2 partition of their key, unkeyed ones to one partition per request.
#[utoipa::path(post, path = "/topics/{topic}", tag = "produce (v2)",
    params(("topic" = String, Path, description = "Topic name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first answer instead of writing again (kept by the broker for 15 minutes)")),
    request_body(description = "Records; keys and values embedded per the Content-Type", content(
        (ProduceRequest = "application/vnd.kafka.json.v2+json"),
        (ProduceRequest = "application/vnd.kafka.binary.v2+json"),
        (ProduceRequest = "application/json"))),
    responses(
        (status = 200, description = "Per-record offsets, in request order", body = ProduceResponse, content_type = "application/vnd.kafka.v2+json"),
        (status = 400, description = "Malformed JSON or field", body = ErrorBody),
        (status = 404, description = "Topic (40401) or partition (40402) not found", body = ErrorBody),
        (status = 413, description = "Body or a record batch too large", body = ErrorBody),
        (status = 415, description = "Unsupported Content-Type", body = ErrorBody),
        (status = 422, description = "Invalid key (42201), value (42202), header or empty records; Idempotency-Key reused for another request", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn produce_to_topic(
    State(state): State<RestState>,
    ApiPath(topic): ApiPath<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<V2Json<ProduceResponse>> {
    handle(state, topic, None, headers, body).await
}

/// Produces records to one partition.
#[utoipa::path(post, path = "/topics/{topic}/partitions/{partition}", tag = "produce (v2)",
    params(("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition number"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first answer instead of writing again")),
    request_body(description = "Records; keys and values embedded per the Content-Type", content(
        (ProduceRequest = "application/vnd.kafka.json.v2+json"),
        (ProduceRequest = "application/vnd.kafka.binary.v2+json"),
        (ProduceRequest = "application/json"))),
    responses(
        (status = 200, description = "Per-record offsets, in request order", body = ProduceResponse, content_type = "application/vnd.kafka.v2+json"),
        (status = 400, description = "Malformed JSON, field or partition", body = ErrorBody),
        (status = 404, description = "Topic (40401) or partition (40402) not found", body = ErrorBody),
        (status = 413, description = "Body or a record batch too large", body = ErrorBody),
        (status = 415, description = "Unsupported Content-Type", body = ErrorBody),
        (status = 422, description = "Invalid key (42201), value (42202), header or empty records", body = ErrorBody),
        (status = 503, description = "Brokers unavailable (50302)", body = ErrorBody),
    ))]
pub async fn produce_to_partition(
    State(state): State<RestState>,
    ApiPath((topic, partition)): ApiPath<(String, u32)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<V2Json<ProduceResponse>> {
    handle(state, topic, Some(partition), headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn runs_split_at_the_limit() {
        let recs: Vec<Prepared> = (0..10)
            .map(|_| Prepared {
                key: None,
                value: Some(vec![7; 100]),
                headers: vec![],
                partition: None,
            })
            .collect();
        let idx: Vec<usize> = (0..10).collect();
        let runs = split(&recs, &idx, 400).unwrap();
        assert!(runs.len() > 1);
        assert_eq!(runs.concat(), idx, "every record once, in order");
        // Each run encodes within the limit.
        for run in &runs {
            let mut b = BatchBuilder::new();
            for &i in run {
                b.push(Record {
                    timestamp: 1_700_000_000_000,
                    value: recs[i].value.as_deref(),
                    ..Default::default()
                });
            }
            assert!(b.finish().len() <= 400);
        }
        let err = split(&recs, &idx[..1], 100).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
