//! The public gRPC services (`cascade.v1`): thin adapters from wire types to the broker's
//! logic and back. The only place that builds `tonic::Status`es (see [`to_status`]).

mod admin;
mod consumers;
mod groups;
mod idempotency;
mod records;

pub use admin::AdminService;
pub use consumers::ConsumersService;
pub use groups::GroupsService;
pub use records::RecordsService;

use crate::error::BrokerError;
use std::future::Future;
use std::time::Instant;
use tonic::Status;

/// The one mapping from broker errors to gRPC statuses: code class plus ErrorInfo reason.
pub fn to_status(e: &BrokerError) -> Status {
    cascade_proto::status_with_leader(e.grpc_code(), e.code(), e.to_string(), e.leader_hint())
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        to_status(&e)
    }
}

/// The wire form of a per-partition error.
pub(crate) fn wire_error(e: &BrokerError) -> cascade_proto::v1::Error {
    cascade_proto::v1::Error {
        code: e.code() as i32,
        message: e.to_string(),
    }
}

/// Runs a handler, recording its latency and outcome in the request metrics.
pub(crate) async fn observe<T>(
    api: &'static str,
    f: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, Status> {
    let start = Instant::now();
    let r = f.await;
    let outcome = match &r {
        Ok(_) => "ok",
        Err(e) => e.code().as_str_name(),
    };
    metrics::histogram!("cascade_request_duration_seconds", "api" => api)
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("cascade_requests_total", "api" => api, "outcome" => outcome).increment(1);
    if let Err(e) = &r {
        tracing::debug!(api, error = %e, "request failed");
    }
    r.map_err(Status::from)
}
