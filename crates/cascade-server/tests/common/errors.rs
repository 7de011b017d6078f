//! Helpers shared by the bad-input tests (`errors_*.rs`): reading the error a request got,
//! snapshotting everything a refused request could have changed, and checking that the node
//! still serves normal traffic afterwards.

use super::Node;
use bytes::Bytes;
use cascade_client::proto::{self, ErrorCode, OffsetSpec};
use cascade_client::{Acks, Client, ClientError, PartitionConsumer};
use std::time::{Duration, Instant};
use tonic::Code;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// The gRPC code and reason of a request-level failure.
pub fn server(e: &ClientError) -> (Code, Option<ErrorCode>) {
    match e {
        ClientError::Server { code, reason, .. } => (*code, *reason),
        other => panic!("expected a request-level error, got {other:?}"),
    }
}

/// The reason of a per-partition failure.
pub fn partition(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Partition { reason, .. } => *reason,
        other => panic!("expected a per-partition error, got {other:?}"),
    }
}

#[track_caller]
pub fn expect_server<T: std::fmt::Debug>(
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
pub fn expect_partition<T: std::fmt::Debug>(
    r: Result<T, ClientError>,
    reason: ErrorCode,
    what: &str,
) {
    let e = r.expect_err(what);
    assert_eq!(partition(&e), reason, "{what}: {e}");
}

pub fn status(r: Result<impl std::fmt::Debug, tonic::Status>) -> (Code, Option<ErrorCode>) {
    let s = r.expect_err("refused");
    (s.code(), cascade_proto::error_code_of(&s))
}

/// Everything a refused request could have changed: topics with their ids, partitions,
/// offsets, sizes and configs (internal topic included), and the groups.
#[derive(Debug, PartialEq)]
pub struct State {
    pub topics: Vec<proto::TopicDescription>,
    pub groups: Vec<proto::GroupSummary>,
}

pub async fn state(client: &Client) -> State {
    State {
        topics: client.list_topics(true).await.expect("list topics"),
        groups: client.list_groups().await.expect("list groups"),
    }
}

pub fn record(key: Option<&str>, value: &[u8]) -> proto::Record {
    proto::Record {
        key: key.map(|k| Bytes::from(k.to_string())),
        value: Some(Bytes::copy_from_slice(value)),
        headers: vec![],
        timestamp_ms: 0,
    }
}

pub async fn high_watermark(client: &Client, topic: &str, p: u32) -> u64 {
    client
        .list_offsets(topic, vec![p], OffsetSpec::Latest, 0)
        .await
        .expect("list offsets")[0]
        .offset
}

/// The process is still running and a normal produce and consume on `topic` still work.
pub async fn assert_alive(node: &mut Node, client: &Client, topic: &str) {
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
