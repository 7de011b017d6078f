//! Ordinary use of one real node through the Rust client: round trips, key partitioning,
//! long-poll (and that a waiting one costs no CPU), live subscription, listing offsets, and persistence across a graceful restart.

mod common;

use bytes::Bytes;
use cascade_client::proto::{OffsetSpec, subscribe_request::Position};
use cascade_client::{Acks, Producer, ProducerConfig, ProducerRecord};
use common::*;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test]
async fn produce_and_consume_round_trip_with_kafka_key_partitioning() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("rt", 4, 1, BTreeMap::new())
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), "rt", ProducerConfig::default())
        .await
        .unwrap();
    let mut sent = Vec::new();
    let futures: Vec<_> = (0..500)
        .map(|i| {
            let key = format!("key-{}", i % 37);
            let value = format!("value-{i}");
            sent.push((key.clone(), value.clone()));
            producer.send(ProducerRecord::keyed(key, value))
        })
        .collect();
    let mut acks = Vec::new();
    for f in futures {
        acks.push(f.await.unwrap());
    }
    for ((key, _), ack) in sent.iter().zip(&acks) {
        assert_eq!(
            ack.partition,
            cascade_types::partition_for_key(key.as_bytes(), 4)
        );
    }
    // Everything is readable at the acknowledged position, in order per partition.
    let mut by_partition: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for p in 0..4 {
        by_partition.insert(p, read_partition(&client, "rt", p).await);
    }
    for ((_, value), ack) in sent.iter().zip(&acks) {
        let got = &by_partition[&ack.partition][ack.offset as usize];
        assert_eq!(got.1, value.as_bytes());
    }
    assert_eq!(by_partition.values().map(Vec::len).sum::<usize>(), 500);
    // Typed records with broker-side partitioning agree with the client's choice.
    let produced = client
        .produce_records(
            "rt",
            None,
            vec![cascade_client::proto::Record {
                key: Some(Bytes::from("key-5")),
                value: Some(Bytes::from("typed")),
                headers: vec![cascade_client::proto::Header {
                    key: "h".into(),
                    value: Some(Bytes::from("v")),
                }],
                timestamp_ms: 0,
            }],
            Acks::All,
        )
        .await
        .unwrap();
    assert_eq!(
        produced[0].partition,
        cascade_types::partition_for_key(b"key-5", 4)
    );
    let f = client
        .fetch(
            "rt",
            produced[0].partition,
            produced[0].base_offset,
            1 << 20,
            Duration::ZERO,
        )
        .await
        .unwrap();
    let recs =
        cascade_client::decode_records("rt", f.partition, &f.batches, produced[0].base_offset)
            .unwrap();
    assert_eq!(recs[0].value.as_deref(), Some(&b"typed"[..]));
    assert_eq!(
        recs[0].headers,
        vec![("h".to_string(), Some(Bytes::from("v")))]
    );
}

#[tokio::test]
async fn long_poll_and_subscribe_see_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("live", 1, 1, BTreeMap::new())
        .await
        .unwrap();

    // A fetch at the end waits for data instead of returning at once.
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .fetch("live", 0, 0, 1 << 20, Duration::from_secs(20))
                .await
                .unwrap()
        })
    };
    let mut stream = client
        .subscribe("live", 0, Position::Offset(0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the long poll returned before any data existed"
    );
    client
        .produce_records(
            "live",
            Some(0),
            vec![cascade_client::proto::Record {
                value: Some(Bytes::from("first")),
                ..Default::default()
            }],
            Acks::All,
        )
        .await
        .unwrap();
    let started = Instant::now();
    let fetched = waiter.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "long poll did not wake on data"
    );
    assert_eq!(fetched.next_offset, 1);
    let msg = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("subscription delivered nothing")
        .unwrap()
        .unwrap();
    let recs = cascade_client::decode_records("live", 0, &msg.batches, 0).unwrap();
    assert_eq!(recs[0].value.as_deref(), Some(&b"first"[..]));

    // ListOffsets: earliest, latest, by time.
    let ts = recs[0].timestamp_ms;
    let latest = client
        .list_offsets("live", vec![], OffsetSpec::Latest, 0)
        .await
        .unwrap();
    assert_eq!(latest[0].offset, 1);
    let by_time = client
        .list_offsets("live", vec![0], OffsetSpec::Timestamp, ts)
        .await
        .unwrap();
    assert_eq!((by_time[0].offset, by_time[0].found), (0, true));
    let future = client
        .list_offsets("live", vec![0], OffsetSpec::Timestamp, ts + 3_600_000)
        .await
        .unwrap();
    assert_eq!((future[0].offset, future[0].found), (1, false));
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat` (in clock
/// ticks of 10 ms, Linux's fixed USER_HZ for /proc).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The fields after the parenthesised command name, from field 3 (state) on.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn a_waiting_long_poll_uses_no_cpu() {
    // A long poll at the end of a partition whose high watermark has moved since it was
    // created once re-read the log in a loop until its deadline (a cloned watch receiver that
    // never counted the current value as seen): every idle consumer, `cascade consume
    // --follow` and every follower kept a core busy. Measured: the server's CPU time while
    // three 700 ms long polls wait, against the wall time they take.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let pid = node.child.as_ref().expect("running").id();
    let client = node.client().await;
    client
        .create_topic("idle", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    for i in 0..3 {
        let record = cascade_client::proto::Record {
            value: Some(Bytes::from(format!("event-{i}"))),
            ..Default::default()
        };
        client
            .produce_records("idle", Some(0), vec![record], Acks::All)
            .await
            .unwrap();
    }
    let (cpu_before, started) = (cpu_time(pid), Instant::now());
    for _ in 0..3 {
        let f = client
            .fetch("idle", 0, 3, 1 << 20, Duration::from_millis(700))
            .await
            .unwrap();
        assert!(f.batches.is_empty() && f.next_offset == 3, "{f:?}");
    }
    let (cpu, wall) = (cpu_time(pid) - cpu_before, started.elapsed());
    // A busy loop costs about one core for the whole wait; sleeping costs next to nothing. A
    // quarter of the wall time leaves room for the server's heartbeats and a loaded machine.
    assert!(
        cpu < wall / 4,
        "the server used {cpu:?} of CPU during {wall:?} of long polls that found nothing"
    );
}

