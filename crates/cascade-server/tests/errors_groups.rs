//! Bad consumer-group requests against a real `cascade server`: heartbeats of unknown members,
//! bad joins (no topics, session timeouts, assignor, topic name, group id), bad commits and group
//! administration; afterwards the group machinery itself still works.
//!
//! Like every `errors_*.rs` file: each refused request gets a specific error (gRPC code and,
//! where the server sets one, the ErrorInfo reason, or the per-partition error code), changes
//! nothing (topics, offsets, configs, groups are compared before and after), and the node keeps
//! running and serving normal traffic afterwards.

mod common;

use cascade_client::proto::{self, ErrorCode, OffsetSpec};
use common::Node;
use common::errors::*;
use std::collections::BTreeMap;
use tonic::Code;

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
    // __consumer_offsets is created on the first group request.
    let _ = client.describe_group("warmup").await;
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
