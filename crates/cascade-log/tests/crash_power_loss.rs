//! Power loss: acknowledged (fsynced) appends, rolls, retention and truncations, then appends
//! that were never synced, then a crash, over several seeds. Every acknowledged record must
//! survive byte for byte, nothing may be invented, and the log continues at its recovered end.

mod common;

use cascade_log::fs::MemFs;
use cascade_log::{FlushPolicy, Log, LogConfig};
use common::crash::*;
use common::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
enum Before {
    Nothing,
    Roll,
    Retention,
    Truncate,
    TruncateIntoSealed,
}

/// Appends with acknowledgements (fsync), rolls, retention and truncation, then some more
/// appends that are never synced, then a power loss; over several seeds and crash points.
#[test]
fn power_loss_keeps_every_acknowledged_record() {
    let mut seen = PowerLossStats::default();
    for seed in 0..12u64 {
        for before in [
            Before::Nothing,
            Before::Roll,
            Before::Retention,
            Before::Truncate,
            Before::TruncateIntoSealed,
        ] {
            power_loss_case(seed, before, &mut seen);
        }
    }
    // The variations did what they claim.
    assert!(seen.segments_deleted > 10, "{seen:?}");
    assert!(seen.truncations_into_sealed > 10, "{seen:?}");
    assert!(seen.unsynced_lost > 50, "{seen:?}");
}

#[derive(Debug, Default)]
struct PowerLossStats {
    segments_deleted: usize,
    truncations_into_sealed: usize,
    /// Records written without an fsync and gone after the crash.
    unsynced_lost: u64,
}

fn power_loss_case(seed: u64, before: Before, seen: &mut PowerLossStats) {
    let mut rng = Rng(seed * 7919 + before as u64);
    let fs = MemFs::new();
    let clock = clock();
    let config = LogConfig {
        segment_bytes: rng.range(600, 3000),
        index_interval_bytes: rng.range(50, 500),
        retention_bytes: Some(4000),
        retention_age: None,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    };
    let ctx = format!("seed {seed}, {before:?}");
    // The log as written: base offset -> exact bytes, including what was never synced.
    let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut log = open_mem(&fs, &clock, config.clone()).unwrap();
    let mut tag = 0u8;
    let mut append = |log: &mut Log, model: &mut BTreeMap<u64, Vec<u8>>, rng: &mut Rng| {
        tag = tag.wrapping_add(1);
        let n = rng.range(1, 5) as usize;
        let mut b = sized_batch(
            n,
            rng.range(1, 120) as usize,
            tag,
            rng.range(0, 1000) as i64,
        );
        let a = log.append(&mut b).unwrap();
        model.insert(a.base_offset, b);
    };
    for round in 0..4 {
        let ctx = format!("{ctx}, round {round}");
        // Acknowledged appends: each is fsynced (group commit of one) before it counts.
        let mut acked = log.durable_offset();
        for _ in 0..rng.range(5, 40) {
            append(&mut log, &mut model, &mut rng);
            log.flush_if_due().unwrap();
            assert!(log.durable_offset() >= log.end_offset());
            acked = log.durable_offset();
            if rng.chance(8) {
                log.roll().unwrap();
            }
        }
        match before {
            Before::Nothing => {}
            Before::Roll => log.roll().unwrap(),
            Before::Retention => {
                seen.segments_deleted += log.apply_retention().unwrap().segments_deleted;
            }
            Before::Truncate | Before::TruncateIntoSealed => {
                let (start, end) = (log.start_offset(), log.end_offset());
                let lo = if matches!(before, Before::TruncateIntoSealed) {
                    start
                } else {
                    start + (end - start) / 2
                };
                if end > lo {
                    let segments = log.segment_count();
                    let new_end = log.truncate_to(rng.range(lo, end)).unwrap();
                    if log.segment_count() < segments {
                        seen.truncations_into_sealed += 1;
                    }
                    model.retain(|&b, _| b < new_end);
                    acked = acked.min(new_end);
                    assert_eq!(log.durable_offset(), new_end, "{ctx}");
                }
            }
        }
        acked = acked.max(log.durable_offset());
        // Written but never synced (unless a roll seals them on the way).
        for _ in 0..rng.range(0, 6) {
            append(&mut log, &mut model, &mut rng);
        }
        let durable = log.durable_offset();
        assert!(durable >= acked, "{ctx}");
        let start = log.start_offset();
        let written_end = log.end_offset();
        model.retain(|&b, _| b >= start);
        drop(log);
        fs.crash();
        log = open_mem(&fs, &clock, config.clone())
            .unwrap_or_else(|e| panic!("{ctx}: reopen after crash: {e}"));
        let end = log.end_offset();
        seen.unsynced_lost += written_end.saturating_sub(end);
        assert_eq!(log.start_offset(), start, "{ctx}");
        assert!(end >= durable, "{ctx}: end {end} < durable {durable}");
        assert!(
            end <= written_end,
            "{ctx}: end {end} > written {written_end}"
        );
        // Every batch is one that was written there, byte for byte: acknowledged ones are
        // all present, and nothing is invented.
        let got = raw_batches(&log.reader(), start);
        let want: Vec<(u64, Vec<u8>)> = model.range(..end).map(|(b, v)| (*b, v.clone())).collect();
        assert_eq!(got.len(), want.len(), "{ctx}");
        assert!(
            got == want,
            "{ctx}: recovered batches differ from those written"
        );
        log.verify().unwrap();
        // What was lost is gone from the model too; the next append continues at the end.
        model.retain(|&b, _| b < end);
        append(&mut log, &mut model, &mut rng);
        assert_eq!(*model.keys().last().unwrap(), end, "{ctx}");
        log.flush_if_due().unwrap();
    }
}

/// A log opened in a brand-new directory several levels deep (a topic created on a fresh
/// node: `<data>/topics/<topic>/<partition>`), acknowledged appends, then a power loss: the
/// directories are names like any other and survive only if the directory holding each one
/// was fsynced. Without that the whole partition vanished, every acknowledged record with it.
#[test]
fn a_new_logs_directories_survive_a_power_loss() {
    use cascade_log::fs::FileSystem;
    use std::path::Path;
    use std::sync::Arc;
    let fs = MemFs::new();
    let clock = clock();
    let dir = Path::new("/data/topics/orders/0");
    let config = LogConfig {
        flush: FlushPolicy::Always,
        ..small_config()
    };
    let mut log = Log::open_with(Arc::new(fs.clone()), clock.clone(), dir, config.clone()).unwrap();
    for i in 0..5u8 {
        log.append(&mut sized_batch(2, 30, i, 1_000)).unwrap();
        log.flush_if_due().unwrap();
    }
    assert_eq!(log.durable_offset(), log.end_offset());
    let acked = read_all(&log.reader(), 0);
    assert_eq!(acked.len(), 10);
    drop(log);
    fs.crash();
    assert!(
        fs.exists(dir),
        "the partition directory was lost in the power loss"
    );
    let log = Log::open_with(Arc::new(fs.clone()), clock, dir, config).unwrap();
    assert_eq!(read_all(&log.reader(), 0), acked);
}
