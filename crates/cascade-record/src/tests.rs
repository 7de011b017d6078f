//! Round trips, corruption detection and the never-panic property of the decoders.

use crate::header::{self, BatchHeader, HEADER_LEN};
use crate::{BatchBuilder, Batches, DecodeError, Record, validate_batch};
use proptest::prelude::*;

fn sample() -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(Record {
        timestamp: 1_700_000_000_000,
        key: Some(b"k1"),
        value: Some(b"hello"),
        headers: &[("trace", Some(b"abc")), ("empty", None)],
    });
    b.push(Record {
        timestamp: 1_700_000_000_005,
        key: None,
        value: None,
        headers: &[],
    });
    b.push(Record {
        timestamp: 1_699_999_999_990,
        key: Some(b""),
        value: Some(&[0u8; 300]),
        headers: &[],
    });
    b.finish()
}

#[test]
fn builds_and_decodes() {
    let bytes = sample();
    let batch = validate_batch(&bytes).unwrap();
    let h = batch.header();
    assert_eq!(h.record_count, 3);
    assert_eq!(h.last_offset_delta, 2);
    assert_eq!(h.base_timestamp, 1_700_000_000_000);
    assert_eq!(h.max_timestamp, 1_700_000_000_005);
    assert_eq!(h.total_len(), bytes.len());
    let recs: Vec<_> = batch.records().unwrap().collect();
    assert_eq!(recs[0].offset, 0);
    assert_eq!(recs[0].key, Some(&b"k1"[..]));
    assert_eq!(recs[0].value, Some(&b"hello"[..]));
    let hdrs: Vec<_> = recs[0].headers.iter().collect();
    assert_eq!(hdrs, vec![("trace", Some(&b"abc"[..])), ("empty", None)]);
    assert_eq!(recs[1].key, None);
    assert_eq!(recs[1].value, None);
    assert_eq!(recs[2].timestamp, 1_699_999_999_990);
    assert_eq!(recs[2].key, Some(&b""[..]));
    assert_eq!(recs[2].offset, 2);
}

#[test]
fn base_offset_and_epoch_are_outside_the_crc() {
    let mut bytes = sample();
    header::set_base_offset(&mut bytes, 1234);
    header::set_leader_epoch(&mut bytes, 7);
    let batch = validate_batch(&bytes).unwrap();
    assert_eq!(batch.header().base_offset, 1234);
    assert_eq!(batch.header().leader_epoch, 7);
    assert_eq!(batch.header().last_offset(), 1236);
    let offsets: Vec<_> = batch.records().unwrap().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![1234, 1235, 1236]);
}

#[test]
fn every_flipped_bit_in_the_crc_region_is_caught() {
    let bytes = sample();
    for i in header::CRC_START..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            assert!(validate_batch(&b).is_err(), "flip at byte {i} bit {bit}");
        }
    }
}

#[test]
fn rejects_bad_headers() {
    let bytes = sample();
    let mut b = bytes.clone();
    b[16] = 1;
    assert_eq!(
        validate_batch(&b).unwrap_err(),
        DecodeError::UnsupportedMagic(1)
    );
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&10i32.to_be_bytes());
    assert!(matches!(
        validate_batch(&b),
        Err(DecodeError::BadLength { .. })
    ));
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(
        validate_batch(&b),
        Err(DecodeError::BadLength { .. })
    ));
    assert!(matches!(
        validate_batch(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        validate_batch(&bytes[..HEADER_LEN - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    let mut b = bytes.clone();
    header::set_base_offset(&mut b, -5);
    assert!(matches!(
        validate_batch(&b),
        Err(DecodeError::InvalidHeader(_))
    ));
}

#[test]
fn rejects_inconsistent_counts_even_with_a_good_crc() {
    let mut b = sample();
    b[57..61].copy_from_slice(&2i32.to_be_bytes()); // claims 2 records, holds 3
    b[23..27].copy_from_slice(&1i32.to_be_bytes());
    let crc = header::compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(validate_batch(&b).is_err());
}

#[test]
fn batches_iterates_and_stops_at_a_partial_tail() {
    let one = sample();
    let mut buf = one.clone();
    buf.extend_from_slice(&one);
    buf.extend_from_slice(&one[..40]);
    let mut it = Batches::new(&buf);
    assert!(it.next().unwrap().is_ok());
    assert!(it.next().unwrap().is_ok());
    assert!(it.next().is_none());
    assert_eq!(it.remainder().len(), 40);
}

#[test]
fn header_parse_matches_builder_fields() {
    let b = BatchBuilder::new().producer(42, 3, 100);
    let mut b = b;
    b.push(Record {
        timestamp: 5,
        value: Some(b"x"),
        ..Default::default()
    });
    let bytes = b.finish();
    let h = BatchHeader::parse(&bytes).unwrap();
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (42, 3, 100)
    );
    assert!(!h.is_control() && !h.is_transactional() && !h.is_log_append_time());
}

#[derive(Debug, Clone)]
struct OwnedRecord {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn arb_record() -> impl Strategy<Value = OwnedRecord> {
    (
        -1_000_000i64..2_000_000_000_000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        proptest::collection::vec(
            (
                "[a-z]{0,8}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            ),
            0..3,
        ),
    )
        .prop_map(|(timestamp, key, value, headers)| OwnedRecord {
            timestamp,
            key,
            value,
            headers,
        })
}

proptest! {
    #[test]
    fn round_trips(records in proptest::collection::vec(arb_record(), 1..20), base in 0i64..1<<40) {
        let mut b = BatchBuilder::new();
        for r in &records {
            let hdrs: Vec<(&str, Option<&[u8]>)> =
                r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let before = b.size_bytes();
            let rec = Record {
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &hdrs,
            };
            let predicted = b.record_size(&rec);
            b.push(rec);
            prop_assert_eq!(b.size_bytes() - before, predicted);
        }
        let mut bytes = b.finish();
        header::set_base_offset(&mut bytes, base);
        let batch = validate_batch(&bytes).unwrap();
        let decoded: Vec<_> = batch.records().unwrap().collect();
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(d.offset, base + i as i64);
            prop_assert_eq!(d.timestamp, r.timestamp);
            prop_assert_eq!(d.key, r.key.as_deref());
            prop_assert_eq!(d.value, r.value.as_deref());
            let hdrs: Vec<(String, Option<Vec<u8>>)> =
                d.headers.iter().map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec))).collect();
            prop_assert_eq!(&hdrs, &r.headers);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = BatchHeader::parse(&bytes);
        if let Ok(b) = validate_batch(&bytes) {
            for r in b.records().into_iter().flatten() {
                for h in r.headers.iter() { let _ = h; }
            }
        }
        for b in Batches::new(&bytes) { let _ = b; }
    }

    #[test]
    fn mutated_batches_never_panic(idx in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        // Mutations of a valid batch reach deeper than random bytes: fix the CRC afterwards
        // so the record decoder, not the checksum, has to catch the damage.
        let mut b = sample();
        let i = idx.index(b.len() - header::CRC_START) + header::CRC_START;
        b[i] = val;
        let crc = header::compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let n = cut.index(b.len() + 1);
        if let Ok(batch) = validate_batch(&b[..n]) {
            for r in batch.records().into_iter().flatten() {
                for h in r.headers.iter() { let _ = h; }
            }
        }
    }
}
