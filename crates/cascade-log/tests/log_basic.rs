//! The log's everyday behaviour on the real file system: append, read, roll, reopen, time
//! lookup, retention, truncation and the errors bad input gets.

mod common;

use cascade_log::format::FILE_HEADER_LEN;
use cascade_log::{FlushPolicy, Log, LogConfig, LogError};
use common::*;
use std::time::Duration;

#[test]
fn append_assigns_dense_offsets_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let a = log.append(&mut batch(&["a", "b", "c"], 100)).unwrap();
    assert_eq!((a.base_offset, a.last_offset, a.record_count), (0, 2, 3));
    let b = log.append(&mut batch(&["d"], 200)).unwrap();
    assert_eq!((b.base_offset, b.last_offset), (3, 3));
    assert_eq!(log.end_offset(), 4);
    let r = log.reader();
    assert_eq!(values(&r, 0), ["a", "b", "c", "d"]);
    // Reading from inside a batch returns the batch holding the offset.
    let f = r.read(1, 1).unwrap();
    let first = cascade_log::record::BatchHeader::parse(&f.data).unwrap();
    assert_eq!(first.base_offset, 0);
    assert_eq!(
        f.next_offset, 3,
        "at least one whole batch even past max_bytes"
    );
    // At the end: empty; past the end: an error.
    assert!(r.read(4, 100).unwrap().data.is_empty());
    assert!(matches!(
        r.read(5, 100),
        Err(LogError::OffsetOutOfRange {
            requested: 5,
            start: 0,
            end: 4
        })
    ));
}

#[test]
fn dense_index_has_one_four_byte_entry_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    for i in 0..10 {
        log.append(&mut sized_batch(7, 10, i, 0)).unwrap();
    }
    // The newest entries are buffered in memory until a 64 KiB chunk, a roll or the close.
    log.close().unwrap();
    let idx = std::fs::read(dir.path().join("00000000000000000000.index")).unwrap();
    assert_eq!(idx.len(), FILE_HEADER_LEN + 70 * 4);
    let logf = std::fs::read(dir.path().join("00000000000000000000.log")).unwrap();
    for n in 0..70usize {
        let at = FILE_HEADER_LEN + 4 * n;
        let pos = u32::from_le_bytes(idx[at..at + 4].try_into().unwrap()) as usize;
        let h = cascade_log::record::BatchHeader::parse(&logf[pos..]).unwrap();
        assert!(h.base_offset as usize <= n && n as i64 <= h.last_offset());
    }
}

#[test]
fn rolls_segments_by_size_and_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..50u8 {
        log.append(&mut sized_batch(2, 100, i, i64::from(i)))
            .unwrap();
    }
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    let all = read_all(&log.reader(), 0);
    assert_eq!(all.len(), 100);
    for (i, (off, v)) in all.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert_eq!(v[0], (i / 2) as u8 + (i % 2) as u8);
    }
    log.close().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.end_offset(), 100);
    assert_eq!(read_all(&log.reader(), 37).len(), 63);
}

#[test]
fn reopen_after_clean_close_and_after_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&mut batch(&["x", "y"], 1)).unwrap();
    log.sync().unwrap();
    log.close().unwrap();
    assert!(dir.path().join("clean-shutdown").exists());
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert!(
        !dir.path().join("clean-shutdown").exists(),
        "marker removed on open"
    );
    assert_eq!(log.end_offset(), 2);
    log.append(&mut batch(&["z"], 2)).unwrap();
    drop(log); // a crash, as far as the files can tell
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(values(&log.reader(), 0), ["x", "y", "z"]);
}

#[test]
fn time_index_finds_first_offset_at_or_after_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    // Timestamps 1000, 1010, … with one out-of-order record at offset 25.
    for i in 0..60i64 {
        let ts = if i == 25 { 5000 } else { 1000 + i * 10 };
        log.append(&mut sized_batch(1, 60, 0, ts)).unwrap();
    }
    let r = log.reader();
    assert_eq!(r.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(r.offset_for_timestamp(1000).unwrap(), Some(0));
    assert_eq!(r.offset_for_timestamp(1001).unwrap(), Some(1));
    assert_eq!(r.offset_for_timestamp(1200).unwrap(), Some(20));
    assert_eq!(r.offset_for_timestamp(1250).unwrap(), Some(25));
    assert_eq!(r.offset_for_timestamp(1241).unwrap(), Some(25));
    // Offset 25 (timestamp 5000) is the first at or after 1590, although 59 is 1590 exactly.
    assert_eq!(r.offset_for_timestamp(1590).unwrap(), Some(25));
    assert_eq!(r.offset_for_timestamp(5000).unwrap(), Some(25));
    assert_eq!(r.offset_for_timestamp(5001).unwrap(), None);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.reader().offset_for_timestamp(1200).unwrap(), Some(20));
}

