//! Damage inside a sealed segment: flipped bytes in a batch's CRC-covered area are reported
//! as `Corrupt` with the file and a position inside the damaged batch, never returned as
//! data; the rest of the log reads back exactly; and when a missing or cut index forces a
//! rescan, the default policy refuses to open while `CorruptionPolicy::Truncate` cuts the
//! log just before the damage and carries on from there.

mod common;

use cascade_log::format::FileKind;
use cascade_log::record::Batches;
use cascade_log::{CorruptionPolicy, Log, LogConfig, LogError};
use common::crash::*;
use common::*;
use std::path::Path;

fn assert_corrupt_at(err: &LogError, path: &Path, batch: &Placed) {
    match err {
        LogError::Corrupt {
            path: p, position, ..
        } => {
            assert_eq!(p, path, "{err}");
            assert!(
                batch.holds_byte(*position),
                "position {position} is not in the damaged batch {batch:?}: {err}"
            );
        }
        other => panic!("expected Corrupt naming {}, got {other:?}", path.display()),
    }
}

/// A segment log's file name.
fn file_name(base: u64) -> String {
    path_of(Path::new("."), base, FileKind::Log)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string()
}

/// What damage cuts kept under `dir/damaged/`: (name without the time prefix, bytes), sorted.
fn kept_aside(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("damaged"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let (_, rest) = name.split_once('-').expect("a time prefix");
                    (rest.to_string(), std::fs::read(e.path()).unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A log of several segments on the real file system, closed cleanly; returns what it holds.
fn build_segmented(dir: &Path, segments: usize) -> Vec<(u64, Vec<u8>)> {
    let mut log = Log::open(dir, small_config()).unwrap();
    let mut i = 0u8;
    while log.segment_count() < segments {
        let n = usize::from(i % 3) + 1;
        log.append(&mut sized_batch(n, 60, i, 1_000 + i64::from(i) * 10))
            .unwrap();
        i += 1;
    }
    // Some data in the active segment too.
    for _ in 0..3 {
        log.append(&mut sized_batch(2, 60, i, 1_000 + i64::from(i) * 10))
            .unwrap();
        i += 1;
    }
    let all = read_all(&log.reader(), 0);
    log.close().unwrap();
    all
}

#[test]
fn flipped_bytes_in_a_sealed_segment_are_reported_never_returned() {
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    let all = build_segmented(&template, 5);
    let bases = bases_on_disk(&template);
    assert!(bases.len() >= 5);
    // Damage the middle batch of the second segment (sealed, not the last).
    let seg = bases[1];
    let placed = batches_in(&std::fs::read(path_of(&template, seg, FileKind::Log)).unwrap());
    assert!(placed.len() >= 3);
    let bad = placed[placed.len() / 2];
    assert!(bad.len > 80);

    // What a cut at the damaged batch keeps aside: the damaged segment from that batch on (with
    // the flipped bytes, as found) and every later segment's log, whole.
    let original = |base: u64| std::fs::read(path_of(&template, base, FileKind::Log)).unwrap();
    let mut tail = original(seg)[bad.pos as usize..].to_vec();
    for x in &mut tail[bad.len as usize / 2..][..3] {
        *x ^= 0xff;
    }
    let mut kept_by_a_cut = vec![(format!("{}.from-{}", file_name(seg), bad.pos), tail)];
    for &later in &bases[2..] {
        kept_by_a_cut.push((file_name(later), original(later)));
    }
    kept_by_a_cut.sort();

    for index_damage in [None, Some("deleted"), Some("cut")] {
        let dir = root.path().join(format!("case-{index_damage:?}"));
        copy_dir(&template, &dir);
        let log_path = path_of(&dir, seg, FileKind::Log);
        let index_path = path_of(&dir, seg, FileKind::Index);
        // Flip bytes in the CRC-covered record area, in the middle of the batch.
        flip_bytes(&log_path, bad.pos + bad.len / 2, 3);

        match index_damage {
            None => {
                // The quick check passes: the damage is found on read, and only there.
                let mut log = Log::open(&dir, LogConfig::default()).unwrap();
                let r = log.reader();
                assert_eq!(log.end_offset(), all.len() as u64);
                for off in bad.base..=bad.last {
                    let err = r.read(off, 1).unwrap_err();
                    assert_corrupt_at(&err, &log_path, &bad);
                }
                // A read that starts earlier in the segment and runs into the damage fails too.
                let err = r.read(seg, 1 << 20).unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);
                // Every other offset reads back exactly, batch by batch.
                for (off, value) in &all {
                    if (bad.base..=bad.last).contains(off) {
                        continue;
                    }
                    let f = r.read(*off, 1).unwrap();
                    let got = Batches::new(&f.data)
                        .flat_map(|b| b.unwrap().records().unwrap().collect::<Vec<_>>())
                        .find(|rec| rec.offset as u64 == *off)
                        .expect("offset in the returned batch");
                    assert_eq!(got.value.unwrap(), &value[..], "offset {off}");
                }
                let later = bases[2];
                assert_eq!(
                    read_all(&r, later),
                    all[later as usize..].to_vec(),
                    "later segments read fine"
                );
                let err = log.verify().unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);
                // The scan of the sealed segments alone, made without the writer, finds the
                // same damage at the same cut; it covers every segment but the active one.
                let (sealed, rest) = r.find_damage_in_sealed().unwrap();
                let (cut_sealed, err) = sealed.expect("damage found in the sealed segments");
                assert_corrupt_at(&err, &log_path, &bad);
                assert_eq!(rest, *bases.last().unwrap(), "all but the active segment");
                assert_eq!(log.find_damage_from(rest).unwrap().map(|d| d.0), None);
                // find_damage names the undamaged prefix: cutting there leaves a log that
                // verifies and holds exactly the events before the damaged batch.
                let (cut, err) = log.find_damage().unwrap().expect("damage found");
                assert_eq!(cut_sealed, cut);
                assert_corrupt_at(&err, &log_path, &bad);
                assert_eq!(
                    cut, bad.base,
                    "the prefix ends where the damaged batch starts"
                );
                // A cut at damage keeps what it drops first (the scrub's repair does this).
                assert!(log.keep_from(cut).unwrap().is_some());
                assert_eq!(kept_aside(&dir), kept_by_a_cut);
                assert_eq!(log.truncate_to(cut).unwrap(), cut);
                log.verify().unwrap();
                assert!(
                    r.find_damage_in_sealed().unwrap().0.is_none(),
                    "nothing left"
                );
                assert_eq!(read_all(&r, 0), all[..cut as usize].to_vec());
            }
            Some(how) => {
                if how == "deleted" {
                    std::fs::remove_file(&index_path).unwrap();
                } else {
                    set_file_len(&index_path, file_len(&index_path) - 2);
                }
                // A rescan is forced, finds the damage, and the default policy refuses to open.
                let err = Log::open(&dir, LogConfig::default()).unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);
                let err = Log::open(&dir, LogConfig::default()).unwrap_err();
                assert_corrupt_at(&err, &log_path, &bad);

                // Truncate: cut just before the damaged batch, later segments removed.
                let config = LogConfig {
                    on_corruption: CorruptionPolicy::Truncate,
                    ..small_config()
                };
                let mut log = Log::open(&dir, config.clone()).unwrap();
                assert_eq!(log.end_offset(), bad.base);
                assert_eq!(log.segment_count(), 2);
                assert_eq!(bases_on_disk(&dir), bases[..2].to_vec());
                for &later in &bases[2..] {
                    for kind in [FileKind::Log, FileKind::Index, FileKind::TimeIndex] {
                        assert!(!path_of(&dir, later, kind).exists(), "{later} {kind:?}");
                    }
                }
                assert_eq!(file_len(&log_path), bad.pos);
                assert_eq!(
                    read_all(&log.reader(), 0),
                    all[..bad.base as usize].to_vec()
                );
                // Nothing the cut dropped is destroyed: the damaged segment's tail and every
                // later segment's log are kept, byte for byte, under `damaged/`.
                assert_eq!(kept_aside(&dir), kept_by_a_cut);
                log.verify().unwrap();
                let a = log.append(&mut batch(&["again"], 9_000)).unwrap();
                assert_eq!(a.base_offset, bad.base);
                let b = log.append(&mut batch(&["and again"], 9_001)).unwrap();
                assert_eq!(b.base_offset, bad.base + 1);
                drop(log);
                // The repaired log opens with the default policy, after a crash and a close.
                let log = Log::open(&dir, LogConfig::default()).unwrap();
                assert_eq!(log.end_offset(), bad.base + 2);
                let got = values(&log.reader(), bad.base);
                assert_eq!(got, ["again", "and again"]);
                log.verify().unwrap();
                log.close().unwrap();
                let log = Log::open(&dir, LogConfig::default()).unwrap();
                assert_eq!(log.end_offset(), bad.base + 2);
                assert_eq!(
                    read_all(&log.reader(), 0)[..bad.base as usize],
                    all[..bad.base as usize]
                );
            }
        }
    }
}

