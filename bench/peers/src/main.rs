//! `peerbench`: the load generator for the systems Cascade is compared against, with the same
//! workload shape and the same JSON output as `cascade bench --output json`.
//!
//! - Redis Streams: one stream key per producer (`<name>:<i>`); a request is one pipeline of
//!   `--batch` XADD commands on that producer's multiplexed connection; consume pages with
//!   `XRANGE key (<last-id> + COUNT 1000`.
//! - NATS JetStream: one file-storage stream `<name>` with one subject per producer
//!   (`<name>.<i>`); a request is `--batch` asynchronous JetStream publishes whose acks are all
//!   awaited; consume uses one pull consumer per subject (AckPolicy::None) fetching batches of up
//!   to 1000.
//!
//! Each producer keeps up to `--in-flight` requests outstanding. With `--rate` (or the
//! `fixed-rate` mode) requests are sent on a fixed schedule and latency is measured from the
//! scheduled send time, so a stalled server cannot hide its queueing delay (no coordinated
//! omission). Every run is bounded by its message count and by `--timeout-secs`.

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "peerbench",
    version,
    about = "Load generator for Redis Streams and NATS JetStream, shaped like `cascade bench`"
)]
struct Cli {
    #[command(subcommand)]
    system: System,
}

#[derive(Debug, Subcommand)]
enum System {
    /// Redis Streams (XADD pipelines, XRANGE paging).
    Redis {
        /// Server address (host:port).
        #[arg(long, default_value = "127.0.0.1:6379")]
        addr: String,
        #[command(subcommand)]
        mode: Mode,
    },
    /// NATS JetStream (async publishes, pull consumers).
    Nats {
        /// Server address (host:port).
        #[arg(long, default_value = "127.0.0.1:4222")]
        addr: String,
        #[command(subcommand)]
        mode: Mode,
    },
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Produce throughput and acknowledgement latency.
    Produce(Load),
    /// Read back everything a produce run wrote; latency is per read request.
    Consume(Load),
    /// Produce at a fixed total rate (`--rate`, default 10000 msgs/s); latency from the
    /// scheduled send time.
    FixedRate(Load),
}

