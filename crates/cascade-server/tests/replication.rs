//! The leader's side of replication, attacked directly over the internal `Replication`
//! service of a real node: a fetch is the follower's acknowledgement ("everything below my
//! fetch offset is a copy of yours"), so a leader must not take it from a follower whose log
//! holds batches of another leader below that offset.

mod common;

use cascade_client::Acks;
use cascade_client::proto::Record;
use cascade_proto::internal::ReplicaFetchRequest;
use cascade_proto::internal::replication_client::ReplicationClient;
use common::Node;
use std::collections::BTreeMap;

/// A follower names the leader epoch of its last batch in every fetch. The leader answers
/// `diverging` (no records) when its own log does not hold that epoch up to the fetch offset
/// (the follower's last batch would be another leader's, at an offset the leader gives other
/// events), and never when the follower's log agrees or names no epoch (an older follower).
///
/// Before the check, a follower whose truncation had missed an old leader's suffix fetched on
/// from past it and was counted in sync: the StatefulSet rolling-restart run found one
/// holding another leader's batches at four offsets its leader had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_a_fetch_whose_last_epoch_diverges_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("div", 1, 1, BTreeMap::new())
        .await
        .expect("create");
    let produce = async |client: &cascade_client::Client, n: usize| {
        for i in 0..n {
            let rec = Record {
                value: Some(bytes::Bytes::from(format!("v{i}"))),
                ..Default::default()
            };
            client
                .produce_records("div", Some(0), vec![rec], Acks::All)
                .await
                .expect("produce");
        }
    };
    // Epoch e0 covers offsets [0, 3); a restart gives the leader a new epoch e1 for [3, 5).
    produce(&client, 3).await;
    let e0 = client.describe_topic("div").await.unwrap().partitions[0].leader_epoch;
    drop(client);
    assert_eq!(node.stop(), Some(0), "clean stop");
    node.restart_same_port();
    let client = node.client().await;
    produce(&client, 2).await;
    let d = client.describe_topic("div").await.unwrap();
    let e1 = d.partitions[0].leader_epoch;
    assert!(
        e1 > e0,
        "a restarted leader leads at a new epoch ({e0} then {e1})"
    );
    assert_eq!(d.partitions[0].log_end_offset, 5);

    let mut repl = ReplicationClient::connect(format!("http://{}", node.grpc))
        .await
        .expect("connect");
    let mut fetch = async |fetch_offset: u64, last: Option<i32>| {
        repl.fetch(ReplicaFetchRequest {
            topic: "div".into(),
            topic_id: d.topic_id.clone(),
            partition: 0,
            replica_id: 2,
            leader_epoch: e1,
            fetch_offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            partition_epoch: 0,
            last_fetched_epoch: last,
        })
        .await
        .expect("fetch")
        .into_inner()
    };
    for (offset, last, diverging, why) in [
        (5, Some(e1), false, "caught up in the current epoch"),
        (
            3,
            Some(e0),
            false,
            "the old epoch ends here as in the leader's log",
        ),
        (0, None, false, "an empty follower"),
        (
            4,
            None,
            false,
            "a follower that names no epoch (older version) is not judged",
        ),
        (
            4,
            Some(e0),
            true,
            "an old-epoch batch at offset 3, where the leader holds epoch e1",
        ),
        (5, Some(e1 + 3), true, "an epoch the leader never had"),
        (
            2,
            Some(e1),
            true,
            "the current epoch, below where it starts",
        ),
    ] {
        let r = fetch(offset, last).await;
        assert_eq!(
            r.diverging, diverging,
            "fetch at {offset} naming epoch {last:?} ({why}); epochs {e0}@0 {e1}@3"
        );
        if diverging {
            assert!(r.records.is_empty(), "no records for a diverging follower");
        } else if offset < 5 {
            assert!(!r.records.is_empty(), "records from {offset} ({why})");
        }
    }
}

/// The leader epochs of the batches in `records`, in order.
fn batch_epochs(records: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut rest = records;
    while let Ok(h) = cascade_record::BatchHeader::parse(rest) {
        out.push(h.leader_epoch);
        rest = &rest[h.total_len().min(rest.len())..];
    }
    out
}

