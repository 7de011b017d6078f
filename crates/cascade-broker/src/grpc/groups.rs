//! `cascade.v1.Groups`: consumer group membership and committed offsets.

use super::observe;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::group::{HeartbeatIn, Tp};
use cascade_proto::v1::{self as pb, groups_server::Groups};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Request metadata key asking a node for only the groups it coordinates itself.
const LOCAL_ONLY: &str = "x-cascade-local-only";

/// The Groups service.
#[derive(Debug, Clone)]
pub struct GroupsService {
    broker: Arc<Broker>,
}

impl GroupsService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

/// Groups a set of partitions by topic, for the wire.
pub fn by_topic<'a>(tps: impl IntoIterator<Item = &'a Tp>) -> Vec<pb::TopicPartitions> {
    let mut m: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in tps {
        m.entry(&tp.topic).or_default().push(tp.partition);
    }
    m.into_iter()
        .map(|(t, partitions)| pb::TopicPartitions {
            topic: t.to_string(),
            partitions,
        })
        .collect()
}

fn flatten(tps: Vec<pb::TopicPartitions>) -> Vec<Tp> {
    tps.into_iter()
        .flat_map(|t| {
            let topic = t.topic;
            t.partitions
                .into_iter()
                .map(move |p| Tp::new(topic.clone(), p))
        })
        .collect()
}

