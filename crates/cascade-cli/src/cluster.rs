//! `cascade cluster status`: nodes, controller, partition leaders and health.

use crate::Common;
use crate::output::{Format, json, table};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

/// Cluster inspection.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Show nodes, the controller, every partition's leader, replicas and in-sync replicas, and
    /// under-replicated or offline partitions.
    Status {
        /// Include internal topics.
        #[arg(long)]
        internal: bool,
    },
}

/// Runs a cluster subcommand.
pub async fn run(cmd: ClusterCmd, common: &Common) -> Result<()> {
    let ClusterCmd::Status { internal } = cmd;
    let client = common.connect().await?;
    let c = client.describe_cluster().await?;
    let topics: Vec<_> = c
        .topics
        .iter()
        .filter(|t| internal || !t.internal)
        .collect();
    if common.output == Format::Json {
        json(&json!({
            "cluster_id": c.cluster_id,
            "controller_id": c.controller_id,
            "brokers": c.brokers.iter().map(|b| json!({"node_id": b.node_id,
                "grpc_addr": b.grpc_addr, "http_addr": b.http_addr, "alive": b.alive})).collect::<Vec<_>>(),
            "partitions": topics.iter().flat_map(|t| t.partitions.iter().map(move |p| json!({
                "topic": t.name, "partition": p.partition, "leader": p.leader,
                "leader_epoch": p.leader_epoch, "replicas": p.replicas, "isr": p.isr,
                "under_replicated": p.isr.len() < p.replicas.len(),
                "high_watermark": p.high_watermark,
            }))).collect::<Vec<_>>(),
            "under_replicated_partitions": c.under_replicated_partitions,
            "offline_partitions": c.offline_partitions,
        }));
        return Ok(());
    }
    println!(
        "Cluster {}  controller: node {}",
        c.cluster_id, c.controller_id
    );
    let rows: Vec<Vec<String>> = c
        .brokers
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
                if b.alive { "up".into() } else { "down".into() },
            ]
        })
        .collect();
    table(&["NODE", "GRPC", "HTTP", "STATUS"], &rows);
    println!();
    let rows: Vec<Vec<String>> = topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                vec![
                    t.name.clone(),
                    p.partition.to_string(),
                    p.leader.to_string(),
                    format!("{:?}", p.replicas),
                    format!("{:?}", p.isr),
                    if p.isr.len() < p.replicas.len() {
                        "under-replicated".into()
                    } else {
                        "ok".into()
                    },
                ]
            })
        })
        .collect();
    table(
        &["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR", "STATE"],
        &rows,
    );
    println!();
    println!(
        "Under-replicated partitions: {}  offline partitions: {}",
        c.under_replicated_partitions, c.offline_partitions
    );
    Ok(())
}
