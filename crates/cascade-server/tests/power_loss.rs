//! A simultaneous power loss of every node of a 3-node cluster, simulated in-process: the
//! brokers' files live on in-memory file systems (`cascade_log::fs::MemFs`, one [`Disk`])
//! whose `crash()` drops every write that was not fsynced, on all nodes at the same instant, while
//! `acks=all` producers are running. After each power loss the cluster restarts on what
//! survived, and every event acknowledged before the power went out must be there, exactly
//! once at its offset (`flush=always`, the default).
//!
//! The nodes are real brokers with real gRPC servers on 127.0.0.1 (the same services as
//! `cascade server`); only their file IO is simulated: the partition logs and the files beside
//! them, and the metadata Raft journal, vote and snapshot, all lose what was not fsynced.

use cascade_broker::{Broker, BrokerConfig};
use cascade_client::proto::ErrorCode;
use cascade_client::{Acks, Client};
use cascade_log::fs::{FileSystem, MemFs, MemFsFaults};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct InProc {
    broker: Arc<Broker>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

/// The session timeout of most tests: short, so failovers are quick.
const SESSION: Duration = Duration::from_millis(1200);

fn config(
    id: u32,
    dir: &Path,
    addr: SocketAddr,
    seeds: Vec<String>,
    fs: &Disk,
    session: Duration,
) -> BrokerConfig {
    let mut c = BrokerConfig::new(dir);
    c.node_id = id;
    c.advertised_grpc_addr = addr.to_string();
    c.seeds = seeds;
    c.heartbeat_interval = Duration::from_millis(200);
    c.session_timeout = session;
    c.log_fs = Arc::new(fs.data.clone());
    c.meta_fs = Arc::new(fs.meta.clone());
    c
}

/// Opens a broker and serves its gRPC API on `addr`; `start` is left to the caller (a node
/// waits for a majority, so all must be serving first).
async fn serve(cfg: BrokerConfig, addr: SocketAddr) -> (InProc, Arc<AtomicBool>) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let broker = Broker::open(cfg).await.expect("open broker");
    let ready = Arc::new(AtomicBool::new(false));
    let router = cascade_server::server::grpc_router(&broker, 16 << 20, ready.clone());
    let stop = CancellationToken::new();
    let token = stop.clone();
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = router
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await;
    });
    (
        InProc {
            broker,
            stop,
            server,
        },
        ready,
    )
}

async fn start_all(dirs: &[PathBuf], addrs: &[SocketAddr], fs: &Disk) -> Vec<InProc> {
    let same: Vec<Disk> = dirs.iter().map(|_| fs.clone()).collect();
    start_each(dirs, addrs, &same, SESSION).await
}

/// Like [`start_all`], each node on its own file system (faults hit one node only).
async fn start_each(
    dirs: &[PathBuf],
    addrs: &[SocketAddr],
    fss: &[Disk],
    session: Duration,
) -> Vec<InProc> {
    let mut nodes = Vec::new();
    let mut readies = Vec::new();
    for (i, (dir, addr)) in dirs.iter().zip(addrs).enumerate() {
        let seeds = if i == 0 {
            vec![]
        } else {
            vec![addrs[0].to_string()]
        };
        let cfg = config(i as u32 + 1, dir, *addr, seeds, &fss[i], session);
        let (n, ready) = serve(cfg, *addr).await;
        nodes.push(n);
        readies.push(ready);
    }
    let starts = nodes.iter().map(|n| n.broker.start());
    for r in futures::future::join_all(starts).await {
        r.expect("start");
    }
    for r in readies {
        r.store(true, Ordering::SeqCst);
    }
    nodes
}

/// Power loss: from this instant nothing more becomes durable, and every file reverts to its
/// durable image. Then the (now ghost) brokers are torn down.
async fn power_loss(nodes: Vec<InProc>, fs: &Disk) {
    fs.power_off();
    for n in nodes {
        n.stop.cancel();
        n.broker.shutdown().await;
        let _ = n.server.await;
    }
    // Whatever the ghosts did after the instant above never reached the disk.
    fs.power_on();
}

/// A node's (or, shared, every node's) storage, on in-memory file systems: `data` holds the
/// partitions, where the tests inject disk faults; `meta` the metadata Raft files, which, as
/// in the server (`--fault-file`), disk faults do not reach. A power loss takes both.
/// Dereferences to `data`.
#[derive(Clone, Default)]
struct Disk {
    data: MemFs,
    meta: MemFs,
}

