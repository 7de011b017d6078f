//! Fault injection: which faults exist, the seeded choice among them, and the loop that
//! injects, holds and heals one fault at a time (an `overlap` fault is two at once).
//!
//! Invariants:
//! - At most one fault (or one overlapping pair, on two different nodes) is in force at any
//!   moment, and each is healed before the next quiet period, so the cluster always gets a
//!   chance to recover (the run measures recovery, it does not try to keep the cluster down).
//! - Every random choice comes from one [`Rng`] seeded by `--seed`: the same seed and node
//!   count give the same sequence of faults, targets and hold times (timings of the cluster
//!   itself, and so who leads what, still vary).
//! - A fault's start is taken when the `docker` command that causes it has returned, so the
//!   fault is certainly in force from then on; failover is measured from there.

use crate::checker::{Ack, Nanos};
use crate::docker::Cluster;
use crate::workload::Recorder;
use anyhow::{Context, Result};
use cascade_client::Client;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A small deterministic generator (SplitMix64). Its own, not a crate's, so a seed printed
/// today reproduces the same choices after any dependency upgrade.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a partition leader, later start it again.
    KillLeader,
    /// Stop a partition leader with SIGSTOP, later resume it (SIGCONT).
    PauseLeader,
    /// Stop a partition leader gracefully (SIGTERM, as Kubernetes and `docker stop` do: it
    /// hands its leaderships over, closes its logs and exits, leaving the clean-shutdown
    /// marker), later start it again: one step of a rolling restart. The clean restart is the
    /// one that keeps a replica's in-sync standing, so it gets its own turn.
    StopLeader,
    /// Disconnect a partition leader from the network, later reconnect it.
    IsolateLeader,
    /// Disconnect a minority (including a leader), later reconnect it.
    IsolateMinority,
    /// SIGKILL every node, then start them all.
    FullRestart,
    /// SIGKILL a partition leader, damage one of its partition files (a segment's log, offset
    /// index or time index, a producer snapshot, a leader-epoch cache): flip one bit at a
    /// random place, or (one time in three) cut the file short at a random length; start it
    /// again when healed.
    CorruptLeader,
    /// SIGKILL a node, damage one of its metadata Raft files (`raft.log`, `vote.json`,
    /// `snapshot.json`) the same way, start it again. A node that refuses to start with a
    /// damaged journal is repaired as `docs/operations.md` tells an operator to ("A damaged
    /// metadata journal"), and started again.
    CorruptMeta,
    /// The same damage on every replica of one partition, where no intact copy is left: a
    /// fresh side topic `ruin-<n>` (one partition, replication factor min(3, N)) takes 200
    /// acknowledged events, every node loses power, one bit flips at the middle of that
    /// partition's active segment on each replica, and every node starts again. The right
    /// answer is a loud refusal: the partition stays offline (`cluster status` shows it, each
    /// replica not in sync, with why), and no write ever lands at an offset of a lost event.
    /// Then an unclean election (the operator accepting the loss) must bring it back serving
    /// the intact prefix ([`elect_uncleanly`]). Anything else fails the run. The side topic is
    /// deleted afterwards; the workload topic only sees a full restart.
    CorruptAll,
    /// A partition leader's disk fails: every write and fsync of its partition storage gets
    /// EIO; healing makes the disk work again (the node repairs itself without a restart).
    FailingDisk,
    /// A partition leader's disk is full: writes get ENOSPC until healed.
    FullDisk,
    /// A partition leader's disk takes 1.5 s for every fsync until healed.
    SlowDisk,
    /// Packets from a partition leader to one other node are dropped; the other way they
    /// still flow.
    Asymmetric,
    /// A partition leader's wall clock steps (forward or back, by hours or a day) until
    /// healed, as NTP stepping a wrong clock or a VM resumed from a snapshot does; its
    /// monotonic clock runs on. Needs libfaketime in the image (`build-image.sh
    /// --with-faketime`); left off the menu otherwise.
    ClockJump,
    /// Two of the faults above at once, on a leader and on another node.
    Overlap,
}

