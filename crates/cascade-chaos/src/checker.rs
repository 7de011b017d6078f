//! The history checker: decides, from what the workload saw and what the nodes stored, whether
//! the cluster kept its guarantees. Pure logic with no IO, so the tests feed it hand-made
//! histories and replica logs, violating ones included.
//!
//! # Inputs ([`History`])
//!
//! - every record the producers sent ([`Sent`]): its unique payload, the producer (and the
//!   producer session: one idempotent `Producer` instance, normally one per workload producer),
//!   the partition it was sent to, its send order (a per-producer, per-partition sequence
//!   number taken when `send` was called) and its outcome: acknowledged at an offset, failed,
//!   or unanswered. A record that failed or went unanswered is *ambiguous*: it may or may not
//!   be stored;
//! - every acknowledged `acks=all` record ([`Ack`]: the acknowledged ones among the sent):
//!   (topic, partition, offset, payload), with the time `send` was called and the time its
//!   acknowledgement arrived;
//! - every acknowledged offset commit of the consumer group, with the same two times, and the
//!   committed offsets read back at the end;
//! - every record the consumers were given ([`Read`]): topic, partition, offset, payload;
//! - per partition: the records read back from the leader at the end (below its high
//!   watermark), the final in-sync replica set, and each replica's log as read offline from its
//!   data directory (stored batches with their bytes and `partition_leader_epoch`).
//!
//! # What is a violation
//!
//! - **lost**: an acknowledged event is not at its acknowledged offset with its payload in the
//!   read-back (or two acknowledgements name the same offset);
//! - **duplicate**: a payload stored more than once (producers are idempotent: a retried batch
//!   must be stored once). Each extra copy counts;
//! - **reordered**: for each producer session and partition, the records of that producer
//!   found in the log, taken by offset, must be in the order they were sent. Ambiguous records
//!   may be missing, but those present must be in place too. Each record found below one its
//!   producer sent to that partition later counts once (the first copy of a duplicated payload
//!   is the one placed; the extra copies are duplicates);
//! - **misplaced**: a record stored in a partition other than the one it was sent to;
//! - **realtime order**: event B was sent after event A's acknowledgement arrived, yet B sits
//!   at a lower offset of the same partition (the real-time order of acknowledged writes, over
//!   all producers). Events whose sends overlapped in time may land in either order;
//! - **gap** or **phantom**: the read-back skips an offset, or holds a workload record whose
//!   payload was never sent;
//! - **replicas**: in-sync replicas must be byte-identical below the bound, which is the
//!   smallest log end offset among the final in-sync replicas. After the run has healed and
//!   settled, that is the high watermark the leader can prove (everything below it is on every
//!   in-sync replica), and it does not depend on the broker reporting its watermark honestly.
//!   Every acknowledged offset must lie below the bound, and the read-back must equal the
//!   replicas' records there;
//! - **epochs**: `partition_leader_epoch` never decreases along a log; and for any two replicas
//!   (in sync or not), past the first offset where their logs differ, no epoch appears in both
//!   suffixes, since that would mean two leaders wrote different data in one epoch;
//! - **read-then-lost**: every record a consumer was given is still at its offset, with its
//!   payload, in the final read-back: an event once read never vanishes or changes;
//! - **commits**: a commit sent after another was acknowledged never has a smaller offset
//!   (per partition), the final committed offset is at least the largest acknowledged one, and
//!   never beyond the end of the partition.
//!
//! Besides, the report counts the ambiguous records found stored and those absent (both are
//! allowed), for the curious.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Time in nanoseconds since the run started (one monotonic clock for every event).
pub type Nanos = u64;

/// A topic partition.
pub type Tp = (String, u32);

/// An acknowledged event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset the acknowledgement named.
    pub offset: u64,
    /// The record's value (unique per sent event).
    pub payload: Vec<u8>,
    /// When `send` was called for it.
    pub invoked: Nanos,
    /// When the acknowledgement arrived.
    pub acked: Nanos,
}

/// How a sent record's `send` ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SendOutcome {
    /// Acknowledged at this offset of its partition.
    Acked {
        /// The offset the acknowledgement named.
        offset: u64,
        /// When the acknowledgement arrived.
        at: Nanos,
    },
    /// `send` failed with this error (ambiguous: it may be stored).
    Failed(String),
    /// No answer: still pending when the workload stopped waiting (ambiguous).
    Unknown,
}

impl SendOutcome {
    fn describe(&self) -> String {
        match self {
            Self::Acked { offset, .. } => format!("acknowledged at {offset}"),
            Self::Failed(e) => format!("failed: {}", &e[..e.len().min(80)]),
            Self::Unknown => "unanswered".into(),
        }
    }
}

/// A record a producer sent (acknowledged or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The record's value (unique per run: `<run>-p<producer>-<n>`).
    pub payload: Vec<u8>,
    /// The workload producer.
    pub producer: u32,
    /// Which `Producer` instance of that workload producer sent it (a new instance has a new
    /// producer id; order is only promised within one instance).
    pub session: u32,
    /// The partition it was sent to.
    pub partition: u32,
    /// Send order: the producer's n-th record to this partition (taken when `send` was called).
    pub seq: u64,
    /// When `send` was called.
    pub invoked: Nanos,
    /// How it ended.
    pub outcome: SendOutcome,
}

impl Sent {
    /// True when its outcome is not known (it may or may not be stored).
    pub fn ambiguous(&self) -> bool {
        !matches!(self.outcome, SendOutcome::Acked { .. })
    }
}

/// The acknowledged records among `sent`, as events of `topic`.
pub fn acked(topic: &str, sent: &[Sent]) -> Vec<Ack> {
    sent.iter()
        .filter_map(|s| match s.outcome {
            SendOutcome::Acked { offset, at } => Some(Ack {
                topic: topic.to_string(),
                partition: s.partition,
                offset,
                payload: s.payload.clone(),
                invoked: s.invoked,
                acked: at,
            }),
            _ => None,
        })
        .collect()
}

/// An acknowledged offset commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Commit {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The committed offset (the next one to consume).
    pub offset: u64,
    /// When the commit was sent.
    pub invoked: Nanos,
    /// When it was acknowledged.
    pub acked: Nanos,
    /// Who committed: consumer, member id and epoch (for reading a failed run's history).
    pub by: String,
}

/// A record as stored or read back: (offset, value).
pub type StoredRecord = (u64, Option<Vec<u8>>);

