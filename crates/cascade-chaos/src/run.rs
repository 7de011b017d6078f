//! One whole run: start the cluster, run the workload while injecting faults, heal, settle,
//! read everything back, stop the nodes, read their logs offline, and check.
//!
//! Invariants:
//! - The [`Cluster`] is owned here and dropped on every path (return, `?`, panic, or the run
//!   future being dropped by Ctrl-C), which removes containers and network unless `--keep`.
//! - The data directory outlives the cluster (declared first, dropped last), and is kept when
//!   the run fails or `--keep` is given, with the containers' logs saved beside it.
//! - Harness failures before the workload starts are errors (no verdict); after that,
//!   everything observed is turned into a report, and anything that could not be observed is
//!   a problem that fails the run rather than being skipped.

use crate::checker::{self, History, PartitionEvidence, ReplicaLog, StoredRecord, Tp};
use crate::docker::{self, Cluster, ClusterSpec};
use crate::faults::{self, FaultConfig, FaultKind, Rng};
use crate::replica;
use crate::report::{FailoverStats, RunReport};
use crate::workload::{self, Recorder, WorkloadConfig};
use anyhow::{Context, Result, bail};
use cascade_client::{Client, decode_records, proto};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes (1, 3 or 5).
    pub nodes: u32,
    /// Length of the fault phase.
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Image to run.
    pub image: String,
    /// Leave containers, network and data behind.
    pub keep: bool,
    /// Partitions of the workload topic.
    pub partitions: u32,
    /// Concurrent producers.
    pub producers: u32,
    /// Consumer group members.
    pub consumers: u32,
    /// Quiet time between faults, ms.
    pub quiet_ms: (u64, u64),
    /// Fault hold time, ms.
    pub hold_ms: (u64, u64),
    /// Run a StatefulSet's pods and roll them instead of injecting faults (`nodes` is then
    /// its replica count).
    pub rollout: Option<crate::rollout::Rollout>,
}

const TOPIC: &str = "chaos";
const GROUP: &str = "chaos-group";
/// How long the cluster gets to recover after the final heal.
const SETTLE: Duration = Duration::from_secs(120);