impl FaultKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::KillLeader => "kill_leader",
            Self::PauseLeader => "pause_leader",
            Self::StopLeader => "stop_leader",
            Self::IsolateLeader => "isolate_leader",
            Self::IsolateMinority => "isolate_minority",
            Self::FullRestart => "full_restart",
            Self::CorruptLeader => "corrupt_leader",
            Self::CorruptMeta => "corrupt_meta",
            Self::CorruptAll => "corrupt_all",
            Self::FailingDisk => "failing_disk",
            Self::FullDisk => "full_disk",
            Self::SlowDisk => "slow_disk",
            Self::Asymmetric => "asymmetric",
            Self::ClockJump => "clock_jump",
            Self::Overlap => "overlap",
        }
    }

    /// The faults that make sense for `nodes` nodes. Isolating the only node of a one-node
    /// cluster is just unavailability (the host is cut off too), and isolating "a minority" of
    /// three is isolating one node, already on the list.
    pub fn menu(nodes: u32, clocks: bool) -> Vec<FaultKind> {
        let mut m = vec![
            Self::KillLeader,
            Self::PauseLeader,
            Self::StopLeader,
            Self::FullRestart,
        ];
        m.extend([Self::FailingDisk, Self::FullDisk, Self::SlowDisk]);
        if clocks {
            m.push(Self::ClockJump);
        }
        if nodes >= 3 {
            m.push(Self::IsolateLeader);
            // With one replica, damage is a loud refusal (tested by the server's suite), not
            // something the checker's "nothing lost" can hold the run to.
            m.push(Self::CorruptLeader);
            // The operator's repair of a damaged journal needs every other voter up.
            m.push(Self::CorruptMeta);
            m.push(Self::CorruptAll);
            m.push(Self::Asymmetric);
            m.push(Self::Overlap);
        }
        if nodes >= 5 {
            m.push(Self::IsolateMinority);
        }
        m
    }

    /// The faults an `overlap` pairs: those that hit one node.
    fn single_node(nodes: u32, clocks: bool) -> Vec<FaultKind> {
        Self::menu(nodes, clocks)
            .into_iter()
            .filter(|k| {
                !matches!(
                    k,
                    Self::FullRestart
                        | Self::IsolateMinority
                        | Self::Overlap
                        | Self::CorruptMeta
                        | Self::CorruptAll
                )
            })
            .collect()
    }
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// What.
    pub kind: FaultKind,
    /// Nodes it hit.
    pub nodes: Vec<u32>,
    /// Partitions of the workload topic those nodes led when it started.
    pub partitions: Vec<u32>,
    /// When it was in force (ns since the run started).
    pub start: Nanos,
    /// When healing finished.
    pub healed: Nanos,
    /// Fault start → the first acknowledged produce, sent after the start, to one of
    /// `partitions`; `None` if there was none.
    pub failover_ms: Option<f64>,
    /// The same write measured from the end of healing (0 when it came before): how long the
    /// healed nodes took to serve again, which is all a one-node cluster can show.
    pub after_heal_ms: Option<f64>,
    /// For damage: the file and the byte changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Settings of the fault loop.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Workload topic (its leaders are the targets).
    pub topic: String,
    /// Its partition count.
    pub partitions: u32,
    /// Quiet time between faults, ms (`lo..hi`).
    pub quiet_ms: (u64, u64),
    /// How long a fault is held, ms (`lo..hi`).
    pub hold_ms: (u64, u64),
}

/// The next kind of fault: the menu is dealt in rounds, each a seeded shuffle of every kind,
/// so that even a short run injects every kind (independent draws left some kinds out of
/// whole CI runs).
fn next_kind(pending: &mut Vec<FaultKind>, menu: &[FaultKind], rng: &mut Rng) -> FaultKind {
    if pending.is_empty() {
        pending.extend_from_slice(menu);
        for i in (1..pending.len()).rev() {
            let j = rng.range(0, i as u64 + 1) as usize;
            pending.swap(i, j);
        }
    }
    pending.pop().expect("the menu is not empty")
}

/// Partition → leader of the topic, from the cluster's metadata; `None` if it cannot be read
/// quickly (the cluster may be mid-failover).
async fn leaders(client: &Client, topic: &str) -> Option<Vec<(u32, u32)>> {
    let d = tokio::time::timeout(Duration::from_secs(3), client.describe_topic(topic))
        .await
        .ok()?
        .ok()?;
    Some(
        d.partitions
            .iter()
            .map(|p| (p.partition, p.leader))
            .collect(),
    )
}

