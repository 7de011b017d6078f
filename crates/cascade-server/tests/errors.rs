//! Bad input against a real `cascade server`: every refused request gets a specific error (gRPC
//! code and, where the server sets one, the ErrorInfo reason, or the per-partition error
//! code), changes nothing (topics, offsets, configs, groups are compared before and after), and
//! the node keeps running and serving normal traffic afterwards.

mod common;

use bytes::Bytes;
use cascade_client::proto::{self, ErrorCode, OffsetSpec};
use cascade_client::{
    Acks, Client, ClientError, PartitionConsumer, Producer, ProducerConfig, ProducerRecord,
};
use cascade_record::{BatchBuilder, Record};
use common::Node;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

/// The gRPC code and reason of a request-level failure.
fn server(e: &ClientError) -> (Code, Option<ErrorCode>) {
    match e {
        ClientError::Server { code, reason, .. } => (*code, *reason),
        other => panic!("expected a request-level error, got {other:?}"),
    }
}

/// The reason of a per-partition failure.
fn partition(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Partition { reason, .. } => *reason,
        other => panic!("expected a per-partition error, got {other:?}"),
    }
}

#[track_caller]
fn expect_server<T: std::fmt::Debug>(
    r: Result<T, ClientError>,
    code: Code,
    reason: ErrorCode,
    what: &str,
) {
    let e = r.expect_err(what);
    assert_eq!(server(&e), (code, Some(reason)), "{what}: {e}");
    assert!(!e.to_string().is_empty(), "{what}: an explanation");
}

#[track_caller]
fn expect_partition<T: std::fmt::Debug>(r: Result<T, ClientError>, reason: ErrorCode, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(partition(&e), reason, "{what}: {e}");
}

fn status(r: Result<impl std::fmt::Debug, tonic::Status>) -> (Code, Option<ErrorCode>) {
    let s = r.expect_err("refused");
    (s.code(), cascade_proto::error_code_of(&s))
}

/// Everything a refused request could have changed: topics with their ids, partitions,
/// offsets, sizes and configs (internal topic included), and the groups.
#[derive(Debug, PartialEq)]
struct State {
    topics: Vec<proto::TopicDescription>,
    groups: Vec<proto::GroupSummary>,
}

async fn state(client: &Client) -> State {
    State {
        topics: client.list_topics(true).await.expect("list topics"),
        groups: client.list_groups().await.expect("list groups"),
    }
}

fn record(key: Option<&str>, value: &[u8]) -> proto::Record {
    proto::Record {
        key: key.map(|k| Bytes::from(k.to_string())),
        value: Some(Bytes::copy_from_slice(value)),
        headers: vec![],
        timestamp_ms: 0,
    }
}

async fn high_watermark(client: &Client, topic: &str, p: u32) -> u64 {
    client
        .list_offsets(topic, vec![p], OffsetSpec::Latest, 0)
        .await
        .expect("list offsets")[0]
        .offset
}

