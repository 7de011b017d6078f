//! Damage in the active segment after a crash is not a torn tail. A byte flipped in a batch
//! that was made durable (below the recovery point), or in a batch followed by valid ones on
//! a topic that does not fsync every acknowledgement, is reported as `Corrupt` naming the file
//! and a position inside the damaged batch (the default policy refuses to open), or cut off
//! loudly under `CorruptionPolicy::Truncate`; it is never silently cut as if the crash had
//! torn it (which let a restarted leader drop acknowledged events and reuse their offsets).
//! A real torn tail is still cut quietly, and a log that ends below its recovery point
//! (durable data gone) is refused.

mod common;

use cascade_log::format::{FileKind, RECOVERY_POINT};
use cascade_log::{CorruptionPolicy, FlushPolicy, Log, LogConfig, LogError};
use common::crash::*;
use common::*;
use std::path::Path;

fn config(flush: FlushPolicy) -> LogConfig {
    // One segment: everything is in the active segment.
    LogConfig {
        flush,
        segment_bytes: 1 << 20,
        ..small_config()
    }
}

/// Appends `n` batches (syncing after each under `flush=always`, as the broker does before it
/// acknowledges) and drops the log without closing it: a crash. Returns the active segment's
/// base and what the log held.
fn crashed_log(dir: &Path, flush: FlushPolicy, n: u8) -> (u64, Vec<(u64, Vec<u8>)>) {
    let mut log = Log::open(dir, config(flush)).unwrap();
    for i in 0..n {
        log.append(&mut sized_batch(2, 40, i, 1_000 + i64::from(i)))
            .unwrap();
        log.flush_if_due().unwrap();
    }
    let all = read_all(&log.reader(), 0);
    let base = bases_on_disk(dir).into_iter().max().unwrap();
    drop(log);
    (base, all)
}

/// The batches of the active segment's `.log`, and the one in the middle.
fn middle_batch(dir: &Path, base: u64) -> (std::path::PathBuf, Placed, usize) {
    let path = path_of(dir, base, FileKind::Log);
    let placed = batches_in(&std::fs::read(&path).unwrap());
    assert!(placed.len() >= 5, "{placed:?}");
    let mid = placed.len() / 2;
    (path, placed[mid], placed.len())
}

fn expect_corrupt(r: Result<Log, LogError>, path: &Path, batch: &Placed) -> String {
    match r {
        Err(LogError::Corrupt {
            path: p,
            position,
            reason,
        }) => {
            assert_eq!(p, path);
            assert!(
                batch.holds_byte(position),
                "position {position} not in {batch:?}"
            );
            reason
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(log) => panic!(
            "the damaged log opened, ending at offset {}: damage was taken for a torn tail",
            log.end_offset()
        ),
    }
}

#[test]
fn a_flipped_byte_below_the_recovery_point_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (base, all) = crashed_log(dir.path(), FlushPolicy::Always, 9);
    let (path, batch, _) = middle_batch(dir.path(), base);
    // Inside the CRC-covered records of the middle batch, which had been fsynced.
    flip_bytes(&path, batch.pos + batch.len - 5, 1);
    let before = std::fs::read(&path).unwrap();
    let reason = expect_corrupt(
        Log::open(dir.path(), config(FlushPolicy::Always)),
        &path,
        &batch,
    );
    assert!(reason.contains("made durable"), "{reason}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "refusing changes nothing"
    );

    // Under Truncate the log is cut at the damage (loudly), for a replica that refetches.
    let log = Log::open(
        dir.path(),
        LogConfig {
            on_corruption: CorruptionPolicy::Truncate,
            ..config(FlushPolicy::Always)
        },
    )
    .unwrap();
    let kept = read_all(&log.reader(), 0);
    assert!(!kept.is_empty() && kept.len() < all.len());
    assert_eq!(
        kept[..],
        all[..kept.len()],
        "the prefix before the damage is intact"
    );
}

#[test]
fn without_fsyncs_a_bad_batch_followed_by_valid_ones_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = crashed_log(dir.path(), FlushPolicy::Never, 9);
    let (path, batch, _) = middle_batch(dir.path(), base);
    flip_bytes(&path, batch.pos + batch.len - 5, 1);
    let reason = expect_corrupt(
        Log::open(dir.path(), config(FlushPolicy::Never)),
        &path,
        &batch,
    );
    assert!(reason.contains("a valid batch follows"), "{reason}");

    // The batch length itself hit: the next valid batch is found further on, byte by byte.
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = crashed_log(dir.path(), FlushPolicy::Never, 9);
    let (path, batch, _) = middle_batch(dir.path(), base);
    flip_bytes(&path, batch.pos + 9, 1);
    let reason = expect_corrupt(
        Log::open(dir.path(), config(FlushPolicy::Never)),
        &path,
        &batch,
    );
    assert!(reason.contains("a valid batch follows"), "{reason}");
}