fn committed_to_wire(tp: &Tp, c: &crate::group::Committed) -> pb::CommittedOffset {
    pb::CommittedOffset {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset: c.offset,
        metadata: c.metadata.clone(),
        commit_timestamp_ms: c.timestamp_ms,
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        observe("group_heartbeat", async {
            self.broker.own_group(&r.group_id).await?;
            for t in &r.topics {
                cascade_types::validate_topic_name(t)?;
            }
            let out = self.broker.groups().heartbeat(
                &r.group_id,
                HeartbeatIn {
                    member_id: r.member_id,
                    member_epoch: r.member_epoch,
                    topics: r.topics,
                    assignor: r.assignor,
                    session_timeout: Duration::from_millis(u64::from(r.session_timeout_ms)),
                    client_id: r.client_id,
                },
            )?;
            Ok(pb::HeartbeatResponse {
                member_id: out.member_id,
                member_epoch: out.member_epoch,
                heartbeat_interval_ms: out.heartbeat_interval.as_millis() as u32,
                assignment: by_topic(&out.assignment),
            })
        })
        .await
        .map(Response::new)
    }

    async fn commit_offsets(
        &self,
        req: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let r = req.into_inner();
        observe("commit_offsets", async {
            self.broker.own_group(&r.group_id).await?;
            let offsets = r
                .offsets
                .into_iter()
                .map(|o| (Tp::new(o.topic, o.partition), o.offset, o.metadata))
                .collect();
            self.broker
                .groups()
                .commit(&r.group_id, &r.member_id, r.member_epoch, offsets)
                .await?;
            Ok(pb::CommitOffsetsResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn fetch_offsets(
        &self,
        req: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let r = req.into_inner();
        observe("fetch_offsets", async {
            self.broker.own_group(&r.group_id).await?;
            cascade_types::validate_group_id(&r.group_id).map_err(BrokerError::InvalidGroupId)?;
            // Committed offsets are answered from memory: a coordinator deposed while it was
            // paused or cut off would serve offsets older than the new coordinator's, and a
            // consumer starting from them rewinds. The barrier proves it still leads first.
            self.broker.groups().read_barrier(&r.group_id).await?;
            let filter = flatten(r.partitions);
            let offsets = self.broker.groups().fetch_offsets(&r.group_id, &filter);
            Ok(pb::FetchOffsetsResponse {
                offsets: offsets
                    .iter()
                    .map(|(tp, c)| committed_to_wire(tp, c))
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        // Each node knows the groups it coordinates; the node asked gathers the others'
        // (asking them for their own only, so the fan-out stops there).
        let local_only = req.metadata().contains_key(LOCAL_ONLY);
        observe("list_groups", async {
            let mut groups: BTreeMap<String, pb::GroupSummary> = self
                .broker
                .groups()
                .list()
                .into_iter()
                .map(|(group_id, state, members)| {
                    (
                        group_id.clone(),
                        pb::GroupSummary {
                            group_id,
                            state: state.to_string(),
                            members: members as u32,
                        },
                    )
                })
                .collect();
            if !local_only {
                let me = self.broker.config().node_id;
                let snap = self.broker.cluster();
                let asks = snap
                    .brokers
                    .values()
                    .filter(|b| b.node_id != me && !b.fenced)
                    .filter_map(|b| self.broker.peer_channel(b.node_id).ok())
                    .map(|ch| async move {
                        let mut r = Request::new(pb::ListGroupsRequest {});
                        r.metadata_mut()
                            .insert(LOCAL_ONLY, "1".parse().expect("ascii"));
                        r.set_timeout(Duration::from_secs(2));
                        pb::groups_client::GroupsClient::new(ch)
                            .list_groups(r)
                            .await
                    });
                for r in futures::future::join_all(asks).await {
                    match r {
                        Ok(resp) => {
                            for g in resp.into_inner().groups {
                                groups.entry(g.group_id.clone()).or_insert(g);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "listing a peer's groups"),
                    }
                }
            }
            Ok(pb::ListGroupsResponse {
                groups: groups.into_values().collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn describe_group(
        &self,
        req: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        let r = req.into_inner();
        observe("describe_group", async {
            self.broker.own_group(&r.group_id).await?;
            self.broker.groups().read_barrier(&r.group_id).await?;
            let view = self.broker.groups().describe(&r.group_id)?;
            let g = &view.group;
            let now = std::time::Instant::now();
            let mut owners = BTreeMap::new();
            for m in g.members.values() {
                for tp in &m.sent {
                    owners.insert(tp.clone(), m.id.clone());
                }
            }
            let lag = self
                .broker
                .group_lag(&g.subscribed_topics(), &view.offsets, &owners)
                .into_iter()
                .map(|l| pb::PartitionLag {
                    topic: l.tp.topic,
                    partition: l.tp.partition,
                    committed_offset: l.committed,
                    high_watermark: l.high_watermark,
                    lag: l.lag,
                    owner: l.owner.unwrap_or_default(),
                })
                .collect();
            Ok(pb::GroupDescription {
                group_id: g.id.clone(),
                state: g.state().to_string(),
                group_epoch: g.epoch,
                assignor: g.assignor.name().to_string(),
                members: g
                    .members
                    .values()
                    .map(|m| pb::MemberDescription {
                        member_id: m.id.clone(),
                        client_id: m.client_id.clone(),
                        member_epoch: m.epoch,
                        topics: m.topics.clone(),
                        assignment: by_topic(&m.sent),
                        last_heartbeat_ms_ago: now
                            .saturating_duration_since(m.last_seen)
                            .as_millis() as u64,
                    })
                    .collect(),
                lag,
            })
        })
        .await
        .map(Response::new)
    }

    async fn reset_offsets(
        &self,
        req: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let r = req.into_inner();
        observe("reset_offsets", async {
            self.broker.own_group(&r.group_id).await?;
            cascade_types::validate_group_id(&r.group_id).map_err(BrokerError::InvalidGroupId)?;
            if let Ok(view) = self.broker.groups().describe(&r.group_id)
                && !view.group.members.is_empty()
            {
                return Err(BrokerError::GroupNotEmpty(r.group_id.clone()));
            }
            let count = self.broker.partition_count(&r.topic)?;
            let partitions: BTreeSet<u32> = if r.partitions.is_empty() {
                (0..count).collect()
            } else {
                r.partitions.iter().copied().collect()
            };
            let spec = pb::OffsetSpec::try_from(r.spec).map_err(|_| {
                BrokerError::InvalidRequest(format!("unknown offset spec {}", r.spec))
            })?;
            let mut out = Vec::new();
            for p in partitions {
                let part = self.broker.partition(&r.topic, p)?;
                let (start, hw) = (part.reader().start_offset(), part.high_watermark());
                let offset = match (r.offset, spec) {
                    (Some(o), _) => o.clamp(start, hw),
                    (None, pb::OffsetSpec::Earliest) => start,
                    (None, pb::OffsetSpec::Latest) => hw,
                    (None, pb::OffsetSpec::Timestamp) => part
                        .reader()
                        .offset_for_timestamp(r.timestamp_ms)?
                        .map_or(hw, |o| o.min(hw)),
                };
                out.push((Tp::new(r.topic.clone(), p), offset, String::new()));
            }
            if !r.dry_run {
                self.broker
                    .groups()
                    .commit(&r.group_id, "", -1, out.clone())
                    .await?;
            }
            Ok(pb::ResetOffsetsResponse {
                offsets: out
                    .iter()
                    .map(|(tp, o, _)| pb::CommittedOffset {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        offset: *o,
                        metadata: String::new(),
                        commit_timestamp_ms: 0,
                    })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let r = req.into_inner();
        observe("delete_group", async {
            self.broker.own_group(&r.group_id).await?;
            self.broker.groups().delete(&r.group_id).await?;
            Ok(pb::DeleteGroupResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn find_coordinator(
        &self,
        req: Request<pb::FindCoordinatorRequest>,
    ) -> Result<Response<pb::FindCoordinatorResponse>, Status> {
        let r = req.into_inner();
        observe("find_coordinator", async {
            let c = self.broker.coordinator_for(&r.group_id).await?;
            Ok(pb::FindCoordinatorResponse {
                node_id: c.node_id,
                grpc_addr: c.grpc_addr,
            })
        })
        .await
        .map(Response::new)
    }
}
