//! `cascade group list|describe|reset-offsets|delete`.

use crate::Common;
use crate::output::{Format, json, table};
use anyhow::{Result, bail};
use cascade_client::proto::{OffsetSpec, ResetOffsetsRequest};
use clap::{Args, Subcommand};
use serde_json::json;

/// Consumer group administration.
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List consumer groups.
    List,
    /// Show a group's members, their partitions, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move a group's committed offsets (the group must have no active members).
    ResetOffsets(ResetArgs),
    /// Delete a group with no members, and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

/// Where to move offsets.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Group id.
    pub group: String,
    /// Topic whose offsets move.
    #[arg(long)]
    pub topic: String,
    /// Only these partitions (repeatable; default all).
    #[arg(long = "partition")]
    pub partitions: Vec<u32>,
    /// To the earliest offset.
    #[arg(long, group = "to")]
    pub to_earliest: bool,
    /// To the latest offset.
    #[arg(long, group = "to")]
    pub to_latest: bool,
    /// To this offset (clamped to each partition's range).
    #[arg(long, group = "to")]
    pub to_offset: Option<u64>,
    /// To the first offset at or after this time (ms since the epoch).
    #[arg(long, group = "to")]
    pub to_timestamp: Option<i64>,
    /// Apply the change (without it, only show what would change).
    #[arg(long)]
    pub execute: bool,
}

/// Runs a group subcommand.
pub async fn run(cmd: GroupCmd, common: &Common) -> Result<()> {
    let client = common.connect().await?;
    match cmd {
        GroupCmd::List => {
            let groups = client.list_groups().await?;
            if common.output == Format::Json {
                for g in &groups {
                    json(&json!({"group": g.group_id, "state": g.state, "members": g.members}));
                }
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| vec![g.group_id.clone(), g.state.clone(), g.members.to_string()])
                    .collect();
                table(&["GROUP", "STATE", "MEMBERS"], &rows);
            }
        }
        GroupCmd::Describe { group } => {
            let d = client.describe_group(&group).await?;
            if common.output == Format::Json {
                json(&json!({
                    "group": d.group_id, "state": d.state, "group_epoch": d.group_epoch,
                    "assignor": d.assignor,
                    "members": d.members.iter().map(|m| json!({
                        "member_id": m.member_id, "client_id": m.client_id,
                        "member_epoch": m.member_epoch, "topics": m.topics,
                        "assignment": m.assignment.iter().map(|a| json!({"topic": a.topic, "partitions": a.partitions})).collect::<Vec<_>>(),
                        "last_heartbeat_ms_ago": m.last_heartbeat_ms_ago,
                    })).collect::<Vec<_>>(),
                    "lag": d.lag.iter().map(|l| json!({
                        "topic": l.topic, "partition": l.partition,
                        "committed_offset": l.committed_offset, "high_watermark": l.high_watermark,
                        "lag": l.lag, "owner": l.owner,
                    })).collect::<Vec<_>>(),
                    "total_lag": d.lag.iter().map(|l| l.lag).sum::<u64>(),
                }));
            } else {
                println!(
                    "Group: {}  state: {}  epoch: {}  assignor: {}  members: {}",
                    d.group_id,
                    d.state,
                    d.group_epoch,
                    d.assignor,
                    d.members.len()
                );
                let rows: Vec<Vec<String>> = d
                    .lag
                    .iter()
                    .map(|l| {
                        vec![
                            l.topic.clone(),
                            l.partition.to_string(),
                            l.committed_offset.map_or("-".into(), |o| o.to_string()),
                            l.high_watermark.to_string(),
                            l.lag.to_string(),
                            if l.owner.is_empty() {
                                "-".into()
                            } else {
                                l.owner.clone()
                            },
                        ]
                    })
                    .collect();
                table(
                    &[
                        "TOPIC",
                        "PARTITION",
                        "COMMITTED",
                        "HIGH-WATERMARK",
                        "LAG",
                        "OWNER",
                    ],
                    &rows,
                );
            }
        }
        GroupCmd::ResetOffsets(a) => {
            let (spec, offset, ts) = match (a.to_earliest, a.to_latest, a.to_offset, a.to_timestamp)
            {
                (true, _, _, _) => (OffsetSpec::Earliest, None, 0),
                (_, true, _, _) => (OffsetSpec::Latest, None, 0),
                (_, _, Some(o), _) => (OffsetSpec::Earliest, Some(o), 0),
                (_, _, _, Some(t)) => (OffsetSpec::Timestamp, None, t),
                _ => bail!(
                    "say where to: --to-earliest, --to-latest, --to-offset N or --to-timestamp MS"
                ),
            };
            let out = client
                .reset_offsets(ResetOffsetsRequest {
                    group_id: a.group.clone(),
                    topic: a.topic.clone(),
                    partitions: a.partitions.clone(),
                    spec: spec as i32,
                    timestamp_ms: ts,
                    offset,
                    dry_run: !a.execute,
                })
                .await?;
            if common.output == Format::Json {
                for o in &out {
                    json(
                        &json!({"topic": o.topic, "partition": o.partition, "offset": o.offset,
                        "applied": a.execute}),
                    );
                }
            } else {
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .map(|o| {
                        vec![
                            o.topic.clone(),
                            o.partition.to_string(),
                            o.offset.to_string(),
                        ]
                    })
                    .collect();
                table(&["TOPIC", "PARTITION", "NEW-OFFSET"], &rows);
                if !a.execute {
                    println!("(dry run: add --execute to apply)");
                }
            }
        }
        GroupCmd::Delete { group } => {
            client.delete_group(&group).await?;
            if common.output == Format::Json {
                json(&json!({"deleted": group}));
            } else {
                println!("Deleted group {group}.");
            }
        }
    }
    Ok(())
}
