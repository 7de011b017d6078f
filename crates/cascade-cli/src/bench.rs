//! `cascade bench produce|consume|e2e`: a load generator with a progress bar and a latency
//! histogram. Every run is bounded (a message count), reports throughput (msgs/s, MB/s) and
//! latency percentiles, and prints JSON with `--output json`.
//!
//! - `produce`: N producers, each on its own partition, send pre-encoded batches of `--batch`
//!   records with up to `--in-flight` requests outstanding. Latency is per request, from send
//!   (or, at a fixed `--rate`, from the scheduled send time, so a stalled server cannot hide
//!   its queueing delay) to acknowledgement.
//! - `consume`: one reader per partition fetches everything below the high watermark;
//!   latency is per fetch.
//! - `e2e`: a producer at a fixed rate and a live subscriber; latency is from the producer's
//!   send to the subscriber's receipt of each record.

use crate::Common;
use crate::output::{Format, json};
use anyhow::{Result, bail};
use bytes::Bytes;
use cascade_client::proto::{ErrorCode, OffsetSpec};
use cascade_client::{Acks, Client};
use cascade_record::{BatchBuilder, BatchHeader, Record};
use clap::{Args, Subcommand};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Produce throughput and acknowledgement latency.
    Produce(BenchArgs),
    /// Consume throughput (reads what a produce run left).
    Consume(BenchArgs),
    /// End-to-end latency: produce at a fixed rate while a subscriber reads.
    E2e(BenchArgs),
}

/// Load shape.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Topic (created if missing).
    #[arg(long, default_value = "cascade-bench")]
    pub topic: String,
    /// Partitions of a created topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Concurrent producers, each writing its own partition.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Total messages.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Records per request.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Requests in flight per producer.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Total target rate in messages/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Acknowledgement level: all, leader or none.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// produce: send as idempotent producers (a producer id each, batches numbered in
    /// sequence, at most 5 requests in flight), to measure what idempotence costs. Needs
    /// --acks all.
    #[arg(long)]
    pub idempotent: bool,
    /// flush setting of a created topic: always, interval or never.
    #[arg(long, default_value = "always")]
    pub flush: String,
    /// Delete and recreate the topic first.
    #[arg(long)]
    pub fresh: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// consume: the byte budget of each fetch (whole batches up to about this much). The
    /// default, 1 MiB, is about 1000 events of 1 KiB: the page size the peer benchmarks use.
    #[arg(long, default_value_t = 1 << 20)]
    pub fetch_bytes: u32,
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCmd, common: &Common) -> Result<()> {
    let client = common.connect().await?;
    match cmd {
        BenchCmd::Produce(a) => {
            ensure_topic(&client, &a).await?;
            let r = produce(&client, &a, false).await?;
            report("produce", &a, &r, common.output);
        }
        BenchCmd::Consume(a) => {
            let r = consume(&client, &a).await?;
            report("consume", &a, &r, common.output);
        }
        BenchCmd::E2e(a) => {
            ensure_topic(&client, &a).await?;
            let r = e2e(&client, &a).await?;
            report("e2e", &a, &r, common.output);
        }
    }
    Ok(())
}

