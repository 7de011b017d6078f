//! Admission order of idempotent appends: a producer's batches for this partition enter the
//! writer's queue in sequence order, whatever order their requests were scheduled in.
//!
//! Why: a producer keeps several requests in flight (up to five per partition). Over HTTP/2
//! they are concurrent streams, each handled by its own task, so batch 8 can reach the
//! partition before batch 7 even though it was sent after it. The writer accepts a producer's
//! batches only in sequence (see `cascade_log::ProducerStates`), so batch 8 would be refused
//! and resent, and with it every batch behind it. Here a batch whose turn has not come (its
//! first sequence is ahead of the next one expected) waits, at most [`PARK`], for its
//! predecessors; a batch in turn, a retry of an earlier one, a new epoch or an unknown producer
//! goes at once.
//!
//! This is only about speed: correctness rests on the writer's check, which refuses anything
//! out of order. So the expected sequence here is optimistic (advanced when a batch is queued,
//! not when it is stored); a refused batch's retry is "behind" and goes at once, and a batch
//! that waited [`PARK`] in vain goes anyway and gets the writer's verdict.
//!
//! Invariant: the turn is taken and the batch queued under one lock ([`Sequencer::turn`]
//! returns the guard), so two batches cannot pass each other between the two steps.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard, Notify};

/// Longest a batch waits for its predecessors.
pub(crate) const PARK: Duration = Duration::from_millis(500);

/// Producers remembered before idle ones are forgotten.
const MAX_PRODUCERS: usize = 4096;

/// The producer fields of the batches of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

/// The next sequence expected from one producer.
#[derive(Debug)]
struct Turn {
    epoch: i16,
    next: i32,
    used: Instant,
}

/// Where a batch stands against its producer's expected sequence.
///
/// For a producer the log does not know, the line starts at 0: its first batch here is
/// sequence 0 (a batch that is not will be refused by the log as an unknown producer).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Next in line (or nothing is known: the first batch seen defines the line).
    InTurn,
    /// Its predecessors have not been queued yet.
    Ahead,
    /// A retry of something already queued, or another epoch: the writer decides.
    Other,
}

/// Sequences wrap from `i32::MAX` to 0, as Kafka's do.
fn after(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// The producers' expected sequences; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Turns(HashMap<i64, Turn>);

impl Turns {
    pub(crate) fn standing(&self, b: &ProducerBatch) -> Standing {
        let Some(t) = self.0.get(&b.producer_id) else {
            return Standing::InTurn;
        };
        if b.epoch != t.epoch {
            return if b.epoch > t.epoch {
                Standing::InTurn
            } else {
                Standing::Other
            };
        }
        // Distance on the circle of 2^31 sequences: less than half way round is ahead.
        let distance = (i64::from(b.first_seq) - i64::from(t.next)).rem_euclid(1 << 31);
        match distance {
            0 => Standing::InTurn,
            d if d < 1 << 30 => Standing::Ahead,
            _ => Standing::Other,
        }
    }

    /// Notes that `b` was queued in turn: its successor is next.
    fn advance(&mut self, b: &ProducerBatch) {
        if self.0.len() >= MAX_PRODUCERS && !self.0.contains_key(&b.producer_id) {
            let idle = Instant::now() - PARK * 600;
            self.0.retain(|_, t| t.used > idle);
        }
        self.0.insert(
            b.producer_id,
            Turn {
                epoch: b.epoch,
                next: after(b.last_seq),
                used: Instant::now(),
            },
        );
    }
}

/// Admission control for one partition's idempotent appends.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    pub(crate) turns: Mutex<Turns>,
    /// Woken whenever a batch was queued, so parked successors look again.
    queued: Notify,
}

