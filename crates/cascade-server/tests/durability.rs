//! Crash tests with a real node: `kill -9` in the middle of `acks=all` produce traffic, then
//! damage like a torn write at the tail of a segment and an index cut mid-entry. After a
//! restart every acknowledged event must be present exactly once at its acknowledged offset,
//! and new events must continue the offsets.

mod common;

use bytes::Bytes;
use cascade_client::{Acks, Client};
use cascade_record::{BatchBuilder, Record};
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 3;

/// An acknowledged batch: where it landed and what it held.
#[derive(Debug, Clone)]
struct Acked {
    partition: u32,
    base: u64,
    values: Vec<String>,
}

fn batch(values: &[String]) -> Bytes {
    let mut b = BatchBuilder::new();
    for v in values {
        b.push(Record {
            timestamp: 1,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        });
    }
    Bytes::from(b.finish())
}

/// Produces from several tasks until the node dies; returns what was acknowledged.
async fn produce_until_killed(node: &mut Node, client: &Client, topic: &str) -> Vec<Acked> {
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..6u32 {
        let client = client.clone();
        let acked = acked.clone();
        let count = count.clone();
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            for seq in 0.. {
                let partition = task % PARTITIONS;
                let values: Vec<String> = (0..(1 + seq % 7))
                    .map(|i| format!("t{task}-s{seq}-r{i}"))
                    .collect();
                match client
                    .produce_batches(&topic, partition, batch(&values), Acks::All)
                    .await
                {
                    Ok(p) => {
                        assert_eq!(p.last_offset - p.base_offset + 1, values.len() as u64);
                        acked.lock().unwrap().push(Acked {
                            partition,
                            base: p.base_offset,
                            values,
                        });
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return, // the node is gone
                }
            }
        }));
    }
    // Let traffic flow, then crash the node mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::SeqCst) < 400 {
        assert!(Instant::now() < deadline, "producers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.kill9();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("producers stop once the node is dead")
            .unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

/// Checks every acknowledged value is at its offset and no value appears twice.
async fn check_all_present(client: &Client, topic: &str, acked: &[Acked]) -> BTreeMap<u32, u64> {
    let mut logs = BTreeMap::new();
    for p in 0..PARTITIONS {
        logs.insert(p, read_partition(client, topic, p).await);
    }
    for a in acked {
        let log = &logs[&a.partition];
        for (i, v) in a.values.iter().enumerate() {
            let at = a.base as usize + i;
            assert!(
                at < log.len(),
                "acknowledged offset {at} of partition {} lost (log has {})",
                a.partition,
                log.len()
            );
            assert_eq!(
                log[at].1,
                v.as_bytes(),
                "partition {} offset {at}",
                a.partition
            );
        }
    }
    let mut seen = HashSet::new();
    for log in logs.values() {
        for (_, v) in log {
            assert!(
                seen.insert(v.clone()),
                "duplicate event {:?}",
                String::from_utf8_lossy(v)
            );
        }
    }
    logs.iter().map(|(p, l)| (*p, l.len() as u64)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("crash", PARTITIONS, 1, BTreeMap::new())
        .await
        .unwrap();
    let acked = produce_until_killed(&mut node, &client, "crash").await;
    assert!(acked.len() >= 400);
    for p in 0..PARTITIONS {
        assert!(
            !dir.path()
                .join(format!("topics/crash/{p}/clean-shutdown"))
                .exists(),
            "a killed node leaves no clean-shutdown marker"
        );
    }
    node.restart();
    let client = node.client().await;
    let ends = check_all_present(&client, "crash", &acked).await;
    // The next produce continues the offsets of each partition.
    for p in 0..PARTITIONS {
        let r = client
            .produce_batches("crash", p, batch(&["after".to_string()]), Acks::All)
            .await
            .unwrap();
        assert_eq!(r.base_offset, ends[&p], "partition {p}");
    }
}

/// The power-loss layer the chaos runs use (`--unsynced-writes-in-memory`) does what it
/// claims: after a kill -9, a `flush=never` topic has lost what was written since its last
/// fsync (a real file system would have kept it in the page cache, so a layer that wrote
/// through fails here), while a `flush=always` topic has every acknowledged event, and the
/// node serves both and takes new events at the right offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_power_loss_layer_a_kill_loses_only_what_was_never_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_with(dir.path(), &["--unsynced-writes-in-memory"]);
    let client = node.client().await;
    let never = BTreeMap::from([("flush".to_string(), "never".to_string())]);
    client.create_topic("never", 1, 1, never).await.unwrap();
    client
        .create_topic("always", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    for i in 0..50 {
        for topic in ["never", "always"] {
            client
                .produce_batches(topic, 0, batch(&[format!("{topic}-{i}")]), Acks::All)
                .await
                .unwrap();
        }
    }
    node.kill9();
    node.restart();
    let client = node.client().await;
    let always: Vec<Vec<u8>> = read_partition(&client, "always", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("always-{i}").into_bytes())
        .collect();
    assert_eq!(
        always, expected,
        "flush=always keeps every acknowledged event"
    );
    let kept = read_partition(&client, "never", 0).await.len();
    assert!(
        kept < 50,
        "the kill lost nothing of the flush=never topic ({kept} of 50 kept): the layer wrote through"
    );
    for topic in ["never", "always"] {
        let r = client
            .produce_batches(topic, 0, batch(&["after".to_string()]), Acks::All)
            .await
            .unwrap();
        let expect = if topic == "never" { kept as u64 } else { 50 };
        assert_eq!(
            r.base_offset, expect,
            "{topic}: the next offset follows what is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_and_cut_index_are_repaired_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("torn", PARTITIONS, 1, BTreeMap::new())
        .await
        .unwrap();
    let acked = produce_until_killed(&mut node, &client, "torn").await;
    for p in 0..PARTITIONS {
        let pdir = dir.path().join(format!("topics/torn/{p}"));
        let log = pdir.join("00000000000000000000.log");
        let index = pdir.join("00000000000000000000.index");
        // A torn write: the start of a valid-looking batch that never finished.
        let mut bytes = std::fs::read(&log).unwrap();
        let whole = batch(&["never acknowledged".to_string()]);
        bytes.extend_from_slice(&whole[..whole.len() / 2]);
        std::fs::write(&log, &bytes).unwrap();
        // An index cut in the middle of an entry.
        let idx = std::fs::read(&index).unwrap();
        std::fs::write(&index, &idx[..idx.len() - 2]).unwrap();
    }
    node.restart();
    let client = node.client().await;
    let ends = check_all_present(&client, "torn", &acked).await;
    for p in 0..PARTITIONS {
        let r = client
            .produce_batches("torn", p, batch(&["after".to_string()]), Acks::All)
            .await
            .unwrap();
        assert_eq!(r.base_offset, ends[&p]);
        let all = read_partition(&client, "torn", p).await;
        assert_eq!(all.last().unwrap().1, b"after");
        assert!(all.iter().all(|(_, v)| v != b"never acknowledged"));
    }
}

/// A lone replica (replication factor 1) whose active segment is damaged cannot be repaired
/// from anywhere: cutting it would drop acknowledged events and reuse their offsets. It is
/// refused, loudly, as a replica that is offline, while the node starts and serves its other
/// partitions (one damaged partition used to stop the whole node from starting, and before
/// that was silently cut as a torn tail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_lone_replica_is_offline_and_the_node_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    for t in ["lone", "fine"] {
        client.create_topic(t, 1, 1, BTreeMap::new()).await.unwrap();
    }
    for i in 0..40 {
        let values: Vec<String> = (0..10).map(|j| format!("v{i}-{j}")).collect();
        for t in ["lone", "fine"] {
            client
                .produce_batches(t, 0, batch(&values), Acks::All)
                .await
                .unwrap();
        }
    }
    tokio::task::block_in_place(|| node.kill9());
    // Flip two bytes in the middle of the lone replica's (only) segment.
    let log = std::fs::read_dir(dir.path().join("topics/lone/0"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    bytes[mid + 1] ^= 0x5a;
    std::fs::write(&log, &bytes).unwrap();

    tokio::task::block_in_place(|| node.restart_same_port());
    let client = node.client().await.with_retry_budget(Duration::ZERO);
    // The damaged data is neither served nor cut: the replica is offline, and says why.
    let e = client
        .fetch("lone", 0, 0, 1 << 20, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        e.reason(),
        Some(cascade_client::proto::ErrorCode::StorageError),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("offline") && msg.contains("made durable"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing was cut");
    // And /metrics names it.
    assert_eq!(
        metric(&node, "cascade_log_damage_total{found=\"open\"}"),
        1.0
    );
    assert_eq!(metric(&node, "cascade_partitions_offline"), 1.0);
    // The rest of the node works.
    let mut c = cascade_client::PartitionConsumer::new(client.clone(), "fine", 0, 0);
    let mut n = 0;
    while n < 400 {
        n += c.poll(Duration::from_millis(200)).await.unwrap().len();
    }
    client
        .produce_batches("fine", 0, batch(&["after".to_string()]), Acks::All)
        .await
        .unwrap();
}

/// A topic directory's `topic-id` says whose data it holds (a topic deleted and re-created
/// while the node was down leaves an older directory of the same name). A flipped byte in it
/// used to read as "another topic's": the node deleted the directory, every acknowledged
/// event of the topic on it. Now the id file carries a checksum: damage keeps the partition
/// offline, naming the file, and the data is untouched; removing the file (the operator's
/// answer, docs/operations.md) adopts the directory again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_topic_id_never_deletes_the_topic_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("named", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    let values: Vec<String> = (0..10).map(|j| format!("v{j}")).collect();
    client
        .produce_batches("named", 0, batch(&values), Acks::All)
        .await
        .unwrap();
    tokio::task::block_in_place(|| node.stop());
    let idfile = dir.path().join("topics/named/topic-id");
    let mut bytes = std::fs::read(&idfile).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&idfile, &bytes).unwrap();
    let log = dir.path().join("topics/named/0/00000000000000000000.log");
    let before = std::fs::read(&log).unwrap();

    tokio::task::block_in_place(|| node.restart_same_port());
    let client = node.client().await.with_retry_budget(Duration::ZERO);
    let e = client
        .fetch("named", 0, 0, 1 << 20, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("topic-id is damaged"), "{e}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        before,
        "the data is untouched"
    );

    std::fs::remove_file(&idfile).unwrap();
    let client = node.client().await;
    let mut c = cascade_client::PartitionConsumer::new(client.clone(), "named", 0, 0);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 10 && std::time::Instant::now() < deadline {
        got.extend(c.poll(Duration::from_millis(200)).await.unwrap_or_default());
    }
    let got: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string())
        .collect();
    assert_eq!(got, values, "the adopted directory serves its events");
}

/// A node whose data directory holds partitions but no metadata journal (lost, or moved aside
/// as the journal repair does) and that has no seeds must not bootstrap a new cluster: that
/// cluster would know none of the topics, and the start-up cleanup would delete their data as
/// a deleted topic's. It refuses to start, says why and what to do, and changes nothing; with
/// the journal back it starts and serves the data. (Found by `cascade-chaos` `corrupt_meta`
/// on the seedless first node: it came back as a second, empty cluster.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_journal_never_bootstraps_over_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("kept", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    client
        .produce_batches("kept", 0, batch(&["v".to_string()]), Acks::All)
        .await
        .unwrap();
    tokio::task::block_in_place(|| node.stop());
    let raft = dir.path().join("meta/raft");
    let aside = dir.path().join("meta/raft.aside");
    std::fs::rename(&raft, &aside).unwrap();
    let log = dir.path().join("topics/kept/0/00000000000000000000.log");
    let before = std::fs::read(&log).unwrap();

    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            server_refusing_to_start(
                &dir,
                "127.0.0.1:0",
                &[],
                "a node without its journal, over its data,",
            )
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to bootstrap a new cluster") && stderr.contains("--seeds"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        before,
        "the data is untouched"
    );

    std::fs::remove_dir_all(&raft).ok();
    std::fs::rename(&aside, &raft).unwrap();
    tokio::task::block_in_place(|| node.restart_same_port());
    let got = read_partition(&node.client().await, "kept", 0).await;
    assert_eq!(got.len(), 1, "the journal back, the node serves its data");
}

/// libfaketime, preloaded into the server, makes its wall clock read what a control file says
/// (`+0`, `+25h`, `-1h`), re-read every second; the monotonic clock is left alone, as an NTP
/// step leaves it. `.ci/run` installs it (Debian `libfaketime`).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The system clock stepping forward a day (NTP correcting a wrong clock, a VM resumed from an
/// old snapshot) while an idempotent producer is mid-stream. Producers idle longer than
/// `producer.id.expiration.ms` (a day) are forgotten; the log measured idleness on the wall
/// clock, so the step made every active producer look a day idle and forgot it: its next
/// batch was refused with UNKNOWN_PRODUCER_ID, which makes a producer renumber, and a
/// renumbered retry of a batch already stored is stored twice. The log's clock now advances
/// with the monotonic clock from the wall time it first read: a step does not move it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_forgets_no_active_producer() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: install Debian's libfaketime (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "+0").unwrap();
    let data = dir.path().join("data");
    let env = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_CACHE_DURATION", "1"),
    ];
    // Retention (and with it producer expiry) runs every second.
    let node = Node::start_with_env(&data, &["--retention-check-secs", "1"], &env);
    let client = node.client().await;
    client
        .create_topic("steady", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    let (pid, epoch) = client.init_producer_id(None).await.expect("producer id");
    for seq in 0..5 {
        client
            .produce_batches(
                "steady",
                0,
                producer_batch(&["before"], (pid, epoch, seq)),
                Acks::All,
            )
            .await
            .unwrap();
    }
    std::fs::write(&clock, "+25h").unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The server's wall clock did step: an event it stamps itself carries the new time.
    client
        .create_topic("stamp", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    client
        .produce_records(
            "stamp",
            Some(0),
            vec![common::errors::record(None, b"now")],
            Acks::All,
        )
        .await
        .unwrap();
    let mut c = cascade_client::PartitionConsumer::new(client.clone(), "stamp", 0, 0);
    let stamped = c.poll(Duration::from_secs(5)).await.unwrap()[0].timestamp_ms;
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        stamped > real + 24 * 3600 * 1000,
        "the server's clock did not step: stamped {stamped}, real {real}"
    );
    for seq in 5..10 {
        client
            .produce_batches(
                "steady",
                0,
                producer_batch(&["after"], (pid, epoch, seq)),
                Acks::All,
            )
            .await
            .unwrap_or_else(|e| panic!("batch {seq} after the clock step: {e}"));
    }
    // A retry of the last batch is still recognised as a duplicate, not stored again.
    let again = client
        .produce_batches(
            "steady",
            0,
            producer_batch(&["after"], (pid, epoch, 9)),
            Acks::All,
        )
        .await
        .unwrap();
    assert_eq!(again.base_offset, 9, "{again:?}");
    let got = read_partition(&client, "steady", 0).await;
    assert_eq!(got.len(), 10, "each batch stored once");
}

