//! Write and fsync failures. ENOSPC at every byte of an append (and of a roll) leaves no trace
//! in the files and the log goes on where it was; a failed fsync (explicit, on flush, or inside
//! a roll, and under `SharedLog`) poisons the log against further writes until it is reopened,
//! while reads go on and nothing durable is lost.

mod common;

use cascade_log::format::{FILE_HEADER_LEN, FileKind, segment_path};
use cascade_log::fs::{FileSystem, MemFs, MemFsFaults};
use cascade_log::{FlushPolicy, LogConfig, LogError, SharedLog};
use common::crash::*;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn file_lens(fs: &MemFs) -> BTreeMap<PathBuf, u64> {
    fs.read_dir(mem_dir())
        .unwrap()
        .into_iter()
        .map(|p| {
            let len = fs.read_file(&p).unwrap().len() as u64;
            (p, len)
        })
        .collect()
}

/// Tears appends at every byte of the log write and the index write (and the roll's writes),
/// and checks that a failed append leaves no trace and the log goes on where it was.
#[test]
fn enospc_mid_append_leaves_no_trace() {
    let fs = MemFs::new();
    let clock = clock();
    let config = LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 200,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    };
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut synced_end = 0;
    let mut tag = 0u8;
    let mut torn = 0;
    let mut torn_rolls = 0;
    while log.segment_count() < 6 {
        tag = tag.wrapping_add(1);
        let n = usize::from(tag % 3) + 1;
        let template = sized_batch(n, 30, tag, i64::from(tag));
        let active_path = segment_path(mem_dir(), active_base(&fs), FileKind::Log);
        let active_len = fs.read_file(&active_path).unwrap().len();
        let will_roll = active_len > FILE_HEADER_LEN
            && (active_len + template.len()) as u64 > config.segment_bytes;
        // What this append needs: the batch, its index entries, maybe a time index entry,
        // and, when it rolls, the seal entry and three file headers.
        let need = template.len() + 4 * n + 12 + 12 + 3 * FILE_HEADER_LEN;
        // Tear it at every budget short of that on some appends and on every roll.
        let budgets: Vec<usize> = if tag.is_multiple_of(5) || will_roll {
            (0..need).collect()
        } else {
            vec![
                0,
                1,
                template.len() / 2,
                template.len() - 1,
                template.len() + 1,
            ]
        };
        let mut appended = false;
        for budget in budgets {
            let before = file_lens(&fs);
            let end = log.end_offset();
            let segments = log.segment_count();
            fs.set_faults(MemFsFaults {
                write_budget: Some(budget as u64),
                ..Default::default()
            });
            let mut b = template.clone();
            let result = log.append(&mut b);
            fs.set_faults(MemFsFaults::default());
            match result {
                Ok(a) => {
                    // The budget sufficed (only the sparse time index may have been skipped).
                    assert_eq!(a.base_offset, end);
                    model.push((a.base_offset, b));
                    appended = true;
                    break;
                }
                Err(e) => {
                    torn += 1;
                    if will_roll {
                        torn_rolls += 1;
                    }
                    match &e {
                        LogError::Io { source, .. } => {
                            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{e}")
                        }
                        other => panic!("budget {budget}: expected Io, got {other:?}"),
                    }
                    assert_eq!(log.end_offset(), end, "budget {budget}");
                    assert_eq!(log.reader().end_offset(), end);
                    // Nothing of the append is left in the files: every `.log` and `.index` is
                    // exactly as long as before. A roll that got as far as the old segment's
                    // seal entry may have added it (or a torn piece of it, which the next time
                    // index write overwrites); a roll that completed before the write failed
                    // leaves a new segment that holds nothing.
                    let after = file_lens(&fs);
                    for (p, len) in &before {
                        match p.extension().and_then(|e| e.to_str()) {
                            Some("timeindex") => {
                                assert!(after[p] >= *len && after[p] <= *len + 12, "{p:?}")
                            }
                            // The newest index entries are buffered in memory, so a roll may
                            // have written earlier appends' entries; never one for an offset
                            // at or past the end (this append's), and never a torn one.
                            Some("index") => {
                                let base: u64 = p
                                    .file_stem()
                                    .and_then(|s| s.to_str())
                                    .and_then(|s| s.parse().ok())
                                    .unwrap();
                                let most = FILE_HEADER_LEN as u64 + 4 * (end - base);
                                assert!(
                                    after[p] >= *len
                                        && after[p] <= most
                                        && (after[p] - FILE_HEADER_LEN as u64).is_multiple_of(4),
                                    "budget {budget}: {p:?} is {} bytes ({len} before, at most {most})",
                                    after[p]
                                );
                            }
                            _ => assert_eq!(after[p], *len, "budget {budget}: {p:?}"),
                        }
                    }
                    let new: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
                    if log.segment_count() == segments {
                        assert!(
                            new.is_empty(),
                            "budget {budget}: half-created segment {new:?}"
                        );
                    } else {
                        assert!(will_roll, "budget {budget}");
                        assert_eq!(log.segment_count(), segments + 1);
                        assert_eq!(new.len(), 3, "{new:?}");
                        for p in new {
                            let name = p.file_name().unwrap().to_str().unwrap();
                            assert!(name.starts_with(&format!("{end:020}.")), "{name}");
                            assert_eq!(after[p], FILE_HEADER_LEN as u64, "{p:?} holds data");
                        }
                    }
                    assert_eq!(raw_batches(&log.reader(), 0), model, "budget {budget}");
                }
            }
        }
        if !appended {
            let mut b = template.clone();
            let a = log.append(&mut b).unwrap();
            model.push((a.base_offset, b));
        }
        assert_eq!(
            raw_batches(&log.reader(), 0),
            model,
            "everything appended reads back"
        );
        if tag.is_multiple_of(4) {
            log.flush_if_due().unwrap();
            synced_end = log.durable_offset();
        }
    }
    assert!(torn > 100, "{torn} torn appends");
    assert!(torn_rolls > 50, "{torn_rolls} torn rolls");
    // Unsynced appends may go; everything synced must survive a power loss.
    let written_end = log.end_offset();
    drop(log);
    fs.crash();
    let mut log = open_mem(&fs, &clock, config).unwrap();
    let end = log.end_offset();
    assert!(end >= synced_end && end <= written_end);
    let got = raw_batches(&log.reader(), 0);
    let keep: Vec<_> = model.iter().filter(|(b, _)| *b < end).cloned().collect();
    assert_eq!(got, keep);
    assert_eq!(log.append(&mut batch(&["x"], 0)).unwrap().base_offset, end);
    log.verify().unwrap();
}