impl std::ops::Deref for Disk {
    type Target = MemFs;
    fn deref(&self) -> &MemFs {
        &self.data
    }
}

impl Disk {
    fn new() -> Self {
        Self::default()
    }

    /// The power goes out: from this instant nothing more becomes durable on either file
    /// system, and every file reverts to its durable image.
    fn power_off(&self) {
        for fs in [&self.data, &self.meta] {
            fs.set_faults(MemFsFaults {
                write_budget: Some(0),
                fail_sync: true,
            });
            fs.crash();
        }
    }

    /// The power is back: whatever ran after [`Disk::power_off`] never reached the disk.
    fn power_on(&self) {
        for fs in [&self.data, &self.meta] {
            fs.set_faults(MemFsFaults::default());
            fs.crash();
        }
    }
}

type Acked = Arc<Mutex<(bool, Vec<(u32, u64, String)>)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_power_loss_of_every_node_loses_no_acknowledged_event() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.path().join(format!("n{i}"))).collect();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        // Reserve distinct ports (released at once; nodes bind them again on every start).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.push(l.local_addr().unwrap());
    }
    let fs = Disk::new();
    let mut nodes = start_all(&dirs, &addrs, &fs).await;
    let seeds: String = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let client = Client::connect(&seeds).await.expect("connect");
    client
        .create_topic("p", 3, 3, BTreeMap::new())
        .await
        .expect("create");

    let mut all_acked: Vec<(u32, u64, String)> = Vec::new();
    let counter = Arc::new(AtomicU64::new(0));
    for round in 0..3u64 {
        let acked: Acked = Arc::new(Mutex::new((false, Vec::new())));
        let running = CancellationToken::new();
        let mut producers = Vec::new();
        for w in 0..4u32 {
            let (client, acked, running, counter) = (
                client.clone(),
                acked.clone(),
                running.clone(),
                counter.clone(),
            );
            producers.push(tokio::spawn(async move {
                while !running.is_cancelled() {
                    let p = w % 3;
                    let base = counter.fetch_add(5, Ordering::SeqCst);
                    let values: Vec<String> = (base..base + 5).map(|i| format!("e{i}")).collect();
                    let recs = values
                        .iter()
                        .map(|v| cascade_client::proto::Record {
                            value: Some(bytes::Bytes::from(v.clone())),
                            ..Default::default()
                        })
                        .collect();
                    if let Ok(r) = client.produce_records("p", Some(p), recs, Acks::All).await {
                        let mut a = acked.lock().unwrap();
                        if !a.0 {
                            for (i, v) in values.into_iter().enumerate() {
                                a.1.push((p, r[0].base_offset + i as u64, v));
                            }
                        }
                    }
                }
            }));
        }
        // Let the load run a while, then cut the power on every node at once.
        tokio::time::sleep(Duration::from_millis(400 + 300 * round)).await;
        {
            let mut a = acked.lock().unwrap();
            a.0 = true; // acknowledgements from here on came after the power went out
            all_acked.append(&mut a.1);
        }
        power_loss(nodes, &fs).await;
        running.cancel();
        for p in producers {
            let _ = p.await;
        }
        nodes = start_all(&dirs, &addrs, &fs).await;

        // Every event acknowledged before any of the power losses so far is there.
        let mut by_partition: BTreeMap<u32, BTreeMap<u64, String>> = BTreeMap::new();
        for (p, off, v) in &all_acked {
            assert!(
                by_partition
                    .entry(*p)
                    .or_default()
                    .insert(*off, v.clone())
                    .is_none(),
                "two acknowledgements for p/{p} offset {off}"
            );
        }
        assert!(
            !all_acked.is_empty(),
            "round {round}: nothing was acknowledged"
        );
        for (p, want) in &by_partition {
            let last = *want.keys().next_back().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let got = loop {
                match read_until(&client, *p, last + 1).await {
                    Ok(got) => break got,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "round {round}: reading p/{p} after restart: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            for (off, v) in want {
                assert_eq!(
                    got.get(off),
                    Some(v),
                    "round {round}: p/{p} offset {off} lost or changed"
                );
            }
        }
        eprintln!(
            "round {round}: {} acknowledged events survived a power loss of every node",
            all_acked.len()
        );
    }
    for n in nodes {
        n.stop.cancel();
        n.broker.shutdown().await;
        let _ = n.server.await;
    }
}

