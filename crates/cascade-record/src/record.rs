//! Records inside an uncompressed batch: zero-copy views and the decoder.
//!
//! ```text
//! length          varint   bytes that follow
//! attributes      i8       unused, 0
//! timestamp_delta varlong  from the batch's base timestamp
//! offset_delta    varint   from the batch's base offset
//! key_length      varint   -1 for a null key
//! key             bytes
//! value_length    varint   -1 for a null value
//! value           bytes
//! header_count    varint
//!   key_length    varint   header keys are UTF-8 and never null
//!   key           bytes
//!   value_length  varint   -1 for a null value
//!   value         bytes
//! ```
//!
//! Views borrow from the batch buffer: decoding allocates nothing.

use crate::error::DecodeError;
use crate::varint::{get_varint, get_varlong};

/// One record, borrowed from the batch that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Offset of this record: the batch base offset plus the record's delta.
    pub offset: i64,
    /// Timestamp in ms since the Unix epoch.
    pub timestamp: i64,
    /// The key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// The headers, decoded lazily.
    pub headers: HeadersRef<'a>,
}

/// The headers of one record, still encoded; iterate to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadersRef<'a> {
    count: u32,
    raw: &'a [u8],
}

impl<'a> HeadersRef<'a> {
    /// Number of headers.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the record has no headers.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates over `(key, value)` pairs. The record was validated when it was decoded, so
    /// iteration cannot fail.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let mut rest = self.raw;
        (0..self.count).map(move |_| {
            let (k, v, used) = decode_header(rest).expect("validated when the record was decoded");
            rest = &rest[used..];
            (k, v)
        })
    }
}

/// Reads a length-prefixed byte string; -1 means null.
fn get_bytes<'a>(
    buf: &'a [u8],
    index: u32,
    what: &'static str,
) -> Result<(Option<&'a [u8]>, usize), DecodeError> {
    let (len, n) = get_varint(buf)?;
    if len == -1 {
        return Ok((None, n));
    }
    let len = usize::try_from(len).map_err(|_| DecodeError::InvalidRecord {
        index,
        reason: what,
    })?;
    let end = n.checked_add(len).filter(|&e| e <= buf.len());
    match end {
        Some(end) => Ok((Some(&buf[n..end]), end)),
        None => Err(DecodeError::InvalidRecord {
            index,
            reason: what,
        }),
    }
}

fn decode_header(buf: &[u8]) -> Result<(&str, Option<&[u8]>, usize), DecodeError> {
    let (key, n1) = get_bytes(buf, 0, "header key length out of range")?;
    let key = key.ok_or(DecodeError::InvalidRecord {
        index: 0,
        reason: "null header key",
    })?;
    let key = std::str::from_utf8(key).map_err(|_| DecodeError::InvalidRecord {
        index: 0,
        reason: "header key is not UTF-8",
    })?;
    let (value, n2) = get_bytes(&buf[n1..], 0, "header value length out of range")?;
    Ok((key, value, n1 + n2))
}

/// Decodes the record at the front of `buf`, returning it and the bytes it used.
///
/// `index` is the record's position in its batch, used in errors.
pub(crate) fn decode_record<'a>(
    buf: &'a [u8],
    index: u32,
    base_offset: i64,
    base_timestamp: i64,
) -> Result<(RecordRef<'a>, usize), DecodeError> {
    let bad = |reason| DecodeError::InvalidRecord { index, reason };
    let (len, n) = get_varint(buf)?;
    let len = usize::try_from(len).map_err(|_| bad("negative record length"))?;
    let end = n
        .checked_add(len)
        .filter(|&e| e <= buf.len())
        .ok_or(bad("record length runs past the batch"))?;
    let body = &buf[n..end];
    let mut pos = 0usize;
    if body.is_empty() {
        return Err(bad("empty record"));
    }
    pos += 1; // attributes: unused
    let (ts_delta, k) = get_varlong(&body[pos..]).map_err(|_| bad("bad timestamp delta"))?;
    pos += k;
    let (off_delta, k) = get_varint(&body[pos..]).map_err(|_| bad("bad offset delta"))?;
    pos += k;
    let (key, k) = get_bytes(&body[pos..], index, "key length out of range")?;
    pos += k;
    let (value, k) = get_bytes(&body[pos..], index, "value length out of range")?;
    pos += k;
    let (count, k) = get_varint(&body[pos..]).map_err(|_| bad("bad header count"))?;
    pos += k;
    let count = u32::try_from(count).map_err(|_| bad("negative header count"))?;
    let headers_start = pos;
    for _ in 0..count {
        let (_, _, used) = decode_header(&body[pos..]).map_err(|e| match e {
            DecodeError::InvalidRecord { reason, .. } => bad(reason),
            _ => bad("malformed header"),
        })?;
        pos += used;
    }
    if pos != body.len() {
        return Err(bad("record length disagrees with its fields"));
    }
    let rec = RecordRef {
        offset: base_offset.wrapping_add(i64::from(off_delta)),
        timestamp: base_timestamp.wrapping_add(ts_delta),
        key,
        value,
        headers: HeadersRef {
            count,
            raw: &body[headers_start..],
        },
    };
    Ok((rec, end))
}

/// The offset delta of a record, needed by validation, computed from a decoded record.
pub(crate) fn offset_delta(rec: &RecordRef<'_>, base_offset: i64) -> i64 {
    rec.offset.wrapping_sub(base_offset)
}
