//! The two indexes of a segment, as plain on-disk entry types.
//!
//! **Dense offset index** (`.index`): after the 32-byte file header, entry `i` is a `u32` LE
//! holding the byte position in the `.log` file of the batch that contains offset `base + i`.
//! Finding any event is one 4-byte read at `32 + 4·(N − base)`: no scan and no binary search.
//! Entries point at the *batch*, not the record, because the batch is the unit that is
//! checksummed, compressed and returned by a fetch: a reader always starts at a batch boundary
//! (consumers skip the records below the offset they asked for, as Kafka consumers do), and a
//! compressed batch has no addressable records inside it anyway. Consecutive entries of one
//! batch therefore repeat the same position. The index is derived data: the active segment's
//! newest entries are buffered in memory and written in chunks, it is never fsynced on the
//! append path, and it is rebuilt from the log whenever it cannot be trusted.
//!
//! **Sparse time index** (`.timeindex`): after the header, 12-byte entries
//! `(max_timestamp: i64 LE, relative_offset: u32 LE)`, written after roughly every
//! `index_interval_bytes` of batches and once more when a segment is sealed. An entry `(T, r)`
//! promises that every record at offset below `base + r` has a timestamp at most `T`; both fields
//! only grow. To find the first offset with timestamp ≥ t, start scanning at the `r` of the last
//! entry whose `T < t`.

use crate::format::FILE_HEADER_LEN;

/// Size of one dense index entry.
pub const INDEX_ENTRY_LEN: u64 = 4;
/// Size of one time index entry.
pub const TIME_ENTRY_LEN: u64 = 12;

/// A dense index entry: the byte position of a batch in its `.log` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position(pub u32);

impl Position {
    /// Where the entry for relative offset `rel` lives in the `.index` file.
    pub fn file_offset(rel: u64) -> u64 {
        FILE_HEADER_LEN as u64 + rel * INDEX_ENTRY_LEN
    }

    /// Decodes an entry.
    pub fn decode(b: [u8; 4]) -> Self {
        Self(u32::from_le_bytes(b))
    }
}

/// A time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    /// Largest timestamp of any record below `base + relative_offset`.
    pub max_timestamp: i64,
    /// Offset, relative to the segment base, that the promise extends to (exclusive).
    pub relative_offset: u32,
}

impl TimeIndexEntry {
    /// Where entry `i` lives in the `.timeindex` file.
    pub fn file_offset(i: u64) -> u64 {
        FILE_HEADER_LEN as u64 + i * TIME_ENTRY_LEN
    }

    /// Encodes the entry.
    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..8].copy_from_slice(&self.max_timestamp.to_le_bytes());
        b[8..12].copy_from_slice(&self.relative_offset.to_le_bytes());
        b
    }

    /// Decodes an entry.
    pub fn decode(b: &[u8; 12]) -> Self {
        Self {
            max_timestamp: i64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        }
    }
}