fn fail_sync(fs: &MemFs) {
    fs.set_faults(MemFsFaults {
        fail_sync: true,
        ..Default::default()
    });
}

fn assert_poisoned<T: std::fmt::Debug>(r: cascade_log::Result<T>) {
    match r {
        Err(LogError::Poisoned { .. }) => {}
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

#[test]
fn failed_fsync_poisons_the_log_until_reopened() {
    // Where the fsync fails: an explicit sync, flush_if_due, a roll inside append.
    for (case, crash) in [
        ("sync", false),
        ("sync", true),
        ("flush", false),
        ("flush", true),
        ("roll", false),
        ("roll", true),
    ] {
        let fs = MemFs::new();
        let clock = clock();
        let config = LogConfig {
            segment_bytes: 1024,
            ..LogConfig::default()
        };
        let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
        for i in 0..20u8 {
            log.append(&mut sized_batch(2, 50, i, 0)).unwrap();
            log.flush_if_due().unwrap();
        }
        let durable = log.durable_offset();
        assert_eq!(durable, log.end_offset());
        let durable_data = raw_batches(&log.reader(), 0);
        // Written, not yet durable.
        log.append(&mut sized_batch(1, 10, 100, 0)).unwrap();
        let written = raw_batches(&log.reader(), 0);
        fail_sync(&fs);
        let err = match case {
            "sync" => log.sync().unwrap_err(),
            "flush" => log.flush_if_due().unwrap_err(),
            _ => {
                // Append until one rolls (and so fsyncs).
                let segments = log.segment_count();
                loop {
                    match log.append(&mut sized_batch(1, 300, 7, 0)) {
                        Ok(_) => assert_eq!(log.segment_count(), segments),
                        Err(e) => break e,
                    }
                }
            }
        };
        assert!(matches!(err, LogError::Io { .. }), "{case}: {err}");
        assert_eq!(log.durable_offset(), durable, "{case}");
        // Fail-stop: no more writes of any kind, even with the fault gone.
        fs.set_faults(MemFsFaults::default());
        assert_poisoned(log.append(&mut batch(&["no"], 0)));
        assert_poisoned(log.append_replicated(&written[0].1));
        assert_poisoned(log.sync());
        assert_poisoned(log.flush_if_due());
        assert_poisoned(log.roll());
        assert_poisoned(log.apply_retention());
        assert_poisoned(log.truncate_to(1));
        assert_poisoned(log.truncate_fully(0));
        // Reads go on.
        let r = log.reader();
        let now = raw_batches(&r, 0);
        assert!(now.len() >= written.len(), "{case}");
        assert_eq!(now[..written.len()], written[..], "{case}");
        let end = log.end_offset();
        assert_poisoned(log.close());
        if crash {
            fs.crash();
        }
        let mut log =
            open_mem(&fs, &clock, config.clone()).unwrap_or_else(|e| panic!("{case}: reopen: {e}"));
        let got = raw_batches(&log.reader(), 0);
        assert!(log.end_offset() >= durable, "{case}");
        assert!(log.end_offset() <= end, "{case}");
        assert_eq!(
            got[..durable_data.len()],
            durable_data[..],
            "{case}: durable data lost"
        );
        if !crash {
            // Nothing was lost at all: only the process "restarted".
            assert_eq!(log.end_offset(), end, "{case}");
        }
        let next = log.end_offset();
        assert_eq!(
            log.append(&mut batch(&["yes"], 0)).unwrap().base_offset,
            next
        );
        log.sync().unwrap();
        log.verify().unwrap();
    }
}

#[test]
fn failed_fsync_fails_shared_log_appends_then_poisons() {
    let fs = MemFs::new();
    let clock = clock();
    let log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    let shared = SharedLog::new(log);
    for i in 0..10 {
        let a = shared.append(&mut batch(&["v"], i)).unwrap();
        assert!(shared.reader().durable_offset() > a.last_offset);
    }
    fail_sync(&fs);
    assert!(matches!(
        shared.append(&mut batch(&["w"], 0)),
        Err(LogError::Io { .. })
    ));
    fs.set_faults(MemFsFaults::default());
    assert_poisoned(shared.append(&mut batch(&["x"], 0)));
    assert_eq!(shared.reader().durable_offset(), 10);
    assert_eq!(values(&shared.reader(), 0).len(), 11);
    drop(shared);
    fs.crash();
    let log = open_mem(&fs, &clock, LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), 10);
    assert_eq!(values(&log.reader(), 0), vec!["v"; 10]);
}

/// A full truncation (a follower restarting empty at its leader's log start) that fails for
/// want of space after it removed the old files: the log used to stay unpoisoned with segments
/// in memory whose files were gone, and every retry failed on removing a file already removed
/// ("No such file or directory"), long after space returned: the replica never caught up
/// (found by `cascade-chaos`, seed 7: a full disk during the restart). Now the failure
/// poisons the log, so its owner reopens it, and a retry on the reopened log succeeds.
#[test]
fn a_full_truncation_that_runs_out_of_space_poisons_and_the_reopened_log_recovers() {
    let fs = MemFs::new();
    let clock = clock();
    let config = LogConfig {
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    };
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    for i in 0..5 {
        log.append(&mut batch(&[&format!("v{i}")], 0)).unwrap();
    }
    log.sync().unwrap();
    // Room for the recovery point's rewrite in place (MemFs counts overwrites too; a real
    // full disk does not), not for the fresh segment's header.
    fs.set_faults(MemFsFaults {
        write_budget: Some(cascade_log::format::RECOVERY_LEN as u64),
        fail_sync: false,
    });
    let err = log.truncate_fully(0).unwrap_err();
    assert!(
        matches!(err, LogError::Io { .. }),
        "the first failure is the disk's: {err}"
    );
    assert_poisoned(log.append(&mut batch(&["no"], 0)));
    assert_poisoned(log.truncate_fully(0));
    drop(log);
    // Space returns; the owner reopens the log from what is on disk and truncates again.
    fs.set_faults(MemFsFaults::default());
    let mut log = open_mem(&fs, &clock, config).unwrap();
    log.truncate_fully(0).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    assert_eq!(
        log.append(&mut batch(&["again"], 0)).unwrap().base_offset,
        0
    );
    log.sync().unwrap();
}