#[test]
fn retention_by_size_and_age_deletes_whole_old_segments() {
    let fs = cascade_log::fs::MemFs::new();
    let clock = clock();
    let config = LogConfig {
        retention_bytes: Some(3000),
        retention_age: None,
        ..small_config()
    };
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    let now = 1_700_000_000_000;
    for i in 0..40u8 {
        log.append(&mut sized_batch(1, 200, i, now)).unwrap();
    }
    let before = log.segment_count();
    let out = log.apply_retention().unwrap();
    assert!(out.segments_deleted > 0);
    assert_eq!(log.segment_count(), before - out.segments_deleted);
    assert!(log.size_bytes() >= 3000 && log.size_bytes() < 3000 + 1024);
    assert_eq!(log.start_offset(), out.start_offset);
    let r = log.reader();
    assert!(matches!(
        r.read(0, 10),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        read_all(&r, out.start_offset).len() as u64,
        40 - out.start_offset
    );
    drop(log);

    let config = LogConfig {
        retention_bytes: None,
        retention_age: Some(Duration::from_secs(60)),
        ..small_config()
    };
    let mut log = open_mem(&fs, &clock, config).unwrap();
    assert_eq!(
        log.apply_retention().unwrap().segments_deleted,
        0,
        "nothing old yet"
    );
    clock.advance(61_000);
    let out = log.apply_retention().unwrap();
    assert_eq!(log.segment_count(), 1, "only the active segment survives");
    assert!(out.segments_deleted > 0);
    assert_eq!(log.end_offset(), 40);
}

#[test]
fn rolls_by_age() {
    let fs = cascade_log::fs::MemFs::new();
    let clock = clock();
    let config = LogConfig {
        segment_age: Some(Duration::from_secs(10)),
        ..LogConfig::default()
    };
    let mut log = open_mem(&fs, &clock, config).unwrap();
    log.append(&mut batch(&["a"], 0)).unwrap();
    log.append(&mut batch(&["b"], 0)).unwrap();
    assert_eq!(log.segment_count(), 1);
    clock.advance(10_000);
    log.append(&mut batch(&["c"], 0)).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn truncate_drops_the_suffix_at_a_batch_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..30u8 {
        log.append(&mut sized_batch(3, 50, i, 0)).unwrap();
    }
    let segs = log.segment_count();
    // Offset 40 is inside the batch [39, 41]: that whole batch goes.
    assert_eq!(log.truncate_to(40).unwrap(), 39);
    assert_eq!(log.end_offset(), 39);
    assert!(log.segment_count() < segs);
    let r = log.reader();
    assert_eq!(read_all(&r, 0).len(), 39);
    let a = log.append(&mut sized_batch(1, 50, 99, 0)).unwrap();
    assert_eq!(a.base_offset, 39);
    assert_eq!(
        log.truncate_to(1000).unwrap(),
        40,
        "past the end: nothing to do"
    );
    drop(log);
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.end_offset(), 40);
    assert_eq!(read_all(&log.reader(), 0).last().unwrap().1[0], 99);
    log.truncate_fully(500).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (500, 500));
    assert_eq!(log.append(&mut batch(&["n"], 0)).unwrap().base_offset, 500);
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (500, 501));
}

#[test]
fn replicated_appends_keep_the_leaders_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(dir.path().join("leader"), LogConfig::default()).unwrap();
    let mut follower = Log::open(dir.path().join("follower"), LogConfig::default()).unwrap();
    leader.append(&mut batch(&["a", "b"], 0)).unwrap();
    leader.append(&mut batch(&["c"], 0)).unwrap();
    let f = leader.reader().read(0, 1 << 20).unwrap();
    follower.append_replicated(&f.data).unwrap();
    assert_eq!(follower.end_offset(), 3);
    assert!(matches!(
        follower.append_replicated(&f.data),
        Err(LogError::NonContiguous {
            expected: 3,
            got: 0
        })
    ));
    assert_eq!(values(&follower.reader(), 0), ["a", "b", "c"]);
}

#[test]
fn invalid_batches_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&mut batch(&["ok"], 0)).unwrap();
    let good = batch(&["x"], 0);
    let mut two = good.clone();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    two.extend_from_slice(&bad);
    for mut input in [
        vec![],
        vec![1, 2, 3],
        bad.clone(),
        two,
        good[..good.len() - 1].to_vec(),
    ] {
        let err = log.append(&mut input).unwrap_err();
        assert!(matches!(err, LogError::InvalidBatch { .. }), "{err}");
    }
    assert_eq!(log.end_offset(), 1);
    assert_eq!(values(&log.reader(), 0), ["ok"]);
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(values(&log.reader(), 0), ["ok"]);
}

#[test]
fn flush_policies_move_the_durable_offset() {
    let fs = cascade_log::fs::MemFs::new();
    let clock = clock();
    for (policy, durable_after_flush) in [
        (FlushPolicy::Always, true),
        (FlushPolicy::Never, false),
        (FlushPolicy::Interval(Duration::from_secs(3600)), false),
    ] {
        let config = LogConfig {
            flush: policy,
            ..LogConfig::default()
        };
        fs.set_faults(Default::default());
        let mut log = open_mem(&fs, &clock, config).unwrap();
        let end = log.end_offset();
        log.append(&mut batch(&["v"], 0)).unwrap();
        assert_eq!(log.durable_offset(), end);
        log.flush_if_due().unwrap();
        assert_eq!(
            log.durable_offset() == end + 1,
            durable_after_flush,
            "{policy:?}"
        );
        log.sync().unwrap();
        assert_eq!(log.durable_offset(), end + 1);
        log.close().unwrap();
    }
}

#[test]
fn config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        LogConfig {
            segment_bytes: 10,
            ..LogConfig::default()
        },
        LogConfig {
            segment_bytes: 1 << 33,
            ..LogConfig::default()
        },
        LogConfig {
            index_interval_bytes: 0,
            ..LogConfig::default()
        },
        LogConfig {
            flush: FlushPolicy::Interval(Duration::ZERO),
            ..LogConfig::default()
        },
    ] {
        assert!(matches!(
            Log::open(dir.path(), bad),
            Err(LogError::Config(_))
        ));
    }
}