/// Every directory a fresh node and a new topic create is a name in its parent, durable only
/// once the parent is fsynced (POSIX's minimum; not every file system orders it for you). A
/// power loss right after start-up or topic creation otherwise loses `meta/` (the node
/// forgets its cluster) or a whole partition directory with every acknowledged event in it.
/// Traced with strace: each successful mkdir must be followed by an fsync of its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_directory_created_is_fsynced_in_its_parent() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let data = root.join("data");
    let trace = root.join("trace");
    let mut child = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=mkdir,mkdirat,fsync,fdatasync",
            "-o",
        ])
        .arg(&trace)
        .arg(bin())
        .arg("server")
        .arg("--data-dir")
        .arg(&data)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("CASCADE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("strace must be installed (.ci/run installs it)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let grpc = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["event"] == "ready"
        {
            break v["grpc_addr"].as_str().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let client = Client::connect(&grpc).await.unwrap();
    client
        .create_topic("t", 2, 1, BTreeMap::new())
        .await
        .expect("create");
    client
        .produce_records(
            "t",
            Some(0),
            vec![common::errors::record(None, b"x")],
            Acks::All,
        )
        .await
        .expect("produce");
    // Stop the traced server itself (strace does not pass its own SIGTERM on); strace exits
    // with it.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .expect("strace's children");
    let server = children
        .split_whitespace()
        .next()
        .expect("the traced server");
    Command::new("kill")
        .args(["-TERM", server])
        .status()
        .unwrap();
    child.wait().unwrap();

    // "1234 mkdir("/path", 0777) = 0" and "1234 fsync(7</path>) = 0", in order.
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut created: Vec<(usize, std::path::PathBuf)> = Vec::new();
    let mut synced: Vec<(usize, std::path::PathBuf)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if !line.ends_with("= 0") {
            continue;
        }
        if line.contains("mkdir") {
            let path = line.split('"').nth(1).expect("a path");
            created.push((i, std::path::PathBuf::from(path)));
        } else if line.contains("fsync(") || line.contains("fdatasync(") {
            let path = line
                .split('<')
                .nth(1)
                .and_then(|s| s.split('>').next())
                .unwrap();
            synced.push((i, std::path::PathBuf::from(path)));
        }
    }
    let expected = [
        data.clone(),
        data.join("meta"),
        data.join("meta/raft"),
        data.join("topics"),
        data.join("topics/t"),
        data.join("topics/t/0"),
        data.join("topics/t/1"),
    ];
    for dir in &expected {
        assert!(
            created.iter().any(|(_, p)| p == dir),
            "{} was not created (by mkdir); the trace:\n{text}",
            dir.display()
        );
    }
    for (at, dir) in &created {
        let parent = dir.parent().unwrap();
        assert!(
            synced.iter().any(|(i, p)| i > at && p == parent),
            "{} was created but {} was never fsynced after it",
            dir.display(),
            parent.display()
        );
    }
}

