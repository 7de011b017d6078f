//! `cascade produce TOPIC`: one event per line of standard input.

use crate::Common;
use crate::output::{Format, json};
use anyhow::{Context, Result};
use bytes::Bytes;
use cascade_client::{Acks, Producer, ProducerConfig, ProducerRecord};
use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Acknowledgement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// In-sync replicas have it (fsynced under flush=always).
    All,
    /// The leader has it.
    Leader,
    /// Do not wait.
    None,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Self {
        match a {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

/// Produce lines of standard input as events.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Split each line at the first occurrence of this string into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Write every event to this partition (default: by key hash, or sticky without a key).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Acknowledgement level. With `all` (the default) the producer is idempotent: lines are
    /// stored in input order per partition, each exactly once, across retries and failovers.
    /// `leader` and `none` send without a producer id (at least once; order can change when
    /// a request is retried).
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Send without a producer id even with --acks all (at least once, see --acks).
    #[arg(long)]
    pub no_idempotence: bool,
    /// Header added to every event, key=value (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// How long a batch waits for more lines, in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

/// Runs `produce`.
pub async fn run(args: ProduceArgs, common: &Common) -> Result<()> {
    let client = common.connect().await?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once('=')
                .with_context(|| format!("header {h:?} is not key=value"))?;
            Ok((k.to_string(), Some(Bytes::from(v.to_string()))))
        })
        .collect::<Result<_>>()?;
    let producer = Producer::new(
        client,
        &args.topic,
        ProducerConfig {
            acks: args.acks.into(),
            linger: std::time::Duration::from_millis(args.linger_ms),
            idempotence: args.acks == AcksArg::All && !args.no_idempotence,
            ..Default::default()
        },
    )
    .await?;
    if let Some(p) = args.partition
        && p >= producer.partitions()
    {
        anyhow::bail!(
            "topic {} has {} partitions, no partition {p}",
            args.topic,
            producer.partitions()
        );
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut pending = FuturesUnordered::new();
    let mut count = 0u64;
    while let Some(line) = lines.next_line().await? {
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                None => (None, line),
            },
            None => (None, line),
        };
        pending.push(producer.send(ProducerRecord {
            key,
            value: Some(Bytes::from(value)),
            headers: headers.clone(),
            partition: args.partition,
            timestamp_ms: None,
        }));
        count += 1;
        // Bound memory: settle acknowledgements as they come.
        while pending.len() >= 10_000 {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
    }
    producer.flush().await;
    while let Some(r) = pending.next().await {
        r?;
    }
    if common.output == Format::Json {
        json(&json!({"topic": args.topic, "produced": count}));
    } else {
        eprintln!("Produced {count} event(s) to {}.", args.topic);
    }
    Ok(())
}
