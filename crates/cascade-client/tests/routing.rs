//! The client against fake brokers on 127.0.0.1: each fake serves Admin, Records and Groups
//! from a shared, scripted view of a cluster, so routing, redirects, refreshes, retries and
//! their budget are checked without a real cluster.

use bytes::Bytes;
use cascade_client::{Acks, Client, ClientError};
use cascade_proto::v1::{
    self as pb,
    admin_server::{Admin, AdminServer},
    groups_server::{Groups, GroupsServer},
    records_server::{Records, RecordsServer},
};
use cascade_proto::{LeaderHint, status_with_leader};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Code, Request, Response, Status};

/// What every fake node believes, and what each was asked.
#[derive(Default)]
struct Cluster {
    /// node id -> advertised address.
    addrs: BTreeMap<u32, String>,
    /// What DescribeCluster reports as partition 0's leader of topic "t".
    described_leader: u32,
    /// Which node really leads "t"/0 (the others redirect).
    leader: u32,
    /// Whether non-leaders name the leader in their refusal.
    hint: bool,
    /// The leader refuses produces with this reason (e.g. NOT_ENOUGH_REPLICAS).
    leader_refuses: Option<pb::ErrorCode>,
    /// The group coordinator.
    coordinator: u32,
    /// (node, call) in arrival order.
    calls: Vec<(u32, &'static str)>,
    describes: u32,
}

type Shared = Arc<Mutex<Cluster>>;

#[derive(Clone)]
struct Fake {
    id: u32,
    cluster: Shared,
}

impl Fake {
    fn log(&self, call: &'static str) {
        self.cluster.lock().unwrap().calls.push((self.id, call));
    }

