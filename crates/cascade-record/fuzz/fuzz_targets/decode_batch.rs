//! Arbitrary bytes through every decoding entry point: the header parser, batch validation
//! (then every record and header of a valid batch) and the multi-batch iterator. Nothing may
//! panic, and what is accepted must be self-consistent. Seeds: `seeds/decode_batch` (run.sh
//! passes them).
//!
//! The stable-Rust counterpart is `exhaustive_corpus_mutations` in `src/tests.rs`.

#![no_main]

use cascade_record::header::{MAX_BATCH_LEN, compute_crc};
use cascade_record::{BatchHeader, Batches, Compression, HEADER_LEN, validate_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first byte picks a mode; odd means "fix the CRC up first", so that mutations reach
    // the record decoder instead of stopping at the checksum.
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let mut fixed;
    let data = match BatchHeader::parse(data) {
        Ok(h) if mode & 1 == 1 && h.total_len() <= data.len() => {
            fixed = data.to_vec();
            let crc = compute_crc(&fixed[..h.total_len()]);
            fixed[17..21].copy_from_slice(&crc.to_be_bytes());
            &fixed[..]
        }
        _ => data,
    };
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
        // Iteration stops only at a partial batch (or the end).
        let rest = batches.remainder();
        assert_eq!(consumed + rest.len(), data.len());
        if let Ok(h) = BatchHeader::parse(rest) {
            assert!(rest.len() < h.total_len());
        }
    }
});
