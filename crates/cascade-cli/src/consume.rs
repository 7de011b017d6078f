//! `cascade consume TOPIC`: events to standard output, one value per line (or one JSON object
//! per line with `--output json`).

use crate::Common;
use crate::output::Format;
use anyhow::{Result, bail};
use cascade_client::proto::OffsetSpec;
use cascade_client::{ConsumedRecord, GroupConfig, GroupConsumer, OffsetReset, PartitionConsumer};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

/// Read events from a topic.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Start at the earliest offset (default: only events that arrive from now on).
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at this offset (with --partition).
    #[arg(long, requires = "partition")]
    pub offset: Option<u64>,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Join this consumer group: share partitions with its other members and commit offsets.
    #[arg(long, conflicts_with_all = ["offset", "partition"])]
    pub group: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Keep waiting for new events (without it, stop at the end of the log). Ctrl-C (or
    /// SIGTERM) stops: what was fetched is printed, a group member commits what it printed and
    /// leaves its group, and the exit status is 0.
    #[arg(long)]
    pub follow: bool,
    /// Print the key before the value, separated by this string (text output).
    #[arg(long)]
    pub key_separator: Option<String>,
    /// In group mode without --follow, stop after this long without events, in ms.
    #[arg(long, default_value_t = 2000)]
    pub idle_ms: u64,
}

fn text(b: &Option<bytes::Bytes>) -> Option<String> {
    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn print(
    out: &mut impl Write,
    r: &ConsumedRecord,
    args: &ConsumeArgs,
    format: Format,
) -> Result<()> {
    match format {
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(text(v))))
                .collect();
            writeln!(
                out,
                "{}",
                json!({"topic": r.topic, "partition": r.partition, "offset": r.offset,
                    "timestamp": r.timestamp_ms, "key": text(&r.key), "value": text(&r.value),
                    "headers": headers})
            )?;
        }
        Format::Text => {
            if let Some(sep) = &args.key_separator {
                write!(out, "{}{sep}", text(&r.key).unwrap_or_default())?;
            }
            writeln!(out, "{}", text(&r.value).unwrap_or_default())?;
        }
    }
    Ok(())
}

/// Runs `consume`.
pub async fn run(args: ConsumeArgs, common: &Common) -> Result<()> {
    let client = common.connect().await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let limit = args.max_messages.unwrap_or(u64::MAX);
    let mut seen = 0u64;
    if limit == 0 {
        return Ok(());
    }
    // Checked between polls, never by cancelling one: a poll cut short could have moved a
    // position past records it did not return, and the commit would skip them.
    let mut stop = crate::stop_requested();
    // An unknown topic is an error in group mode too, where the member would otherwise just
    // get no partitions and print nothing.
    let desc = client.describe_topic(&args.topic).await?;
    if let Some(group) = &args.group {
        let mut config = GroupConfig::new(group, &[args.topic.as_str()]);
        config.offset_reset = if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        };
        config.client_id = "cascade-cli".into();
        let mut consumer = GroupConsumer::join(client, config).await?;
        let mut last_data = Instant::now();
        loop {
            let recs = consumer.poll(Duration::from_millis(500)).await?;
            if !recs.is_empty() {
                last_data = Instant::now();
            }
            for (i, r) in recs.iter().enumerate() {
                print(&mut out, r, &args, common.output)?;
                seen += 1;
                if seen >= limit {
                    // Rewind every partition to its first record not printed, so the commit
                    // below covers exactly what was printed.
                    for u in recs[i + 1..].iter().rev() {
                        consumer.seek(&u.topic, u.partition, u.offset);
                    }
                    break;
                }
            }
            out.flush()?;
            if seen >= limit
                || *stop.borrow()
                || (!args.follow && last_data.elapsed() >= Duration::from_millis(args.idle_ms))
            {
                break;
            }
        }
        // Commit exactly what was printed: the positions past the last printed records.
        consumer.commit().await?;
        consumer.close().await?;
        return Ok(());
    }
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p as usize >= desc.partitions.len() => {
            bail!(
                "topic {} has {} partitions, no partition {p}",
                args.topic,
                desc.partitions.len()
            )
        }
        Some(p) => vec![p],
        None => (0..desc.partitions.len() as u32).collect(),
    };
    let spec = if args.from_beginning {
        OffsetSpec::Earliest
    } else {
        OffsetSpec::Latest
    };
    let starts = client
        .list_offsets(&args.topic, partitions.clone(), spec, 0)
        .await?;
    let ends = client
        .list_offsets(&args.topic, partitions.clone(), OffsetSpec::Latest, 0)
        .await?;
    if let (Some(o), Some(p)) = (args.offset, args.partition) {
        let earliest = client
            .list_offsets(&args.topic, vec![p], OffsetSpec::Earliest, 0)
            .await?;
        let start = earliest.first().map_or(0, |e| e.offset);
        let end = ends.first().map_or(0, |e| e.offset);
        if o < start || o > end {
            bail!(
                "offset {o} is out of range for {}/{p}: valid offsets are [{start}, {end}]",
                args.topic
            );
        }
    }
    let mut consumers: Vec<(PartitionConsumer, u64)> = partitions
        .iter()
        .map(|&p| {
            let start = match args.offset {
                Some(o) => o,
                None => starts
                    .iter()
                    .find(|o| o.partition == p)
                    .map_or(0, |o| o.offset),
            };
            let end = ends
                .iter()
                .find(|o| o.partition == p)
                .map_or(0, |o| o.offset);
            (
                PartitionConsumer::new(client.clone(), &args.topic, p, start),
                end,
            )
        })
        .collect();
    loop {
        let mut progressed = false;
        for (c, end) in consumers.iter_mut() {
            if !args.follow && c.position() >= *end {
                continue;
            }
            let wait = if args.follow && consumers_len_one(args.partition) {
                Duration::from_millis(500)
            } else {
                Duration::ZERO
            };
            let recs = c.poll(wait).await?;
            progressed |= !recs.is_empty();
            for r in &recs {
                if !args.follow && r.offset >= *end {
                    break;
                }
                print(&mut out, r, &args, common.output)?;
                seen += 1;
                if seen >= limit {
                    out.flush()?;
                    return Ok(());
                }
            }
        }
        out.flush()?;
        if *stop.borrow() || !args.follow && consumers.iter().all(|(c, end)| c.position() >= *end) {
            return Ok(());
        }
        if !progressed {
            let idle = Duration::from_millis(if args.follow { 100 } else { 10 });
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

fn consumers_len_one(partition: Option<u32>) -> bool {
    partition.is_some()
}
