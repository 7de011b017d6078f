//! A process-wide pool of read buffers for [`crate::LogReader`].
//!
//! A fetch reads up to its byte budget (often 1–4 MiB) into a fresh buffer and hands it on as
//! [`Bytes`]. Allocating that buffer per read is costly at this size: the system allocator
//! serves it with a new `mmap`, so the buffer is zero-filled by the kernel page by page on
//! first touch, then zeroed again by `vec![0; n]`, and unmapped when dropped. Measured on the
//! broker's consume path, that halved throughput until glibc's adaptive threshold happened to
//! settle. Buffers from this pool are allocated once and reused: the [`Bytes`] handed out owns
//! a [`Pooled`] buffer that goes back to the pool when the last reference is dropped.
//!
//! Invariants: a pooled `Vec` always has `len() == capacity class` (a power of two between
//! [`MIN_CLASS`] and [`MAX_CLASS`]), so reuse never re-zeroes; the bytes of a reused buffer are
//! stale data from an earlier read, and callers only expose the prefix they have just filled.
//! The pool retains at most [`MAX_RETAINED`] bytes; beyond that, returned buffers are freed.

use bytes::Bytes;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Smallest pooled size: below it the allocator's own free lists do well.
pub(crate) const MIN_CLASS: usize = 64 * 1024;
/// Largest pooled size; bigger reads (a single huge batch) allocate directly.
pub(crate) const MAX_CLASS: usize = 16 * 1024 * 1024;
/// Bytes the pool may keep idle across all classes.
pub(crate) const MAX_RETAINED: usize = 64 * 1024 * 1024;

const CLASSES: usize = (MAX_CLASS.trailing_zeros() - MIN_CLASS.trailing_zeros() + 1) as usize;

struct Pool {
    free: [Mutex<Vec<Vec<u8>>>; CLASSES],
    retained: AtomicUsize,
}

static POOL: Pool = Pool {
    free: [const { Mutex::new(Vec::new()) }; CLASSES],
    retained: AtomicUsize::new(0),
};

fn class_index(size: usize) -> Option<usize> {
    if !(MIN_CLASS..=MAX_CLASS).contains(&size) || !size.is_power_of_two() {
        return None;
    }
    Some((size.trailing_zeros() - MIN_CLASS.trailing_zeros()) as usize)
}

/// A buffer of at least `want` initialised bytes (contents unspecified), from the pool when
/// one of the right class is idle. Small and oversized requests get a plain zeroed `Vec` of
/// exactly `want` bytes.
pub(crate) fn take(want: usize) -> Vec<u8> {
    let class = want.next_power_of_two();
    if want >= MIN_CLASS
        && let Some(i) = class_index(class)
    {
        let reused = POOL.free[i].lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(buf) = reused {
            POOL.retained.fetch_sub(buf.len(), Ordering::Relaxed);
            return buf;
        }
        return vec![0; class];
    }
    vec![0; want]
}

/// Gives a buffer back; it is kept if it has a pooled size and the pool has room. Says
/// whether it was kept.
fn give(buf: Vec<u8>) -> bool {
    let Some(i) = class_index(buf.len()) else {
        return false;
    };
    let size = buf.len();
    if POOL.retained.fetch_add(size, Ordering::Relaxed) + size > MAX_RETAINED {
        POOL.retained.fetch_sub(size, Ordering::Relaxed);
        return false;
    }
    POOL.free[i]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(buf);
    true
}

/// A buffer that returns to the pool when dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// The first `len` bytes of `buf` as [`Bytes`]; the whole buffer returns to the pool once
/// every clone and slice of the result is dropped.
pub(crate) fn freeze(buf: Vec<u8>, len: usize) -> Bytes {
    debug_assert!(len <= buf.len());
    if len == 0 {
        give(buf);
        return Bytes::new();
    }
    Bytes::from_owner(Pooled(buf)).slice(..len)
}

/// Idle bytes held by the pool (for tests).
#[cfg(test)]
pub(crate) fn retained() -> usize {
    POOL.retained.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_read_buffer_is_reused_and_never_exposes_more_than_was_filled() {
        let mut buf = take(100_000);
        assert_eq!(buf.len(), 128 * 1024);
        buf[..5].copy_from_slice(b"hello");
        let ptr = buf.as_ptr();
        let bytes = freeze(buf, 5);
        assert_eq!(&bytes[..], b"hello");
        let clone = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(&clone[..], b"el", "a slice keeps the buffer alive");
        drop(clone);
        // Other tests share the process-wide pool, so the same buffer may have been taken
        // again in between; take until it shows up or the class is drained.
        let mut seen = false;
        let mut held = Vec::new();
        for _ in 0..64 {
            let b = take(100_000);
            seen |= b.as_ptr() == ptr;
            held.push(b);
            if seen {
                break;
            }
        }
        assert!(seen, "the buffer went back to the pool");
    }

    #[test]
    fn sizes_outside_the_classes_are_not_pooled() {
        assert_eq!(take(10).len(), 10, "small reads are not pooled");
        let huge = take(MAX_CLASS + 1);
        assert_eq!(huge.len(), MAX_CLASS + 1);
        // Asked of `give` itself: the pool is process-wide, and tests running beside this one
        // change what it retains (comparing `retained()` before and after raced with them).
        assert!(!give(huge), "an oversized buffer is freed, not kept");
        assert!(!give(vec![0; 10]), "a small buffer is freed, not kept");
        assert_eq!(class_index(3 * MIN_CLASS), None);
    }

    #[test]
    fn the_pool_never_retains_more_than_its_cap() {
        let bufs: Vec<_> = (0..(MAX_RETAINED / MAX_CLASS + 4))
            .map(|_| take(MAX_CLASS))
            .collect();
        for b in bufs {
            drop(freeze(b, 1));
        }
        assert!(retained() <= MAX_RETAINED);
    }
}
