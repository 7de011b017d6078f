//! `cascade cluster status`: nodes (with the controller marked), every partition's leader,
//! leader epoch, replicas and in-sync replicas, flagged when under-replicated (ISR smaller
//! than the replica set) or offline (no leader), then every replica that is not in sync and
//! why (catching up, repairing damage, offline on its node, its broker fenced), and a summary
//! line. `--output json` prints
//! the same facts as one JSON document. The rendering is pure (tested below); `run` only
//! fetches and prints.

use crate::Common;
use crate::output::{Format, format_table, json};
use anyhow::{Result, bail};
use cascade_client::proto as pb;
use clap::Subcommand;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Cluster inspection.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Show the nodes (address, alive, which one is the controller), then every partition's
    /// leader, leader epoch, replicas and in-sync replicas (ISR), flagging under-replicated
    /// partitions (ISR smaller than the replicas) and offline ones (no leader), then each
    /// replica that is not in sync and why (catching up, repairing damage, offline on its
    /// node, broker down), and a summary line with the counts. Any broker answers.
    Status {
        /// Include internal topics (names starting with "__", e.g. committed offsets).
        #[arg(long)]
        internal: bool,
        /// First wait until at least this many nodes are alive (retrying while no broker
        /// answers yet), then show the status; fails after --wait-timeout-secs.
        #[arg(long, value_name = "N")]
        wait_for_nodes: Option<usize>,
        /// How long --wait-for-nodes waits, in seconds.
        #[arg(long, default_value_t = 60, requires = "wait_for_nodes")]
        wait_timeout_secs: u64,
    },
}

/// Runs a cluster subcommand.
pub async fn run(cmd: ClusterCmd, common: &Common) -> Result<()> {
    let ClusterCmd::Status {
        internal,
        wait_for_nodes,
        wait_timeout_secs,
    } = cmd;
    let c = match wait_for_nodes {
        None => common.connect().await?.describe_cluster().await?,
        Some(n) => wait_for(common, n, Duration::from_secs(wait_timeout_secs)).await?,
    };
    if common.output == Format::Json {
        json(&status_json(&c, internal));
    } else {
        print!("{}", status_text(&c, internal));
    }
    Ok(())
}

