//! Server-side consumer instances (the `Consumers` service the REST gateway drives): state on
//! the broker, usable from any client connection, sharing partitions within a group, expiring
//! when idle, and refusing bad calls with specific reasons.

mod common;

use bytes::Bytes;
use cascade_client::proto::{self as pb, CreateConsumerRequest, ErrorCode};
use cascade_client::{Acks, Client};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

async fn produce(client: &Client, topic: &str, partition: u32, n: usize, tag: &str) {
    let records = (0..n)
        .map(|i| pb::Record {
            value: Some(Bytes::from(format!("{tag}-{partition}-{i}"))),
            ..Default::default()
        })
        .collect();
    client
        .produce_records(topic, Some(partition), records, Acks::All)
        .await
        .unwrap();
}

fn create(group: &str, name: &str, timeout_ms: u32) -> CreateConsumerRequest {
    CreateConsumerRequest {
        group_id: group.into(),
        name: name.into(),
        format: "binary".into(),
        auto_offset_reset: "earliest".into(),
        auto_commit: false,
        session_timeout_ms: timeout_ms,
    }
}

fn reason<T: std::fmt::Debug>(r: cascade_client::Result<T>) -> ErrorCode {
    r.unwrap_err().reason().expect("a reason")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_partitions_and_keep_state_on_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Two connections, as two gateway replicas would have.
    let gw1 = node.client().await;
    let gw2 = node.client().await;
    gw1.create_topic("ev", 2, 1, BTreeMap::new()).await.unwrap();
    for p in 0..2 {
        produce(&gw1, "ev", p, 25, "first").await;
    }
    let a = gw1.instance_create(create("g", "a", 10_000)).await.unwrap();
    assert_eq!(a.name, "a");
    gw1.instance_subscribe("g", "a", vec!["ev".into()])
        .await
        .unwrap();
    // Read through alternating connections: the position lives on the broker.
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 50 {
        assert!(
            Instant::now() < deadline,
            "only {} of 50 records",
            seen.len()
        );
        let gw = if seen.len() % 2 == 0 { &gw1 } else { &gw2 };
        for r in gw.instance_poll("g", "a", 1 << 20, 200).await.unwrap() {
            assert!(
                seen.insert((r.partition, r.offset)),
                "record returned twice"
            );
        }
    }
    let info = gw2.instance_get("g", "a").await.unwrap();
    assert_eq!(info.topics, ["ev"]);
    assert!(
        info.positions.iter().all(|p| p.offset == 25),
        "{:?}",
        info.positions
    );
    gw2.instance_commit("g", "a", vec![]).await.unwrap();
    let committed = gw1.fetch_offsets("g", vec![]).await.unwrap();
    assert_eq!(committed.len(), 2);
    assert!(committed.iter().all(|c| c.offset == 25));

    // A second instance: once `a` has released a partition (by polling), `b` owns it.
    gw2.instance_create(create("g", "b", 10_000)).await.unwrap();
    gw2.instance_subscribe("g", "b", vec!["ev".into()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the group never split the partitions"
        );
        gw1.instance_poll("g", "a", 1 << 20, 50).await.unwrap();
        gw2.instance_poll("g", "b", 1 << 20, 50).await.unwrap();
        let pa = gw1.instance_get("g", "a").await.unwrap().positions.len();
        let pb = gw2.instance_get("g", "b").await.unwrap().positions.len();
        if pa == 1 && pb == 1 {
            break;
        }
    }
    // New records are read exactly once between them; b started at the committed offset.
    for p in 0..2 {
        produce(&gw1, "ev", p, 10, "second").await;
    }
    let mut got: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 new records",
            got.len()
        );
        for name in ["a", "b"] {
            for r in gw1.instance_poll("g", name, 1 << 20, 100).await.unwrap() {
                let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                assert!(v.starts_with("second"), "{name} re-read {v}");
                assert!(
                    got.insert((r.partition, r.offset), v).is_none(),
                    "duplicate"
                );
            }
        }
    }

    // Seek: back to the beginning of an owned partition; a foreign partition is refused.
    let mine = gw1.instance_get("g", "a").await.unwrap().positions[0].clone();
    let other = 1 - mine.partition;
    let foreign = pb::TopicPartitions {
        topic: "ev".into(),
        partitions: vec![other],
    };
    assert_eq!(
        reason(
            gw1.instance_seek("g", "a", vec![], vec![foreign], vec![])
                .await
        ),
        ErrorCode::PartitionNotAssigned
    );
    let own = pb::TopicPartitions {
        topic: "ev".into(),
        partitions: vec![mine.partition],
    };
    let after = gw1
        .instance_seek("g", "a", vec![], vec![own], vec![])
        .await
        .unwrap();
    assert_eq!(after.positions[0].offset, 0);
    let again = gw1.instance_poll("g", "a", 1 << 20, 1000).await.unwrap();
    assert_eq!(again.first().map(|r| r.offset), Some(0));

    // Deleting `a` hands its partition to `b`.
    gw1.instance_delete("g", "a").await.unwrap();
    assert_eq!(
        reason(gw1.instance_get("g", "a").await),
        ErrorCode::UnknownConsumerInstance
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw2.instance_get("g", "b").await.unwrap().positions.len() < 2 {
        assert!(Instant::now() < deadline, "b never got a's partition");
        gw2.instance_poll("g", "b", 1 << 20, 50).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_expire_and_bad_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client().await;
    c.create_topic("t", 1, 1, BTreeMap::new()).await.unwrap();
    c.instance_create(create("g", "x", 1000)).await.unwrap();
    assert_eq!(
        reason(c.instance_create(create("g", "x", 1000)).await),
        ErrorCode::ConsumerInstanceExists
    );
    // Same name in another group is fine; a generated name is unique.
    c.instance_create(create("h", "x", 10_000)).await.unwrap();
    let anon = c.instance_create(create("h", "", 10_000)).await.unwrap();
    assert!(anon.name.starts_with("consumer-"));
    assert_eq!(
        reason(c.instance_get("g", "nobody").await),
        ErrorCode::UnknownConsumerInstance
    );
    assert_eq!(
        reason(c.instance_subscribe("g", "x", vec!["missing".into()]).await),
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        reason(c.instance_subscribe("g", "x", vec![]).await),
        ErrorCode::InvalidRequest
    );
    let mut bad = create("g", "y", 1000);
    bad.auto_offset_reset = "sideways".into();
    assert_eq!(
        reason(c.instance_create(bad).await),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        reason(c.instance_create(create("g", "a/b", 1000)).await),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        reason(c.instance_create(create("g", "z", 10)).await),
        ErrorCode::InvalidRequest,
        "session timeout below the minimum"
    );
    c.instance_subscribe("g", "x", vec!["t".into()])
        .await
        .unwrap();
    // Idle past its 1 s session timeout (every call, `get` included, is a heartbeat, so
    // the test stays silent): removed by housekeeping, and its group member with it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        reason(c.instance_get("g", "x").await),
        ErrorCode::UnknownConsumerInstance
    );
    let group = c.describe_group("g").await;
    assert!(group.is_err() || group.unwrap().members.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_is_given_up_without_breaking_an_auto_commit_instance() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let c = node.client().await;
    c.create_topic("gone", 2, 1, BTreeMap::new()).await.unwrap();
    c.create_topic("stay", 1, 1, BTreeMap::new()).await.unwrap();
    produce(&c, "gone", 0, 1, "g").await;
    produce(&c, "stay", 0, 1, "s").await;
    let mut req = create("g", "x", 10_000);
    req.auto_commit = true;
    c.instance_create(req).await.unwrap();
    c.instance_subscribe("g", "x", vec!["gone".into(), "stay".into()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read = 0;
    while read < 2 {
        assert!(Instant::now() < deadline, "records never arrived");
        read += c.instance_poll("g", "x", 1 << 20, 100).await.unwrap().len();
    }
    c.delete_topic("gone").await.unwrap();
    // Giving up the deleted topic's partitions commits nothing for them (they cannot be
    // committed), and every call keeps working.
    let inst = c.instance_get("g", "x").await.unwrap();
    assert_eq!(
        inst.positions
            .iter()
            .map(|p| (p.topic.as_str(), p.partition))
            .collect::<Vec<_>>(),
        vec![("stay", 0)]
    );
    assert!(
        c.instance_poll("g", "x", 1 << 20, 0)
            .await
            .unwrap()
            .is_empty()
    );
    c.instance_unsubscribe("g", "x").await.unwrap();
    c.instance_delete("g", "x").await.unwrap();
}
