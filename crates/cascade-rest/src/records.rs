//! Reading without a consumer: the stateless fetch
//! `GET /topics/{topic}/partitions/{partition}/records` (a long poll) and the live stream
//! `GET /topics/{topic}/partitions/{partition}/stream` (server-sent events).
//!
//! Both decode the stored batches and answer records as
//! `{"topic","key","value","partition","offset","timestamp","headers"}`, keys and values in the
//! json or binary embedded format ([`crate::format`]).

use crate::RestState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::format::{EmbeddedFormat, RecordJson, response_format};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cascade_client::decode_records;
use cascade_client::proto::{self as pb, subscribe_request::Position};
use futures::Stream;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use utoipa::IntoParams;

/// Longest long poll of a fetch.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// Default byte budget of a fetch.
pub const DEFAULT_MAX_BYTES: u32 = 1 << 20;
/// Largest byte budget of a fetch.
pub const MAX_MAX_BYTES: u32 = 16 << 20;

/// Query of the stateless fetch.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FetchParams {
    /// First offset to return (records below it are skipped).
    pub offset: u64,
    /// Byte budget (default 1 MiB, at most 16 MiB); at least one whole batch is returned.
    pub max_bytes: Option<u32>,
    /// Wait up to this many ms for records when there are none yet (default 0, at most
    /// 30000).
    pub timeout: Option<u64>,
}

/// Reads records of a partition from an offset, waiting up to `timeout` ms when there are
/// none yet. `Accept: application/vnd.kafka.json.v2+json` embeds keys and values as JSON;
/// `application/vnd.kafka.binary.v2+json` (the default) as base64.
#[utoipa::path(get, path = "/topics/{topic}/partitions/{partition}/records", tag = "records",
    params(("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition number"),
        FetchParams),
    responses(
        (status = 200, description = "Records in offset order (empty when none arrived in time)", content(
            (Vec<RecordJson> = "application/vnd.kafka.binary.v2+json"),
            (Vec<RecordJson> = "application/vnd.kafka.json.v2+json"))),
        (status = 400, description = "Bad offset, max_bytes or timeout", body = ErrorBody),
        (status = 404, description = "Topic (40401) or partition (40402) not found", body = ErrorBody),
        (status = 406, description = "Unsupported Accept (406), or a key/value that is not JSON in the json format (40601)", body = ErrorBody),
        (status = 416, description = "Offset below the log start or above the high watermark (41601)", body = ErrorBody),
    ))]
pub async fn fetch(
    State(state): State<RestState>,
    ApiPath((topic, partition)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<FetchParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let format = response_format(&headers)?;
    let max_bytes = q
        .max_bytes
        .unwrap_or(DEFAULT_MAX_BYTES)
        .clamp(1, MAX_MAX_BYTES);
    let wait = Duration::from_millis(q.timeout.unwrap_or(0).min(MAX_TIMEOUT_MS));
    let f = state
        .client
        .fetch(&topic, partition, q.offset, max_bytes, wait)
        .await?;
    let records = decode_records(&topic, partition, &f.batches, q.offset)?;
    let out = records
        .iter()
        .map(|r| RecordJson::from_record(r, format))
        .collect::<ApiResult<Vec<_>>>()?;
    let body = serde_json::to_vec(&out).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, format.media_type())], body).into_response())
}

/// Query of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// First offset to send; default: the end of the log (only new records). A
    /// `Last-Event-ID` header takes precedence (the stream resumes after it).
    pub offset: Option<u64>,
    /// Embedded format of keys and values: `binary` (default, base64) or `json`.
    pub format: Option<EmbeddedFormat>,
}

struct Follow {
    topic: String,
    partition: u32,
    format: EmbeddedFormat,
    next: u64,
    /// True until the first record when the stream started at the partition's end.
    at_latest: bool,
    upstream: Option<Upstream>,
    pending: VecDeque<Event>,
    client: cascade_client::Client,
}

type Upstream = std::pin::Pin<
    Box<dyn Stream<Item = Result<pb::FetchedPartition, cascade_client::ClientError>> + Send>,
>;

fn error_event(e: &ApiError) -> Event {
    Event::default()
        .event("error")
        .data(serde_json::to_string(&e.body()).unwrap_or_default())
}