/// A flipped bit in a segment's file header (its magic, or the base offset it records): the
/// default policy refuses to open and names the file; `Truncate` ends the log where that
/// segment began, dropping it and every later segment, and keeps everything before intact.
/// Before, `Truncate` refused too, so a replica with such a header stayed offline for good
/// (found by `cascade-chaos` `corrupt_leader`: two replicas of one partition, each with a
/// flipped header bit, left it under-replicated).
#[test]
fn a_damaged_segment_header_cuts_the_log_at_the_segment_start() {
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    let all = build_segmented(&template, 4);
    let bases = bases_on_disk(&template);
    // (segment index, byte of its header): magic, and the base offset field.
    for (which, at) in [(2usize, 0u64), (2, 16), (0, 3), (bases.len() - 1, 17)] {
        let dir = root.path().join(format!("case-{which}-{at}"));
        copy_dir(&template, &dir);
        let seg = bases[which];
        let path = cascade_log::format::segment_path(&dir, seg, FileKind::Log);
        flip_bytes(&path, at, 1);
        let err = Log::open(&dir, small_config()).unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { path: p, .. } if *p == path),
            "{err}"
        );
        let log = Log::open(
            &dir,
            LogConfig {
                on_corruption: CorruptionPolicy::Truncate,
                ..small_config()
            },
        )
        .unwrap();
        assert_eq!(log.end_offset(), seg, "segment {which}, byte {at}");
        // The dropped segments are kept aside whole (the damaged one from byte 0).
        let mut want: Vec<(String, Vec<u8>)> = bases[which..]
            .iter()
            .map(|&b| {
                let bytes = std::fs::read(path_of(&template, b, FileKind::Log)).unwrap();
                let name = if b == seg {
                    format!("{}.from-0", file_name(b))
                } else {
                    file_name(b)
                };
                (name, bytes)
            })
            .collect();
        // The kept copy of the damaged segment holds the flipped byte, as found.
        want[0].1[at as usize] ^= 0xff;
        want.sort();
        assert_eq!(kept_aside(&dir), want, "segment {which}, byte {at}");
        let kept: Vec<(u64, Vec<u8>)> = all.iter().filter(|(o, _)| *o < seg).cloned().collect();
        assert_eq!(read_all(&log.reader(), log.start_offset()), kept);
        drop(log);
        // And it stays that way: the next open finds a sound log.
        let again = Log::open(&dir, small_config()).unwrap();
        assert_eq!(again.end_offset(), seg);
    }
}