/// One stored batch, as found in a replica's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// First offset in the batch.
    pub base_offset: u64,
    /// Offset after its last record.
    pub next_offset: u64,
    /// The `partition_leader_epoch` the leader stamped.
    pub leader_epoch: i32,
    /// The batch exactly as stored.
    pub bytes: Vec<u8>,
}

/// One replica's log of a partition, read offline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaLog {
    /// First offset in the log.
    pub start_offset: u64,
    /// Offset after the last record.
    pub end_offset: u64,
    /// Every batch, in order.
    pub batches: Vec<StoredBatch>,
    /// Every record, in order.
    pub records: Vec<StoredRecord>,
}

/// What is known about one partition at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct PartitionEvidence {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Records read back from the leader, or why that failed. `None` when the partition was
    /// not read back (internal topics).
    pub readback: Option<Result<Vec<StoredRecord>, String>>,
    /// The final in-sync replicas (node ids); empty when unknown, and then every replica
    /// found is treated as in sync.
    pub isr: Vec<u32>,
    /// Each node's log of the partition, or why it could not be read.
    pub replicas: BTreeMap<u32, Result<ReplicaLog, String>>,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Topics the workload wrote: only their records are matched against `sent`.
    pub workload_topics: BTreeSet<String>,
    /// Every record ever sent, acknowledged or not.
    pub sent: Vec<Sent>,
    /// Acknowledged events (the acknowledged ones among `sent`).
    pub acks: Vec<Ack>,
    /// Acknowledged commits.
    pub commits: Vec<Commit>,
    /// Committed offsets read at the end, or `None` if they could not be read.
    pub final_committed: Option<BTreeMap<Tp, u64>>,
    /// Per partition evidence.
    pub partitions: Vec<PartitionEvidence>,
    /// Every record the consumers were given, in no particular order.
    pub reads: Vec<Read>,
}

/// A record a consumer was given: once read at an offset, an event must stay there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Read {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Its value.
    pub payload: Vec<u8>,
}

/// Kinds of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// An acknowledged event is missing or different at its offset.
    Lost,
    /// Two acknowledgements named the same offset.
    OffsetAckedTwice,
    /// A producer's records stored out of its send order (per partition).
    Reordered,
    /// A payload stored more than once.
    Duplicate,
    /// A record stored in a partition it was not sent to.
    Misplaced,
    /// An event sent after another's acknowledgement stored below it.
    RealtimeOrder,
    /// The read-back skips offsets.
    Gap,
    /// A record a consumer was given is no longer at its offset (or is something else there).
    ReadThenLost,
    /// A workload record nobody sent.
    Phantom,
    /// A partition could not be read back from its leader.
    ReadbackFailed,
    /// A replica's log could not be opened or read.
    ReplicaUnreadable,
    /// In-sync replicas differ below the bound.
    ReplicaDivergence,
    /// An acknowledged offset is not on every in-sync replica.
    AckNotOnIsr,
    /// The leader's read-back differs from the replicas' logs.
    ReadbackMismatch,
    /// `partition_leader_epoch` decreased along a log.
    EpochDecrease,
    /// Two replicas' divergent suffixes share an epoch.
    EpochConflict,
    /// A committed offset went backwards.
    CommitBackwards,
    /// The final committed offset is below an acknowledged commit.
    CommitLost,
    /// A committed offset past the partition's end.
    CommitBeyondEnd,
}

/// One violation, with enough detail to start debugging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// What kind.
    pub kind: ViolationKind,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Explanation.
    pub detail: String,
}

/// How many violations are kept with their details (all are counted).
pub const MAX_LISTED: usize = 200;

/// The checker's verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Acknowledged events checked.
    pub acknowledged: u64,
    /// Acknowledged events not found at their offset.
    pub lost: u64,
    /// Extra copies of payloads stored more than once (each a violation).
    pub duplicates: u64,
    /// A few duplicated payloads with their copies' count.
    pub duplicate_examples: Vec<String>,
    /// Records stored out of their producer's send order (each a violation).
    pub reordered: u64,
    /// Records sent and never acknowledged (failed or unanswered) found stored: allowed.
    pub ambiguous_stored: u64,
    /// Records sent and never acknowledged that are not stored: allowed.
    pub ambiguous_absent: u64,
    /// Records read back from leaders.
    pub records_read: u64,
    /// Partitions looked at.
    pub partitions_checked: u64,
    /// Replica logs read offline.
    pub replica_logs: u64,
    /// Acknowledged commits checked.
    pub commits_checked: u64,
    /// Records consumers were given, checked against the read-back.
    pub reads_checked: u64,
    /// Of those, records no longer at their offset (each a violation).
    pub read_then_lost: u64,
    /// Violations by kind.
    pub violation_counts: BTreeMap<ViolationKind, u64>,
    /// The first [`MAX_LISTED`] violations.
    pub violations: Vec<Violation>,
}

impl CheckReport {
    /// True when nothing was violated (every counter of the summary line is 0).
    pub fn ok(&self) -> bool {
        self.violation_counts.is_empty()
            && self.lost == 0
            && self.duplicates == 0
            && self.reordered == 0
            && self.read_then_lost == 0
    }

    /// Violations of every kind.
    pub fn violation_total(&self) -> u64 {
        self.violation_counts.values().sum()
    }

    fn add(&mut self, kind: ViolationKind, topic: &str, partition: u32, detail: String) {
        *self.violation_counts.entry(kind).or_default() += 1;
        if self.violations.len() < MAX_LISTED {
            self.violations.push(Violation {
                kind,
                topic: topic.to_string(),
                partition,
                detail,
            });
        }
    }
}

fn show(v: Option<&[u8]>) -> String {
    match v {
        None => "null".into(),
        Some(b) => format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(64)])),
    }
}

/// Every record a consumer was given must still be at its offset, with its payload, in the
/// leader's final read-back (read-then-lost: a consumer acted on an event the cluster later
/// lost or replaced). Reads of a partition that could not be read back are reported with it.
fn check_reads(r: &mut CheckReport, h: &History, evidence: &BTreeMap<Tp, &PartitionEvidence>) {
    for read in &h.reads {
        let Some(Some(Ok(recs))) = evidence
            .get(&(read.topic.clone(), read.partition))
            .map(|p| p.readback.as_ref())
        else {
            continue;
        };
        r.reads_checked += 1;
        let found = recs
            .binary_search_by_key(&read.offset, |(o, _)| *o)
            .ok()
            .map(|i| recs[i].1.as_deref());
        if found != Some(Some(read.payload.as_slice())) {
            r.read_then_lost += 1;
            let now = match found {
                None => "nothing".to_string(),
                Some(None) => "a record without value".to_string(),
                Some(Some(v)) => format!("{:?}", String::from_utf8_lossy(v)),
            };
            r.add(
                ViolationKind::ReadThenLost,
                &read.topic,
                read.partition,
                format!(
                    "offset {} was read as {:?}; the final read-back has {now} there",
                    read.offset,
                    String::from_utf8_lossy(&read.payload)
                ),
            );
        }
    }
}

