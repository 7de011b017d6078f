//! Idempotent producers at the level of the whole log: duplicates are answered with the
//! original offsets and not written, refused batches write nothing, and the producer state is
//! the same after a crash (with or without snapshots, and after a torn tail), a clean close, a
//! roll, a truncation (a retry of a batch above the cut is appended again), retention, on a
//! follower fed with `append_replicated`, with a damaged snapshot, and with snapshots beyond
//! the recovered end; idle producers expire.

mod common;

use cascade_log::format::{FILE_HEADER_LEN, FileKind, parse_snapshot_name, snapshot_path};
use cascade_log::fs::{FileSystem, MemFs};
use cascade_log::record::BatchHeader;
use cascade_log::{
    AppendInfo, BatchMeta, CorruptionPolicy, Log, LogConfig, LogError, ManualClock, ProducerStates,
};
use common::crash::*;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn p(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    producer_batch(pid, epoch, seq, n, seq as u8)
}

fn append(log: &mut Log, mut bytes: Vec<u8>) -> AppendInfo {
    log.append(&mut bytes).expect("append")
}

/// Every file of the log directory with its contents.
fn dir_image(fs: &MemFs) -> BTreeMap<PathBuf, Vec<u8>> {
    fs.read_dir(mem_dir())
        .unwrap()
        .into_iter()
        .map(|p| {
            let b = fs.read_file(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Offsets of the snapshot files in the directory (temporary files are reported too, so a
/// test sees them).
fn snapshots_on_disk(fs: &MemFs) -> Vec<u64> {
    let mut v: Vec<u64> = fs
        .read_dir(mem_dir())
        .unwrap()
        .iter()
        .filter_map(|p| {
            let (o, tmp) = parse_snapshot_name(p.file_name()?.to_str()?)?;
            assert!(!tmp, "temporary snapshot {p:?} left behind");
            Some(o)
        })
        .collect();
    v.sort_unstable();
    v
}

fn read_snapshot(fs: &MemFs, offset: u64) -> Option<(u64, ProducerStates)> {
    ProducerStates::decode(&fs.read_file(&snapshot_path(mem_dir(), offset)).ok()?)
}

fn remove_snapshots(fs: &MemFs, keep: impl Fn(u64) -> bool) {
    for o in snapshots_on_disk(fs) {
        if !keep(o) {
            fs.remove_file(&snapshot_path(mem_dir(), o)).unwrap();
        }
    }
}

fn meta(first_seq: i32, n: u64, first_offset: u64) -> BatchMeta {
    BatchMeta {
        first_seq,
        last_seq: first_seq + n as i32 - 1,
        first_offset,
        last_offset: first_offset + n - 1,
    }
}

fn dup(orig: AppendInfo) -> AppendInfo {
    AppendInfo {
        bytes: 0,
        duplicate: true,
        ..orig
    }
}

/// A producer as a client sees it: its epoch, next sequence, and what it sent and where it
/// landed.
#[derive(Debug, Clone)]
struct Client {
    pid: i64,
    epoch: i16,
    next_seq: i32,
    sent: Vec<(i16, i32, usize, AppendInfo)>,
}

/// A deterministic mix of producer batches (four producers, epoch bumps, retries of recent
/// batches) and plain batches large enough to roll small segments. Every append must succeed,
/// and every retry must be answered as a duplicate with the original offsets.
fn workload(log: &mut Log, clients: &mut Vec<Client>, rng: &mut Rng, steps: usize) {
    if clients.is_empty() {
        *clients = (1..=4)
            .map(|pid| Client {
                pid,
                epoch: 0,
                next_seq: 0,
                sent: Vec::new(),
            })
            .collect();
    }
    for _ in 0..steps {
        let c = &mut clients[rng.range(0, 4) as usize];
        match rng.range(0, 10) {
            0 => {
                append(log, sized_batch(1, 200, 7, 0));
            }
            1 if !c.sent.is_empty() => {
                // A retry of one of the last five batches of the current epoch.
                let cur: Vec<_> = c.sent.iter().filter(|s| s.0 == c.epoch).collect();
                if cur.is_empty() {
                    continue;
                }
                let back = rng.range(0, cur.len().min(5) as u64) as usize;
                let &(epoch, seq, n, info) = cur[cur.len() - 1 - back];
                let end = log.end_offset();
                let got = append(log, p(c.pid, epoch, seq, n));
                assert_eq!(got, dup(info), "retry of producer {} seq {seq}", c.pid);
                assert_eq!(log.end_offset(), end);
            }
            2 => {
                c.epoch += 1;
                c.next_seq = 0;
            }
            _ => {
                let n = rng.range(1, 4) as usize;
                let info = append(log, p(c.pid, c.epoch, c.next_seq, n));
                assert!(!info.duplicate);
                c.sent.push((c.epoch, c.next_seq, n, info));
                c.next_seq += n as i32;
            }
        }
    }
}

#[test]
fn a_duplicate_is_answered_with_the_original_offsets_and_not_written() {
    let fs = MemFs::new();
    let clock = clock();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    let a = append(&mut log, p(1, 0, 0, 3));
    assert_eq!((a.base_offset, a.last_offset, a.duplicate), (0, 2, false));
    append(&mut log, batch(&["plain"], 0));
    let b = append(&mut log, p(1, 0, 3, 2));
    append(&mut log, p(2, 0, 0, 1));
    let c = append(&mut log, p(1, 0, 5, 1));
    assert_eq!((b.base_offset, c.base_offset), (4, 7));
    let end = log.end_offset();
    let image = dir_image(&fs);
    let state = log.producer_states().clone();
    let values_before = read_all(&log.reader(), 0);
    for (retry, orig) in [(p(1, 0, 0, 3), a), (p(1, 0, 3, 2), b), (p(1, 0, 5, 1), c)] {
        let got = append(&mut log, retry);
        assert_eq!(
            got,
            AppendInfo {
                base_offset: orig.base_offset,
                last_offset: orig.last_offset,
                record_count: orig.record_count,
                bytes: 0,
                duplicate: true,
            }
        );
        assert_eq!(log.end_offset(), end, "nothing appended");
        assert_eq!(log.reader().end_offset(), end);
        assert_eq!(dir_image(&fs), image, "nothing written");
        assert_eq!(log.producer_states(), &state, "nothing recorded");
    }
    assert_eq!(read_all(&log.reader(), 0), values_before);

    // Two batches appended together, retried together: one answer spanning both.
    let two = append(&mut log, [p(3, 0, 0, 2), p(3, 0, 2, 2)].concat());
    assert_eq!((two.base_offset, two.last_offset), (end, end + 3));
    let again = append(&mut log, [p(3, 0, 0, 2), p(3, 0, 2, 2)].concat());
    assert_eq!(again, dup(two));
    // The producer goes on after the retries.
    let next = append(&mut log, p(1, 0, 6, 1));
    assert_eq!(next.base_offset, end + 4);

    // After a crash the retries are still recognised, with the same offsets.
    drop(log);
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(append(&mut log, p(1, 0, 3, 2)), dup(b));
    assert_eq!(append(&mut log, p(3, 0, 2, 2)).base_offset, end + 2);
    assert_eq!(log.end_offset(), end + 5);
}

#[test]
fn refused_batches_write_nothing() {
    let fs = MemFs::new();
    let clock = clock();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    append(&mut log, p(1, 5, 0, 2));
    append(&mut log, p(1, 5, 2, 1));
    let end = log.end_offset();
    let image = dir_image(&fs);
    let state = log.producer_states().clone();
    let plain = batch(&["plain"], 0);
    let ooo = |expected, got| {
        move |e: &LogError| {
            matches!(e, LogError::OutOfOrderSequence { producer_id: 1, epoch: 5, expected: x, got: y }
                if *x == expected && *y == got)
        }
    };
    type Check = Box<dyn Fn(&LogError) -> bool>;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("gap", p(1, 5, 4, 1), Box::new(ooo(3, 4))),
        ("overlap", p(1, 5, 1, 2), Box::new(ooo(3, 1))),
        (
            "old epoch",
            p(1, 4, 3, 1),
            Box::new(|e| {
                matches!(
                    e,
                    LogError::ProducerFenced {
                        producer_id: 1,
                        epoch: 4,
                        current: 5
                    }
                )
            }),
        ),
        (
            "new epoch not at 0",
            p(1, 6, 3, 1),
            Box::new(|e| {
                matches!(
                    e,
                    LogError::OutOfOrderSequence {
                        producer_id: 1,
                        epoch: 6,
                        expected: 0,
                        got: 3
                    }
                )
            }),
        ),
        (
            "unknown producer",
            p(2, 0, 7, 1),
            Box::new(|e| {
                matches!(
                    e,
                    LogError::UnknownProducerId {
                        producer_id: 2,
                        sequence: 7
                    }
                )
            }),
        ),
        (
            "producer id below -1",
            producer_batch(-2, 0, 0, 1, 0),
            Box::new(|e| matches!(e, LogError::InvalidProducerFields { position: 0, .. })),
        ),
        (
            "negative epoch",
            producer_batch(3, -1, 0, 1, 0),
            Box::new(|e| matches!(e, LogError::InvalidProducerFields { position: 0, .. })),
        ),
        (
            "negative sequence",
            producer_batch(3, 0, -1, 1, 0),
            Box::new(|e| matches!(e, LogError::InvalidProducerFields { position: 0, .. })),
        ),
        (
            "bad fields in the second batch",
            [plain.clone(), producer_batch(-5, 0, 0, 1, 0)].concat(),
            Box::new({
                let at = plain.len();
                move |e| matches!(e, LogError::InvalidProducerFields { position, .. } if *position == at)
            }),
        ),
        (
            "good batches, then a gap",
            [plain.clone(), p(1, 5, 3, 1), p(1, 5, 5, 1)].concat(),
            Box::new(|e| {
                matches!(
                    e,
                    LogError::OutOfOrderSequence {
                        expected: 4,
                        got: 5,
                        ..
                    }
                )
            }),
        ),
        (
            "a new producer's second batch leaves a gap after its first",
            [p(4, 0, 0, 1), p(4, 0, 2, 1)].concat(),
            Box::new(|e| {
                matches!(
                    e,
                    LogError::OutOfOrderSequence {
                        producer_id: 4,
                        expected: 1,
                        got: 2,
                        ..
                    }
                )
            }),
        ),
        (
            "a retry then a new batch",
            [p(1, 5, 2, 1), p(1, 5, 3, 1)].concat(),
            Box::new({
                let at = p(1, 5, 2, 1).len();
                move |e| matches!(e, LogError::MixedDuplicates { position, .. } if *position == at)
            }),
        ),
        (
            "a new batch then a retry of it",
            [p(1, 5, 3, 1), p(1, 5, 3, 1)].concat(),
            Box::new(|e| matches!(e, LogError::MixedDuplicates { .. })),
        ),
        (
            "a retry then a plain batch",
            [p(1, 5, 2, 1), plain.clone()].concat(),
            Box::new(|e| matches!(e, LogError::MixedDuplicates { .. })),
        ),
        (
            "retries out of order",
            [p(1, 5, 2, 1), p(1, 5, 0, 2)].concat(),
            Box::new(|e| matches!(e, LogError::MixedDuplicates { .. })),
        ),
    ];
    for (name, mut bytes, check) in cases {
        let err = log.append(&mut bytes).expect_err(name);
        assert!(check(&err), "{name}: {err:?}");
        assert_eq!(log.end_offset(), end, "{name}");
        assert_eq!(dir_image(&fs), image, "{name}: nothing written");
        assert_eq!(log.producer_states(), &state, "{name}: nothing recorded");
    }
    // The messages say who, at which epoch, what was expected and what came.
    let msg = log.append(&mut p(1, 5, 4, 1)).unwrap_err().to_string();
    for part in ["producer 1", "epoch 5", "expected sequence 3", "got 4"] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    let msg = log.append(&mut p(1, 4, 3, 1)).unwrap_err().to_string();
    for part in ["producer 1", "epoch 4", "current epoch 5"] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    let msg = log.append(&mut p(9, 0, 3, 1)).unwrap_err().to_string();
    for part in ["producer id 9", "sequence 3"] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }

    // What is in sequence is accepted: several batches of one producer in one append too.
    assert_eq!(append(&mut log, p(1, 5, 3, 1)).base_offset, end);
    let two = append(&mut log, [p(4, 0, 0, 1), p(4, 0, 1, 2), plain].concat());
    assert_eq!((two.base_offset, two.last_offset), (end + 1, end + 4));
    let e = log.producer_states().get(4).unwrap();
    assert_eq!(
        e.batches.iter().copied().collect::<Vec<_>>(),
        [meta(0, 1, end + 1), meta(1, 2, end + 2)]
    );
    // A new epoch starting at 0 is accepted, and fences the old one.
    append(&mut log, p(1, 6, 0, 1));
    assert!(matches!(
        log.append(&mut p(1, 5, 4, 1)),
        Err(LogError::ProducerFenced { current: 6, .. })
    ));
}

/// Builds a log of several segments with a varied producer history; returns its clients.
fn build(
    fs: &MemFs,
    clock: &Arc<ManualClock>,
    config: &LogConfig,
    seed: u64,
) -> (Log, Vec<Client>) {
    let mut log = open_mem(fs, clock, config.clone()).unwrap();
    let mut clients = Vec::new();
    let mut rng = Rng(seed);
    workload(&mut log, &mut clients, &mut rng, 150);
    assert!(log.segment_count() >= 4, "{} segments", log.segment_count());
    let s = log.producer_states();
    assert_eq!(s.len(), 4);
    assert!(s.iter().any(|(_, e)| e.batches.len() == 5 && e.epoch > 0));
    (log, clients)
}

#[test]
fn state_is_rebuilt_after_a_crash_with_and_without_snapshots() {
    for seed in [1, 2, 3] {
        let fs = MemFs::new();
        let clock = clock();
        let config = small_config();
        let (log, clients) = build(&fs, &clock, &config, seed);
        let state = log.producer_states().clone();
        let end = log.end_offset();
        drop(log);
        let snaps = snapshots_on_disk(&fs);
        assert!(
            !snaps.is_empty() && snaps.len() <= 3,
            "snapshots at rolls: {snaps:?}"
        );
        for &o in &snaps {
            let (covers, _) = read_snapshot(&fs, o).expect("a whole snapshot");
            assert_eq!(covers, o);
        }

        // A crash (no close) with the snapshots of the rolls.
        let log = open_mem(&fs, &clock, config.clone()).unwrap();
        assert_eq!(log.end_offset(), end);
        assert_eq!(log.producer_states(), &state, "seed {seed}: from snapshots");
        drop(log);

        // Only the oldest snapshot: more of the log is replayed.
        let oldest = snaps[0];
        remove_snapshots(&fs, |o| o == oldest);
        let log = open_mem(&fs, &clock, config.clone()).unwrap();
        assert_eq!(log.producer_states(), &state, "seed {seed}: from {oldest}");
        drop(log);

        // No snapshot at all: replayed from the log start.
        remove_snapshots(&fs, |_| false);
        let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
        assert_eq!(log.producer_states(), &state, "seed {seed}: from the log");

        // Power loss after a sync: everything synced is there, state included.
        let mut clients = clients;
        workload(&mut log, &mut clients, &mut Rng(seed + 100), 40);
        let state = log.producer_states().clone();
        log.sync().unwrap();
        drop(log);
        fs.crash();
        let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
        assert_eq!(
            log.producer_states(),
            &state,
            "seed {seed}: after power loss"
        );
        // And the clients carry on where they were, retries included.
        workload(&mut log, &mut clients, &mut Rng(seed + 200), 40);
    }
}

#[test]
fn a_torn_tail_takes_its_batch_out_of_the_state() {
    // Cut by hand after a clean close: the close's snapshot covers the torn batch.
    let fs = MemFs::new();
    let clock = clock();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    append(&mut log, p(1, 0, 0, 2));
    append(&mut log, p(2, 0, 0, 1));
    let before = log.producer_states().clone();
    let last = append(&mut log, p(1, 0, 2, 3));
    assert_eq!(last.base_offset, 3);
    log.close().unwrap();
    assert_eq!(snapshots_on_disk(&fs), [6]);
    let path = cascade_log::format::segment_path(mem_dir(), 0, FileKind::Log);
    let bytes = fs.read_file(&path).unwrap();
    let torn_at = bytes.len() - last.bytes as usize / 2;
    fs.write_file(&path, &bytes[..torn_at]).unwrap();
    // The close made the batch durable, so cutting it is damage, which recovery refuses
    // (crash_active_damage.rs); without a recovery point (lost, or a log from before them)
    // the cut batch is taken for a torn tail, which is what this tests.
    fs.remove_file(&mem_dir().join(cascade_log::format::RECOVERY_POINT))
        .unwrap();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), 3);
    assert_eq!(
        log.producer_states(),
        &before,
        "the torn batch is not in the state"
    );
    assert_eq!(
        snapshots_on_disk(&fs),
        Vec::<u64>::new(),
        "the snapshot at 6 is gone"
    );
    // The producer's retry of the torn batch is appended, not answered as a duplicate.
    let again = append(&mut log, p(1, 0, 2, 3));
    assert_eq!((again.base_offset, again.duplicate), (3, false));
    assert_eq!(values(&log.reader(), 3).len(), 3);

    // Lost to a power loss: the unsynced batch goes, and with it its place in the state.
    let fs = MemFs::new();
    let mut log = open_mem(&fs, &clock, small_config()).unwrap();
    let mut clients = Vec::new();
    workload(&mut log, &mut clients, &mut Rng(9), 60);
    log.sync().unwrap();
    let synced = log.producer_states().clone();
    let c = &clients[0];
    let torn = append(&mut log, p(c.pid, c.epoch, c.next_seq, 2));
    assert_ne!(log.producer_states(), &synced);
    drop(log);
    fs.crash();
    let mut log = open_mem(&fs, &clock, small_config()).unwrap();
    assert_eq!(log.end_offset(), torn.base_offset);
    assert_eq!(log.producer_states(), &synced);
    assert!(
        snapshots_on_disk(&fs)
            .iter()
            .all(|&o| o <= torn.base_offset)
    );
    let again = append(&mut log, p(c.pid, c.epoch, c.next_seq, 2));
    assert_eq!(
        (again.base_offset, again.duplicate),
        (torn.base_offset, false)
    );
}

#[test]
fn close_and_roll_save_the_state_and_reopen_finds_it() {
    let fs = MemFs::new();
    let clock = clock();
    let config = small_config();
    let (mut log, _) = build(&fs, &clock, &config, 4);
    let state = log.producer_states().clone();
    // A roll saves the state at the new segment's base.
    log.roll().unwrap();
    let base = log.end_offset();
    assert_eq!(read_snapshot(&fs, base), Some((base, state.clone())));
    assert!(snapshots_on_disk(&fs).len() <= 3);
    // A clean close saves it at the end; a reopen starts from it.
    append(&mut log, p(9, 0, 0, 1));
    let state = log.producer_states().clone();
    let end = log.end_offset();
    log.close().unwrap();
    assert_eq!(read_snapshot(&fs, end), Some((end, state.clone())));
    let snaps = snapshots_on_disk(&fs);
    assert_eq!((snaps.len(), snaps.last()), (3, Some(&end)), "{snaps:?}");
    let log = open_mem(&fs, &clock, config.clone()).unwrap();
    assert_eq!(log.producer_states(), &state);
    log.close().unwrap();
    // Rewriting the end's snapshot on a close without appends changes nothing.
    assert_eq!(snapshots_on_disk(&fs), snaps);
    let log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(log.producer_states(), &state);
}

#[test]
fn truncation_into_a_producer_run_rebuilds_the_state_at_the_cut() {
    let fs = MemFs::new();
    let clock = clock();
    let config = small_config();
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    // Producer 1 sends ten batches of two records, with plain batches between that roll
    // segments; producer 2 moves to epoch 1 late in the run.
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(append(&mut log, p(1, 0, 2 * i, 2)));
        append(&mut log, sized_batch(1, 150, i as u8, 0));
        if i == 2 {
            append(&mut log, p(2, 0, 0, 1));
        }
        if i == 7 {
            append(&mut log, p(2, 1, 0, 1));
        }
    }
    assert!(log.segment_count() >= 3);
    let k = 6;
    let cut = sent[k].base_offset;
    // Into the middle of batch k: the cut falls at its start.
    assert_eq!(log.truncate_to(cut + 1).unwrap(), cut);
    let e = log.producer_states().get(1).unwrap();
    let expected: Vec<BatchMeta> = (k - 5..k)
        .map(|i| meta(2 * i as i32, 2, sent[i].base_offset))
        .collect();
    assert_eq!(e.batches.iter().copied().collect::<Vec<_>>(), expected);
    assert_eq!(e.next_seq(), 2 * k as i32);
    assert_eq!(
        log.producer_states().get(2).unwrap().epoch,
        0,
        "epoch 1 was cut off"
    );
    assert!(
        snapshots_on_disk(&fs).iter().all(|&o| o <= cut),
        "{:?}",
        snapshots_on_disk(&fs)
    );
    let state = log.producer_states().clone();

    // A retry of a batch above the cut is appended again; one below is still a duplicate.
    assert!(matches!(
        log.append(&mut p(1, 0, 2 * k as i32 + 2, 2)),
        Err(LogError::OutOfOrderSequence { expected, .. }) if expected == 2 * k as i32
    ));
    let again = append(&mut log, p(1, 0, 2 * k as i32, 2));
    assert_eq!((again.base_offset, again.duplicate), (cut, false));
    assert_eq!(
        append(&mut log, p(1, 0, 2 * (k as i32 - 1), 2)),
        dup(sent[k - 1])
    );
    // Producer 2 is back at epoch 0: its epoch-0 batches go on, not fenced.
    assert!(!append(&mut log, p(2, 0, 1, 1)).duplicate);
    let after = log.producer_states().clone();
    assert_ne!(after, state);

    // The rebuilt state is what a crash-reopen finds too.
    drop(log);
    let log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(log.producer_states(), &after);
}

