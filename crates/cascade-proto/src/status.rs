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
    }
}