/// Injects faults until `until`, one at a time; returns what was done.
pub async fn run(
    cluster: &mut Cluster,
    client: &Client,
    cfg: &FaultConfig,
    rng: &mut Rng,
    rec: &Recorder,
    until: Instant,
) -> Result<Vec<FaultRecord>> {
    let n = cluster.nodes.len() as u32;
    let clocks = cluster.faketime.is_some();
    if !clocks {
        eprintln!(
            "note: the image has no libfaketime (build-image.sh --with-faketime): no clock_jump faults"
        );
    }
    let menu = FaultKind::menu(n, clocks);
    let mut pending = Vec::new();
    let mut done = Vec::new();
    let mut ruins = 0u32;
    loop {
        let quiet = Duration::from_millis(rng.range(cfg.quiet_ms.0, cfg.quiet_ms.1));
        let hold = Duration::from_millis(rng.range(cfg.hold_ms.0, cfg.hold_ms.1));
        if Instant::now() + quiet + hold >= until {
            break;
        }
        tokio::time::sleep(quiet).await;
        let kind = next_kind(&mut pending, &menu, rng);
        // A random partition's leader is the target; if metadata cannot be had, a random
        // node, and every partition counts as affected.
        let choice = rng.range(0, u64::from(cfg.partitions)) as u32;
        let fallback = rng.range(1, u64::from(n) + 1) as u32;
        let leaders = leaders(client, &cfg.topic).await;
        let target = leaders
            .as_ref()
            .and_then(|l| l.iter().find(|(p, _)| *p == choice).map(|(_, l)| *l))
            .filter(|l| (1..=n).contains(l))
            .unwrap_or(fallback);
        // What to do, to whom: one action per node (two for an overlap).
        let mut actions: Vec<(FaultKind, u32)> = match kind {
            FaultKind::FullRestart => (1..=n).map(|id| (FaultKind::KillLeader, id)).collect(),
            FaultKind::CorruptAll => (1..=n).map(|id| (FaultKind::CorruptAll, id)).collect(),
            // Node 1 has no seeds (it bootstrapped the cluster): the documented repair (start
            // it again with seeds) cannot be applied to its container, and without seeds it
            // rightly refuses to bootstrap over its data. Its journal is left alone.
            FaultKind::CorruptMeta if target == 1 => {
                vec![(kind, 1 + rng.range(1, u64::from(n)) as u32)]
            }
            FaultKind::IsolateMinority => {
                let mut others: Vec<u32> = (1..=n).filter(|x| *x != target).collect();
                let mut hit = vec![target];
                while hit.len() < ((n - 1) / 2) as usize {
                    let i = rng.range(0, others.len() as u64) as usize;
                    hit.push(others.remove(i));
                }
                hit.into_iter().map(|id| (kind, id)).collect()
            }
            FaultKind::Overlap => {
                let pick = FaultKind::single_node(n, clocks);
                let first = pick[rng.range(0, pick.len() as u64) as usize];
                let second = pick[rng.range(0, pick.len() as u64) as usize];
                let others: Vec<u32> = (1..=n).filter(|x| *x != target).collect();
                let other = others[rng.range(0, others.len() as u64) as usize];
                vec![(first, target), (second, other)]
            }
            _ => vec![(kind, target)],
        };
        actions.sort_by_key(|(_, id)| *id);
        let nodes: Vec<u32> = actions.iter().map(|(_, id)| *id).collect();
        let hit: BTreeSet<u32> = nodes.iter().copied().collect();
        let partitions: Vec<u32> = match &leaders {
            Some(l) => l
                .iter()
                .filter(|(_, leader)| hit.contains(leader))
                .map(|(p, _)| *p)
                .collect(),
            None => (0..cfg.partitions).collect(),
        };
        eprintln!(
            "[{:>7.1}s] fault {} on node(s) {nodes:?} (leading partitions {partitions:?}), held {:.1}s",
            rec.now() as f64 / 1e9,
            kind.name(),
            hold.as_secs_f64()
        );
        let mut details = Vec::new();
        if kind == FaultKind::CorruptAll {
            ruins += 1;
            let d = ruin_a_partition(cluster, client, ruins).await?;
            eprintln!("           {d}");
            details.push(d);
        }
        for (action, id) in actions.iter().filter(|(k, _)| *k != FaultKind::CorruptAll) {
            if let Some(d) = inject(cluster, *action, *id, rng).await? {
                eprintln!("           {d}");
                details.push(d);
            }
        }
        let start = rec.now();
        tokio::time::sleep(hold).await;
        cluster.heal_all().await?;
        // Restarted nodes get time to open their logs before the next fault, so that faults
        // hit a working cluster rather than pile up on a node still starting.
        for id in &nodes {
            if let Err(e) = cluster.wait_ready(*id, Duration::from_secs(60)).await {
                match kind {
                    FaultKind::CorruptMeta => {
                        let d = repair_meta(cluster, *id, &e.to_string()).await?;
                        eprintln!("           {d}");
                        details.push(d);
                    }
                    _ => eprintln!("warning: {e}"),
                }
            }
        }
        let detail = (!details.is_empty()).then(|| details.join("; "));
        done.push(FaultRecord {
            kind,
            nodes,
            partitions,
            start,
            healed: rec.now(),
            failover_ms: None,
            after_heal_ms: None,
            detail,
        });
    }
    Ok(done)
}

