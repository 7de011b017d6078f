//! Cascade's gRPC API: the generated messages and services of `cascade.v1`
//! (`proto/cascade/v1/cascade.proto`, which documents every call), plus the error convention
//! shared by server and client: a status code for the class of failure and a
//! `google.rpc.ErrorInfo` whose reason is an [`v1::ErrorCode`] name.

#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("cascade.v1");
}

/// The node-to-node API (`proto/cascade/internal/v1/internal.proto`): Raft, membership and
/// liveness, replication. Only brokers use it.
#[allow(missing_docs, clippy::all)]
pub mod internal {
    tonic::include_proto!("cascade.internal.v1");
}

mod status;

pub use status::{
    ERROR_DOMAIN, LeaderHint, error_code_of, leader_hint_of, status, status_with_leader,
};
