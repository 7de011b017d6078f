//! `cascade.v1.Admin`: topics and cluster description.

use super::observe;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::metadata::{ClusterMetadata, TopicMeta};
use cascade_proto::v1::{self as pb, admin_server::Admin};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Marks a request one node forwarded to the controller, so it is not forwarded again.
const FORWARDED: &str = "cascade-forwarded";

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

/// The state of each replica of `t`'s partition `i` (see `ReplicaStatus` in the API).
fn replica_status(
    broker: &Broker,
    snap: &ClusterMetadata,
    t: &TopicMeta,
    i: u32,
) -> Vec<pb::ReplicaStatus> {
    let a = &t.partitions[i as usize];
    a.replicas
        .iter()
        .map(|&node| {
            let (state, reason) = if snap.brokers.get(&node).is_none_or(|b| b.fenced) {
                ("fenced".to_string(), "its broker is down".to_string())
            } else if let Some(problem) = broker.liveness.problem(node, &t.name, i) {
                problem
            } else if a.isr.contains(&node) {
                ("in-sync".to_string(), String::new())
            } else if a.elr.contains(&node) {
                (
                    "eligible".to_string(),
                    "out of the in-sync set but holding every acknowledged event: may lead if no in-sync replica can".to_string(),
                )
            } else {
                (
                    "catching-up".to_string(),
                    "not eligible to lead until it has caught up".to_string(),
                )
            };
            pb::ReplicaStatus {
                node_id: node,
                state,
                reason,
            }
        })
        .collect()
}

/// Describes a topic with live offsets from this node's partitions.
pub fn describe_topic(broker: &Broker, t: &TopicMeta) -> pb::TopicDescription {
    let snap = broker.metadata().snapshot();
    let handle = broker.topic_handle(&t.name).ok();
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let part = handle.as_ref().and_then(|h| h.partitions.get(&(i as u32)));
            let (start, hw, end, size) = part.map_or((0, 0, 0, 0), |p| {
                let r = p.reader();
                (
                    r.start_offset(),
                    p.high_watermark(),
                    r.end_offset(),
                    r.size_bytes(),
                )
            });
            pb::PartitionDescription {
                partition: i as u32,
                leader: a.leader,
                leader_epoch: a.leader_epoch,
                replicas: a.replicas.clone(),
                isr: a.isr.clone(),
                log_start_offset: start,
                high_watermark: hw,
                log_end_offset: end,
                size_bytes: size,
                replica_status: replica_status(broker, &snap, t, i as u32),
                eligible_leader_replicas: a.elr.clone(),
            }
        })
        .collect();
    pb::TopicDescription {
        name: t.name.clone(),
        topic_id: t.id.clone(),
        replication_factor: t.replication_factor,
        partitions,
        configs: t.config.to_map().into_iter().collect(),
        internal: t.internal,
    }
}

