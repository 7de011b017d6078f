//! [`LogError`]: every way a log operation can fail, with the file and position involved.
//!
//! The variants are shaped for the caller's next move: `InvalidBatch` and `OffsetOutOfRange`
//! are the client's fault and change nothing; so are the idempotent-producer refusals
//! (`OutOfOrderSequence`, `ProducerFenced`, `UnknownProducerId`, `InvalidProducerFields`,
//! `MixedDuplicates`), which carry what a producer needs to react; `Io` on append left the log
//! as it was (the torn bytes were cut off again); `Corrupt` names damage found on disk;
//! `Poisoned` means an fsync failed and the log refuses writes until it is reopened
//! (fail-stop).

use std::io;
use std::path::PathBuf;

/// Result alias for log operations.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// An error from the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An IO operation on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "fsync", "open", …).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Data on disk failed a checksum or consistency check.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage in that file.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// A batch given to `append` is not valid; nothing was written.
    #[error("invalid batch at byte {position} of the request: {source}")]
    InvalidBatch {
        /// Byte position of the bad batch within the appended buffer.
        position: usize,
        /// Why it is invalid.
        #[source]
        source: cascade_record::DecodeError,
    },
    /// The requested offset is outside `[start, end]`.
    #[error("offset {requested} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The log start offset.
        start: u64,
        /// The log end offset (next offset to be assigned).
        end: u64,
    },
    /// A replicated append did not continue the log.
    #[error("append at offset {got} does not continue the log, whose end is {expected}")]
    NonContiguous {
        /// The log end offset.
        expected: u64,
        /// The base offset of the batch offered.
        got: u64,
    },
    /// The append is larger than one segment can hold.
    #[error("append of {size} bytes exceeds the segment limit of {max} bytes")]
    TooLarge {
        /// Bytes offered.
        size: u64,
        /// The largest append the log accepts.
        max: u64,
    },
    /// A write whose outcome on disk is unknown failed earlier (an fsync, or cutting back a
    /// failed append); the log accepts no more writes.
    #[error("log {dir} is poisoned: {reason}; reopen it to recover")]
    Poisoned {
        /// The log's directory.
        dir: PathBuf,
        /// The failure that poisoned it.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// A batch of an idempotent producer does not continue the producer's sequence at its
    /// epoch: a gap, an overlap, a retry too old to be recognised, or a new epoch not starting
    /// at 0. Nothing was written.
    #[error(
        "out-of-order sequence from producer {producer_id} at epoch {epoch}: expected sequence \
         {expected}, got {got}; nothing was written"
    )]
    OutOfOrderSequence {
        /// The producer id of the batch.
        producer_id: i64,
        /// The producer epoch of the batch.
        epoch: i16,
        /// The sequence the partition expects next from this producer at this epoch.
        expected: i32,
        /// The batch's base sequence.
        got: i32,
    },
    /// A batch carries an older epoch than the producer's current one: a newer instance of the
    /// producer exists (a zombie). Nothing was written.
    #[error(
        "producer {producer_id} is fenced: epoch {epoch} is older than its current epoch \
         {current}; nothing was written"
    )]
    ProducerFenced {
        /// The producer id of the batch.
        producer_id: i64,
        /// The (old) epoch of the batch.
        epoch: i16,
        /// The producer's current epoch in this partition.
        current: i16,
    },
    /// The partition has no state for this producer (never seen, expired, or lost with the data
    /// that held it) and the batch does not start at sequence 0. Nothing was written.
    #[error(
        "unknown producer id {producer_id}: its batch starts at sequence {sequence}, but a \
         producer this partition does not know must start at 0; nothing was written"
    )]
    UnknownProducerId {
        /// The producer id of the batch.
        producer_id: i64,
        /// The batch's base sequence.
        sequence: i32,
    },
    /// A batch's producer fields are inconsistent: a producer id below -1, or a producer id
    /// ≥ 0 with a negative epoch or base sequence. Nothing was written.
    #[error("invalid producer fields in the batch at byte {position} of the request: {reason}")]
    InvalidProducerFields {
        /// Byte position of the bad batch within the appended buffer.
        position: usize,
        /// What is wrong.
        reason: String,
    },
    /// An append mixes exact retries of batches already in the log with new batches (or holds
    /// retries out of order); it must be all new or all retries. Nothing was written.
    #[error(
        "append mixes retried and new producer batches (batch at byte {position} of the \
         request: {reason}); nothing was written"
    )]
    MixedDuplicates {
        /// Byte position, within the appended buffer, of the first batch that breaks the rule.
        position: usize,
        /// What is wrong.
        reason: String,
    },
}

impl LogError {
    /// True for a write refused for want of space (ENOSPC). The append that got it was rolled
    /// back and the log still works: it succeeds again once space returns.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }
}