/// The process is still running and a normal produce and consume on `topic` still work.
async fn assert_alive(node: &mut Node, client: &Client, topic: &str) {
    let child = node.child.as_mut().expect("node started");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the server process died"
    );
    let value = format!("alive-{}", std::process::id());
    let at = client
        .produce_records(
            topic,
            Some(0),
            vec![record(None, value.as_bytes())],
            Acks::All,
        )
        .await
        .expect("produce after the errors")[0];
    let mut c = PartitionConsumer::new(client.clone(), topic, 0, at.base_offset);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let recs = c.poll(Duration::from_millis(200)).await.expect("poll");
        if let Some(r) = recs.first() {
            assert_eq!(r.offset, at.base_offset);
            assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record never became readable"
        );
    }
    let child = node.child.as_mut().expect("node started");
    assert!(child.try_wait().expect("try_wait").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_are_specific_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("good", 2, 1, BTreeMap::new())
        .await
        .unwrap();
    client
        .produce_records("good", Some(1), vec![record(None, b"x")], Acks::All)
        .await
        .unwrap();
    let before = state(&client).await;

    // Unknown topics.
    for (what, r) in [
        ("describe", client.describe_topic("nope").await.map(|_| ())),
        ("delete", client.delete_topic("nope").await),
        (
            "create partitions",
            client.create_partitions("nope", 3).await.map(|_| ()),
        ),
        (
            "alter config",
            client
                .alter_topic_config(
                    "nope",
                    BTreeMap::from([("retention.ms".into(), "1000".into())]),
                    vec![],
                )
                .await
                .map(|_| ()),
        ),
    ] {
        expect_server(r, Code::NotFound, ErrorCode::UnknownTopic, what);
    }

    // Bad names, including the reserved "__" prefix of internal topics.
    let long = "x".repeat(250);
    for name in [
        "",
        long.as_str(),
        "a b",
        "a/b",
        "../etc",
        "ü",
        "tab\t",
        ".",
        "..",
        "__mine",
        "__consumer_offsets",
    ] {
        expect_server(
            client.create_topic(name, 1, 1, BTreeMap::new()).await,
            Code::InvalidArgument,
            ErrorCode::InvalidTopicName,
            &format!("create {name:?}"),
        );
    }
    // 249 characters is the longest name allowed (checked with validate_only: creates nothing).
    let ok = client
        .admin()
        .create_topic(proto::CreateTopicRequest {
            name: "y".repeat(249),
            partitions: 1,
            replication_factor: 1,
            configs: Default::default(),
            validate_only: true,
        })
        .await
        .expect("a 249-character name is valid")
        .into_inner();
    assert_eq!(ok.name.len(), 249);

    // Duplicate (with different settings: the existing topic is untouched).
    expect_server(
        client.create_topic("good", 5, 1, BTreeMap::new()).await,
        Code::AlreadyExists,
        ErrorCode::TopicAlreadyExists,
        "duplicate",
    );
    // Partition counts and replication factors.
    for n in [0, 10_001] {
        expect_server(
            client.create_topic("fresh", n, 1, BTreeMap::new()).await,
            Code::InvalidArgument,
            ErrorCode::InvalidPartitions,
            &format!("{n} partitions"),
        );
    }
    for rf in [0, 2] {
        expect_server(
            client.create_topic("fresh", 1, rf, BTreeMap::new()).await,
            Code::InvalidArgument,
            ErrorCode::InvalidReplicationFactor,
            &format!("replication factor {rf} on one node"),
        );
    }
    // Configs.
    for (k, v) in [
        ("retention.mss", "1000"),
        ("no.such.key", "1"),
        ("retention.ms", "soon"),
        ("retention.ms", "-2"),
        ("segment.bytes", "10"),
        ("max.message.bytes", "1"),
        ("flush", "sometimes"),
        ("min.insync.replicas", "2"),
    ] {
        let cfg = BTreeMap::from([(k.to_string(), v.to_string())]);
        expect_server(
            client.create_topic("fresh", 1, 1, cfg.clone()).await,
            Code::InvalidArgument,
            ErrorCode::InvalidConfig,
            &format!("create with {k}={v}"),
        );
        expect_server(
            client.alter_topic_config("good", cfg, vec![]).await,
            Code::InvalidArgument,
            ErrorCode::InvalidConfig,
            &format!("alter with {k}={v}"),
        );
    }
    expect_server(
        client
            .alter_topic_config("good", BTreeMap::new(), vec!["no.such.key".into()])
            .await,
        Code::InvalidArgument,
        ErrorCode::InvalidConfig,
        "reset of an unknown key",
    );
    expect_server(
        client
            .alter_topic_config("good", BTreeMap::new(), vec![])
            .await,
        Code::InvalidArgument,
        ErrorCode::InvalidRequest,
        "alter with nothing to change",
    );
    // One good and one bad entry: the good one is not applied either.
    expect_server(
        client
            .alter_topic_config(
                "good",
                BTreeMap::from([
                    ("retention.ms".into(), "1000".into()),
                    ("segment.bytes".into(), "1".into()),
                ]),
                vec![],
            )
            .await,
        Code::InvalidArgument,
        ErrorCode::InvalidConfig,
        "alter with one bad entry",
    );
    // Partitions only grow.
    for total in [1, 2] {
        expect_server(
            client.create_partitions("good", total).await,
            Code::InvalidArgument,
            ErrorCode::InvalidPartitions,
            &format!("{total} partitions for a topic with 2"),
        );
    }
    // The internal topic can be neither deleted nor grown.
    expect_server(
        client.delete_topic("__consumer_offsets").await,
        Code::InvalidArgument,
        ErrorCode::InvalidRequest,
        "delete the internal topic",
    );
    expect_server(
        client.create_partitions("__consumer_offsets", 10).await,
        Code::InvalidArgument,
        ErrorCode::InvalidRequest,
        "grow the internal topic",
    );

    assert_eq!(
        state(&client).await,
        before,
        "refused requests change nothing"
    );
    expect_server(
        client.describe_topic("fresh").await,
        Code::NotFound,
        ErrorCode::UnknownTopic,
        "nothing named fresh was created",
    );
    assert_alive(&mut node, &client, "good").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_errors_are_specific_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_with(dir.path(), &["--max-request-bytes", "65536"]);
    let client = node.client().await;
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

fn hb(group: &str, member: &str, epoch: i32, topics: &[&str]) -> proto::HeartbeatRequest {
    proto::HeartbeatRequest {
        group_id: group.into(),
        member_id: member.into(),
        member_epoch: epoch,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        assignor: String::new(),
        session_timeout_ms: 10_000,
        client_id: "errors-test".into(),
    }
}

fn commit(topic: &str, partition: u32, offset: u64) -> Vec<proto::OffsetCommit> {
    vec![proto::OffsetCommit {
        topic: topic.into(),
        partition,
        offset,
        metadata: String::new(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_errors_are_specific_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    client
        .create_topic("events", 2, 1, BTreeMap::new())
        .await
        .unwrap();
    let before = state(&client).await;
    assert!(before.groups.is_empty());

    expect_server(
        client.heartbeat(hb("g", "ghost", 3, &["events"])).await,
        Code::NotFound,
        ErrorCode::UnknownMember,
        "heartbeat of an unknown member",
    );
    expect_server(
        client.heartbeat(hb("g", "ghost", -1, &[])).await,
        Code::NotFound,
        ErrorCode::UnknownMember,
        "leave of an unknown member",
    );
    expect_server(
        client.heartbeat(hb("g", "", 0, &[])).await,
        Code::InvalidArgument,
        ErrorCode::InvalidRequest,
        "join without topics",
    );
    for ms in [1, 999, 300_001] {
        let mut req = hb("g", "", 0, &["events"]);
        req.session_timeout_ms = ms;
        expect_server(
            client.heartbeat(req).await,
            Code::InvalidArgument,
            ErrorCode::InvalidRequest,
            &format!("session timeout {ms} ms"),
        );
    }
    let mut req = hb("g", "", 0, &["events"]);
    req.assignor = "sticky".into();
    expect_server(
        client.heartbeat(req).await,
        Code::InvalidArgument,
        ErrorCode::InvalidRequest,
        "unknown assignor",
    );
    expect_server(
        client.heartbeat(hb("g", "", 0, &["a b"])).await,
        Code::InvalidArgument,
        ErrorCode::InvalidTopicName,
        "subscribing to a bad topic name",
    );
    expect_server(
        client.heartbeat(hb("", "", 0, &["events"])).await,
        Code::InvalidArgument,
        ErrorCode::InvalidGroupId,
        "empty group id",
    );
    expect_server(
        client
            .heartbeat(hb(&"g".repeat(256), "", 0, &["events"]))
            .await,
        Code::InvalidArgument,
        ErrorCode::InvalidGroupId,
        "group id too long",
    );

    // Commits.
    expect_server(
        client
            .commit_offsets("g", "ghost", 1, commit("events", 0, 1))
            .await,
        Code::NotFound,
        ErrorCode::UnknownMember,
        "commit by an unknown member",
    );
    expect_server(
        client
            .commit_offsets("g", "", -1, commit("nope", 0, 1))
            .await,
        Code::NotFound,
        ErrorCode::UnknownTopic,
        "commit for an unknown topic",
    );
    expect_server(
        client
            .commit_offsets("g", "", -1, commit("events", 2, 1))
            .await,
        Code::NotFound,
        ErrorCode::UnknownPartition,
        "commit for partition 2 of 2",
    );
    expect_server(
        client
            .commit_offsets("", "", -1, commit("events", 0, 1))
            .await,
        Code::InvalidArgument,
        ErrorCode::InvalidGroupId,
        "commit with an empty group id",
    );

    // Group administration.
    expect_server(
        client.describe_group("nope").await,
        Code::NotFound,
        ErrorCode::GroupNotFound,
        "describe an unknown group",
    );
    expect_server(
        client.delete_group("nope").await,
        Code::NotFound,
        ErrorCode::GroupNotFound,
        "delete an unknown group",
    );
    let reset = |topic: &str, partitions: Vec<u32>| proto::ResetOffsetsRequest {
        group_id: "g".into(),
        topic: topic.into(),
        partitions,
        spec: OffsetSpec::Earliest as i32,
        ..Default::default()
    };
    expect_server(
        client.reset_offsets(reset("nope", vec![])).await,
        Code::NotFound,
        ErrorCode::UnknownTopic,
        "reset offsets of an unknown topic",
    );
    expect_server(
        client.reset_offsets(reset("events", vec![0, 5])).await,
        Code::NotFound,
        ErrorCode::UnknownPartition,
        "reset offsets of partition 5",
    );
    let mut bad_spec = reset("events", vec![]);
    bad_spec.spec = 42;
    expect_server(
        client.reset_offsets(bad_spec).await,
        Code::InvalidArgument,
        ErrorCode::InvalidRequest,
        "reset offsets with an unknown spec",
    );

    let after = state(&client).await;
    assert_eq!(after, before, "no group was created by a refused request");
    assert!(
        client.fetch_offsets("g", vec![]).await.unwrap().is_empty(),
        "nothing committed"
    );

    // The group machinery itself still works.
    let joined = client
        .heartbeat(hb("g", "", 0, &["events"]))
        .await
        .expect("a good join");
    assert_eq!(joined.assignment.len(), 1);
    assert_eq!(joined.assignment[0].partitions, [0, 1]);
    client
        .commit_offsets(
            "g",
            &joined.member_id,
            joined.member_epoch,
            commit("events", 0, 0),
        )
        .await
        .expect("a good commit");
    client
        .heartbeat(hb("g", &joined.member_id, -1, &[]))
        .await
        .expect("a good leave");
    assert_alive(&mut node, &client, "events").await;
}