/// A follower's fetch long-polls the leader for up to its wait. If the leader hands its
/// leadership over meanwhile, it becomes a follower of the new leader and copies the new
/// leader's batches into the very log the poll reads: those must never reach the waiting
/// follower as the old epoch's batches. The leader answers with an error once it no longer
/// leads the epoch the fetch named (the follower then asks the metadata and truncates).
///
/// Before, the poll woke on the copied batches and sent them: in the StatefulSet
/// rolling-restart run a follower appended one leader's batches right after another's, at
/// offsets the new leader held other batches at, and was counted in sync (the run's
/// `ReplicaDivergence`, and the likely cause of its lost acknowledged events).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_waiting_on_a_leader_that_hands_over_gets_no_batches_of_the_next_epoch() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = common::start_cluster(&dirs);
    let admin = nodes[0].client().await;
    let configs = BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !admin
        .describe_cluster()
        .await
        .is_ok_and(|d| d.brokers.len() == 3 && d.brokers.iter().all(|b| b.alive))
    {
        assert!(std::time::Instant::now() < deadline, "3 live brokers");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    admin
        .create_topic("moved", 1, 3, configs)
        .await
        .expect("create");
    let leader_of = async |nodes: &[Node]| -> Option<(u32, i32, u64, String)> {
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(c) = cascade_client::Client::connect(&n.grpc).await else {
                continue;
            };
            let Ok(d) = c.describe_topic("moved").await else {
                continue;
            };
            let p = &d.partitions[0];
            if p.leader != 0 && p.isr.len() == 3 {
                return Some((
                    p.leader,
                    p.leader_epoch,
                    p.log_end_offset,
                    d.topic_id.clone(),
                ));
            }
        }
        None
    };
    let produce = async |nodes: &[Node], tag: &str| -> bool {
        let Some((leader, ..)) = leader_of(nodes).await else {
            return false;
        };
        let Ok(c) = cascade_client::Client::connect(&nodes[leader as usize - 1].grpc).await else {
            return false;
        };
        let rec = common::errors::record(None, tag.as_bytes());
        c.produce_records("moved", Some(0), vec![rec], Acks::All)
            .await
            .is_ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut written = 0;
    while written < 5 {
        assert!(std::time::Instant::now() < deadline, "no acks=all writes");
        written += usize::from(produce(&nodes, "before").await);
    }
    let (leader, epoch, _, topic_id) = leader_of(&nodes).await.expect("a leader, all in sync");

    // A caught-up follower's fetch, waiting at the leader's end for up to 5 s.
    let mut repl =
        ReplicationClient::connect(format!("http://{}", nodes[leader as usize - 1].grpc))
            .await
            .expect("connect");
    let request = move |fetch_offset: u64, max_wait_ms: u32| ReplicaFetchRequest {
        topic: "moved".into(),
        topic_id: topic_id.clone(),
        partition: 0,
        replica_id: 99,
        leader_epoch: epoch,
        fetch_offset,
        max_bytes: 1 << 20,
        max_wait_ms,
        partition_epoch: 0,
        last_fetched_epoch: (fetch_offset > 0).then_some(epoch),
    };
    let end = repl
        .fetch(request(0, 0))
        .await
        .expect("fetch")
        .into_inner()
        .log_end_offset;
    let poll = tokio::spawn(async move { repl.fetch(request(end, 5_000)).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The leader stops gracefully: it hands the partition over and, until it exits, follows
    // the new leader, which takes writes all the while.
    nodes[leader as usize - 1].signal("-TERM");
    // Writes go to the new leader only: one to the old leader would wake the poll with a
    // batch of its own epoch.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let mut i = 0;
    while std::time::Instant::now() < until && !poll.is_finished() {
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(c) = cascade_client::Client::connect(&n.grpc).await else {
                continue;
            };
            let Ok(d) = c.describe_topic("moved").await else {
                continue;
            };
            let now = d.partitions[0].leader;
            if now != 0 && now != leader {
                let c = cascade_client::Client::connect(&nodes[now as usize - 1].grpc).await;
                let rec = common::errors::record(None, format!("after-{i}").as_bytes());
                if let Ok(c) = c {
                    let _ = c
                        .produce_records("moved", Some(0), vec![rec], Acks::All)
                        .await;
                }
                i += 1;
            }
            break;
        }
    }
    match poll.await.expect("poll task") {
        Ok(r) => {
            let r = r.into_inner();
            let epochs = batch_epochs(&r.records);
            assert!(
                epochs.iter().all(|&e| e <= epoch),
                "a fetch at epoch {epoch} from offset {end} was answered with batches of epochs {epochs:?}"
            );
        }
        // Not the leader of that epoch any more, or gone: the follower asks again.
        Err(status) => eprintln!("the deposed leader answered: {status}"),
    }
    let _ = nodes[leader as usize - 1].stop();
}
