//! Opening a log: finding its segments, checking them, and repairing what a crash left.
//!
//! - Sealed segments were fsynced (all three files) before the next segment was created, so a
//!   crash cannot tear them; each gets a few-read [`Segment::quick_check`] and a full rescan
//!   only when that fails (a deleted, short, long or inconsistent index is rebuilt from the
//!   log). Damage found in a sealed segment's *log* is acknowledged data gone bad: it is
//!   reported with file and position, or, under [`CorruptionPolicy::Truncate`], cut off.
//! - The active segment is trusted without a scan when a valid clean-shutdown marker matches
//!   it. Otherwise it is scanned batch by batch (CRC and dense offsets) and truncated at the
//!   first torn or corrupt batch, and its indexes are rebuilt; nothing past that point was
//!   acknowledged under `flush=always`, because an append is acknowledged only after fsync.
//! - The marker is removed before the log accepts writes, so a crash after opening is always
//!   recovered as a crash.
//! - The idempotent producers' state is then rebuilt as of the recovered end: snapshots above
//!   the end (left by a crash that cut the tail) are deleted, the newest snapshot at or below
//!   the end that decodes is loaded (damaged ones are ignored with a warning and deleted), and
//!   the batch headers after it are replayed. Headers that do not chain are damage, handled
//!   as damage to a sealed segment: reported, or under [`CorruptionPolicy::Truncate`] cut off.
//! - A segment whose log header is damaged (bad magic, a base offset other than its file
//!   name's) is reported, or under [`CorruptionPolicy::Truncate`] dropped with every later
//!   segment: the log ends where that segment began (a replica refetches the rest).
//! - A cut for damage never destroys bytes: before it, what it drops is kept durably under the
//!   log's `damaged/` directory ([`crate::quarantine`]), which recovery never reads back.

