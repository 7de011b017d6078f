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
fn producer_fields_are_rewritten_with_a_fresh_crc() {
    let mut bytes = sample();
    let original = bytes.clone();
    header::set_producer(&mut bytes, 42, 3, 1_000);
    let batch = validate_batch(&bytes).expect("the CRC covers the new fields");
    let h = batch.header();
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (42, 3, 1_000)
    );
    // Records and the other fields are untouched.
    assert_eq!(bytes[HEADER_LEN..], original[HEADER_LEN..]);
    assert_eq!(bytes[..17], original[..17]);
    assert_eq!(bytes[21..43], original[21..43]);
    // Without the CRC update the rewrite would be caught as damage.
    let mut stale = original.clone();
    stale[43..51].copy_from_slice(&42i64.to_be_bytes());
    assert!(validate_batch(&stale).is_err());
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

#[test]
fn offsets_that_overflow_are_rejected_by_the_header_parser() {
    // The base offset is outside the CRC, so a damaged one passes the checksum: the parser
    // must refuse a batch whose offsets do not fit an i64 rather than overflow later.
    let mut b = sample(); // three records
    header::set_base_offset(&mut b, i64::MAX - 3);
    let h = BatchHeader::parse(&b).unwrap();
    assert_eq!((h.last_offset(), h.next_offset()), (i64::MAX - 1, i64::MAX));
    assert!(validate_batch(&b).is_ok());
    for base in [i64::MAX - 2, i64::MAX] {
        header::set_base_offset(&mut b, base);
        assert!(matches!(
            BatchHeader::parse(&b),
            Err(DecodeError::InvalidHeader(_))
        ));
        assert!(validate_batch(&b).is_err());
        assert!(Batches::new(&b).next().unwrap().is_err());
    }
}

/// The decode path of the `decode_batch` fuzz target (`fuzz/fuzz_targets/decode_batch.rs`),
/// with the same consistency checks, for stable Rust: nothing may panic, and whatever is
/// accepted must agree with itself.
fn exercise_decoders(data: &[u8]) {
    use crate::Compression;
    use crate::header::MAX_BATCH_LEN;
    let parsed = BatchHeader::parse(data);
    if let Ok(h) = &parsed {
        assert_eq!(h.magic, 2);
        assert!((HEADER_LEN..=MAX_BATCH_LEN).contains(&h.total_len()));
        let _ = (h.compression(), h.is_control(), h.is_transactional());
        let _ = (h.last_offset(), h.next_offset());
    }
    if let Ok(batch) = validate_batch(data) {
        let h = *batch.header();
        assert_eq!(Ok(h), parsed);
        assert_eq!(batch.bytes(), &data[..h.total_len()]);
        assert!(h.record_count > 0 && h.base_offset >= 0);
        assert_eq!(
            i64::from(h.last_offset_delta),
            i64::from(h.record_count) - 1
        );
        match batch.records() {
            Ok(records) => {
                assert_eq!(h.compression(), Compression::None);
                let mut n = 0i64;
                let mut max_ts = i64::MIN;
                for r in records {
                    assert_eq!(
                        i128::from(r.offset),
                        i128::from(h.base_offset) + i128::from(n)
                    );
                    max_ts = max_ts.max(r.timestamp);
                    assert_eq!(r.headers.iter().count(), r.headers.len());
                    n += 1;
                }
                assert_eq!(n, i64::from(h.record_count));
                assert!(h.is_log_append_time() || max_ts == h.max_timestamp);
            }
            Err(_) => assert_ne!(h.compression(), Compression::None),
        }
    }
    let mut batches = Batches::new(data);
    let mut consumed = 0;
    let mut failed = false;
    for b in &mut batches {
        match b {
            Ok(b) => {
                assert_eq!(
                    b.bytes(),
                    validate_batch(&data[consumed..]).unwrap().bytes()
                );
                for r in b.records().into_iter().flatten() {
                    for _ in r.headers.iter() {}
                }
                consumed += b.bytes().len();
            }
            Err(e) => {
                assert_eq!(Err(e), validate_batch(&data[consumed..]).map(|_| ()));
                failed = true;
            }
        }
    }
    if !failed {
        let rest = batches.remainder();
        assert_eq!(consumed + rest.len(), data.len());
        if let Ok(h) = BatchHeader::parse(rest) {
            assert!(rest.len() < h.total_len());
        }
    }
}

/// Small valid inputs covering every field kind: null and empty keys and values, headers with
/// null values, a producer id, a non-zero base offset, negative timestamp deltas, a base offset
/// next to the i64 limit, and two batches back to back.
fn corpus() -> Vec<Vec<u8>> {
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
        value: Some(&[9u8; 20]),
        headers: &[],
    });
    let three = b.finish();
    let mut b = BatchBuilder::new().producer(42, 3, 100);
    b.push(Record {
        timestamp: -5,
        key: None,
        value: Some(b"x"),
        headers: &[("h", Some(b""))],
    });
    let mut one = b.finish();
    header::set_base_offset(&mut one, 1234);
    let mut near_limit = three.clone();
    header::set_base_offset(&mut near_limit, i64::MAX - 3);
    let mut two = three.clone();
    two.extend_from_slice(&one);
    vec![three, one, near_limit, two]
}

#[test]
fn exhaustive_corpus_mutations() {
    // Deterministic and exhaustive over a small neighbourhood of valid input: every truncation,
    // and every value of every single byte, each both as is and with the CRC fixed up so that
    // the record decoder rather than the checksum has to catch the damage.
    for seed in corpus() {
        exercise_decoders(&seed);
        for n in 0..seed.len() {
            exercise_decoders(&seed[..n]);
        }
        let mut m = seed.clone();
        for i in 0..seed.len() {
            for v in 0..=255u8 {
                m[i] = v;
                exercise_decoders(&m);
                if let Ok(h) = BatchHeader::parse(&m)
                    && h.total_len() <= m.len()
                    && i >= header::CRC_START
                {
                    let crc = header::compute_crc(&m[..h.total_len()]);
                    let stored: [u8; 4] = m[17..21].try_into().unwrap();
                    m[17..21].copy_from_slice(&crc.to_be_bytes());
                    exercise_decoders(&m);
                    m[17..21].copy_from_slice(&stored);
                }
            }
            m[i] = seed[i];
        }
    }
}
