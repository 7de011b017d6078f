//! Model-based property test of the idempotent-producer rules: random appends by a few
//! producers (in order, retries of earlier batches, gaps, epoch bumps, zombies of an old
//! epoch, unknown producers, plain batches, several batches in one append), clean and unclean
//! reopens, power losses, rolls, truncations, damaged and deleted snapshots, run against a
//! [`Log`] on [`MemFs`] and against a plain model: the list of batches in the log, from which
//! the producer state is recomputed from scratch by the rules (Kafka's, written out here
//! independently of `cascade_log::producers`).
//!
//! After every step: each append's answer (offsets, duplicate, or the exact refusal) matched
//! the model's; the log's producer state equals the model's; a follower log that copies the
//! leader with `append_replicated` (truncating when the leader lost or cut a suffix, and
//! crashing now and then itself) has the same state; the snapshot files are whole, at most
//! three, none beyond the end.

mod common;

use cascade_log::format::{parse_snapshot_name, snapshot_path};
use cascade_log::fs::{FileSystem, MemFs};
use cascade_log::{AppendInfo, Clock, Log, LogConfig, LogError, ManualClock, ProducerStates};
use common::crash::raw_batches;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Where `common::open_mem` puts the log.
const DIR: &str = "/data/t-0";
/// Batches remembered per producer for duplicate detection.
const KEPT: usize = 5;

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prod {
    pid: i64,
    epoch: i16,
    seq: i32,
}

#[derive(Debug, Clone)]
struct MBatch {
    base: u64,
    n: u64,
    producer: Option<Prod>,
}

/// One producer's state by the rules: its epoch and every batch of that epoch, oldest first,
/// as (first seq, last seq, first offset, last offset).
#[derive(Debug, Clone, PartialEq, Eq)]
struct MEntry {
    epoch: i16,
    batches: Vec<(i32, i32, u64, u64)>,
}

impl MEntry {
    fn next_seq(&self) -> i32 {
        self.batches.last().map_or(0, |b| b.1 + 1)
    }
}

type MState = BTreeMap<i64, MEntry>;

fn apply_batch(state: &mut MState, p: Prod, first: u64, n: u64) {
    let e = state.entry(p.pid).or_insert(MEntry {
        epoch: p.epoch,
        batches: Vec::new(),
    });
    if e.epoch != p.epoch {
        e.epoch = p.epoch;
        e.batches.clear();
    }
    e.batches
        .push((p.seq, p.seq + n as i32 - 1, first, first + n - 1));
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    OutOfOrder {
        pid: i64,
        epoch: i16,
        expected: i32,
        got: i32,
    },
    Fenced {
        pid: i64,
        epoch: i16,
        current: i16,
    },
    Unknown {
        pid: i64,
        seq: i32,
    },
    Mixed {
        position: usize,
    },
}

enum Verdict {
    New,
    Dup(u64, u64),
}

fn verdict(state: &MState, p: Prod, n: u64) -> Result<Verdict, Refusal> {
    let Some(e) = state.get(&p.pid) else {
        return if p.seq == 0 {
            Ok(Verdict::New)
        } else {
            Err(Refusal::Unknown {
                pid: p.pid,
                seq: p.seq,
            })
        };
    };
    if p.epoch < e.epoch {
        return Err(Refusal::Fenced {
            pid: p.pid,
            epoch: p.epoch,
            current: e.epoch,
        });
    }
    let expected = if p.epoch > e.epoch { 0 } else { e.next_seq() };
    if p.epoch == e.epoch {
        let last = p.seq + n as i32 - 1;
        let recent = &e.batches[e.batches.len().saturating_sub(KEPT)..];
        if let Some(b) = recent.iter().find(|b| b.0 == p.seq && b.1 == last) {
            return Ok(Verdict::Dup(b.2, b.3));
        }
    }
    if p.seq == expected {
        Ok(Verdict::New)
    } else {
        Err(Refusal::OutOfOrder {
            pid: p.pid,
            epoch: p.epoch,
            expected,
            got: p.seq,
        })
    }
}

