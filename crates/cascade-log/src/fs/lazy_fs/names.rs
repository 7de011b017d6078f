//! The name half of [`LazyFs`](super::LazyFs): a journal, on the inner file system, of the
//! name operations (create, remove, rename) and shrinks not yet made durable, with what it
//! takes to undo each, so that the next start after a kill can undo them as a power cut would.
//!
//! Everything lives in a hidden directory at the root the layer governs (`<root>/.lazyfs/`):
//! `journal`, one text line per record, and `trash/<id>`, the file a pending removal took away
//! (moved there, so its contents stay), a copy of the file a pending rename replaced, or the
//! bytes a pending shrink cut. A record is written and fsynced before its operation starts, so
//! a kill at any point leaves enough on disk to undo it, and every undo step is idempotent
//! given the state a partial earlier attempt leaves (a kill during recovery is replayed). When
//! an operation becomes durable (the directories it changed were fsynced, or for a shrink the
//! file was) a `done` record follows and its trash goes; when nothing is pending the journal is
//! emptied.
//!
//! Records: `create <id> <path>`, `remove <id> <path>`, `rename <id> <from> <to> <0|1>` (1: a
//! file at `to` was replaced and is in the trash), `shrink <id> <path> <len>` (the trash holds
//! what lay past `len`), `done <id>...`. Paths are hex-encoded bytes, so any name fits on a
//! line. Only lines ending in a newline count: a kill while appending leaves a torn last line
//! whose operation never started.

use super::super::{File, FileSystem};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The hidden directory at the governed root that holds the journal and the trash.
pub(super) const STATE_DIR: &str = ".lazyfs";

/// Past this size a journal that still holds pending operations is rewritten with only them.
const COMPACT_AT: u64 = if cfg!(test) { 4 << 10 } else { 1 << 20 };

/// A name operation (or shrink) that a kill must undo until it is made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// A file was created at `path`.
    Create { path: PathBuf },
    /// The file at `path` was removed (moved to the trash).
    Remove { path: PathBuf },
    /// `from` was renamed to `to`; `replaced` if a file at `to` was replaced (copied to the
    /// trash first).
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: bool,
    },
    /// The file at `path` was cut to `len` bytes; the trash holds the bytes that lay past it.
    Shrink { path: PathBuf, len: u64 },
}

/// What an operation waits for before it is durable.
#[derive(Debug)]
enum Waits {
    /// An fsync, begun after the operation, of each of these directories.
    Dirs(BTreeSet<PathBuf>),
    /// An fsync of the file (by its path), begun after the shrink.
    FileSync,
}

#[derive(Debug)]
struct Entry {
    op: Op,
    waits: Waits,
}

fn hex(p: &Path) -> String {
    p.as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unhex(s: &str) -> Option<PathBuf> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    Some(PathBuf::from(OsStr::from_bytes(&bytes?)))
}

fn parent(p: &Path) -> PathBuf {
    p.parent().unwrap_or(Path::new("")).to_path_buf()
}

/// True if `p`'s directory exists: an undo never recreates a directory that went away (a
/// directory removal is durable at once, and whatever it held went with it).
fn parent_exists(inner: &dyn FileSystem, p: &Path) -> bool {
    p.parent()
        .is_none_or(|d| d.as_os_str().is_empty() || inner.exists(d))
}

impl Op {
    fn encode(&self, id: u64) -> String {
        match self {
            Op::Create { path } => format!("create {id} {}\n", hex(path)),
            Op::Remove { path } => format!("remove {id} {}\n", hex(path)),
            Op::Rename { from, to, replaced } => {
                format!(
                    "rename {id} {} {} {}\n",
                    hex(from),
                    hex(to),
                    u8::from(*replaced)
                )
            }
            Op::Shrink { path, len } => format!("shrink {id} {} {len}\n", hex(path)),
        }
    }

    /// The operation with `f` applied to each path it names.
    fn map_paths(&self, f: impl Fn(&Path) -> PathBuf) -> Op {
        match self {
            Op::Create { path } => Op::Create { path: f(path) },
            Op::Remove { path } => Op::Remove { path: f(path) },
            Op::Rename { from, to, replaced } => Op::Rename {
                from: f(from),
                to: f(to),
                replaced: *replaced,
            },
            Op::Shrink { path, len } => Op::Shrink {
                path: f(path),
                len: *len,
            },
        }
    }

    /// Every path the operation names.
    fn paths(&self) -> Vec<&Path> {
        match self {
            Op::Create { path } | Op::Remove { path } | Op::Shrink { path, .. } => vec![path],
            Op::Rename { from, to, .. } => vec![from, to],
        }
    }