/// A replica whose role change fails (here its leader-epoch file cannot be written at start-up)
/// costs only itself: the node starts, serves its other partitions, and gives the failed one
/// its role by itself once the file can be written. Before, the failure aborted the whole
/// reconciliation, and at start-up the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_take_its_role_costs_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    // "a" sorts first: the failing replica is reconciled before the healthy one.
    for t in ["a", "b"] {
        client.create_topic(t, 1, 1, BTreeMap::new()).await.unwrap();
        client
            .produce_batches(t, 0, batch(&["before".to_string()]), Acks::All)
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| node.stop());
    // The restart leads under a new epoch, which is written to `0.leader-epochs` through a
    // temporary `0.leader-epochs.tmp`: a directory in its place makes that write fail.
    let obstacle = dir.path().join("topics/a/0.leader-epochs.tmp");
    std::fs::create_dir(&obstacle).unwrap();
    tokio::task::block_in_place(|| node.restart_same_port());
    let client = node.client().await.with_retry_budget(Duration::ZERO);
    client
        .produce_batches("b", 0, batch(&["after".to_string()]), Acks::All)
        .await
        .expect("the healthy partition serves");
    assert!(
        client
            .produce_batches("a", 0, batch(&["lost".to_string()]), Acks::All)
            .await
            .is_err(),
        "the replica without its role accepted a write"
    );
    std::fs::remove_dir(&obstacle).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .produce_batches("a", 0, batch(&["after".to_string()]), Acks::All)
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never took its role: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for t in ["a", "b"] {
        let got: Vec<Vec<u8>> = read_partition(&client, t, 0)
            .await
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, [b"before".to_vec(), b"after".to_vec()], "{t}");
    }
}