    fn hint(&self, node: u32) -> Option<LeaderHint> {
        let c = self.cluster.lock().unwrap();
        c.hint.then(|| LeaderHint {
            node_id: node,
            grpc_addr: c.addrs[&node].clone(),
        })
    }
}

fn none<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn create_topic(
        &self,
        _: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        none()
    }
    async fn delete_topic(
        &self,
        _: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        none()
    }
    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        none()
    }
    async fn describe_topic(
        &self,
        _: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        none()
    }
    async fn create_partitions(
        &self,
        _: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        none()
    }
    async fn alter_topic_config(
        &self,
        _: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        none()
    }
    async fn elect_leader(
        &self,
        _: Request<pb::ElectLeaderRequest>,
    ) -> Result<Response<pb::ElectLeaderResponse>, Status> {
        none()
    }
    async fn describe_cluster(
        &self,
        _: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::ClusterDescription>, Status> {
        let mut c = self.cluster.lock().unwrap();
        c.describes += 1;
        let all: Vec<u32> = c.addrs.keys().copied().collect();
        Ok(Response::new(pb::ClusterDescription {
            cluster_id: "fake".into(),
            controller_id: 1,
            brokers: c
                .addrs
                .iter()
                .map(|(id, a)| pb::BrokerDescription {
                    node_id: *id,
                    grpc_addr: a.clone(),
                    http_addr: String::new(),
                    alive: true,
                })
                .collect(),
            topics: vec![pb::TopicDescription {
                name: "t".into(),
                partitions: vec![pb::PartitionDescription {
                    partition: 0,
                    leader: c.described_leader,
                    leader_epoch: 1,
                    replicas: all.clone(),
                    isr: all,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            under_replicated_partitions: 0,
            offline_partitions: 0,
        }))
    }
}

type Sub = Pin<Box<dyn futures::Stream<Item = Result<pb::FetchedPartition, Status>> + Send>>;

#[tonic::async_trait]
impl Records for Fake {
    async fn produce(
        &self,
        req: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        self.log("produce");
        let (leader, refuses) = {
            let c = self.cluster.lock().unwrap();
            (c.leader, c.leader_refuses)
        };
        if leader == 0 {
            return Err(status_with_leader(
                Code::Unavailable,
                pb::ErrorCode::LeaderNotAvailable,
                "election under way",
                None,
            ));
        }
        if leader != self.id {
            return Err(status_with_leader(
                Code::Unavailable,
                pb::ErrorCode::NotLeader,
                format!("node {} is not the leader", self.id),
                self.hint(leader).as_ref(),
            ));
        }
        let error = refuses.map(|code| pb::Error {
            code: code as i32,
            message: "isr 1 below min.insync.replicas 2".into(),
        });
        let req = req.into_inner();
        Ok(Response::new(pb::ProduceResponse {
            results: req
                .partitions
                .iter()
                .map(|p| pb::PartitionProduceResult {
                    partition: p.partition.max(0) as u32,
                    base_offset: 10,
                    last_offset: 10,
                    record_count: 1,
                    error: error.clone(),
                    duplicate: false,
                })
                .collect(),
        }))
    }
    async fn fetch(
        &self,
        _: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        none()
    }
    type SubscribeStream = Sub;
    async fn subscribe(&self, _: Request<pb::SubscribeRequest>) -> Result<Response<Sub>, Status> {
        none()
    }
    async fn list_offsets(
        &self,
        _: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        none()
    }
    async fn init_producer_id(
        &self,
        _: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        none()
    }
}

#[tonic::async_trait]
impl Groups for Fake {
    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.log("heartbeat");
        let coordinator = self.cluster.lock().unwrap().coordinator;
        if coordinator != self.id {
            return Err(status_with_leader(
                Code::Unavailable,
                pb::ErrorCode::NotCoordinator,
                "not the coordinator",
                self.hint(coordinator).as_ref(),
            ));
        }
        Ok(Response::new(pb::HeartbeatResponse {
            member_id: format!("m-{}", req.into_inner().group_id),
            member_epoch: 1,
            heartbeat_interval_ms: 1000,
            assignment: vec![],
        }))
    }
    async fn commit_offsets(
        &self,
        _: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        none()
    }
    async fn fetch_offsets(
        &self,
        _: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        none()
    }
    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        none()
    }
    async fn describe_group(
        &self,
        _: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        none()
    }
    async fn reset_offsets(
        &self,
        _: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        none()
    }
    async fn delete_group(
        &self,
        _: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        none()
    }
    async fn find_coordinator(
        &self,
        _: Request<pb::FindCoordinatorRequest>,
    ) -> Result<Response<pb::FindCoordinatorResponse>, Status> {
        self.log("find_coordinator");
        let c = self.cluster.lock().unwrap();
        Ok(Response::new(pb::FindCoordinatorResponse {
            node_id: c.coordinator,
            grpc_addr: c.addrs[&c.coordinator].clone(),
        }))
    }
}

/// Starts `n` fake nodes (ids 1..=n) sharing one cluster view; returns their addresses.
/// With `advertise`, DescribeCluster reports each under this address instead.
async fn start(n: u32, cluster: Shared, advertise: Option<&str>) -> Vec<String> {
    let mut addrs = Vec::new();
    for id in 1..=n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        cluster
            .lock()
            .unwrap()
            .addrs
            .insert(id, advertise.map_or(addr.clone(), str::to_string));
        let fake = Fake {
            id,
            cluster: cluster.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(fake.clone()))
                .add_service(RecordsServer::new(fake.clone()))
                .add_service(GroupsServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addrs.push(addr);
    }
    addrs
}

fn cluster(leader: u32, described_leader: u32, hint: bool) -> Shared {
    Arc::new(Mutex::new(Cluster {
        leader,
        described_leader,
        hint,
        coordinator: 2,
        ..Default::default()
    }))
}

fn produces(c: &Shared) -> Vec<u32> {
    c.lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(_, call)| *call == "produce")
        .map(|(n, _)| *n)
        .collect()
}

async fn produce(client: &Client) -> cascade_client::Result<cascade_client::Produced> {
    client
        .produce_batches("t", 0, Bytes::from_static(b"batch"), Acks::All)
        .await
}

#[tokio::test]
async fn goes_straight_to_the_leader_the_metadata_names() {
    let c = cluster(3, 3, true);
    let addrs = start(3, c.clone(), None).await;
    let client = Client::connect(&addrs[0]).await.unwrap();
    assert_eq!(produce(&client).await.unwrap().base_offset, 10);
    assert_eq!(produces(&c), [3], "one request, to node 3");
    let leader = client.leader_of("t", 0).await.unwrap().unwrap();
    assert_eq!(
        (leader.node_id, leader.grpc_addr.as_str()),
        (3, addrs[2].as_str())
    );
    // The raw client for the partition is the leader's too.
    let _ = client.records_for("t", 0);
}

#[tokio::test]
async fn follows_a_not_leader_hint() {
    // The metadata is stale (says node 1); node 1 redirects to node 2.
    let c = cluster(2, 1, true);
    let addrs = start(2, c.clone(), None).await;
    let client = Client::connect(&addrs[0]).await.unwrap();
    produce(&client).await.unwrap();
    assert_eq!(produces(&c), [1, 2]);
    let describes = c.lock().unwrap().describes;
    // The hint was remembered: the next produce goes straight to node 2, without a refresh.
    produce(&client).await.unwrap();
    assert_eq!(produces(&c), [1, 2, 2]);
    assert_eq!(c.lock().unwrap().describes, describes);
}

#[tokio::test]
async fn without_a_hint_refreshes_and_retries() {
    let c = cluster(2, 1, false);
    let addrs = start(2, c.clone(), None).await;
    let client = Client::connect(&addrs[0]).await.unwrap();
    client.refresh_metadata().await.unwrap();
    // The election finishes: metadata now says node 2.
    c.lock().unwrap().described_leader = 2;
    produce(&client).await.unwrap();
    assert_eq!(produces(&c), [1, 2]);
}

#[tokio::test]
async fn waits_out_an_election() {
    let c = cluster(0, 0, true);
    let addrs = start(2, c.clone(), None).await;
    let client = Client::connect(&addrs[0]).await.unwrap();
    let c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut c = c2.lock().unwrap();
        c.leader = 2;
        c.described_leader = 2;
    });
    produce(&client).await.unwrap();
    let p = produces(&c);
    assert!(p.len() >= 3, "retried during the election: {p:?}");
    assert_eq!(p.last(), Some(&2));
}