/// Checks a history; see the module docs for the rules.
pub fn check(h: &History) -> CheckReport {
    let mut r = CheckReport {
        acknowledged: h.acks.len() as u64,
        commits_checked: h.commits.len() as u64,
        ..Default::default()
    };
    let mut acks_by_tp: BTreeMap<Tp, Vec<&Ack>> = BTreeMap::new();
    for a in &h.acks {
        acks_by_tp
            .entry((a.topic.clone(), a.partition))
            .or_default()
            .push(a);
    }
    let evidence: BTreeMap<Tp, &PartitionEvidence> = h
        .partitions
        .iter()
        .map(|p| ((p.topic.clone(), p.partition), p))
        .collect();
    let mut ends: BTreeMap<Tp, u64> = BTreeMap::new();
    let sent: HashMap<&[u8], &Sent> = h.sent.iter().map(|s| (s.payload.as_slice(), s)).collect();
    // Where each sent payload was found.
    let mut copies: HashMap<&[u8], Copies<'_>> = HashMap::new();

    // Partitions with acknowledgements but no evidence at all lose everything acknowledged.
    for (tp, acks) in &acks_by_tp {
        if !evidence.contains_key(tp) {
            r.lost += acks.len() as u64;
            r.add(
                ViolationKind::ReadbackFailed,
                &tp.0,
                tp.1,
                format!(
                    "no evidence for a partition with {} acknowledged events",
                    acks.len()
                ),
            );
        }
    }

    for p in &h.partitions {
        r.partitions_checked += 1;
        let tp = (p.topic.clone(), p.partition);
        let acks = acks_by_tp.get(&tp).map(Vec::as_slice).unwrap_or(&[]);
        let workload = h.workload_topics.contains(&p.topic);
        let readback = match &p.readback {
            Some(Ok(recs)) => Some(recs),
            Some(Err(e)) => {
                r.lost += acks.len() as u64;
                r.add(
                    ViolationKind::ReadbackFailed,
                    &p.topic,
                    p.partition,
                    e.clone(),
                );
                None
            }
            None => {
                if !acks.is_empty() {
                    r.lost += acks.len() as u64;
                    r.add(
                        ViolationKind::ReadbackFailed,
                        &p.topic,
                        p.partition,
                        "partition was not read back".into(),
                    );
                }
                None
            }
        };
        if let Some(recs) = readback {
            r.records_read += recs.len() as u64;
            ends.insert(tp.clone(), recs.last().map_or(0, |(o, _)| o + 1));
            check_readback(&mut r, p, recs, workload, &sent, &mut copies);
            check_acks(&mut r, p, acks, recs);
            if workload {
                check_producer_order(&mut r, p, recs, &sent);
            }
        }
        check_realtime_order(&mut r, &p.topic, p.partition, acks);
        check_replicas(&mut r, p, acks, readback.map(Vec::as_slice));
    }

    check_duplicates(&mut r, &copies);
    for s in h.sent.iter().filter(|s| s.ambiguous()) {
        if copies.contains_key(s.payload.as_slice()) {
            r.ambiguous_stored += 1;
        } else {
            r.ambiguous_absent += 1;
        }
    }

    check_commits(&mut r, h, &ends);
    check_reads(&mut r, h, &evidence);
    r
}

/// Dense offsets, no phantoms; notes where each payload was found.
fn check_readback<'a>(
    r: &mut CheckReport,
    p: &'a PartitionEvidence,
    recs: &'a [StoredRecord],
    workload: bool,
    sent: &HashMap<&[u8], &Sent>,
    copies: &mut HashMap<&'a [u8], Copies<'a>>,
) {
    for w in recs.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            r.add(
                ViolationKind::Gap,
                &p.topic,
                p.partition,
                format!("read-back jumps from offset {} to {}", w[0].0, w[1].0),
            );
        }
    }
    if !workload {
        return;
    }
    for (offset, value) in recs {
        match value {
            Some(v) if sent.contains_key(v.as_slice()) => copies
                .entry(v.as_slice())
                .or_default()
                .push((p.topic.as_str(), p.partition, *offset)),
            _ => r.add(
                ViolationKind::Phantom,
                &p.topic,
                p.partition,
                format!(
                    "offset {offset} holds {}, which was never sent",
                    show(value.as_deref())
                ),
            ),
        }
    }
}

/// Every acknowledged event at its offset with its payload.
fn check_acks(r: &mut CheckReport, p: &PartitionEvidence, acks: &[&Ack], recs: &[StoredRecord]) {
    let by_offset: HashMap<u64, Option<&[u8]>> =
        recs.iter().map(|(o, v)| (*o, v.as_deref())).collect();
    let mut seen: HashMap<u64, &[u8]> = HashMap::new();
    for a in acks {
        if let Some(other) = seen.insert(a.offset, &a.payload) {
            r.add(
                ViolationKind::OffsetAckedTwice,
                &p.topic,
                p.partition,
                format!(
                    "offset {} acknowledged for {} and for {}",
                    a.offset,
                    show(Some(other)),
                    show(Some(&a.payload))
                ),
            );
        }
        match by_offset.get(&a.offset) {
            Some(Some(v)) if *v == a.payload.as_slice() => {}
            found => {
                r.lost += 1;
                r.add(
                    ViolationKind::Lost,
                    &p.topic,
                    p.partition,
                    format!(
                        "{} acknowledged at offset {}, read back {}",
                        show(Some(&a.payload)),
                        a.offset,
                        match found {
                            None => "nothing there".to_string(),
                            Some(v) => show(*v),
                        }
                    ),
                );
            }
        }
    }
}

/// Where a payload was found: (topic, partition, offset) of each copy.
type Copies<'a> = Vec<(&'a str, u32, u64)>;