/// A node that refused to start after `corrupt_meta`: checks that it refused for the damage
/// (anything else fails the run), then repairs it as `docs/operations.md` ("A damaged metadata
/// journal") tells an operator to: with the node stopped, move its Raft log, snapshot and
/// committed hint aside (and its vote, if the vote is what is damaged), start it again; it
/// rejoins through its seeds and the metadata leader sends it the log again. Says what it did.
async fn repair_meta(cluster: &mut Cluster, id: u32, why: &str) -> Result<String> {
    let logs = cluster.logs(id).await.unwrap_or_default();
    let Some(line) = logs.lines().rev().find(|l| l.contains(" is damaged")) else {
        anyhow::bail!(
            "node {id} did not come back after its metadata was damaged, and not because it found the damage: {why}"
        );
    };
    let raft = cluster.data_dir(id).join("meta/raft");
    let mut n = 1;
    let aside = loop {
        let p = cluster.data_dir(id).join(format!("meta/raft.damaged-{n}"));
        if !p.exists() {
            break p;
        }
        n += 1;
    };
    std::fs::create_dir_all(&aside)?;
    let mut moved = Vec::new();
    for f in ["raft.log", "snapshot.json", "committed.json", "vote.json"] {
        if f == "vote.json" && !line.contains("vote.json") {
            continue;
        }
        if raft.join(f).exists() {
            std::fs::rename(raft.join(f), aside.join(f))?;
            moved.push(f);
        }
    }
    cluster.start_node(id).await?;
    cluster
        .wait_ready(id, Duration::from_secs(60))
        .await
        .with_context(|| format!("node {id} after its metadata files were moved aside"))?;
    let said = line
        .find("the metadata")
        .or_else(|| line.find("/data"))
        .map_or(line, |i| &line[i..]);
    Ok(format!(
        "node {id} refused to start ({}); moved {} aside, it rejoined",
        said.chars().take(120).collect::<String>(),
        moved.join(", ")
    ))
}