/// Copies the leader's batches from the follower's end to the leader's end, in chunks.
fn replicate(leader: &Log, follower: &mut Log) {
    let from = follower.end_offset();
    let batches = raw_batches(&leader.reader(), from);
    for chunk in batches.chunks(3) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|(_, b)| b.clone()).collect();
        let info = follower.append_replicated(&bytes).unwrap();
        assert!(!info.duplicate);
    }
    assert_eq!(follower.end_offset(), leader.end_offset());
}

#[test]
fn a_follower_fed_by_append_replicated_has_the_leaders_state() {
    let leader_fs = MemFs::new();
    let clock = clock();
    let config = small_config();
    let mut leader = open_mem(&leader_fs, &clock, config.clone()).unwrap();
    let follower_fs = MemFs::new();
    let mut follower = open_mem(&follower_fs, &clock, config.clone()).unwrap();
    let mut clients = Vec::new();
    let mut rng = Rng(17);
    for round in 0..6 {
        workload(&mut leader, &mut clients, &mut rng, 30);
        // Refused appends on the leader leave nothing to replicate.
        let c = &clients[0];
        assert!(
            leader
                .append(&mut p(c.pid, c.epoch, c.next_seq + 3, 1))
                .is_err()
        );
        replicate(&leader, &mut follower);
        assert_eq!(
            follower.producer_states(),
            leader.producer_states(),
            "round {round}"
        );
        match round {
            1 => {
                // The follower restarts (a crash) and catches up.
                drop(follower);
                follower = open_mem(&follower_fs, &clock, config.clone()).unwrap();
                assert_eq!(follower.producer_states(), leader.producer_states());
            }
            3 => {
                // A divergent suffix: both cut at the same place.
                let cut = leader.end_offset() - 10;
                let at = leader.truncate_to(cut).unwrap();
                assert_eq!(follower.truncate_to(cut).unwrap(), at);
                assert_eq!(follower.producer_states(), leader.producer_states());
                // The clients' view: whatever was cut is sent again.
                for c in clients.iter_mut() {
                    c.sent.retain(|s| s.3.last_offset < at);
                    let e = leader.producer_states().get(c.pid);
                    if let Some(e) = e {
                        c.epoch = e.epoch;
                        c.next_seq = e.next_seq();
                    } else {
                        (c.epoch, c.next_seq) = (0, 0);
                    }
                }
            }
            _ => {}
        }
    }
    // The follower becomes leader: the old leader's batches are duplicates there, with the
    // same offsets.
    let c = clients.iter().find(|c| !c.sent.is_empty()).unwrap();
    let &(epoch, seq, n, info) = c.sent.last().unwrap();
    if epoch == c.epoch {
        assert_eq!(append(&mut follower, p(c.pid, epoch, seq, n)), dup(info));
    }
    assert_eq!(
        append(&mut follower, p(c.pid, c.epoch, c.next_seq, 1)).base_offset,
        leader.end_offset()
    );
}

