//! [`ApiError`]: the one place where failures become HTTP responses.
//!
//! Every error leaves the REST API as `{"error_code": <int>, "message": "..."}` with a matching
//! HTTP status, the body of the Confluent REST Proxy. `error_code` is the HTTP status times 100
//! plus a sub-code where Confluent defines one (40401 topic not found, 40002 a request Kafka
//! refuses, ...), and the bare status (400, 404, 415, ...) where it does not, as Confluent does
//! for its generic errors. Broker failures arrive as [`ClientError`]s with a machine-readable
//! [`ErrorCode`] and are mapped in [`ApiError::from_client`]; axum's own rejections (bad JSON,
//! path or query) are mapped here too, so no plain-text error body ever leaves the router.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cascade_client::ClientError;
use cascade_client::proto::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Error codes of the REST API (HTTP status × 100 + sub-code, or the bare status).
pub mod codes {
    /// Malformed request: bad JSON, a missing or mistyped field, a bad path or query value.
    pub const BAD_REQUEST: u32 = 400;
    /// A request the broker refuses: bad topic name, partition count, replication factor or
    /// configuration, a topic that already exists (Confluent's `KAFKA_BAD_REQUEST`).
    pub const KAFKA_BAD_REQUEST: u32 = 40002;
    /// No such route or cluster.
    pub const NOT_FOUND: u32 = 404;
    /// Topic not found.
    pub const TOPIC_NOT_FOUND: u32 = 40401;
    /// Partition not found.
    pub const PARTITION_NOT_FOUND: u32 = 40402;
    /// Consumer instance not found.
    pub const CONSUMER_INSTANCE_NOT_FOUND: u32 = 40403;
    /// Method not allowed on this route.
    pub const METHOD_NOT_ALLOWED: u32 = 405;
    /// The `Accept` header asks for a format this endpoint cannot produce.
    pub const NOT_ACCEPTABLE: u32 = 406;
    /// Stored data is not in the requested embedded format (e.g. not JSON for the json format).
    pub const FORMAT_MISMATCH: u32 = 40601;
    /// A conflicting resource or state.
    pub const CONFLICT: u32 = 409;
    /// A consumer instance with that name exists.
    pub const CONSUMER_ALREADY_EXISTS: u32 = 40902;
    /// The operation is not valid in the current state.
    pub const ILLEGAL_STATE: u32 = 40903;
    /// The request body, or a record batch, is larger than allowed.
    pub const TOO_LARGE: u32 = 413;
    /// Unsupported `Content-Type`.
    pub const UNSUPPORTED_MEDIA_TYPE: u32 = 415;
    /// Offset outside the partition's log (below its start or above its high watermark).
    pub const OFFSET_OUT_OF_RANGE: u32 = 41601;
    /// Well-formed JSON that breaks a rule (empty record list, bad header, key reuse, an
    /// unsupported consumer feature).
    pub const UNPROCESSABLE: u32 = 422;
    /// A record key that is not valid in the request's embedded format (e.g. bad base64).
    pub const INVALID_KEY: u32 = 42201;
    /// A record value that is not valid in the request's embedded format.
    pub const INVALID_VALUE: u32 = 42202;
    /// A consumer instance setting that is not valid (format, auto.offset.reset, ...).
    pub const INVALID_CONSUMER_CONFIG: u32 = 42204;
    /// A server-side failure (never caused by client input).
    pub const INTERNAL: u32 = 50001;
    /// A broker failure for one partition of a produce (reported per record).
    pub const KAFKA_ERROR: u32 = 50002;
    /// A retriable broker failure for one partition of a produce (reported per record).
    pub const KAFKA_RETRIABLE: u32 = 50003;
    /// The brokers cannot be reached or are not ready (retry later).
    pub const UNAVAILABLE: u32 = 50302;
}

/// The JSON body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error_code": 40401, "message": "Topic not found: \"orders\""}))]
pub struct ErrorBody {
    /// HTTP status × 100 + sub-code (e.g. 40401), or the bare HTTP status.
    pub error_code: u32,
    /// What went wrong, for people.
    pub message: String,
}

/// An error answer: HTTP status, error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The `error_code` field.
    pub error_code: u32,
    /// The `message` field.
    pub message: String,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, error_code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            error_code,
            message: message.into(),
        }
    }

    /// 400: malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
    }

    /// 422: well-formed but invalid.
    pub fn unprocessable(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404 40401.
    pub fn topic_not_found(topic: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::TOPIC_NOT_FOUND,
            format!("Topic not found: {topic:?}"),
        )
    }

    /// 404 40402.
    pub fn partition_not_found(topic: &str, partition: u64, count: u32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::PARTITION_NOT_FOUND,
            format!(
                "Partition not found: topic {topic:?} has no partition {partition} (it has {count})"
            ),
        )
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, codes::TOO_LARGE, message)
    }

    /// 415.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::UNSUPPORTED_MEDIA_TYPE,
            message,
        )
    }

    /// 406.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, codes::NOT_ACCEPTABLE, message)
    }

    /// 500 50001: a bug or failure on our side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL, message)
    }

    /// Maps a broker or client failure to its HTTP form.
    pub fn from_client(e: &ClientError) -> Self {
        let message = match e {
            // The broker's message already names the partition.
            ClientError::Partition { message, .. } => message.clone(),
            other => other.to_string(),
        };
        if let Some(reason) = e.reason() {
            let (status, code) = reason_status(reason);
            return Self::new(status, code, message);
        }
        match e {
            ClientError::Server { code, .. } => {
                let (status, error_code) = grpc_status(*code);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    Self::new(
                        status,
                        error_code,
                        format!("brokers unavailable: {message}"),
                    )
                } else {
                    Self::new(status, error_code, message)
                }
            }
            ClientError::Connect { .. } | ClientError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                format!("brokers unavailable: {message}"),
            ),
            _ => Self::internal(message),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error_code: self.error_code,
            message: self.message.clone(),
        }
    }
}

