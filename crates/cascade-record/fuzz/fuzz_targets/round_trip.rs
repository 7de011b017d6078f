//! Structured input: records with optional keys, values and headers are built into a batch
//! with `BatchBuilder`, which must validate and decode back to exactly what went in.

#![no_main]

use arbitrary::Arbitrary;
use cascade_record::header::set_base_offset;
use cascade_record::{BatchBuilder, BatchHeader, Record, validate_batch};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Rec {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    base_offset: i64,
    producer: Option<(i64, i16, i32)>,
    records: Vec<Rec>,
}

fuzz_target!(|input: Input| {
    if input.records.is_empty() {
        return;
    }
    let mut b = BatchBuilder::new();
    if let Some((id, epoch, seq)) = input.producer {
        b = b.producer(id, epoch, seq);
    }
    for r in &input.records {
        let headers: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let rec = Record {
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: &headers,
        };
        let before = b.size_bytes();
        let predicted = b.record_size(&rec);
        b.push(rec);
        assert_eq!(b.size_bytes() - before, predicted, "record_size");
    }
    let size = b.size_bytes();
    let mut bytes = b.finish();
    assert_eq!(bytes.len(), size);
    set_base_offset(&mut bytes, input.base_offset);

    let count = input.records.len() as i64;
    // A batch is valid only if every record offset is a non-negative i64.
    let offsets_fit = input.base_offset >= 0 && input.base_offset.checked_add(count).is_some();
    let batch = match validate_batch(&bytes) {
        Ok(batch) => {
            assert!(offsets_fit, "accepted base offset {}", input.base_offset);
            batch
        }
        Err(e) => {
            assert!(!offsets_fit, "rejected a built batch: {e}");
            return;
        }
    };
    let h: &BatchHeader = batch.header();
    assert_eq!(h.total_len(), bytes.len());
    assert_eq!(i64::from(h.record_count), count);
    assert_eq!(h.base_offset, input.base_offset);
    assert_eq!(h.next_offset(), input.base_offset + count);
    let (id, epoch, seq) = input.producer.unwrap_or((-1, -1, -1));
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (id, epoch, seq)
    );
    assert_eq!(h.base_timestamp, input.records[0].timestamp);
    assert_eq!(
        h.max_timestamp,
        input.records.iter().map(|r| r.timestamp).max().unwrap()
    );
    let decoded: Vec<_> = batch.records().expect("uncompressed").collect();
    assert_eq!(decoded.len(), input.records.len());
    for (i, (d, r)) in decoded.iter().zip(&input.records).enumerate() {
        assert_eq!(d.offset, input.base_offset + i as i64);
        assert_eq!(d.timestamp, r.timestamp);
        assert_eq!(d.key, r.key.as_deref());
        assert_eq!(d.value, r.value.as_deref());
        let headers: Vec<(&str, Option<&[u8]>)> = d.headers.iter().collect();
        let want: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        assert_eq!(headers, want);
    }
});