/// The batch's leader epoch (bytes 12..16) lies outside its CRC: a leader stamps it into
/// batches a producer encoded. A flipped bit there passed every check, so a replica kept a
/// batch claiming epoch 1076 among batches of epoch 52 (found by the chaos soak), which
/// epoch-based truncation would trust. Epochs never go back in a log, so the scan reports a
/// decrease as damage, cutting before the earlier of the two batches involved: a spike (a bit
/// set) is cut at itself, a dip (a bit cleared) one batch early, which replication refetches.
#[test]
fn a_flipped_bit_in_a_batch_leader_epoch_is_damage() {
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    let all = build_segmented(&template, 4);
    let bases = bases_on_disk(&template);
    let seg = bases[1];
    let placed = batches_in(&std::fs::read(path_of(&template, seg, FileKind::Log)).unwrap());
    assert!(placed.len() >= 3);
    let bad = placed[placed.len() / 2];
    let before = placed[placed.len() / 2 - 1];
    // The builder stamps no epoch (0 here): setting bit 10 is a spike to 1024; setting the
    // sign bit makes it negative, a dip.
    for (case, byte, mask, cut) in [
        ("spike", 14u64, 0x04u8, bad.base),
        ("dip", 12, 0x80, before.base),
    ] {
        let dir = root.path().join(case);
        copy_dir(&template, &dir);
        let log_path = path_of(&dir, seg, FileKind::Log);
        let mut bytes = std::fs::read(&log_path).unwrap();
        bytes[(bad.pos + byte) as usize] ^= mask;
        std::fs::write(&log_path, &bytes).unwrap();

        let mut log = Log::open(&dir, LogConfig::default()).unwrap();
        let err = log.verify().unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { path, reason, .. }
                if path == &log_path && reason.contains("epochs never go back")),
            "{case}: {err}"
        );
        let (at, _) = log.find_damage().unwrap().expect("damage found");
        assert_eq!(at, cut, "{case}: where the undamaged prefix ends");
        let (sealed, _) = log.reader().find_damage_in_sealed().unwrap();
        assert_eq!(
            sealed.map(|d| d.0),
            Some(cut),
            "{case}: the scan beside the writer"
        );
        assert_eq!(log.truncate_to(cut).unwrap(), cut);
        log.verify().unwrap();
        assert_eq!(
            read_all(&log.reader(), 0),
            all[..cut as usize].to_vec(),
            "{case}"
        );
    }

    // In the active segment, found by recovery at open: the cut-at-damage policy ends the log
    // before the damaged batch, the default one refuses to open.
    let dir = root.path().join("active");
    copy_dir(&template, &dir);
    let active = *bases.last().unwrap();
    let log_path = path_of(&dir, active, FileKind::Log);
    let placed = batches_in(&std::fs::read(&log_path).unwrap());
    assert!(placed.len() >= 3, "the active segment holds three batches");
    let bad = placed[1];
    let mut bytes = std::fs::read(&log_path).unwrap();
    bytes[(bad.pos + 14) as usize] ^= 0x04;
    std::fs::write(&log_path, &bytes).unwrap();
    // Recovery rescans the active segment only after a crash: drop the clean marker.
    let _ = std::fs::remove_file(dir.join("clean-shutdown"));
    let err = Log::open(&dir, LogConfig::default()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    let config = LogConfig {
        on_corruption: CorruptionPolicy::Truncate,
        ..small_config()
    };
    let log = Log::open(&dir, config).unwrap();
    assert_eq!(log.end_offset(), bad.base);
    assert_eq!(
        read_all(&log.reader(), 0),
        all[..bad.base as usize].to_vec()
    );
}

