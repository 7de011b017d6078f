//! [`ClusterMetadata`]: the client's cached view of the cluster (brokers, partition leaders,
//! group coordinators' addresses) and the pure routing decisions made from it: which node a
//! request for a partition goes to. The cache itself (refresh, single flight) lives in
//! [`crate::Client`].

use cascade_proto::LeaderHint;
use cascade_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// A broker as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub node_id: u32,
    /// The gRPC address it advertises.
    pub grpc_addr: String,
    /// Whether the controller sees it alive.
    pub alive: bool,
}

/// One partition's replication state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// Leader node id; 0 while the partition has no leader.
    pub leader: u32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Assigned replicas.
    pub replicas: Vec<u32>,
    /// In-sync replicas.
    pub isr: Vec<u32>,
}

/// A snapshot of the cluster's metadata, from `Admin.DescribeCluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Cluster id.
    pub cluster_id: String,
    /// The controller's node id.
    pub controller_id: u32,
    /// Brokers by node id.
    pub brokers: BTreeMap<u32, BrokerInfo>,
    /// Partitions of every topic, by topic, indexed by partition number.
    pub topics: HashMap<String, Vec<PartitionInfo>>,
    /// The address that answered, when it was not the client's bootstrap connection (None).
    /// A one-broker cluster is reached there whatever it advertises.
    pub(crate) answered_by: Option<String>,
}

/// Where to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// To this node at this address.
    Node(u32, String),
    /// Through the bootstrap connection (the node the client reached first): when the cluster
    /// has one node, or the target is unknown (the node answers or redirects).
    Bootstrap,
}

impl ClusterMetadata {
    /// Builds the snapshot from a `DescribeCluster` answer.
    pub fn from_description(d: &pb::ClusterDescription) -> Self {
        Self {
            cluster_id: d.cluster_id.clone(),
            controller_id: d.controller_id,
            brokers: d
                .brokers
                .iter()
                .map(|b| {
                    (
                        b.node_id,
                        BrokerInfo {
                            node_id: b.node_id,
                            grpc_addr: b.grpc_addr.clone(),
                            alive: b.alive,
                        },
                    )
                })
                .collect(),
            topics: d
                .topics
                .iter()
                .map(|t| {
                    let mut parts: Vec<PartitionInfo> = t
                        .partitions
                        .iter()
                        .map(|p| PartitionInfo {
                            partition: p.partition,
                            leader: p.leader,
                            leader_epoch: p.leader_epoch,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                        })
                        .collect();
                    parts.sort_by_key(|p| p.partition);
                    (t.name.clone(), parts)
                })
                .collect(),
            answered_by: None,
        }
    }

    /// A partition's state, if the topic and partition are known.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionInfo> {
        let parts = self.topics.get(topic)?;
        parts
            .get(partition as usize)
            .filter(|p| p.partition == partition)
            .or_else(|| parts.iter().find(|p| p.partition == partition))
    }

    /// The partition's leader, if it has one and its address is known.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<&BrokerInfo> {
        let p = self.partition(topic, partition)?;
        self.brokers.get(&p.leader).filter(|_| p.leader != 0)
    }

    /// Number of partitions of a known topic.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|p| p.len() as u32)
    }

    /// True when every request can go to the one node there is.
    pub(crate) fn single_node(&self) -> bool {
        self.brokers.len() <= 1
    }

    /// Where a request for `topic`/`partition` goes.
    pub(crate) fn route_partition(&self, topic: &str, partition: u32) -> Route {
        if self.single_node() {
            return self.only_node();
        }
        match self.leader(topic, partition) {
            Some(b) if usable_addr(&b.grpc_addr) => Route::Node(b.node_id, b.grpc_addr.clone()),
            // Unknown topic, no leader right now, or an address we cannot dial: let the node
            // we know answer (it redirects, or says why not).
            _ => Route::Bootstrap,
        }
    }

    /// Where a request for a node known by a hint goes.
    pub(crate) fn route_node(&self, hint: &LeaderHint) -> Route {
        if self.single_node() && self.brokers.contains_key(&hint.node_id) {
            return self.only_node();
        }
        if usable_addr(&hint.grpc_addr) {
            Route::Node(hint.node_id, hint.grpc_addr.clone())
        } else {
            match self.brokers.get(&hint.node_id) {
                Some(b) if usable_addr(&b.grpc_addr) => Route::Node(b.node_id, b.grpc_addr.clone()),
                _ => Route::Bootstrap,
            }
        }
    }

    /// Where a request any node can answer goes.
    pub(crate) fn route_any(&self) -> Route {
        if self.single_node() {
            self.only_node()
        } else {
            Route::Bootstrap
        }
    }

    fn only_node(&self) -> Route {
        match (&self.answered_by, self.brokers.values().next()) {
            (Some(addr), Some(b)) => Route::Node(b.node_id, addr.clone()),
            _ => Route::Bootstrap,
        }
    }

    /// Records what a `NOT_LEADER` hint says: `node` leads the partition now.
    pub(crate) fn apply_leader_hint(&mut self, topic: &str, partition: u32, hint: &LeaderHint) {
        self.learn_broker(hint);
        if let Some(parts) = self.topics.get_mut(topic)
            && let Some(p) = parts.iter_mut().find(|p| p.partition == partition)
        {
            p.leader = hint.node_id;
        }
    }

    /// Adds a broker named by a hint if the snapshot does not know it yet.
    pub(crate) fn learn_broker(&mut self, hint: &LeaderHint) {
        if usable_addr(&hint.grpc_addr) {
            self.brokers
                .entry(hint.node_id)
                .or_insert_with(|| BrokerInfo {
                    node_id: hint.node_id,
                    grpc_addr: hint.grpc_addr.clone(),
                    alive: true,
                });
        }
    }

    /// Addresses of the brokers believed alive, for requests any node can answer.
    pub(crate) fn alive_addrs(&self) -> Vec<String> {
        self.brokers
            .values()
            .filter(|b| b.alive && usable_addr(&b.grpc_addr))
            .map(|b| b.grpc_addr.clone())
            .collect()
    }
}