/// Captures the messages of WARN events, for the test that a damaged snapshot is reported.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut f = Fields(String::new());
            event.record(&mut f);
            self.0.lock().unwrap().push(f.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn open_capturing(fs: &MemFs, clock: &Arc<ManualClock>, config: LogConfig) -> (Log, Vec<String>) {
    let w = Warnings::default();
    let log = tracing::subscriber::with_default(w.clone(), || open_mem(fs, clock, config).unwrap());
    let got = w.0.lock().unwrap().clone();
    (log, got)
}

#[test]
fn a_damaged_snapshot_is_ignored_with_a_warning() {
    let fs = MemFs::new();
    let clock = clock();
    let config = small_config();
    let (log, _) = build(&fs, &clock, &config, 5);
    let state = log.producer_states().clone();
    let end = log.end_offset();
    log.close().unwrap();
    let snaps = snapshots_on_disk(&fs);
    assert_eq!(snaps.last(), Some(&end));

    // The newest (the close's) damaged: one flipped byte anywhere.
    let path = snapshot_path(mem_dir(), end);
    let good = fs.read_file(&path).unwrap();
    for at in [0, 9, 13, 20, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        fs.write_file(&path, &bad).unwrap();
        let (log, warnings) = open_capturing(&fs, &clock, config.clone());
        assert_eq!(log.end_offset(), end);
        assert_eq!(log.producer_states(), &state, "byte {at} flipped");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("damaged producer snapshot") && w.contains(".producers")),
            "byte {at}: warnings {warnings:?}"
        );
        assert!(!fs.exists(&path), "the damaged snapshot is removed");
        log.close().unwrap();
        assert_eq!(
            fs.read_file(&path).unwrap(),
            good,
            "the close writes it again"
        );
    }

    // Every snapshot damaged (cut short, emptied, garbage): rebuilt from the log.
    for (i, &o) in snaps.iter().enumerate() {
        let path = snapshot_path(mem_dir(), o);
        let b = fs.read_file(&path).unwrap();
        let bad = match i % 3 {
            0 => b[..b.len() - 1].to_vec(),
            1 => Vec::new(),
            _ => vec![0xab; b.len()],
        };
        fs.write_file(&path, &bad).unwrap();
    }
    let (log, warnings) = open_capturing(&fs, &clock, config.clone());
    assert_eq!(log.producer_states(), &state);
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.contains("damaged producer snapshot"))
            .count(),
        snaps.len(),
        "{warnings:?}"
    );
    assert_eq!(snapshots_on_disk(&fs), Vec::<u64>::new());
    drop(log);
}

