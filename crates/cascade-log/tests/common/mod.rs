//! Helpers shared by the integration tests: batch builders and log openers.
#![allow(dead_code)]

pub mod crash;

use cascade_log::fs::{FileSystem, MemFs};
use cascade_log::record::{BatchBuilder, Batches, Record};
use cascade_log::{Clock, Log, LogConfig, LogReader, ManualClock};
use std::path::Path;
use std::sync::Arc;

/// A batch of records whose values are the given strings, timestamps `ts, ts+1, …`.
pub fn batch(values: &[&str], ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b.push(Record {
            timestamp: ts + i as i64,
            key: Some(format!("k{i}").as_bytes()),
            value: Some(v.as_bytes()),
            headers: &[],
        });
    }
    b.finish()
}

/// A batch of `n` records from idempotent producer `pid` at `epoch`, base sequence `seq`;
/// values `[tag, i]`.
pub fn producer_batch(pid: i64, epoch: i16, seq: i32, n: usize, tag: u8) -> Vec<u8> {
    let mut b = BatchBuilder::new().producer(pid, epoch, seq);
    for i in 0..n {
        let v = [tag, i as u8];
        b.push(Record {
            timestamp: 1_000 + i as i64,
            key: None,
            value: Some(&v),
            headers: &[],
        });
    }
    b.finish()
}

/// A batch of `n` records of `size`-byte values, value i = byte (tag + i).
pub fn sized_batch(n: usize, size: usize, tag: u8, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(n * (size + 16));
    for i in 0..n {
        let v = vec![tag.wrapping_add(i as u8); size];
        b.push(Record {
            timestamp: ts,
            key: None,
            value: Some(&v),
            headers: &[],
        });
    }
    b.finish()
}

/// Every (offset, value) readable from `from` to the end, checking offsets are dense.
pub fn read_all(r: &LogReader, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    let end = r.end_offset();
    while next < end {
        let f = r.read(next, 4096).expect("read");
        assert!(!f.data.is_empty(), "empty read at {next} below end {end}");
        for b in Batches::new(&f.data) {
            let b = b.expect("valid batch");
            for rec in b.records().expect("uncompressed") {
                let off = rec.offset as u64;
                if off < next {
                    continue;
                }
                assert_eq!(off, next, "offsets must be dense");
                out.push((off, rec.value.unwrap_or_default().to_vec()));
                next += 1;
            }
        }
        assert_eq!(next, f.next_offset);
    }
    out
}

pub fn values(r: &LogReader, from: u64) -> Vec<String> {
    read_all(r, from)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect()
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

pub fn open_mem(
    fs: &MemFs,
    clock: &Arc<ManualClock>,
    config: LogConfig,
) -> cascade_log::Result<Log> {
    Log::open_with(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        clock.clone() as Arc<dyn Clock>,
        Path::new("/data/t-0"),
        config,
    )
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}
