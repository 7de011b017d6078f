//! Encoding records into a batch: what producers (the Rust client, the CLI, the REST gateway)
//! use to build the bytes a broker stores as they are.

use crate::header::{HEADER_LEN, MAGIC_V2, write_crc};
use crate::varint::{put_varint, put_varlong, varlong_len};

/// A record to encode. Borrowed, so building a batch copies each payload exactly once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record<'a> {
    /// Timestamp in ms since the Unix epoch.
    pub timestamp: i64,
    /// The key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for a null value.
    pub value: Option<&'a [u8]>,
    /// Header keys and values.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// Builds one uncompressed batch in the v2 layout.
///
/// The base offset is written as 0: the leader assigns the real one on append.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        None => 1,
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::with_capacity(HEADER_LEN + 256)
    }

    /// An empty builder whose buffer starts with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        Self {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Marks the batch as coming from an idempotent producer.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Number of records pushed so far.
    pub fn record_count(&self) -> usize {
        self.count as usize
    }

    /// True when no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size the batch would have if finished now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Size `rec` would add to the batch.
    pub fn record_size(&self, rec: &Record<'_>) -> usize {
        let body = self.body_len(rec);
        varlong_len(body as i64) + body
    }

    fn body_len(&self, rec: &Record<'_>) -> usize {
        let ts_delta = if self.count == 0 {
            0
        } else {
            rec.timestamp.wrapping_sub(self.base_timestamp)
        };
        let mut n = 1 + varlong_len(ts_delta) + varlong_len(i64::from(self.count));
        n += bytes_len(rec.key) + bytes_len(rec.value);
        n += varlong_len(rec.headers.len() as i64);
        for (k, v) in rec.headers {
            n += bytes_len(Some(k.as_bytes())) + bytes_len(*v);
        }
        n
    }

    /// Appends a record.
    ///
    /// # Panics
    /// If a key, value or header is 2 GiB or larger, which no batch can hold.
    pub fn push(&mut self, rec: Record<'_>) {
        for b in [rec.key, rec.value].into_iter().flatten() {
            assert!(b.len() < i32::MAX as usize, "record field too large");
        }
        if self.count == 0 {
            self.base_timestamp = rec.timestamp;
        }
        let body = self.body_len(&rec);
        self.buf.reserve(body + 5);
        put_varint(&mut self.buf, body as i32);
        self.buf.push(0);
        put_varlong(
            &mut self.buf,
            rec.timestamp.wrapping_sub(self.base_timestamp),
        );
        put_varint(&mut self.buf, self.count);
        put_bytes(&mut self.buf, rec.key);
        put_bytes(&mut self.buf, rec.value);
        put_varint(&mut self.buf, rec.headers.len() as i32);
        for (k, v) in rec.headers {
            put_bytes(&mut self.buf, Some(k.as_bytes()));
            put_bytes(&mut self.buf, *v);
        }
        self.max_timestamp = self.max_timestamp.max(rec.timestamp);
        self.count += 1;
    }

    /// Writes the header and checksum and returns the batch bytes.
    ///
    /// # Panics
    /// If no record was pushed: an empty batch is not valid.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.count > 0, "a batch needs at least one record");
        let len = (self.buf.len() - 12) as i32;
        let b = &mut self.buf;
        b[0..8].copy_from_slice(&0i64.to_be_bytes());
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[12..16].copy_from_slice(&0i32.to_be_bytes());
        b[16] = MAGIC_V2 as u8;
        b[21..23].copy_from_slice(&0i16.to_be_bytes());
        b[23..27].copy_from_slice(&(self.count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        b[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        b[57..61].copy_from_slice(&self.count.to_be_bytes());
        write_crc(b);
        self.buf
    }
}