/// Describes the cluster.
pub fn describe_cluster(broker: &Broker, snap: &ClusterMetadata) -> pb::ClusterDescription {
    let topics: Vec<pb::TopicDescription> = snap
        .topics
        .values()
        .map(|t| describe_topic(broker, t))
        .collect();
    let under = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.isr.len() < p.replicas.len())
        .count() as u32;
    let offline = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.leader == 0)
        .count() as u32;
    pb::ClusterDescription {
        cluster_id: snap.cluster_id.clone(),
        controller_id: broker.metadata().controller_id().unwrap_or(0),
        brokers: snap
            .brokers
            .values()
            .map(|b| pb::BrokerDescription {
                node_id: b.node_id,
                grpc_addr: b.grpc_addr.clone(),
                http_addr: b.http_addr.clone(),
                alive: !b.fenced,
            })
            .collect(),
        topics,
        under_replicated_partitions: under,
        offline_partitions: offline,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = req.into_inner();
        observe("create_topic", async {
            let configs: BTreeMap<String, String> = r.configs.into_iter().collect();
            let t = self
                .broker
                .create_topic(
                    &r.name,
                    r.partitions,
                    r.replication_factor,
                    &configs,
                    r.validate_only,
                )
                .await?;
            Ok(describe_topic(&self.broker, &t))
        })
        .await
        .map(Response::new)
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let r = req.into_inner();
        observe("delete_topic", self.broker.delete_topic(&r.name))
            .await
            .map(|_| Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let r = req.into_inner();
        observe("list_topics", async {
            let snap = self.broker.cluster();
            let topics = snap
                .topics
                .values()
                .filter(|t| r.include_internal || !t.internal)
                .map(|t| describe_topic(&self.broker, t))
                .collect();
            Ok(pb::ListTopicsResponse { topics })
        })
        .await
        .map(Response::new)
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = req.into_inner();
        observe("describe_topic", async {
            let snap = self.broker.cluster();
            let t = snap.topic(&r.name)?;
            Ok(describe_topic(&self.broker, t))
        })
        .await
        .map(Response::new)
    }

    async fn create_partitions(
        &self,
        req: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = req.into_inner();
        observe("create_partitions", async {
            let t = self.broker.create_partitions(&r.name, r.total).await?;
            Ok(describe_topic(&self.broker, &t))
        })
        .await
        .map(Response::new)
    }

    async fn alter_topic_config(
        &self,
        req: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let r = req.into_inner();
        observe("alter_topic_config", async {
            if r.set.is_empty() && r.reset.is_empty() {
                return Err(BrokerError::InvalidRequest("nothing to change".into()));
            }
            let set: BTreeMap<String, String> = r.set.into_iter().collect();
            let t = self.broker.alter_config(&r.name, &set, &r.reset).await?;
            Ok(describe_topic(&self.broker, &t))
        })
        .await
        .map(Response::new)
    }

    async fn elect_leader(
        &self,
        req: Request<pb::ElectLeaderRequest>,
    ) -> Result<Response<pb::ElectLeaderResponse>, Status> {
        // Decided on the controller: whether an in-sync replica could still lead comes from
        // heartbeats, and the controller's table is the one its own decisions use (another
        // node may not have heard a broker for a while and would wrongly think it cannot
        // lead). Forwarded once; a node that is not the controller by then decides itself.
        let forwarded = req.metadata().contains_key(FORWARDED);
        let meta = self.broker.metadata();
        if !forwarded
            && !meta.is_controller()
            && let Some(controller) = meta.controller_id()
        {
            let channel = self.broker.peer_channel(controller).map_err(Status::from)?;
            let mut fwd = Request::new(req.into_inner());
            fwd.metadata_mut()
                .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
            return pb::admin_client::AdminClient::new(channel)
                .elect_leader(fwd)
                .await;
        }
        let r = req.into_inner();
        observe("elect_leader", async {
            if !r.unclean {
                return Err(BrokerError::InvalidRequest(
                    "only unclean elections are asked for (set unclean): the controller elects \
                     in-sync replicas itself, automatically and without loss"
                        .into(),
                ));
            }
            let replica = (r.replica != 0).then_some(r.replica);
            let e = self
                .broker
                .elect_unclean_leader(&r.topic, r.partition, replica)
                .await?;
            Ok(pb::ElectLeaderResponse {
                leader: e.leader,
                candidates: e
                    .candidates
                    .iter()
                    .map(|&(node_id, end)| pb::ReplicaEnd {
                        node_id,
                        log_end_offset: end.unwrap_or(0),
                        known: end.is_some(),
                    })
                    .collect(),
                topic: Some(describe_topic(&self.broker, &e.topic)),
            })
        })
        .await
        .map(Response::new)
    }

    async fn describe_cluster(
        &self,
        _req: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::ClusterDescription>, Status> {
        observe("describe_cluster", async {
            Ok(describe_cluster(&self.broker, &self.broker.cluster()))
        })
        .await
        .map(Response::new)
    }
}