    fn waits(&self) -> Waits {
        match self {
            Op::Shrink { .. } => Waits::FileSync,
            // POSIX makes a name change durable by an fsync of the directory it is in; a
            // rename changes two when it crosses directories, and is kept only once both were
            // fsynced (see the module docs of `LazyFs`).
            _ => Waits::Dirs(self.paths().into_iter().map(parent).collect()),
        }
    }

    fn has_trash(&self) -> bool {
        match self {
            Op::Create { .. } => false,
            Op::Remove { .. } | Op::Shrink { .. } => true,
            Op::Rename { replaced, .. } => *replaced,
        }
    }

    /// Undoes the operation on `inner`, as far as it took effect; `trash` is its trash file.
    /// Running it again after it (or part of it) ran changes nothing more.
    fn undo(&self, inner: &dyn FileSystem, trash: &Path) -> io::Result<()> {
        match self {
            Op::Create { path } => {
                if inner.exists(path) {
                    inner.remove_file(path)?;
                }
            }
            Op::Remove { path } => {
                // No trash: the removal never happened, or its undo already ran.
                if inner.exists(trash) && parent_exists(inner, path) {
                    inner.rename(trash, path)?;
                }
            }
            Op::Rename { from, to, replaced } => {
                // With `from` still there the rename never happened (or was undone already).
                if inner.exists(to) && !inner.exists(from) && parent_exists(inner, from) {
                    inner.rename(to, from)?;
                }
                // If the rename never happened the copy equals what is at `to`: harmless.
                if *replaced && inner.exists(trash) && parent_exists(inner, to) {
                    inner.rename(trash, to)?;
                }
            }
            Op::Shrink { path, len } => {
                if inner.exists(path) && inner.exists(trash) {
                    let f = inner.open(path, false)?;
                    let cut = inner.open(trash, false)?;
                    let cut_len = cut.len()?;
                    // Anything past `len` now was written after the shrink and never synced
                    // (a sync would have made the shrink durable): a power cut may drop it.
                    f.set_len(*len)?;
                    copy(&*cut, 0, cut_len, &*f, *len)?;
                    f.sync_data()?;
                }
            }
        }
        Ok(())
    }
}

/// One record of the journal.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Op(u64, Op),
    Done(Vec<u64>),
}

fn parse_line(line: &str) -> Option<Record> {
    let mut w = line.split(' ');
    let kind = w.next()?;
    if kind == "done" {
        return w
            .map(|id| id.parse().ok())
            .collect::<Option<_>>()
            .map(Record::Done);
    }
    let id = w.next()?.parse().ok()?;
    let op = match kind {
        "create" => Op::Create {
            path: unhex(w.next()?)?,
        },
        "remove" => Op::Remove {
            path: unhex(w.next()?)?,
        },
        "rename" => Op::Rename {
            from: unhex(w.next()?)?,
            to: unhex(w.next()?)?,
            replaced: match w.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
        },
        "shrink" => Op::Shrink {
            path: unhex(w.next()?)?,
            len: w.next()?.parse().ok()?,
        },
        _ => return None,
    };
    w.next().is_none().then_some(Record::Op(id, op))
}

/// Where the complete lines of `bytes` (a journal) end: past it at most a torn line.
fn complete_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// The operations `bytes` (a journal) records and never marks done, by id. A torn last line is
/// ignored; a damaged complete one is an error, since undoing too little would be silent.
fn pending_in(bytes: &[u8]) -> io::Result<BTreeMap<u64, Op>> {
    let mut pending = BTreeMap::new();
    let complete = complete_len(bytes);
    for line in bytes[..complete].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let record = std::str::from_utf8(line).ok().and_then(parse_line);
        match record {
            Some(Record::Op(id, op)) => {
                pending.insert(id, op);
            }
            Some(Record::Done(ids)) => {
                for id in ids {
                    pending.remove(&id);
                }
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "damaged line in the lazy file system's journal: {:?}",
                        String::from_utf8_lossy(line)
                    ),
                ));
            }
        }
    }
    Ok(pending)
}

/// Copies `src[from..end]` to `dst` at `at`.
pub(super) fn copy(src: &dyn File, from: u64, end: u64, dst: &dyn File, at: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (end.saturating_sub(from)).min(1 << 20) as usize];
    let mut pos = from;
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        let got = src.read_full_at(&mut buf[..n], pos)?;
        if got == 0 {
            break;
        }
        dst.write_all_at(&buf[..got], at + (pos - from))?;
        pos += got as u64;
    }
    Ok(())
}

/// The open journal and what it holds pending.
#[derive(Debug)]
pub(super) struct Journal {
    file: Arc<dyn File>,
    len: u64,
    next_id: u64,
    pending: BTreeMap<u64, Entry>,
}

