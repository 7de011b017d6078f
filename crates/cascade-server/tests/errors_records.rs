//! Bad produce, fetch and list-offsets requests against a real `cascade server`: unknown topics
//! and partitions, offsets past the end (a long poll fails at once), oversized records, malformed
//! batches and requests, a bad partition entry failing the whole request, and the
//! `--max-request-bytes` limit.
//!
//! Like every `errors_*.rs` file: each refused request gets a specific error (gRPC code and,
//! where the server sets one, the ErrorInfo reason, or the per-partition error code), changes
//! nothing (topics, offsets, configs, groups are compared before and after), and the node keeps
//! running and serving normal traffic afterwards.

mod common;

use bytes::Bytes;
use cascade_client::proto::{self, ErrorCode, OffsetSpec};
use cascade_client::{Acks, Producer, ProducerConfig, ProducerRecord};
use cascade_record::{BatchBuilder, Record};
use common::Node;
use common::errors::*;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_errors_are_specific_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_with(dir.path(), &["--max-request-bytes", "65536"]);
    let client = node.client().await;
    // __consumer_offsets is created on the first group request.
    let _ = client.describe_group("warmup").await;
    client
        .create_topic("data", 3, 1, BTreeMap::new())
        .await
        .unwrap();
    client
        .create_topic(
            "small",
            1,
            1,
            BTreeMap::from([("max.message.bytes".into(), "1024".into())]),
        )
        .await
        .unwrap();
    for p in 0..3 {
        client
            .produce_records(
                "data",
                Some(p),
                vec![record(None, b"a"), record(None, b"b")],
                Acks::All,
            )
            .await
            .unwrap();
    }
    let before = state(&client).await;
    let hw = high_watermark(&client, "data", 0).await;
    assert_eq!(hw, 2);

    // Unknown topic and partition, on every records call.
    expect_server(
        client
            .produce_records("nope", None, vec![record(Some("k"), b"v")], Acks::All)
            .await,
        Code::NotFound,
        ErrorCode::UnknownTopic,
        "produce to an unknown topic",
    );
    expect_server(
        client
            .produce_records("data", Some(3), vec![record(None, b"v")], Acks::All)
            .await,
        Code::NotFound,
        ErrorCode::UnknownPartition,
        "produce to partition 3 of 3",
    );
    let mut b = BatchBuilder::new();
    b.push(Record {
        timestamp: 1_700_000_000_000,
        key: Some(b"k"),
        value: Some(b"a valid batch"),
        headers: &[],
    });
    let valid = b.finish();
    expect_server(
        client
            .produce_batches("nope", 0, Bytes::from(valid.clone()), Acks::All)
            .await,
        Code::NotFound,
        ErrorCode::UnknownTopic,
        "batches to an unknown topic",
    );
    expect_server(
        client
            .produce_batches("data", 7, Bytes::from(valid.clone()), Acks::All)
            .await,
        Code::NotFound,
        ErrorCode::UnknownPartition,
        "batches to partition 7",
    );
    expect_partition(
        client.fetch("nope", 0, 0, 1 << 20, Duration::ZERO).await,
        ErrorCode::UnknownTopic,
        "fetch an unknown topic",
    );
    expect_partition(
        client.fetch("data", 3, 0, 1 << 20, Duration::ZERO).await,
        ErrorCode::UnknownPartition,
        "fetch partition 3 of 3",
    );
    expect_server(
        client
            .list_offsets("nope", vec![], OffsetSpec::Latest, 0)
            .await,
        Code::NotFound,
        ErrorCode::UnknownTopic,
        "list offsets of an unknown topic",
    );
    expect_server(
        client
            .list_offsets("data", vec![0, 9], OffsetSpec::Latest, 0)
            .await,
        Code::NotFound,
        ErrorCode::UnknownPartition,
        "list offsets of partition 9",
    );
    let sub = |topic: &str, partition: u32, offset: u64| {
        let client = client.clone();
        let topic = topic.to_string();
        async move {
            client
                .subscribe(
                    &topic,
                    partition,
                    proto::subscribe_request::Position::Offset(offset),
                )
                .await
        }
    };
    expect_server(
        sub("nope", 0, 0).await,
        Code::NotFound,
        ErrorCode::UnknownTopic,
        "subscribe to an unknown topic",
    );
    expect_server(
        sub("data", 5, 0).await,
        Code::NotFound,
        ErrorCode::UnknownPartition,
        "subscribe to partition 5",
    );

    // Offsets past the end. The end itself is valid (nothing to read yet).
    let at_end = client
        .fetch("data", 0, hw, 1 << 20, Duration::ZERO)
        .await
        .expect("fetch at the end");
    assert!(at_end.batches.is_empty());
    assert_eq!(at_end.next_offset, hw);
    for offset in [hw + 1, 1_000_000, u64::MAX] {
        expect_partition(
            client
                .fetch("data", 0, offset, 1 << 20, Duration::ZERO)
                .await,
            ErrorCode::OffsetOutOfRange,
            &format!("fetch at {offset}"),
        );
        expect_server(
            sub("data", 0, offset).await,
            Code::OutOfRange,
            ErrorCode::OffsetOutOfRange,
            &format!("subscribe at {offset}"),
        );
    }
    // A long poll on a bad offset fails at once instead of waiting.
    expect_partition(
        client
            .fetch("data", 0, hw + 1, 1 << 20, Duration::from_secs(60))
            .await,
        ErrorCode::OffsetOutOfRange,
        "long-poll fetch past the end",
    );
    // A fetch naming a newer leader epoch than this node leads at (it would be a replaced
    // leader that has not heard yet) is refused as NOT_LEADER; the current epoch or an older
    // one is served.
    let epoch_fetch = |epoch: i32| {
        let client = client.clone();
        async move {
            client
                .records_for("data", 0)
                .fetch(proto::FetchRequest {
                    partitions: vec![proto::FetchPartition {
                        topic: "data".into(),
                        partition: 0,
                        position: Some(proto::fetch_partition::Position::Offset(0)),
                        max_bytes: 0,
                        current_leader_epoch: Some(epoch),
                    }],
                    max_wait_ms: 0,
                    min_bytes: 1,
                    max_bytes: 0,
                })
                .await
                .expect("fetch answered")
                .into_inner()
                .partitions
                .remove(0)
        }
    };
    let served = epoch_fetch(0).await;
    assert!(served.error.is_none(), "{served:?}");
    assert!(!served.batches.is_empty());
    assert_eq!(served.leader_epoch, 0);
    let stale = epoch_fetch(3).await;
    let e = stale.error.expect("refused");
    assert_eq!(e.code, ErrorCode::NotLeader as i32, "{e:?}");
    assert!(e.message.contains("epoch 3"), "{}", e.message);
    assert!(stale.batches.is_empty());

    // A 4 KiB record in a topic with max.message.bytes=1024, typed or client-encoded.
    let big = vec![b'x'; 4096];
    expect_partition(
        client
            .produce_records("small", Some(0), vec![record(None, &big)], Acks::All)
            .await,
        ErrorCode::RecordTooLarge,
        "typed record over max.message.bytes",
    );
    expect_partition(
        client
            .produce_records("small", None, vec![record(Some("k"), &big)], Acks::All)
            .await,
        ErrorCode::RecordTooLarge,
        "keyed record over max.message.bytes",
    );
    let producer = Producer::new(client.clone(), "small", ProducerConfig::default())
        .await
        .unwrap();
    let e = producer
        .send(ProducerRecord::value(big.clone()))
        .await
        .expect_err("client-encoded batch over max.message.bytes");
    assert_eq!(e.reason(), Some(ErrorCode::RecordTooLarge), "{e}");
    assert_eq!(
        high_watermark(&client, "small", 0).await,
        0,
        "nothing appended"
    );

    // Malformed batches on the fast path.
    let mut bad_crc = valid.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let mut bad_crc_field = valid.clone();
    bad_crc_field[cascade_record::header::CRC_START] ^= 0x01;
    let mut valid_then_garbage = valid.clone();
    valid_then_garbage.extend_from_slice(&[0xab; 80]);
    let truncated = valid[..valid.len() - 3].to_vec();
    for (what, bytes) in [
        ("garbage", vec![0xab; 100]),
        ("a few bytes", b"hello".to_vec()),
        ("a payload byte flipped", bad_crc),
        ("the crc flipped", bad_crc_field),
        ("a valid batch then garbage", valid_then_garbage),
        ("a truncated batch", truncated),
    ] {
        expect_partition(
            client
                .produce_batches("data", 0, Bytes::from(bytes), Acks::All)
                .await,
            ErrorCode::InvalidRecord,
            what,
        );
    }
    assert_eq!(
        high_watermark(&client, "data", 0).await,
        hw,
        "nothing appended"
    );

    // Malformed requests.
    let raw = |partitions: Vec<proto::PartitionRecords>, topic: &str, acks: i32| {
        let client = client.clone();
        let topic = topic.to_string();
        async move {
            client
                .records_for(&topic, 0)
                .produce(proto::ProduceRequest {
                    topic,
                    partitions,
                    acks,
                    timeout_ms: 0,
                    idempotency_key: String::new(),
                })
                .await
        }
    };
    let typed = |partition: i32| proto::PartitionRecords {
        partition,
        batches: Bytes::new(),
        records: vec![record(None, b"v")],
    };
    assert_eq!(
        status(raw(vec![], "data", 0).await),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "empty produce request"
    );
    assert_eq!(
        status(
            raw(
                vec![proto::PartitionRecords {
                    partition: 0,
                    batches: Bytes::new(),
                    records: vec![],
                }],
                "data",
                0
            )
            .await
        ),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "a partition entry with nothing in it"
    );
    assert_eq!(
        status(
            raw(
                vec![proto::PartitionRecords {
                    partition: -1,
                    batches: Bytes::from(valid.clone()),
                    records: vec![],
                }],
                "data",
                0
            )
            .await
        ),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "partition -1 with raw batches"
    );
    assert_eq!(
        status(raw(vec![typed(-2)], "data", 0).await),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "partition -2"
    );
    // One good and one bad partition entry: the request fails as a whole.
    assert_eq!(
        status(raw(vec![typed(0), typed(9)], "data", 0).await),
        (Code::NotFound, Some(ErrorCode::UnknownPartition)),
        "a good and a bad partition"
    );
    assert_eq!(
        status(raw(vec![typed(0)], "data", 7).await),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "unknown acks"
    );
    assert_eq!(
        status(raw(vec![typed(0)], "__consumer_offsets", 0).await),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "produce to the internal topic"
    );
    assert_eq!(
        status(
            raw(
                vec![proto::PartitionRecords {
                    partition: 0,
                    batches: Bytes::from(valid.clone()),
                    records: vec![],
                }],
                "__consumer_offsets",
                0
            )
            .await
        ),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "batches to the internal topic"
    );
    assert_eq!(
        status(
            client
                .records_for("data", 0)
                .fetch(proto::FetchRequest {
                    partitions: vec![],
                    max_wait_ms: 0,
                    min_bytes: 1,
                    max_bytes: 0,
                })
                .await
        ),
        (Code::InvalidArgument, Some(ErrorCode::InvalidRequest)),
        "fetch of no partitions"
    );

    // A request larger than --max-request-bytes (64 KiB) is refused before it is decoded.
    let e = client
        .produce_records(
            "data",
            Some(0),
            vec![record(None, &vec![b'y'; 100_000])],
            Acks::All,
        )
        .await
        .expect_err("a 100 kB request with a 64 KiB limit");
    let (code, _) = server(&e);
    assert!(
        matches!(code, Code::OutOfRange | Code::ResourceExhausted),
        "{code:?}: {e}"
    );
    assert!(e.to_string().contains("65536"), "names the limit: {e}");
    // Just under the limit is fine on the same connection (checked on "small"'s neighbour
    // topic "data" at the end, through assert_alive).

    assert_eq!(
        state(&client).await,
        before,
        "refused requests change nothing"
    );
    // A record within the limit does go into "small": the limit is per batch, not blanket.
    client
        .produce_records("small", Some(0), vec![record(None, b"fits")], Acks::All)
        .await
        .expect("a small record fits");
    assert_eq!(high_watermark(&client, "small", 0).await, 1);
    let near_limit = client
        .produce_records(
            "data",
            Some(1),
            vec![record(None, &vec![b'z'; 60_000])],
            Acks::All,
        )
        .await
        .expect("a request just under --max-request-bytes");
    assert_eq!(near_limit[0].base_offset, 2);
    assert_alive(&mut node, &client, "data").await;
}
