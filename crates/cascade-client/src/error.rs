//! [`ClientError`]: what a client call can fail with, with the server's machine-readable
//! reason when there is one.

use cascade_proto::v1::ErrorCode;

/// Result alias for client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An error from a client call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No broker could be reached.
    #[error("cannot connect to {brokers}: {reason}")]
    Connect {
        /// The addresses tried.
        brokers: String,
        /// The last failure.
        reason: String,
    },
    /// The server refused the request.
    #[error("{message}")]
    Server {
        /// The gRPC status class.
        code: tonic::Code,
        /// The reason, when the server gave one.
        reason: Option<ErrorCode>,
        /// The server's explanation.
        message: String,
    },
    /// A partition's part of a request failed.
    #[error("{topic}/{partition}: {message}")]
    Partition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The reason.
        reason: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with bytes that do not decode.
    #[error("undecodable data from the server: {0}")]
    Decode(String),
    /// The caller asked for something impossible.
    #[error("{0}")]
    InvalidArgument(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
}

impl ClientError {
    /// The machine-readable reason, if any.
    pub fn reason(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { reason, .. } => *reason,
            Self::Partition { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// True if retrying the same request may succeed (leader moved, node restarting, timeout,
    /// connection lost).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Server { code, reason, .. } => {
                matches!(
                    reason,
                    Some(
                        ErrorCode::NotLeader
                            | ErrorCode::NotEnoughReplicas
                            | ErrorCode::ShuttingDown
                            | ErrorCode::Timeout
                    )
                ) || matches!(
                    code,
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                )
            }
            Self::Partition { reason, .. } => matches!(
                reason,
                ErrorCode::NotLeader
                    | ErrorCode::NotEnoughReplicas
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Timeout
            ),
            Self::Connect { .. } => true,
            _ => false,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Server {
            code: s.code(),
            reason: cascade_proto::error_code_of(&s),
            message: s.message().to_string(),
        }
    }
}

/// Turns a per-partition wire error into a [`ClientError`], if it is set.
pub(crate) fn partition_error(
    topic: &str,
    partition: u32,
    e: Option<&cascade_proto::v1::Error>,
) -> Result<()> {
    match e {
        Some(e) if e.code != ErrorCode::None as i32 => Err(ClientError::Partition {
            topic: topic.to_string(),
            partition,
            reason: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            message: e.message.clone(),
        }),
        _ => Ok(()),
    }
}