impl Sequencer {
    /// Waits until it is `b`'s turn (or [`PARK`] has passed) and returns the lock under which
    /// the caller must queue the append; then the caller calls [`Sequencer::queued`].
    pub(crate) async fn turn(&self, b: &ProducerBatch) -> MutexGuard<'_, Turns> {
        let deadline = tokio::time::Instant::now() + PARK;
        let mut waited = false;
        loop {
            // Registered before looking, so a batch queued in between still wakes this one.
            let woken = self.queued.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut turns = self.turns.lock().await;
            match turns.standing(b) {
                Standing::InTurn => {
                    turns.advance(b);
                    return turns;
                }
                Standing::Other => return turns,
                Standing::Ahead if tokio::time::Instant::now() >= deadline => {
                    metrics::counter!("cascade_produce_sequence_waits_expired_total").increment(1);
                    // What is expected here may be stale: the next batch learns it afresh
                    // from the log.
                    turns.0.remove(&b.producer_id);
                    return turns;
                }
                Standing::Ahead => {}
            }
            drop(turns);
            if !waited {
                waited = true;
                metrics::counter!("cascade_produce_sequence_waits_total").increment(1);
            }
            let _ = tokio::time::timeout_at(deadline, woken).await;
        }
    }

    /// Wakes batches waiting for their turn.
    pub(crate) fn queued(&self) {
        self.queued.notify_waiters();
    }

    /// Forgets every expected sequence (this replica's role changed: what it expected from
    /// an earlier turn as leader is stale) and wakes the batches waiting, which look again.
    pub(crate) async fn reset(&self) {
        self.turns.lock().await.0.clear();
        self.queued();
    }

    /// True if the producer's expected sequence is known here.
    pub(crate) async fn knows(&self, producer_id: i64) -> bool {
        self.turns.lock().await.0.contains_key(&producer_id)
    }

    /// Learns a producer's expected sequence from the log (which knows what is stored), unless
    /// something was learnt meanwhile. Without it, the first batch seen after a restart or a
    /// leader change would define the line, and if it overtook its predecessor both would be
    /// refused and resent.
    pub(crate) async fn learn(&self, producer_id: i64, epoch: i16, next: i32) {
        self.turns
            .lock()
            .await
            .0
            .entry(producer_id)
            .or_insert(Turn {
                epoch,
                next,
                used: Instant::now(),
            });
        self.queued();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn batch(first: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            epoch: 0,
            first_seq: first,
            last_seq: ((i64::from(first) + i64::from(count) - 1) % (1 << 31)) as i32,
        }
    }

    #[test]
    fn standing_follows_the_expected_sequence() {
        let mut t = Turns::default();
        assert_eq!(
            t.standing(&batch(5, 1)),
            Standing::InTurn,
            "unknown producer"
        );
        t.advance(&batch(0, 10));
        assert_eq!(t.standing(&batch(10, 3)), Standing::InTurn);
        assert_eq!(t.standing(&batch(13, 3)), Standing::Ahead);
        assert_eq!(t.standing(&batch(0, 10)), Standing::Other, "a retry");
        let new_epoch = ProducerBatch {
            epoch: 1,
            ..batch(0, 1)
        };
        assert_eq!(t.standing(&new_epoch), Standing::InTurn);
        let old_epoch = ProducerBatch {
            epoch: -1,
            ..batch(10, 1)
        };
        assert_eq!(t.standing(&old_epoch), Standing::Other);
        // Wrapping: after i32::MAX comes 0, which is in turn, and 1 is ahead.
        t.advance(&batch(i32::MAX - 1, 2));
        assert_eq!(t.standing(&batch(0, 1)), Standing::InTurn);
        assert_eq!(t.standing(&batch(1, 1)), Standing::Ahead);
        assert_eq!(t.standing(&batch(i32::MAX, 1)), Standing::Other);
    }

    #[tokio::test]
    async fn batches_that_arrive_out_of_order_are_queued_in_order() {
        let s = Arc::new(Sequencer::default());
        // The first batch defines the line.
        drop(s.turn(&batch(0, 2)).await);
        s.queued();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Batches 2..12 in reverse order of arrival.
        let mut tasks = Vec::new();
        for first in (1..6).rev().map(|i| i * 2) {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let guard = s.turn(&batch(first, 2)).await;
                order.lock().unwrap().push(first);
                drop(guard);
                s.queued();
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 4, 6, 8, 10]);
    }

    #[tokio::test]
    async fn a_batch_whose_predecessor_never_comes_goes_after_the_park_time() {
        let s = Sequencer::default();
        drop(s.turn(&batch(0, 1)).await);
        let started = tokio::time::Instant::now();
        drop(s.turn(&batch(5, 1)).await);
        assert!(started.elapsed() >= PARK);
        // It did not move the line, and what was expected is forgotten: the next batch learns
        // it from the log.
        assert!(!s.knows(7).await);
    }
}