#[derive(Debug, Clone)]
struct Model {
    batches: Vec<MBatch>,
    start: u64,
    /// Offsets below this are known durable.
    durable: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches.last().map_or(self.start, |b| b.base + b.n)
    }

    /// The producer state by the rules, recomputed from the batches.
    fn state(&self) -> MState {
        let mut s = MState::new();
        for b in &self.batches {
            if let Some(p) = b.producer {
                apply_batch(&mut s, p, b.base, b.n);
            }
        }
        s
    }

    fn is_boundary(&self, o: u64) -> bool {
        o == self.end() || self.batches.iter().any(|b| b.base == o)
    }

    fn truncate(&mut self, end: u64) {
        assert!(self.is_boundary(end) || end == self.start);
        self.batches.retain(|b| b.base + b.n <= end);
        self.durable = self.durable.min(end);
    }

    /// What the log must answer to an append of these batches (producer, record count, bytes).
    fn expect_append(&self, batches: &[(Option<Prod>, u64, usize)]) -> Result<AppendInfo, Refusal> {
        let mut scratch = self.state();
        let mut next = self.end();
        let mut dups: Option<(u64, u64, u64)> = None;
        let mut any_new = false;
        let mut at = 0;
        let mut bytes = 0;
        for &(p, n, len) in batches {
            let v = match p {
                Some(p) => verdict(&scratch, p, n)?,
                None => Verdict::New,
            };
            match v {
                Verdict::New => {
                    if dups.is_some() {
                        return Err(Refusal::Mixed { position: at });
                    }
                    if let Some(p) = p {
                        apply_batch(&mut scratch, p, next, n);
                    }
                    any_new = true;
                    next += n;
                }
                Verdict::Dup(first, last) => {
                    if any_new {
                        return Err(Refusal::Mixed { position: at });
                    }
                    dups = Some(match dups {
                        None => (first, last, last - first + 1),
                        Some((f, l, c)) if first > l => (f, last, c + last - first + 1),
                        Some(_) => return Err(Refusal::Mixed { position: at }),
                    });
                }
            }
            at += len;
            bytes += len;
        }
        Ok(match dups {
            Some((first, last, count)) => AppendInfo {
                base_offset: first,
                last_offset: last,
                record_count: count,
                bytes: 0,
                duplicate: true,
            },
            None => AppendInfo {
                base_offset: self.end(),
                last_offset: next - 1,
                record_count: next - self.end(),
                bytes: bytes as u64,
                duplicate: false,
            },
        })
    }
}

