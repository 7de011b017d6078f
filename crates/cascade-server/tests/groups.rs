//! Consumer groups through a real `cascade server`: assignment, handover on leave and on
//! eviction, committed offsets across a restart, fencing, offset resets, and the assignors.
//!
//! Members use short session timeouts (2 s) and poll with a short `max_wait`, so they
//! heartbeat whenever the coordinator says one is due. Every wait is a bounded loop that fails
//! the test at its deadline instead of hanging.

mod common;

use cascade_client::proto::{self, ErrorCode, OffsetSpec};
use cascade_client::{
    Client, ClientError, ConsumedRecord, GroupConfig, GroupConsumer, Producer, ProducerConfig,
    ProducerRecord,
};
use common::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// Members' session timeout.
const SESSION: Duration = Duration::from_secs(2);
/// How long each member's poll may wait for data.
const POLL: Duration = Duration::from_millis(100);

/// (partition, offset) of a record in the test's single topic.
type Key = (u32, u64);

fn config(group: &str, topics: &[&str]) -> GroupConfig {
    let mut c = GroupConfig::new(group, topics);
    c.session_timeout = SESSION;
    c.client_id = format!("groups-test-{group}");
    c
}

async fn create(client: &Client, topic: &str, partitions: u32) {
    client
        .create_topic(topic, partitions, 1, BTreeMap::new())
        .await
        .expect("create topic");
}

/// Produces `n` keyed events; returns where each landed and its value.
async fn produce_keyed(
    client: &Client,
    topic: &str,
    prefix: &str,
    n: usize,
) -> BTreeMap<Key, String> {
    let producer = Producer::new(client.clone(), topic, ProducerConfig::default())
        .await
        .expect("producer");
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let value = format!("{prefix}-value-{i}");
            let fut = producer.send(ProducerRecord::keyed(
                format!("{prefix}-key-{i}"),
                value.clone(),
            ));
            (value, fut)
        })
        .collect();
    producer.flush().await;
    let mut out = BTreeMap::new();
    for (value, fut) in sends {
        let at = fut.await.expect("produce");
        assert!(
            out.insert((at.partition, at.offset), value).is_none(),
            "two records acknowledged at one offset"
        );
    }
    let partitions: BTreeSet<u32> = out.keys().map(|k| k.0).collect();
    assert_eq!(
        partitions.len() as u32,
        producer.partitions(),
        "keys spread over every partition"
    );
    out
}

fn key(r: &ConsumedRecord) -> Key {
    (r.partition, r.offset)
}

fn value(r: &ConsumedRecord) -> String {
    String::from_utf8(r.value.as_ref().expect("value").to_vec()).expect("utf-8")
}

/// How often each (partition, offset) was consumed; checks every value against what was
/// produced there.
fn tally<'a>(
    records: impl IntoIterator<Item = &'a ConsumedRecord>,
    produced: &BTreeMap<Key, String>,
) -> BTreeMap<Key, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        let k = key(r);
        let want = produced
            .get(&k)
            .unwrap_or_else(|| panic!("consumed {k:?}, which was never produced"));
        assert_eq!(&value(r), want, "value at {k:?}");
        *counts.entry(k).or_insert(0) += 1;
    }
    counts
}

fn partitions_of(m: &GroupConsumer, topic: &str) -> BTreeSet<u32> {
    m.assignment()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| p)
        .collect()
}

/// True if every member owns something and together they own each of `0..n` exactly once.
fn disjoint_cover(members: &[GroupConsumer], topic: &str, n: u32) -> bool {
    let sets: Vec<BTreeSet<u32>> = members.iter().map(|m| partitions_of(m, topic)).collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<u32> = sets.iter().flatten().copied().collect();
    sets.iter().all(|s| !s.is_empty()) && total == n as usize && union == (0..n).collect()
}