/// `corrupt_all`, whole (see [`FaultKind::CorruptAll`]): returns what it saw; an error (the run
/// fails) if the damaged partition came back serving or reused an offset.
async fn ruin_a_partition(cluster: &mut Cluster, client: &Client, round: u32) -> Result<String> {
    use cascade_client::{Acks, proto::Record};
    let topic = format!("ruin-{round}");
    let n = cluster.nodes.len() as u32;
    let configs = [("min.insync.replicas".to_string(), "2".to_string())].into();
    let deadline = Instant::now() + Duration::from_secs(60);
    let retry = Duration::from_millis(300);
    loop {
        match client
            .create_topic(&topic, 1, n.min(3), BTreeMap::clone(&configs))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(retry).await;
            }
            Err(e) => return Err(e).context("creating the side topic"),
        }
    }
    // 20 batches of 10 acknowledged events, then every replica in sync (each holds them all).
    let mut end = 0u64;
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for b in 0..20 {
        let records: Vec<Record> = (0..10)
            .map(|i| Record {
                value: Some(format!("{topic}-{b}-{i}").into_bytes().into()),
                ..Default::default()
            })
            .collect();
        loop {
            match client
                .produce_records(&topic, Some(0), records.clone(), Acks::All)
                .await
            {
                Ok(r) => {
                    end = end.max(r.last().map_or(0, |p| p.last_offset + 1));
                    if let Some(first) = r.first() {
                        for (i, rec) in records.iter().enumerate() {
                            let v = rec.value.clone().unwrap_or_default().to_vec();
                            acked.insert(first.base_offset + i as u64, v);
                        }
                    }
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(retry).await;
                }
                Err(e) => return Err(e).context("writing the side topic"),
            }
        }
    }
    let replicas = loop {
        let p = client
            .describe_topic(&topic)
            .await
            .ok()
            .map(|t| t.partitions[0].clone());
        if let Some(p) = p.filter(|p| p.isr.len() == p.replicas.len()) {
            break p.replicas;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic}/0 never had every replica in sync"
        );
        tokio::time::sleep(retry).await;
    };
    for id in 1..=n {
        cluster.kill(id).await?;
    }
    let mut flipped = Vec::new();
    for &r in &replicas {
        let dir = cluster.data_dir(r).join("topics").join(&topic).join("0");
        let log = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .with_context(|| format!("no segment in {}", dir.display()))?;
        let mut bytes = std::fs::read(&log)?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&log, &bytes)?;
        flipped.push(format!("node {r} byte {at}"));
    }
    for id in 1..=n {
        cluster.start_node(id).await?;
    }
    for id in 1..=n {
        cluster.wait_ready(id, Duration::from_secs(60)).await?;
    }
    // The refusal: offline, every replica shown not in sync. Watched for 10 s, writing and
    // reading all along: a write may be refused, never stored at an offset below `end`, and a
    // read may fail, never return what was not written there.
    let watch = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    let mut last = None;
    while Instant::now() < watch {
        // Right after the restart the metadata may still name the last leader (it keeps the
        // role until the controller hears its replica is damaged); what counts is that
        // nothing is served or written from the cut log, and that it ends offline.
        if let Ok(t) = client.describe_topic(&topic).await {
            last = Some(t.partitions[0].clone());
        }
        if let Ok(f) = client.fetch(&topic, 0, 0, 1 << 20, Duration::ZERO).await {
            for batch in cascade_log::record::Batches::new(&f.batches) {
                let records = batch.ok().and_then(|b| b.records().ok());
                for r in records.into_iter().flatten() {
                    let at = r.offset as u64;
                    anyhow::ensure!(
                        acked.get(&at).is_none_or(|v| r.value == Some(v.as_slice())),
                        "{topic}/0 served something else at acknowledged offset {at} after the damage"
                    );
                }
            }
        }
        let probe = vec![Record {
            value: Some(b"after the damage".to_vec().into()),
            ..Default::default()
        }];
        match client
            .produce_records(&topic, Some(0), probe, Acks::All)
            .await
        {
            Ok(r) => anyhow::ensure!(
                r[0].base_offset >= end,
                "a write after the damage took offset {} of a lost event (acknowledged up to {end})",
                r[0].base_offset
            ),
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Judged by the controller's view: replica states come from heartbeats, and a node that
    // has not yet heard one from a restarted broker still shows that broker's replicas as
    // they were before (in sync), while the controller acts on what it heard.
    let controller = client
        .describe_cluster()
        .await
        .ok()
        .map(|d| d.controller_id)
        .filter(|&c| (1..=n).contains(&c));
    if let Some(c) = controller
        && let Some(t) = describe_topic_at(&cluster.node(c).grpc_addr(), &topic).await
    {
        last = Some(t.partitions[0].clone());
    }
    let p = last.context("the damaged partition was never described")?;
    // Offline: no leader, or (while the metadata still names the last leader) a leader whose
    // replica is shown damaged; either way nothing was served or written from it (above).
    let leader_damaged = p
        .replica_status
        .iter()
        .any(|r| r.node_id == p.leader && r.state != "in-sync");
    anyhow::ensure!(
        p.leader == 0 || leader_damaged,
        "{topic}/0 is led again after damage on every copy: {p:?}"
    );
    anyhow::ensure!(
        p.replica_status.iter().all(|r| r.state != "in-sync"),
        "a damaged replica is shown in sync: {p:?}"
    );
    let why: Vec<String> = p
        .replica_status
        .iter()
        .map(|r| format!("{} {}", r.node_id, r.state))
        .collect();
    let elected = elect_uncleanly(client, &topic, &acked, end).await?;
    let deleted = client.delete_topic(&topic).await.is_ok();
    Ok(format!(
        "{topic}/0 damaged on every replica ({}); offline as it must be ({}), {refused} writes refused, none at a lost offset; {elected}; side topic {}",
        flipped.join(", "),
        why.join(", "),
        if deleted {
            "deleted"
        } else {
            "left (delete failed)"
        }
    ))
}

/// `topic` as the node at `addr` itself describes it (a client would route the request to any
/// node), if it answers.
async fn describe_topic_at(
    addr: &str,
    topic: &str,
) -> Option<cascade_client::proto::TopicDescription> {
    use cascade_client::proto::{DescribeTopicRequest, admin_client::AdminClient};
    let mut c = tokio::time::timeout(
        Duration::from_secs(5),
        AdminClient::connect(format!("http://{addr}")),
    )
    .await
    .ok()?
    .ok()?;
    let req = DescribeTopicRequest {
        name: topic.to_string(),
    };
    tokio::time::timeout(Duration::from_secs(5), c.describe_topic(req))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

/// The end of `corrupt_all`: the operator's way out of the refusal, an unclean election
/// (`cascade topic elect-leader --unclean`), accepting the loss. The partition must serve
/// again from a copy cut at the damage: every event it serves below the cut is the
/// acknowledged one, and a write lands at the cut or after it (never inside the prefix).
/// Says what it saw.
async fn elect_uncleanly(
    client: &Client,
    topic: &str,
    acked: &BTreeMap<u64, Vec<u8>>,
    end: u64,
) -> Result<String> {
    use cascade_client::{Acks, proto::Record};
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        match client.elect_unclean_leader(topic, 0, None).await {
            Ok(e) => break e,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("the unclean election"),
        }
    };
    let cut = e
        .candidates
        .iter()
        .find(|c| c.node_id == e.leader && c.known)
        .map(|c| c.log_end_offset)
        .context("the elected replica's end is unknown")?;
    anyhow::ensure!(
        cut <= end,
        "elected a copy ending at {cut}, past the acknowledged end {end}"
    );
    let probe = vec![Record {
        value: Some(b"after the election".to_vec().into()),
        ..Default::default()
    }];
    let at = loop {
        match client
            .produce_records(topic, Some(0), probe.clone(), Acks::Leader)
            .await
        {
            Ok(r) => break r[0].base_offset,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e).context("writing after the unclean election"),
        }
    };
    anyhow::ensure!(
        at >= cut,
        "a write after the election landed at {at}, inside the kept prefix (cut at {cut})"
    );
    let mut next = 0;
    while next < cut {
        let f = client
            .fetch(topic, 0, next, 1 << 20, Duration::ZERO)
            .await
            .context("reading after the unclean election")?;
        let before = next;
        for batch in cascade_log::record::Batches::new(&f.batches) {
            let records = batch.ok().and_then(|b| b.records().ok());
            for r in records.into_iter().flatten() {
                let off = r.offset as u64;
                // An offset never acknowledged may hold a retried write that was stored.
                if off < cut {
                    anyhow::ensure!(
                        acked
                            .get(&off)
                            .is_none_or(|v| r.value == Some(v.as_slice())),
                        "{topic}/0 serves something else at acknowledged offset {off} after the unclean election"
                    );
                }
                next = next.max(off + 1);
            }
        }
        anyhow::ensure!(
            next > before,
            "{topic}/0 serves nothing at {before} after the unclean election (cut at {cut})"
        );
    }
    Ok(format!(
        "unclean election: node {} leads from offset {cut} (of {end}), the prefix intact, next write at {at}",
        e.leader
    ))
}