/// Reads partition `p` from offset 0 until `end` (retriable errors are returned).
async fn read_until(
    client: &Client,
    p: u32,
    end: u64,
) -> Result<BTreeMap<u64, String>, cascade_client::ClientError> {
    let mut c = cascade_client::PartitionConsumer::new(client.clone(), "p", p, 0);
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.position() < end {
        if Instant::now() > deadline {
            return Err(cascade_client::ClientError::Server {
                code: tonic::Code::DeadlineExceeded,
                reason: Some(ErrorCode::Timeout),
                message: format!("p/{p} reached only offset {} of {end}", c.position()),
                leader: None,
            });
        }
        for r in c.poll(Duration::from_millis(200)).await? {
            out.insert(
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            );
        }
    }
    Ok(out)
}

/// A follower whose disk fills up (ENOSPC on every write) falls out of the in-sync set while
/// the other two keep acknowledging, and once space returns it catches up and rejoins without
/// a restart (its fetcher used to end at the first storage error, for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_with_a_full_disk_recovers_when_space_returns() {
    let Three {
        _root: _dir,
        nodes,
        fss,
        client,
        ..
    } = three_nodes_each_on_its_own_fs("full", &[], SESSION).await;
    let produce = async |from: u64, to: u64| {
        for i in from..to {
            let rec = cascade_client::proto::Record {
                value: Some(bytes::Bytes::from(format!("f{i}"))),
                ..Default::default()
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match client
                    .produce_records("full", Some(0), vec![rec.clone()], Acks::All)
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "produce f{i}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    let describe = async || {
        client
            .describe_topic("full")
            .await
            .expect("describe")
            .partitions[0]
            .clone()
    };
    produce(0, 20).await;
    let p = describe().await;
    let follower = *p.replicas.iter().find(|&&r| r != p.leader).unwrap();
    let full = &fss[follower as usize - 1];
    full.set_faults(MemFsFaults {
        write_budget: Some(0),
        fail_sync: false,
    });
    // The other two keep acknowledging; the full one leaves the in-sync set.
    produce(20, 60).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while describe().await.isr.contains(&follower) {
        assert!(
            Instant::now() < deadline,
            "the full follower stayed in sync"
        );
        produce(60, 61).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Space returns: it catches up and is back in sync, no restart.
    full.set_faults(MemFsFaults::default());
    produce(61, 80).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = describe().await;
        if p.isr.contains(&follower) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {follower} never rejoined after its disk had space again: isr {:?}",
            p.isr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in nodes {
        n.stop.cancel();
        n.broker.shutdown().await;
        let _ = n.server.await;
    }
}

/// The leader's disk starts failing every fsync (EIO). Its log is poisoned, so it can never
/// acknowledge again: it hands leadership to another in-sync replica and takes itself offline,
/// and producers carry on through the new leader (they got STORAGE_ERROR from the old leader
/// forever before). Once the disk works again the replica is reopened, catches up and rejoins
/// the in-sync set, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_fsync_fails_hands_over_and_comes_back_when_the_disk_does() {
    let failing = MemFsFaults {
        write_budget: None,
        fail_sync: true,
    };
    a_leader_with_a_bad_disk_hands_over_and_rejoins("eio", failing, None).await;
}

/// The same full disk under `acks=none` producers only: nobody waits for an append's result,
/// so the refusal for want of space reached no one and the leader never reported its disk
/// full; it kept leading and dropping every write. The partition's writer now notes the disk
/// full from every append's outcome, so leadership moves as it does for acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_fed_only_unacknowledged_writes_reports_its_full_disk() {
    let topic = "quiet-full";
    let Three {
        _root: _dir,
        nodes,
        fss,
        client,
        ..
    } = three_nodes_each_on_its_own_fs(topic, &[], SESSION).await;
    let describe = async || {
        client
            .describe_topic(topic)
            .await
            .expect("describe")
            .partitions[0]
            .clone()
    };
    for i in 0..5 {
        produce_one(&client, topic, i, Duration::from_secs(20)).await;
    }
    let old = describe().await.leader;
    fss[old as usize - 1].set_faults(MemFsFaults {
        write_budget: Some(0),
        fail_sync: false,
    });
    let rec = cascade_client::proto::Record {
        value: Some(bytes::Bytes::from_static(b"fire and forget")),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Only acks=none writes, to whoever leads now.
        let _ = client
            .produce_records(topic, Some(0), vec![rec.clone()], Acks::None)
            .await;
        let p = describe().await;
        let shown = p.replica_status.iter().find(|r| r.node_id == old);
        if p.leader != old && p.leader != 0 && shown.is_some_and(|r| r.state == "disk-full") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the full leader never reported its disk: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in nodes {
        n.stop.cancel();
        n.broker.shutdown().await;
        let _ = n.server.await;
    }
}

/// The leader's disk fills up (ENOSPC). Its log still holds everything and still works, but
/// cannot take a write: it reports the replica as `disk-full`, so the controller moves the
/// leadership to an in-sync replica with space and producers carry on (they got
/// STORAGE_ERROR from the full leader until space returned, before). Once space returns the
/// replica catches up and is back in sync, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_with_a_full_disk_hands_over_and_rejoins_when_space_returns() {
    let full = MemFsFaults {
        write_budget: Some(0),
        fail_sync: false,
    };
    a_leader_with_a_bad_disk_hands_over_and_rejoins("fill", full, Some("disk-full")).await;
}

