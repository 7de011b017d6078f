//! Multi-process cluster tests on 127.0.0.1: three real `cascade server` processes forming a
//! cluster through `--seeds`, replicated topics, leader kill -9 and failover, follower
//! catch-up, `min.insync.replicas`, a broker added later taking replicas and leadership of new
//! topics, and replicas compared byte for byte afterwards.
//!
//! Requests are routed to partition leaders by hand here (from DescribeCluster), so these
//! tests check the servers, not the client's routing.

mod common;

use cascade_client::proto::{ClusterDescription, ErrorCode};
use cascade_client::{Acks, Client};
use common::errors::record;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    wait_until(what, timeout, async || {
        f().await.ok_or_else(|| "not yet".to_string())
    })
    .await
}

/// Like [`wait_for`], but `f` describes what it saw when the condition does not hold yet, and a
/// timeout reports the last such description (which part of a compound condition failed).
async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> std::result::Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 20 s) until three brokers are registered and alive.
async fn wait_three_live(nodes: &[Node]) {
    wait_for("3 live brokers", Duration::from_secs(20), async || {
        let d = describe(nodes).await;
        (d.brokers.len() == 3 && d.brokers.iter().all(|b| b.alive)).then_some(())
    })
    .await;
}

/// The cluster as one node sees it (None if it does not answer).
async fn describe_at(node: &Node) -> Option<ClusterDescription> {
    let c = Client::connect(&node.grpc).await.ok()?;
    c.describe_cluster().await.ok()
}

/// The cluster as a running node sees it.
async fn describe(nodes: &[Node]) -> ClusterDescription {
    for n in nodes.iter().filter(|n| n.child.is_some()) {
        if let Ok(c) = Client::connect(&n.grpc).await
            && let Ok(d) = c.describe_cluster().await
        {
            return d;
        }
    }
    panic!("no node answers DescribeCluster");
}

fn partition(
    d: &ClusterDescription,
    topic: &str,
    p: u32,
) -> cascade_client::proto::PartitionDescription {
    d.topics
        .iter()
        .find(|t| t.name == topic)
        .expect("topic")
        .partitions[p as usize]
        .clone()
}

async fn leader_client(nodes: &[Node], topic: &str, p: u32) -> (u32, Client) {
    let d = describe(nodes).await;
    let leader = partition(&d, topic, p).leader;
    assert_ne!(leader, 0, "{topic}/{p} has no leader");
    let c = Client::connect(&nodes[leader as usize - 1].grpc)
        .await
        .expect("connect to leader");
    (leader, c)
}

/// Produces `n` values to each partition at its leader with acks=all; returns what was
/// acknowledged: partition → offset → value.
async fn produce_all(
    nodes: &[Node],
    topic: &str,
    partitions: u32,
    tag: &str,
    n: usize,
    acked: &mut BTreeMap<u32, BTreeMap<u64, String>>,
) {
    for p in 0..partitions {
        let (_, c) = leader_client(nodes, topic, p).await;
        for chunk in 0..n / 10 {
            let values: Vec<String> = (0..10)
                .map(|i| format!("{tag}-{p}-{}", chunk * 10 + i))
                .collect();
            let recs: Vec<_> = values.iter().map(|v| record(None, v.as_bytes())).collect();
            // Right after a leader change the new leader may still be taking over: those
            // answers are retriable (and nothing was written).
            let deadline = Instant::now() + Duration::from_secs(10);
            let r = loop {
                match c
                    .produce_records(topic, Some(p), recs.clone(), Acks::All)
                    .await
                {
                    Ok(r) => break r,
                    Err(e)
                        if matches!(
                            e.reason(),
                            Some(ErrorCode::LeaderNotAvailable | ErrorCode::NotLeader)
                        ) && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("acks=all produce to {topic}/{p}: {e}"),
                }
            };
            let base = r[0].base_offset;
            for (i, v) in values.into_iter().enumerate() {
                acked.entry(p).or_default().insert(base + i as u64, v);
            }
        }
    }
}

/// Checks that every acknowledged value is at its offset on the partition leader.
async fn check_acked(nodes: &[Node], topic: &str, acked: &BTreeMap<u32, BTreeMap<u64, String>>) {
    for (&p, want) in acked {
        let (_, c) = leader_client(nodes, topic, p).await;
        let got = read_partition(&c, topic, p).await;
        for (&off, v) in want {
            let at = got
                .get(off as usize)
                .unwrap_or_else(|| panic!("{topic}/{p}: acknowledged offset {off} missing"));
            assert_eq!(at.1, v.as_bytes(), "{topic}/{p} offset {off}");
        }
    }
}

/// Every stored batch of a replica's partition directory, read offline.
fn replica_bytes(dir: &Path) -> Vec<u8> {
    let log = cascade_log::Log::open(dir, cascade_log::LogConfig::default()).expect("open replica");
    let r = log.reader();
    let mut out = Vec::new();
    let mut next = r.start_offset();
    while next < r.end_offset() {
        let f = r.read(next, 1 << 20).expect("read");
        out.extend_from_slice(&f.data);
        next = f.next_offset;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_fail_over_and_catch_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    let d = wait_for("3 live brokers", Duration::from_secs(20), async || {
        let d = describe(&nodes).await;
        (d.brokers.len() == 3 && d.brokers.iter().all(|b| b.alive)).then_some(d)
    })
    .await;
    assert_ne!(d.controller_id, 0);

    let admin = nodes[1].client().await; // any node takes admin requests
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    admin
        .create_topic("r", 3, 3, configs)
        .await
        .expect("create");
    let d = describe(&nodes).await;
    let leaders: Vec<u32> = (0..3).map(|p| partition(&d, "r", p).leader).collect();
    let mut sorted = leaders.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [1, 2, 3],
        "leadership spread over the brokers: {leaders:?}"
    );
    for p in 0..3 {
        assert_eq!(partition(&d, "r", p).isr.len(), 3);
    }

    let mut acked = BTreeMap::new();
    produce_all(&nodes, "r", 3, "a", 100, &mut acked).await;
    check_acked(&nodes, "r", &acked).await;

    // kill -9 the leader of partition 0: a live in-sync replica takes over.
    let victim = partition(&describe(&nodes).await, "r", 0).leader;
    nodes[victim as usize - 1].kill9();
    let killed = Instant::now();
    let new_leader = wait_for("a new leader of r/0", Duration::from_secs(20), async || {
        let p = partition(&describe(&nodes).await, "r", 0);
        (p.leader != 0 && p.leader != victim).then_some(p.leader)
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("failover of r/0 from node {victim} to node {new_leader}: {failover:?}");
    let d = describe(&nodes).await;
    for p in 0..3 {
        let part = partition(&d, "r", p);
        assert!(
            !part.isr.contains(&victim),
            "the dead node left the ISR of r/{p}"
        );
        assert_ne!(part.leader, victim);
    }
    // The survivors report what happened in /metrics.
    let survivors: Vec<usize> = (0..3).filter(|&i| i + 1 != victim as usize).collect();
    wait_for(
        "under-replicated partitions, ISR shrinks and elections in /metrics",
        Duration::from_secs(20),
        async || {
            let sum = |name: &str| {
                survivors
                    .iter()
                    .map(|&i| metric(&nodes[i], name))
                    .sum::<f64>()
            };
            (sum("cascade_under_replicated_partitions") >= 1.0
                && sum("cascade_isr_shrinks_total") >= 1.0
                && sum("cascade_leader_elections_total") >= 1.0)
                .then_some(())
        },
    )
    .await;
    // Two in-sync replicas remain: acks=all still works.
    produce_all(&nodes, "r", 3, "b", 50, &mut acked).await;
    check_acked(&nodes, "r", &acked).await;

    // The node comes back, catches up and rejoins every in-sync set.
    nodes[victim as usize - 1].restart_same_port();
    wait_for(
        "the returning node back in sync",
        Duration::from_secs(30),
        async || {
            let d = describe(&nodes).await;
            (0..3)
                .all(|p| partition(&d, "r", p).isr.len() == 3)
                .then_some(())
        },
    )
    .await;
    wait_for(
        "no under-replicated partition and ISR expands in /metrics",
        Duration::from_secs(20),
        async || {
            let under: f64 = nodes
                .iter()
                .map(|n| metric(n, "cascade_under_replicated_partitions"))
                .sum();
            let expands: f64 = nodes
                .iter()
                .map(|n| metric(n, "cascade_isr_expands_total"))
                .sum();
            (under == 0.0 && expands >= 1.0).then_some(())
        },
    )
    .await;
    // Leadership returns to the preferred replicas.
    wait_for("preferred leaders", Duration::from_secs(30), async || {
        let d = describe(&nodes).await;
        let now: Vec<u32> = (0..3).map(|p| partition(&d, "r", p).leader).collect();
        (now == leaders).then_some(())
    })
    .await;
    produce_all(&nodes, "r", 3, "c", 50, &mut acked).await;
    check_acked(&nodes, "r", &acked).await;

    // Stop everything and compare the replicas byte for byte.
    for n in nodes.iter_mut() {
        assert_eq!(n.stop(), Some(0));
    }
    for p in 0..3u32 {
        let copies: Vec<Vec<u8>> = dirs
            .iter()
            .map(|d| replica_bytes(&d.path().join("topics").join("r").join(p.to_string())))
            .collect();
        assert!(!copies[0].is_empty());
        assert_eq!(copies[0], copies[1], "r/{p}: replicas 1 and 2 differ");
        assert_eq!(copies[0], copies[2], "r/{p}: replicas 1 and 3 differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_all_needs_min_insync_replicas() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    // Every replica must acknowledge (a majority of nodes stays up, so the metadata group
    // keeps working while one is down).
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "3".to_string())].into();
    admin
        .create_topic("m", 1, 3, configs)
        .await
        .expect("create");
    let leader = partition(&describe(&nodes).await, "m", 0).leader;
    let followers: Vec<u32> = (1..=3).filter(|&n| n != leader).collect();
    let (_, c) = leader_client(&nodes, "m", 0).await;
    c.produce_records("m", Some(0), vec![record(None, b"x")], Acks::All)
        .await
        .expect("three in sync");

    // A follower dies: the in-sync set shrinks below the minimum.
    nodes[followers[0] as usize - 1].kill9();
    wait_for("the ISR shrinking", Duration::from_secs(20), async || {
        let p = partition(&describe(&nodes).await, "m", 0);
        (p.isr.len() == 2).then_some(())
    })
    .await;
    let err = c
        .produce_records("m", Some(0), vec![record(None, b"y")], Acks::All)
        .await
        .expect_err("acks=all with 2 in-sync replicas and min.insync.replicas=3");
    assert_eq!(err.reason(), Some(ErrorCode::NotEnoughReplicas), "{err}");
    // acks=leader still works.
    c.produce_records("m", Some(0), vec![record(None, b"z")], Acks::Leader)
        .await
        .expect("acks=leader");

    // The follower returns: it catches up, rejoins, and acks=all works again.
    nodes[followers[0] as usize - 1].restart_same_port();
    wait_for(
        "the follower back in sync",
        Duration::from_secs(30),
        async || {
            let p = partition(&describe(&nodes).await, "m", 0);
            (p.isr.len() == 3).then_some(())
        },
    )
    .await;
    c.produce_records("m", Some(0), vec![record(None, b"w")], Acks::All)
        .await
        .expect("three in sync again");
    let got = read_partition(&c, "m", 0).await;
    let values: Vec<&[u8]> = got.iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(values, [b"x".as_slice(), b"z", b"w"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_stop_hands_leadership_over_before_exiting() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let admin = nodes[2].client().await;
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    admin
        .create_topic("g", 3, 3, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "g", 3, "a", 20, &mut acked).await;

    let leaving = partition(&describe(&nodes).await, "g", 0).leader;
    let node = &mut nodes[leaving as usize - 1];
    let code = tokio::task::block_in_place(|| node.stop());
    assert_eq!(code, Some(0));
    // Leadership had moved before the process exited: no session timeout to wait for.
    let d = describe(&nodes).await;
    for p in 0..3 {
        let part = partition(&d, "g", p);
        assert_ne!(part.leader, leaving, "g/{p} still led by the stopped node");
        assert_ne!(part.leader, 0, "g/{p} has a leader");
        assert!(!part.isr.contains(&leaving));
    }
    produce_all(&nodes, "g", 3, "b", 20, &mut acked).await;
    check_acked(&nodes, "g", &acked).await;
}

/// Starts every node again at once (each waits for a majority before it is ready).
fn restart_all(nodes: &mut [Node]) {
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            for n in nodes.iter_mut() {
                s.spawn(move || n.restart_same_port());
            }
        })
    });
}