#[test]
fn snapshots_beyond_the_recovered_end_are_deleted_not_used() {
    let fs = MemFs::new();
    let clock = clock();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    append(&mut log, p(1, 0, 0, 2));
    append(&mut log, batch(&["plain"], 0));
    let state = log.producer_states().clone();
    log.close().unwrap();
    // Valid snapshots of another history, just past the end and far past it, as a crash
    // after a cut tail could leave (and a leftover temporary file).
    let mut other = ProducerStates::new();
    other.record(1, 7, 0, 1, 0, 1, 0);
    other.record(2, 0, 0, 0, 2, 2, 0);
    for o in [4, 500] {
        fs.write_file(&snapshot_path(mem_dir(), o), &other.encode(o))
            .unwrap();
    }
    let tmp = mem_dir().join(format!("{:020}.producers.tmp", 3));
    fs.write_file(&tmp, &other.encode(3)).unwrap();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), 3);
    assert_eq!(log.producer_states(), &state);
    assert_eq!(snapshots_on_disk(&fs), [3]);
    assert!(!fs.exists(&tmp));
    // The deletion is durable before the log is written again.
    append(&mut log, p(1, 0, 2, 1));
    fs.crash();
    assert_eq!(snapshots_on_disk(&fs), [3]);
    let log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(log.producer_states().get(1).unwrap().epoch, 0);
    let state = log.producer_states().clone();
    let end = log.end_offset();
    log.close().unwrap();

    // A whole snapshot under the wrong name (its contents cover another offset) is not used.
    let mut bogus = ProducerStates::new();
    bogus.record(1, 7, 0, 1, 0, 1, 0);
    assert!(ProducerStates::decode(&bogus.encode(2)).is_some());
    fs.write_file(&snapshot_path(mem_dir(), end), &bogus.encode(2))
        .unwrap();
    let log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(log.producer_states(), &state);
    assert!(!snapshots_on_disk(&fs).contains(&end));
}