/// The leader of `topic`/0 gets `faults` after 20 acknowledged events: producers carry on
/// through another leader (40 more events); the old leader is out of the in-sync set (its
/// replica shown as `status`, when given); once the disk is healthy again it catches up and
/// rejoins without a restart, and all 80 events are there, once, at their offsets.
async fn a_leader_with_a_bad_disk_hands_over_and_rejoins(
    topic: &str,
    faults: MemFsFaults,
    status: Option<&str>,
) {
    let Three {
        _root: _dir,
        nodes,
        fss,
        client,
        ..
    } = three_nodes_each_on_its_own_fs(topic, &[], SESSION).await;
    let describe = async || {
        client
            .describe_topic(topic)
            .await
            .expect("describe")
            .partitions[0]
            .clone()
    };
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut produce = async |i: u64, patience: Duration| {
        let (offset, v) = produce_one(&client, topic, i, patience).await;
        acked.insert(offset, v);
    };
    for i in 0..20 {
        produce(i, Duration::from_secs(20)).await;
    }
    let old = describe().await.leader;
    fss[old as usize - 1].set_faults(faults);
    // Producers carry on: leadership moves off the bad disk.
    for i in 20..60 {
        produce(i, Duration::from_secs(30)).await;
    }
    let p = describe().await;
    assert_ne!(p.leader, old, "the node with the bad disk still leads");
    assert!(
        !p.isr.contains(&old),
        "the node with the bad disk is still in sync: {:?}",
        p.isr
    );
    if let Some(state) = status {
        let shown = p
            .replica_status
            .iter()
            .find(|r| r.node_id == old)
            .expect("a status for every replica");
        assert_eq!(shown.state, state, "{shown:?}");
    }

    // The disk is healthy again: the replica catches up and is back in sync.
    fss[old as usize - 1].set_faults(MemFsFaults::default());
    for i in 60..80 {
        produce(i, Duration::from_secs(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = describe().await;
        if p.isr.contains(&old) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {old} never came back after its disk recovered: isr {:?}",
            p.isr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything acknowledged is there, once, at its offset.
    let got = read_partition_of(&client, topic, 80).await;
    for (off, v) in &acked {
        assert_eq!(got.get(off), Some(v), "offset {off}");
    }
    assert_eq!(acked.len(), 80);
    for n in nodes {
        n.stop.cancel();
        n.broker.shutdown().await;
        let _ = n.server.await;
    }
}

/// Reads `topic`/0 from offset 0 until `end`.
async fn read_partition_of(client: &Client, topic: &str, end: u64) -> BTreeMap<u64, String> {
    let mut c = cascade_client::PartitionConsumer::new(client.clone(), topic, 0, 0);
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.position() < end {
        assert!(
            Instant::now() < deadline,
            "{topic}/0 reached only {}",
            c.position()
        );
        if let Ok(recs) = c.poll(Duration::from_millis(200)).await {
            for r in recs {
                out.insert(
                    r.offset,
                    String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                );
            }
        }
    }
    out
}

/// Three in-process brokers on their own file systems, and a client. Bind `_root` when
/// destructuring: a pattern's `..` drops it, and with it the nodes' directories.
struct Three {
    _root: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    addrs: Vec<SocketAddr>,
    fss: Vec<Disk>,
    nodes: Vec<InProc>,
    client: Client,
}

/// Three in-process brokers, each on its own in-memory file system (so a fault hits one
/// node), and topic `topic` with one partition, three replicas, `min.insync.replicas=2` and
/// `configs`.
async fn three_nodes_each_on_its_own_fs(
    topic: &str,
    configs: &[(&str, &str)],
    session: Duration,
) -> Three {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.path().join(format!("n{i}"))).collect();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.push(l.local_addr().unwrap());
    }
    let fss: Vec<Disk> = (0..3).map(|_| Disk::new()).collect();
    let nodes = start_each(&dirs, &addrs, &fss, session).await;
    let seeds: String = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let client = Client::connect(&seeds).await.expect("connect");
    let mut all: BTreeMap<String, String> =
        [("min.insync.replicas".to_string(), "2".to_string())].into();
    for (k, v) in configs {
        all.insert(k.to_string(), v.to_string());
    }
    client.create_topic(topic, 1, 3, all).await.expect("create");
    Three {
        _root: root,
        dirs,
        addrs,
        fss,
        nodes,
        client,
    }
}

/// Produces `e{i}` to `topic`/0 with `acks=all`, retrying for `patience`; its offset.
async fn produce_one(client: &Client, topic: &str, i: u64, patience: Duration) -> (u64, String) {
    let v = format!("e{i}");
    let rec = cascade_client::proto::Record {
        value: Some(bytes::Bytes::from(v.clone())),
        ..Default::default()
    };
    let deadline = Instant::now() + patience;
    loop {
        match client
            .produce_records(topic, Some(0), vec![rec.clone()], Acks::All)
            .await
        {
            Ok(r) => return (r[0].base_offset, v),
            Err(e) => {
                assert!(Instant::now() < deadline, "produce e{i}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A leader of a `flush=never` topic loses power alone (its unflushed events are gone from
/// its disk, not from its followers') and is back before its session expires. It must come
/// back as a new incarnation that is not eligible to lead with its short log: leadership moves
/// to a follower that has every acknowledged event, and it rejoins the in-sync set once it has
/// caught up. Before, it re-registered at the same epochs and kept leading with the short log:
/// acknowledged events were lost and their offsets reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_back_from_a_power_loss_inside_its_session_does_not_lead_with_less() {
    leader_back_inside_its_session("lost", &[("flush", "never")], false).await;
}

/// The same with `flush=always`, on a disk that lost the fsynced tail of the active segment
/// in the power cut (a disk that lies about fsync, or a file cut behind the log's back; the
/// recovery point, rewritten without its own fsync, is older than the cut, so recovery sees a
/// clean short log). No replica back from an unclean shutdown is eligible to lead until it
/// has caught up, whatever the flush policy (KIP-966). Before, a `flush=always` replica was
/// trusted to hold every acknowledged event and kept leading with the short log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_lost_fsynced_writes_does_not_lead_with_less() {
    leader_back_inside_its_session("cut", &[], true).await;
}

async fn leader_back_inside_its_session(topic: &str, configs: &[(&str, &str)], cut_tail: bool) {
    // A long session: the restart is certainly inside it, so the controller never fences the
    // node (fencing would move leadership the old way and hide the fault).
    let session = Duration::from_secs(15);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Three {
        _root: _dir,
        dirs,
        addrs,
        fss,
        nodes,
        client,
        ..
    } = three_nodes_each_on_its_own_fs(topic, configs, session).await;
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0..100 {
        let (off, v) = produce_one(&client, topic, i, Duration::from_secs(20)).await;
        assert!(
            acked.insert(off, v).is_none(),
            "offset {off} acknowledged twice"
        );
    }
    let before = client
        .describe_topic(topic)
        .await
        .expect("describe")
        .partitions[0]
        .clone();
    let old = before.leader;
    let mut nodes: Vec<Option<InProc>> = nodes.into_iter().map(Some).collect();

    // Power loss on the leader alone.
    let i = old as usize - 1;
    let lost = Instant::now();
    fss[i].power_off();
    let ghost = nodes[i].take().expect("running");
    ghost.stop.cancel();
    ghost.broker.shutdown().await;
    let _ = ghost.server.await;
    fss[i].power_on();
    if cut_tail {
        // The disk lost the last fsynced writes: a few whole batches off the segment's end.
        let part = dirs[i].join("topics").join(topic).join("0");
        let log = fss[i]
            .read_dir(&part)
            .unwrap()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .expect("a segment");
        let f = fss[i].open(&log, false).unwrap();
        let len = f.len().unwrap();
        f.set_len(len - 300).unwrap();
        f.sync_data().unwrap();
    }

    // Back at once.
    let seeds: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, a)| a.to_string())
        .collect();
    let cfg = config(old, &dirs[i], addrs[i], seeds, &fss[i], session);
    let (n, ready) = serve(cfg, addrs[i]).await;
    n.broker.start().await.expect("restart");
    ready.store(true, Ordering::SeqCst);
    eprintln!("node {old} back {:?} after its power loss", lost.elapsed());
    nodes[i] = Some(n);

    let after = client
        .describe_topic(topic)
        .await
        .expect("describe")
        .partitions[0]
        .clone();
    assert_ne!(
        after.leader, old,
        "the node back from a power loss leads with a short log"
    );
    assert!(after.leader_epoch > before.leader_epoch);
    for j in 100..150 {
        let (off, v) = produce_one(&client, topic, j, Duration::from_secs(30)).await;
        assert!(acked.insert(off, v).is_none(), "offset {off} reused");
    }
    // It catches up and is eligible again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = client
            .describe_topic(topic)
            .await
            .expect("describe")
            .partitions[0]
            .clone();
        if p.isr.contains(&old) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {old} never caught up: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = read_partition_of(&client, topic, 150).await;
    for (off, v) in &acked {
        assert_eq!(got.get(off), Some(v), "acknowledged offset {off}");
    }
    for n in nodes.into_iter().flatten() {
        n.stop.cancel();
        n.broker.shutdown().await;
        let _ = n.server.await;
    }
}

/// After a failed fsync the page cache still holds what the disk may never have got. A lone
/// replica (replication factor 1) whose fsync fails goes offline; when the disk works again it
/// is reopened cut back to its last successful fsync: the event whose produce failed is never
/// served, and its offset is given to the next event. Before, the reopen read the page cache
/// as durable and served the failed event, which a power loss would then take away
/// (read-then-lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reopen_after_a_failed_fsync_does_not_trust_the_page_cache() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("n1")];
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = vec![l.local_addr().unwrap()];
    drop(l);
    let fs = Disk::new();
    let nodes = start_each(&dirs, &addrs, std::slice::from_ref(&fs), SESSION).await;
    let client = Client::connect(&addrs[0].to_string())
        .await
        .expect("connect");
    client
        .create_topic("pc", 1, 1, BTreeMap::new())
        .await
        .expect("create");
    for i in 0..10 {
        let (off, _) = produce_one(&client, "pc", i, Duration::from_secs(10)).await;
        assert_eq!(off, i);
    }
    fs.set_faults(MemFsFaults {
        write_budget: None,
        fail_sync: true,
    });
    let failed = client
        .produce_records(
            "pc",
            Some(0),
            vec![cascade_client::proto::Record {
                value: Some(bytes::Bytes::from_static(b"never-durable")),
                ..Default::default()
            }],
            Acks::All,
        )
        .await;
    assert!(failed.is_err(), "acknowledged without an fsync: {failed:?}");
    // The replica is retired (offline) within a quarter second; then the disk recovers.
    tokio::time::sleep(Duration::from_millis(800)).await;
    fs.set_faults(MemFsFaults::default());
    let (off, v) = produce_one(&client, "pc", 10, Duration::from_secs(20)).await;
    assert_eq!(off, 10, "the failed event kept its offset");
    let got = read_partition_of(&client, "pc", 11).await;
    assert_eq!(got.get(&10), Some(&v));
    assert!(
        !got.values().any(|v| v == "never-durable"),
        "an event whose fsync failed is served: {got:?}"
    );
    for n in nodes {
        n.stop.cancel();
        n.broker.shutdown().await;
        let _ = n.server.await;
    }
}
