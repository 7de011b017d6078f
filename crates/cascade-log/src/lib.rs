//! Cascade's storage engine: the on-disk log of one partition.
//!
//! # Layout
//!
//! ```text
//! <dir>/
//!   00000000000000000000.log        file header + record batches (Kafka RecordBatch v2)
//!   00000000000000000000.index      file header + u32 LE per event: position of its batch
//!   00000000000000000000.timeindex  file header + sparse (max timestamp, relative offset)
//!   00000000000000052817.log        the next segment, named by its base offset
//!   …
//!   00000000000000052817.producers  idempotent-producer state as of offset 52817 (a snapshot)
//!   clean-shutdown                  present only while the log is closed cleanly
//! ```
//!
//! Event N lives in the segment with the largest base ≤ N; its batch is at the position stored
//! at byte `32 + 4·(N − base)` of that segment's `.index`: one 4-byte read, O(1). See
//! `docs/storage-format.md` for the byte layouts.
//!
//! # Contract
//!
//! - Offsets are dense (`start..end`), assigned on append, never reused.
//! - One writer per log ([`Log`], `&mut self`); any number of [`LogReader`]s, which never wait
//!   on the writer.
//! - An append is durable once [`Log::durable_offset`] passes it; under
//!   [`FlushPolicy::Always`] the owner acknowledges only then (group commit: one fsync covers
//!   every append made before it; [`SharedLog`] packages this for threads).
//! - A crash at any instant loses nothing that was durable and leaves a log that opens: torn
//!   tails are cut off by checksum, indexes rebuilt from the log. Damage to sealed data is
//!   reported with file and position, never returned as data.
//! - After a failed fsync the log refuses writes until reopened (fail-stop).
//! - Idempotent producers (Kafka's, batches with a producer id ≥ 0): [`Log::append`] accepts a
//!   producer's batches only in sequence, answers an exact retry of one of its last
//!   [`KEPT_BATCHES`] batches with the original offsets without writing it again
//!   ([`AppendInfo::duplicate`]), refuses gaps and fences old epochs. The state
//!   ([`ProducerStates`], [`Log::producer_states`]) is a function of the log's batches:
//!   followers ([`Log::append_replicated`]) build the same one, and it is rebuilt from a
//!   snapshot file plus the batch headers after it on open and after truncation, so it survives
//!   restarts, crashes and truncations. Idle producers expire ([`Log::expire_producers`]).
//!
//! The crate has no networking and no async runtime: callers decide threads and runtimes. All
//! file IO goes through [`fs::FileSystem`], so tests inject faults and power loss with
//! [`fs::MemFs`].

mod bufpool;
mod config;
mod error;
pub mod format;
pub mod fs;
pub mod index;
mod log;
mod producers;
pub mod quarantine;
mod reader;
mod recovery;
mod segment;
mod shared;
mod snapshots;

pub use cascade_record as record;
pub use config::{
    Clock, CorruptionPolicy, DEFAULT_SEGMENT_BYTES, FlushPolicy, LogConfig, ManualClock,
    SystemClock,
};
pub use error::{LogError, Result};
pub use log::{AppendInfo, Log, RetentionOutcome};
pub use producers::{
    BatchMeta, KEPT_BATCHES, ProducerEntry, ProducerStates, SeqCheck, last_sequence, next_sequence,
};
pub use reader::{Fetched, LogReader};
pub use shared::SharedLog;

use std::path::{Path, PathBuf};

/// The three file paths of the segment with base offset `base` in `dir`.
pub(crate) fn segment_paths(dir: &Path, base: u64) -> [PathBuf; 3] {
    use format::{FileKind, segment_path};
    [
        segment_path(dir, base, FileKind::Log),
        segment_path(dir, base, FileKind::Index),
        segment_path(dir, base, FileKind::TimeIndex),
    ]
}