/// Polls every member in turn (recording what each got, by index) until `done` holds.
async fn poll_until(
    members: &mut [GroupConsumer],
    got: &mut Vec<(usize, ConsumedRecord)>,
    what: &str,
    mut done: impl FnMut(&[GroupConsumer], &[(usize, ConsumedRecord)]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        for (i, m) in members.iter_mut().enumerate() {
            let recs = m.poll(POLL).await.expect("poll");
            got.extend(recs.into_iter().map(|r| (i, r)));
        }
        if done(members, got) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

/// Polls every member for `rounds` more rounds (to catch late duplicates).
async fn poll_rounds(
    members: &mut [GroupConsumer],
    got: &mut Vec<(usize, ConsumedRecord)>,
    rounds: usize,
) {
    for _ in 0..rounds {
        for (i, m) in members.iter_mut().enumerate() {
            let recs = m.poll(POLL).await.expect("poll");
            got.extend(recs.into_iter().map(|r| (i, r)));
        }
    }
}

/// Waits until the group is "stable" on the server while every member keeps polling.
async fn poll_until_stable(
    client: &Client,
    group: &str,
    members: &mut [GroupConsumer],
    got: &mut Vec<(usize, ConsumedRecord)>,
    topic: &str,
    n: u32,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        poll_until(
            members,
            got,
            "a disjoint assignment covering the topic",
            |m, _| disjoint_cover(m, topic, n),
        )
        .await;
        let d = client.describe_group(group).await.expect("describe group");
        if d.state == "stable" && d.members.len() == members.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} never became stable: {d:?}"
        );
    }
}

fn seen_all(got: &[(usize, ConsumedRecord)], produced: &BTreeMap<Key, String>) -> bool {
    let seen: BTreeSet<Key> = got.iter().map(|(_, r)| key(r)).collect();
    produced.keys().all(|k| seen.contains(k))
}

fn total_lag(d: &proto::GroupDescription) -> u64 {
    d.lag.iter().map(|l| l.lag).sum()
}