/// The pending name operations of one governed root. Shared by the file system and its open
/// files (a shrink is recorded by the file).
#[derive(Debug)]
pub(super) struct Names {
    inner: Arc<dyn FileSystem>,
    root: PathBuf,
    state: PathBuf,
    /// Set by a simulated kill: nothing more is written, not even at drop.
    killed: AtomicBool,
    journal: Mutex<Journal>,
}

impl Names {
    /// Undoes whatever the journal under `root` still holds pending (a kill left it), empties
    /// it and the trash, and starts governing `root`.
    pub(super) fn recover(inner: Arc<dyn FileSystem>, root: &Path) -> io::Result<Self> {
        let state = root.join(STATE_DIR);
        let trash_dir = state.join("trash");
        inner.create_dir_all_durable(&trash_dir)?;
        let path = state.join("journal");
        let file = inner.open(&path, true)?;
        inner.sync_dir(&state)?;
        let mut bytes = vec![0u8; file.len()? as usize];
        let n = file.read_full_at(&mut bytes, 0)?;
        bytes.truncate(n);
        // Paths are journaled relative to the root, so a data directory copied or moved
        // elsewhere is recovered in place, never by touching the original.
        let pending = pending_in(&bytes)?
            .into_iter()
            .map(|(id, op)| (id, op.map_paths(|p| root.join(p))));
        // A compaction a kill interrupted left this; the journal itself is still whole.
        let _ = inner.remove_file(&state.join("journal.tmp"));
        // The records below must not be glued to a torn line: they would damage it.
        let mut len = complete_len(&bytes) as u64;
        file.set_len(len)?;
        for (id, op) in pending.rev() {
            tracing::info!(?op, "undoing a name operation a kill left unsynced");
            op.undo(&*inner, &trash_dir.join(id.to_string()))?;
            for dir in op.paths().into_iter().map(parent) {
                if inner.exists(&dir) {
                    inner.sync_dir(&dir)?;
                }
            }
            // A kill from here on does not undo this one again: a later operation's undo may
            // have made its undo wrong (a file created again where one was removed).
            let done = format!("done {id}\n");
            file.write_all_at(done.as_bytes(), len)?;
            file.sync_data()?;
            len += done.len() as u64;
        }
        // Everything is undone or durable: the trash (including copies a kill left before
        // their record was written) is garbage.
        for p in inner.read_dir(&trash_dir)? {
            inner.remove_file(&p)?;
        }
        inner.sync_dir(&trash_dir)?;
        file.set_len(0)?;
        file.sync_data()?;
        Ok(Self {
            inner,
            root: root.to_path_buf(),
            state,
            killed: AtomicBool::new(false),
            journal: Mutex::new(Journal {
                file,
                len: 0,
                next_id: 0,
                pending: BTreeMap::new(),
            }),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Journal> {
        // Each step below leaves the journal and the in-memory map agreeing, or returns an
        // error before changing either: still usable after a panic elsewhere.
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if name operations on `p` are journaled: under the root, outside the state dir.
    pub(super) fn governs(&self, p: &Path) -> bool {
        p.starts_with(&self.root) && !p.starts_with(&self.state)
    }

    pub(super) fn inner(&self) -> &dyn FileSystem {
        &*self.inner
    }

    pub(super) fn state_dir(&self) -> &Path {
        &self.state
    }

    pub(super) fn trash(&self, id: u64) -> PathBuf {
        self.state.join("trash").join(id.to_string())
    }

    #[cfg(test)]
    pub(super) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    pub(super) fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// The id the next record will get: an fsync begun now covers only ids below it.
    pub(super) fn next_id(j: &Journal) -> u64 {
        j.next_id
    }

    fn append(&self, j: &mut Journal, line: &str) -> io::Result<()> {
        if self.killed() {
            return Err(io::Error::other("the lazy file system was killed"));
        }
        let r = j
            .file
            .write_all_at(line.as_bytes(), j.len)
            .and_then(|()| j.file.sync_data());
        if r.is_err() {
            // The next record goes here again: leave no part of this one to be read.
            let _ = j.file.set_len(j.len);
        }
        r?;
        j.len += line.len() as u64;
        Ok(())
    }

    /// Journals `op` (its trash, if any, already in place at [`Names::trash`] of
    /// [`Names::next_id`]) before the caller performs it; returns its id.
    pub(super) fn record(&self, j: &mut Journal, op: Op) -> io::Result<u64> {
        let id = j.next_id;
        self.append(j, &self.relative(&op).encode(id))?;
        j.next_id += 1;
        let waits = op.waits();
        j.pending.insert(id, Entry { op, waits });
        Ok(id)
    }

    fn relative(&self, op: &Op) -> Op {
        op.map_paths(|p| p.strip_prefix(&self.root).unwrap_or(p).to_path_buf())
    }

    /// Rewrites the journal with only the pending operations: one kept pending for long (a
    /// directory never synced again) must not make it grow without bound.
    fn compact(&self, j: &mut Journal) -> io::Result<()> {
        let text: String = j
            .pending
            .iter()
            .map(|(id, e)| self.relative(&e.op).encode(*id))
            .collect();
        let tmp = self.state.join("journal.tmp");
        let f = self.inner.open(&tmp, true)?;
        f.set_len(0)?;
        f.write_all_at(text.as_bytes(), 0)?;
        f.sync_data()?;
        // Atomic: a kill leaves the old journal or the new one, either of them whole.
        self.inner.rename(&tmp, &self.state.join("journal"))?;
        self.inner.sync_dir(&self.state)?;
        j.file = f;
        j.len = text.len() as u64;
        Ok(())
    }

    /// Marks operations durable (or moot): journals that, then drops their trash.
    pub(super) fn finish(&self, j: &mut Journal, ids: &[u64]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut line = String::from("done");
        for id in ids {
            line.push_str(&format!(" {id}"));
        }
        line.push('\n');
        self.append(j, &line)?;
        for id in ids {
            if let Some(e) = j.pending.remove(id)
                && e.op.has_trash()
            {
                // A trash file left behind is removed at the next recovery anyway.
                let _ = self.inner.remove_file(&self.trash(*id));
            }
        }
        if j.pending.is_empty() {
            j.file.set_len(0)?;
            j.file.sync_data()?;
            j.len = 0;
        } else if j.len > COMPACT_AT {
            self.compact(j)?;
        }
        Ok(())
    }

    /// Finishes every pending operation that names a path under `dir` (a directory removed or
    /// created anew: nothing there can be undone any more).
    pub(super) fn finish_under(&self, j: &mut Journal, dir: &Path) -> io::Result<()> {
        let ids: Vec<u64> = j
            .pending
            .iter()
            .filter(|(_, e)| e.op.paths().iter().any(|p| p.starts_with(dir)))
            .map(|(id, _)| *id)
            .collect();
        self.finish(j, &ids)
    }

    /// Finishes the pending shrinks of the file at `path`, begun before id `before`: the file
    /// was fsynced. Also called before the file's name changes, so a shrink is only ever undone
    /// on the name it was recorded under (see the module docs of `LazyFs`).
    pub(super) fn finish_shrinks(
        &self,
        j: &mut Journal,
        path: &Path,
        before: u64,
    ) -> io::Result<()> {
        let ids: Vec<u64> = j
            .pending
            .range(..before)
            .filter(|(_, e)| matches!(&e.op, Op::Shrink { path: p, .. } if p == path))
            .map(|(id, _)| *id)
            .collect();
        self.finish(j, &ids)
    }

    /// `dir` was fsynced by a call begun before id `before`: name changes in it are durable.
    pub(super) fn dir_synced(&self, j: &mut Journal, dir: &Path, before: u64) -> io::Result<()> {
        let mut ids = Vec::new();
        for (id, e) in j.pending.range_mut(..before) {
            if let Waits::Dirs(dirs) = &mut e.waits
                && dirs.remove(dir)
                && dirs.is_empty()
            {
                ids.push(*id);
            }
        }
        self.finish(j, &ids)
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        if self.killed() {
            return;
        }
        // A clean stop: the kernel would write the directories back in time, so nothing
        // pending is lost (as with the contents of a closed file).
        let mut j = self.lock();
        let ids: Vec<u64> = j.pending.keys().copied().collect();
        if let Err(e) = self.finish(&mut j, &ids) {
            tracing::warn!(error = %e, "committing pending name operations at a clean stop");
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// How the journal spells a path, for tests that write one by hand.
    pub(in super::super) fn hex_of(p: &Path) -> String {
        hex(p)
    }

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_ignored() {
        let ops = [
            Op::Create {
                path: "/d/a b".into(),
            },
            Op::Remove {
                path: "/d/\u{e9}".into(),
            },
            Op::Rename {
                from: "/d/x".into(),
                to: "/e/y".into(),
                replaced: true,
            },
            Op::Shrink {
                path: "/d/s".into(),
                len: 42,
            },
        ];
        let mut text = String::new();
        for (id, op) in ops.iter().enumerate() {
            text.push_str(&op.encode(id as u64));
            assert_eq!(
                parse_line(op.encode(id as u64).trim_end()),
                Some(Record::Op(id as u64, op.clone()))
            );
        }
        text.push_str("done 1 3\n");
        text.push_str("create 4 2f");
        let pending = pending_in(text.as_bytes()).unwrap();
        assert_eq!(
            pending.into_iter().collect::<Vec<_>>(),
            vec![(0, ops[0].clone()), (2, ops[2].clone())]
        );
        assert!(pending_in(b"create x 2f\n").is_err());
    }
}