/// Puts one single-node fault in force on node `id`; returns what it did when that needs
/// saying (the byte flipped, the disk fault, the link cut), for the report.
async fn inject(
    cluster: &mut Cluster,
    kind: FaultKind,
    id: u32,
    rng: &mut Rng,
) -> Result<Option<String>> {
    let n = cluster.nodes.len() as u32;
    Ok(match kind {
        FaultKind::KillLeader | FaultKind::FullRestart => {
            cluster.kill(id).await?;
            None
        }
        FaultKind::CorruptLeader => {
            cluster.kill(id).await?;
            let files = damageable_files(&cluster.data_dir(id));
            damage_one_file(&cluster.data_dir(id), &files, rng)?.map(|d| format!("node {id}: {d}"))
        }
        FaultKind::CorruptMeta => {
            cluster.kill(id).await?;
            let data = cluster.data_dir(id);
            let files: Vec<std::path::PathBuf> = ["raft.log", "vote.json", "snapshot.json"]
                .iter()
                .map(|f| data.join("meta/raft").join(f))
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
                .collect();
            damage_one_file(&data, &files, rng)?.map(|d| format!("node {id}: {d}"))
        }
        FaultKind::PauseLeader => {
            cluster.pause(id).await?;
            None
        }
        FaultKind::StopLeader => {
            // A controlled shutdown that needs the SIGKILL at the end of the grace period is
            // a hang, not a stop: the run fails.
            anyhow::ensure!(
                cluster.stop_graceful(id).await?,
                "node {id} did not stop within its grace period after SIGTERM"
            );
            None
        }
        FaultKind::IsolateLeader | FaultKind::IsolateMinority => {
            cluster.disconnect(id).await?;
            None
        }
        FaultKind::FailingDisk | FaultKind::FullDisk | FaultKind::SlowDisk => {
            let fault = match kind {
                FaultKind::FailingDisk => "eio",
                FaultKind::FullDisk => "full",
                _ => "slow 1500",
            };
            cluster.set_disk(id, fault).await?;
            Some(format!("node {id}: disk {fault}"))
        }
        FaultKind::Asymmetric => {
            let others: Vec<u32> = (1..=n).filter(|x| *x != id).collect();
            let to = others[rng.range(0, others.len() as u64) as usize];
            cluster.drop_packets(id, to).await?;
            Some(format!("node {id}: packets to node {to} dropped"))
        }
        FaultKind::ClockJump => {
            const STEPS: [&str; 5] = ["+2h", "-2h", "+25h", "-25h", "+90s"];
            let step = STEPS[rng.range(0, STEPS.len() as u64) as usize];
            cluster.set_clock(id, step).await?;
            Some(format!("node {id}: wall clock {step}"))
        }
        FaultKind::Overlap => unreachable!("an overlap is split into single-node faults"),
        FaultKind::CorruptAll => unreachable!("done whole by `ruin_a_partition`"),
    })
}

