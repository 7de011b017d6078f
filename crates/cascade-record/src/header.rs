//! The fixed 61-byte header of a record batch (Kafka RecordBatch v2) and its checksum.
//!
//! ```text
//! offset size field                    covered by CRC
//!      0    8 base_offset     i64 BE   no  (assigned by the leader on append)
//!      8    4 batch_length    i32 BE   no  (bytes after this field)
//!     12    4 leader_epoch    i32 BE   no  (stamped by the leader on append)
//!     16    1 magic           i8 = 2   no
//!     17    4 crc             u32 BE   -   (CRC-32C of bytes 21..end)
//!     21    2 attributes      i16 BE   yes (bits 0-2 codec, 3 timestamp type, 4 txn, 5 control)
//!     23    4 last_offset_delta i32 BE yes
//!     27    8 base_timestamp  i64 BE   yes
//!     35    8 max_timestamp   i64 BE   yes
//!     43    8 producer_id     i64 BE   yes
//!     51    2 producer_epoch  i16 BE   yes
//!     53    4 base_sequence   i32 BE   yes
//!     57    4 record_count    i32 BE   yes
//!     61    . records
//! ```
//!
//! Because the CRC starts at byte 21, a broker can write the base offset and leader epoch into
//! a client's batch without recomputing the checksum: this is what keeps the produce path to
//! one validation pass and zero re-encoding.

use crate::error::DecodeError;

/// Size of the batch header in bytes.
pub const HEADER_LEN: usize = 61;
/// Bytes before the `batch_length` field's coverage starts (base offset + length field).
pub const LOG_OVERHEAD: usize = 12;
/// The only batch format version stored.
pub const MAGIC_V2: i8 = 2;
/// Where the CRC-covered region begins.
pub const CRC_START: usize = 21;
/// Largest batch the codec accepts. Positions in the dense index are `u32`, so a batch must fit
/// well inside that; brokers enforce much smaller per-topic limits on top.
pub const MAX_BATCH_LEN: usize = 1 << 30;

const ATTR_CODEC_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Compression codec named in a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records stored as they are.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4 frame.
    Lz4,
    /// zstd.
    Zstd,
}

impl Compression {
    fn from_bits(bits: u8) -> Result<Self, DecodeError> {
        Ok(match bits {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            other => return Err(DecodeError::UnsupportedCompression(other)),
        })
    }
}

/// The decoded header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batch_length` field: the whole batch is `batch_length + 12` bytes.
    pub batch_length: i32,
    /// Epoch of the leader that appended the batch.
    pub leader_epoch: i32,
    /// Format version, always 2 once parsed.
    pub magic: i8,
    /// CRC-32C of bytes 21..end, as stored.
    pub crc: u32,
    /// Codec and flag bits.
    pub attributes: i16,
    /// `record_count - 1` for a batch as produced.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (ms since the epoch); record timestamps are deltas from it.
    pub base_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the front of `buf` (which may hold more than one batch).
    ///
    /// Checks only what the header alone can tell: the magic, that the length is in range,
    /// that the offsets it implies fit an `i64` and that the codec is known. It does not check
    /// the CRC; see [`crate::validate_batch`].
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                what: "batch header",
            });
        }
        let h = Self {
            base_offset: i64::from_be_bytes(buf[0..8].try_into().expect("8 bytes")),
            batch_length: i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes")),
            leader_epoch: i32::from_be_bytes(buf[12..16].try_into().expect("4 bytes")),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes")),
            attributes: i16::from_be_bytes(buf[21..23].try_into().expect("2 bytes")),
            last_offset_delta: i32::from_be_bytes(buf[23..27].try_into().expect("4 bytes")),
            base_timestamp: i64::from_be_bytes(buf[27..35].try_into().expect("8 bytes")),
            max_timestamp: i64::from_be_bytes(buf[35..43].try_into().expect("8 bytes")),
            producer_id: i64::from_be_bytes(buf[43..51].try_into().expect("8 bytes")),
            producer_epoch: i16::from_be_bytes(buf[51..53].try_into().expect("2 bytes")),
            base_sequence: i32::from_be_bytes(buf[53..57].try_into().expect("4 bytes")),
            record_count: i32::from_be_bytes(buf[57..61].try_into().expect("4 bytes")),
        };
        if h.magic != MAGIC_V2 {
            return Err(DecodeError::UnsupportedMagic(h.magic));
        }
        let total = i64::from(h.batch_length) + LOG_OVERHEAD as i64;
        if total < HEADER_LEN as i64 {
            return Err(DecodeError::BadLength {
                length: h.batch_length.into(),
                reason: "shorter than the batch header",
            });
        }
        if total > MAX_BATCH_LEN as i64 {
            return Err(DecodeError::BadLength {
                length: h.batch_length.into(),
                reason: "larger than the maximum batch size",
            });
        }
        // The base offset is not covered by the CRC, so it can hold anything: refuse a header
        // whose `next_offset` would not fit an i64, so that offset arithmetic on any parsed
        // header is exact.
        if h.base_offset
            .checked_add(i64::from(h.last_offset_delta) + 1)
            .is_none()
        {
            return Err(DecodeError::InvalidHeader(
                "base offset plus last offset delta overflows",
            ));
        }
        Compression::from_bits((h.attributes & ATTR_CODEC_MASK) as u8)?;
        Ok(h)
    }

    /// Total size of the batch in bytes, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record: `base_offset + last_offset_delta` (cannot overflow for a
    /// parsed header).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset just past the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// The compression codec.
    pub fn compression(&self) -> Compression {
        Compression::from_bits((self.attributes & ATTR_CODEC_MASK) as u8).expect("checked in parse")
    }

    /// True when the timestamps were set by the broker (LogAppendTime) rather than the producer.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }

    /// True for a batch of a transactional producer.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// True for a control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Computes the CRC-32C that belongs in bytes 17..21 of `batch`.
///
/// `batch` must be one whole batch, at least [`HEADER_LEN`] bytes long.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Writes `offset` into the base offset field of the batch at the front of `batch`.
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[0..8].copy_from_slice(&offset.to_be_bytes());
}

/// Writes `epoch` into the leader epoch field of the batch at the front of `batch`.
pub fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Rewrites the idempotent-producer fields (producer id, epoch, base sequence) of the whole
/// batch at the front of `batch` and recomputes its CRC, which covers them. A producer gives a
/// batch its sequence when it sends it, and a new one if it must send it again under a new
/// epoch; the records are not touched.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    write_crc(batch);
}

/// Writes `attributes` and the header fields that follow and recomputes the CRC. Used by
/// builders; the broker never needs it.
pub(crate) fn write_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}