/// Load shape (the same flags as `cascade bench`).
#[derive(Debug, Clone, Args)]
struct Load {
    /// Stream name: Redis key prefix (`<name>:<producer>`) or NATS stream name (subjects
    /// `<name>.<producer>`).
    #[arg(long, default_value = "peerbench")]
    name: String,
    /// Total messages.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Records per request.
    #[arg(long, default_value_t = 100)]
    batch: u32,
    /// Concurrent producers, each writing its own stream key / subject over its own connection.
    /// For consume: how many keys / subjects to read (one reader each).
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Requests in flight per producer.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Total target rate in messages/s (0: as fast as possible; fixed-rate: 0 means 10000).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Delete the streams first.
    #[arg(long)]
    fresh: bool,
    /// Give up (non-zero exit) if the run takes longer than this.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// Measured outcome of a run.
struct Outcome {
    messages: u64,
    bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn payload(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// Sends one request (a batch of records) for one producer and resolves when it is acknowledged.
type Sender = Arc<dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync>;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (system, mode_name, load) = match &cli.system {
        System::Redis { mode, .. } => ("redis", mode_name(mode), load_of(mode)),
        System::Nats { mode, .. } => ("nats", mode_name(mode), load_of(mode)),
    };
    let mut load = load.clone();
    if mode_name == "fixed-rate" && load.rate == 0 {
        load.rate = 10_000;
    }
    if load.batch == 0 || load.producers == 0 || load.in_flight == 0 {
        bail!("--batch, --producers and --in-flight must be > 0");
    }
    let limit = Duration::from_secs(load.timeout_secs);
    let run = async {
        match &cli.system {
            System::Redis { addr, mode } => match mode {
                Mode::Consume(_) => redis_bench::consume(addr, &load).await,
                _ => {
                    let senders = redis_bench::producers(addr, &load).await?;
                    produce(&load, senders).await
                }
            },
            System::Nats { addr, mode } => match mode {
                Mode::Consume(_) => nats_bench::consume(addr, &load).await,
                _ => {
                    let senders = nats_bench::producers(addr, &load).await?;
                    produce(&load, senders).await
                }
            },
        }
    };
    let outcome = tokio::time::timeout(limit, run).await.with_context(|| {
        format!(
            "the run did not finish within --timeout-secs {}",
            load.timeout_secs
        )
    })??;
    report(system, mode_name, &load, &outcome);
    Ok(())
}

fn mode_name(m: &Mode) -> &'static str {
    match m {
        Mode::Produce(_) => "produce",
        Mode::Consume(_) => "consume",
        Mode::FixedRate(_) => "fixed-rate",
    }
}

fn load_of(m: &Mode) -> &Load {
    match m {
        Mode::Produce(l) | Mode::Consume(l) | Mode::FixedRate(l) => l,
    }
}

/// Send times for a fixed rate, as in `cascade bench produce`: `count` ticks, the `r`-th due at
/// `start + r * interval`, each delivered (carrying its due time) when due by a dedicated
/// thread, because tokio's 1 ms timer resolution would send requests due every 100 µs in late
/// bursts and count the lateness as latency.
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

/// The produce loop, the same as `cascade bench produce`: each producer sends
/// `ceil(messages / producers / batch)` requests with up to `in_flight` outstanding; at a fixed
/// rate each request has a scheduled send time and in-flight requests keep being driven (and
/// their latency recorded) while the producer waits for that time.
async fn produce(a: &Load, senders: Vec<Sender>) -> Result<Outcome> {
    let producers = senders.len() as u64;
    let per_producer = a.messages / producers;
    let requests = per_producer.div_ceil(u64::from(a.batch));
    let total = requests * u64::from(a.batch) * producers;
    let interval = (a.rate > 0)
        .then(|| Duration::from_secs_f64(f64::from(a.batch) * producers as f64 / a.rate as f64));
    let in_flight = a.in_flight;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for send in senders {
        let mut ticks = interval.map(|iv| pacer(start, iv, requests));
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut pending = FuturesUnordered::new();
            let record = |hist: &mut Histogram<u64>, r: (Result<()>, Duration)| -> Result<()> {
                r.0?;
                hist.record(r.1.as_micros().max(1) as u64).ok();
                Ok(())
            };
            for _ in 0..requests {
                let scheduled = match ticks.as_mut() {
                    Some(ticks) => loop {
                        // Completions first: every ready one is recorded before the next
                        // send, so none waits behind the schedule.
                        tokio::select! {
                            biased;
                            Some(done) = pending.next(), if !pending.is_empty() => {
                                record(&mut hist, done)?;
                            }
                            at = ticks.recv() => break at.expect("the pacer sends one tick per request"),
                        }
                    },
                    None => Instant::now(),
                };
                let fut = send();
                pending.push(async move {
                    let r = fut.await;
                    (r, scheduled.elapsed())
                });
                while pending.len() >= in_flight {
                    let done = pending.next().await.expect("non-empty");
                    record(&mut hist, done)?;
                }
            }
            while let Some(done) = pending.next().await {
                record(&mut hist, done)?;
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut latency = histogram();
    for t in tasks {
        latency.add(t.await??).ok();
    }
    Ok(Outcome {
        messages: total,
        bytes: total * a.size as u64,
        elapsed: start.elapsed(),
        latency_us: latency,
    })
}

fn report(system: &str, mode: &str, a: &Load, r: &Outcome) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let q = |p: f64| r.latency_us.value_at_quantile(p) as f64 / 1000.0;
    let out = json!({
        "system": system, "mode": mode, "name": a.name, "messages": r.messages, "size": a.size,
        "batch": a.batch, "producers": a.producers, "in_flight": a.in_flight, "rate": a.rate,
        "seconds": secs, "msgs_per_sec": r.messages as f64 / secs,
        "mb_per_sec": r.bytes as f64 / secs / 1e6,
        "latency_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
                       "max": r.latency_us.max() as f64 / 1000.0},
    });
    println!("{out}");
}

mod redis_bench {
    use super::*;
    use redis::aio::MultiplexedConnection;
    use redis::{AsyncConnectionConfig, Value};

    fn key(name: &str, i: u32) -> String {
        format!("{name}:{i}")
    }

    async fn connect(addr: &str) -> Result<MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://{addr}/"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("connecting to redis at {addr}"))
    }

