//! Coalesces linearizable metadata reads (see `Metadata::read_linearizable`): each read costs
//! the controller a heartbeat round to a quorum, and they come in bursts (every producer's
//! refusals at a failover; any client naming a producer id this node has not applied), so
//! callers share reads instead of each making one.
//!
//! Invariant (what keeps a shared read linearizable): a caller only takes the answer of a read
//! that *started after the caller arrived*. A read already under way when a caller arrives
//! may have been confirmed before the caller's own event (a refusal, say), so the caller
//! waits for it to end and then shares the next one. At most one read is under way at a time,
//! so a burst of any size costs at most two.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct State {
    /// Reads started so far; the number of the latest one.
    started: u64,
    /// A read is under way.
    in_flight: bool,
    /// The number and outcome of the last read that ended.
    last: Option<(u64, Result<u64, String>)>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct ReadCoalescer {
    state: Mutex<State>,
    ended: Notify,
}

/// Marks the read under way as ended with its outcome (a failure if the reader was dropped
/// mid-read), so waiters never hang on a read nobody finishes.
struct Ending<'a> {
    coalescer: &'a ReadCoalescer,
    number: u64,
    outcome: Option<Result<u64, String>>,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Err("the read was abandoned".into()));
        let mut s = self.coalescer.lock();
        s.in_flight = false;
        s.last = Some((self.number, outcome));
        drop(s);
        self.coalescer.ended.notify_waiters();
    }
}

impl ReadCoalescer {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters, each update whole: still right after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The outcome of a read (made by `read`, here or by another caller) that started after
    /// this call; `Err("timed out")` at `deadline`.
    pub(crate) async fn read<F, Fut>(&self, deadline: Instant, read: F) -> Result<u64, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, String>>,
    {
        let ticket = self.lock().started + 1;
        let mut read = Some(read);
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the state is checked, so an end in between is not missed.
            ended.as_mut().enable();
            let number = {
                let mut s = self.lock();
                if let Some((n, outcome)) = &s.last
                    && *n >= ticket
                {
                    return outcome.clone();
                }
                if s.in_flight {
                    None
                } else {
                    s.in_flight = true;
                    s.started += 1;
                    Some(s.started)
                }
            };
            if let Some(number) = number {
                let mut ending = Ending {
                    coalescer: self,
                    number,
                    outcome: None,
                };
                let f = read.take().expect("a caller makes at most one read");
                let outcome = match tokio::time::timeout_at(deadline, f()).await {
                    Ok(r) => r,
                    Err(_) => Err("timed out".to_string()),
                };
                ending.outcome = Some(outcome.clone());
                return outcome;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Err("timed out".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::sync::Semaphore;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    /// A read that counts itself, then waits for a permit of `gate`; answers its number.
    async fn gated(reads: &AtomicU64, gate: &Semaphore) -> Result<u64, String> {
        let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
        gate.acquire().await.expect("open").forget();
        Ok(n)
    }

    /// Lets every other task on this (single-threaded) runtime run until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn callers_arriving_during_a_read_share_the_next_one_not_that_one() {
        let co = Arc::new(ReadCoalescer::default());
        let reads = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let first = {
            let (co, reads, gate) = (co.clone(), reads.clone(), gate.clone());
            tokio::spawn(async move { co.read(far(), || gated(&reads, &gate)).await })
        };
        settle().await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "the first caller reads");
        // Ten callers arrive while read 1 is under way: it may have been confirmed before
        // they arrived, so none may take its answer.
        let later: Vec<_> = (0..10)
            .map(|_| {
                let (co, reads, gate) = (co.clone(), reads.clone(), gate.clone());
                tokio::spawn(async move { co.read(far(), || gated(&reads, &gate)).await })
            })
            .collect();
        settle().await;
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "they wait, none reads beside it"
        );
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(1));
        settle().await;
        assert_eq!(reads.load(Ordering::SeqCst), 2, "one of them starts read 2");
        gate.add_permits(1);
        for t in later {
            assert_eq!(t.await.unwrap(), Ok(2), "every later caller shares read 2");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2, "eleven callers, two reads");
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_read_does_not_strand_the_waiters() {
        let co = Arc::new(ReadCoalescer::default());
        // The first reader is dropped in the middle of its read.
        let first = {
            let co = co.clone();
            tokio::spawn(async move {
                co.read(far(), std::future::pending::<Result<u64, String>>)
                    .await
            })
        };
        settle().await;
        let second = {
            let co = co.clone();
            tokio::spawn(async move { co.read(far(), || async { Ok(7) }).await })
        };
        settle().await;
        first.abort();
        assert_eq!(second.await.unwrap(), Ok(7), "the waiter made its own read");
        // A failed read is the answer of its callers, and does not stick for later ones.
        let failed = co
            .read(far(), || async { Err("no quorum".to_string()) })
            .await;
        assert_eq!(failed, Err("no quorum".into()));
        assert_eq!(co.read(far(), || async { Ok(9) }).await, Ok(9));
        let soon = Instant::now() + Duration::from_millis(50);
        let late = co
            .read(soon, std::future::pending::<Result<u64, String>>)
            .await;
        assert_eq!(late, Err("timed out".into()));
    }
}
