//! The metadata group's transport: openraft RPCs over the internal gRPC `Raft` service.
//!
//! Requests and responses are openraft's own serde types, JSON-encoded into
//! `RaftPayload.json`, so nothing here mirrors openraft's structures by hand. The server side
//! answers `Result<Response, RaftError>` as JSON so a remote Raft error (e.g. a higher vote)
//! reaches the sender as such; a transport failure is reported as `Unreachable`, which makes
//! openraft back off instead of spinning.
//!
//! Peer reachability is logged here, once per change: openraft logs every failed RPC (two
//! lines a second per dead peer, forever), so the server's default log filter silences its
//! replication chatter and relies on these lines instead. Invariant: a peer is reported
//! unreachable once when its RPCs start failing, again at most once per [`REPORT_EVERY`] while
//! they keep failing, and reachable once when one gets an answer again.

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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

type NodeId = u64;

/// How often a peer that stays unreachable is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Makes one [`Peer`] per target node.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Per target node, shared by every connection openraft makes to it (it makes a new one
    /// per replication stream), so a reconnect does not forget that the peer was down.
    health: Arc<Mutex<HashMap<NodeId, Health>>>,
}

/// A connection to one peer.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    addr: String,
    health: Arc<Mutex<HashMap<NodeId, Health>>>,
}

/// What this node has seen of one peer's RPCs.
#[derive(Debug, Default)]
struct Health {
    /// Since when every RPC has failed (None: the last one was answered).
    down_since: Option<Instant>,
    /// RPCs failed since then.
    failures: u64,
    /// When the outage was last reported.
    reported: Option<Instant>,
}

/// A change worth a log line.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Down,
    StillDown { for_secs: u64, failures: u64 },
    Up { after_secs: u64, failures: u64 },
}

impl Health {
    fn failed(&mut self, now: Instant) -> Option<Report> {
        self.failures += 1;
        match (self.down_since, self.reported) {
            (None, _) => {
                self.down_since = Some(now);
                self.reported = Some(now);
                Some(Report::Down)
            }
            (Some(_), Some(last)) if now.duration_since(last) < REPORT_EVERY => None,
            (Some(since), _) => {
                self.reported = Some(now);
                Some(Report::StillDown {
                    for_secs: now.duration_since(since).as_secs(),
                    failures: self.failures,
                })
            }
        }
    }

    fn answered(&mut self, now: Instant) -> Option<Report> {
        let since = self.down_since.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.reported = None;
        Some(Report::Up {
            after_secs: now.duration_since(since).as_secs(),
            failures,
        })
    }
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
            health: self.health.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Peer {
    /// Records the outcome of one RPC and logs a change of reachability.
    fn note(&self, error: Option<&str>) {
        let report = {
            let mut all = self.health.lock().unwrap_or_else(|e| e.into_inner());
            let h = all.entry(self.target).or_default();
            match error {
                Some(_) => h.failed(Instant::now()),
                None => h.answered(Instant::now()),
            }
        };
        let (node, addr) = (self.target, self.addr.as_str());
        match report {
            Some(Report::Down) => tracing::warn!(
                node,
                addr,
                error = error.unwrap_or_default(),
                "metadata peer unreachable; retrying every 500 ms, reported again each minute while it lasts"
            ),
            Some(Report::StillDown { for_secs, failures }) => tracing::warn!(
                node,
                addr,
                for_secs,
                failed_rpcs = failures,
                error = error.unwrap_or_default(),
                "metadata peer still unreachable"
            ),
            Some(Report::Up {
                after_secs,
                failures,
            }) => tracing::info!(
                node,
                addr,
                after_secs,
                failed_rpcs = failures,
                "metadata peer reachable again"
            ),
            None => {}
        }
    }

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
            self.note(Some("bad address"));
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
            Err(s) => {
                self.note(Some(s.message()));
                return Err(unreachable(s.message().to_string()));
            }
        };
        self.note(None);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_then_each_minute_then_its_end_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = Health::default();
        assert_eq!(
            h.answered(at(0)),
            None,
            "a peer that never failed has nothing to report"
        );
        assert_eq!(h.failed(at(1)), Some(Report::Down));
        for s in 2..61 {
            assert_eq!(h.failed(at(s)), None, "second {s} of the outage");
        }
        assert_eq!(
            h.failed(at(61)),
            Some(Report::StillDown {
                for_secs: 60,
                failures: 61
            })
        );
        assert_eq!(h.failed(at(62)), None);
        assert_eq!(
            h.answered(at(70)),
            Some(Report::Up {
                after_secs: 69,
                failures: 62
            })
        );
        assert_eq!(h.answered(at(71)), None);
        // A new outage starts its own count and is reported at once.
        assert_eq!(h.failed(at(80)), Some(Report::Down));
    }
}