impl Follow {
    /// Turns one upstream message into events. A retriable failure (the leader moved or went
    /// down) switches to [`cascade_client::Client::follow`], which finds the new leader and
    /// resumes after the last record sent; any other error ends the stream after its event.
    fn absorb(&mut self, msg: Result<pb::FetchedPartition, cascade_client::ClientError>) {
        if let Err(e) = &msg
            && e.is_retriable()
        {
            let position = if self.at_latest {
                Position::Latest(true)
            } else {
                Position::Offset(self.next)
            };
            self.upstream = Some(Box::pin(self.client.follow(
                &self.topic,
                self.partition,
                position,
            )));
            return;
        }
        let result = msg.map_err(ApiError::from).and_then(|f| {
            decode_records(&self.topic, self.partition, &f.batches, self.next)
                .map_err(ApiError::from)
        });
        let records = match result {
            Ok(r) => r,
            Err(e) => {
                self.pending.push_back(error_event(&e));
                self.upstream = None;
                return;
            }
        };
        for r in &records {
            match RecordJson::from_record(r, self.format) {
                Ok(j) => {
                    let data = serde_json::to_string(&j).unwrap_or_default();
                    self.pending
                        .push_back(Event::default().id(r.offset.to_string()).data(data));
                    self.next = r.offset + 1;
                    self.at_latest = false;
                }
                Err(e) => {
                    self.pending.push_back(error_event(&e));
                    self.upstream = None;
                    return;
                }
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures::stream::unfold(self, |mut s| async move {
            loop {
                if let Some(ev) = s.pending.pop_front() {
                    return Some((Ok(ev), s));
                }
                use futures::StreamExt;
                match s.upstream.as_mut()?.next().await {
                    Some(msg) => s.absorb(msg),
                    None => return None,
                }
            }
        })
    }
}

/// Follows a partition live as server-sent events: one `message` event per record, `id` = its
/// offset, `data` = the record as JSON (as the fetch returns it). Reconnecting with
/// `Last-Event-ID: N` resumes at N+1. Comments are sent as keep-alives while idle. A failure
/// after the stream started arrives as an `error` event whose data is the error JSON, and ends
/// the stream.
#[utoipa::path(get, path = "/topics/{topic}/partitions/{partition}/stream", tag = "records",
    params(("topic" = String, Path, description = "Topic name"),
        ("partition" = u32, Path, description = "Partition number"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Offset of the last event received: resume after it"),
        StreamParams),
    responses(
        (status = 200, description = "An event stream: `id: <offset>` and `data: <record JSON>` per record", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad offset, format or Last-Event-ID", body = ErrorBody),
        (status = 404, description = "Topic (40401) or partition (40402) not found", body = ErrorBody),
        (status = 416, description = "Offset below the log start or above the high watermark (41601)", body = ErrorBody),
    ))]
pub async fn stream(
    State(state): State<RestState>,
    ApiPath((topic, partition)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<StreamParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let last_event = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be the offset of a record")
                })?,
        ),
    };
    let start = match last_event {
        Some(id) => Some(id.checked_add(1).ok_or_else(|| {
            ApiError::bad_request("Last-Event-ID is the largest offset: nothing follows it")
        })?),
        None => q.offset,
    };
    let position = match start {
        Some(o) => Position::Offset(o),
        None => Position::Latest(true),
    };
    // The first subscription is opened here so that a bad topic, partition or offset is an
    // HTTP error rather than an error event.
    let upstream = state.client.subscribe(&topic, partition, position).await?;
    let upstream: Upstream = Box::pin(futures::StreamExt::map(upstream, |r| {
        r.map_err(cascade_client::ClientError::from)
    }));
    let follow = Follow {
        topic,
        partition,
        format: q.format.unwrap_or_default(),
        next: start.unwrap_or(0),
        at_latest: start.is_none(),
        upstream: Some(upstream),
        pending: VecDeque::new(),
        client: state.client.clone(),
    };
    let sse = Sse::new(follow.into_stream()).keep_alive(
        KeepAlive::new()
            .interval(state.keep_alive)
            .text("keep-alive"),
    );
    Ok(sse.into_response())
}