// Multi-threaded so the client's connection keeps being served while `stop` blocks this
// thread waiting for the server to exit (the server drains connections before stopping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_topics_events_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    let configs = BTreeMap::from([("retention.ms".to_string(), "123456789".to_string())]);
    client.create_topic("keep", 2, 1, configs).await.unwrap();
    let producer = Producer::new(client.clone(), "keep", ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..200 {
        producer
            .send(ProducerRecord {
                value: Some(Bytes::from(format!("v{i}"))),
                partition: Some(i % 2),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(node.stop(), Some(0), "graceful stop exits 0");
    for p in 0..2 {
        assert!(
            dir.path()
                .join(format!("topics/keep/{p}/clean-shutdown"))
                .exists(),
            "SIGTERM closes logs cleanly"
        );
    }
    node.restart();
    let client = node.client().await;
    let t = client.describe_topic("keep").await.unwrap();
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.configs["retention.ms"], "123456789");
    for p in 0..2u32 {
        let recs = read_partition(&client, "keep", p).await;
        assert_eq!(recs.len(), 100);
        for (i, (_, v)) in recs.iter().enumerate() {
            assert_eq!(v, format!("v{}", i * 2 + p as usize).as_bytes());
        }
    }
    // Offsets continue where they were.
    let next = client
        .produce_records(
            "keep",
            Some(1),
            vec![cascade_client::proto::Record {
                value: Some(Bytes::from("after")),
                ..Default::default()
            }],
            Acks::All,
        )
        .await
        .unwrap();
    assert_eq!(next[0].base_offset, 100);
    // Deleting removes the data; re-creating starts empty.
    client.delete_topic("keep").await.unwrap();
    client
        .create_topic("keep", 1, 1, BTreeMap::new())
        .await
        .unwrap();
    assert!(read_partition(&client, "keep", 0).await.is_empty());
    // Health endpoints answer.
    let http = node.http.clone().unwrap();
    let body = http_get(&http, "/readyz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let metrics = http_get(&http, "/metrics").await;
    assert!(metrics.contains("cascade_requests_total"), "{metrics}");
    assert!(
        metrics.contains("cascade_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

/// A minimal HTTP/1.1 GET, returning the raw response.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_makes_a_retry_return_the_first_answer() {
    use cascade_client::proto::{PartitionRecords, ProduceRequest, Record};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("idem", 2, 1, BTreeMap::new())
        .await
        .unwrap();
    let request = |value: &str, key: &str| ProduceRequest {
        topic: "idem".into(),
        partitions: vec![PartitionRecords {
            partition: -1,
            batches: Bytes::new(),
            records: vec![Record {
                key: Some(Bytes::from("k")),
                value: Some(Bytes::from(value.to_string())),
                ..Default::default()
            }],
        }],
        acks: 0,
        timeout_ms: 0,
        idempotency_key: key.into(),
    };
    // Concurrent duplicates and a later retry: one write, one answer.
    let (a, b) = tokio::join!(
        client.produce(request("v1", "retry-1")),
        client.produce(request("v1", "retry-1"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let again = client.produce(request("v1", "retry-1")).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a, again);
    let p = a.results[0].partition;
    let end = client
        .list_offsets("idem", vec![p], OffsetSpec::Latest, 0)
        .await
        .unwrap()[0]
        .offset;
    assert_eq!(end, 1, "the retries wrote nothing");
    // The same key with another body is refused; another key writes.
    let err = client.produce(request("v2", "retry-1")).await.unwrap_err();
    assert_eq!(
        err.reason(),
        Some(cascade_client::proto::ErrorCode::InvalidRequest)
    );
    let other = client.produce(request("v1", "retry-2")).await.unwrap();
    assert_eq!(other.results[0].base_offset, 1);
    // Without a key, every request writes.
    client.produce(request("v1", "")).await.unwrap();
    client.produce(request("v1", "")).await.unwrap();
    let end = client
        .list_offsets("idem", vec![p], OffsetSpec::Latest, 0)
        .await
        .unwrap()[0]
        .offset;
    assert_eq!(end, 4);
}