    /// One connection and one stream key per producer; a request is a pipeline of `batch`
    /// XADDs.
    pub async fn producers(addr: &str, a: &Load) -> Result<Vec<Sender>> {
        let value = payload(a.size);
        let mut out: Vec<Sender> = Vec::new();
        for i in 0..a.producers {
            let mut conn = connect(addr).await?;
            let k = key(&a.name, i);
            if a.fresh {
                redis::cmd("DEL")
                    .arg(&k)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            let mut pipe = redis::pipe();
            for _ in 0..a.batch {
                pipe.cmd("XADD")
                    .arg(&k)
                    .arg("*")
                    .arg("v")
                    .arg(&value[..])
                    .ignore();
            }
            let pipe = Arc::new(pipe);
            out.push(Arc::new(move || {
                let pipe = pipe.clone();
                let mut conn = conn.clone();
                Box::pin(async move {
                    pipe.query_async::<()>(&mut conn).await?;
                    Ok(())
                })
            }));
        }
        Ok(out)
    }

    /// One reader (and connection) per stream key, each reading its share with XRANGE pages of
    /// up to 1000 entries.
    pub async fn consume(addr: &str, a: &Load) -> Result<Outcome> {
        let mut conn = connect(addr).await?;
        let mut total = 0u64;
        for i in 0..a.producers {
            total += redis::cmd("XLEN")
                .arg(key(&a.name, i))
                .query_async::<u64>(&mut conn)
                .await?;
        }
        let total = total.min(a.messages);
        let per = total.div_ceil(u64::from(a.producers));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..a.producers {
            let mut conn = connect(addr).await?;
            let k = key(&a.name, i);
            tasks.push(tokio::spawn(async move {
                let mut hist = histogram();
                let (mut msgs, mut bytes) = (0u64, 0u64);
                let mut from = "-".to_string();
                while msgs < per {
                    let t = Instant::now();
                    let page: Value = redis::cmd("XRANGE")
                        .arg(&k)
                        .arg(&from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await?;
                    hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    let Value::Array(entries) = page else {
                        bail!("unexpected XRANGE reply: {page:?}");
                    };
                    if entries.is_empty() {
                        break;
                    }
                    for e in &entries {
                        let Value::Array(parts) = e else {
                            bail!("bad entry {e:?}")
                        };
                        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                            (parts.first(), parts.get(1))
                        else {
                            bail!("bad entry {e:?}");
                        };
                        if msgs < per {
                            msgs += 1;
                            if let Some(Value::BulkString(v)) = fields.get(1) {
                                bytes += v.len() as u64;
                            }
                        }
                        from = format!("({}", String::from_utf8_lossy(id));
                    }
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
        Ok(Outcome {
            messages: msgs,
            bytes,
            elapsed: start.elapsed(),
            latency_us: latency,
        })
    }
}

mod nats_bench {
    use super::*;
    use async_nats::jetstream::{self, consumer, stream};

    fn subject(name: &str, i: u32) -> String {
        format!("{name}.{i}")
    }

    async fn connect(addr: &str, in_flight_acks: usize) -> Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(60)))
            .connect(addr)
            .await
            .with_context(|| format!("connecting to nats at {addr}"))?;
        Ok(jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(60))
            .max_ack_inflight(in_flight_acks.max(5_000))
            .build(client))
    }

    async fn ensure_stream(js: &jetstream::Context, a: &Load) -> Result<()> {
        if a.fresh {
            // Missing stream: nothing to delete.
            let _ = js.delete_stream(&a.name).await;
        }
        js.get_or_create_stream(stream::Config {
            name: a.name.clone(),
            subjects: vec![format!("{}.>", a.name)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {}: {e}", a.name))?;
        Ok(())
    }

    /// One connection and one subject per producer; a request is `batch` async publishes whose
    /// acks are all awaited.
    pub async fn producers(addr: &str, a: &Load) -> Result<Vec<Sender>> {
        let value = payload(a.size);
        let acks = a.in_flight * a.batch as usize;
        ensure_stream(&connect(addr, acks).await?, a).await?;
        let mut out: Vec<Sender> = Vec::new();
        for i in 0..a.producers {
            let js = connect(addr, acks).await?;
            let subj = async_nats::Subject::from(subject(&a.name, i));
            let (value, n) = (value.clone(), a.batch);
            out.push(Arc::new(move || {
                let js = js.clone();
                let subj = subj.clone();
                let value = value.clone();
                Box::pin(async move {
                    let mut acks = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        acks.push(
                            js.publish(subj.clone(), value.clone())
                                .await
                                .map_err(|e| anyhow::anyhow!("publish: {e}"))?,
                        );
                    }
                    // The acks arrive independently; awaiting them in order ends at the last.
                    for ack in acks {
                        ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
                    }
                    Ok(())
                })
            }));
        }
        Ok(out)
    }

    /// One pull consumer (AckPolicy::None, filtered to one subject) per producer's subject,
    /// each fetching batches of up to 1000 until it has its share.
    pub async fn consume(addr: &str, a: &Load) -> Result<Outcome> {
        let js = connect(addr, 5_000).await?;
        let mut st = js
            .get_stream(&a.name)
            .await
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", a.name))?;
        let stored = st
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("stream info: {e}"))?
            .state
            .messages;
        let total = stored.min(a.messages);
        let per = total.div_ceil(u64::from(a.producers));
        let mut consumers = Vec::new();
        for i in 0..a.producers {
            let c: consumer::PullConsumer = st
                .create_consumer(consumer::pull::Config {
                    name: Some(format!("peerbench-{}-{i}", std::process::id())),
                    filter_subject: subject(&a.name, i),
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::All,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating consumer: {e}"))?;
            consumers.push(c);
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in consumers {
            tasks.push(tokio::spawn(async move {
                let mut hist = histogram();
                let (mut msgs, mut bytes) = (0u64, 0u64);
                while msgs < per {
                    let t = Instant::now();
                    let want = (per - msgs).min(1000) as usize;
                    let mut batch = c
                        .fetch()
                        .max_messages(want)
                        .messages()
                        .await
                        .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
                    let mut got = 0u64;
                    while let Some(m) = batch.next().await {
                        let m = m.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
                        got += 1;
                        bytes += m.payload.len() as u64;
                    }
                    hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    if got == 0 {
                        break;
                    }
                    msgs += got;
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
        Ok(Outcome {
            messages: msgs,
            bytes,
            elapsed: start.elapsed(),
            latency_us: latency,
        })
    }
}
