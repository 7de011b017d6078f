//! Zigzag variable-length integers, as Kafka's record format uses them.
//!
//! A value is zigzag-mapped (so small negative numbers stay short) and written seven bits per
//! byte, low bits first, with the high bit set on every byte but the last. An `i32` takes at
//! most 5 bytes and an `i64` at most 10; decoders reject longer encodings instead of
//! wrapping, so arbitrary input can never make them loop or overflow.

use crate::error::DecodeError;

/// Appends `v` as a zigzag varint (the encoding of an `i64` "varlong").
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends `v` as a zigzag varint (the encoding of an `i32` "varint").
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_varlong(out, i64::from(v));
}

/// How many bytes [`put_varlong`] writes for `v`.
pub fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    // Bits needed, rounded up to groups of seven; zero still takes one byte.
    let bits = 64 - z.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Reads a zigzag varlong from the front of `buf`, returning the value and the bytes used.
pub fn get_varlong(buf: &[u8]) -> Result<(i64, usize), DecodeError> {
    let mut z: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return Err(DecodeError::VarintTooLong);
        }
        z |= part << (7 * i);
        if b & 0x80 == 0 {
            let v = ((z >> 1) as i64) ^ -((z & 1) as i64);
            return Ok((v, i + 1));
        }
    }
    if buf.len() >= 10 {
        Err(DecodeError::VarintTooLong)
    } else {
        Err(DecodeError::Truncated { what: "varint" })
    }
}

/// Reads a zigzag varint that must fit an `i32`.
pub fn get_varint(buf: &[u8]) -> Result<(i32, usize), DecodeError> {
    let (v, n) = get_varlong(buf)?;
    if n > 5 {
        return Err(DecodeError::VarintTooLong);
    }
    i32::try_from(v)
        .map(|v| (v, n))
        .map_err(|_| DecodeError::VarintTooLong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // Values from the Protocol Buffers zigzag table, which Kafka shares.
        for (v, bytes) in [
            (0i64, vec![0x00]),
            (-1, vec![0x01]),
            (1, vec![0x02]),
            (-2, vec![0x03]),
            (63, vec![0x7e]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(out, bytes, "encoding {v}");
            assert_eq!(get_varlong(&bytes).unwrap(), (v, bytes.len()));
            assert_eq!(varlong_len(v), bytes.len());
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        assert_eq!(get_varlong(&[0x80; 11]), Err(DecodeError::VarintTooLong));
        assert_eq!(
            get_varlong(&[0x80, 0x80]),
            Err(DecodeError::Truncated { what: "varint" })
        );
        // Six bytes is fine for an i64 but too long for an i32.
        let mut out = Vec::new();
        put_varlong(&mut out, 1 << 40);
        assert!(get_varint(&out).is_err());
    }

    proptest! {
        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            prop_assert_eq!(out.len(), varlong_len(v));
            prop_assert_eq!(get_varlong(&out).unwrap(), (v, out.len()));
        }

        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(get_varint(&out).unwrap(), (v, out.len()));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = get_varlong(&bytes);
            let _ = get_varint(&bytes);
        }
    }
}