#[tokio::test]
async fn gives_up_after_the_budget_naming_partition_and_reason() {
    let c = cluster(1, 1, true);
    c.lock().unwrap().leader_refuses = Some(pb::ErrorCode::NotEnoughReplicas);
    let addrs = start(2, c.clone(), None).await;
    let client = Client::connect(&addrs[0])
        .await
        .unwrap()
        .with_retry_budget(Duration::from_millis(400));
    let start = Instant::now();
    let e = produce(&client).await.unwrap_err();
    let waited = start.elapsed();
    assert!(matches!(e, ClientError::RetriesExhausted { .. }), "{e:?}");
    assert_eq!(e.reason(), Some(pb::ErrorCode::NotEnoughReplicas));
    let msg = e.to_string();
    assert!(msg.starts_with("t/0: gave up after"), "{msg}");
    assert!(msg.contains("too few in-sync replicas"), "{msg}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(produces(&c).len() >= 3, "{:?}", produces(&c));

    // Budget zero: no retries at all.
    let once = client.clone().with_retry_budget(Duration::ZERO);
    let before = produces(&c).len();
    let e = produce(&once).await.unwrap_err();
    assert!(matches!(e, ClientError::Partition { .. }), "{e:?}");
    assert_eq!(produces(&c).len(), before + 1);
}

#[tokio::test]
async fn group_calls_go_to_the_coordinator() {
    let c = cluster(1, 1, true);
    let addrs = start(2, c.clone(), None).await;
    let client = Client::connect(&addrs[0]).await.unwrap();
    let hb = || {
        client.heartbeat(pb::HeartbeatRequest {
            group_id: "g".into(),
            topics: vec!["t".into()],
            ..Default::default()
        })
    };
    assert_eq!(hb().await.unwrap().member_id, "m-g");
    let hb_nodes = |c: &Shared| -> Vec<u32> {
        c.lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(_, call)| *call == "heartbeat")
            .map(|(n, _)| *n)
            .collect()
    };
    assert_eq!(hb_nodes(&c), [2], "found the coordinator first");
    // The coordinator moves to node 1: node 2 redirects, the client follows.
    c.lock().unwrap().coordinator = 1;
    hb().await.unwrap();
    assert_eq!(hb_nodes(&c), [2, 2, 1]);
    assert_eq!(client.coordinator_of("g").await.unwrap().node_id, 1);
}

#[tokio::test]
async fn one_node_is_used_where_it_was_reached() {
    // A single node advertising an address nobody can dial (its bind address with port 0):
    // the client keeps using the connection it made.
    let c = cluster(1, 1, false);
    let addrs = start(1, c.clone(), Some("127.0.0.1:0")).await;
    let client = Client::connect(&addrs[0]).await.unwrap();
    produce(&client).await.unwrap();
    produce(&client).await.unwrap();
    assert_eq!(produces(&c), [1, 1]);
    assert_eq!(c.lock().unwrap().describes, 1, "metadata fetched once");
}

#[tokio::test]
async fn a_dead_cluster_fails_fast() {
    // Nothing listens there: every attempt and every refresh is refused at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let client = Client::connect_lazy(&addr).unwrap();
    let start = Instant::now();
    let e = produce(&client).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(e.is_retriable(), "{e:?}");
}
