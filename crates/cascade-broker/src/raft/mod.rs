//! The metadata Raft group, on openraft: type configuration, storage ([`LogStore`],
//! [`StateMachine`]), transport ([`network`]) and the internal gRPC `Raft` service.
//!
//! Every broker is a voter; the Raft leader is the cluster's controller. A single node runs the
//! same code with a one-voter group, so there is one code path for 1 and N nodes. The log's
//! application data is [`MetadataCommand`]; its state machine is [`ClusterMetadata`].
//!
//! [`ClusterMetadata`]: crate::metadata::ClusterMetadata

pub mod log_store;
pub mod network;
pub mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{ApplyResponse, StateMachine};

use crate::metadata::MetadataCommand;
use cascade_proto::internal::RaftPayload;
use cascade_proto::internal::raft_server::Raft as RaftRpc;
use openraft::BasicNode;
use serde::Serialize;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

openraft::declare_raft_types!(
    /// Cascade's metadata group types.
    pub TypeConfig:
        D = MetadataCommand,
        R = ApplyResponse,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A running Raft node of the metadata group.
pub type MetaRaft = openraft::Raft<TypeConfig>;

/// Raft timing: heartbeats every 150 ms and elections after 600–1200 ms of silence, so a dead
/// controller is replaced in about a second.
pub fn raft_config() -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "cascade-metadata".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        install_snapshot_timeout: 5_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2_000),
        max_in_snapshot_log_to_keep: 500,
        ..Default::default()
    };
    Arc::new(c.validate().expect("static Raft config is valid"))
}

/// How long a metadata proposal may take before it is reported as failed.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `call`, a call into the Raft core, unless `stopping` is (or becomes) cancelled first;
/// `None` then.
///
/// Why: openraft logs an error when a caller is still waiting for the core's answer as the
/// core stops, which an ordinary stop must not do. The stop cancels `stopping` before it stops
/// the core, and the select is biased towards it, so a call woken by the stopped core's
/// dropped answer sees the cancellation first and is dropped before it can notice.
pub async fn gated<T>(
    stopping: &tokio_util::sync::CancellationToken,
    call: impl std::future::Future<Output = T>,
) -> Option<T> {
    if stopping.is_cancelled() {
        return None;
    }
    tokio::select! {
        biased;
        _ = stopping.cancelled() => None,
        r = call => Some(r),
    }
}

/// The internal `Raft` gRPC service: hands peers' messages to the local Raft node, and answers
/// `UNAVAILABLE` (peers retry) once this node has begun stopping its Raft node.
#[derive(Clone)]
pub struct RaftService {
    raft: MetaRaft,
    stopping: tokio_util::sync::CancellationToken,
}

impl RaftService {
    /// Serves `raft` until `stopping` is cancelled (see [`gated`]).
    pub fn new(raft: MetaRaft, stopping: tokio_util::sync::CancellationToken) -> Self {
        Self { raft, stopping }
    }

    async fn call<T>(&self, call: impl std::future::Future<Output = T>) -> Result<T, Status> {
        gated(&self.stopping, call)
            .await
            .ok_or_else(|| Status::unavailable("this node is stopping its metadata Raft node"))
    }
}

fn decode<T: serde::de::DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&p.json)
        .map_err(|e| Status::invalid_argument(format!("bad Raft payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { json: json.into() }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.call(self.raft.append_entries(rpc)).await?)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.call(self.raft.vote(rpc)).await?)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.call(self.raft.install_snapshot(rpc)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::StorageError;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let fs: Arc<dyn cascade_log::fs::FileSystem> = Arc::new(cascade_log::fs::StdFs);
            let log = LogStore::open(fs.clone(), &dir.path().join("raft")).expect("open log");
            let sm = StateMachine::open(fs, &dir.path().join("raft")).expect("open sm");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage test suite against Cascade's Raft storage.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("storage suite");
    }
}