/// Flips bytes in the middle of the second (sealed) segment of a replica's partition.
fn damage_sealed_segment(partition_dir: &Path) {
    let mut logs: Vec<_> = std::fs::read_dir(partition_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    assert!(logs.len() >= 3, "need sealed segments, have {logs:?}");
    let path = &logs[1];
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

async fn replicated_topic_with_segments(
    nodes: &[Node],
    topic: &str,
) -> BTreeMap<u32, BTreeMap<u64, String>> {
    let admin = nodes[0].client().await;
    let configs: BTreeMap<String, String> = [
        ("min.insync.replicas".to_string(), "2".to_string()),
        ("segment.bytes".to_string(), "2048".to_string()),
    ]
    .into();
    admin
        .create_topic(topic, 1, 3, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(nodes, topic, 1, "v", 300, &mut acked).await;
    wait_for(
        "all replicas in sync",
        Duration::from_secs(20),
        async || (partition(&describe(nodes).await, topic, 0).isr.len() == 3).then_some(()),
    )
    .await;
    acked
}

fn assert_replicas_identical(dirs: &[tempfile::TempDir], topic: &str) {
    let copies: Vec<Vec<u8>> = dirs
        .iter()
        .map(|d| replica_bytes(&d.path().join("topics").join(topic).join("0")))
        .collect();
    assert!(!copies[0].is_empty());
    for (i, c) in copies.iter().enumerate().skip(1) {
        assert!(
            &copies[0] == c,
            "{topic}/0: replica {} differs from replica 1 ({} vs {} bytes)",
            i + 1,
            c.len(),
            copies[0].len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_follower_is_detected_by_checksum_and_repaired_from_the_leader() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let acked = replicated_topic_with_segments(&nodes, "d").await;
    let p = partition(&describe(&nodes).await, "d", 0);
    let follower = *p.replicas.iter().find(|&&r| r != p.leader).unwrap();
    let f = &mut nodes[follower as usize - 1];
    tokio::task::block_in_place(|| f.stop());
    damage_sealed_segment(&dirs[follower as usize - 1].path().join("topics/d/0"));
    nodes[follower as usize - 1].restart_same_port();
    // The scrub finds the damage, the replica leaves the ISR, cuts its log there and fetches
    // the rest. Until the repair is counted the ISR may still show the replica from before.
    let repaired = &nodes[follower as usize - 1];
    let end = acked[&0].keys().max().unwrap() + 1;
    wait_until(
        "the repaired follower back in sync",
        Duration::from_secs(60),
        async || {
            // Its ISR membership as any node sees it, and its own log complete again (a
            // view of the ISR can lag the replica's leaving and coming back).
            let p = partition(&describe(&nodes).await, "d", 0);
            let own = describe_at(repaired)
                .await
                .map(|d| partition(&d, "d", 0).log_end_offset);
            let repairs = metric(repaired, "cascade_replica_repairs_total");
            if own == Some(end) && repairs >= 1.0 && p.isr.len() == 3 {
                Ok(())
            } else {
                Err(format!(
                    "repaired replica's end {own:?} (want {end}), repairs {repairs}, leader {}, isr {:?}",
                    p.leader, p.isr
                ))
            }
        },
    )
    .await;
    // The damage the repair dealt with is counted where it was found.
    assert!(metric(repaired, "cascade_log_damage_total") >= 1.0);
    check_acked(&nodes, "d", &acked).await;
    for n in nodes.iter_mut() {
        tokio::task::block_in_place(|| n.stop());
    }
    assert_replicas_identical(&dirs, "d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_leader_never_leads_with_its_damaged_log() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let acked = replicated_topic_with_segments(&nodes, "e").await;
    let leader = partition(&describe(&nodes).await, "e", 0).leader;
    // Every node stops; the leader's copy is damaged while it is down; all come back.
    for n in nodes.iter_mut() {
        tokio::task::block_in_place(|| n.stop());
    }
    damage_sealed_segment(&dirs[leader as usize - 1].path().join("topics/e/0"));
    restart_all(&mut nodes);
    let damaged = leader;
    let repaired = &nodes[leader as usize - 1];
    let end = acked[&0].keys().max().unwrap() + 1;
    wait_until(
        "a sound leader and every replica in sync",
        Duration::from_secs(60),
        async || {
            // Its ISR membership as any node sees it, and its own log complete again (a
            // view of the ISR can lag the replica's leaving and coming back).
            let p = partition(&describe(&nodes).await, "e", 0);
            let own = describe_at(repaired)
                .await
                .map(|d| partition(&d, "e", 0).log_end_offset);
            let repairs = metric(repaired, "cascade_replica_repairs_total");
            if own == Some(end) && repairs >= 1.0 && p.leader != 0 && p.isr.len() == 3 {
                Ok(())
            } else {
                let mut ends = Vec::new();
                for n in &nodes {
                    let e = describe_at(n).await.map(|d| {
                        let q = partition(&d, "e", 0);
                        (q.log_end_offset, q.high_watermark, q.leader_epoch)
                    });
                    ends.push(e);
                }
                Err(format!(
                    "damaged node {damaged}: end {own:?} (want {end}), repairs {repairs}; \
                     leader {} epoch {}, isr {:?}; (end, hw, epoch) per node {ends:?}",
                    p.leader, p.leader_epoch, p.isr
                ))
            }
        },
    )
    .await;
    check_acked(&nodes, "e", &acked).await;
    for n in nodes.iter_mut() {
        tokio::task::block_in_place(|| n.stop());
    }
    assert_replicas_identical(&dirs, "e");
}

/// Flips bytes in the middle of a replica's active segment (its newest `.log`).
fn damage_active_segment(partition_dir: &Path) {
    let mut logs: Vec<_> = std::fs::read_dir(partition_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let path = logs.last().expect("a log");
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 2] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

/// The fault that broke NATS JetStream in Jepsen's 2025 analysis, and broke this system too:
/// kill -9 the leader, flip a byte in the middle of its active segment, start it again at
/// once. Recovery took the damage for a torn tail and cut the log there; the restarted
/// leader kept leading and its followers truncated to it: 900 of 2000 acknowledged events
/// gone on every replica, and new events reused their offsets. Now the damage is recognised
/// (below the recovery point), the replica leaves the in-sync set before it may lead, and
/// fetches the rest again from an intact replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_restarted_with_a_flipped_byte_in_its_active_segment_loses_nothing() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    admin
        .create_topic("rot", 1, 3, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "rot", 1, "r", 1000, &mut acked).await;
    let end = acked[&0].keys().max().unwrap() + 1;
    wait_for(
        "all replicas in sync",
        Duration::from_secs(20),
        async || (partition(&describe(&nodes).await, "rot", 0).isr.len() == 3).then_some(()),
    )
    .await;
    let leader = partition(&describe(&nodes).await, "rot", 0).leader;
    let damaged = &mut nodes[leader as usize - 1];
    damaged.kill9();
    damage_active_segment(&dirs[leader as usize - 1].path().join("topics/rot/0"));
    tokio::task::block_in_place(|| damaged.restart_same_port());
    let repaired = &nodes[leader as usize - 1];
    wait_until(
        "the damaged replica repaired and every replica in sync",
        Duration::from_secs(60),
        async || {
            let p = partition(&describe(&nodes).await, "rot", 0);
            let own = describe_at(repaired)
                .await
                .map(|d| partition(&d, "rot", 0).log_end_offset);
            let repairs = metric(repaired, "cascade_replica_repairs_total");
            if own == Some(end) && repairs >= 1.0 && p.leader != 0 && p.isr.len() == 3 {
                Ok(())
            } else {
                Err(format!(
                    "damaged node {leader}: end {own:?} (want {end}), repairs {repairs}; leader {} hw {} isr {:?}",
                    p.leader, p.high_watermark, p.isr
                ))
            }
        },
    )
    .await;
    // The high watermark, as the leader has it, never went back below what was acknowledged.
    let leader_now = partition(&describe(&nodes).await, "rot", 0).leader;
    let hw = partition(
        &describe_at(&nodes[leader_now as usize - 1])
            .await
            .expect("leader answers"),
        "rot",
        0,
    )
    .high_watermark;
    assert!(hw >= end, "high watermark {hw} < {end}");
    check_acked(&nodes, "rot", &acked).await;
    // New events go after the acknowledged ones: no offset is reused.
    let mut more = BTreeMap::new();
    produce_all(&nodes, "rot", 1, "after", 10, &mut more).await;
    assert!(*more[&0].keys().min().unwrap() >= end, "{more:?}");
    check_acked(&nodes, "rot", &acked).await;
    for n in nodes.iter_mut() {
        tokio::task::block_in_place(|| n.stop());
    }
    assert_replicas_identical(&dirs, "rot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_follow_leaders_and_groups_survive_a_coordinator_failover() {
    use cascade_client::{GroupConfig, GroupConsumer, Producer, ProducerConfig, ProducerRecord};
    use std::collections::BTreeSet;

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    // One client for the whole cluster: it routes every request to the right node itself.
    let seeds: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let client = Client::connect(&seeds.join(",")).await.expect("connect");
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    client
        .create_topic("w", 4, 3, configs)
        .await
        .expect("create");

    let producer = Producer::new(client.clone(), "w", ProducerConfig::default())
        .await
        .expect("producer");
    let mut sent = BTreeSet::new();
    let send = async |producer: &Producer, from: usize, to: usize, sent: &mut BTreeSet<String>| {
        let futs: Vec<_> = (from..to)
            .map(|i| {
                let v = format!("w-{i}");
                sent.insert(v.clone());
                producer.send(ProducerRecord::keyed(format!("k{i}"), v))
            })
            .collect();
        for f in futures::future::join_all(futs).await {
            f.expect("acknowledged");
        }
    };
    send(&producer, 0, 400, &mut sent).await;

    let mut member = GroupConsumer::join(client.clone(), GroupConfig::new("gw", &["w"]))
        .await
        .expect("join");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 200 {
        assert!(Instant::now() < deadline, "consuming the first half");
        for r in member.poll(Duration::from_millis(200)).await.expect("poll") {
            seen.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    member.commit().await.expect("commit");
    let before: BTreeMap<(String, u32), u64> = client
        .fetch_offsets("gw", vec![])
        .await
        .expect("offsets")
        .into_iter()
        .map(|c| ((c.topic, c.partition), c.offset))
        .collect();
    assert!(!before.is_empty());

    // kill -9 the group's coordinator.
    let coordinator = client
        .coordinator_of("gw")
        .await
        .expect("coordinator")
        .node_id;
    nodes[coordinator as usize - 1].kill9();
    // The producer keeps going through the failover, and the member keeps consuming.
    send(&producer, 400, 500, &mut sent).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "consuming everything after the failover: {} of {}",
            seen.len(),
            sent.len()
        );
        match member.poll(Duration::from_millis(200)).await {
            Ok(recs) => {
                for r in recs {
                    seen.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
                }
            }
            Err(e) => eprintln!("poll during failover: {e}"),
        }
    }
    assert_eq!(seen, sent, "every acknowledged event consumed");
    // A commit refused because the member had to rejoin (its coordinator changed) says so;
    // the member then resumes from the committed offsets (at-least-once) and commits again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..5 {
            let _ = member.poll(Duration::from_millis(100)).await;
        }
        let committed = member.commit().await;
        let total: u64 = client
            .fetch_offsets("gw", vec![])
            .await
            .map(|o| o.iter().map(|c| c.offset).sum())
            .unwrap_or(0);
        if committed.is_ok() && total == sent.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committing everything after the failover: {committed:?}, {total}"
        );
    }
    let new_coordinator = client
        .coordinator_of("gw")
        .await
        .expect("coordinator")
        .node_id;
    assert_ne!(new_coordinator, coordinator);
    let after: BTreeMap<(String, u32), u64> = client
        .fetch_offsets("gw", vec![])
        .await
        .expect("offsets")
        .into_iter()
        .map(|c| ((c.topic, c.partition), c.offset))
        .collect();
    for (tp, off) in &before {
        assert!(
            after.get(tp).is_some_and(|a| a >= off),
            "{tp:?}: committed offset went back from {off} to {:?}",
            after.get(tp)
        );
    }
    let total: u64 = after.values().sum();
    assert_eq!(
        total,
        sent.len() as u64,
        "the commits cover everything consumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_added_later_gets_replicas_and_leadership_of_new_topics() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs[..3]);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    admin
        .create_topic("before", 3, 3, BTreeMap::new())
        .await
        .expect("create before");
    let placed_before = describe(&nodes).await;

    // A fourth broker joins through any seed.
    let seed = nodes[1].grpc.clone();
    let mut args = vec!["--node-id", "4", "--seeds", seed.as_str()];
    args.extend_from_slice(FAST);
    nodes.push(Node::start_with(dirs[3].path(), &args));
    wait_for("4 live brokers", Duration::from_secs(20), async || {
        let d = describe(&nodes).await;
        (d.brokers.len() == 4 && d.brokers.iter().all(|b| b.alive)).then_some(())
    })
    .await;

    // Existing topics stay where they were (no reassignment).
    let d = describe(&nodes).await;
    for p in 0..3 {
        assert_eq!(
            partition(&d, "before", p).replicas,
            partition(&placed_before, "before", p).replicas
        );
    }

    // A new topic spreads over all four, leadership one partition each.
    admin
        .create_topic("after", 4, 2, BTreeMap::new())
        .await
        .expect("create after");
    let d = describe(&nodes).await;
    let mut leaders: Vec<u32> = (0..4).map(|p| partition(&d, "after", p).leader).collect();
    leaders.sort_unstable();
    assert_eq!(leaders, [1, 2, 3, 4], "leadership spread over the brokers");
    let on_new: usize = (0..4)
        .filter(|&p| partition(&d, "after", p).replicas.contains(&4))
        .count();
    assert_eq!(
        on_new, 2,
        "4 partitions × 2 replicas over 4 brokers: 2 each"
    );
    wait_for("full in-sync sets", Duration::from_secs(20), async || {
        let d = describe(&nodes).await;
        (0..4)
            .all(|p| partition(&d, "after", p).isr.len() == 2)
            .then_some(())
    })
    .await;
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "after", 4, "n", 30, &mut acked).await;
    check_acked(&nodes, "after", &acked).await;
    for n in nodes.iter_mut() {
        assert_eq!(n.stop(), Some(0));
    }
    // The new broker's replicas hold the same bytes as their peers.
    for p in 0..4u32 {
        let replicas = partition(&d, "after", p).replicas;
        let copies: Vec<Vec<u8>> = replicas
            .iter()
            .map(|&id| {
                replica_bytes(
                    &dirs[id as usize - 1]
                        .path()
                        .join("topics")
                        .join("after")
                        .join(p.to_string()),
                )
            })
            .collect();
        assert!(!copies[0].is_empty());
        assert_eq!(
            copies[0], copies[1],
            "after/{p}: replicas {replicas:?} differ"
        );
    }
}

/// A coordinator that was paused while another node took its groups over must not answer
/// committed offsets from its memory when it wakes: its `FetchOffsets` goes through the same
/// read barrier as `DescribeGroup`, so it either fails (the client then asks the new
/// coordinator) or answers what the new coordinator committed — never the older offset, which
/// would rewind a consumer. The request is already waiting in the paused node's socket when it
/// resumes, so it is served before the node hears of its deposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_coordinator_never_answers_stale_committed_offsets() {
    use cascade_client::proto::{
        FetchOffsetsRequest, OffsetCommit, TopicPartitions, groups_client::GroupsClient,
    };
    let commit = |offset: u64| {
        vec![OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset,
            metadata: String::new(),
        }]
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let seeds: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let client = Client::connect(&seeds.join(",")).await.expect("connect");
    client
        .create_topic("t", 1, 3, BTreeMap::new())
        .await
        .expect("create");
    client
        .commit_offsets("gs", "", -1, commit(10))
        .await
        .expect("first commit");
    let old = client
        .coordinator_of("gs")
        .await
        .expect("coordinator")
        .node_id;
    let old_node = &nodes[old as usize - 1];
    // A channel to the coordinator opened now, while it answers.
    let mut direct = GroupsClient::connect(format!("http://{}", old_node.grpc))
        .await
        .expect("connect to the coordinator");
    let live: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u32 + 1 != old)
        .map(|(_, n)| n.grpc.clone())
        .collect();
    let others = Client::connect(&live.join(",")).await.expect("connect");

    old_node.signal("-STOP");
    let new = wait_for("another coordinator", Duration::from_secs(30), async || {
        let c = others.coordinator_of("gs").await.ok()?;
        (c.node_id != 0 && c.node_id != old).then_some(c.node_id)
    })
    .await;
    wait_until("the second commit", Duration::from_secs(30), async || {
        others
            .commit_offsets("gs", "", -1, commit(20))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let req = FetchOffsetsRequest {
        group_id: "gs".into(),
        partitions: vec![TopicPartitions {
            topic: "t".into(),
            partitions: vec![0],
        }],
    };
    let asked = tokio::spawn(async move { direct.fetch_offsets(req).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    old_node.signal("-CONT");
    match asked.await.expect("request task") {
        Ok(r) => {
            let offsets = r.into_inner().offsets;
            assert!(
                offsets.iter().all(|c| c.offset == 20),
                "node {old}, deposed by node {new}, answered stale offsets {offsets:?}"
            );
        }
        Err(status) => eprintln!("the deposed coordinator refused: {status}"),
    }
    // And the client, routed to the new coordinator, reads the new offset.
    let got = wait_until(
        "offsets from the new coordinator",
        Duration::from_secs(30),
        async || {
            client
                .fetch_offsets("gs", vec![])
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(got.iter().map(|c| c.offset).collect::<Vec<_>>(), [20]);
}

/// Found by the chaos soak (docs/reliability.md, seed 3003): a deposed leader that has not yet
/// learned of its deposition must not refuse a producer's retry as out of order or as an
/// unknown producer. The producer takes such a refusal as proof the batch is not stored and
/// renumbers it under a new epoch, so a batch the new leader had stored was stored twice.
/// Here the deposed leader is resumed alone (the other two paused), so it cannot learn; it
/// gets three retries of batches the new leader stored: one behind its log (it used to answer
/// OUT_OF_ORDER_SEQUENCE), one of a producer whose id it knows but whose batches it never saw,
/// and one of an id issued while it was paused (both used to be UNKNOWN_PRODUCER_ID). Then
/// every retry, at the real leader, is recognised and each event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leader_never_tells_a_producer_its_stored_batch_is_missing() {
    use cascade_client::proto::{PartitionRecords, ProduceRequest, records_client::RecordsClient};
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let seeds: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let client = Client::connect(&seeds.join(",")).await.expect("connect");
    client
        .create_topic("z", 1, 3, BTreeMap::new())
        .await
        .expect("create");
    let (p1, e1) = client.init_producer_id(None).await.expect("producer 1");
    wait_until("the first batch", Duration::from_secs(20), async || {
        client
            .produce_batches("z", 0, producer_batch(&["a"], (p1, e1, 0)), Acks::All)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let old = client
        .refresh_metadata()
        .await
        .expect("metadata")
        .leader("z", 0)
        .expect("a leader")
        .node_id;
    let old_node = &nodes[old as usize - 1];
    // Producer 3's id is issued through the leader, so the leader has applied it (a proposal
    // returns once the node that made it applied it); it writes nothing before the pause.
    let (p3, e3) = Client::connect(&old_node.grpc)
        .await
        .expect("connect to the leader")
        .init_producer_id(None)
        .await
        .expect("producer 3");
    let live: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u32 + 1 != old)
        .map(|(_, n)| n.grpc.clone())
        .collect();
    let others = Client::connect(&live.join(",")).await.expect("connect");

    old_node.signal("-STOP");
    let new = wait_for("another leader", Duration::from_secs(30), async || {
        let m = others.refresh_metadata().await.ok()?;
        let l = m.leader("z", 0)?.node_id;
        (l != 0 && l != old).then_some(l)
    })
    .await;
    let (p2, e2) = others.init_producer_id(None).await.expect("producer 2");
    let mut stored = Vec::new();
    for (what, b) in [
        ("producer 1, batch 1", producer_batch(&["b"], (p1, e1, 1))),
        ("producer 1, batch 2", producer_batch(&["c"], (p1, e1, 2))),
        ("producer 2, batch 0", producer_batch(&["x"], (p2, e2, 0))),
        ("producer 2, batch 1", producer_batch(&["y"], (p2, e2, 1))),
        ("producer 3, batch 0", producer_batch(&["m"], (p3, e3, 0))),
        ("producer 3, batch 1", producer_batch(&["n"], (p3, e3, 1))),
    ] {
        let p = wait_until(what, Duration::from_secs(30), async || {
            others
                .produce_batches("z", 0, b.clone(), Acks::All)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        stored.push((what, b, p.base_offset));
    }
    // The two others pause too: the deposed leader, resumed alone, can learn nothing.
    for (i, n) in nodes.iter().enumerate() {
        if i as u32 + 1 != old {
            n.signal("-STOP");
        }
    }
    old_node.signal("-CONT");
    let mut direct = RecordsClient::connect(format!("http://{}", old_node.grpc))
        .await
        .expect("connect to the deposed leader");
    for (what, b, _) in [&stored[1], &stored[3], &stored[5]] {
        let req = ProduceRequest {
            topic: "z".into(),
            partitions: vec![PartitionRecords {
                partition: 0,
                batches: b.clone(),
                records: vec![],
            }],
            acks: cascade_client::proto::Acks::All as i32,
            timeout_ms: 8000,
            idempotency_key: String::new(),
        };
        match direct.produce(req).await {
            Ok(r) => {
                let r = r.into_inner().results.remove(0);
                let code = r.error.as_ref().map(|e| e.code());
                assert!(
                    !matches!(
                        code,
                        Some(ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId)
                    ),
                    "node {old}, deposed by node {new}, refused the retry of {what} (stored by \
                     node {new}) as if it were not stored: {:?}",
                    r.error
                );
                eprintln!(
                    "the deposed leader answered the retry of {what}: {:?}",
                    r.error
                );
            }
            Err(status) => eprintln!("the deposed leader refused the retry of {what}: {status}"),
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if i as u32 + 1 != old {
            n.signal("-CONT");
        }
    }
    // At the real leader every retry is recognised: its original offset, nothing written.
    for (what, b, offset) in &stored {
        let again = wait_until(what, Duration::from_secs(30), async || {
            client
                .produce_batches("z", 0, b.clone(), Acks::All)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        assert_eq!(
            again.base_offset, *offset,
            "the retry of {what} was stored again"
        );
    }
    let expected: Vec<Vec<u8>> = ["a", "b", "c", "x", "y", "m", "n"]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    // Read at the current leader (node `old`, resumed, serves its own committed prefix until
    // it learns it was deposed: stale, never wrong).
    // Each node's answer is read until the real leader's is seen; any answer must be a prefix
    // of the expected events (never another event, never one twice).
    wait_until(
        "the whole partition at its leader",
        Duration::from_secs(30),
        async || {
            let (_, at_leader) = leader_client(&nodes, "z", 0).await;
            let values: Vec<Vec<u8>> = read_partition(&at_leader, "z", 0)
                .await
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            assert!(
                expected.starts_with(&values),
                "every event once, in order: {values:?}"
            );
            if values == expected {
                Ok(())
            } else {
                Err(format!("read {values:?}"))
            }
        },
    )
    .await;
}

/// A follower that was away while retention deleted the leader's older segments ends before
/// the leader's log start: it can never fetch the gap, so it restarts its replica at the
/// leader's log start and catches up from there (it used to retry the out-of-range fetch
/// forever and never rejoin the in-sync set).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_left_behind_by_retention_restarts_at_the_leaders_log_start() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster_with(&dirs, &["--retention-check-secs", "1"]);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    let configs: BTreeMap<String, String> = [
        ("min.insync.replicas".to_string(), "2".to_string()),
        ("segment.bytes".to_string(), "2048".to_string()),
        ("retention.bytes".to_string(), "4096".to_string()),
    ]
    .into();
    admin
        .create_topic("r", 1, 3, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "r", 1, "a", 50, &mut acked).await;
    wait_for(
        "all replicas in sync",
        Duration::from_secs(20),
        async || (partition(&describe(&nodes).await, "r", 0).isr.len() == 3).then_some(()),
    )
    .await;
    let p = partition(&describe(&nodes).await, "r", 0);
    let away = *p.replicas.iter().find(|&&r| r != p.leader).unwrap();
    nodes[away as usize - 1].stop();
    let away_end = 50;

    // Enough new data that retention deletes everything the stopped follower has.
    produce_all(&nodes, "r", 1, "b", 500, &mut acked).await;
    let leader_start = wait_for(
        "retention past the stopped follower's end",
        Duration::from_secs(30),
        async || {
            let (_, c) = leader_client(&nodes, "r", 0).await;
            let o = c
                .list_offsets("r", vec![0], cascade_client::proto::OffsetSpec::Earliest, 0)
                .await
                .ok()?;
            (o[0].offset > away_end).then_some(o[0].offset)
        },
    )
    .await;

    nodes[away as usize - 1].restart_same_port();
    wait_until(
        "the returning follower back in sync",
        Duration::from_secs(30),
        async || {
            let p = partition(&describe(&nodes).await, "r", 0);
            if p.isr.contains(&away) {
                Ok(())
            } else {
                Err(format!("isr {:?}", p.isr))
            }
        },
    )
    .await;
    // Its replica now starts at (or after) the leader's old log start and holds the rest.
    nodes[away as usize - 1].stop();
    let log = cascade_log::Log::open(
        dirs[away as usize - 1].path().join("topics/r/0"),
        cascade_log::LogConfig::default(),
    )
    .expect("open the follower's replica");
    assert!(
        log.reader().start_offset() > away_end,
        "the replica restarted at {} (the leader's log started at {leader_start})",
        log.reader().start_offset()
    );
    assert_eq!(log.reader().end_offset(), 550);
}

/// A flipped byte in the middle of a node's metadata Raft journal, or in its last frame, or
/// the journal cut at a frame boundary below what the node committed: the node refuses to
/// start, naming the file and the damage (it used to drop the entries from the bad frame on
/// and vote as if it had never acknowledged them). Moving its `meta/raft` aside, as
/// docs/operations.md says, brings it back: it rejoins and the leader sends it the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_metadata_journal_stops_its_node_until_it_is_replaced() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    for i in 0..8 {
        admin
            .create_topic(&format!("m{i}"), 1, 3, BTreeMap::new())
            .await
            .expect("create");
    }
    assert_eq!(nodes[2].stop(), Some(0));
    let journal = dirs[2].path().join("meta/raft/raft.log");
    let good = std::fs::read(&journal).expect("journal");
    // Frame starts (`[len u32 LE][crc u32][body]`), to damage the last frame and to cut the
    // journal at a frame boundary.
    let mut starts = vec![0usize];
    while *starts.last().unwrap() < good.len() {
        let at = *starts.last().unwrap();
        let len = u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
        starts.push(at + 8 + len);
    }
    assert_eq!(starts.pop(), Some(good.len()));
    let last = *starts.last().unwrap();
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x20;
        b
    };
    // A flip mid-journal; a flip in the last frame (it is whole, so no crash tore it: it used
    // to be cut quietly as a torn tail, and the node forgot the entry); the journal cut at a
    // frame boundary below the entry this node recorded as committed (valid on its own).
    let damages = [
        ("a flip in the middle", flip(good.len() / 2)),
        (
            "a flip in the last frame",
            flip(last + 8 + (good.len() - last - 8) / 2),
        ),
        (
            "cut at a frame boundary",
            good[..starts[starts.len() / 2]].to_vec(),
        ),
    ];
    for (what, bytes) in damages.iter().rev() {
        std::fs::write(&journal, bytes).unwrap();
        let node = &nodes[2];
        let out = tokio::task::spawn_blocking({
            let (dir, grpc, extra) = (node.dir.clone(), node.grpc.clone(), node.extra.clone());
            move || server_refusing_to_start(&dir, &grpc, &extra, "a node with a damaged journal")
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}");
        assert!(
            stderr.contains("raft.log is damaged") && stderr.contains("docs/operations.md"),
            "{what}: {stderr}"
        );
        // The file is left as it was, for whoever repairs it.
        assert_eq!(&std::fs::read(&journal).unwrap(), bytes, "{what}");
    }

    // The documented way back: move the journal aside; the node rejoins and is sent the log.
    std::fs::rename(
        dirs[2].path().join("meta/raft"),
        dirs[2].path().join("meta/raft.damaged"),
    )
    .unwrap();
    nodes[2].restart_same_port();
    wait_until(
        "node 3 back with every topic",
        Duration::from_secs(30),
        async || {
            let d = describe_at(&nodes[2]).await.ok_or("no answer")?;
            let topics = d.topics.iter().filter(|t| t.name.starts_with('m')).count();
            if topics == 8 && d.brokers.iter().all(|b| b.alive) {
                Ok(())
            } else {
                Err(format!("{topics} topics, brokers {:?}", d.brokers))
            }
        },
    )
    .await;
    // And the cluster still takes metadata changes with it.
    admin
        .create_topic("after", 1, 3, BTreeMap::new())
        .await
        .expect("create after");
}

/// A group used while only the first broker was up creates `__consumer_offsets` with one
/// replica. Once two more brokers join, the controller raises it to three and the new replicas
/// catch up, so the committed offsets survive the first broker's death (they stayed on it
/// alone before, and the group lost them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_offsets_reach_their_replication_factor_once_brokers_join() {
    use cascade_client::proto::OffsetCommit;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut first = vec!["--node-id", "1"];
    first.extend_from_slice(FAST);
    let mut nodes = vec![Node::start_with(dirs[0].path(), &first)];
    let c1 = nodes[0].client().await;
    c1.create_topic("t", 1, 1, BTreeMap::new())
        .await
        .expect("create");
    let commit = vec![OffsetCommit {
        topic: "t".into(),
        partition: 0,
        offset: 42,
        metadata: String::new(),
    }];
    wait_until("the first commit", Duration::from_secs(30), async || {
        c1.commit_offsets("g", "", -1, commit.clone())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let offsets_rf = async |nodes: &[Node]| {
        let c = Client::connect(&nodes[0].grpc).await.ok()?;
        let topics = c.list_topics(true).await.ok()?;
        let t = topics
            .into_iter()
            .find(|t| t.name == "__consumer_offsets")?;
        Some(t)
    };
    assert_eq!(offsets_rf(&nodes).await.unwrap().replication_factor, 1);

    let seed = nodes[0].grpc.clone();
    for id in ["2", "3"] {
        let mut args = vec!["--node-id", id, "--seeds", seed.as_str()];
        args.extend_from_slice(FAST);
        nodes.push(Node::start_with(
            dirs[id.parse::<usize>().unwrap() - 1].path(),
            &args,
        ));
    }
    wait_until(
        "__consumer_offsets with 3 in-sync replicas everywhere",
        Duration::from_secs(60),
        async || {
            let t = offsets_rf(&nodes).await.ok_or("no answer")?;
            let short: Vec<_> = t
                .partitions
                .iter()
                .filter(|p| p.replicas.len() < 3 || p.isr.len() < 3)
                .map(|p| (p.partition, p.replicas.clone(), p.isr.clone()))
                .collect();
            let min = t
                .configs
                .get("min.insync.replicas")
                .cloned()
                .unwrap_or_default();
            // min.insync.replicas follows once the in-sync sets have grown, not before.
            if t.replication_factor == 3 && short.is_empty() && min == "2" {
                Ok(())
            } else {
                Err(format!(
                    "rf {}, min.insync.replicas {min}, short {:?}",
                    t.replication_factor,
                    &short[..short.len().min(3)]
                ))
            }
        },
    )
    .await;

    // The first broker dies: the committed offset is still there.
    nodes[0].kill9();
    let others = Client::connect(&format!("{},{}", nodes[1].grpc, nodes[2].grpc))
        .await
        .expect("connect");
    let got = wait_until(
        "offsets after the first broker died",
        Duration::from_secs(30),
        async || {
            others
                .fetch_offsets("g", vec![])
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(got.iter().map(|c| c.offset).collect::<Vec<_>>(), [42]);
}

/// A leader whose replica cannot be opened when it comes back (inside its session, so the
/// controller never fenced it) reports that in its heartbeats: leadership moves to an in-sync
/// replica, `cluster status` names the replica offline and why, and once the replica can be
/// opened it catches up and is in sync again. Before, the node kept the leadership of a
/// replica it could not open, and the partition refused every write until someone stepped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_replica_cannot_be_opened_hands_over_and_is_shown_offline() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // A long session: the restart is certainly inside it (fencing would move leadership the
    // old way and hide the fault).
    let mut nodes = start_long_session_cluster(&dirs);
    let client = nodes[0].client().await;
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    client
        .create_topic("sick", 1, 3, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "sick", 1, "before", 20, &mut acked).await;
    let old = partition(&describe(&nodes).await, "sick", 0).leader;
    let i = old as usize - 1;
    tokio::task::block_in_place(|| nodes[i].kill9());
    // Its segment's index becomes a directory: the replica cannot be opened.
    let index = dirs[i]
        .path()
        .join("topics/sick/0/00000000000000000000.index");
    std::fs::remove_file(&index).unwrap();
    std::fs::create_dir(&index).unwrap();
    tokio::task::block_in_place(|| nodes[i].restart_same_port());

    let p = wait_until(
        "leadership to leave the offline replica",
        Duration::from_secs(20),
        async || {
            let p = partition(&describe(&nodes).await, "sick", 0);
            if p.leader != old && p.leader != 0 && !p.isr.contains(&old) {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await;
    let s = p
        .replica_status
        .iter()
        .find(|r| r.node_id == old)
        .expect("a status per replica");
    assert_eq!(s.state, "offline", "{p:?}");
    assert!(
        s.reason.contains("index"),
        "the reason names the file: {s:?}"
    );
    let (code, out, err) = nodes[0].cli(&["cluster", "status"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("sick")
            && l.contains(&format!(" {old} "))
            && l.contains("offline")),
        "cluster status does not show the offline replica:\n{out}"
    );
    produce_all(&nodes, "sick", 1, "meanwhile", 20, &mut acked).await;

    // The file system is repaired: the replica opens by itself, catches up, is in sync.
    std::fs::remove_dir(&index).unwrap();
    wait_until(
        "the replica to be back in sync",
        Duration::from_secs(30),
        async || {
            let p = partition(&describe(&nodes).await, "sick", 0);
            let in_sync = p.replica_status.iter().all(|r| r.state == "in-sync");
            if p.isr.contains(&old) && in_sync {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await;
    produce_all(&nodes, "sick", 1, "after", 20, &mut acked).await;
    check_acked(&nodes, "sick", &acked).await;
}

/// Three nodes whose sessions last 20 s: a restart is certainly inside the session, so the
/// controller never fences the node (fencing would move leadership the usual way and hide
/// the fault under test).
fn start_long_session_cluster(dirs: &[tempfile::TempDir]) -> Vec<Node> {
    let slow = ["--heartbeat-ms", "200", "--session-timeout-ms", "20000"];
    let mut nodes = vec![Node::start_with(
        dirs[0].path(),
        &[&["--node-id", "1"][..], &slow].concat(),
    )];
    let seed = nodes[0].grpc.clone();
    for i in 2..=dirs.len() {
        let id = i.to_string();
        let args = [
            &["--node-id", id.as_str(), "--seeds", seed.as_str()][..],
            &slow,
        ]
        .concat();
        nodes.push(Node::start_with(dirs[i - 1].path(), &args));
    }
    nodes
}

/// Every replica of a partition is damaged at the same place (a power cut of the whole
/// cluster, then the same bad batch on each disk): no copy holds the acknowledged events past
/// the damage, so the partition must refuse loudly (offline, shown in `cluster status` and
/// counted in `cascade_log_damage_total`) and must never take new writes at the offsets of
/// the lost ones. A silent cut would let a replica lead with the short log and reuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damage_on_every_replica_is_a_loud_refusal_never_reused_offsets() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    admin
        .create_topic("ruin", 1, 3, configs.clone())
        .await
        .expect("create");
    admin
        .create_topic("fine", 1, 3, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "ruin", 1, "r", 1000, &mut acked).await;
    let mut fine = BTreeMap::new();
    produce_all(&nodes, "fine", 1, "f", 100, &mut fine).await;
    let end = acked[&0].keys().max().unwrap() + 1;
    wait_for(
        "all replicas in sync",
        Duration::from_secs(20),
        async || (partition(&describe(&nodes).await, "ruin", 0).isr.len() == 3).then_some(()),
    )
    .await;
    for n in nodes.iter_mut() {
        n.kill9();
    }
    let mut lengths = Vec::new();
    for d in &dirs {
        damage_active_segment(&d.path().join("topics/ruin/0"));
        lengths.push(segment_len(&d.path().join("topics/ruin/0")));
    }
    restart_all(&mut nodes);
    // The rest of the cluster works.
    produce_all(&nodes, "fine", 1, "f2", 20, &mut fine).await;
    check_acked(&nodes, "fine", &fine).await;
    // Give the damaged partition every chance to come back wrongly.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let p = partition(&describe(&nodes).await, "ruin", 0);
        if p.leader != 0 {
            let c = Client::connect(&nodes[p.leader as usize - 1].grpc)
                .await
                .expect("connect");
            let r = c
                .produce_records("ruin", Some(0), vec![record(None, b"late")], Acks::All)
                .await;
            if let Ok(r) = r {
                assert!(
                    r[0].base_offset >= end,
                    "a write after the damage reused offset {} (acknowledged up to {end}): {p:?}",
                    r[0].base_offset
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let p = partition(&describe(&nodes).await, "ruin", 0);
    assert_eq!(p.leader, 0, "no replica may lead: {p:?}");
    assert!(
        p.replica_status.iter().all(|r| r.state != "in-sync"),
        "every replica is shown as not in sync, with why: {p:?}"
    );
    let (code, out, err) = nodes[0].cli(&["cluster", "status"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ruin") && l.trim_end().ends_with("offline")),
        "cluster status does not show the partition offline:\n{out}"
    );
    assert!(out.contains("Offline partitions: 1"), "{out}");
    assert!(
        out.contains("repairing"),
        "the damaged copy is named:\n{out}"
    );
    // Each replica's damage was found and counted where it was found.
    let damage: Vec<f64> = nodes
        .iter()
        .map(|n| metric(n, "cascade_log_damage_total"))
        .collect();
    assert!(
        damage.iter().all(|&d| d >= 1.0),
        "damage per node {damage:?}"
    );
    // Every copy keeps every byte it had (the intact batches after the damage included) for
    // an operator to salvage: what a cut drops is kept under the partition's `damaged/`.
    for (i, d) in dirs.iter().enumerate() {
        let part = d.path().join("topics/ruin/0");
        let kept: u64 = std::fs::read_dir(part.join("damaged"))
            .map(|r| r.flatten().map(|e| e.metadata().unwrap().len()).sum())
            .unwrap_or(0);
        assert_eq!(
            segment_len(&part) + kept,
            lengths[i],
            "node {}: bytes lost in the cut",
            i + 1
        );
    }
    // The operator's way out, accepting the loss: an unclean election. The elected copy leads
    // with its log cut at the damage, serves the intact prefix, and takes writes after it.
    let e = nodes[0]
        .client()
        .await
        .elect_unclean_leader("ruin", 0, None)
        .await
        .expect("an unclean election");
    let cut = e
        .candidates
        .iter()
        .find(|c| c.node_id == e.leader)
        .map(|c| c.log_end_offset)
        .expect("the leader's end");
    assert!(cut < end, "{e:?}");
    let r = wait_until(
        "writes after the election",
        Duration::from_secs(30),
        async || {
            let c = Client::connect(&nodes[e.leader as usize - 1].grpc)
                .await
                .map_err(|x| x.to_string())?;
            c.produce_records("ruin", Some(0), vec![record(None, b"after")], Acks::Leader)
                .await
                .map_err(|x| x.to_string())
        },
    )
    .await;
    assert_eq!(r[0].base_offset, cut, "it continues from its cut end");
    let c = Client::connect(&nodes[e.leader as usize - 1].grpc)
        .await
        .expect("connect");
    let got = read_partition(&c, "ruin", 0).await;
    for (&off, v) in acked[&0].range(..cut) {
        assert_eq!(got[off as usize].1, v.as_bytes(), "offset {off}");
    }
}

/// The length of a partition directory's newest segment log.
fn segment_len(partition_dir: &Path) -> u64 {
    let mut logs: Vec<_> = std::fs::read_dir(partition_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    std::fs::metadata(logs.last().expect("a log"))
        .unwrap()
        .len()
}

/// A replica that is open but cannot take the leader role (here its leader-epoch file cannot
/// be written) is reported offline in its node's heartbeats, so the controller moves the
/// leadership on and keeps it away, instead of electing it again and again as the preferred
/// leader while the partition refuses every write. Once the file can be written it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_cannot_take_the_leader_role_is_passed_over() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_long_session_cluster(&dirs);
    let client = nodes[0].client().await;
    let configs: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    client
        .create_topic("stuck", 1, 3, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "stuck", 1, "before", 20, &mut acked).await;
    let p = partition(&describe(&nodes).await, "stuck", 0);
    // The preferred leader (first replica) is the one that will fail to lead.
    let preferred = p.replicas[0];
    let i = preferred as usize - 1;
    // A clean stop hands its leadership over; while it is down, a directory takes the place
    // of the temporary file its leader-epoch cache is written through.
    tokio::task::block_in_place(|| nodes[i].stop());
    let obstacle = dirs[i].path().join("topics/stuck/0.leader-epochs.tmp");
    std::fs::create_dir(&obstacle).unwrap();
    tokio::task::block_in_place(|| nodes[i].restart_same_port());

    wait_until(
        "the preferred replica shown offline and out of the in-sync set, another leading",
        Duration::from_secs(30),
        async || {
            let p = partition(&describe(&nodes).await, "stuck", 0);
            let s = p.replica_status.iter().find(|r| r.node_id == preferred);
            if p.leader != preferred
                && p.leader != 0
                && !p.isr.contains(&preferred)
                && s.is_some_and(|s| {
                    s.state == "offline" && s.reason.contains("cannot take its role")
                })
            {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await;
    // Writes go on, and stay away from it.
    produce_all(&nodes, "stuck", 1, "meanwhile", 50, &mut acked).await;
    let p = partition(&describe(&nodes).await, "stuck", 0);
    assert_ne!(p.leader, preferred, "{p:?}");

    std::fs::remove_dir(&obstacle).unwrap();
    wait_until(
        "the replica back in sync",
        Duration::from_secs(30),
        async || {
            let p = partition(&describe(&nodes).await, "stuck", 0);
            if p.isr.contains(&preferred) && p.replica_status.iter().all(|r| r.state == "in-sync") {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await;
    produce_all(&nodes, "stuck", 1, "after", 20, &mut acked).await;
    check_acked(&nodes, "stuck", &acked).await;
}

/// The partition's only in-sync replica is lost for good: its follower was down while it
/// took more writes alone, then it died. The follower comes back: the partition stays offline,
/// as it must, since the follower lacks acknowledged events. `cascade topic elect-leader
/// --unclean` is the operator's way out: refused while the in-sync replica lives, it then
/// elects the live replica (the one with the longest log, if several), which serves
/// everything it held and takes writes again. Before, there was no way out short of deleting
/// the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unclean_election_brings_back_a_partition_whose_in_sync_replicas_are_lost() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    let configs = [("min.insync.replicas".to_string(), "1".to_string())].into();
    // Two replicas on three nodes: the third keeps the metadata quorum when two are down.
    admin
        .create_topic("u", 1, 2, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "u", 1, "all", 50, &mut acked).await;
    let p = partition(&describe(&nodes).await, "u", 0);
    let lone = p.leader;
    let follower = *p.replicas.iter().find(|&&r| r != lone).unwrap();
    let (li, fi) = (lone as usize - 1, follower as usize - 1);
    // Wait until the follower holds the 50 events, so it stops with them.
    wait_until("the follower at 50", Duration::from_secs(20), async || {
        let end = describe_at(&nodes[fi])
            .await
            .map(|d| partition(&d, "u", 0).log_end_offset);
        if end == Some(50) {
            Ok(())
        } else {
            Err(format!("{end:?}"))
        }
    })
    .await;
    tokio::task::block_in_place(|| nodes[fi].stop());
    wait_for(
        "the leader alone in sync",
        Duration::from_secs(20),
        async || (partition(&describe(&nodes).await, "u", 0).isr == vec![lone]).then_some(()),
    )
    .await;
    // More events, acknowledged by the lone in-sync replica only.
    let mut alone = BTreeMap::new();
    produce_all(&nodes, "u", 1, "alone", 30, &mut alone).await;
    assert_eq!(alone[&0].keys().next(), Some(&50));
    // Refused while it lives: the controller would elect it, losing nothing.
    let refused = admin_on_live(&nodes)
        .await
        .elect_unclean_leader("u", 0, None)
        .await
        .expect_err("an in-sync replica can lead");
    assert!(refused.to_string().contains("can lead"), "{refused}");
    // It dies for good; the follower comes back.
    nodes[li].kill9();
    nodes[fi].restart_same_port();
    wait_until(
        "the partition offline, its follower live",
        Duration::from_secs(30),
        async || {
            let d = describe(&nodes).await;
            let p = partition(&d, "u", 0);
            let up = d.brokers.iter().any(|b| b.node_id == follower && b.alive);
            if p.leader == 0 && up {
                Ok(())
            } else {
                Err(format!(
                    "leader {}, isr {:?}, follower up {up}",
                    p.leader, p.isr
                ))
            }
        },
    )
    .await;
    // Writes are refused meanwhile: nothing reuses the lost replica's offsets by itself.
    let c = nodes[fi].client().await;
    assert!(
        c.produce_records("u", Some(0), vec![record(None, b"x")], Acks::All)
            .await
            .is_err()
    );
    // Naming the dead replica is refused, changing nothing.
    let dead = c
        .elect_unclean_leader("u", 0, Some(lone))
        .await
        .expect_err("the dead replica");
    assert!(dead.to_string().contains("is down"), "{dead}");

    // Without --unclean the CLI refuses; with it, it elects and says what it chose from.
    let node = &nodes[fi];
    let (code, _, err) = tokio::task::block_in_place(|| {
        node.cli(&["topic", "elect-leader", "u", "--partition", "0"], None)
    });
    assert_ne!(code, 0);
    assert!(err.contains("--unclean"), "{err}");
    let (code, out, err) = tokio::task::block_in_place(|| {
        node.cli(
            &[
                "topic",
                "elect-leader",
                "u",
                "--partition",
                "0",
                "--unclean",
                "--output",
                "json",
            ],
            None,
        )
    });
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["leader"].as_u64(), Some(u64::from(follower)), "{v}");
    assert_eq!(
        v["candidates"][0]["log_end_offset"].as_u64(),
        Some(50),
        "{v}"
    );
    // It serves what it held and takes writes again.
    let p = partition(&describe(&nodes).await, "u", 0);
    assert_eq!((p.leader, p.isr.clone()), (follower, vec![follower]));
    let r = c
        .produce_records("u", Some(0), vec![record(None, b"after")], Acks::All)
        .await
        .expect("writes again");
    assert_eq!(r[0].base_offset, 50, "continues from its own end");
    let got = read_partition(&c, "u", 0).await;
    for (&off, v) in &acked[&0] {
        assert_eq!(got[off as usize].1, v.as_bytes(), "offset {off}");
    }
    assert_eq!(got[50].1, b"after");
    let elections: f64 = [fi, 3 - li - fi]
        .iter()
        .map(|&i| metric(&nodes[i], "cascade_unclean_elections_total"))
        .sum();
    assert_eq!(elections, 1.0);
}

/// A client of any running node.
async fn admin_on_live(nodes: &[Node]) -> Client {
    let n = nodes
        .iter()
        .find(|n| n.child.is_some())
        .expect("a running node");
    n.client().await
}

/// KIP-966's "last replica standing" on real nodes (the loss chaos soak seed 3131 found:
/// 4,098 acknowledged events). Two replicas, `min.insync.replicas` 2: the follower hangs
/// (SIGSTOP), is fenced and leaves the in-sync set as it falls below the minimum, so it stays
/// an eligible leader replica (nothing more can be acknowledged). The leader is then killed
/// and its disk loses fsynced writes (its segment's last batches cut off), and it is back at
/// once, alone, while the follower still hangs. Before, it led again with its short log as
/// "the last live in-sync replica", and the follower, once back, truncated to it: the events
/// it alone still held were gone and new ones reused their offsets. Now the partition waits
/// for the follower, which leads with every acknowledged event; the damaged node catches up
/// from it.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_in_sync_replica_losing_fsynced_writes_waits_for_an_eligible_one() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_three_live(&nodes).await;
    let admin = nodes[0].client().await;
    let configs = [("min.insync.replicas".to_string(), "2".to_string())].into();
    // Two replicas on three nodes: the third keeps the metadata quorum throughout.
    admin
        .create_topic("lrs", 1, 2, configs)
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "lrs", 1, "a", 100, &mut acked).await;
    let p = partition(&describe(&nodes).await, "lrs", 0);
    let lead = p.leader;
    let follower = *p.replicas.iter().find(|&&r| r != lead).unwrap();
    let (li, fi) = (lead as usize - 1, follower as usize - 1);
    // The one node never touched answers every question (a hung node would not).
    let spare = nodes[3 - li - fi].grpc.clone();
    let seen = async || {
        let d = Client::connect(&spare)
            .await
            .ok()?
            .describe_cluster()
            .await
            .ok()?;
        Some((partition(&d, "lrs", 0), d.brokers))
    };
    wait_until("the follower at 100", Duration::from_secs(20), async || {
        let end = describe_at(&nodes[fi])
            .await
            .map(|d| partition(&d, "lrs", 0).log_end_offset);
        (end == Some(100)).then_some(()).ok_or(format!("{end:?}"))
    })
    .await;

    nodes[fi].signal("-STOP");
    wait_until(
        "the hung follower fenced and eligible",
        Duration::from_secs(20),
        async || match seen().await {
            Some((p, _)) if p.isr == [lead] && p.eligible_leader_replicas == [follower] => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // Nothing more is acknowledged below the minimum.
    let c = nodes[li].client().await;
    let refused = c
        .produce_records("lrs", Some(0), vec![record(None, b"x")], Acks::All)
        .await
        .expect_err("below min.insync.replicas");
    assert_eq!(
        refused.reason(),
        Some(ErrorCode::NotEnoughReplicas),
        "{refused}"
    );

    // The leader's power goes and its disk loses the last fsynced writes, cleanly: the
    // segment ends at a batch boundary and the recovery point is lost with it, so nothing on
    // the node can tell (a disk that lies about fsync). It is back at once.
    nodes[li].kill9();
    let pdir = dirs[li].path().join("topics/lrs/0");
    lose_last_batches(&pdir.join("00000000000000000000.log"), 3);
    std::fs::remove_file(pdir.join("recovery-point")).unwrap();
    nodes[li].restart_same_port();
    wait_until(
        "the partition waiting for its eligible replica",
        Duration::from_secs(30),
        async || match seen().await {
            Some((p, brokers))
                if brokers.iter().any(|b| b.node_id == lead && b.alive)
                    && p.leader == 0
                    && p.isr == [follower] =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // It stays so: the damaged node never leads by itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p, _) = seen().await.expect("spare answers");
    assert_eq!((p.leader, p.isr.clone()), (0, vec![follower]), "{p:?}");

    nodes[fi].signal("-CONT");
    // The eligible replica leads; the damaged node catches up from it and rejoins, and may
    // then lead again as the preferred replica (that can happen between two looks, so only
    // the end state is waited for: had the damaged node led with its short log, the
    // acknowledged events below would be missing).
    wait_until(
        "a leader, and the damaged replica caught up",
        Duration::from_secs(30),
        async || match seen().await {
            Some((p, _)) if p.leader != 0 && p.isr.len() == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // Consumers see everything once the in-sync set is back at the minimum (below it the
    // high watermark stood still), whichever replica leads by then.
    wait_acked(&nodes, "lrs", &acked).await;
    produce_all(&nodes, "lrs", 1, "b", 20, &mut acked).await;
    assert_eq!(
        acked[&0].len(),
        120,
        "offsets reused: {:?}",
        acked[&0].keys()
    );
    wait_acked(&nodes, "lrs", &acked).await;
}

/// Waits until partition 0's leader serves every acknowledged event of `topic` at its offset
/// (a leader just elected, back on the preferred replica say, serves only up to the high
/// watermark it last heard as a follower until its followers fetch again); a different event
/// at an acknowledged offset fails at once.
async fn wait_acked(nodes: &[Node], topic: &str, acked: &BTreeMap<u32, BTreeMap<u64, String>>) {
    wait_until(
        "every acknowledged event served",
        Duration::from_secs(30),
        async || {
            let (leader, c) = leader_client(nodes, topic, 0).await;
            let got = read_partition(&c, topic, 0).await;
            for (&off, v) in &acked[&0] {
                match got.get(off as usize) {
                    Some(at) => assert_eq!(at.1, v.as_bytes(), "{topic}/0 offset {off}"),
                    None => return Err(format!("leader {leader} serves {} events", got.len())),
                }
            }
            Ok(())
        },
    )
    .await;
}

/// Cuts the last `n` whole batches off a segment file (RecordBatch v2 framing after the file
/// header: base offset, then the batch length, both big-endian).
fn lose_last_batches(log: &Path, n: usize) {
    let bytes = std::fs::read(log).unwrap();
    let mut starts = Vec::new();
    let mut pos = cascade_log::format::FILE_HEADER_LEN;
    while pos + 12 <= bytes.len() {
        starts.push(pos);
        let len = u32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        pos += 12 + len;
    }
    assert_eq!(pos, bytes.len(), "{}: not whole batches", log.display());
    assert!(
        starts.len() > n,
        "{} holds {} batches",
        log.display(),
        starts.len()
    );
    let f = std::fs::OpenOptions::new().write(true).open(log).unwrap();
    f.set_len(starts[starts.len() - n] as u64).unwrap();
    f.sync_all().unwrap();
}

/// Kubernetes' StatefulSet contract: every node gets the same flags (the same seed list,
/// itself included; its id from its host name), and they start in any order at any time.
/// Two of three started first must not form a cluster (the third might be a member, or have
/// a lower id); once all three answer, node 1 (the lowest id) forms it and the others join:
/// one cluster, one id. Restarted with the same flags, they rejoin it from their state.
/// Before, each waited forever to join a cluster nobody bootstrapped.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_started_with_the_same_seed_list_form_one_cluster() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let seeds = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let start = |i: usize| {
        let dir = dirs[i].path().to_path_buf();
        let port = ports[i];
        let seeds = seeds.clone();
        std::thread::spawn(move || {
            let host = format!("cascade-{i}");
            let mut args = vec!["--node-id", "auto", "--seeds", seeds.as_str()];
            args.extend_from_slice(FAST);
            Node::start_on_port_with_env(&dir, port, &args, &[("HOSTNAME", host.as_str())])
        })
    };
    // Pods 2 and 1 (node ids 3 and 2) first: they wait for pod 0.
    let late = [start(2), start(1)];
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        late.iter().all(|t| !t.is_finished()),
        "a node became ready before every seed answered"
    );
    for p in &ports[1..] {
        let c = Client::connect(&format!("127.0.0.1:{p}")).await.unwrap();
        assert!(c.describe_cluster().await.is_err(), "not ready yet");
    }
    let first = start(0);
    let mut nodes = vec![first.join().unwrap()];
    for t in late.into_iter().rev() {
        nodes.push(t.join().unwrap());
    }
    wait_three_live(&nodes).await;
    let mut ids = std::collections::BTreeSet::new();
    for n in &nodes {
        let d = describe_at(n).await.expect("answers");
        ids.insert(d.cluster_id.clone());
        let mut brokers: Vec<u32> = d.brokers.iter().map(|b| b.node_id).collect();
        brokers.sort_unstable();
        assert_eq!(brokers, [1, 2, 3], "ids from the host names");
    }
    assert_eq!(ids.len(), 1, "one cluster: {ids:?}");
    let admin = nodes[1].client().await;
    admin
        .create_topic("formed", 1, 3, Default::default())
        .await
        .expect("create");
    let mut acked = BTreeMap::new();
    produce_all(&nodes, "formed", 1, "f", 30, &mut acked).await;

    // All three restarted at once with the same flags: the same cluster.
    for n in nodes.iter_mut() {
        n.kill9();
    }
    let back: Vec<_> = std::mem::take(&mut nodes)
        .into_iter()
        .map(|mut n| {
            std::thread::spawn(move || {
                n.restart_same_port();
                n
            })
        })
        .collect();
    nodes = back.into_iter().map(|t| t.join().unwrap()).collect();
    wait_three_live(&nodes).await;
    let d = describe_at(&nodes[2]).await.expect("answers");
    assert_eq!(Some(&d.cluster_id), ids.first(), "the same cluster");
    check_acked(&nodes, "formed", &acked).await;
}