/// A payload stored more than once: every extra copy is a violation.
fn check_duplicates(r: &mut CheckReport, copies: &HashMap<&[u8], Copies<'_>>) {
    let mut dups: Vec<(&[u8], &Copies<'_>)> = copies
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(p, at)| (*p, at))
        .collect();
    dups.sort();
    for (payload, at) in &dups {
        let (topic, partition, _) = at[0];
        let places: Vec<String> = at.iter().map(|(t, p, o)| format!("{t}/{p}@{o}")).collect();
        for _ in 1..at.len() {
            r.duplicates += 1;
            r.add(
                ViolationKind::Duplicate,
                topic,
                partition,
                format!(
                    "{} stored {} times: {}",
                    show(Some(payload)),
                    at.len(),
                    places.join(", ")
                ),
            );
        }
    }
    r.duplicate_examples = dups
        .iter()
        .take(10)
        .map(|(p, at)| format!("{} x{}", show(Some(p)), at.len()))
        .collect();
}

/// Per producer session and partition, the stored records (first copies, by offset) follow
/// the send order; every record stored below a later-sent one of its stream counts once.
/// Records in a partition they were not sent to are misplaced.
fn check_producer_order(
    r: &mut CheckReport,
    p: &PartitionEvidence,
    recs: &[StoredRecord],
    sent: &HashMap<&[u8], &Sent>,
) {
    // (producer, session) → the latest-sent record found so far, and its offset.
    let mut latest: HashMap<(u32, u32), (&Sent, u64)> = HashMap::new();
    let mut placed: HashSet<&[u8]> = HashSet::new();
    for (offset, value) in recs {
        let Some(s) = value.as_deref().and_then(|v| sent.get(v)) else {
            continue; // a phantom, reported by the read-back check
        };
        if s.partition != p.partition {
            r.add(
                ViolationKind::Misplaced,
                &p.topic,
                p.partition,
                format!(
                    "offset {offset} holds {}, which producer {} sent to partition {}",
                    show(Some(&s.payload)),
                    s.producer,
                    s.partition
                ),
            );
            continue;
        }
        if !placed.insert(s.payload.as_slice()) {
            continue; // an extra copy: a duplicate, not an ordering question
        }
        match latest.get(&(s.producer, s.session)) {
            Some((l, at)) if l.seq > s.seq => {
                r.reordered += 1;
                r.add(
                    ViolationKind::Reordered,
                    &p.topic,
                    p.partition,
                    format!(
                        "producer {} (session {}): {} (send #{}, {}) is at offset {offset}, after {} (send #{}, {}) at offset {at}",
                        s.producer,
                        s.session,
                        show(Some(&s.payload)),
                        s.seq,
                        s.outcome.describe(),
                        show(Some(&l.payload)),
                        l.seq,
                        l.outcome.describe(),
                    ),
                );
            }
            _ => {
                latest.insert((s.producer, s.session), (s, *offset));
            }
        }
    }
}

/// Real-time order: if A's acknowledgement arrived before B was sent, A's offset is lower.
fn check_realtime_order(r: &mut CheckReport, topic: &str, partition: u32, acks: &[&Ack]) {
    let mut by_offset: Vec<&Ack> = acks.to_vec();
    by_offset.sort_by_key(|a| std::cmp::Reverse(a.offset));
    // Walking offsets downwards, keep the earliest acknowledgement among higher offsets: any
    // event sent after it but stored below it was reordered.
    let mut earliest_above: Option<&Ack> = None;
    for a in by_offset {
        if let Some(e) = earliest_above
            && e.offset > a.offset
            && e.acked < a.invoked
        {
            r.add(
                ViolationKind::RealtimeOrder,
                topic,
                partition,
                format!(
                    "{} (offset {}) was sent after {} (offset {}) was acknowledged",
                    show(Some(&a.payload)),
                    a.offset,
                    show(Some(&e.payload)),
                    e.offset
                ),
            );
        }
        if earliest_above.is_none_or(|e| a.acked < e.acked) {
            earliest_above = Some(a);
        }
    }
}

/// Replicas byte-identical below the bound, acknowledged data on every in-sync replica,
/// epochs monotonic and never shared by divergent suffixes.
fn check_replicas(
    r: &mut CheckReport,
    p: &PartitionEvidence,
    acks: &[&Ack],
    readback: Option<&[StoredRecord]>,
) {
    let (t, part) = (p.topic.as_str(), p.partition);
    let mut logs: BTreeMap<u32, &ReplicaLog> = BTreeMap::new();
    for (node, log) in &p.replicas {
        r.replica_logs += 1;
        match log {
            Ok(l) => {
                logs.insert(*node, l);
            }
            Err(e) => r.add(
                ViolationKind::ReplicaUnreadable,
                t,
                part,
                format!("node {node}: {e}"),
            ),
        }
    }
    for (node, log) in &logs {
        for w in log.batches.windows(2) {
            if w[1].leader_epoch < w[0].leader_epoch {
                r.add(
                    ViolationKind::EpochDecrease,
                    t,
                    part,
                    format!(
                        "node {node}: epoch {} at offset {} follows epoch {} at offset {}",
                        w[1].leader_epoch, w[1].base_offset, w[0].leader_epoch, w[0].base_offset
                    ),
                );
            }
        }
    }

    let isr: Vec<u32> = if p.isr.is_empty() {
        logs.keys().copied().collect()
    } else {
        p.isr
            .iter()
            .copied()
            .filter(|n| logs.contains_key(n))
            .collect()
    };
    if let Some(&first) = isr.first() {
        let bound = isr.iter().map(|n| logs[n].end_offset).min().unwrap_or(0);
        let prefix = |log: &ReplicaLog| -> usize {
            log.batches
                .iter()
                .take_while(|b| b.next_offset <= bound)
                .count()
        };
        let reference = logs[&first];
        let ref_len = prefix(reference);
        for n in &isr[1..] {
            let log = logs[n];
            let len = prefix(log);
            let diff = reference.batches[..ref_len]
                .iter()
                .zip(&log.batches[..len])
                .position(|(a, b)| a != b);
            match diff {
                Some(i) => r.add(
                    ViolationKind::ReplicaDivergence,
                    t,
                    part,
                    format!(
                        "in-sync nodes {first} and {n} differ at the batch at offset {} (bound {bound})",
                        reference.batches[i].base_offset.min(log.batches[i].base_offset)
                    ),
                ),
                None if len != ref_len => r.add(
                    ViolationKind::ReplicaDivergence,
                    t,
                    part,
                    format!(
                        "in-sync nodes {first} and {n} have different batch boundaries below {bound}"
                    ),
                ),
                None => {}
            }
        }
        for a in acks.iter().filter(|a| a.offset >= bound) {
            r.add(
                ViolationKind::AckNotOnIsr,
                t,
                part,
                format!(
                    "acknowledged offset {} is at or above the smallest in-sync log end {bound} (in-sync: {isr:?})",
                    a.offset
                ),
            );
        }
        if let Some(recs) = readback {
            let stored: HashMap<u64, &Option<Vec<u8>>> = reference
                .records
                .iter()
                .filter(|(o, _)| *o < bound)
                .map(|(o, v)| (*o, v))
                .collect();
            let mut mismatches = 0;
            for (o, v) in recs.iter().filter(|(o, _)| *o < bound) {
                if stored.get(o) != Some(&v) {
                    mismatches += 1;
                    if mismatches <= 5 {
                        r.add(
                            ViolationKind::ReadbackMismatch,
                            t,
                            part,
                            format!(
                                "offset {o}: leader returned {}, node {first} stores {}",
                                show(v.as_deref()),
                                stored
                                    .get(o)
                                    .map_or("nothing".into(), |s| show(s.as_deref()))
                            ),
                        );
                    }
                }
            }
        }
    }

    let nodes: Vec<u32> = logs.keys().copied().collect();
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            if let Some(d) = first_divergence(logs[a], logs[b]) {
                let suffix = |log: &ReplicaLog| -> BTreeSet<i32> {
                    log.batches
                        .iter()
                        .filter(|x| x.base_offset >= d)
                        .map(|x| x.leader_epoch)
                        .collect()
                };
                let shared: Vec<i32> = suffix(logs[a])
                    .intersection(&suffix(logs[b]))
                    .copied()
                    .collect();
                if !shared.is_empty() {
                    r.add(
                        ViolationKind::EpochConflict,
                        t,
                        part,
                        format!(
                            "nodes {a} and {b} diverge at offset {d} and both hold batches of epoch(s) {shared:?} after it"
                        ),
                    );
                }
            }
        }
    }
}

