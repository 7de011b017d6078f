//! Bad topic administration against a real `cascade server`: unknown topics, bad and reserved
//! names, duplicates, partition counts and replication factors, configs (a request with one bad
//! entry applies none), shrinking partitions, and the internal topic.
//!
//! Like every `errors_*.rs` file: each refused request gets a specific error (gRPC code and,
//! where the server sets one, the ErrorInfo reason, or the per-partition error code), changes
//! nothing (topics, offsets, configs, groups are compared before and after), and the node keeps
//! running and serving normal traffic afterwards.

mod common;

use cascade_client::Acks;
use cascade_client::proto::{self, ErrorCode};
use common::Node;
use common::errors::*;
use std::collections::BTreeMap;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_are_specific_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    // __consumer_offsets is created on the first group request.
    let _ = client.describe_group("warmup").await;
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
