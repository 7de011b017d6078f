//! Embedded formats: how record keys and values travel inside JSON requests and responses.
//!
//! As in the Confluent REST Proxy, the media type names the embedded format:
//! `application/vnd.kafka.json.v2+json` carries keys and values as JSON (stored as their compact
//! JSON text), `application/vnd.kafka.binary.v2+json` as base64 strings of the stored bytes.
//! Where the embedded format is omitted (`application/vnd.kafka.v2+json`, `*/*`, no `Accept`)
//! binary is assumed, as Confluent does; a plain `application/json` request body is read as the
//! json format, because that is what generic HTTP tools send. Header values are always base64.

use crate::error::{ApiError, ApiResult, codes};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cascade_client::ConsumedRecord;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// Media type of the json embedded format.
pub const JSON_V2: &str = "application/vnd.kafka.json.v2+json";
/// Media type of the binary embedded format.
pub const BINARY_V2: &str = "application/vnd.kafka.binary.v2+json";
/// Media type of v2 responses without embedded data.
pub const V2: &str = "application/vnd.kafka.v2+json";

/// How keys and values are embedded in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedFormat {
    /// Base64 strings of the bytes.
    #[default]
    Binary,
    /// JSON values, stored as their compact JSON text.
    Json,
}

impl EmbeddedFormat {
    /// The v2 media type of this format.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Binary => BINARY_V2,
            Self::Json => JSON_V2,
        }
    }
}

/// The embedded format of a produce request body, from its `Content-Type` (415 if none fits).
pub fn request_format(headers: &HeaderMap) -> ApiResult<EmbeddedFormat> {
    let Some(ct) = crate::extract::content_type(headers) else {
        return Err(ApiError::unsupported_media_type(format!(
            "a Content-Type is required: {JSON_V2} or {BINARY_V2}"
        )));
    };
    match ct.as_str() {
        JSON_V2 | "application/json" | "application/vnd.kafka.json+json" => {
            Ok(EmbeddedFormat::Json)
        }
        BINARY_V2 | V2 | "application/vnd.kafka+json" | "application/vnd.kafka.binary+json" => {
            Ok(EmbeddedFormat::Binary)
        }
        other => Err(ApiError::unsupported_media_type(format!(
            "unsupported Content-Type {other:?}: use {JSON_V2} or {BINARY_V2} (avro, protobuf and jsonschema need a schema registry, which Cascade does not have)"
        ))),
    }
}

/// The embedded format a fetch answers in, from its `Accept` header (406 if none fits).
/// Without an embedded format in `Accept` (none, `*/*`, `application/json`,
/// `application/vnd.kafka.v2+json`) binary is assumed, as Confluent does.
pub fn response_format(headers: &HeaderMap) -> ApiResult<EmbeddedFormat> {
    Ok(accept_format(headers)?.unwrap_or(EmbeddedFormat::Binary))
}

/// The embedded format `Accept` names: `Some` for a type of one embedded format, `None` when it
/// accepts any (no `Accept`, `*/*`, `application/json`, `application/vnd.kafka.v2+json`...),
/// 406 when it accepts nothing this API can produce. Media ranges are taken in order of
/// preference (q descending, then as listed).
pub fn accept_format(headers: &HeaderMap) -> ApiResult<Option<EmbeddedFormat>> {
    let Some(accept) = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    let mut ranges: Vec<(f32, usize, String)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, item)| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!media.is_empty() && q > 0.0).then_some((q, i, media))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, media) in &ranges {
        match media.as_str() {
            JSON_V2 | "application/vnd.kafka.json+json" => return Ok(Some(EmbeddedFormat::Json)),
            BINARY_V2 | "application/vnd.kafka.binary+json" => {
                return Ok(Some(EmbeddedFormat::Binary));
            }
            V2 | "application/vnd.kafka+json" | "application/json" | "application/*" | "*/*" => {
                return Ok(None);
            }
            _ => {}
        }
    }
    Err(ApiError::not_acceptable(format!(
        "cannot answer in {accept:?}: accept {BINARY_V2} or {JSON_V2}"
    )))
}

/// A JSON answer with Confluent's v2 media type, `application/vnd.kafka.v2+json`.
#[derive(Debug, Clone)]
pub struct V2Json<T>(pub T);