/// A bad batch in the active segment that valid batches follow, under `flush=always`, with no
/// recovery point to place it (after a power cut the recovery point, never fsynced on its own,
/// can be stale): a torn write of the last group commit and a bit flip in acknowledged data
/// look alike. A lone copy guesses "torn" and cuts, but keeps the cut bytes under `damaged/`;
/// a replica that another copy can repair (`ambiguous_tail_is_damage`) reports damage
/// instead. Before, every copy guessed "torn": with the same flip on every replica of a
/// partition, each cut its log silently and one led with it, reusing acknowledged offsets.
#[test]
fn an_ambiguous_bad_batch_is_kept_and_is_damage_where_another_copy_can_repair_it() {
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    {
        let mut log = Log::open(&template, LogConfig::default()).unwrap();
        for i in 0..10u8 {
            log.append(&mut sized_batch(2, 60, i, 1_000 + i64::from(i)))
                .unwrap();
        }
        // Dropped without a close: recovered as a crash.
    }
    let log_path = path_of(&template, 0, FileKind::Log);
    let placed = batches_in(&std::fs::read(&log_path).unwrap());
    let bad = placed[placed.len() / 2];
    flip_bytes(&log_path, bad.pos + bad.len / 2, 2);
    std::fs::remove_file(template.join(cascade_log::format::RECOVERY_POINT)).unwrap();

    let lone = root.path().join("lone");
    copy_dir(&template, &lone);
    let log = Log::open(&lone, LogConfig::default()).unwrap();
    assert_eq!(
        log.end_offset(),
        bad.base,
        "a lone copy cuts at the bad batch"
    );
    drop(log);
    let kept = kept_aside(&lone);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut tail =
        std::fs::read(path_of(&template, 0, FileKind::Log)).unwrap()[bad.pos as usize..].to_vec();
    tail.truncate(kept[0].1.len());
    assert_eq!(kept[0].1, tail, "the cut bytes are kept as they were");

    let replica = root.path().join("replica");
    copy_dir(&template, &replica);
    let config = LogConfig {
        ambiguous_tail_is_damage: true,
        ..LogConfig::default()
    };
    let err = Log::open(&replica, config).unwrap_err();
    assert_corrupt_at(&err, &path_of(&replica, 0, FileKind::Log), &bad);
}