#[test]
fn snapshots_without_segments_are_deleted() {
    let fs = MemFs::new();
    let clock = clock();
    fs.create_dir_all(mem_dir()).unwrap();
    let mut stale = ProducerStates::new();
    stale.record(1, 3, 0, 0, 0, 0, 0);
    for o in [0, 1] {
        fs.write_file(&snapshot_path(mem_dir(), o), &stale.encode(o))
            .unwrap();
    }
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert!(log.producer_states().is_empty());
    assert_eq!(snapshots_on_disk(&fs), Vec::<u64>::new());
    assert!(!append(&mut log, p(1, 0, 0, 1)).duplicate);
}

/// A snapshot inside a segment whose index entry does not lead to it: the replay scans the
/// segment from its first batch and records only the batches from the snapshot on.
#[test]
fn replay_from_inside_a_segment_survives_a_wrong_index_entry() {
    let fs = MemFs::new();
    let clock = clock();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    append(&mut log, p(1, 0, 0, 1));
    append(&mut log, p(1, 0, 1, 1));
    log.close().unwrap();
    let mut log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    append(&mut log, p(1, 0, 2, 1));
    append(&mut log, p(2, 0, 0, 1));
    let state = log.producer_states().clone();
    log.close().unwrap();
    assert_eq!(snapshots_on_disk(&fs), [2, 4]);
    // The newest snapshot is damaged, so the one at 2 (inside the segment) is the base...
    let newest = snapshot_path(mem_dir(), 4);
    let mut b = fs.read_file(&newest).unwrap();
    b[30] ^= 1;
    fs.write_file(&newest, &b).unwrap();
    // ...and the index entry of offset 2 points at the first batch instead of the third. The
    // clean-shutdown marker still vouches for the segment, so the index is not rebuilt.
    let index = cascade_log::format::segment_path(mem_dir(), 0, FileKind::Index);
    let mut idx = fs.read_file(&index).unwrap();
    let at = FILE_HEADER_LEN + 4 * 2;
    idx[at..at + 4].copy_from_slice(&(FILE_HEADER_LEN as u32).to_le_bytes());
    fs.write_file(&index, &idx).unwrap();
    let log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(log.producer_states(), &state);
}