#[test]
fn a_torn_tail_is_still_cut_quietly() {
    for flush in [FlushPolicy::Always, FlushPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let (base, all) = crashed_log(dir.path(), flush, 9);
        let path = path_of(dir.path(), base, FileKind::Log);
        let placed = batches_in(&std::fs::read(&path).unwrap());
        let last = *placed.last().unwrap();
        // A half-written last batch: under flush=always it is above the recovery point
        // (written after the last fsync), so make the recovery point say so.
        set_file_len(&path, last.pos + last.len / 2);
        if matches!(flush, FlushPolicy::Always) {
            let rp = all[all.len() - 2].0; // the torn batch holds the last 2 records
            std::fs::write(
                dir.path().join(RECOVERY_POINT),
                cascade_log::format::encode_recovery_point(rp),
            )
            .unwrap();
        }
        let log = Log::open(dir.path(), config(flush)).unwrap();
        assert_eq!(
            read_all(&log.reader(), 0),
            all[..all.len() - 2],
            "{flush:?}"
        );
    }
}

#[test]
fn with_fsyncs_garbage_after_the_recovery_point_is_a_torn_tail_even_before_valid_batches() {
    // Under flush=always nothing past the recovery point was acknowledged, and a power loss may
    // keep later pages of an unsynced write but not earlier ones: a bad batch there followed by
    // a valid one is cut, not reported.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(FlushPolicy::Always)).unwrap();
    for i in 0..4u8 {
        log.append(&mut sized_batch(2, 40, i, 1_000)).unwrap();
        log.flush_if_due().unwrap();
    }
    let durable = read_all(&log.reader(), 0);
    // Two more appends that never got their fsync.
    for i in 4..6u8 {
        log.append(&mut sized_batch(2, 40, i, 1_000)).unwrap();
    }
    let base = bases_on_disk(dir.path()).into_iter().max().unwrap();
    drop(log);
    let path = path_of(dir.path(), base, FileKind::Log);
    let placed = batches_in(&std::fs::read(&path).unwrap());
    let unsynced = &placed[placed.len() - 2];
    flip_bytes(&path, unsynced.pos + unsynced.len - 3, 1);
    let log = Log::open(dir.path(), config(FlushPolicy::Always)).unwrap();
    assert_eq!(read_all(&log.reader(), 0), durable);
}

#[test]
fn a_log_that_ends_below_its_recovery_point_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = crashed_log(dir.path(), FlushPolicy::Always, 9);
    let path = path_of(dir.path(), base, FileKind::Log);
    let placed = batches_in(&std::fs::read(&path).unwrap());
    // Cut at a batch boundary: every batch left is valid, but fsynced ones are gone.
    set_file_len(&path, placed[placed.len() - 3].pos);
    match Log::open(dir.path(), config(FlushPolicy::Always)) {
        Err(LogError::Corrupt { reason, .. }) => {
            assert!(reason.contains("below offset"), "{reason}")
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(log) => panic!("opened, ending at {}", log.end_offset()),
    }
}

#[test]
fn the_recovery_point_follows_the_log_down_when_it_is_truncated() {
    // A follower cutting a divergent suffix must lower the recovery point at once, or a torn
    // write of what it appends next would look like damage.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(FlushPolicy::Always)).unwrap();
    for i in 0..6u8 {
        log.append(&mut sized_batch(2, 40, i, 1_000)).unwrap();
        log.flush_if_due().unwrap();
    }
    log.truncate_to(4).unwrap();
    let rp = std::fs::read(dir.path().join(RECOVERY_POINT)).unwrap();
    assert_eq!(cascade_log::format::decode_recovery_point(&rp), Some(4));
    // An unsynced append torn by a crash is then cut quietly.
    log.append(&mut sized_batch(2, 40, 9, 1_000)).unwrap();
    let base = bases_on_disk(dir.path()).into_iter().max().unwrap();
    drop(log);
    let path = path_of(dir.path(), base, FileKind::Log);
    let placed = batches_in(&std::fs::read(&path).unwrap());
    let last = placed.last().unwrap();
    set_file_len(&path, last.pos + last.len - 7);
    let log = Log::open(dir.path(), config(FlushPolicy::Always)).unwrap();
    assert_eq!(log.end_offset(), 4);
}
