//! [`ClientError`] (also exported as `cascade_client::Error`): what a client call can fail
//! with, with the server's machine-readable reason and, for a request that reached the wrong
//! node, the server's hint of where to go instead.

use cascade_proto::LeaderHint;
use cascade_proto::v1::ErrorCode;
use std::time::Duration;

/// Result alias for client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An error from a client call.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The server refused the request (or the transport failed: `UNAVAILABLE` without a
    /// reason).
    #[error("{message}")]
    Server {
        /// The gRPC status class.
        code: tonic::Code,
        /// The reason, when the server gave one.
        reason: Option<ErrorCode>,
        /// The server's explanation.
        message: String,
        /// For `NOT_LEADER` / `NOT_COORDINATOR`: the node to ask instead, when the server
        /// knew it.
        leader: Option<LeaderHint>,
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
    /// A retriable failure lasted longer than the client's retry budget
    /// ([`crate::Client::with_retry_budget`]).
    #[error("{target}: gave up after {attempts} attempts in {elapsed:?}: {}: {last}", describe(.last))]
    RetriesExhausted {
        /// What the request was for: `topic/partition`, `group G`, or `cluster`.
        target: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: Box<ClientError>,
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

/// How a failure bears on retrying the same request elsewhere or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Do not retry: the answer will not change.
    No,
    /// The request reached a node that refused it before doing anything (wrong leader or
    /// coordinator, no leader yet, shutting down, too few in-sync replicas): always safe to
    /// resend.
    Refused,
    /// The transport failed (node down, connection reset): the request may or may not have
    /// been carried out. Safe only for idempotent requests, or when at-least-once is accepted.
    Ambiguous,
}

impl ClientError {
    /// The machine-readable reason, if any.
    pub fn reason(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { reason, .. } => *reason,
            Self::Partition { reason, .. } => Some(*reason),
            Self::RetriesExhausted { last, .. } => last.reason(),
            _ => None,
        }
    }

    /// The node the server said to ask instead, if it said.
    pub fn leader_hint(&self) -> Option<&LeaderHint> {
        match self {
            Self::Server { leader, .. } => leader.as_ref(),
            _ => None,
        }
    }

    /// True if retrying the same request may succeed (leader or coordinator moved, node
    /// restarting, timeout, connection lost). Client calls already retry these (except
    /// `TIMEOUT`) within the client's retry budget; this is for callers that retry on top.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Server { code, .. } => {
                self.retry() != Retry::No
                    || self.reason() == Some(ErrorCode::Timeout)
                    || *code == tonic::Code::DeadlineExceeded
            }
            Self::Partition { reason, .. } => {
                self.retry() != Retry::No || *reason == ErrorCode::Timeout
            }
            Self::Connect { .. } => true,
            _ => false,
        }
    }

    /// Whether the client's routing layer retries this failure, and how safe that is.
    pub(crate) fn retry(&self) -> Retry {
        match self {
            Self::Server { code, reason, .. } => retry_class(*code, *reason),
            Self::Partition { reason, .. } => retry_class(tonic::Code::Unavailable, Some(*reason)),
            Self::Connect { .. } => Retry::Ambiguous,
            _ => Retry::No,
        }
    }
}

/// The retry class of a failure given its gRPC code and Cascade reason (pure, for tests).
pub(crate) fn retry_class(code: tonic::Code, reason: Option<ErrorCode>) -> Retry {
    match reason {
        Some(
            ErrorCode::NotLeader
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::NotCoordinator
            | ErrorCode::ShuttingDown
            | ErrorCode::NotEnoughReplicas,
        ) => Retry::Refused,
        // A status with a reason is the server's considered answer.
        Some(_) => Retry::No,
        // No reason: the node did not answer (down, restarting, connection reset), or a proxy
        // in between failed.
        None if code == tonic::Code::Unavailable => Retry::Ambiguous,
        None if code == tonic::Code::Unknown => Retry::Ambiguous,
        // The connection went away with the request in flight (a node killed, a connection
        // reset): tonic reports the stream as cancelled. The server never answers with it.
        None if code == tonic::Code::Cancelled => Retry::Ambiguous,
        None => Retry::No,
    }
}