impl<T: Serialize> IntoResponse for V2Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => ([(header::CONTENT_TYPE, V2)], body).into_response(),
            Err(e) => ApiError::internal(format!("cannot encode the answer: {e}")).into_response(),
        }
    }
}

/// Removes insignificant whitespace from valid JSON text, keeping everything else (key order,
/// number spelling) exactly as written.
pub fn minify_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// A record header: a name and a base64 value (or null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderJson {
    /// Header name.
    pub name: String,
    /// Header value, base64 (standard alphabet, padded), or null.
    #[serde(default)]
    pub value: Option<String>,
}

/// A record as the fetch and stream endpoints return it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordJson {
    /// Topic.
    pub topic: String,
    /// Key: a JSON value (json format) or a base64 string (binary format), or null.
    #[schema(value_type = Value)]
    pub key: Option<Box<RawValue>>,
    /// Value: a JSON value (json format) or a base64 string (binary format), or null.
    #[schema(value_type = Value)]
    pub value: Option<Box<RawValue>>,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp: i64,
    /// Headers, values in base64.
    pub headers: Vec<HeaderJson>,
}

fn embed(
    bytes: Option<&Bytes>,
    format: EmbeddedFormat,
    what: &str,
    rec: &ConsumedRecord,
) -> ApiResult<Option<Box<RawValue>>> {
    let Some(b) = bytes else { return Ok(None) };
    let raw = match format {
        EmbeddedFormat::Binary => {
            RawValue::from_string(serde_json::to_string(&B64.encode(b)).expect("a string"))
        }
        EmbeddedFormat::Json => match std::str::from_utf8(b) {
            Ok(s) => RawValue::from_string(s.trim().to_string()),
            Err(_) => serde_json::from_str::<Box<RawValue>>("x"),
        },
    };
    raw.map(Some).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::NOT_ACCEPTABLE,
            codes::FORMAT_MISMATCH,
            format!(
                "the {what} of {}/{} at offset {} is not JSON: read it with Accept: {BINARY_V2}",
                rec.topic, rec.partition, rec.offset
            ),
        )
    })
}

impl RecordJson {
    /// Converts a consumed record; in the json format a key or value that is not JSON is a
    /// 406 (40601) naming the offset.
    pub fn from_record(rec: &ConsumedRecord, format: EmbeddedFormat) -> ApiResult<Self> {
        Ok(Self {
            topic: rec.topic.clone(),
            key: embed(rec.key.as_ref(), format, "key", rec)?,
            value: embed(rec.value.as_ref(), format, "value", rec)?,
            partition: rec.partition,
            offset: rec.offset,
            timestamp: rec.timestamp_ms,
            headers: rec
                .headers
                .iter()
                .map(|(k, v)| HeaderJson {
                    name: k.clone(),
                    value: v.as_ref().map(|v| B64.encode(v)),
                })
                .collect(),
        })
    }
}

/// Decodes standard base64 (padded).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(v: &str) -> ApiResult<EmbeddedFormat> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        response_format(&h)
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(
            response_format(&HeaderMap::new()),
            Ok(EmbeddedFormat::Binary)
        );
        assert_eq!(accept("*/*"), Ok(EmbeddedFormat::Binary));
        assert_eq!(accept(JSON_V2), Ok(EmbeddedFormat::Json));
        assert_eq!(accept(BINARY_V2), Ok(EmbeddedFormat::Binary));
        assert_eq!(
            accept(
                "application/vnd.kafka.binary.v2+json;q=0.5, application/vnd.kafka.json.v2+json"
            ),
            Ok(EmbeddedFormat::Json)
        );
        assert_eq!(accept("text/html, */*;q=0.1"), Ok(EmbeddedFormat::Binary));
        assert_eq!(accept(V2), Ok(EmbeddedFormat::Binary));
        assert_eq!(
            accept("application/vnd.kafka.avro.v2+json")
                .unwrap_err()
                .status,
            406
        );
    }

    #[test]
    fn minify_keeps_strings_and_order() {
        assert_eq!(
            minify_json("{ \"b\" : [1, 2.50,\n3e2], \"a\": \"x y\\\" z\" }"),
            "{\"b\":[1,2.50,3e2],\"a\":\"x y\\\" z\"}"
        );
    }
}