fn refusal_of(e: &LogError) -> Option<Refusal> {
    Some(match *e {
        LogError::OutOfOrderSequence {
            producer_id,
            epoch,
            expected,
            got,
        } => Refusal::OutOfOrder {
            pid: producer_id,
            epoch,
            expected,
            got,
        },
        LogError::ProducerFenced {
            producer_id,
            epoch,
            current,
        } => Refusal::Fenced {
            pid: producer_id,
            epoch,
            current,
        },
        LogError::UnknownProducerId {
            producer_id,
            sequence,
        } => Refusal::Unknown {
            pid: producer_id,
            seq: sequence,
        },
        LogError::MixedDuplicates { position, .. } => Refusal::Mixed { position },
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Operations

/// What one of the producers sends.
#[derive(Debug, Clone)]
enum Send {
    /// The next batch in sequence at the client's epoch.
    Next { n: u64 },
    /// One of the eight newest batches the client generated, again (the answer depends on
    /// whether it was written and is still among the producer's last five in the log).
    Retry { back: Index },
    /// A batch `skip` sequences past the expected one.
    Gap { skip: i32, n: u64 },
    /// A new epoch, starting at 0 (or, wrongly, at `seq`).
    Bump { seq: i32, n: u64 },
    /// A zombie: a batch at an older epoch.
    Zombie { n: u64 },
    /// A producer id never used before, at sequence `seq`.
    Fresh { seq: i32 },
    /// A batch without a producer.
    Plain { n: u64 },
}

#[derive(Debug, Clone)]
enum Op {
    /// One append of one to three batches, from the given clients.
    Append {
        sends: Vec<(usize, Send)>,
        flush: bool,
    },
    ReopenClean,
    ReopenUnclean,
    Crash {
        sync_first: bool,
    },
    Roll,
    Truncate {
        at: Index,
    },
    /// Flips a byte of one snapshot file, then reopens (unclean).
    DamageSnapshot {
        which: Index,
        byte: Index,
    },
    /// Deletes every snapshot, then reopens (unclean).
    DeleteSnapshots,
    /// The follower loses power (unsynced data) and reopens.
    FollowerCrash,
}

fn send() -> impl Strategy<Value = Send> {
    prop_oneof![
        10 => (1u64..4).prop_map(|n| Send::Next { n }),
        6 => any::<Index>().prop_map(|back| Send::Retry { back }),
        2 => (1i32..4, 1u64..3).prop_map(|(skip, n)| Send::Gap { skip, n }),
        1 => (prop_oneof![4 => Just(0i32), 1 => 1i32..3], 1u64..3)
            .prop_map(|(seq, n)| Send::Bump { seq, n }),
        1 => (1u64..3).prop_map(|n| Send::Zombie { n }),
        1 => prop_oneof![Just(0i32), 1i32..5].prop_map(|seq| Send::Fresh { seq }),
        2 => (1u64..3).prop_map(|n| Send::Plain { n }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (
            prop_oneof![
                3 => prop::collection::vec((0usize..3, send()), 1..=1),
                1 => prop::collection::vec((0usize..3, send()), 2..=3),
            ],
            any::<bool>()
        )
            .prop_map(|(sends, flush)| Op::Append { sends, flush }),
        1 => Just(Op::ReopenClean),
        1 => Just(Op::ReopenUnclean),
        2 => any::<bool>().prop_map(|sync_first| Op::Crash { sync_first }),
        2 => Just(Op::Roll),
        3 => any::<Index>().prop_map(|at| Op::Truncate { at }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(which, byte)| Op::DamageSnapshot { which, byte }),
        1 => Just(Op::DeleteSnapshots),
        1 => Just(Op::FollowerCrash),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (400u64..2048, 64u64..1024).prop_map(|(segment_bytes, index_interval_bytes)| LogConfig {
        segment_bytes,
        index_interval_bytes,
        segment_age: None,
        retention_age: None,
        ..LogConfig::default()
    })
}

// ---------------------------------------------------------------------------------------------
// The harness

#[derive(Debug, Clone)]
struct Client {
    pid: i64,
    epoch: i16,
    /// Every producer batch this client generated: (epoch, seq, records).
    sent: Vec<(i16, i32, u64)>,
}

struct Harness {
    fs: MemFs,
    clock: Arc<ManualClock>,
    config: LogConfig,
    log: Option<Log>,
    model: Model,
    follower_fs: MemFs,
    follower: Option<Log>,
    clients: Vec<Client>,
    next_fresh: i64,
    /// Appends answered, by kind, to make sure the generator reaches every case.
    seen: BTreeMap<&'static str, usize>,
    /// Snapshots this test damaged: an older one than the log needed is never read, so it
    /// stays (damaged) until it is pruned or rewritten.
    damaged: BTreeSet<u64>,
}

fn value(tag: u64) -> Vec<u8> {
    tag.to_le_bytes().to_vec()
}

impl Harness {
    fn new(config: LogConfig) -> Self {
        let fs = MemFs::new();
        let follower_fs = MemFs::new();
        let clock = common::clock();
        let log = common::open_mem(&fs, &clock, config.clone()).expect("open");
        let follower = common::open_mem(&follower_fs, &clock, config.clone()).expect("open");
        Self {
            fs,
            clock,
            config,
            log: Some(log),
            model: Model {
                batches: Vec::new(),
                start: 0,
                durable: 0,
            },
            follower_fs,
            follower: Some(follower),
            clients: (0..3)
                .map(|i| Client {
                    pid: 10 + i,
                    epoch: 0,
                    sent: Vec::new(),
                })
                .collect(),
            next_fresh: 1000,
            seen: BTreeMap::new(),
            damaged: BTreeSet::new(),
        }
    }

    fn log(&mut self) -> &mut Log {
        self.log.as_mut().expect("open")
    }

    fn reopen(&mut self) {
        assert!(self.log.is_none());
        self.log =
            Some(common::open_mem(&self.fs, &self.clock, self.config.clone()).expect("reopen"));
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { sends, flush } => self.append(sends, *flush),
            Op::ReopenClean => {
                self.log.take().unwrap().close().expect("close");
                self.reopen();
                self.model.durable = self.model.end();
            }
            Op::ReopenUnclean => {
                drop(self.log.take());
                self.reopen();
                self.model.durable = self.model.end();
            }
            Op::Crash { sync_first } => self.crash(*sync_first),
            Op::Roll => {
                self.log().roll().expect("roll");
                self.model.durable = self.model.end();
            }
            Op::Truncate { at } => {
                let (start, end) = (self.model.start, self.model.end());
                let target = start + at.index((end - start + 1) as usize) as u64;
                let got = self.log().truncate_to(target).expect("truncate");
                let cut = if target >= end {
                    end
                } else {
                    let b = self
                        .model
                        .batches
                        .iter()
                        .find(|b| b.base <= target && target < b.base + b.n)
                        .expect("a batch holds the target");
                    b.base
                };
                assert_eq!(got, cut, "truncate_to({target})");
                self.model.truncate(cut);
            }
            Op::DamageSnapshot { which, byte } => {
                let snaps = snapshots(&self.fs);
                if !snaps.is_empty() {
                    let o = snaps[which.index(snaps.len())];
                    let path = snapshot_path(Path::new(DIR), o);
                    let mut b = self.fs.read_file(&path).unwrap();
                    let i = byte.index(b.len());
                    b[i] ^= 0x04;
                    self.fs.write_file(&path, &b).unwrap();
                    self.damaged.insert(o);
                }
                drop(self.log.take());
                self.reopen();
                self.model.durable = self.model.end();
            }
            Op::DeleteSnapshots => {
                for o in snapshots(&self.fs) {
                    self.fs
                        .remove_file(&snapshot_path(Path::new(DIR), o))
                        .unwrap();
                }
                drop(self.log.take());
                self.reopen();
                self.model.durable = self.model.end();
            }
            Op::FollowerCrash => {
                drop(self.follower.take());
                self.follower_fs.crash();
                self.follower = Some(
                    common::open_mem(&self.follower_fs, &self.clock, self.config.clone())
                        .expect("reopen follower"),
                );
            }
        }
    }

    /// The batch a client sends, or `None` to send a plain one instead.
    fn make(&mut self, client: usize, s: &Send) -> (Option<Prod>, u64) {
        let state = self.model.state();
        let c = &mut self.clients[client];
        let next_at = |epoch: i16| match state.get(&c.pid) {
            Some(e) if e.epoch == epoch => e.next_seq(),
            _ => 0,
        };
        let (p, n) = match *s {
            Send::Next { n } => (
                Prod {
                    pid: c.pid,
                    epoch: c.epoch,
                    seq: next_at(c.epoch),
                },
                n,
            ),
            Send::Retry { ref back } => {
                if c.sent.is_empty() {
                    return (None, 1);
                }
                // Mostly recent batches (the last five are duplicates, if they were written
                // and not cut off since), sometimes older ones.
                let (epoch, seq, n) = c.sent[c.sent.len() - 1 - back.index(c.sent.len().min(8))];
                (
                    Prod {
                        pid: c.pid,
                        epoch,
                        seq,
                    },
                    n,
                )
            }
            Send::Gap { skip, n } => (
                Prod {
                    pid: c.pid,
                    epoch: c.epoch,
                    seq: next_at(c.epoch) + skip,
                },
                n,
            ),
            Send::Bump { seq, n } => {
                c.epoch += 1;
                (
                    Prod {
                        pid: c.pid,
                        epoch: c.epoch,
                        seq,
                    },
                    n,
                )
            }
            Send::Zombie { n } => {
                if c.epoch == 0 {
                    return (None, n);
                }
                (
                    Prod {
                        pid: c.pid,
                        epoch: c.epoch - 1,
                        seq: 0,
                    },
                    n,
                )
            }
            Send::Fresh { seq } => {
                self.next_fresh += 1;
                return (
                    Some(Prod {
                        pid: self.next_fresh,
                        epoch: 0,
                        seq,
                    }),
                    1,
                );
            }
            Send::Plain { n } => return (None, n),
        };
        c.sent.push((p.epoch, p.seq, n));
        (Some(p), n)
    }

    fn append(&mut self, sends: &[(usize, Send)], flush: bool) {
        let mut buf = Vec::new();
        let mut specs = Vec::new();
        for (client, s) in sends {
            let (p, n) = self.make(*client, s);
            let mut b = match p {
                Some(p) => cascade_log::record::BatchBuilder::new().producer(p.pid, p.epoch, p.seq),
                None => cascade_log::record::BatchBuilder::new(),
            };
            let vals: Vec<Vec<u8>> = (0..n).map(|i| value(buf.len() as u64 + i)).collect();
            for v in &vals {
                b.push(cascade_log::record::Record {
                    timestamp: 1_000,
                    key: None,
                    value: Some(v),
                    headers: &[],
                });
            }
            let bytes = b.finish();
            specs.push((p, n, bytes.len()));
            buf.extend_from_slice(&bytes);
        }
        let expected = self.model.expect_append(&specs);
        let end = self.model.end();
        let got = self.log().append(&mut buf);
        match (&expected, got) {
            (Ok(want), Ok(info)) => {
                assert_eq!(&info, want, "append of {specs:?}");
                if info.duplicate {
                    *self.seen.entry("duplicate").or_default() += 1;
                } else {
                    *self.seen.entry("appended").or_default() += 1;
                    let mut base = end;
                    for &(p, n, _) in &specs {
                        self.model.batches.push(MBatch {
                            base,
                            n,
                            producer: p,
                        });
                        base += n;
                    }
                }
            }
            (Err(want), Err(e)) => {
                assert_eq!(
                    refusal_of(&e).as_ref(),
                    Some(want),
                    "append of {specs:?}: {e}"
                );
                *self
                    .seen
                    .entry(match want {
                        Refusal::OutOfOrder { .. } => "out of order",
                        Refusal::Fenced { .. } => "fenced",
                        Refusal::Unknown { .. } => "unknown",
                        Refusal::Mixed { .. } => "mixed",
                    })
                    .or_default() += 1;
            }
            (want, got) => panic!("append of {specs:?}: expected {want:?}, got {got:?}"),
        }
        assert_eq!(self.log().end_offset(), self.model.end());
        if flush {
            self.log().flush_if_due().expect("flush");
            self.model.durable = self.model.end();
        }
    }

    fn crash(&mut self, sync_first: bool) {
        let end = self.model.end();
        if sync_first {
            self.log().sync().expect("sync");
            self.model.durable = end;
        }
        let durable = self.model.durable.max(self.log().durable_offset());
        drop(self.log.take());
        self.fs.crash();
        self.reopen();
        let new_end = self.log().end_offset();
        assert!(
            durable <= new_end && new_end <= end,
            "after a crash the log ends at {new_end}: durable was {durable}, end {end}"
        );
        self.model.truncate(new_end);
        self.model.durable = new_end;
    }

    /// Brings the follower to the leader's end, as replication would: a suffix the leader no
    /// longer has is cut, the rest copied with `append_replicated`.
    fn replicate(&mut self) {
        let leader = self.log.as_ref().unwrap();
        let follower = self.follower.as_mut().unwrap();
        if follower.end_offset() > leader.end_offset() {
            let end = leader.end_offset();
            assert_eq!(follower.truncate_to(end).expect("follower truncate"), end);
        }
        // A leader cut followed by new appends in the same step cannot happen: every step
        // ends here.
        let batches = raw_batches(&leader.reader(), follower.end_offset());
        for chunk in batches.chunks(2) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|(_, b)| b.clone()).collect();
            follower
                .append_replicated(&bytes)
                .expect("append_replicated");
        }
        assert_eq!(follower.end_offset(), leader.end_offset());
    }

    fn check(&mut self) {
        self.replicate();
        let log = self.log.as_ref().unwrap();
        let end = self.model.end();
        assert_eq!(log.end_offset(), end);
        let model = self.model.state();
        let got = log.producer_states();
        let now = self.clock.now_ms();
        assert_eq!(
            got.len(),
            model.len(),
            "producers: {got:?} vs model {model:?}"
        );
        for (pid, e) in got.iter() {
            let m = model
                .get(&pid)
                .unwrap_or_else(|| panic!("producer {pid} is not in the model"));
            assert_eq!(e.epoch, m.epoch, "epoch of {pid}");
            let kept: Vec<_> = e
                .batches
                .iter()
                .map(|b| (b.first_seq, b.last_seq, b.first_offset, b.last_offset))
                .collect();
            assert_eq!(
                kept,
                m.batches[m.batches.len().saturating_sub(KEPT)..],
                "kept batches of {pid}"
            );
            assert_eq!(e.last_seen_ms, now);
        }
        let follower = self.follower.as_ref().unwrap();
        assert_eq!(follower.producer_states(), got, "the follower's state");
        for (fs, leader) in [(&self.fs, true), (&self.follower_fs, false)] {
            let snaps = snapshots(fs);
            assert!(snaps.len() <= 3, "{snaps:?}");
            for &o in &snaps {
                assert!(o <= end, "snapshot {o} beyond the end {end}");
                let bytes = fs.read_file(&snapshot_path(Path::new(DIR), o)).unwrap();
                match ProducerStates::decode(&bytes) {
                    Some((covers, _)) => {
                        assert_eq!(covers, o);
                        if leader {
                            self.damaged.remove(&o);
                        }
                    }
                    None => assert!(
                        leader && self.damaged.contains(&o),
                        "snapshot {o} does not decode"
                    ),
                }
            }
            if leader {
                self.damaged.retain(|o| snaps.contains(o));
            }
        }
    }
}

/// Snapshot offsets in a log directory; no temporary file may be left in an open log's.
fn snapshots(fs: &MemFs) -> Vec<u64> {
    let mut v: Vec<u64> = fs
        .read_dir(Path::new(DIR))
        .unwrap()
        .iter()
        .filter_map(|p| {
            let (o, tmp) = parse_snapshot_name(p.file_name()?.to_str()?)?;
            assert!(!tmp, "temporary snapshot {p:?}");
            Some(o)
        })
        .collect();
    v.sort_unstable();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn producer_state_agrees_with_the_rules(
        config in config(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut h = Harness::new(config);
        h.check();
        for op in &ops {
            h.apply(op);
            h.check();
        }
        h.apply(&Op::ReopenClean);
        h.check();
    }
}

/// The generator reaches every kind of answer (a long fixed run, so the property test is not
/// silently testing only the easy cases).
#[test]
fn the_generator_reaches_every_answer() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = prop::collection::vec(op(), 400)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let mut h = Harness::new(common::small_config());
    for op in &ops {
        h.apply(op);
        h.check();
    }
    eprintln!("answers: {:?}", h.seen);
    for kind in [
        "appended",
        "duplicate",
        "out of order",
        "fenced",
        "unknown",
        "mixed",
    ] {
        assert!(
            h.seen.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} answer in {:?}",
            h.seen
        );
    }
}