/// Runs everything; see the module docs.
pub async fn run(opts: &Options) -> Result<RunReport> {
    if !docker::image_exists(&opts.image).await {
        bail!(
            "image {} is not present (nothing can be pulled): build it with deploy/build-image.sh",
            opts.image
        );
    }
    let run_id = format!("cascade-chaos-{}", std::process::id());
    let data = tempfile::Builder::new()
        .prefix(&format!("{run_id}-"))
        .tempdir()
        .context("making the data directory")?;
    let rf = opts.nodes.min(3);
    let min_isr = rf.min(2);
    eprintln!(
        "seed {} (reproduce with --seed {}); {} node(s) of {}; data in {}",
        opts.seed,
        opts.seed,
        opts.nodes,
        opts.image,
        data.path().display()
    );
    let first_image = opts
        .rollout
        .as_ref()
        .and_then(|r| r.from_image.clone())
        .unwrap_or_else(|| opts.image.clone());
    let mut cluster = Cluster::start(&ClusterSpec {
        nodes: opts.nodes,
        image: first_image,
        data_root: data.path().to_path_buf(),
        keep: opts.keep,
        run_id: run_id.clone(),
        pod: opts.rollout.as_ref().map(|r| r.pod.clone()),
    })
    .await?;
    eprintln!(
        "cluster up on network {} ({}.0/24): {}",
        cluster.network,
        cluster.subnet,
        cluster.brokers()
    );
    // Pods advertise their headless DNS names, which only resolve inside the network.
    let client = Client::connect_lazy(&cluster.brokers())?
        .with_address_overrides(cluster.advertised_overrides());
    wait_members(&client, opts.nodes, Duration::from_secs(90)).await?;
    create_topic(&client, opts.partitions, rf, min_isr).await?;

    let rec = Arc::new(Recorder::new());
    let wcfg = Arc::new(WorkloadConfig {
        run_id: run_id.clone(),
        topic: TOPIC.into(),
        partitions: opts.partitions,
        producers: opts.producers,
        consumers: opts.consumers,
        group: GROUP.into(),
        batch_max: 5,
        // About 375 records/s per producer, well below what a 3-node debug build on two cores
        // acknowledges (~2000/s): latencies measure the cluster, not a queue in the driver.
        send_interval: Duration::from_millis(8),
        max_in_flight: 5,
        max_outstanding: 50,
        record_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
        max_events_per_producer: 10_000_000,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..opts.producers {
        tasks.push(tokio::spawn(workload::producer(
            id,
            client.clone(),
            wcfg.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }
    for id in 0..opts.consumers {
        tasks.push(tokio::spawn(workload::consumer(
            id,
            client.clone(),
            wcfg.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }

    let mut problems = Vec::new();
    let mut rng = Rng::new(opts.seed);
    let started = Instant::now();
    let fcfg = FaultConfig {
        topic: TOPIC.into(),
        partitions: opts.partitions,
        quiet_ms: opts.quiet_ms,
        hold_ms: opts.hold_ms,
    };
    let mut rollout_report = None;
    let mut faults = if let Some(ro) = &opts.rollout {
        let r = rec.clone();
        match crate::rollout::run(&mut cluster, ro, &opts.image, move || r.now()).await {
            Ok(report) => rollout_report = Some(report),
            Err(e) => problems.push(format!("rolling the pods failed: {e:#}")),
        }
        Vec::new()
    } else {
        match faults::run(
            &mut cluster,
            &client,
            &fcfg,
            &mut rng,
            &rec,
            started + opts.duration,
        )
        .await
        {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("fault injection failed: {e:#}"));
                Vec::new()
            }
        }
    };
    let duration_secs = started.elapsed().as_secs_f64();

    // Heal first, then let the workload run on briefly so every partition takes writes on a
    // healthy cluster, then stop it.
    if let Err(e) = cluster.heal_all().await {
        problems.push(format!("healing failed: {e:#}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        // Every wait has a timeout (a producer's drain at most 30 s) and the loops check the
        // stop flag, so this is bounded; the outer timeout only guards against a bug in that
        // reasoning.
        if tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .is_err()
        {
            problems.push("a workload task did not stop within 60 s".into());
        }
    }
    let stats = rec.stats();
    eprintln!(
        "workload stopped: {} records sent, {} acknowledged, {} failed, {} unanswered; settling",
        stats.records_sent, stats.records_acked, stats.records_failed, stats.records_unknown
    );

    let settle_started = Instant::now();
    let final_meta = match settle(&client, opts.nodes, opts.partitions, SETTLE).await {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(format!("cluster did not settle within {SETTLE:?}: {e}"));
            describe(&client).await.ok()
        }
    };
    let settle_secs = final_meta
        .is_some()
        .then(|| settle_started.elapsed().as_secs_f64());

    let mut readbacks: BTreeMap<u32, Result<Vec<StoredRecord>, String>> = BTreeMap::new();
    for p in 0..opts.partitions {
        readbacks.insert(p, read_back(&client, TOPIC, p).await);
    }
    let final_committed = match committed(&client).await {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(format!("could not read the group's committed offsets: {e}"));
            None
        }
    };

    if let Err(e) = cluster.save_logs(data.path()).await {
        problems.push(format!("saving container logs: {e:#}"));
    }
    if let Err(e) = cluster.stop_all().await {
        problems.push(format!("stopping the nodes: {e:#}"));
    }
    let replicas = read_replicas(&cluster, opts.nodes, data.path()).await;

    // Assemble the evidence: the workload partitions always, and every other partition found
    // on some node's disk (internal topics included) for the replica checks.
    let mut isr: BTreeMap<Tp, Vec<u32>> = BTreeMap::new();
    let mut assigned: BTreeMap<Tp, Vec<u32>> = BTreeMap::new();
    for t in final_meta.iter().flat_map(|m| &m.topics) {
        for p in &t.partitions {
            isr.insert((t.name.clone(), p.partition), p.isr.clone());
            assigned.insert((t.name.clone(), p.partition), p.replicas.clone());
        }
    }
    let mut tps: BTreeSet<Tp> = replicas.keys().cloned().collect();
    tps.extend((0..opts.partitions).map(|p| (TOPIC.to_string(), p)));
    let mut partitions = Vec::new();
    for tp in tps {
        let mut logs = replicas.get(&tp).cloned().unwrap_or_default();
        for n in assigned.get(&tp).into_iter().flatten() {
            logs.entry(*n).or_insert_with(|| {
                Err(format!(
                    "assigned replica has no directory topics/{}/{}",
                    tp.0, tp.1
                ))
            });
        }
        partitions.push(PartitionEvidence {
            readback: (tp.0 == TOPIC).then(|| {
                readbacks
                    .remove(&tp.1)
                    .unwrap_or_else(|| Err("not read back".into()))
            }),
            isr: isr.get(&tp).cloned().unwrap_or_default(),
            replicas: logs,
            topic: tp.0,
            partition: tp.1,
        });
    }
    // One snapshot: `acks` are exactly the acknowledged ones among `sent` (an answer arriving
    // later, from a request still in flight, leaves that record ambiguous here).
    let sent = rec.sent();
    let acks = checker::acked(TOPIC, &sent);
    let mut workload_stats = rec.stats();
    workload_stats.count_records(&sent);
    let history = History {
        workload_topics: [TOPIC.to_string()].into(),
        sent,
        acks: acks.clone(),
        commits: rec.commits(),
        final_committed,
        partitions,
        reads: rec.reads(),
    };
    let check = checker::check(&history);
    if let Some(r) = &mut rollout_report {
        r.stall_ms = crate::rollout::stalls(&history.sent, r.window);
    }
    faults::measure_failover(&mut faults, &acks);
    // Keep the commit history, every sent record and the read-back beside the nodes' logs,
    // for a run that fails or is kept.
    if let Ok(json) = serde_json::to_vec(&history.commits) {
        let _ = std::fs::write(data.path().join("commits.json"), json);
    }
    let _ = std::fs::write(
        data.path().join("sent.tsv"),
        workload::sent_tsv(&history.sent),
    );
    let _ = std::fs::write(
        data.path().join("readback.tsv"),
        readback_tsv(&history.partitions),
    );

    let mut faults_by_kind: BTreeMap<String, u64> =
        FaultKind::menu(opts.nodes, cluster.faketime.is_some())
            .into_iter()
            .map(|k| (k.name().to_string(), 0))
            .collect();
    for f in &faults {
        *faults_by_kind.entry(f.kind.name().into()).or_default() += 1;
    }
    // A rolling restart is a controlled shutdown, one broker at a time: every write must get
    // through within the client's retries (a fault run allows failed writes, not this).
    if opts.rollout.is_some() && workload_stats.records_failed > 0 {
        problems.push(format!(
            "{} record(s) failed after the client's retries during the rolling restart",
            workload_stats.records_failed
        ));
    }
    if check.acknowledged == 0 {
        problems.push("no event was acknowledged: the workload never worked".into());
    }
    let ok = check.ok() && problems.is_empty();
    let data_dir = if opts.keep || !ok {
        Some(data.keep().display().to_string())
    } else {
        None
    };
    drop(cluster);
    Ok(RunReport {
        ok,
        seed: opts.seed,
        nodes: opts.nodes,
        image: opts.image.clone(),
        duration_secs,
        topic: TOPIC.into(),
        partitions: opts.partitions,
        replication_factor: rf,
        min_insync_replicas: min_isr,
        failover: FailoverStats::of(&faults),
        failover_by_kind: FailoverStats::by_kind(&faults),
        faults_by_kind,
        faults,
        workload: workload_stats,
        settle_secs,
        problems,
        check,
        data_dir,
        rollout: rollout_report,
    })
}

/// The workload partitions' read-back, one record a line: `partition offset payload`.
fn readback_tsv(partitions: &[PartitionEvidence]) -> String {
    use std::fmt::Write;
    let mut out = String::from("partition\toffset\tpayload\n");
    for p in partitions {
        if let Some(Ok(recs)) = &p.readback {
            for (o, v) in recs {
                let v = v.as_deref().map_or("null".into(), String::from_utf8_lossy);
                let _ = writeln!(out, "{}\t{o}\t{v}", p.partition);
            }
        }
    }
    out
}

async fn describe(client: &Client) -> Result<proto::ClusterDescription, String> {
    match tokio::time::timeout(Duration::from_secs(3), client.describe_cluster()).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("describe cluster timed out".into()),
    }
}

/// Waits until the cluster's metadata lists `n` live brokers.
async fn wait_members(client: &Client, n: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match describe(client).await {
            Ok(d) if d.brokers.iter().filter(|b| b.alive).count() as u32 >= n => return Ok(()),
            Ok(d) => {
                last = format!(
                    "{} of {n} brokers alive",
                    d.brokers.iter().filter(|b| b.alive).count()
                )
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the cluster did not form within {timeout:?}: {last}")
}

async fn create_topic(client: &Client, partitions: u32, rf: u32, min_isr: u32) -> Result<()> {
    let configs = [("min.insync.replicas".to_string(), min_isr.to_string())].into();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .create_topic(TOPIC, partitions, rf, BTreeMap::clone(&configs))
            .await
        {
            Ok(_) => break,
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("creating the workload topic"),
        }
    }
    // Every partition needs a leader before producers start, or the first seconds measure
    // topic creation rather than faults.
    while Instant::now() < deadline {
        if let Ok(Ok(t)) =
            tokio::time::timeout(Duration::from_secs(3), client.describe_topic(TOPIC)).await
            && t.partitions.len() as u32 == partitions
            && t.partitions.iter().all(|p| p.leader != 0)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("the workload topic's partitions got no leaders within 60 s")
}

/// Waits until every broker is alive, no partition is under-replicated or offline, and every
/// workload partition has a leader; returns that metadata.
async fn settle(
    client: &Client,
    n: u32,
    partitions: u32,
    timeout: Duration,
) -> Result<proto::ClusterDescription, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match describe(client).await {
            Ok(d) => {
                let alive = d.brokers.iter().filter(|b| b.alive).count() as u32;
                let led = d
                    .topics
                    .iter()
                    .find(|t| t.name == TOPIC)
                    .map_or(0, |t| t.partitions.iter().filter(|p| p.leader != 0).count())
                    as u32;
                if alive >= n
                    && d.under_replicated_partitions == 0
                    && d.offline_partitions == 0
                    && led == partitions
                {
                    return Ok(d);
                }
                last = format!(
                    "{alive}/{n} brokers alive, {} under-replicated, {} offline, {led}/{partitions} led",
                    d.under_replicated_partitions, d.offline_partitions
                );
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Reads a partition from its leader, from offset 0 to the high watermark.
async fn read_back(
    client: &Client,
    topic: &str,
    partition: u32,
) -> Result<Vec<StoredRecord>, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out: Vec<StoredRecord> = Vec::new();
    let mut offset = 0u64;
    let mut last = String::new();
    while Instant::now() < deadline {
        let f = tokio::time::timeout(
            Duration::from_secs(5),
            client.fetch(topic, partition, offset, 4 << 20, Duration::ZERO),
        )
        .await;
        let f = match f {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => {
                last = "fetch timed out".into();
                continue;
            }
        };
        if f.batches.is_empty() {
            if offset >= f.high_watermark {
                return Ok(out);
            }
            last = format!(
                "no data at {offset} below the high watermark {}",
                f.high_watermark
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let recs =
            decode_records(topic, partition, &f.batches, offset).map_err(|e| e.to_string())?;
        out.extend(
            recs.into_iter()
                .map(|r| (r.offset, r.value.map(|v| v.to_vec()))),
        );
        if f.next_offset <= offset {
            return Err(format!("fetch at {offset} made no progress"));
        }
        offset = f.next_offset;
    }
    Err(format!(
        "read-back did not finish within 60 s at offset {offset}: {last}"
    ))
}

/// The group's committed offsets.
async fn committed(client: &Client) -> Result<BTreeMap<Tp, u64>, String> {
    let mut last = String::new();
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(5), client.fetch_offsets(GROUP, vec![]))
            .await
        {
            Ok(Ok(offsets)) => {
                return Ok(offsets
                    .into_iter()
                    .map(|c| ((c.topic, c.partition), c.offset))
                    .collect());
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

type Replicas = BTreeMap<Tp, BTreeMap<u32, Result<ReplicaLog, String>>>;

/// Every partition log on every node's disk, read offline (the nodes are stopped).
async fn read_replicas(cluster: &Cluster, nodes: u32, scratch: &std::path::Path) -> Replicas {
    let dirs: Vec<(u32, std::path::PathBuf)> =
        (1..=nodes).map(|id| (id, cluster.data_dir(id))).collect();
    let scratch = scratch.to_path_buf();
    let work = move || {
        let mut out = Replicas::new();
        for (id, dir) in dirs {
            match replica::partition_dirs(&dir) {
                Ok(found) => {
                    for (tp, pdir) in found {
                        let log =
                            replica::read_replica(&pdir, &scratch).map_err(|e| format!("{e:#}"));
                        out.entry(tp).or_default().insert(id, log);
                    }
                }
                Err(e) => {
                    // A node whose data directory cannot be listed: every partition it was
                    // assigned shows up as missing in the evidence.
                    eprintln!("warning: node {id}: {e:#}");
                }
            }
        }
        out
    };
    tokio::task::spawn_blocking(work).await.unwrap_or_default()
}