/// Measured outcome of a run.
#[derive(Debug)]
pub struct Outcome {
    /// Messages moved.
    pub messages: u64,
    /// Payload bytes moved (values).
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn acks(s: &str) -> Result<Acks> {
    Ok(match s {
        "all" => Acks::All,
        "leader" => Acks::Leader,
        "none" => Acks::None,
        other => bail!("--acks must be all, leader or none, not {other:?}"),
    })
}

async fn ensure_topic(client: &Client, a: &BenchArgs) -> Result<()> {
    if a.fresh {
        match client.delete_topic(&a.topic).await {
            Ok(()) => {}
            Err(e) if e.reason() == Some(ErrorCode::UnknownTopic) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let configs = BTreeMap::from([
        ("flush".to_string(), a.flush.clone()),
        ("max.message.bytes".to_string(), (64u64 << 20).to_string()),
    ]);
    match client
        .create_topic(&a.topic, a.partitions.max(a.producers), 1, configs)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.reason() == Some(ErrorCode::TopicAlreadyExists) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A batch of `n` records of `size` bytes; with `stamp`, each value starts with the send
/// time in ns (for end-to-end latency).
fn make_batch(n: u32, size: usize, stamp: Option<u64>) -> Bytes {
    let mut value = vec![0u8; size];
    for (i, b) in value.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    if let Some(t) = stamp
        && size >= 8
    {
        value[..8].copy_from_slice(&t.to_le_bytes());
    }
    let ts = (now_ns() / 1_000_000) as i64;
    let mut b = BatchBuilder::with_capacity(n as usize * (size + 16) + 64);
    for _ in 0..n {
        b.push(Record {
            timestamp: ts,
            key: None,
            value: Some(&value),
            headers: &[],
        });
    }
    Bytes::from(b.finish())
}

fn progress(total: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} msgs ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Send times for a fixed rate: `count` ticks, the `r`-th due at `start + r * interval`, each
/// delivered (carrying its due time) as soon as it is due. A dedicated thread sleeps between
/// them because tokio's timer has a resolution of 1 ms: on it, requests due every 100 µs leave
/// in bursts up to 1 ms late, and that lateness, an artifact of the load generator, would be
/// counted as latency (about 0.5 ms at the median). The thread ends after the last tick or
/// when the receiver is gone.
fn pacer(
    start: Instant,
    interval: Duration,
    count: u64,
) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for r in 0..count {
            let at = start + interval.mul_f64(r as f64);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
        }
    });
    rx
}

/// The produce load; with `stamp`, values carry send times (used by `e2e`).
async fn produce(client: &Client, a: &BenchArgs, stamp: bool) -> Result<Outcome> {
    if a.batch == 0 || a.producers == 0 || a.in_flight == 0 {
        bail!("--batch, --producers and --in-flight must be > 0");
    }
    let acks = acks(&a.acks)?;
    if a.idempotent && (acks != Acks::All || a.in_flight > 5) {
        bail!("--idempotent needs --acks all and --in-flight 5 or fewer");
    }
    let partitions = client.partition_count(&a.topic).await?;
    let per_producer = a.messages / u64::from(a.producers);
    let requests = per_producer.div_ceil(u64::from(a.batch));
    let total = requests * u64::from(a.batch) * u64::from(a.producers);
    let done = Arc::new(AtomicU64::new(0));
    let pb = progress(total, a.quiet, "producing");
    // Interval between one producer's requests at a fixed rate.
    let interval = (a.rate > 0).then(|| {
        Duration::from_secs_f64(f64::from(a.batch) * f64::from(a.producers) / a.rate as f64)
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.producers {
        let client = client.clone();
        let topic = a.topic.clone();
        let done = done.clone();
        let pb = pb.clone();
        let (batch_n, size, in_flight) = (a.batch, a.size, a.in_flight);
        let partition = i % partitions;
        let mut ticks = interval.map(|iv| pacer(start, iv, requests));
        let identity = match a.idempotent {
            true => Some(client.init_producer_id(None).await?),
            false => None,
        };
        tasks.push(tokio::spawn(async move {
            let fixed = make_batch(batch_n, size, None);
            let mut next_seq = 0i32;
            let mut hist = histogram();
            let mut pending = FuturesUnordered::new();
            for _ in 0..requests {
                let scheduled = match ticks.as_mut() {
                    Some(ticks) => loop {
                        // A request in `pending` is only sent, and its latency only taken,
                        // when `pending` is polled: keep polling it until the send time.
                        tokio::select! {
                            biased;
                            Some((res, lat)) = pending.next(), if !pending.is_empty() => {
                                res?;
                                hist.record(Duration::as_micros(&lat).max(1) as u64).ok();
                                done.fetch_add(u64::from(batch_n), Ordering::Relaxed);
                                pb.inc(u64::from(batch_n));
                            }
                            at = ticks.recv() => break at.expect("the pacer sends one tick per request"),
                        }
                    },
                    None => Instant::now(),
                };
                let mut batch = if stamp {
                    make_batch(batch_n, size, Some(now_ns()))
                } else {
                    fixed.clone()
                };
                if let Some((id, epoch)) = identity {
                    // Numbered as the idempotent producer numbers its batches; the broker
                    // appends them in sequence order (any refusal fails the run).
                    let mut bytes = batch.to_vec();
                    cascade_record::header::set_producer(&mut bytes, id, epoch, next_seq);
                    next_seq += batch_n as i32;
                    batch = Bytes::from(bytes);
                }
                let client = client.clone();
                let topic = topic.clone();
                pending.push(async move {
                    let r = client.produce_batches(&topic, partition, batch, acks).await;
                    (r, scheduled.elapsed())
                });
                while pending.len() >= in_flight {
                    let (r, lat) = pending.next().await.expect("non-empty");
                    r?;
                    hist.record(lat.as_micros().max(1) as u64).ok();
                    done.fetch_add(u64::from(batch_n), Ordering::Relaxed);
                    pb.inc(u64::from(batch_n));
                }
            }
            while let Some((r, lat)) = pending.next().await {
                r?;
                hist.record(lat.as_micros().max(1) as u64).ok();
                pb.inc(u64::from(batch_n));
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut latency = histogram();
    for t in tasks {
        latency.add(t.await??).ok();
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    Ok(Outcome {
        messages: total,
        bytes: total * a.size as u64,
        elapsed,
        latency_us: latency,
    })
}

async fn consume(client: &Client, a: &BenchArgs) -> Result<Outcome> {
    let ends = client
        .list_offsets(&a.topic, vec![], OffsetSpec::Latest, 0)
        .await?;
    let starts = client
        .list_offsets(&a.topic, vec![], OffsetSpec::Earliest, 0)
        .await?;
    let total: u64 = ends
        .iter()
        .map(|e| {
            e.offset
                - starts
                    .iter()
                    .find(|s| s.partition == e.partition)
                    .map_or(0, |s| s.offset)
        })
        .sum();
    let total = total.min(a.messages);
    let pb = progress(total, a.quiet, "consuming");
    let start = Instant::now();
    let per = total.div_ceil(ends.len().max(1) as u64);
    let mut tasks = Vec::new();
    for e in ends {
        let client = client.clone();
        let topic = a.topic.clone();
        let pb = pb.clone();
        let mut offset = starts
            .iter()
            .find(|s| s.partition == e.partition)
            .map_or(0, |s| s.offset);
        let stop = e.offset.min(offset + per);
        let fetch_bytes = a.fetch_bytes;
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut msgs = 0u64;
            let mut bytes = 0u64;
            while offset < stop {
                let t = Instant::now();
                let f = client
                    .fetch(&topic, e.partition, offset, fetch_bytes, Duration::ZERO)
                    .await?;
                hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                if f.batches.is_empty() {
                    break;
                }
                let mut at = 0;
                while at < f.batches.len() {
                    let h = BatchHeader::parse(&f.batches[at..])
                        .map_err(|e| anyhow::anyhow!("bad batch: {e}"))?;
                    at += h.total_len();
                }
                let n = f.next_offset.min(stop) - offset;
                msgs += n;
                bytes += f.batches.len() as u64;
                pb.inc(n);
                offset = f.next_offset;
            }
            Ok::<_, anyhow::Error>((hist, msgs, bytes))
        }));
    }
    let mut latency = histogram();
    let (mut msgs, mut bytes) = (0, 0);
    for t in tasks {
        let (h, m, b) = t.await??;
        latency.add(h).ok();
        msgs += m;
        bytes += b;
    }
    pb.finish_and_clear();
    Ok(Outcome {
        messages: msgs,
        bytes,
        elapsed: start.elapsed(),
        latency_us: latency,
    })
}

async fn e2e(client: &Client, a: &BenchArgs) -> Result<Outcome> {
    if a.size < 8 {
        bail!("e2e needs --size of at least 8 bytes (the send time rides in the value)");
    }
    let partitions = client.partition_count(&a.topic).await?;
    let per_producer =
        (a.messages / u64::from(a.producers)).div_ceil(u64::from(a.batch)) * u64::from(a.batch);
    let mut readers = Vec::new();
    for p in 0..partitions.min(a.producers) {
        let writers = (0..a.producers).filter(|i| i % partitions == p).count() as u64;
        let expected = per_producer * writers;
        let mut stream = client
            .subscribe(
                &a.topic,
                p,
                cascade_client::proto::subscribe_request::Position::Latest(true),
            )
            .await?;
        readers.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut n = 0u64;
            while let Some(msg) = stream.next().await {
                let msg = msg?;
                let now = now_ns();
                for rec in
                    cascade_client::decode_records(&msg.topic, msg.partition, &msg.batches, 0)?
                {
                    if let Some(v) = rec.value.filter(|v| v.len() >= 8) {
                        let sent = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                        hist.record((now.saturating_sub(sent) / 1000).max(1)).ok();
                        n += 1;
                    }
                }
                if n >= expected {
                    break;
                }
            }
            Ok::<_, anyhow::Error>((hist, n))
        }));
    }
    let mut shape = a.clone();
    if shape.rate == 0 {
        shape.rate = 10_000;
    }
    let produced = produce(client, &shape, true).await?;
    let mut latency = histogram();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in readers {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r).await {
            Ok(r) => {
                let (h, n) = r??;
                latency.add(h).ok();
                received += n;
            }
            Err(_) => bail!("the subscriber did not receive every record within 10 s"),
        }
    }
    Ok(Outcome {
        messages: received,
        bytes: received * a.size as u64,
        elapsed: produced.elapsed,
        latency_us: latency,
    })
}

fn report(mode: &str, a: &BenchArgs, r: &Outcome, format: Format) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let msgs = r.messages as f64 / secs;
    let mb = r.bytes as f64 / secs / 1e6;
    let q = |p: f64| r.latency_us.value_at_quantile(p) as f64 / 1000.0;
    let max = r.latency_us.max() as f64 / 1000.0;
    if format == Format::Json {
        json(&json!({
            "mode": mode, "topic": a.topic, "messages": r.messages, "size": a.size,
            "batch": a.batch, "producers": a.producers, "acks": a.acks, "rate": a.rate,
            "seconds": secs, "msgs_per_sec": msgs, "mb_per_sec": mb,
            "latency_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": max},
        }));
        return;
    }
    println!(
        "{mode}: {} msgs of {} B in {:.2} s = {:.0} msgs/s, {:.1} MB/s",
        r.messages, a.size, secs, msgs, mb
    );
    println!(
        "latency ms: p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
        q(0.5),
        q(0.99),
        q(0.999),
        max
    );
}
