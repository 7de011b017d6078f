//! Whole batches: validation, iteration over records, and iteration over a buffer holding
//! several batches back to back (what a fetch returns).

use crate::error::DecodeError;
use crate::header::{BatchHeader, Compression, HEADER_LEN, compute_crc};
use crate::record::{RecordRef, decode_record, offset_delta};

/// A validated batch borrowed from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, header included.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Iterates over the records. Fails at once for a compressed batch this build cannot
    /// decode; otherwise the records were checked by [`validate_batch`] and iteration cannot
    /// fail.
    pub fn records(&self) -> Result<Records<'a>, DecodeError> {
        match self.header.compression() {
            Compression::None => Ok(Records {
                rest: &self.bytes[HEADER_LEN..],
                index: 0,
                count: self.header.record_count as u32,
                base_offset: self.header.base_offset,
                base_timestamp: self.header.base_timestamp,
            }),
            other => Err(DecodeError::UnsupportedCompression(other as u8)),
        }
    }
}

/// Iterator over the records of an uncompressed batch.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    index: u32,
    count: u32,
    base_offset: i64,
    base_timestamp: i64,
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let (rec, used) =
            decode_record(self.rest, self.index, self.base_offset, self.base_timestamp)
                .expect("records are validated before a Batch is handed out");
        self.rest = &self.rest[used..];
        self.index += 1;
        Some(rec)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.index) as usize;
        (left, Some(left))
    }
}

/// Validates the batch at the front of `buf` and returns it with its length.
///
/// Checks everything a broker must check before storing a batch: the header, that the whole
/// batch is present, the CRC, that it holds at least one record and that `last_offset_delta`
/// matches the count. For an uncompressed batch it also decodes every record and checks that
/// offset deltas run 0, 1, 2, … and that the stored max timestamp is the records' maximum;
/// a compressed batch is stored opaquely (its CRC still protects it).
pub fn validate_batch(buf: &[u8]) -> Result<Batch<'_>, DecodeError> {
    let header = BatchHeader::parse(buf)?;
    let len = header.total_len();
    if buf.len() < len {
        return Err(DecodeError::Truncated { what: "batch" });
    }
    let bytes = &buf[..len];
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(DecodeError::ChecksumMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.record_count <= 0 {
        return Err(DecodeError::InvalidHeader("batch holds no records"));
    }
    if i64::from(header.last_offset_delta) != i64::from(header.record_count) - 1 {
        return Err(DecodeError::InvalidHeader(
            "last offset delta disagrees with the record count",
        ));
    }
    if header.base_offset < 0 {
        return Err(DecodeError::InvalidHeader("negative base offset"));
    }
    if header.compression() == Compression::None {
        let mut rest = &bytes[HEADER_LEN..];
        let mut max_ts = i64::MIN;
        for i in 0..header.record_count as u32 {
            let (rec, used) = decode_record(rest, i, header.base_offset, header.base_timestamp)?;
            if offset_delta(&rec, header.base_offset) != i64::from(i) {
                return Err(DecodeError::InvalidRecord {
                    index: i,
                    reason: "offset delta out of sequence",
                });
            }
            max_ts = max_ts.max(rec.timestamp);
            rest = &rest[used..];
        }
        if !rest.is_empty() {
            return Err(DecodeError::BadLength {
                length: header.batch_length.into(),
                reason: "bytes left over after the last record",
            });
        }
        if max_ts != header.max_timestamp && !header.is_log_append_time() {
            return Err(DecodeError::InvalidHeader(
                "max timestamp disagrees with the records",
            ));
        }
    }
    Ok(Batch { header, bytes })
}

/// Iterates over batches stored back to back, validating each.
///
/// A fetch may end with a partial batch when it hits its byte budget; [`Batches`] stops
/// cleanly there (use [`Batches::remainder`] to see what was left) instead of failing.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
}

impl<'a> Batches<'a> {
    /// Iterates over the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    /// Bytes not yet consumed (a trailing partial batch, after iteration ends).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<Batch<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < HEADER_LEN {
            return None;
        }
        match BatchHeader::parse(self.rest) {
            Ok(h) if self.rest.len() < h.total_len() => return None,
            Ok(_) => {}
            Err(e) => {
                self.rest = &[];
                return Some(Err(e));
            }
        }
        match validate_batch(self.rest) {
            Ok(b) => {
                self.rest = &self.rest[b.bytes.len()..];
                Some(Ok(b))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}
