//! Keeping what a damage cut drops.
//!
//! Under [`crate::CorruptionPolicy::Truncate`] recovery cuts a log before its first damaged
//! batch, so that the replica can fetch the rest again from another copy. The bytes past the
//! cut are mostly intact batches that were acknowledged. When every copy is damaged there is
//! no other copy to fetch them from, and they are the only record of those events, so they
//! are never deleted: before the cut, the tail of the damaged segment is copied and every
//! later segment's log is moved into `<partition>/damaged/`, each name prefixed with the time
//! of the cut. Index files are not kept (they are rebuilt from a log).
//!
//! Invariants: the kept copy is durable (file and directory fsynced) before the live log is
//! cut or a later segment is removed, so a crash in between loses nothing; a name in
//! `damaged/` is never reused (the prefix is the cut's time in milliseconds, bumped while
//! taken); recovery never reads `damaged/` back. An operator removes it once the partition
//! is healthy (`docs/operations.md`).

use crate::error::{LogError, Result};
use crate::format::{FileKind, segment_path};
use crate::fs::FileSystem;
use std::path::{Path, PathBuf};

/// The directory, inside a partition's log directory, that holds what damage cuts dropped.
pub const DAMAGED_DIR: &str = "damaged";

/// Copies bytes `from..` of segment `base`'s log, and moves the logs of the segments
/// `later`, into `dir/damaged/`, durably; removes the later segments' index files. Returns
/// where the copies went. Called before the live log is cut at `from`.
pub(crate) fn keep_cut(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    from: u64,
    later: &[u64],
) -> Result<PathBuf> {
    let kept = dir.join(DAMAGED_DIR);
    fs.create_dir_all_durable(&kept)
        .map_err(|e| LogError::io("create", &kept, e))?;
    let taken: Vec<String> = fs
        .read_dir(&kept)
        .map_err(|e| LogError::io("list", &kept, e))?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    let mut stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    while taken.iter().any(|n| n.starts_with(&format!("{stamp}-"))) {
        stamp += 1;
    }
    let name = |b: u64| {
        let log = segment_path(dir, b, FileKind::Log);
        let file = log
            .file_name()
            .expect("a segment file name")
            .to_string_lossy()
            .to_string();
        kept.join(format!("{stamp}-{file}"))
    };
    let src_path = segment_path(dir, base, FileKind::Log);
    let src = fs
        .open(&src_path, false)
        .map_err(|e| LogError::io("open", &src_path, e))?;
    let len = src.len().map_err(|e| LogError::io("stat", &src_path, e))?;
    if from < len {
        let to_path = name(base).with_extension(format!("log.from-{from}"));
        let copy = || -> Result<()> {
            let to = fs
                .open(&to_path, true)
                .map_err(|e| LogError::io("create", &to_path, e))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut at = from;
            while at < len {
                let n = ((len - at) as usize).min(buf.len());
                let got = src
                    .read_full_at(&mut buf[..n], at)
                    .map_err(|e| LogError::io("read", &src_path, e))?;
                if got == 0 {
                    break;
                }
                to.write_all_at(&buf[..got], at - from)
                    .map_err(|e| LogError::io("write", &to_path, e))?;
                at += got as u64;
            }
            to.sync_data()
                .map_err(|e| LogError::io("fsync", &to_path, e))
        };
        if let Err(e) = copy() {
            // A partial copy is no copy; the open fails (and is retried) with the live log
            // untouched. Left behind, each retry's partial copy would fill the disk.
            let _ = fs.remove_file(&to_path);
            return Err(e);
        }
    }
    for &b in later {
        let log = segment_path(dir, b, FileKind::Log);
        if fs.exists(&log) {
            fs.rename(&log, &name(b))
                .map_err(|e| LogError::io("rename", &log, e))?;
        }
    }
    fs.sync_dir(&kept)
        .map_err(|e| LogError::io("fsync directory", &kept, e))?;
    // The moves out of the log directory are durable before anything there is removed.
    fs.sync_dir(dir)
        .map_err(|e| LogError::io("fsync directory", dir, e))?;
    for &b in later {
        for kind in [FileKind::Index, FileKind::TimeIndex] {
            let _ = fs.remove_file(&segment_path(dir, b, kind));
        }
    }
    tracing::error!(kept = %kept.display(), segment = base, from, later = later.len(),
        "kept the bytes a damage cut drops (remove them once the partition is healthy)");
    Ok(kept)
}