#[test]
fn idle_producers_expire() {
    let fs = MemFs::new();
    let clock = clock();
    let config = LogConfig {
        producer_id_expiration: Some(Duration::from_millis(1_000)),
        ..LogConfig::default()
    };
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    append(&mut log, p(1, 0, 0, 1));
    clock.advance(500);
    append(&mut log, p(2, 0, 0, 1));
    clock.advance(500);
    assert_eq!(log.expire_producers(), 0, "1 was seen exactly 1000 ms ago");
    clock.advance(1);
    assert_eq!(log.expire_producers(), 1);
    assert!(log.producer_states().get(1).is_none());
    assert!(log.producer_states().get(2).is_some());
    // An expired producer is unknown: it must start again at 0.
    assert!(matches!(
        log.append(&mut p(1, 0, 1, 1)),
        Err(LogError::UnknownProducerId {
            producer_id: 1,
            sequence: 1
        })
    ));
    append(&mut log, p(1, 0, 0, 1));
    // Seen again, it lives another period.
    clock.advance(900);
    append(&mut log, p(1, 0, 1, 1));
    clock.advance(900);
    assert_eq!(log.expire_producers(), 1, "only 2 expires");
    assert_eq!(
        log.producer_states()
            .iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        [1]
    );
    // The clean close keeps each producer's own last sighting.
    let seen = log.producer_states().get(1).unwrap().last_seen_ms;
    log.close().unwrap();
    clock.advance(5_000);
    let mut log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(log.producer_states().get(1).unwrap().last_seen_ms, seen);
    assert_eq!(log.expire_producers(), 1);

    // None: never.
    log.set_config(LogConfig {
        producer_id_expiration: None,
        ..LogConfig::default()
    })
    .unwrap();
    append(&mut log, p(3, 0, 0, 1));
    clock.advance(i64::MAX / 4);
    assert_eq!(log.expire_producers(), 0);
    assert!(
        LogConfig {
            producer_id_expiration: Some(Duration::ZERO),
            ..LogConfig::default()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn retention_keeps_a_snapshot_at_the_new_start() {
    let fs = MemFs::new();
    let clock = clock();
    // Everything but the active segment goes.
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    };
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    // Producer 9 writes only at the very start; its segment goes to retention.
    let first = append(&mut log, p(9, 0, 0, 2));
    let mut clients = Vec::new();
    workload(&mut log, &mut clients, &mut Rng(21), 120);
    let before = snapshots_on_disk(&fs);
    assert_eq!(before.len(), 3);
    let out = log.apply_retention().unwrap();
    assert!(out.segments_deleted > 0 && out.start_offset > first.last_offset);
    assert_eq!(
        out.start_offset, before[2],
        "the active segment, saved when it was rolled to"
    );
    // Of those below the new start only the newest stays.
    assert_eq!(snapshots_on_disk(&fs), before[1..]);
    let state = log.producer_states().clone();
    assert!(
        state.get(9).is_some(),
        "retention does not forget producers"
    );
    drop(log);
    // The state comes back from the snapshot at (or below) the new start, producer 9 with it:
    // its retry is still a duplicate.
    let mut log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(log.start_offset(), out.start_offset);
    assert_eq!(log.producer_states(), &state);
    assert_eq!(append(&mut log, p(9, 0, 0, 2)), dup(first));
}

#[test]
fn truncate_fully_forgets_every_producer() {
    let fs = MemFs::new();
    let clock = clock();
    let config = small_config();
    let (mut log, _) = build(&fs, &clock, &config, 6);
    assert!(!snapshots_on_disk(&fs).is_empty());
    log.truncate_fully(10_000).unwrap();
    assert!(log.producer_states().is_empty());
    assert_eq!(snapshots_on_disk(&fs), Vec::<u64>::new());
    assert!(matches!(
        log.append(&mut p(1, 0, 5, 1)),
        Err(LogError::UnknownProducerId { .. })
    ));
    append(&mut log, p(1, 0, 0, 1));
    log.sync().unwrap();
    drop(log);
    fs.crash();
    let log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(log.start_offset(), 10_000);
    assert_eq!(snapshots_on_disk(&fs), Vec::<u64>::new());
    assert_eq!(log.producer_states().len(), 1);
}

/// Batch headers that do not chain (a damaged length in a sealed segment, which the quick
/// open checks do not read) are found when the state is replayed from the log: reported by
/// default, cut off under `CorruptionPolicy::Truncate`, and the state stops before them.
#[test]
fn replay_finds_headers_that_do_not_chain() {
    // Both fields are outside the CRC: the low byte of batch_length, and the base offset.
    for (what, byte, mask) in [("length", 11, 0x01u8), ("base offset", 7, 0x40)] {
        replay_finds_damaged(what, byte, mask);
    }
}

fn replay_finds_damaged(what: &str, byte: usize, mask: u8) {
    let fs = MemFs::new();
    let clock = clock();
    let config = small_config();
    let (log, _) = build(&fs, &clock, &config, 7);
    log.close().unwrap();
    remove_snapshots(&fs, |_| false);
    let seg = cascade_log::format::segment_path(mem_dir(), 0, FileKind::Log);
    let mut bytes = fs.read_file(&seg).unwrap();
    let placed = batches_in(&bytes);
    assert!(placed.len() >= 3);
    let bad = placed[1];
    bytes[bad.pos as usize + byte] ^= mask;
    fs.write_file(&seg, &bytes).unwrap();
    let image = dir_image(&fs);

    match open_mem(&fs, &clock, config.clone()) {
        Err(LogError::Corrupt { path, position, .. }) => {
            assert_eq!(path, seg, "{what}");
            assert!(
                position > bad.pos && position <= bad.pos + bad.len + 1 || position == bad.pos,
                "{what}: {position} vs {bad:?}"
            );
        }
        other => panic!("{what}: expected Corrupt in {seg:?}, got {other:?}"),
    }
    // The default policy changes nothing but the (consumed) clean-shutdown marker.
    let mut after = dir_image(&fs);
    let mut expected = image.clone();
    expected.retain(|p, _| !p.ends_with(cascade_log::format::CLEAN_MARKER));
    after.retain(|p, _| !p.ends_with(cascade_log::format::CLEAN_MARKER));
    assert_eq!(after, expected);

    let truncate = LogConfig {
        on_corruption: CorruptionPolicy::Truncate,
        ..config.clone()
    };
    let mut log = open_mem(&fs, &clock, truncate).unwrap();
    assert_eq!(
        log.end_offset(),
        bad.base,
        "{what}: cut before the damaged batch"
    );
    assert_eq!(log.segment_count(), 1);
    log.verify().unwrap();
    // The state holds exactly what is left: rebuild it by hand from the batches.
    let mut expected = ProducerStates::new();
    let kept = &fs.read_file(&seg).unwrap()[FILE_HEADER_LEN..];
    let mut at = 0;
    while at < kept.len() {
        let h = BatchHeader::parse(&kept[at..]).unwrap();
        if h.producer_id >= 0 {
            expected.record(
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.base_sequence + h.record_count - 1,
                h.base_offset as u64,
                h.last_offset() as u64,
                clock_now(&clock),
            );
        }
        at += h.total_len();
    }
    assert_eq!(log.producer_states(), &expected);
    append(&mut log, batch(&["after"], 0));
    drop(log);
    let log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(log.producer_states(), &expected);
}

fn clock_now(clock: &Arc<ManualClock>) -> i64 {
    use cascade_log::Clock;
    clock.now_ms()
}