/// The partition files a `corrupt_leader` fault may hit, under a node's data directory: every
/// segment file, producer snapshot and leader-epoch cache of every topic (the metadata files
/// are `corrupt_meta`'s).
fn damageable_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(topics) = std::fs::read_dir(data.join("topics")) else {
        return out;
    };
    for t in topics.flatten() {
        let Ok(entries) = std::fs::read_dir(t.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                for f in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if [".log", ".index", ".timeindex", ".snapshot"]
                        .iter()
                        .any(|x| name.ends_with(x))
                    {
                        out.push(f.path());
                    }
                }
            } else if path.to_string_lossy().ends_with(".leader-epochs") {
                out.push(path);
            }
        }
    }
    out.retain(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
    out.sort();
    out
}

/// Damages one of `files` (chosen by `rng`) of a stopped node: flips one bit, or one time in
/// three cuts the file short at a random length; says what it did.
fn damage_one_file(
    data: &std::path::Path,
    files: &[std::path::PathBuf],
    rng: &mut Rng,
) -> Result<Option<String>> {
    if files.is_empty() {
        return Ok(None);
    }
    let path = &files[rng.range(0, files.len() as u64) as usize];
    let mut bytes = std::fs::read(path)?;
    let shown = path.strip_prefix(data).unwrap_or(path);
    let len = bytes.len();
    if rng.range(0, 3) == 0 {
        let to = rng.range(0, len as u64) as usize;
        bytes.truncate(to);
        std::fs::write(path, &bytes)?;
        return Ok(Some(format!(
            "cut {} from {len} to {to} bytes",
            shown.display()
        )));
    }
    let at = rng.range(0, len as u64) as usize;
    let mask = 1u8 << rng.range(0, 8);
    bytes[at] ^= mask;
    std::fs::write(path, &bytes)?;
    Ok(Some(format!(
        "flipped {} byte {at} of {len} (mask {mask:#04x})",
        shown.display()
    )))
}