use crate::config::{Clock, CorruptionPolicy, FlushPolicy, LogConfig, SystemClock};
use crate::error::{LogError, Result};
use crate::format::{
    CLEAN_MARKER, CleanMarker, FILE_HEADER_LEN, FileKind, MARKER_LEN, RECOVERY_LEN, RECOVERY_POINT,
    decode_recovery_point, parse_segment_name, parse_snapshot_name,
};
use crate::fs::{FileSystem, StdFs};
use crate::index::{Position, TimeIndexEntry};
use crate::log::{Active, Log, Shared};
use crate::producers::ProducerStates;
use crate::segment::{Segment, SegmentEnd};
use crate::snapshots::{self, ReplayError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

impl Log {
    /// Opens (or creates) the log in `dir` on the real file system.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Self> {
        Self::open_with(Arc::new(StdFs), Arc::new(SystemClock), dir, config)
    }

    /// Opens (or creates) the log in `dir` with the given file system and clock.
    pub fn open_with(
        fs: Arc<dyn FileSystem>,
        clock: Arc<dyn Clock>,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<Self> {
        config.validate()?;
        let dir = dir.into();
        let started = Instant::now();
        fs.create_dir_all_durable(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let marker = take_marker(&*fs, &dir)?;
        let recovery_point = read_recovery_point(&*fs, &dir);
        let (bases, mut snapshots) = list_segments(&*fs, &dir)?;
        let mut segs: Vec<Arc<Segment>> = Vec::new();
        if bases.is_empty() {
            // A new log: snapshots left without any segment describe no data here.
            while let Some(offset) = snapshots.pop_first() {
                snapshots::remove(&*fs, &dir, offset)?;
            }
            let seg = Segment::create(&*fs, &dir, config.initial_offset, clock.now_ms())?;
            segs.push(Arc::new(seg));
        } else {
            open_segments(
                &*fs,
                &dir,
                &config,
                &bases,
                marker,
                recovery_point,
                &mut segs,
            )?;
            let active = segs.last().expect("at least one segment");
            let end = active.end().next_offset;
            if let Some(rp) = recovery_point.filter(|&rp| end < rp) {
                // Every offset below the recovery point was fsynced; a log that no longer
                // reaches it lost data that was on stable storage (a file cut short behind
                // the log's back, a file system that rolled back).
                let reason = format!(
                    "the log ends at offset {end}, below offset {rp}, up to which it had been made durable"
                );
                match config.on_corruption {
                    CorruptionPolicy::Fail => {
                        return Err(LogError::corrupt(
                            &active.log_path,
                            active.end().log_len,
                            reason,
                        ));
                    }
                    CorruptionPolicy::Truncate => {
                        tracing::error!(segment = %active.log_path.display(), %reason, "durable data is missing");
                    }
                }
            }
        }
        let producers = load_producers(
            &*fs,
            &dir,
            &config,
            &mut segs,
            &mut snapshots,
            clock.now_ms(),
        )?;
        snapshots::prune(&*fs, &dir, &mut snapshots);
        // Also makes the removal of snapshots above the end durable before any write.
        fs.sync_dir(&dir)
            .map_err(|e| LogError::io("fsync directory", &dir, e))?;
        let active_seg = segs.last().expect("at least one segment").clone();
        let end = active_seg.end().next_offset;
        let shared = Arc::new(Shared {
            dir,
            segments: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
            start_offset: AtomicU64::new(0),
            end_offset: AtomicU64::new(end),
            // Everything present after opening is on disk: sealed segments were synced when
            // sealed, and a repaired active segment is synced below.
            durable_offset: AtomicU64::new(end),
            poisoned: Mutex::new(None),
        });
        let count = segs.len();
        shared.replace_segments(segs);
        let (fs2, dir2) = (fs.clone(), shared.dir.clone());
        let log = Log {
            fs,
            clock,
            active: Active::new(active_seg)?,
            config,
            shared,
            scratch: Vec::new(),
            last_sync: Instant::now(),
            producers,
            snapshots,
            recovery: open_recovery_point(&*fs2, &dir2),
        };
        // Everything present now is on stable storage.
        log.note_recovery_point(true);
        tracing::debug!(dir = %log.dir().display(), segments = count, start = log.start_offset(),
            end, elapsed_ms = started.elapsed().as_millis() as u64, "opened log");
        Ok(log)
    }
}

/// Reads and removes the clean-shutdown marker (durably, before anything else changes).
fn take_marker(fs: &dyn FileSystem, dir: &Path) -> Result<Option<CleanMarker>> {
    let path = dir.join(CLEAN_MARKER);
    if !fs.exists(&path) {
        return Ok(None);
    }
    let f = fs
        .open(&path, false)
        .map_err(|e| LogError::io("open", &path, e))?;
    let mut b = [0u8; MARKER_LEN + 1];
    let n = f
        .read_full_at(&mut b, 0)
        .map_err(|e| LogError::io("read", &path, e))?;
    let marker = CleanMarker::decode(&b[..n]);
    fs.remove_file(&path)
        .map_err(|e| LogError::io("remove", &path, e))?;
    fs.sync_dir(dir)
        .map_err(|e| LogError::io("fsync directory", dir, e))?;
    if marker.is_none() {
        tracing::warn!(path = %path.display(), "ignoring a damaged clean-shutdown marker");
    }
    Ok(marker)
}

/// Lists segment base offsets that have a `.log`, deleting orphan index files, and the
/// offsets of the producer snapshots, deleting temporary files a crash left behind.
fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<(Vec<u64>, BTreeSet<u64>)> {
    let mut found: BTreeMap<u64, Vec<(FileKind, PathBuf)>> = BTreeMap::new();
    let mut snapshots = BTreeSet::new();
    for path in fs.read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        match parse_segment_name(name) {
            Some((base, kind)) => found.entry(base).or_default().push((kind, path)),
            None if name == CLEAN_MARKER
                || name == RECOVERY_POINT
                || name == crate::quarantine::DAMAGED_DIR => {}
            None => match parse_snapshot_name(name) {
                Some((offset, false)) => {
                    snapshots.insert(offset);
                }
                Some((_, true)) => {
                    tracing::info!(path = %path.display(), "removing an unfinished producer snapshot");
                    fs.remove_file(&path)
                        .map_err(|e| LogError::io("remove", &path, e))?;
                }
                None => {
                    tracing::warn!(path = %path.display(), "ignoring unknown file in log directory")
                }
            },
        }
    }
    let mut bases = Vec::new();
    for (base, files) in found {
        if files.iter().any(|(k, _)| *k == FileKind::Log) {
            bases.push(base);
        } else {
            for (_, p) in files {
                tracing::info!(path = %p.display(), "removing index without a log");
                fs.remove_file(&p)
                    .map_err(|e| LogError::io("remove", &p, e))?;
            }
        }
    }
    Ok((bases, snapshots))
}

/// Rebuilds the producer state as of the end of the opened segments (see the module docs).
/// Snapshots above the end are deleted first; the caller syncs the directory.
fn load_producers(
    fs: &dyn FileSystem,
    dir: &Path,
    config: &LogConfig,
    segs: &mut Vec<Arc<Segment>>,
    snapshots: &mut BTreeSet<u64>,
    now_ms: i64,
) -> Result<ProducerStates> {
    // Each round either succeeds or cuts the log shorter, so this ends.
    loop {
        let end = segs.last().expect("at least one segment").end().next_offset;
        snapshots::remove_above(fs, dir, snapshots, end)?;
        let (seg, pos, reason) = match snapshots::rebuild(fs, dir, segs, snapshots, now_ms) {
            Ok(states) => return Ok(states),
            Err(ReplayError::Io(e)) => return Err(e),
            Err(ReplayError::Damage { seg, pos, reason }) => (seg, pos, reason),
        };
        let path = segs[seg].log_path.clone();
        if config.on_corruption == CorruptionPolicy::Fail {
            return Err(LogError::corrupt(&path, pos, reason));
        }
        tracing::error!(segment = %path.display(), position = pos, %reason,
            "damaged batch headers found while rebuilding producer state: truncating the log here");
        if !cut_at_damage(fs, dir, config, segs, seg)? {
            return Err(LogError::corrupt(&path, pos, reason));
        }
    }
}

/// Rescans segment `i` fully and, if it is damaged, cuts the log before the damage: the segment
/// becomes the active one and every later segment is deleted. Returns false when the scan
/// finds nothing to cut.
fn cut_at_damage(
    fs: &dyn FileSystem,
    dir: &Path,
    config: &LogConfig,
    segs: &mut Vec<Arc<Segment>>,
    i: usize,
) -> Result<bool> {
    let seg = segs[i].clone();
    let expected = seg.end();
    let out = seg.rebuild(config.index_interval_bytes)?;
    if out.damage.is_none() && out.end == expected {
        return Ok(false);
    }
    let later: Vec<u64> = segs[i + 1..].iter().map(|s| s.base).collect();
    crate::quarantine::keep_cut(fs, dir, seg.base, out.end.log_len, &later)?;
    seg.truncate_files(out.end)?;
    seg.sync_all()?;
    seg.set_sealed(false);
    for later in segs.drain(i + 1..) {
        for p in crate::segment_paths(dir, later.base) {
            let _ = fs.remove_file(&p);
        }
    }
    Ok(true)
}

fn open_segments(
    fs: &dyn FileSystem,
    dir: &Path,
    config: &LogConfig,
    bases: &[u64],
    marker: Option<CleanMarker>,
    recovery_point: Option<u64>,
    segs: &mut Vec<Arc<Segment>>,
) -> Result<()> {
    for (i, &base) in bases.iter().enumerate() {
        if config.on_corruption == CorruptionPolicy::Truncate
            && let Some(e) = damaged_header(fs, dir, base)?
        {
            // Nothing of this segment can be trusted, not even where it starts: the log
            // ends where it began, and every later segment goes with it.
            tracing::error!(error = %e, "damaged segment header: cutting the log at the segment's start");
            crate::quarantine::keep_cut(fs, dir, base, 0, &bases[i + 1..])?;
            for &later in &bases[i..] {
                for p in crate::segment_paths(dir, later) {
                    let _ = fs.remove_file(&p);
                }
            }
            match segs.last() {
                Some(prev) => prev.set_sealed(false),
                None => segs.push(Arc::new(Segment::create(fs, dir, base, 0)?)),
            }
            return Ok(());
        }
        if let Some(&next_base) = bases.get(i + 1) {
            let seg = Segment::open(fs, dir, base)?;
            match open_sealed(config, &seg, next_base)? {
                SealedState::Ok => {
                    seg.set_sealed(true);
                    segs.push(Arc::new(seg));
                }
                SealedState::CutAt(end) => {
                    // The damaged segment becomes the active one; everything after goes.
                    crate::quarantine::keep_cut(fs, dir, base, end.log_len, &bases[i + 1..])?;
                    seg.truncate_files(end)?;
                    seg.rebuild(config.index_interval_bytes)?;
                    seg.sync_all()?;
                    for &later in &bases[i + 1..] {
                        for p in crate::segment_paths(dir, later) {
                            let _ = fs.remove_file(&p);
                        }
                    }
                    segs.push(Arc::new(seg));
                    return Ok(());
                }
            }
        } else {
            let seg = open_active(fs, dir, config, base, marker, recovery_point)?;
            segs.push(Arc::new(seg));
        }
    }
    Ok(())
}

/// The damage in segment `base`'s log header (bad magic, another base offset), if any. A
/// header too short to read is not damage: a crash while creating the segment (see
/// `open_active`).
fn damaged_header(fs: &dyn FileSystem, dir: &Path, base: u64) -> Result<Option<LogError>> {
    let path = crate::format::segment_path(dir, base, FileKind::Log);
    let f = fs
        .open(&path, false)
        .map_err(|e| LogError::io("open", &path, e))?;
    if f.len().map_err(|e| LogError::io("stat", &path, e))? < FILE_HEADER_LEN as u64 {
        return Ok(None);
    }
    match Segment::open(fs, dir, base) {
        Ok(_) => Ok(None),
        Err(e @ LogError::Corrupt { .. }) => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

enum SealedState {
    Ok,
    CutAt(SegmentEnd),
}

fn open_sealed(config: &LogConfig, seg: &Segment, next_base: u64) -> Result<SealedState> {
    let Some(reason) = seg.quick_check(next_base)? else {
        return Ok(SealedState::Ok);
    };
    tracing::warn!(segment = %seg.log_path.display(), %reason, "rebuilding indexes of sealed segment");
    let out = seg.rebuild(config.index_interval_bytes)?;
    let damage = match out.damage {
        Some(d) => Some(d),
        None if out.end.next_offset != next_base => Some((
            out.end.log_len,
            format!(
                "segment ends at offset {}, but the next segment starts at {next_base}",
                out.end.next_offset
            ),
        )),
        None => None,
    };
    match damage {
        None => {
            // Seal it again exactly as a roll would.
            let count = next_base - seg.base;
            let mut entries = out.time_entries;
            if entries.last().map(|e| u64::from(e.relative_offset)) != Some(count) {
                entries.push(TimeIndexEntry {
                    max_timestamp: out.max_timestamp,
                    relative_offset: count as u32,
                });
            }
            seg.rewrite_time_index(&entries)?;
            seg.sync_all()?;
            Ok(SealedState::Ok)
        }
        Some((pos, reason)) => match config.on_corruption {
            CorruptionPolicy::Fail => Err(LogError::corrupt(&seg.log_path, pos, reason)),
            CorruptionPolicy::Truncate => {
                tracing::error!(segment = %seg.log_path.display(), position = pos, %reason,
                    "damaged sealed segment: truncating the log here");
                Ok(SealedState::CutAt(out.end))
            }
        },
    }
}

fn open_active(
    fs: &dyn FileSystem,
    dir: &Path,
    config: &LogConfig,
    base: u64,
    marker: Option<CleanMarker>,
    recovery_point: Option<u64>,
) -> Result<Segment> {
    let log_path = crate::format::segment_path(dir, base, FileKind::Log);
    let torn_header = {
        let f = fs
            .open(&log_path, false)
            .map_err(|e| LogError::io("open", &log_path, e))?;
        f.len().map_err(|e| LogError::io("stat", &log_path, e))? < FILE_HEADER_LEN as u64
    };
    if torn_header {
        // A crash while the segment was being created: it never held data.
        tracing::warn!(segment = %log_path.display(), "recreating a segment torn at creation");
        return Segment::create(fs, dir, base, 0);
    }
    let seg = Segment::open(fs, dir, base)?;
    if let Some(m) = marker.filter(|m| m.active_base == base)
        && trusts(&seg, &m)?
    {
        seg.set_end(SegmentEnd {
            next_offset: m.next_offset,
            log_len: m.log_len,
        });
        seg.set_max_timestamp(m.max_timestamp);
        return Ok(seg);
    }
    let out = seg.rebuild(config.index_interval_bytes)?;
    if let Some((pos, reason)) = &out.damage {
        let dropped = seg.log.len().unwrap_or(0).saturating_sub(out.end.log_len);
        // A torn tail is what a crash leaves of writes that were never made durable. A bad
        // batch below the recovery point was on stable storage: it went bad since. One
        // followed by valid batches is damage too, unless the topic fsyncs every
        // acknowledgement (flush=always): then everything past the recovery point was never
        // acknowledged, and a power loss may have kept later pages of it but not earlier ones.
        let valid_after = valid_batch_after(&seg, *pos)?;
        let why = if let Some(rp) = recovery_point.filter(|&rp| out.end.next_offset < rp) {
            Some(format!("below offset {rp}, which had been made durable"))
        } else if (!matches!(config.flush, FlushPolicy::Always) || config.ambiguous_tail_is_damage)
            && let Some(at) = valid_after
        {
            Some(format!("a valid batch follows at byte {at}"))
        } else {
            None
        };
        match (why, config.on_corruption) {
            (Some(why), CorruptionPolicy::Fail) => {
                return Err(LogError::corrupt(
                    &seg.log_path,
                    *pos,
                    format!(
                        "damaged batch at offset {} ({reason}): {why}",
                        out.end.next_offset
                    ),
                ));
            }
            (Some(why), CorruptionPolicy::Truncate) => {
                tracing::error!(segment = %seg.log_path.display(), position = pos, %reason, %why,
                    dropped_bytes = dropped, "damaged active segment: cutting the log at the damage");
                crate::quarantine::keep_cut(fs, dir, base, out.end.log_len, &[])?;
            }
            (None, _) => {
                tracing::warn!(segment = %seg.log_path.display(), position = pos, %reason,
                    dropped_bytes = dropped, "truncating the torn tail of the active segment");
                // Valid batches after the bad one: it may be a bit flip, not a torn write. What
                // the cut drops may be acknowledged events, so it is kept, not destroyed.
                if valid_after.is_some() {
                    crate::quarantine::keep_cut(fs, dir, base, out.end.log_len, &[])?;
                }
            }
        }
        seg.log
            .set_len(out.end.log_len)
            .map_err(|e| LogError::io("truncate", &seg.log_path, e))?;
    }
    seg.sync_all()?;
    Ok(seg)
}

/// Where the first valid batch after the bad one at `pos` starts, if any: right after it
/// (when its length field is intact) or, failing that, at any later byte (when the length
/// itself was hit). Reads at most [`LOOK_AHEAD`] bytes past `pos`.
fn valid_batch_after(seg: &Segment, pos: u64) -> Result<Option<u64>> {
    let log_len = seg
        .log
        .len()
        .map_err(|e| LogError::io("stat", &seg.log_path, e))?;
    let want = (log_len.saturating_sub(pos)).min(LOOK_AHEAD) as usize;
    let mut buf = vec![0u8; want];
    let n = seg
        .log
        .read_full_at(&mut buf, pos)
        .map_err(|e| LogError::io("read", &seg.log_path, e))?;
    let buf = &buf[..n];
    let valid_at = |at: usize| {
        let rest = &buf[at..];
        cascade_record::BatchHeader::parse(rest)
            .ok()
            .filter(|h| h.total_len() <= rest.len())
            .is_some_and(|h| cascade_record::validate_batch(&rest[..h.total_len()]).is_ok())
    };
    if let Ok(h) = cascade_record::BatchHeader::parse(buf)
        && h.total_len() < buf.len()
        && valid_at(h.total_len())
    {
        return Ok(Some(pos + h.total_len() as u64));
    }
    // Byte by byte: a candidate must carry the batch magic at its place (cheap to test) before
    // the header is parsed and the CRC checked.
    Ok((1..buf.len().saturating_sub(cascade_record::HEADER_LEN))
        .find(|&at| buf[at + 16] == 2 && valid_at(at))
        .map(|at| pos + at as u64))
}

/// Most bytes past a bad batch searched for a valid one.
const LOOK_AHEAD: u64 = 64 << 20;

/// The recovery point recorded before the last stop or crash, if the file is there and whole.
fn read_recovery_point(fs: &dyn FileSystem, dir: &Path) -> Option<u64> {
    let path = dir.join(RECOVERY_POINT);
    if !fs.exists(&path) {
        return None;
    }
    let f = fs.open(&path, false).ok()?;
    let mut b = [0u8; RECOVERY_LEN + 1];
    let n = f.read_full_at(&mut b, 0).ok()?;
    let rp = decode_recovery_point(&b[..n]);
    if rp.is_none() {
        tracing::warn!(path = %path.display(), "ignoring a damaged recovery point");
    }
    rp
}

/// The recovery-point file, created if missing (its name made durable: a power cut must not
/// take away the file whose value says what was durable).
fn open_recovery_point(fs: &dyn FileSystem, dir: &Path) -> Option<Arc<dyn crate::fs::File>> {
    let path = dir.join(RECOVERY_POINT);
    let existed = fs.exists(&path);
    match fs.open(&path, true) {
        Ok(f) => {
            if !existed && let Err(e) = fs.sync_dir(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot make the new recovery point's name durable");
            }
            Some(f)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the recovery point: recovery will tell damage from torn writes less strictly");
            None
        }
    }
}

/// True when the marker matches the files exactly, so the active segment needs no scan.
fn trusts(seg: &Segment, m: &CleanMarker) -> Result<bool> {
    let log_len = seg
        .log
        .len()
        .map_err(|e| LogError::io("stat", &seg.log_path, e))?;
    let index_len = seg
        .index
        .len()
        .map_err(|e| LogError::io("stat", &seg.index_path, e))?;
    let time_len = seg
        .time
        .len()
        .map_err(|e| LogError::io("stat", &seg.time_path, e))?;
    let header_ok = |f: &dyn crate::fs::File, k| -> bool {
        let mut b = [0u8; FILE_HEADER_LEN];
        f.read_full_at(&mut b, 0).is_ok()
            && crate::format::FileHeader::decode(&b, k).is_ok_and(|h| h.base_offset == seg.base)
    };
    Ok(m.next_offset >= seg.base
        && log_len == m.log_len
        && index_len == Position::file_offset(m.next_offset - seg.base)
        && time_len >= FILE_HEADER_LEN as u64
        && (time_len - FILE_HEADER_LEN as u64).is_multiple_of(12)
        && header_ok(&*seg.index, FileKind::Index)
        && header_ok(&*seg.time, FileKind::TimeIndex))
}