/// Whether a client can dial `addr`: not empty, not port 0, not an unspecified IP (a node
/// that advertises its bind address `0.0.0.0:50051` or `127.0.0.1:0` cannot be reached there).
pub(crate) fn usable_addr(addr: &str) -> bool {
    let addr = addr.split_once("://").map_or(addr, |(_, a)| a);
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.port() != 0 && !sa.ip().is_unspecified();
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(p: u32, leader: u32, replicas: &[u32], isr: &[u32]) -> pb::PartitionDescription {
        pb::PartitionDescription {
            partition: p,
            leader,
            leader_epoch: 4,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            ..Default::default()
        }
    }

    fn three_nodes() -> ClusterMetadata {
        ClusterMetadata::from_description(&pb::ClusterDescription {
            cluster_id: "c".into(),
            controller_id: 1,
            brokers: (1..=3)
                .map(|n| pb::BrokerDescription {
                    node_id: n,
                    grpc_addr: format!("10.0.0.{n}:50051"),
                    http_addr: String::new(),
                    alive: n != 3,
                })
                .collect(),
            topics: vec![pb::TopicDescription {
                name: "orders".into(),
                partitions: vec![
                    part(1, 2, &[2, 3, 1], &[2, 1]),
                    part(0, 1, &[1, 2, 3], &[1, 2, 3]),
                    part(2, 0, &[3, 1, 2], &[3]),
                ],
                ..Default::default()
            }],
            under_replicated_partitions: 2,
            offline_partitions: 1,
        })
    }

    #[test]
    fn routes_to_the_leader() {
        let m = three_nodes();
        assert_eq!(
            m.route_partition("orders", 0),
            Route::Node(1, "10.0.0.1:50051".into())
        );
        assert_eq!(
            m.route_partition("orders", 1),
            Route::Node(2, "10.0.0.2:50051".into())
        );
        assert_eq!(m.partition("orders", 1).unwrap().leader_epoch, 4);
        assert_eq!(m.partition_count("orders"), Some(3));
    }

    #[test]
    fn no_leader_or_unknown_goes_to_bootstrap() {
        let m = three_nodes();
        assert_eq!(m.route_partition("orders", 2), Route::Bootstrap, "leader 0");
        assert_eq!(m.route_partition("orders", 9), Route::Bootstrap);
        assert_eq!(m.route_partition("nope", 0), Route::Bootstrap);
    }

    #[test]
    fn a_hint_moves_the_leader() {
        let mut m = three_nodes();
        let hint = LeaderHint {
            node_id: 3,
            grpc_addr: "10.0.0.3:50051".into(),
        };
        m.apply_leader_hint("orders", 0, &hint);
        assert_eq!(
            m.route_partition("orders", 0),
            Route::Node(3, hint.grpc_addr)
        );
        // A hint naming a node the snapshot did not know adds it.
        let new = LeaderHint {
            node_id: 7,
            grpc_addr: "10.0.0.7:50051".into(),
        };
        m.apply_leader_hint("orders", 1, &new);
        assert_eq!(
            m.route_partition("orders", 1),
            Route::Node(7, new.grpc_addr)
        );
    }

    #[test]
    fn one_node_is_reached_where_the_client_reached_it() {
        // A single node advertising an address the client cannot use (bind address, port 0,
        // or a container name) still serves everything through the bootstrap connection.
        let mut m = ClusterMetadata::from_description(&pb::ClusterDescription {
            brokers: vec![pb::BrokerDescription {
                node_id: 1,
                grpc_addr: "cascade-0:50051".into(),
                http_addr: String::new(),
                alive: true,
            }],
            topics: vec![pb::TopicDescription {
                name: "t".into(),
                partitions: vec![part(0, 1, &[1], &[1])],
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(m.route_partition("t", 0), Route::Bootstrap);
        assert_eq!(m.route_partition("unknown", 0), Route::Bootstrap);
        m.answered_by = Some("127.0.0.1:9000".into());
        assert_eq!(
            m.route_partition("t", 0),
            Route::Node(1, "127.0.0.1:9000".into())
        );
    }

    #[test]
    fn unusable_addresses() {
        assert!(usable_addr("127.0.0.1:50051"));
        assert!(usable_addr("cascade-1.cascade:50051"));
        assert!(usable_addr("http://[::1]:50051"));
        assert!(!usable_addr("127.0.0.1:0"));
        assert!(!usable_addr("0.0.0.0:50051"));
        assert!(!usable_addr("[::]:50051"));
        assert!(!usable_addr(""));
        assert!(!usable_addr("host"));
        let m = three_nodes();
        assert_eq!(
            m.route_node(&LeaderHint {
                node_id: 2,
                grpc_addr: "0.0.0.0:50051".into()
            }),
            Route::Node(2, "10.0.0.2:50051".into()),
            "a bad hinted address falls back to the known one"
        );
    }

    #[test]
    fn alive_addrs_skip_dead_nodes() {
        assert_eq!(
            three_nodes().alive_addrs(),
            ["10.0.0.1:50051", "10.0.0.2:50051"]
        );
    }
}
