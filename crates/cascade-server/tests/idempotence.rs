//! The idempotent producer against real nodes: one producer's events are stored in the order
//! it sent them and exactly once, with five requests in flight, through `cascade produce` and
//! one REST request, across answers lost on cut connections and a leader killed mid-stream;
//! a resumed producer fences its older instance; an idle producer id expires; bad producer
//! fields are refused and write nothing.

mod common;

use bytes::Bytes;
use cascade_client::proto::ErrorCode;
use cascade_client::{Acks, Client, Producer, ProducerConfig, ProducerRecord};
use common::proxy::Proxy;
use common::*;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// splitmix64: a fixed, seedable sequence, so a run can be regenerated to check it.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Length of event `i`'s value in a run: 1 B to `max` bytes.
fn value_len(seed: u64, i: u64, max: u64) -> usize {
    1 + (mix(seed ^ i.wrapping_mul(0x1000_0000_01b3)) % max) as usize
}

/// Event `i` of a run: its index as the key, a value of random length filled with one byte.
fn event(seed: u64, i: u64, max: u64) -> ProducerRecord {
    ProducerRecord {
        key: Some(Bytes::copy_from_slice(&i.to_be_bytes())),
        value: Some(Bytes::from(vec![(i % 251) as u8; value_len(seed, i, max)])),
        partition: Some(0),
        ..Default::default()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads partition 0 of `topic` from its start to its end and checks that record j is event
/// j of the run, for j in 0..n: nothing missing, nothing twice, nothing out of place.
async fn check_run(client: &Client, topic: &str, seed: u64, n: u64, max: u64) {
    let mut next = 0u64;
    let mut offset = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while next < n {
        assert!(
            Instant::now() < deadline,
            "{topic}: read {next} of {n} events"
        );
        let f = client
            .fetch(topic, 0, offset, 8 << 20, Duration::from_millis(500))
            .await
            .expect("fetch");
        let recs = cascade_client::decode_records(topic, 0, &f.batches, offset).expect("decode");
        for r in recs {
            let key = r.key.as_deref().expect("a key");
            let got = u64::from_be_bytes(key.try_into().expect("8-byte key"));
            assert_eq!(
                got, next,
                "{topic}: offset {} holds event {got}, expected event {next} (the log must hold \
                 the events once each, in send order)",
                r.offset
            );
            let value = r.value.as_deref().expect("a value");
            assert_eq!(
                value.len(),
                value_len(seed, next, max),
                "{topic}: event {next} length"
            );
            assert!(
                value.iter().all(|&b| b == (next % 251) as u8),
                "{topic}: event {next} bytes"
            );
            next += 1;
            offset = r.offset + 1;
        }
    }
    let hw = client
        .list_offsets(topic, vec![0], cascade_client::proto::OffsetSpec::Latest, 0)
        .await
        .unwrap()[0]
        .offset;
    assert_eq!(hw, n, "{topic}: {hw} records stored for {n} events sent");
}

/// Sends events 0..n in order through `producer`, keeping at most 10,000 unanswered, and
/// fails on the first error.
async fn send_all(producer: &Producer, seed: u64, n: u64, max: u64, acked: &AtomicU64) {
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        pending.push(producer.send(event(seed, i, max)));
        while pending.len() >= 10_000 {
            pending.next().await.unwrap().expect("send");
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    producer.flush().await;
    while let Some(r) = pending.next().await {
        r.expect("send");
        acked.fetch_add(1, Ordering::Relaxed);
    }
}

async fn metric(node: &Node, name: &str) -> f64 {
    let addr = node.http.clone().expect("http");
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).unwrap();
        b
    })
    .await
    .unwrap();
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_producer_with_five_requests_in_flight_stores_its_events_in_send_order() {
    // The issue that started this: batches of one partition sent concurrently were stored in
    // whatever order the server scheduled them. Each run: 200,000 events of 1 B to 4 KiB.
    let runs = env_u64("CASCADE_TEST_ORDER_RUNS", 20);
    let n = env_u64("CASCADE_TEST_ORDER_EVENTS", 200_000);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    for run in 0..runs {
        let topic = format!("order-{run}");
        client
            .create_topic(&topic, 1, 1, BTreeMap::new())
            .await
            .unwrap();
        let producer = Producer::new(client.clone(), &topic, ProducerConfig::default())
            .await
            .unwrap();
        assert!(producer.identity().is_some(), "idempotent by default");
        let seed = mix(run);
        send_all(&producer, seed, n, 4096, &AtomicU64::new(0)).await;
        check_run(&client, &topic, seed, n, 4096).await;
        client.delete_topic(&topic).await.unwrap();
    }
    // The broker never had to refuse a batch as out of order: the sequencer queued every
    // early arrival behind its predecessors.
    assert_eq!(
        metric(&node, "cascade_produce_out_of_order_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_produce_stores_stdin_lines_in_order() {
    let n = env_u64("CASCADE_TEST_ORDER_EVENTS", 200_000);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("lines", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    let seed = 77;
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!("{i:08}:"));
        input.extend(std::iter::repeat_n('z', value_len(seed, i, 4096)));
        input.push('\n');
    }
    let brokers = node.grpc.clone();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || cli(&brokers, &["produce", "lines"], Some(&input)))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let mut next = 0u64;
    let mut offset = 0;
    while next < n {
        let f = client
            .fetch("lines", 0, offset, 8 << 20, Duration::from_millis(500))
            .await
            .unwrap();
        for r in cascade_client::decode_records("lines", 0, &f.batches, offset).unwrap() {
            let v = r.value.unwrap();
            assert_eq!(
                &v[..9],
                format!("{next:08}:").as_bytes(),
                "line at offset {}",
                r.offset
            );
            assert_eq!(v.len(), 9 + value_len(seed, next, 4096));
            next += 1;
            offset = r.offset + 1;
        }
    }
    assert_eq!(node_hw(&client, "lines").await, n);
}

async fn node_hw(client: &Client, topic: &str) -> u64 {
    client
        .list_offsets(topic, vec![0], cascade_client::proto::OffsetSpec::Latest, 0)
        .await
        .unwrap()[0]
        .offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rest_request_is_stored_in_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("rest-order", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    // 10,000 records of 1 B to 1 KiB in one request (about 5 MB of JSON).
    let seed = 5;
    let records: Vec<serde_json::Value> = (0..10_000u64)
        .map(|i| {
            let v = format!("{i:06}{}", "r".repeat(value_len(seed, i, 1024)));
            serde_json::json!({ "value": v })
        })
        .collect();
    let body = serde_json::json!({ "records": records }).to_string();
    let addr = node.http.clone().unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /topics/rest-order/partitions/0 HTTP/1.1\r\nhost: x\r\ncontent-type: application/vnd.kafka.json.v2+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).unwrap();
        b
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(500)]
    );
    let json: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let offsets: Vec<u64> = json["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (0..10_000).collect::<Vec<u64>>(),
        "each record's offset, in order"
    );
    let stored = read_partition(&client, "rest-order", 0).await;
    assert_eq!(stored.len(), 10_000);
    for (i, (_, v)) in stored.iter().enumerate() {
        // JSON strings are stored as their JSON text: "000123rrr..."
        assert_eq!(&v[1..7], format!("{i:06}").as_bytes(), "offset {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_on_cut_connections_cost_no_duplicate_and_no_reordering() {
    // The producer reaches the node only through a proxy that drops every connection every
    // 100 ms: requests the broker carried out lose their answers and are sent again. The node
    // advertises the proxy's address, so the client never learns another way in.
    let port = Proxy::free_port();
    let advertised = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--advertised-grpc-addr", &advertised]);
    let proxy = Proxy::start_on(port, &node.grpc).await;
    client_topic(&node, "cut").await;
    let client = Client::connect(&proxy.addr).await.unwrap();
    let producer = Producer::new(client.clone(), "cut", ProducerConfig::default())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let cutter = {
        let (stop, cuts) = (stop.clone(), cuts.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if proxy.cut() > 0 {
                    cuts.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Rounds of 20,000 events until the cuts have made the broker answer retries of stored
    // batches (bounded: a machine fast enough to dodge every cut fails the test, not hangs).
    let seed = 9;
    let round = 20_000;
    let mut n = 0;
    loop {
        let mut pending = FuturesUnordered::new();
        for i in n..n + round {
            pending.push(producer.send(event(seed, i, 2048)));
        }
        producer.flush().await;
        while let Some(r) = pending.next().await {
            r.expect("send");
        }
        n += round;
        let duplicates = metric(&node, "cascade_produce_duplicates_total").await;
        let cut = cuts.load(Ordering::Relaxed);
        if cut >= 5 && duplicates > 0.0 {
            break;
        }
        assert!(
            n < 1_000_000,
            "{n} events and {cut} cuts, but no retry of a stored batch: the test did not test dedup"
        );
    }
    stop.store(true, Ordering::Relaxed);
    cutter.await.unwrap();
    let direct = node.client().await;
    check_run(&direct, "cut", seed, n, 2048).await;
}

async fn client_topic(node: &Node, topic: &str) {
    node.client()
        .await
        .create_topic(topic, 1, 1, BTreeMap::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_stream_costs_no_event_and_no_reordering() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    let all = nodes
        .iter()
        .map(|n| n.grpc.clone())
        .collect::<Vec<_>>()
        .join(",");
    let client = Client::connect(&all).await.unwrap();
    client
        .create_topic("failover", 1, 3, BTreeMap::new())
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), "failover", ProducerConfig::default())
        .await
        .unwrap();
    let (seed, n) = (11, 60_000);
    let acked = Arc::new(AtomicU64::new(0));
    let sending = {
        let (producer, acked) = (producer.clone(), acked.clone());
        tokio::spawn(async move { send_all(&producer, seed, n, 2048, &acked).await })
    };
    // Kill the leader once a third is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < n / 3 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leader = client
        .refresh_metadata()
        .await
        .unwrap()
        .leader("failover", 0)
        .expect("a leader")
        .node_id;
    // start_cluster gives node i the id i + 1.
    nodes[(leader - 1) as usize].kill9();
    sending
        .await
        .expect("every event acknowledged despite the kill");
    assert!(acked.load(Ordering::Relaxed) == n);
    check_run(&client, "failover", seed, n, 2048).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_producer_fences_its_older_instance() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    client_topic(&node, "fence").await;
    let client = node.client().await;
    let old = Producer::new(client.clone(), "fence", ProducerConfig::default())
        .await
        .unwrap();
    old.send(ProducerRecord::value("before")).await.unwrap();
    let (id, epoch) = old.identity().unwrap();
    let new = Producer::new(
        client.clone(),
        "fence",
        ProducerConfig {
            resume: Some((id, epoch)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(new.identity(), Some((id, epoch + 1)));
    let e = old
        .send(ProducerRecord::value("zombie"))
        .await
        .expect_err("the old instance is fenced");
    assert_eq!(e.reason(), Some(ErrorCode::ProducerFenced), "{e}");
    // Fenced for good: later sends fail too, without reaching the broker.
    let e = old
        .send(ProducerRecord::value("zombie 2"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(ErrorCode::ProducerFenced), "{e}");
    new.send(ProducerRecord::value("after")).await.unwrap();
    let values: Vec<Vec<u8>> = read_partition(&client, "fence", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, vec![b"before".to_vec(), b"after".to_vec()]);
    // Resuming with an epoch that is no longer current is itself refused.
    let e = client
        .init_producer_id(Some((id, epoch)))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(ErrorCode::ProducerFenced), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_producer_fields_get_a_clear_error_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    client_topic(&node, "bad").await;
    let client = node.client().await.with_retry_budget(Duration::ZERO);
    let (id, epoch) = client.init_producer_id(None).await.unwrap();
    let refused = |r: cascade_client::Result<cascade_client::Produced>| -> (ErrorCode, String) {
        let e = r.expect_err("refused");
        (e.reason().expect("a reason"), e.to_string())
    };
    let cases: Vec<(&str, Bytes, ErrorCode, &str)> = vec![
        (
            "never issued",
            producer_batch(&["a"], (1 << 40, 0, 0)),
            ErrorCode::UnknownProducerId,
            "never issued",
        ),
        (
            "negative sequence",
            producer_batch(&["a"], (id, epoch, -5)),
            ErrorCode::InvalidRecord,
            "sequence",
        ),
        (
            "negative epoch",
            producer_batch(&["a"], (id, -3, 0)),
            ErrorCode::InvalidRecord,
            "epoch",
        ),
        (
            "id below -1",
            producer_batch(&["a"], (-7, 0, 0)),
            ErrorCode::InvalidRecord,
            "producer id -7",
        ),
        (
            "epoch from the future",
            producer_batch(&["a"], (id, epoch + 5, 0)),
            ErrorCode::InvalidProducerEpoch,
            "never issued",
        ),
        (
            "first batch not at 0",
            producer_batch(&["a"], (id, epoch, 3)),
            ErrorCode::UnknownProducerId,
            "sequence 3",
        ),
    ];
    for (what, b, code, says) in cases {
        let (got, msg) = refused(client.produce_batches("bad", 0, b, Acks::All).await);
        assert_eq!(got, code, "{what}: {msg}");
        assert!(msg.contains(says), "{what}: {msg}");
    }
    let e = client
        .produce_batches(
            "no-such-topic",
            0,
            producer_batch(&["a"], (id, epoch, 0)),
            Acks::All,
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(ErrorCode::UnknownTopic), "{e}");
    assert_eq!(node_hw(&client, "bad").await, 0, "nothing was written");

    // In sequence: stored; an exact retry: the original offsets, not stored again; a gap:
    // refused as out of order.
    let first = producer_batch(&["x", "y"], (id, epoch, 0));
    let stored = client
        .produce_batches("bad", 0, first.clone(), Acks::All)
        .await
        .unwrap();
    let again = client
        .produce_batches("bad", 0, first, Acks::All)
        .await
        .unwrap();
    assert_eq!(
        (again.base_offset, again.last_offset),
        (stored.base_offset, stored.last_offset)
    );
    let (got, msg) = refused(
        client
            .produce_batches("bad", 0, producer_batch(&["z"], (id, epoch, 5)), Acks::All)
            .await,
    );
    assert_eq!(got, ErrorCode::OutOfOrderSequence, "{msg}");
    assert!(msg.contains("expected 2, got 5"), "{msg}");
    assert_eq!(node_hw(&client, "bad").await, 2);
    assert_eq!(metric(&node, "cascade_produce_duplicates_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_producer_id_expires_and_the_producer_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--retention-check-secs", "1"]);
    let client = node.client().await;
    let configs = BTreeMap::from([("producer.id.expiration.ms".to_string(), "500".to_string())]);
    client.create_topic("idle", 1, 1, configs).await.unwrap();
    let producer = Producer::new(client.clone(), "idle", ProducerConfig::default())
        .await
        .unwrap();
    let (id, epoch) = producer.identity().unwrap();
    producer.send(ProducerRecord::value("one")).await.unwrap();
    // Past the expiration and a housekeeping round: the partition forgot the producer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let raw = client.clone().with_retry_budget(Duration::ZERO);
    let e = raw
        .produce_batches(
            "idle",
            0,
            producer_batch(&["raw"], (id, epoch, 1)),
            Acks::All,
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(ErrorCode::UnknownProducerId), "{e}");
    // The producer renumbers under a new epoch and goes on, in order.
    producer.send(ProducerRecord::value("two")).await.unwrap();
    producer.send(ProducerRecord::value("three")).await.unwrap();
    assert_eq!(producer.identity(), Some((id, epoch + 1)));
    let values: Vec<Vec<u8>> = read_partition(&client, "idle", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        values,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_recognises_a_retry_of_what_the_old_one_stored() {
    // Followers build the producer state from what they replicate: after a failover, a retry
    // of a batch the old leader stored (and acknowledged with acks=all) is answered with its
    // original offsets by the new leader, not written again.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    let all = nodes
        .iter()
        .map(|n| n.grpc.clone())
        .collect::<Vec<_>>()
        .join(",");
    let client = Client::connect(&all).await.unwrap();
    client
        .create_topic("retry-failover", 1, 3, BTreeMap::new())
        .await
        .unwrap();
    let (id, epoch) = client.init_producer_id(None).await.unwrap();
    let first = producer_batch(&["a", "b", "c"], (id, epoch, 0));
    let second = producer_batch(&["d"], (id, epoch, 3));
    let stored = client
        .produce_batches("retry-failover", 0, first.clone(), Acks::All)
        .await
        .unwrap();
    let stored2 = client
        .produce_batches("retry-failover", 0, second.clone(), Acks::All)
        .await
        .unwrap();
    let leader = client
        .refresh_metadata()
        .await
        .unwrap()
        .leader("retry-failover", 0)
        .unwrap()
        .node_id;
    nodes[(leader - 1) as usize].kill9();
    // Both retries reach the new leader (the client follows the leader change).
    let again = client
        .produce_batches("retry-failover", 0, first, Acks::All)
        .await
        .unwrap();
    let again2 = client
        .produce_batches("retry-failover", 0, second, Acks::All)
        .await
        .unwrap();
    let now = client
        .refresh_metadata()
        .await
        .unwrap()
        .leader("retry-failover", 0)
        .unwrap()
        .node_id;
    assert_ne!(now, leader, "a new leader answered");
    assert_eq!(
        (again.base_offset, again.last_offset),
        (stored.base_offset, stored.last_offset)
    );
    assert_eq!(
        (again2.base_offset, again2.last_offset),
        (stored2.base_offset, stored2.last_offset)
    );
    // And the sequence goes on from there.
    let third = client
        .produce_batches(
            "retry-failover",
            0,
            producer_batch(&["e"], (id, epoch, 4)),
            Acks::All,
        )
        .await
        .unwrap();
    assert_eq!(third.base_offset, 4);
    let values: Vec<Vec<u8>> = read_partition(&client, "retry-failover", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<Vec<u8>> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotence_one_request_in_flight_keeps_send_order() {
    // What holds without a producer id (docs/producer.md): concurrent requests may be stored
    // in any order, but a producer that waits for each answer (max_in_flight 1) stores in
    // send order, as long as nothing is retried.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    client_topic(&node, "plain").await;
    let client = node.client().await;
    let producer = Producer::new(
        client.clone(),
        "plain",
        ProducerConfig {
            idempotence: false,
            max_in_flight: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(producer.identity(), None);
    let (seed, n) = (21, 20_000);
    send_all(&producer, seed, n, 2048, &AtomicU64::new(0)).await;
    check_run(&client, "plain", seed, n, 2048).await;
}
