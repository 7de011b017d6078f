//! Cluster formation: how a node with no cluster state becomes a member.
//!
//! Every node may start with the same seed list (itself included, as every pod of a
//! Kubernetes StatefulSet gets), in any order and at any time. A node with no cluster state:
//! - with no seeds, bootstraps a cluster of its own (a single node, or the first of a cluster
//!   whose other nodes name it as their seed);
//! - with seeds, asks each who it is ([`Identify`](cascade_proto::internal::IdentifyRequest)).
//!   If one is a member of a cluster, it joins that cluster through it. If none is, the node
//!   with the **lowest id** bootstraps, and only once **every** seed has answered: a seed that
//!   does not answer may be a member, or may have a lower id, so two nodes that cannot see
//!   every seed never both bootstrap. The others keep asking until the lowest has formed the
//!   cluster, and join it.
//!
//! Exactly one cluster forms from one seed list: only the node whose id is below every other
//! seed's bootstraps, and it has seen that no seed belongs to a cluster yet. A node that
//! already holds cluster state never runs this (it rejoins from its state). Two processes
//! claiming the same node id are told apart by their incarnations (random per start), and
//! stop the formation with an error in the log until one is fixed.

use crate::broker::Broker;
use cascade_proto::internal::controller_client::ControllerClient;
use cascade_proto::internal::{IdentifyRequest, IdentifyResponse};
use std::sync::Arc;
use std::time::Duration;

/// What a node with no cluster state does next, given what each seed answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Join through these seeds: they belong to a cluster.
    Join(Vec<String>),
    /// Form the cluster: this node has the lowest id and no seed belongs to one.
    Bootstrap,
    /// Ask again later; why, for the log.
    Wait(String),
}

/// The decision (pure): `me` and `incarnation` are this node's, `answers` each seed's address
/// with its answer (None: it did not answer).
pub(crate) fn decide(
    me: u32,
    incarnation: u64,
    answers: &[(String, Option<IdentifyResponse>)],
) -> Step {
    let members: Vec<String> = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_some_and(|a| a.member))
        .map(|(addr, _)| addr.clone())
        .collect();
    if !members.is_empty() {
        return Step::Join(members);
    }
    if let Some((addr, _)) = answers.iter().find(|(_, a)| {
        a.as_ref()
            .is_some_and(|a| a.node_id == me && a.incarnation != incarnation)
    }) {
        return Step::Wait(format!(
            "the seed at {addr} is another process with this node's id ({me}): give every node its own id"
        ));
    }
    let silent: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(addr, _)| addr.as_str())
        .collect();
    if !silent.is_empty() {
        return Step::Wait(format!(
            "waiting for every seed to answer before forming the cluster (silent: {})",
            silent.join(", ")
        ));
    }
    let lowest = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().map(|a| a.node_id))
        .filter(|&id| id != me)
        .min();
    match lowest {
        Some(id) if id < me => Step::Wait(format!(
            "node {id}, the lowest id among the seeds, forms the cluster; this node joins it then"
        )),
        _ => Step::Bootstrap,
    }
}

/// What the seed at `addr` says it is (None: no answer within 2 s).
async fn identify(addr: &str) -> Option<IdentifyResponse> {
    let channel = crate::raft::network::channel(addr).ok()?;
    let mut req = tonic::Request::new(IdentifyRequest {});
    req.set_timeout(Duration::from_secs(2));
    ControllerClient::new(channel)
        .identify(req)
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Makes this node (no cluster state, `seeds` not empty) a member: joins the cluster the
/// seeds belong to, or forms it (see the module docs). Returns once it is a member;
/// `bootstrap` forms a new cluster with this node alone.
pub(crate) async fn join_or_form<F, Fut>(
    b: &Arc<Broker>,
    seeds: &[String],
    bootstrap: F,
) -> crate::error::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<()>>,
{
    let me = b.config().node_id;
    let mut rounds = 0u32;
    loop {
        let answers: Vec<(String, Option<IdentifyResponse>)> = futures::future::join_all(
            seeds
                .iter()
                .map(|s| async move { (s.clone(), identify(s).await) }),
        )
        .await;
        let log = rounds.is_multiple_of(10);
        match decide(me, b.incarnation(), &answers) {
            Step::Join(members) => {
                if crate::controller::join_once(b, &members, log).await {
                    return Ok(());
                }
            }
            Step::Bootstrap => {
                tracing::info!(
                    node = me,
                    seeds = seeds.len(),
                    "every seed answered, none belongs to a cluster, and this node has the lowest id: forming the cluster"
                );
                return bootstrap().await;
            }
            Step::Wait(why) if log => tracing::info!(node = me, "{why}"),
            Step::Wait(_) => {}
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, member: bool) -> Option<IdentifyResponse> {
        Some(IdentifyResponse {
            node_id: id,
            member,
            cluster_id: String::new(),
            incarnation: u64::from(id) * 100,
        })
    }

    fn seeds(answers: Vec<Option<IdentifyResponse>>) -> Vec<(String, Option<IdentifyResponse>)> {
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| (format!("cascade-{i}:50051"), a))
            .collect()
    }

    /// Three nodes with the same seed list (themselves included): only node 1 forms the
    /// cluster, and only once every seed has answered; the others wait for it, then join.
    #[test]
    fn the_lowest_id_forms_the_cluster_once_every_seed_answers() {
        let all = seeds(vec![node(1, false), node(2, false), node(3, false)]);
        assert_eq!(decide(1, 100, &all), Step::Bootstrap);
        assert!(matches!(decide(2, 200, &all), Step::Wait(w) if w.contains("node 1")));
        assert!(matches!(decide(3, 300, &all), Step::Wait(_)));
        // A silent seed might be a member or have a lower id: nobody forms.
        let partial = seeds(vec![node(1, false), node(2, false), None]);
        assert!(matches!(decide(1, 100, &partial), Step::Wait(w) if w.contains("cascade-2")));
        // Once node 1 is a member, the others join through it, whoever else is silent.
        let formed = seeds(vec![node(1, true), None, node(3, false)]);
        assert_eq!(
            decide(2, 200, &formed),
            Step::Join(vec!["cascade-0:50051".into()])
        );
        // A node that lost its state while the others are members joins them, even with the
        // lowest id.
        let rest = seeds(vec![node(1, false), node(2, true), node(3, true)]);
        assert!(matches!(decide(1, 100, &rest), Step::Join(m) if m.len() == 2));
        // Alone in its seed list (a one-node StatefulSet): it forms.
        assert_eq!(
            decide(1, 100, &seeds(vec![node(1, false)])),
            Step::Bootstrap
        );
        // Seeds not naming itself: the lowest id still decides.
        assert_eq!(
            decide(1, 100, &seeds(vec![node(2, false)])),
            Step::Bootstrap
        );
        assert!(matches!(
            decide(3, 300, &seeds(vec![node(2, false)])),
            Step::Wait(_)
        ));
    }

    /// Another process with this node's id never lets it form (two would believe they are
    /// the lowest).
    #[test]
    fn a_duplicate_node_id_stops_the_formation() {
        let mut dup = node(1, false);
        dup.as_mut().unwrap().incarnation = 999;
        let answers = seeds(vec![node(1, false), dup, node(2, false)]);
        assert!(matches!(decide(1, 100, &answers), Step::Wait(w) if w.contains("its own id")));
    }
}