/// Polls the cluster until `nodes` of its brokers are alive, saying on stderr what it waits
/// for every few seconds; the description once they are.
async fn wait_for(
    common: &Common,
    nodes: usize,
    timeout: Duration,
) -> Result<pb::ClusterDescription> {
    let started = Instant::now();
    let mut said = started;
    let mut client = None;
    loop {
        // Connecting is part of the wait: the nodes may still be starting.
        if client.is_none() {
            client = common.connect().await.ok();
        }
        let seen = match &client {
            Some(c) => match c.describe_cluster().await {
                Ok(d) => {
                    let alive = d.brokers.iter().filter(|b| b.alive).count();
                    if alive >= nodes {
                        return Ok(d);
                    }
                    format!("{alive} alive")
                }
                Err(e) => format!("no answer yet: {e}"),
            },
            None => format!("no broker of {} answers yet", common.brokers),
        };
        if started.elapsed() >= timeout {
            bail!(
                "{nodes} live nodes not seen within {} s ({seen})",
                timeout.as_secs()
            );
        }
        if said.elapsed() >= Duration::from_secs(3) {
            eprintln!("waiting for {nodes} live nodes ({seen})");
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Health of one partition.
fn state(p: &pb::PartitionDescription) -> &'static str {
    if p.leader == 0 {
        "offline"
    } else if p.isr.len() < p.replicas.len() {
        "under-replicated"
    } else {
        "ok"
    }
}

fn partitions(
    c: &pb::ClusterDescription,
    internal: bool,
) -> impl Iterator<Item = (&pb::TopicDescription, &pb::PartitionDescription)> {
    c.topics
        .iter()
        .filter(move |t| internal || !t.internal)
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
}

fn ids(v: &[u32]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The counts shown: from the partitions listed, so they match the table (the server's own
/// counts, which include internal topics, are in the JSON too).
fn counts(c: &pb::ClusterDescription, internal: bool) -> (usize, usize, usize) {
    let mut total = 0;
    let mut under = 0;
    let mut offline = 0;
    for (_, p) in partitions(c, internal) {
        total += 1;
        match state(p) {
            "offline" => offline += 1,
            "under-replicated" => under += 1,
            _ => {}
        }
    }
    (total, under, offline)
}

/// The report for people.
pub fn status_text(c: &pb::ClusterDescription, internal: bool) -> String {
    let mut out = format!("Cluster {}\n\n", c.cluster_id);
    let mut brokers: Vec<&pb::BrokerDescription> = c.brokers.iter().collect();
    brokers.sort_by_key(|b| b.node_id);
    let rows: Vec<Vec<String>> = brokers
        .iter()
        .map(|b| {
            vec![
                b.node_id.to_string(),
                b.grpc_addr.clone(),
                if b.http_addr.is_empty() {
                    "-".into()
                } else {
                    b.http_addr.clone()
                },
                if b.alive { "yes".into() } else { "NO".into() },
                if b.node_id == c.controller_id {
                    "controller".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    out.push_str(&format_table(
        &["NODE", "GRPC", "HTTP", "ALIVE", "ROLE"],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = partitions(c, internal)
        .map(|(t, p)| {
            vec![
                t.name.clone(),
                p.partition.to_string(),
                if p.leader == 0 {
                    "none".into()
                } else {
                    p.leader.to_string()
                },
                p.leader_epoch.to_string(),
                ids(&p.replicas),
                ids(&p.isr),
                state(p).into(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("No topics.\n");
    } else {
        out.push_str(&format_table(
            &[
                "TOPIC",
                "PARTITION",
                "LEADER",
                "EPOCH",
                "REPLICAS",
                "ISR",
                "STATE",
            ],
            &rows,
        ));
    }
    // Every replica that is not in sync, and why: the ones that cannot lead.
    let notes: Vec<Vec<String>> = partitions(c, internal)
        .flat_map(|(t, p)| {
            p.replica_status
                .iter()
                .filter(|r| r.state != "in-sync")
                .map(move |r| {
                    vec![
                        t.name.clone(),
                        p.partition.to_string(),
                        r.node_id.to_string(),
                        r.state.clone(),
                        r.reason.clone(),
                    ]
                })
        })
        .collect();
    if !notes.is_empty() {
        out.push_str(
            "
Replicas not in sync (not eligible to lead):
",
        );
        out.push_str(&format_table(
            &["TOPIC", "PARTITION", "NODE", "STATE", "WHY"],
            &notes,
        ));
    }
    let (total, under, offline) = counts(c, internal);
    let alive = c.brokers.iter().filter(|b| b.alive).count();
    out.push_str(&format!(
        "\n{alive}/{} nodes alive, controller: {}\n\
         Partitions: {total}  Under-replicated partitions: {under}  Offline partitions: {offline}\n",
        c.brokers.len(),
        if c.controller_id == 0 {
            "none".to_string()
        } else {
            format!("node {}", c.controller_id)
        },
    ));
    out
}

/// The report for programs: one document.
pub fn status_json(c: &pb::ClusterDescription, internal: bool) -> Value {
    let (total, under, offline) = counts(c, internal);
    json!({
        "cluster_id": c.cluster_id,
        "controller_id": c.controller_id,
        "brokers": c.brokers.iter().map(|b| json!({
            "node_id": b.node_id,
            "grpc_addr": b.grpc_addr,
            "http_addr": b.http_addr,
            "alive": b.alive,
            "controller": b.node_id == c.controller_id,
        })).collect::<Vec<_>>(),
        "partitions": partitions(c, internal).map(|(t, p)| json!({
            "topic": t.name,
            "partition": p.partition,
            "leader": (p.leader != 0).then_some(p.leader),
            "leader_epoch": p.leader_epoch,
            "replicas": p.replicas,
            "isr": p.isr,
            "under_replicated": p.isr.len() < p.replicas.len(),
            "offline": p.leader == 0,
            "high_watermark": p.high_watermark,
            "replica_status": p.replica_status.iter().map(|r| json!({
                "node_id": r.node_id,
                "state": r.state,
                "reason": r.reason,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "summary": {
            "brokers": c.brokers.len(),
            "alive_brokers": c.brokers.iter().filter(|b| b.alive).count(),
            "partitions": total,
            "under_replicated": under,
            "offline": offline,
        },
        "under_replicated_partitions": c.under_replicated_partitions,
        "offline_partitions": c.offline_partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(p: u32, leader: u32, replicas: &[u32], isr: &[u32]) -> pb::PartitionDescription {
        pb::PartitionDescription {
            partition: p,
            leader,
            leader_epoch: 3,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            ..Default::default()
        }
    }

    fn status(node: u32, state: &str, reason: &str) -> pb::ReplicaStatus {
        pb::ReplicaStatus {
            node_id: node,
            state: state.into(),
            reason: reason.into(),
        }
    }

    fn sample() -> pb::ClusterDescription {
        pb::ClusterDescription {
            cluster_id: "abc".into(),
            controller_id: 2,
            brokers: [(2, true), (1, true), (3, false)]
                .into_iter()
                .map(|(n, alive)| pb::BrokerDescription {
                    node_id: n,
                    grpc_addr: format!("10.0.0.{n}:50051"),
                    http_addr: String::new(),
                    alive,
                })
                .collect(),
            topics: vec![
                pb::TopicDescription {
                    name: "orders".into(),
                    partitions: vec![
                        part(0, 1, &[1, 2, 3], &[1, 2, 3]),
                        pb::PartitionDescription {
                            replica_status: vec![
                                status(2, "in-sync", ""),
                                status(3, "offline", "open: Input/output error"),
                                status(1, "in-sync", ""),
                            ],
                            ..part(1, 2, &[2, 3, 1], &[2, 1])
                        },
                        part(2, 0, &[3], &[]),
                    ],
                    ..Default::default()
                },
                pb::TopicDescription {
                    name: "__consumer_offsets".into(),
                    internal: true,
                    partitions: vec![part(0, 2, &[2, 3], &[2])],
                    ..Default::default()
                },
            ],
            under_replicated_partitions: 2,
            offline_partitions: 1,
        }
    }

    #[test]
    fn text_marks_controller_and_flags_partitions() {
        let s = status_text(&sample(), false);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "Cluster abc");
        let node = |id: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(id) && l.contains("10.0.0."))
                .unwrap()
        };
        assert!(node("2 ").ends_with("controller"), "{s}");
        assert!(!node("1 ").contains("controller"), "{s}");
        assert!(node("3 ").contains("NO"), "{s}");
        let row = |p: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(&format!("orders  {p} ")))
                .unwrap_or_else(|| panic!("no row for {p}: {s}"))
        };
        assert!(row("0").ends_with("ok"), "{s}");
        assert!(row("1").ends_with("under-replicated"), "{s}");
        assert!(row("1").contains("2,3,1"), "{s}");
        assert!(row("2").contains("none"), "{s}");
        assert!(row("2").ends_with("offline"), "{s}");
        assert!(!s.contains("__consumer_offsets"), "internal hidden: {s}");
        // The replica that cannot lead, and why; in-sync ones are not listed.
        let note = lines
            .iter()
            .skip_while(|l| !l.starts_with("Replicas not in sync"))
            .find(|l| l.starts_with("orders"))
            .unwrap_or_else(|| panic!("no replica notes: {s}"));
        assert!(note.contains(" 3 ") && note.contains("offline"), "{s}");
        assert!(note.ends_with("open: Input/output error"), "{s}");
        assert!(s.contains("\n2/3 nodes alive, controller: node 2\n"), "{s}");
        assert!(
            s.trim_end()
                .ends_with("Partitions: 3  Under-replicated partitions: 1  Offline partitions: 1"),
            "{s}"
        );
        let with_internal = status_text(&sample(), true);
        assert!(with_internal.contains("__consumer_offsets"));
        assert!(
            with_internal
                .contains("Partitions: 4  Under-replicated partitions: 2  Offline partitions: 1")
        );
    }

    #[test]
    fn json_has_the_same_facts() {
        let v = status_json(&sample(), false);
        assert_eq!(v["controller_id"], 2);
        let controllers: Vec<&Value> = v["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["controller"] == true)
            .collect();
        assert_eq!(controllers.len(), 1);
        assert_eq!(controllers[0]["node_id"], 2);
        let parts = v["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1]["under_replicated"], true);
        assert_eq!(parts[1]["leader_epoch"], 3);
        assert_eq!(parts[1]["replica_status"][1]["state"], "offline");
        assert_eq!(parts[1]["replica_status"][1]["node_id"], 3);
        assert_eq!(parts[2]["offline"], true);
        assert_eq!(parts[2]["leader"], Value::Null);
        assert_eq!(v["summary"]["under_replicated"], 1);
        assert_eq!(v["summary"]["offline"], 1);
        assert_eq!(v["summary"]["alive_brokers"], 2);
    }

    #[test]
    fn empty_cluster() {
        let c = pb::ClusterDescription {
            cluster_id: "x".into(),
            controller_id: 1,
            brokers: vec![pb::BrokerDescription {
                node_id: 1,
                grpc_addr: "127.0.0.1:50051".into(),
                http_addr: "127.0.0.1:8082".into(),
                alive: true,
            }],
            ..Default::default()
        };
        let s = status_text(&c, false);
        assert!(s.contains("No topics."), "{s}");
        assert!(s.contains("1/1 nodes alive, controller: node 1\n"), "{s}");
        assert!(
            s.contains("Partitions: 0  Under-replicated partitions: 0"),
            "{s}"
        );
    }
}