/// Status and error code for a broker's machine-readable reason.
pub fn reason_status(reason: ErrorCode) -> (StatusCode, u32) {
    use ErrorCode as E;
    // Reasons added to the protocol after this crate was written are matched by name, so this
    // compiles against any version of the enum.
    match reason.as_str_name() {
        "UNKNOWN_CONSUMER_INSTANCE" => {
            return (StatusCode::NOT_FOUND, codes::CONSUMER_INSTANCE_NOT_FOUND);
        }
        "CONSUMER_INSTANCE_EXISTS" => {
            return (StatusCode::CONFLICT, codes::CONSUMER_ALREADY_EXISTS);
        }
        "PARTITION_NOT_ASSIGNED" => return (StatusCode::CONFLICT, codes::ILLEGAL_STATE),
        _ => {}
    }
    match reason {
        E::UnknownTopic => (StatusCode::NOT_FOUND, codes::TOPIC_NOT_FOUND),
        E::UnknownPartition => (StatusCode::NOT_FOUND, codes::PARTITION_NOT_FOUND),
        E::OffsetOutOfRange => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            codes::OFFSET_OUT_OF_RANGE,
        ),
        E::InvalidTopicName
        | E::TopicAlreadyExists
        | E::InvalidConfig
        | E::InvalidRequest
        | E::InvalidRecord
        | E::InvalidPartitions
        | E::InvalidReplicationFactor
        | E::InvalidGroupId => (StatusCode::BAD_REQUEST, codes::KAFKA_BAD_REQUEST),
        E::RecordTooLarge | E::RequestTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, codes::TOO_LARGE),
        E::UnknownMember => (StatusCode::NOT_FOUND, codes::CONSUMER_INSTANCE_NOT_FOUND),
        E::GroupNotFound => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
        E::FencedMemberEpoch | E::GroupNotEmpty => (StatusCode::CONFLICT, codes::CONFLICT),
        E::NotLeader | E::NotEnoughReplicas | E::Timeout | E::ShuttingDown => {
            (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
    }
}

/// Status and error code for a gRPC status without a reason.
fn grpc_status(code: tonic::Code) -> (StatusCode, u32) {
    use tonic::Code as C;
    match code {
        C::NotFound => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
        C::InvalidArgument | C::FailedPrecondition | C::AlreadyExists => {
            (StatusCode::BAD_REQUEST, codes::KAFKA_BAD_REQUEST)
        }
        C::OutOfRange | C::ResourceExhausted => (StatusCode::PAYLOAD_TOO_LARGE, codes::TOO_LARGE),
        C::Unavailable | C::DeadlineExceeded | C::Cancelled | C::Aborted => {
            (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        Self::from_client(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error_code = self.error_code, message = %self.message, "REST request failed");
        }
        let mut resp = (self.status, Json(self.body())).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::unsupported_media_type(
                "Content-Type must be application/json (or another +json type)",
            ),
            JsonRejection::BytesRejection(b) => b.into(),
            other => Self::bad_request(other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(format!(
                "request body larger than {} bytes",
                crate::MAX_BODY_BYTES
            ))
        } else {
            Self::bad_request(r.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

/// Answer for unknown routes.
pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!("HTTP 404 Not Found: no route for {}", uri.path()),
    )
}

/// Answer for a known route with the wrong method.
pub(crate) async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        format!("HTTP 405 Method Not Allowed: {method} is not supported on this route"),
    )
}

/// Answer for a handler that panicked (caught by the panic layer).
pub(crate) fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("internal error while handling the request").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_confluent_codes() {
        assert_eq!(
            reason_status(ErrorCode::UnknownTopic),
            (StatusCode::NOT_FOUND, 40401)
        );
        assert_eq!(
            reason_status(ErrorCode::UnknownPartition),
            (StatusCode::NOT_FOUND, 40402)
        );
        assert_eq!(
            reason_status(ErrorCode::TopicAlreadyExists),
            (StatusCode::BAD_REQUEST, 40002)
        );
        assert_eq!(
            reason_status(ErrorCode::RecordTooLarge),
            (StatusCode::PAYLOAD_TOO_LARGE, 413)
        );
        assert_eq!(
            reason_status(ErrorCode::StorageError).0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        // Every code's first three digits are its status.
        for i in 0..64 {
            if let Ok(reason) = ErrorCode::try_from(i) {
                let (status, code) = reason_status(reason);
                let prefix = if code >= 1000 { code / 100 } else { code };
                assert_eq!(u32::from(status.as_u16()), prefix, "{reason:?}");
            }
        }
    }

    #[test]
    fn connection_failures_are_503() {
        let e = ClientError::Connect {
            brokers: "x".into(),
            reason: "refused".into(),
        };
        let a = ApiError::from_client(&e);
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.error_code, codes::UNAVAILABLE);
    }
}