/// The first offset where two logs hold different batches, comparing from the later of their
/// starts; `None` when one is a prefix of the other.
fn first_divergence(a: &ReplicaLog, b: &ReplicaLog) -> Option<u64> {
    let from = a.start_offset.max(b.start_offset);
    let ia = a.batches.iter().skip_while(|x| x.base_offset < from);
    let ib = b.batches.iter().skip_while(|x| x.base_offset < from);
    ia.zip(ib)
        .find(|(x, y)| x != y)
        .map(|(x, y)| x.base_offset.min(y.base_offset))
}

/// Committed offsets never go backwards, survive, and stay within the log.
fn check_commits(r: &mut CheckReport, h: &History, ends: &BTreeMap<Tp, u64>) {
    let mut by_tp: BTreeMap<Tp, Vec<&Commit>> = BTreeMap::new();
    for c in &h.commits {
        by_tp
            .entry((c.topic.clone(), c.partition))
            .or_default()
            .push(c);
    }
    for (tp, commits) in &by_tp {
        let mut by_invoked = commits.clone();
        by_invoked.sort_by_key(|c| c.invoked);
        let mut by_acked = commits.clone();
        by_acked.sort_by_key(|c| c.acked);
        // Sweep: for each commit, the largest offset among commits acknowledged before it
        // was sent must not exceed its own.
        let mut j = 0;
        let mut max_before: Option<&Commit> = None;
        for c in by_invoked {
            while j < by_acked.len() && by_acked[j].acked < c.invoked {
                if max_before.is_none_or(|m| by_acked[j].offset > m.offset) {
                    max_before = Some(by_acked[j]);
                }
                j += 1;
            }
            if let Some(m) = max_before
                && m.offset > c.offset
            {
                r.add(
                    ViolationKind::CommitBackwards,
                    &tp.0,
                    tp.1,
                    format!(
                        "offset {} committed after offset {} had been acknowledged",
                        c.offset, m.offset
                    ),
                );
            }
        }
        let max = commits.iter().map(|c| c.offset).max().unwrap_or(0);
        if let Some(end) = ends.get(tp)
            && max > *end
        {
            r.add(
                ViolationKind::CommitBeyondEnd,
                &tp.0,
                tp.1,
                format!("offset {max} committed, but the partition ends at {end}"),
            );
        }
        match h.final_committed.as_ref().map(|f| f.get(tp)) {
            None => {} // could not be read: reported by the driver, nothing to compare
            Some(Some(f)) if *f >= max => {}
            Some(found) => r.add(
                ViolationKind::CommitLost,
                &tp.0,
                tp.1,
                format!(
                    "offset {max} was acknowledged, the group's committed offset is {}",
                    found.map_or("none".into(), |f| f.to_string())
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_record::header::{set_base_offset, set_leader_epoch};
    use cascade_record::{BatchBuilder, Record};

    const T: &str = "chaos";

    /// A stored batch holding `values` at `base`, stamped with `epoch`.
    fn batch(base: u64, epoch: i32, values: &[&str]) -> StoredBatch {
        let mut b = BatchBuilder::new();
        for v in values {
            b.push(Record {
                timestamp: 1,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            });
        }
        let mut bytes = b.finish();
        set_base_offset(&mut bytes, base as i64);
        set_leader_epoch(&mut bytes, epoch);
        StoredBatch {
            base_offset: base,
            next_offset: base + values.len() as u64,
            leader_epoch: epoch,
            bytes,
        }
    }

    fn log(batches: Vec<StoredBatch>) -> ReplicaLog {
        let records = batches
            .iter()
            .flat_map(|b| {
                let v: Vec<StoredRecord> = cascade_record::Batches::new(&b.bytes)
                    .flat_map(|x| {
                        x.unwrap()
                            .records()
                            .unwrap()
                            .map(|r| (r.offset as u64, r.value.map(<[u8]>::to_vec)))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                v
            })
            .collect();
        ReplicaLog {
            start_offset: batches.first().map_or(0, |b| b.base_offset),
            end_offset: batches.last().map_or(0, |b| b.next_offset),
            batches,
            records,
        }
    }

    fn ack(offset: u64, payload: &str, invoked: u64, acked: u64) -> Ack {
        Ack {
            topic: T.into(),
            partition: 0,
            offset,
            payload: payload.as_bytes().to_vec(),
            invoked,
            acked,
        }
    }

    /// A record producer `producer` sent to partition 0 as its `seq`-th.
    fn sent(payload: &str, producer: u32, seq: u64, outcome: SendOutcome) -> Sent {
        Sent {
            payload: payload.as_bytes().to_vec(),
            producer,
            session: 0,
            partition: 0,
            seq,
            invoked: 0,
            outcome,
        }
    }

    fn acked(offset: u64) -> SendOutcome {
        SendOutcome::Acked { offset, at: 0 }
    }

    fn commit(offset: u64, invoked: u64, acked: u64) -> Commit {
        Commit {
            by: String::new(),
            topic: T.into(),
            partition: 0,
            offset,
            invoked,
            acked,
        }
    }

    /// A healthy history: 3 replicas of partition 0 holding a, b, c (epoch 1) and d (epoch 2),
    /// sent in that order by producer 0, each acknowledged in order, read back intact; "e",
    /// sent by producer 1, went unanswered and is not stored (allowed).
    fn healthy() -> History {
        let batches = vec![
            batch(0, 1, &["a", "b"]),
            batch(2, 1, &["c"]),
            batch(3, 2, &["d"]),
        ];
        let l = log(batches);
        History {
            workload_topics: [T.to_string()].into(),
            sent: vec![
                sent("a", 0, 0, acked(0)),
                sent("b", 0, 1, acked(1)),
                sent("c", 0, 2, acked(2)),
                sent("d", 0, 3, acked(3)),
                sent("e", 1, 0, SendOutcome::Unknown),
            ],
            acks: vec![
                ack(0, "a", 10, 20),
                ack(1, "b", 10, 20),
                ack(2, "c", 30, 40),
                ack(3, "d", 50, 60),
            ],
            commits: vec![commit(2, 100, 110), commit(4, 120, 130)],
            final_committed: Some([((T.to_string(), 0), 4)].into()),
            partitions: vec![PartitionEvidence {
                topic: T.into(),
                partition: 0,
                readback: Some(Ok(l.records.clone())),
                isr: vec![1, 2, 3],
                replicas: [(1, Ok(l.clone())), (2, Ok(l.clone())), (3, Ok(l))].into(),
            }],
            reads: Vec::new(),
        }
    }

    fn read(offset: u64, payload: &str) -> Read {
        Read {
            topic: T.into(),
            partition: 0,
            offset,
            payload: payload.as_bytes().to_vec(),
        }
    }

    /// A consumer was given "x" at offset 3 (a leader served it) and "z" at 9, but the final
    /// log has "d" at 3 and ends at 4: both reads were lost after being read, though nothing
    /// acknowledged was lost.
    #[test]
    fn an_event_read_then_gone_or_replaced_is_a_violation() {
        let mut h = healthy();
        h.reads = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, v)| read(i as u64, v))
            .collect();
        assert_eq!(check(&h).read_then_lost, 0, "reads that stayed are fine");
        h.reads.push(read(3, "x"));
        h.reads.push(read(9, "z"));
        let r = check(&h);
        assert_eq!((r.reads_checked, r.read_then_lost), (6, 2));
        assert_eq!(r.lost, 0);
        assert_eq!(kinds(&r), vec![ViolationKind::ReadThenLost]);
        assert!(!r.ok());
        assert!(
            r.violations[0]
                .detail
                .contains("offset 3 was read as \"x\"")
                && r.violations[0].detail.contains("\"d\" there"),
            "{:?}",
            r.violations
        );
    }

    fn kinds(r: &CheckReport) -> Vec<ViolationKind> {
        r.violation_counts.keys().copied().collect()
    }

    #[test]
    fn a_healthy_history_passes() {
        let r = check(&healthy());
        assert!(r.ok(), "{:#?}", r.violations);
        assert_eq!(r.acknowledged, 4);
        assert_eq!(r.lost, 0);
        assert_eq!(r.duplicates, 0);
        assert_eq!(r.reordered, 0);
        assert_eq!((r.ambiguous_stored, r.ambiguous_absent), (0, 1));
        assert_eq!(r.records_read, 4);
        assert_eq!(r.replica_logs, 3);
        assert_eq!((r.reads_checked, r.read_then_lost), (0, 0));
    }

    #[test]
    fn a_missing_acknowledged_event_is_lost() {
        let mut h = healthy();
        // The leader lost "d": truncated back to offset 3 everywhere.
        let l = log(vec![batch(0, 1, &["a", "b"]), batch(2, 1, &["c"])]);
        h.partitions[0].readback = Some(Ok(l.records.clone()));
        h.partitions[0].replicas = [(1, Ok(l.clone())), (2, Ok(l))].into();
        h.partitions[0].isr = vec![1, 2];
        let r = check(&h);
        assert_eq!(r.lost, 1);
        assert!(kinds(&r).contains(&ViolationKind::Lost));
        // And the acknowledged offset is past what the in-sync replicas hold.
        assert!(kinds(&r).contains(&ViolationKind::AckNotOnIsr));
    }

    #[test]
    fn a_different_payload_at_the_acknowledged_offset_is_lost() {
        let mut h = healthy();
        h.acks[2] = ack(2, "e", 30, 40);
        let r = check(&h);
        assert_eq!(r.lost, 1);
        assert_eq!(kinds(&r), vec![ViolationKind::Lost]);
    }

    #[test]
    fn two_acknowledgements_of_one_offset_are_flagged() {
        let mut h = healthy();
        h.acks.push(ack(3, "e", 70, 80));
        let r = check(&h);
        assert!(kinds(&r).contains(&ViolationKind::OffsetAckedTwice));
    }

    /// Partition 0's evidence: one replica (in sync) holding `batches`, read back as stored.
    fn only(h: &mut History, batches: Vec<StoredBatch>) {
        let l = log(batches);
        h.partitions[0].readback = Some(Ok(l.records.clone()));
        h.partitions[0].replicas = [(1, Ok(l))].into();
        h.partitions[0].isr = vec![1];
    }

    #[test]
    fn a_payload_stored_twice_is_a_duplicate() {
        let mut h = healthy();
        // "c" was written at 2 by a request whose answer was lost, then again at 4 by a retry
        // the partition failed to recognise, which was the one acknowledged.
        only(
            &mut h,
            vec![
                batch(0, 1, &["a", "b"]),
                batch(2, 1, &["c"]),
                batch(3, 2, &["d"]),
                batch(4, 2, &["c"]),
            ],
        );
        h.acks[2] = ack(4, "c", 30, 65);
        h.sent[2].outcome = acked(4);
        h.final_committed = Some([((T.to_string(), 0), 5)].into());
        let r = check(&h);
        assert!(!r.ok());
        assert_eq!(kinds(&r), vec![ViolationKind::Duplicate]);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.violation_counts[&ViolationKind::Duplicate], 1);
        assert_eq!(r.duplicate_examples, vec!["\"c\" x2".to_string()]);
        assert!(
            r.violations[0].detail.contains("chaos/0@2, chaos/0@4"),
            "{:?}",
            r.violations
        );
        // The extra copy is a duplicate, not also a reordering.
        assert_eq!((r.lost, r.reordered), (0, 0));

        // Three copies are two duplicates.
        only(
            &mut h,
            vec![
                batch(0, 1, &["a", "b"]),
                batch(2, 1, &["c"]),
                batch(3, 2, &["d"]),
                batch(4, 2, &["c", "c"]),
            ],
        );
        h.final_committed = Some([((T.to_string(), 0), 6)].into());
        let r = check(&h);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.violation_counts[&ViolationKind::Duplicate], 2);
    }

    #[test]
    fn a_producers_records_swapped_in_the_log_are_reordered() {
        let mut h = healthy();
        // Producer 0 sent b before c, but c is stored first. Both were acknowledged where they
        // are, and their sends overlapped, so only the producer-order check can see it.
        only(
            &mut h,
            vec![
                batch(0, 1, &["a"]),
                batch(1, 1, &["c"]),
                batch(2, 1, &["b"]),
                batch(3, 2, &["d"]),
            ],
        );
        h.acks[1] = ack(2, "b", 10, 20);
        h.acks[2] = ack(1, "c", 10, 20);
        h.sent[1].outcome = acked(2);
        h.sent[2].outcome = acked(1);
        let r = check(&h);
        assert!(!r.ok());
        assert_eq!(kinds(&r), vec![ViolationKind::Reordered]);
        assert_eq!(r.reordered, 1);
        assert_eq!((r.lost, r.duplicates), (0, 0));
        let detail = &r.violations[0].detail;
        assert!(
            detail.contains(
                "\"b\" (send #1, acknowledged at 2) is at offset 2, after \"c\" (send #2"
            ),
            "{detail}"
        );

        // A record moved back past two later ones is one reordered record.
        only(&mut h, vec![batch(0, 1, &["b", "c", "d", "a"])]);
        for (i, p) in ["b", "c", "d", "a"].iter().enumerate() {
            h.acks
                .iter_mut()
                .find(|a| a.payload == p.as_bytes())
                .unwrap()
                .offset = i as u64;
        }
        let r = check(&h);
        assert_eq!(r.reordered, 1, "{:#?}", r.violations);
    }

    #[test]
    fn records_of_different_producers_interleave_freely() {
        let mut h = healthy();
        // Producer 1's "e" (acknowledged) lands between producer 0's records, and producer 1's
        // "f", sent after "e", is stored before it: only the second is a violation.
        only(
            &mut h,
            vec![
                batch(0, 1, &["a", "e"]),
                batch(2, 1, &["b", "c"]),
                batch(4, 2, &["d"]),
            ],
        );
        h.sent[4].outcome = acked(1);
        for (i, a) in h.acks.iter_mut().enumerate() {
            a.offset = [0, 2, 3, 4][i];
        }
        h.acks.push(ack(1, "e", 10, 20));
        h.final_committed = Some([((T.to_string(), 0), 5)].into());
        let r = check(&h);
        assert!(r.ok(), "{:#?}", r.violations);

        h.sent
            .push(sent("f", 1, 1, SendOutcome::Failed("timed out".into())));
        only(
            &mut h,
            vec![
                batch(0, 1, &["a", "f"]),
                batch(2, 1, &["e", "b", "c"]),
                batch(5, 2, &["d"]),
            ],
        );
        for (i, a) in h.acks.iter_mut().enumerate() {
            a.offset = [0, 3, 4, 5, 2][i];
        }
        h.final_committed = Some([((T.to_string(), 0), 6)].into());
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::Reordered]);
        assert_eq!(r.reordered, 1);
        assert!(
            r.violations[0].detail.contains("producer 1 (session 0)"),
            "{:?}",
            r.violations
        );

        // Another session of producer 1 (a new producer id) is a stream of its own.
        h.sent[4].session = 1;
        assert!(check(&h).ok());
    }

    #[test]
    fn an_ambiguous_record_may_be_missing_but_not_out_of_place() {
        let mut h = healthy();
        // Producer 0 sent "x" between "b" and "c"; its send failed (the retry budget ran out)
        // and it was never stored: allowed.
        h.sent = vec![
            sent("a", 0, 0, acked(0)),
            sent("b", 0, 1, acked(1)),
            sent(
                "x",
                0,
                2,
                SendOutcome::Failed("gave up after 31 attempts".into()),
            ),
            sent("c", 0, 3, acked(2)),
            sent("d", 0, 4, acked(3)),
        ];
        let r = check(&h);
        assert!(r.ok(), "{:#?}", r.violations);
        assert_eq!((r.lost, r.duplicates, r.reordered), (0, 0, 0));
        assert_eq!((r.ambiguous_stored, r.ambiguous_absent), (0, 1));

        // Stored in its place (after "b", before "c"), it is fine too.
        only(
            &mut h,
            vec![
                batch(0, 1, &["a", "b"]),
                batch(2, 1, &["x"]),
                batch(3, 1, &["c"]),
                batch(4, 2, &["d"]),
            ],
        );
        h.acks[2].offset = 3;
        h.acks[3].offset = 4;
        h.sent[3].outcome = acked(3);
        h.sent[4].outcome = acked(4);
        h.final_committed = Some([((T.to_string(), 0), 5)].into());
        let r = check(&h);
        assert!(r.ok(), "{:#?}", r.violations);
        assert_eq!((r.ambiguous_stored, r.ambiguous_absent), (1, 0));

        // Stored after "c", which was sent after it, it is reordered.
        only(
            &mut h,
            vec![
                batch(0, 1, &["a", "b"]),
                batch(2, 1, &["c"]),
                batch(3, 1, &["x"]),
                batch(4, 2, &["d"]),
            ],
        );
        h.acks[2].offset = 2;
        h.sent[3].outcome = acked(2);
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::Reordered]);
        assert_eq!(r.reordered, 1);
        assert!(
            r.violations[0].detail.contains("(send #2, failed: gave up"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_record_in_another_partition_than_it_was_sent_to_is_misplaced() {
        let mut h = healthy();
        h.sent[4].partition = 3;
        h.sent[3].partition = 3;
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::Misplaced]);
    }

    #[test]
    fn an_event_sent_after_an_acknowledgement_must_land_after_it() {
        let mut h = healthy();
        // "c" was sent at 70, after "d" was acknowledged at 60, yet sits below it.
        h.acks[2] = ack(2, "c", 70, 80);
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::RealtimeOrder]);
        // Had the two sends overlapped, either order would be fine.
        h.acks[2] = ack(2, "c", 55, 80);
        assert!(check(&h).ok());
    }

    #[test]
    fn gaps_and_phantoms_are_flagged() {
        let mut h = healthy();
        h.sent.retain(|s| s.payload != b"d");
        h.acks.pop();
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::Phantom]);

        let mut h = healthy();
        let mut recs = h.partitions[0].readback.take().unwrap().unwrap();
        recs.remove(2);
        h.partitions[0].readback = Some(Ok(recs));
        let r = check(&h);
        assert!(kinds(&r).contains(&ViolationKind::Gap));
        assert!(kinds(&r).contains(&ViolationKind::Lost));
    }

    #[test]
    fn in_sync_replicas_must_be_identical_below_the_bound() {
        let mut h = healthy();
        let other = log(vec![
            batch(0, 1, &["a", "b"]),
            batch(2, 1, &["x"]),
            batch(3, 2, &["d"]),
        ]);
        h.partitions[0].replicas.insert(3, Ok(other));
        let r = check(&h);
        assert!(kinds(&r).contains(&ViolationKind::ReplicaDivergence));
        // Same data in one epoch from two leaders: the epoch check sees it too.
        assert!(kinds(&r).contains(&ViolationKind::EpochConflict));
    }

    #[test]
    fn different_batch_boundaries_are_divergence() {
        let mut h = healthy();
        let other = log(vec![
            batch(0, 1, &["a"]),
            batch(1, 1, &["b", "c"]),
            batch(3, 2, &["d"]),
        ]);
        h.partitions[0].replicas.insert(2, Ok(other));
        let r = check(&h);
        assert!(kinds(&r).contains(&ViolationKind::ReplicaDivergence));
    }

    #[test]
    fn a_lagging_replica_out_of_sync_is_allowed_a_divergent_suffix_of_a_newer_epoch() {
        let mut h = healthy();
        // Node 3 was leader in epoch 1, wrote "z" at 3 which never committed, and was cut off;
        // node 1 became leader in epoch 2 and wrote "d" there. Node 3 is not in sync yet.
        let stale = log(vec![
            batch(0, 1, &["a", "b"]),
            batch(2, 1, &["c"]),
            batch(3, 1, &["z"]),
        ]);
        h.sent.push(sent("z", 2, 0, SendOutcome::Unknown));
        h.partitions[0].replicas.insert(3, Ok(stale));
        h.partitions[0].isr = vec![1, 2];
        let r = check(&h);
        assert!(r.ok(), "{:#?}", r.violations);

        // But if its divergent suffix carried epoch 2 too, two leaders shared an epoch.
        let conflicting = log(vec![
            batch(0, 1, &["a", "b"]),
            batch(2, 1, &["c"]),
            batch(3, 2, &["z"]),
        ]);
        h.partitions[0].replicas.insert(3, Ok(conflicting));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::EpochConflict]);
    }

    #[test]
    fn an_acknowledged_offset_missing_on_an_in_sync_replica_is_flagged() {
        let mut h = healthy();
        let short = log(vec![batch(0, 1, &["a", "b"]), batch(2, 1, &["c"])]);
        h.partitions[0].replicas.insert(2, Ok(short));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::AckNotOnIsr]);
        // Out of the in-sync set it is only lagging.
        h.partitions[0].isr = vec![1, 3];
        assert!(check(&h).ok());
    }

    #[test]
    fn leader_epochs_never_decrease_along_a_log() {
        let mut h = healthy();
        let l = log(vec![
            batch(0, 2, &["a", "b"]),
            batch(2, 1, &["c"]),
            batch(3, 2, &["d"]),
        ]);
        h.partitions[0].readback = Some(Ok(l.records.clone()));
        h.partitions[0].replicas = [(1, Ok(l))].into();
        h.partitions[0].isr = vec![1];
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::EpochDecrease]);
    }

    #[test]
    fn the_read_back_must_match_the_stored_replicas() {
        let mut h = healthy();
        // A broker that serves something other than what it stores: the stored "c" is "e".
        let l = log(vec![
            batch(0, 1, &["a", "b"]),
            batch(2, 1, &["e"]),
            batch(3, 2, &["d"]),
        ]);
        h.partitions[0].replicas = [(1, Ok(l))].into();
        h.partitions[0].isr = vec![1];
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::ReadbackMismatch]);
    }

    #[test]
    fn unreadable_replicas_and_failed_read_backs_are_violations() {
        let mut h = healthy();
        h.partitions[0]
            .replicas
            .insert(2, Err("corrupt batch at byte 90".into()));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::ReplicaUnreadable]);

        let mut h = healthy();
        h.partitions[0].readback = Some(Err("leader not available".into()));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::ReadbackFailed]);
        assert_eq!(r.lost, 4);
    }

    #[test]
    fn committed_offsets_never_go_backwards() {
        let mut h = healthy();
        h.commits.push(commit(3, 140, 150));
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::CommitBackwards]);
        // Concurrent with the commit of 4, a commit of 3 may be applied in either order.
        h.commits.pop();
        h.commits.push(commit(3, 125, 150));
        assert!(check(&h).ok());
    }

    #[test]
    fn an_acknowledged_commit_must_survive() {
        let mut h = healthy();
        h.final_committed = Some([((T.to_string(), 0), 2)].into());
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::CommitLost]);
        h.final_committed = Some(BTreeMap::new());
        assert_eq!(kinds(&check(&h)), vec![ViolationKind::CommitLost]);
    }

    #[test]
    fn a_commit_past_the_end_is_flagged() {
        let mut h = healthy();
        h.commits.push(commit(9, 140, 150));
        h.final_committed = Some([((T.to_string(), 0), 9)].into());
        let r = check(&h);
        assert_eq!(kinds(&r), vec![ViolationKind::CommitBeyondEnd]);
    }
}
