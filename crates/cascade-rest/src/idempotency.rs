//! The `Idempotency-Key` header on produce: a retried request with the same key and the same
//! records gets the first answer back instead of writing its records twice.
//!
//! The gateway keeps nothing: it passes the key to the broker in the produce request
//! (`ProduceRequest.idempotency_key`), and the broker remembers the first answer per topic and
//! key. So a retry is recognised whichever gateway replica (or node) it reaches, as long as the
//! broker still remembers the key (15 minutes, in memory: a broker restart forgets).
//!
//! For a retry to be the same request, everything the gateway derives from the body is
//! deterministic for a keyed request: records carry no timestamp (the broker stamps them), and
//! the partition of unkeyed records is derived from the idempotency key instead of chosen at
//! random. Semantics:
//! - the key is 1 to 255 visible ASCII characters (400 otherwise);
//! - a request arriving while the first one with its key is still being written waits for it
//!   and gets its answer (done by the broker);
//! - the same key on the same topic with different records is 422;
//! - an answer refused as a whole (4xx: nothing was written) is not remembered, so a corrected
//!   retry runs;
//! - the write is not cancelled when the HTTP client disconnects, so its retry finds the
//!   answer.

use crate::error::{ApiError, ApiResult};
use axum::http::HeaderMap;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// Reads and validates the `Idempotency-Key` header.
pub fn key_from(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()));
    match s {
        Some(s) => Ok(Some(s.to_string())),
        None => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_are_validated() {
        let mut h = HeaderMap::new();
        assert_eq!(key_from(&h).unwrap(), None);
        h.insert(HEADER, HeaderValue::from_static("order-7"));
        assert_eq!(key_from(&h).unwrap().as_deref(), Some("order-7"));
        h.insert(HEADER, HeaderValue::from_static("two words"));
        assert_eq!(key_from(&h).unwrap_err().status, 400);
        h.insert(HEADER, HeaderValue::from_str(&"x".repeat(256)).unwrap());
        assert_eq!(key_from(&h).unwrap_err().status, 400);
    }
}