/// The gRPC status code of a server error.
fn grpc_code(e: &ClientError) -> tonic::Code {
    match e {
        ClientError::Server { code, .. } => *code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Committed offsets of `group` by (topic, partition).
async fn committed(client: &Client, group: &str) -> BTreeMap<(String, u32), u64> {
    client
        .fetch_offsets(group, vec![])
        .await
        .expect("fetch offsets")
        .into_iter()
        .map(|c| ((c.topic, c.partition), c.offset))
        .collect()
}

async fn high_watermarks(client: &Client, topic: &str) -> BTreeMap<u32, u64> {
    client
        .list_offsets(topic, vec![], OffsetSpec::Latest, 0)
        .await
        .expect("list offsets")
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_partitions_and_consume_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    create(&client, "split", 4).await;

    let a = GroupConsumer::join(client.clone(), config("g-split", &["split"]))
        .await
        .expect("join a");
    let b = GroupConsumer::join(client.clone(), config("g-split", &["split"]))
        .await
        .expect("join b");
    let mut members = vec![a, b];
    let mut got = Vec::new();
    poll_until_stable(&client, "g-split", &mut members, &mut got, "split", 4).await;
    assert!(got.is_empty(), "nothing was produced yet");
    for m in &members {
        assert_eq!(
            partitions_of(m, "split").len(),
            2,
            "range gives 2 of 4 each"
        );
    }

    let produced = produce_keyed(&client, "split", "split", 200).await;
    poll_until(&mut members, &mut got, "every event", |_, got| {
        seen_all(got, &produced)
    })
    .await;
    poll_rounds(&mut members, &mut got, 5).await;

    let counts = tally(got.iter().map(|(_, r)| r), &produced);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates without any failure: {dups:?}");
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        produced.keys().collect::<Vec<_>>(),
        "the union of what both consumed is exactly what was produced"
    );
    // Each member read only its own partitions, and both read something.
    for (i, m) in members.iter().enumerate() {
        let own = partitions_of(m, "split");
        let mine: Vec<&ConsumedRecord> = got
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, r)| r)
            .collect();
        assert!(!mine.is_empty(), "member {i} consumed nothing");
        assert!(
            mine.iter().all(|r| own.contains(&r.partition)),
            "member {i} read a partition it does not own"
        );
    }

    // Commit and check the lag the coordinator reports.
    for m in members.iter_mut() {
        m.commit().await.expect("commit");
    }
    let d = client.describe_group("g-split").await.expect("describe");
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.lag.len(), 4, "{d:?}");
    assert_eq!(total_lag(&d), 0, "{d:?}");
    let owners: BTreeSet<&str> = d.lag.iter().map(|l| l.owner.as_str()).collect();
    let ids: BTreeSet<&str> = members.iter().map(|m| m.member_id()).collect();
    assert_eq!(owners, ids, "each partition's owner is one of the members");
    for m in members {
        m.close().await.expect("close");
    }
    let d = client.describe_group("g-split").await.expect("describe");
    assert_eq!(d.state, "empty");
    assert!(d.members.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_hands_its_partitions_over_at_the_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    create(&client, "leave", 4).await;

    let a = GroupConsumer::join(client.clone(), config("g-leave", &["leave"]))
        .await
        .unwrap();
    let b = GroupConsumer::join(client.clone(), config("g-leave", &["leave"]))
        .await
        .unwrap();
    let mut members = vec![a, b];
    let mut got = Vec::new();
    poll_until_stable(&client, "g-leave", &mut members, &mut got, "leave", 4).await;

    let mut produced = produce_keyed(&client, "leave", "first", 120).await;
    poll_until(&mut members, &mut got, "the first events", |_, got| {
        seen_all(got, &produced)
    })
    .await;

    // A leaves: close() commits what it consumed, then hands its partitions over.
    let a = members.remove(0);
    let a_parts = partitions_of(&a, "leave");
    a.close().await.expect("close a");
    let after_close = committed(&client, "g-leave").await;
    let hw = high_watermarks(&client, "leave").await;
    for p in &a_parts {
        assert_eq!(
            after_close.get(&("leave".to_string(), *p)),
            Some(&hw[p]),
            "a committed everything it consumed from partition {p}"
        );
    }

    // More events, on every partition, while B takes over.
    let more = produce_keyed(&client, "leave", "second", 120).await;
    produced.extend(more.clone());
    let mut got_b = Vec::new();
    poll_until(
        &mut members,
        &mut got_b,
        "b owning every partition and reading everything",
        |m, got_b| partitions_of(&m[0], "leave").len() == 4 && seen_all(got_b, &more),
    )
    .await;
    poll_rounds(&mut members, &mut got_b, 5).await;
    got.extend(got_b.iter().map(|(_, r)| (1, r.clone())));

    let counts = tally(got.iter().map(|(_, r)| r), &produced);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "a clean leave commits everything, so nothing is read twice: {dups:?}"
    );
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        produced.keys().collect::<Vec<_>>(),
        "no event lost"
    );
    // On A's former partitions B started exactly at A's committed offsets.
    for p in &a_parts {
        let first = got_b
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.partition == *p)
            .map(|r| r.offset)
            .min()
            .expect("b read a's former partition");
        assert_eq!(
            first,
            after_close[&("leave".to_string(), *p)],
            "partition {p}"
        );
    }
    let d = client.describe_group("g-leave").await.unwrap();
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].member_id, members[0].member_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_dies_is_evicted_and_the_survivor_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    create(&client, "die", 4).await;

    let a = GroupConsumer::join(client.clone(), config("g-die", &["die"]))
        .await
        .unwrap();
    let b = GroupConsumer::join(client.clone(), config("g-die", &["die"]))
        .await
        .unwrap();
    let mut members = vec![a, b];
    let mut got = Vec::new();
    poll_until_stable(&client, "g-die", &mut members, &mut got, "die", 4).await;
    let a_id = members[0].member_id().to_string();
    let a_parts = partitions_of(&members[0], "die");

    let mut produced = produce_keyed(&client, "die", "first", 120).await;
    poll_until(&mut members, &mut got, "the first events", |_, got| {
        seen_all(got, &produced)
    })
    .await;

    // A second round; A's last poll returns records it never gets to commit.
    let second = produce_keyed(&client, "die", "second", 120).await;
    produced.extend(second.clone());
    let a_wants: BTreeSet<Key> = second
        .keys()
        .filter(|k| a_parts.contains(&k.0))
        .copied()
        .collect();
    let mut a_last: BTreeSet<Key> = BTreeSet::new();
    let mut a_got: BTreeSet<Key> = BTreeSet::new();
    let deadline = Instant::now() + DEADLINE;
    while !a_wants.is_subset(&a_got) {
        assert!(Instant::now() < deadline, "a never read its second round");
        let recs = members[0].poll(POLL).await.expect("poll a");
        if !recs.is_empty() {
            a_last = recs.iter().map(key).collect();
        }
        a_got.extend(recs.iter().map(key));
        got.extend(recs.into_iter().map(|r| (0, r)));
        let recs = members[1].poll(POLL).await.expect("poll b");
        got.extend(recs.into_iter().map(|r| (1, r)));
    }
    assert_eq!(members[0].assignment().len(), 2, "a kept its partitions");
    // A dies without leaving: no close, no more heartbeats.
    drop(members.remove(0));
    let at_death = committed(&client, "g-die").await;

    // From here on `members` holds only B; its records are filed under index 1.
    let mut later = Vec::new();
    let before: Vec<(usize, ConsumedRecord)> = got.clone();
    poll_until(
        &mut members,
        &mut later,
        "a's eviction and b owning every partition with everything read",
        |m, later| {
            let all: Vec<(usize, ConsumedRecord)> =
                before.iter().chain(later.iter()).cloned().collect();
            partitions_of(&m[0], "die").len() == 4 && seen_all(&all, &produced)
        },
    )
    .await;
    // New events after the takeover reach the survivor too.
    let third = produce_keyed(&client, "die", "third", 40).await;
    produced.extend(third.clone());
    poll_until(&mut members, &mut later, "the third round", |_, later| {
        seen_all(later, &third)
    })
    .await;
    poll_rounds(&mut members, &mut later, 5).await;
    got.extend(later.into_iter().map(|(_, r)| (1, r)));

    let counts = tally(got.iter().map(|(_, r)| r), &produced);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        produced.keys().collect::<Vec<_>>(),
        "every event consumed at least once"
    );
    // Only what A received but never committed is read twice, and only once more.
    let dups: BTreeMap<Key, usize> = counts.into_iter().filter(|(_, n)| *n > 1).collect();
    for (k, n) in &dups {
        assert_eq!(*n, 2, "{k:?} read {n} times");
        assert!(
            a_last.contains(k),
            "{k:?} was read twice but a had committed past it"
        );
        assert!(k.1 >= at_death[&("die".to_string(), k.0)]);
    }
    // The survivor resumed each of A's partitions at A's committed offset.
    for p in &a_parts {
        let first = got
            .iter()
            .filter(|(i, r)| *i == 1 && r.partition == *p)
            .map(|(_, r)| r.offset)
            .min()
            .expect("b read a's former partition");
        assert_eq!(first, at_death[&("die".to_string(), *p)], "partition {p}");
    }
    let d = client.describe_group("g-die").await.unwrap();
    assert_eq!(d.members.len(), 1, "{d:?}");
    assert_ne!(d.members[0].member_id, a_id, "the dead member was evicted");
    assert_eq!(d.members[0].member_id, members[0].member_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let client = node.client().await;
    create(&client, "durable", 4).await;
    let first = produce_keyed(&client, "durable", "first", 100).await;

    let mut members = vec![
        GroupConsumer::join(client.clone(), config("g-durable", &["durable"]))
            .await
            .unwrap(),
    ];
    let mut got = Vec::new();
    poll_until(&mut members, &mut got, "every event", |_, got| {
        seen_all(got, &first)
    })
    .await;
    let counts = tally(got.iter().map(|(_, r)| r), &first);
    assert!(counts.values().all(|n| *n == 1));
    members[0].commit().await.expect("commit");
    let d = client.describe_group("g-durable").await.unwrap();
    assert_eq!(total_lag(&d), 0, "{d:?}");
    members.pop().unwrap().close().await.expect("close");
    let hw_before = high_watermarks(&client, "durable").await;
    let before = committed(&client, "g-durable").await;
    assert_eq!(before.len(), 4);
    for (p, hw) in &hw_before {
        assert_eq!(before[&("durable".to_string(), *p)], *hw);
    }
    drop(client);

    assert_eq!(node.stop(), Some(0), "graceful stop");
    node.restart();
    let client = node.client().await;

    let groups = client.list_groups().await.expect("list groups");
    let g = groups
        .iter()
        .find(|g| g.group_id == "g-durable")
        .unwrap_or_else(|| panic!("group missing after restart: {groups:?}"));
    assert_eq!((g.state.as_str(), g.members), ("empty", 0));
    assert_eq!(committed(&client, "g-durable").await, before);
    let d = client.describe_group("g-durable").await.unwrap();
    assert_eq!(total_lag(&d), 0, "{d:?}");
    for l in &d.lag {
        assert_eq!(l.committed_offset, Some(l.high_watermark), "{l:?}");
    }

    // New events; a new member starts from the committed offsets, not from the beginning.
    let second = produce_keyed(&client, "durable", "second", 100).await;
    let mut members = vec![
        GroupConsumer::join(client.clone(), config("g-durable", &["durable"]))
            .await
            .unwrap(),
    ];
    let mut got = Vec::new();
    poll_until(&mut members, &mut got, "the new events", |_, got| {
        seen_all(got, &second)
    })
    .await;
    poll_rounds(&mut members, &mut got, 3).await;
    for (_, r) in &got {
        assert!(
            !first.contains_key(&key(r)),
            "re-read {:?}, committed before the restart",
            key(r)
        );
    }
    let counts = tally(got.iter().map(|(_, r)| r), &second);
    assert_eq!(counts.len(), second.len());
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    members[0].commit().await.unwrap();
    let d = client.describe_group("g-durable").await.unwrap();
    assert_eq!(total_lag(&d), 0, "{d:?}");
    let groups = client.list_groups().await.unwrap();
    assert!(groups.iter().any(|g| g.group_id == "g-durable"));
    members.pop().unwrap().close().await.unwrap();
}

