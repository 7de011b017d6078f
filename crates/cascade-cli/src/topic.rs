//! `cascade topic create|list|describe|delete|alter|elect-leader`.

use crate::Common;
use crate::output::{Format, json, table};
use anyhow::{Result, bail};
use cascade_client::proto::TopicDescription;
use cascade_types::TopicConfig;
use clap::Subcommand;
use serde_json::json;

/// Topic administration.
#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        /// Topic name (letters, digits, '.', '_', '-'; at most 249 characters).
        name: String,
        /// Number of partitions.
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (at most the number of brokers).
        #[arg(long, short = 'r', default_value_t = 1)]
        replication_factor: u32,
        /// Topic setting as key=value (repeatable): retention.ms, retention.bytes,
        /// segment.bytes, segment.ms, max.message.bytes, flush (always|interval|never),
        /// flush.ms, min.insync.replicas, index.interval.bytes.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Succeed without error if the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics.
    List {
        /// Include internal topics.
        #[arg(long)]
        internal: bool,
    },
    /// Show a topic's partitions, offsets and settings.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Change a topic's settings or raise its partition count.
    Alter {
        /// Topic name.
        name: String,
        /// Setting to change, key=value (repeatable).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Setting to reset to its default (repeatable).
        #[arg(long = "reset-config", value_name = "KEY")]
        reset: Vec<String>,
        /// New total partition count (can only grow).
        #[arg(long, short = 'p')]
        partitions: Option<u32>,
    },
    /// Elect a leader for a partition none of whose in-sync replicas can lead (their brokers
    /// are down, perhaps for good, or every copy is damaged), giving up whatever only those
    /// replicas held. The controller elects in-sync replicas itself, without loss; this is the
    /// operator's last resort and is refused while an in-sync replica could lead.
    #[command(name = "elect-leader")]
    ElectLeader {
        /// Topic name.
        name: String,
        /// Partition number.
        #[arg(long, short = 'p')]
        partition: u32,
        /// Required: accept that events only the lost in-sync replicas held are gone.
        #[arg(long)]
        unclean: bool,
        /// The node whose replica to elect (default: the eligible replica whose log is
        /// longest; each node is asked).
        #[arg(long)]
        replica: Option<u32>,
    },
}

fn describe_json(t: &TopicDescription) -> serde_json::Value {
    json!({
        "name": t.name,
        "topic_id": t.topic_id,
        "replication_factor": t.replication_factor,
        "internal": t.internal,
        "configs": t.configs,
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch,
            "replicas": p.replicas, "isr": p.isr,
            "eligible_leader_replicas": p.eligible_leader_replicas, "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark, "log_end_offset": p.log_end_offset,
            "size_bytes": p.size_bytes,
        })).collect::<Vec<_>>(),
    })
}

fn print_describe(t: &TopicDescription, format: Format) {
    if format == Format::Json {
        json(&describe_json(t));
        return;
    }
    println!(
        "Topic: {}  id: {}  partitions: {}  replication factor: {}",
        t.name,
        t.topic_id,
        t.partitions.len(),
        t.replication_factor
    );
    let mut configs: Vec<_> = t.configs.iter().collect();
    configs.sort();
    println!(
        "Configs: {}",
        configs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows: Vec<Vec<String>> = t
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.leader.to_string(),
                format!("{:?}", p.replicas),
                format!("{:?}", p.isr),
                format!("{:?}", p.eligible_leader_replicas),
                p.log_start_offset.to_string(),
                p.high_watermark.to_string(),
                p.size_bytes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "ELR",
            "START",
            "HIGH-WATERMARK",
            "BYTES",
        ],
        &rows,
    );
}