/// Fills in each fault's failover time from the acknowledged events: the first produce sent
/// after the fault started, to a partition the faulted nodes led, that was acknowledged.
pub fn measure_failover(faults: &mut [FaultRecord], acks: &[Ack]) {
    for f in faults.iter_mut() {
        let affected: BTreeSet<u32> = f.partitions.iter().copied().collect();
        let first = acks
            .iter()
            .filter(|a| a.invoked >= f.start && affected.contains(&a.partition))
            .map(|a| a.acked)
            .min();
        f.failover_ms = first.map(|t| (t - f.start) as f64 / 1e6);
        f.after_heal_ms = first.map(|t| t.saturating_sub(f.healed) as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_reproducible_and_spread() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.range(0, 1000)).collect()
        };
        let mut r = Rng::new(42);
        let b: Vec<u64> = (0..5).map(|_| r.range(0, 1000)).collect();
        assert_eq!(a, b);
        let mut r = Rng::new(43);
        let c: Vec<u64> = (0..5).map(|_| r.range(0, 1000)).collect();
        assert_ne!(a, c);
        let mut r = Rng::new(7);
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            seen[r.range(0, 4) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
        assert_eq!(r.range(5, 5), 5);
    }

    #[test]
    fn every_kind_comes_once_per_round_in_a_seeded_order() {
        let menu = FaultKind::menu(5, true);
        let mut sorted = menu.clone();
        sorted.sort();
        let deal = |seed| {
            let (mut rng, mut pending) = (Rng::new(seed), Vec::new());
            (0..3 * menu.len())
                .map(|_| next_kind(&mut pending, &menu, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = deal(9);
        assert_eq!(a, deal(9));
        for round in a.chunks(menu.len()) {
            let mut r = round.to_vec();
            r.sort();
            assert_eq!(r, sorted);
        }
        assert_ne!(a, deal(10));
    }

    #[test]
    fn the_menu_fits_the_cluster_size() {
        assert!(!FaultKind::menu(1, true).contains(&FaultKind::IsolateLeader));
        assert!(FaultKind::menu(3, true).contains(&FaultKind::IsolateLeader));
        assert!(!FaultKind::menu(3, true).contains(&FaultKind::IsolateMinority));
        assert!(FaultKind::menu(5, true).contains(&FaultKind::IsolateMinority));
    }

    fn ack(partition: u32, invoked: u64, acked: u64) -> Ack {
        Ack {
            topic: "t".into(),
            partition,
            offset: 0,
            payload: vec![],
            invoked,
            acked,
        }
    }

    #[test]
    fn failover_counts_only_produces_sent_after_the_fault_to_affected_partitions() {
        let mut f = vec![FaultRecord {
            kind: FaultKind::KillLeader,
            nodes: vec![2],
            partitions: vec![1, 4],
            start: 1_000_000_000,
            healed: 1_500_000_000,
            failover_ms: None,
            after_heal_ms: None,
            detail: None,
        }];
        let acks = vec![
            ack(1, 900_000_000, 1_100_000_000),   // sent before the fault
            ack(0, 1_000_000_000, 1_200_000_000), // partition not led by the node
            ack(4, 1_500_000_000, 2_500_000_000),
            ack(1, 1_100_000_000, 2_000_000_000), // the first one to count
        ];
        measure_failover(&mut f, &acks);
        assert_eq!(f[0].failover_ms, Some(1000.0));
        assert_eq!(f[0].after_heal_ms, Some(500.0));
        // A write that came back before the heal ended counts as no wait after it.
        f[0].healed = 2_500_000_000;
        measure_failover(&mut f, &acks);
        assert_eq!(f[0].after_heal_ms, Some(0.0));
        measure_failover(&mut f, &acks[..2]);
        assert_eq!((f[0].failover_ms, f[0].after_heal_ms), (None, None));
    }
}