/// A few words on a failure for people, e.g. "too few in-sync replicas".
pub(crate) fn describe(e: &ClientError) -> &'static str {
    match e.reason() {
        Some(ErrorCode::NotLeader) => "the node is not the partition's leader",
        Some(ErrorCode::LeaderNotAvailable) => "the partition has no leader (election under way)",
        Some(ErrorCode::NotCoordinator) => "the node is not the group's coordinator",
        Some(ErrorCode::ShuttingDown) => "the node is shutting down",
        Some(ErrorCode::NotEnoughReplicas) => "too few in-sync replicas",
        Some(_) => "refused",
        None => match e {
            ClientError::Connect { .. } => "no broker reachable",
            ClientError::Server {
                code: tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled,
                ..
            } => "broker unreachable",
            _ => "failed",
        },
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Server {
            code: s.code(),
            reason: cascade_proto::error_code_of(&s),
            leader: cascade_proto::leader_hint_of(&s),
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

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_proto::status_with_leader;
    use tonic::{Code, Status};

    #[test]
    fn retriable_reasons() {
        for r in [
            ErrorCode::NotLeader,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::NotCoordinator,
            ErrorCode::ShuttingDown,
            ErrorCode::NotEnoughReplicas,
        ] {
            assert_eq!(
                retry_class(Code::Unavailable, Some(r)),
                Retry::Refused,
                "{r:?}"
            );
        }
        for r in [
            ErrorCode::UnknownTopic,
            ErrorCode::OffsetOutOfRange,
            ErrorCode::UnknownMember,
            ErrorCode::Timeout,
            ErrorCode::StorageError,
            ErrorCode::FencedLeaderEpoch,
        ] {
            assert_eq!(retry_class(Code::Unavailable, Some(r)), Retry::No, "{r:?}");
        }
        // A node down: tonic reports UNAVAILABLE without an ErrorInfo.
        assert_eq!(
            ClientError::from(Status::unavailable("connection refused")).retry(),
            Retry::Ambiguous
        );
        assert_eq!(
            ClientError::from(Status::cancelled("operation was canceled")).retry(),
            Retry::Ambiguous
        );
        assert_eq!(
            ClientError::from(Status::invalid_argument("x")).retry(),
            Retry::No
        );
        assert_eq!(
            ClientError::from(Status::deadline_exceeded("x")).retry(),
            Retry::No
        );
        assert!(ClientError::from(Status::deadline_exceeded("x")).is_retriable());
    }

    #[test]
    fn status_keeps_the_hint() {
        let hint = LeaderHint {
            node_id: 2,
            grpc_addr: "10.0.0.2:50051".into(),
        };
        let e = ClientError::from(status_with_leader(
            Code::Unavailable,
            ErrorCode::NotLeader,
            "not the leader",
            Some(&hint),
        ));
        assert_eq!(e.leader_hint(), Some(&hint));
        assert_eq!(e.reason(), Some(ErrorCode::NotLeader));
        assert_eq!(e.retry(), Retry::Refused);
    }

    #[test]
    fn per_partition_errors_classify_by_reason() {
        let e = partition_error(
            "t",
            3,
            Some(&cascade_proto::v1::Error {
                code: ErrorCode::LeaderNotAvailable as i32,
                message: "election".into(),
            }),
        )
        .unwrap_err();
        assert_eq!(e.retry(), Retry::Refused);
        assert!(e.is_retriable());
    }

    #[test]
    fn exhausted_names_target_and_reason() {
        let e = ClientError::RetriesExhausted {
            target: "orders/3".into(),
            attempts: 9,
            elapsed: Duration::from_secs(15),
            last: Box::new(ClientError::Partition {
                topic: "orders".into(),
                partition: 3,
                reason: ErrorCode::NotEnoughReplicas,
                message: "isr 1 < min.insync.replicas 2".into(),
            }),
        };
        let s = e.to_string();
        assert!(s.starts_with("orders/3: gave up after 9 attempts"), "{s}");
        assert!(s.contains("too few in-sync replicas"), "{s}");
        assert_eq!(e.reason(), Some(ErrorCode::NotEnoughReplicas));
    }
}