/// Runs a topic subcommand.
pub async fn run(cmd: TopicCmd, common: &Common) -> Result<()> {
    let client = common.connect().await?;
    match cmd {
        TopicCmd::Create {
            name,
            partitions,
            replication_factor,
            configs,
            if_not_exists,
        } => {
            let configs = TopicConfig::parse_pairs(&configs)?;
            match client
                .create_topic(&name, partitions, replication_factor, configs)
                .await
            {
                Ok(t) => {
                    if common.output == Format::Json {
                        json(&describe_json(&t));
                    } else {
                        println!("Created topic {name} with {partitions} partition(s).");
                    }
                }
                Err(e)
                    if if_not_exists
                        && e.reason()
                            == Some(cascade_client::proto::ErrorCode::TopicAlreadyExists) =>
                {
                    if common.output == Format::Text {
                        println!("Topic {name} already exists.");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        TopicCmd::List { internal } => {
            let topics = client.list_topics(internal).await?;
            if common.output == Format::Json {
                for t in &topics {
                    json(&json!({"name": t.name, "partitions": t.partitions.len(),
                        "replication_factor": t.replication_factor, "internal": t.internal}));
                }
            } else {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.partitions.len().to_string(),
                            t.replication_factor.to_string(),
                            t.partitions
                                .iter()
                                .map(|p| p.high_watermark)
                                .sum::<u64>()
                                .to_string(),
                        ]
                    })
                    .collect();
                table(&["TOPIC", "PARTITIONS", "REPLICATION", "EVENTS"], &rows);
            }
        }
        TopicCmd::Describe { name } => {
            print_describe(&client.describe_topic(&name).await?, common.output)
        }
        TopicCmd::Delete { name } => {
            client.delete_topic(&name).await?;
            if common.output == Format::Json {
                json(&json!({"deleted": name}));
            } else {
                println!("Deleted topic {name}.");
            }
        }
        TopicCmd::Alter {
            name,
            configs,
            reset,
            partitions,
        } => {
            if configs.is_empty() && reset.is_empty() && partitions.is_none() {
                bail!("nothing to change: give --config, --reset-config or --partitions");
            }
            let mut t = None;
            if let Some(total) = partitions {
                t = Some(client.create_partitions(&name, total).await?);
            }
            if !configs.is_empty() || !reset.is_empty() {
                let set = TopicConfig::parse_pairs(&configs)?;
                t = Some(client.alter_topic_config(&name, set, reset).await?);
            }
            print_describe(&t.expect("something changed"), common.output);
        }
        TopicCmd::ElectLeader {
            name,
            partition,
            unclean,
            replica,
        } => {
            if !unclean {
                bail!(
                    "only unclean elections are asked for, and they lose data: add --unclean to \
                     accept that events only the lost in-sync replicas held are gone (in-sync \
                     replicas are elected by the controller, automatically)"
                );
            }
            let r = client
                .elect_unclean_leader(&name, partition, replica)
                .await?;
            let ends: Vec<serde_json::Value> = r
                .candidates
                .iter()
                .map(|c| json!({"node_id": c.node_id, "log_end_offset": c.known.then_some(c.log_end_offset)}))
                .collect();
            if common.output == Format::Json {
                json(&json!({
                    "topic": name, "partition": partition, "leader": r.leader,
                    "candidates": ends,
                    "described": r.topic.as_ref().map(describe_json),
                }));
            } else {
                let p = r
                    .topic
                    .as_ref()
                    .and_then(|t| t.partitions.iter().find(|p| p.partition == partition));
                println!(
                    "Elected node {} leader of {name}/{partition}{} (unclean: events only the \
                     lost in-sync replicas held are gone).",
                    r.leader,
                    p.map(|p| format!(" at epoch {}", p.leader_epoch))
                        .unwrap_or_default()
                );
                let rows: Vec<Vec<String>> = r
                    .candidates
                    .iter()
                    .map(|c| {
                        vec![
                            c.node_id.to_string(),
                            if c.known {
                                c.log_end_offset.to_string()
                            } else {
                                "no answer".into()
                            },
                        ]
                    })
                    .collect();
                table(&["CANDIDATE", "LOG-END"], &rows);
            }
        }
    }
    Ok(())
}
