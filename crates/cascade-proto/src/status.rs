//! Building and reading the error convention: gRPC code + ErrorInfo reason.

use crate::v1::ErrorCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of Cascade's errors.
pub const ERROR_DOMAIN: &str = "cascade";

/// A status with `code`, `message` and an ErrorInfo whose reason is `reason`'s name.
pub fn status(code: Code, reason: ErrorCode, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(
        reason.as_str_name(),
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    Status::with_error_details(code, message, details)
}

/// Where to send a request that reached the wrong node (`NOT_LEADER`, `NOT_COORDINATOR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The node id.
    pub node_id: u32,
    /// Its gRPC address.
    pub grpc_addr: String,
}

/// Like [`status`], with ErrorInfo metadata `leader_id` and `leader_addr` naming the node to
/// ask instead.
pub fn status_with_leader(
    code: Code,
    reason: ErrorCode,
    message: impl Into<String>,
    hint: Option<&LeaderHint>,
) -> Status {
    let mut meta = std::collections::HashMap::<String, String>::new();
    if let Some(h) = hint {
        meta.insert("leader_id".into(), h.node_id.to_string());
        meta.insert("leader_addr".into(), h.grpc_addr.clone());
    }
    let details = ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, meta);
    Status::with_error_details(code, message, details)
}

/// The leader hint carried by a status, if any.
pub fn leader_hint_of(status: &Status) -> Option<LeaderHint> {
    let info = status.get_error_details().error_info().cloned()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    Some(LeaderHint {
        node_id: info.metadata.get("leader_id")?.parse().ok()?,
        grpc_addr: info.metadata.get("leader_addr")?.clone(),
    })
}

/// The [`ErrorCode`] carried by a status from a Cascade server, if any.
pub fn error_code_of(status: &Status) -> Option<ErrorCode> {
    let info = status.get_error_details().error_info().cloned()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    ErrorCode::from_str_name(&info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips() {
        let s = status(Code::NotFound, ErrorCode::UnknownTopic, "no topic x");
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(error_code_of(&s), Some(ErrorCode::UnknownTopic));
        assert_eq!(error_code_of(&Status::internal("x")), None);
        assert_eq!(leader_hint_of(&s), None);
    }

    #[test]
    fn leader_hint_round_trips() {
        let hint = LeaderHint {
            node_id: 3,
            grpc_addr: "10.0.0.3:50051".into(),
        };
        let s = status_with_leader(Code::Unavailable, ErrorCode::NotLeader, "x", Some(&hint));
        assert_eq!(error_code_of(&s), Some(ErrorCode::NotLeader));
        assert_eq!(leader_hint_of(&s), Some(hint));
    }
}
