//! The metadata group's transport: openraft RPCs over the internal gRPC `Raft` service.
//!
//! Requests and responses are openraft's own serde types, JSON-encoded into
//! `RaftPayload.json`, so nothing here mirrors openraft's structures by hand. The server side
//! answers `Result<Response, RaftError>` as JSON so a remote Raft error (e.g. a higher vote)
//! reaches the sender as such; a transport failure is reported as `Unreachable`, which makes
//! openraft back off instead of spinning.

use super::TypeConfig;
use cascade_proto::internal::RaftPayload;
use cascade_proto::internal::raft_client::RaftClient;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

type NodeId = u64;

/// Makes one [`Peer`] per target node.
#[derive(Debug, Clone, Default)]
pub struct Network;

/// A connection to one peer.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    addr: String,
}

/// A lazily connecting channel to a broker's gRPC address (`host:port`).
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        // A peer that hangs or is cut off fails its connection within ~3 s (see the client).
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            client: channel(&node.addr).ok().map(RaftClient::new),
            addr: node.addr.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        which: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |msg: String| {
            RPCError::Unreachable(Unreachable::new(&TransportError(format!(
                "{which} to node {} at {}: {msg}",
                self.target, self.addr
            ))))
        };
        let Some(client) = self.client.as_mut() else {
            return Err(unreachable("bad address".into()));
        };
        let json = serde_json::to_vec(req)
            .map_err(|e| RPCError::Network(openraft::error::NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { json: json.into() });
        request.set_timeout(option.hard_ttl());
        let resp = match which {
            "append_entries" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(unreachable(s.message().to_string())),
        };
        let r: Result<Resp, E> = serde_json::from_slice(&resp.json)
            .map_err(|e| RPCError::Network(openraft::error::NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append_entries", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// Turns an error into openraft's error carrier.
pub fn any_error(e: &(impl std::error::Error + 'static)) -> AnyError {
    AnyError::new(e)
}