fn hb(group: &str, member: &str, epoch: i32, topics: &[&str]) -> proto::HeartbeatRequest {
    proto::HeartbeatRequest {
        group_id: group.into(),
        member_id: member.into(),
        member_epoch: epoch,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        assignor: String::new(),
        session_timeout_ms: 30_000,
        client_id: "raw".into(),
    }
}

fn commit_all(topic: &str, offsets: &BTreeMap<u32, u64>) -> Vec<proto::OffsetCommit> {
    offsets
        .iter()
        .map(|(p, o)| proto::OffsetCommit {
            topic: topic.into(),
            partition: *p,
            offset: *o,
            metadata: String::new(),
        })
        .collect()
}

fn assigned(resp: &proto::HeartbeatResponse) -> BTreeSet<u32> {
    resp.assignment
        .iter()
        .flat_map(|t| t.partitions.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_fenced_and_offsets_reset_only_without_members() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    create(&client, "fence", 4).await;
    let produced = produce_keyed(&client, "fence", "fence", 80).await;
    let hw = high_watermarks(&client, "fence").await;
    let g = "g-fence";

    // A joins and owns everything; B joins; A's next heartbeat gives half away.
    let a1 = client.heartbeat(hb(g, "", 0, &["fence"])).await.unwrap();
    assert_eq!(assigned(&a1), (0..4).collect());
    let b1 = client.heartbeat(hb(g, "", 0, &["fence"])).await.unwrap();
    assert!(assigned(&b1).is_empty(), "a still owns every partition");
    let a2 = client
        .heartbeat(hb(g, &a1.member_id, a1.member_epoch, &[]))
        .await
        .unwrap();
    assert_eq!(assigned(&a2).len(), 2);
    assert!(a2.member_epoch > a1.member_epoch);
    assert!(a2.heartbeat_interval_ms > 0);

    // A commit with the old epoch is fenced and changes nothing.
    let e = client
        .commit_offsets(g, &a1.member_id, a1.member_epoch, commit_all("fence", &hw))
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&e), tonic::Code::FailedPrecondition, "{e}");
    assert_eq!(e.reason(), Some(ErrorCode::FencedMemberEpoch), "{e}");
    assert!(committed(&client, g).await.is_empty());

    // An unknown member is not found.
    let e = client
        .commit_offsets(
            g,
            "no-such-member",
            a2.member_epoch,
            commit_all("fence", &hw),
        )
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&e), tonic::Code::NotFound, "{e}");
    assert_eq!(e.reason(), Some(ErrorCode::UnknownMember), "{e}");
    // A member-less commit while the group has members is refused.
    let e = client
        .commit_offsets(g, "", -1, commit_all("fence", &hw))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(ErrorCode::GroupNotEmpty), "{e}");
    assert!(committed(&client, g).await.is_empty());

    // With the current epoch A commits its own partitions.
    let mine: BTreeMap<u32, u64> = assigned(&a2).iter().map(|p| (*p, hw[p])).collect();
    client
        .commit_offsets(
            g,
            &a1.member_id,
            a2.member_epoch,
            commit_all("fence", &mine),
        )
        .await
        .expect("commit with the current epoch");
    // A acknowledges its smaller assignment, which frees the other half for B.
    let a3 = client
        .heartbeat(hb(g, &a1.member_id, a2.member_epoch, &[]))
        .await
        .unwrap();
    assert_eq!(assigned(&a3), assigned(&a2));
    assert_eq!(
        a3.member_epoch, a2.member_epoch,
        "an unchanged assignment keeps the epoch"
    );
    let b2 = client
        .heartbeat(hb(g, &b1.member_id, b1.member_epoch, &[]))
        .await
        .unwrap();
    let theirs: BTreeMap<u32, u64> = assigned(&b2).iter().map(|p| (*p, hw[p])).collect();
    assert_eq!(theirs.len(), 2, "b got the other half");
    client
        .commit_offsets(
            g,
            &b1.member_id,
            b2.member_epoch,
            commit_all("fence", &theirs),
        )
        .await
        .expect("b commits");
    let all: BTreeMap<(String, u32), u64> = hw
        .iter()
        .map(|(p, o)| (("fence".to_string(), *p), *o))
        .collect();
    assert_eq!(committed(&client, g).await, all);

    // Resetting a group with members is refused, dry run or not, and changes nothing.
    for dry_run in [true, false] {
        let e = client
            .reset_offsets(proto::ResetOffsetsRequest {
                group_id: g.into(),
                topic: "fence".into(),
                spec: OffsetSpec::Earliest as i32,
                dry_run,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(grpc_code(&e), tonic::Code::FailedPrecondition, "{e}");
        assert_eq!(e.reason(), Some(ErrorCode::GroupNotEmpty), "{e}");
    }
    assert_eq!(committed(&client, g).await, all);

    // A heartbeat with a stale epoch fences A out of the group entirely.
    let e = client
        .heartbeat(hb(g, &a1.member_id, a1.member_epoch, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(ErrorCode::FencedMemberEpoch), "{e}");
    let e = client
        .commit_offsets(
            g,
            &a1.member_id,
            a2.member_epoch,
            commit_all("fence", &mine),
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(ErrorCode::UnknownMember), "{e}");

    // B leaves; now the group is empty and its offsets can be reset.
    let left = client
        .heartbeat(hb(g, &b1.member_id, -1, &[]))
        .await
        .unwrap();
    assert_eq!(left.member_epoch, -1);
    let d = client.describe_group(g).await.unwrap();
    assert_eq!(d.state, "empty", "{d:?}");
    let dry = client
        .reset_offsets(proto::ResetOffsetsRequest {
            group_id: g.into(),
            topic: "fence".into(),
            spec: OffsetSpec::Earliest as i32,
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("dry run");
    assert_eq!(dry.len(), 4);
    assert!(dry.iter().all(|o| o.offset == 0));
    assert_eq!(
        committed(&client, g).await,
        all,
        "a dry run changes nothing"
    );
    let reset = client
        .reset_offsets(proto::ResetOffsetsRequest {
            group_id: g.into(),
            topic: "fence".into(),
            spec: OffsetSpec::Earliest as i32,
            ..Default::default()
        })
        .await
        .expect("reset to earliest");
    assert_eq!(reset.len(), 4);
    let zero: BTreeMap<(String, u32), u64> =
        (0..4).map(|p| (("fence".to_string(), p), 0)).collect();
    assert_eq!(committed(&client, g).await, zero);
    let d = client.describe_group(g).await.unwrap();
    assert_eq!(total_lag(&d), produced.len() as u64, "{d:?}");

    // A new member re-reads everything from the start.
    let mut members = vec![
        GroupConsumer::join(client.clone(), config(g, &["fence"]))
            .await
            .unwrap(),
    ];
    let mut got = Vec::new();
    poll_until(&mut members, &mut got, "every event again", |_, got| {
        seen_all(got, &produced)
    })
    .await;
    let counts = tally(got.iter().map(|(_, r)| r), &produced);
    assert_eq!(counts.len(), produced.len());
    assert!(counts.values().all(|n| *n == 1));
    for p in 0..4 {
        let first = got
            .iter()
            .filter(|(_, r)| r.partition == p)
            .map(|(_, r)| r.offset)
            .min();
        assert_eq!(first, Some(0), "partition {p} re-read from the start");
    }
    members.pop().unwrap().close().await.unwrap();
}

/// Expected assignment per member (by rank of its id) over topics t (3) and u (3).
fn expected(assignor: &str) -> [BTreeSet<(String, u32)>; 2] {
    let set = |v: &[(&str, u32)]| -> BTreeSet<(String, u32)> {
        v.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    };
    match assignor {
        // Per topic, contiguous ranges; the first member gets the extra one.
        "range" => [
            set(&[("t", 0), ("t", 1), ("u", 0), ("u", 1)]),
            set(&[("t", 2), ("u", 2)]),
        ],
        // All partitions in (topic, partition) order, dealt one by one.
        "roundrobin" => [
            set(&[("t", 0), ("t", 2), ("u", 1)]),
            set(&[("t", 1), ("u", 0), ("u", 2)]),
        ],
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_roundrobin_assign_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let client = node.client().await;
    create(&client, "t", 3).await;
    create(&client, "u", 3).await;

    for assignor in ["range", "roundrobin"] {
        let group = format!("g-{assignor}");
        let mut cfg = config(&group, &["t", "u"]);
        cfg.assignor = assignor.into();
        let mut members = vec![
            GroupConsumer::join(client.clone(), cfg.clone())
                .await
                .unwrap(),
            GroupConsumer::join(client.clone(), cfg).await.unwrap(),
        ];
        let mut got = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        let d = loop {
            poll_until(
                &mut members,
                &mut got,
                "a full disjoint assignment",
                |m, _| {
                    let sets: Vec<_> = m.iter().map(GroupConsumer::assignment).collect();
                    let total: usize = sets.iter().map(BTreeSet::len).sum();
                    let union: BTreeSet<_> = sets.iter().flatten().collect();
                    sets.iter().all(|s| !s.is_empty()) && total == 6 && union.len() == 6
                },
            )
            .await;
            let d = client.describe_group(&group).await.unwrap();
            if d.state == "stable" {
                break d;
            }
            assert!(Instant::now() < deadline, "never stable: {d:?}");
        };
        assert_eq!(d.assignor, assignor);
        members.sort_by(|a, b| a.member_id().cmp(b.member_id()));
        let want = expected(assignor);
        for (m, want) in members.iter().zip(&want) {
            assert_eq!(
                &m.assignment(),
                want,
                "{assignor}: member {}",
                m.member_id()
            );
            let described = d
                .members
                .iter()
                .find(|dm| dm.member_id == m.member_id())
                .expect("member described");
            let on_server: BTreeSet<(String, u32)> = described
                .assignment
                .iter()
                .flat_map(|a| a.partitions.iter().map(|p| (a.topic.clone(), *p)))
                .collect();
            assert_eq!(&on_server, want, "{assignor}: described assignment");
        }
        for m in members {
            m.close().await.unwrap();
        }
    }
}
