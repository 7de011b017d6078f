//! The one error type of the codec: why a byte string is not a valid record batch.
//!
//! Every variant names what was wrong precisely enough to tell a client what to fix; none
//! carries positions in files, because this crate never sees files (the log adds that context).

/// Why bytes failed to decode or validate as a record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside the named structure.
    #[error("truncated {what}")]
    Truncated {
        /// The structure being read when the input ended.
        what: &'static str,
    },
    /// A varint ran past its maximum length.
    #[error("varint longer than its type allows")]
    VarintTooLong,
    /// The batch's magic byte is not 2 (only the v2 layout is stored).
    #[error("unsupported batch magic {0} (only magic 2 is supported)")]
    UnsupportedMagic(i8),
    /// The batch length field disagrees with the bytes present or is out of range.
    #[error("bad batch length {length}: {reason}")]
    BadLength {
        /// The value of the batch length field.
        length: i64,
        /// What is inconsistent about it.
        reason: &'static str,
    },
    /// The CRC-32C stored in the header does not match the bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes present.
        computed: u32,
    },
    /// A header field holds an impossible value.
    #[error("invalid batch header: {0}")]
    InvalidHeader(&'static str),
    /// A record inside the batch is malformed.
    #[error("invalid record {index}: {reason}")]
    InvalidRecord {
        /// Position of the record within its batch.
        index: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The batch is compressed with a codec this build cannot decode.
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(u8),
}
