//! [`ProducerStates`]: the idempotent-producer state of one partition, as pure data (no IO).
//!
//! Kafka's idempotent producer has an id and an epoch, and numbers the records it sends to a
//! partition with a per-partition *sequence*: a batch of `n` records starting at sequence `s`
//! covers `s ..= s + n - 1` (wrapping from `i32::MAX` to 0). This module owns what the
//! partition remembers about each producer and the rules an append must pass:
//!
//! - for each producer id: its current epoch, the metadata of its newest [`KEPT_BATCHES`]
//!   batches (sequences and the offsets they were written at, newest last), and when it was
//!   last seen (for expiry);
//! - [`ProducerStates::check`] decides, without changing anything, whether a batch is the next
//!   one in sequence ([`SeqCheck::Append`]), an exact retry of one of the kept batches
//!   ([`SeqCheck::Duplicate`], answered with the original offsets and not written again), or
//!   refused (fenced epoch, sequence gap, unknown producer);
//! - [`ProducerStates::record`] is the only mutation besides expiry: it is applied for every
//!   producer batch that is *in the log*, on the leader (after the write), on followers (for
//!   every replicated batch) and when the state is rebuilt from the log on open or after a
//!   truncation. So the state is a function of the log's batches (plus expiry), the same on
//!   every replica.
//!
//! Invariants: an entry holds at most [`KEPT_BATCHES`] batches, all of its current epoch, in
//! increasing offset order, each with `first_offset <= last_offset`; a batch's `last_seq` is
//! its `first_seq` advanced by its record count minus one.
//!
//! The snapshot encoding ([`ProducerStates::encode`], [`ProducerStates::decode`]) is described
//! in `docs/storage-format.md`; it is checksummed, and anything that does not decode exactly
//! is refused, because a snapshot is only an accelerator: the log can always rebuild the state.

use crate::error::LogError;
use std::collections::{BTreeMap, VecDeque};

/// How many of a producer's newest batches are remembered for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const KEPT_BATCHES: usize = 5;

/// The sequence of the last record of a batch of `record_count` records starting at
/// `first_seq`: `first_seq + record_count - 1`, wrapping from `i32::MAX` to 0 (as Kafka's
/// `DefaultRecordBatch.incrementSequence`).
pub fn last_sequence(first_seq: i32, record_count: i32) -> i32 {
    let m = i64::from(i32::MAX) + 1;
    (i64::from(first_seq) + i64::from(record_count) - 1).rem_euclid(m) as i32
}

/// The sequence expected after a batch whose last sequence is `last_seq`: `last_seq + 1`, or 0
/// after `i32::MAX`.
pub fn next_sequence(last_seq: i32) -> i32 {
    if last_seq == i32::MAX {
        0
    } else {
        last_seq + 1
    }
}

/// Where one producer batch is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub first_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
}

impl BatchMeta {
    /// Number of records in the batch.
    pub fn record_count(&self) -> u64 {
        self.last_offset - self.first_offset + 1
    }
}

/// What the partition remembers about one producer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The producer's current epoch: batches of older epochs are fenced.
    pub epoch: i16,
    /// The newest batches of the current epoch, newest last, at most [`KEPT_BATCHES`].
    pub batches: VecDeque<BatchMeta>,
    /// When a batch of this producer was last recorded (ms since the epoch).
    pub last_seen_ms: i64,
}

impl ProducerEntry {
    /// The sequence the next batch must start at: after the newest kept batch, or 0 when none
    /// is kept.
    pub fn next_seq(&self) -> i32 {
        self.batches.back().map_or(0, |b| next_sequence(b.last_seq))
    }
}

/// The verdict of [`ProducerStates::check`] on a batch that is not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The batch is the next one in sequence: write it.
    Append,
    /// The batch is an exact retry of a kept batch, which is already in the log here: do not
    /// write it again, answer with these offsets.
    Duplicate(BatchMeta),
}

/// Every producer's state, keyed by producer id. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    entries: BTreeMap<i64, ProducerEntry>,
}

/// Snapshot magic.
const MAGIC: [u8; 8] = *b"CASC.PID";
/// Snapshot format version.
const VERSION: u32 = 1;
/// Snapshot header: magic, version, entry count, snapshot offset.
const HEADER: usize = 8 + 4 + 4 + 8;
/// Per-entry header: producer id, epoch, batch count, last seen.
const ENTRY: usize = 8 + 2 + 2 + 8;
/// Per kept batch: first and last sequence, first and last offset.
const BATCH: usize = 4 + 4 + 8 + 8;
/// Trailing CRC-32C.
const CRC: usize = 4;

impl ProducerStates {
    /// No producers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of producers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no producer is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The state of producer `pid`.
    pub fn get(&self, pid: i64) -> Option<&ProducerEntry> {
        self.entries.get(&pid)
    }

    /// Every producer, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Forgets every producer.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Decides what to do with a batch of `record_count` records from producer `pid` at
    /// `epoch`, starting at sequence `first_seq`; changes nothing. The rules, in order:
    ///
    /// 1. an epoch older than the producer's current one is fenced ([`LogError::ProducerFenced`]);
    /// 2. a newer epoch of a known producer must start at sequence 0
    ///    ([`LogError::OutOfOrderSequence`] otherwise);
    /// 3. an unknown producer must start at sequence 0 ([`LogError::UnknownProducerId`]
    ///    otherwise);
    /// 4. at the current epoch: a batch with exactly the first and last sequence of a kept
    ///    batch is a [`SeqCheck::Duplicate`]; one starting at the next expected sequence is
    ///    appended; anything else is [`LogError::OutOfOrderSequence`].
    ///
    /// `first_seq` must be ≥ 0 and `record_count` ≥ 1 (the log checks the batch's fields first).
    pub fn check(
        &self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        record_count: i32,
    ) -> Result<SeqCheck, LogError> {
        let Some(entry) = self.entries.get(&pid) else {
            return if first_seq == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err(LogError::UnknownProducerId {
                    producer_id: pid,
                    sequence: first_seq,
                })
            };
        };
        if epoch < entry.epoch {
            return Err(LogError::ProducerFenced {
                producer_id: pid,
                epoch,
                current: entry.epoch,
            });
        }
        if epoch > entry.epoch {
            return if first_seq == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err(LogError::OutOfOrderSequence {
                    producer_id: pid,
                    epoch,
                    expected: 0,
                    got: first_seq,
                })
            };
        }
        let last_seq = last_sequence(first_seq, record_count);
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(SeqCheck::Duplicate(*b));
        }
        let expected = entry.next_seq();
        if first_seq == expected {
            Ok(SeqCheck::Append)
        } else {
            Err(LogError::OutOfOrderSequence {
                producer_id: pid,
                epoch,
                expected,
                got: first_seq,
            })
        }
    }

    /// Records a producer batch that is in the log at `first_offset ..= last_offset`, seen at
    /// `now_ms`. A batch of another epoch than the entry's (newer on the leader; a follower or a
    /// rebuild takes the log as it is, as Kafka does for replicated data) starts the entry's
    /// batches afresh; one of the same epoch is pushed, dropping the oldest beyond
    /// [`KEPT_BATCHES`]. `last_seen_ms` never moves back.
    #[allow(clippy::too_many_arguments)] // the fields of one batch, as the spec names them
    pub fn record(
        &mut self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
        first_offset: u64,
        last_offset: u64,
        now_ms: i64,
    ) {
        let entry = self.entries.entry(pid).or_insert_with(|| ProducerEntry {
            epoch,
            batches: VecDeque::with_capacity(KEPT_BATCHES),
            last_seen_ms: now_ms,
        });
        if entry.epoch != epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchMeta {
            first_seq,
            last_seq,
            first_offset,
            last_offset,
        });
        while entry.batches.len() > KEPT_BATCHES {
            entry.batches.pop_front();
        }
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
    }

    /// Removes the producers not seen for longer than `idle_ms` before `now_ms` (Kafka's
    /// `producer.id.expiration.ms`); returns how many were removed.
    pub fn expire(&mut self, now_ms: i64, idle_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) <= idle_ms);
        before - self.entries.len()
    }

    /// Encodes the state as a snapshot covering the log below `snapshot_offset` (see
    /// `docs/storage-format.md`): little-endian header, entries in id order, CRC-32C.
    pub fn encode(&self, snapshot_offset: u64) -> Vec<u8> {
        let batches: usize = self.entries.values().map(|e| e.batches.len()).sum();
        let mut b = Vec::with_capacity(HEADER + ENTRY * self.entries.len() + BATCH * batches + CRC);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        b.extend_from_slice(&snapshot_offset.to_le_bytes());
        for (pid, e) in &self.entries {
            b.extend_from_slice(&pid.to_le_bytes());
            b.extend_from_slice(&e.epoch.to_le_bytes());
            b.extend_from_slice(&(e.batches.len() as u16).to_le_bytes());
            b.extend_from_slice(&e.last_seen_ms.to_le_bytes());
            for m in &e.batches {
                b.extend_from_slice(&m.first_seq.to_le_bytes());
                b.extend_from_slice(&m.last_seq.to_le_bytes());
                b.extend_from_slice(&m.first_offset.to_le_bytes());
                b.extend_from_slice(&m.last_offset.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a snapshot: the offset it covers and the state. `None` on any damage: wrong
    /// length, magic, version or checksum, or contents that break the module's invariants.
    pub fn decode(b: &[u8]) -> Option<(u64, ProducerStates)> {
        if b.len() < HEADER + CRC {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - CRC);
        if u32::from_le_bytes(crc.try_into().ok()?) != crc32c::crc32c(body) {
            return None;
        }
        let mut r = Reader(body);
        if r.take(8)? != MAGIC || u32::from_le_bytes(r.array()?) != VERSION {
            return None;
        }
        let count = u32::from_le_bytes(r.array()?);
        let offset = u64::from_le_bytes(r.array()?);
        let mut out = ProducerStates::new();
        let mut prev_pid = -1i64;
        for _ in 0..count {
            let pid = i64::from_le_bytes(r.array()?);
            let epoch = i16::from_le_bytes(r.array()?);
            let n = usize::from(u16::from_le_bytes(r.array()?));
            let last_seen_ms = i64::from_le_bytes(r.array()?);
            if pid <= prev_pid || epoch < 0 || n > KEPT_BATCHES {
                return None;
            }
            prev_pid = pid;
            let mut batches = VecDeque::with_capacity(KEPT_BATCHES);
            let mut prev_last: Option<u64> = None;
            for _ in 0..n {
                let m = BatchMeta {
                    first_seq: i32::from_le_bytes(r.array()?),
                    last_seq: i32::from_le_bytes(r.array()?),
                    first_offset: u64::from_le_bytes(r.array()?),
                    last_offset: u64::from_le_bytes(r.array()?),
                };
                let count = m.last_offset.checked_sub(m.first_offset)?.checked_add(1)?;
                if m.first_seq < 0
                    || m.last_seq < 0
                    || m.last_offset >= offset
                    || prev_last.is_some_and(|p| m.first_offset <= p)
                    || count > i32::MAX as u64
                    || last_sequence(m.first_seq, count as i32) != m.last_seq
                {
                    return None;
                }
                prev_last = Some(m.last_offset);
                batches.push_back(m);
            }
            out.entries.insert(
                pid,
                ProducerEntry {
                    epoch,
                    batches,
                    last_seen_ms,
                },
            );
        }
        if !r.0.is_empty() {
            return None;
        }
        Some((offset, out))
    }
}

/// A cursor over a byte slice that fails (`None`) instead of running past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// A scratch view of the state for checking the batches of one append in order without
/// changing the state: batches found good are recorded into copies of the entries they touch,
/// so a later batch of the same producer in the same append is checked against them.
#[derive(Debug)]
pub(crate) struct Overlay<'a> {
    base: &'a ProducerStates,
    changed: ProducerStates,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a ProducerStates) -> Self {
        Self {
            base,
            changed: ProducerStates::new(),
        }
    }

    /// [`ProducerStates::check`] against the state plus what this overlay recorded.
    pub fn check(
        &self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        record_count: i32,
    ) -> Result<SeqCheck, LogError> {
        if self.changed.entries.contains_key(&pid) {
            self.changed.check(pid, epoch, first_seq, record_count)
        } else {
            self.base.check(pid, epoch, first_seq, record_count)
        }
    }

    /// [`ProducerStates::record`] into the overlay only.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
        first_offset: u64,
        last_offset: u64,
        now_ms: i64,
    ) {
        if !self.changed.entries.contains_key(&pid)
            && let Some(e) = self.base.get(pid)
        {
            self.changed.entries.insert(pid, e.clone());
        }
        self.changed.record(
            pid,
            epoch,
            first_seq,
            last_seq,
            first_offset,
            last_offset,
            now_ms,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    /// A verdict made comparable (`LogError` is not `PartialEq`): errors as their message.
    fn v(r: Result<SeqCheck, LogError>) -> Result<SeqCheck, String> {
        r.map_err(|e| e.to_string())
    }

    /// Checks a batch and, if it is to be appended, records it at `*next` (advancing it), as
    /// the log does; returns the verdict.
    fn send(
        s: &mut ProducerStates,
        next: &mut u64,
        pid: i64,
        epoch: i16,
        seq: i32,
        n: i32,
    ) -> Result<SeqCheck, LogError> {
        let v = s.check(pid, epoch, seq, n)?;
        if v == SeqCheck::Append {
            let first = *next;
            *next += n as u64;
            s.record(
                pid,
                epoch,
                seq,
                last_sequence(seq, n),
                first,
                *next - 1,
                NOW,
            );
        }
        Ok(v)
    }

    fn out_of_order(r: Result<SeqCheck, LogError>) -> (i32, i32) {
        match r {
            Err(LogError::OutOfOrderSequence { expected, got, .. }) => (expected, got),
            other => panic!("expected OutOfOrderSequence, got {other:?}"),
        }
    }

    #[test]
    fn sequence_arithmetic_wraps_like_kafka() {
        assert_eq!(last_sequence(0, 1), 0);
        assert_eq!(last_sequence(10, 5), 14);
        assert_eq!(last_sequence(i32::MAX, 1), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 2), 0);
        assert_eq!(last_sequence(i32::MAX - 2, 5), 1);
        assert_eq!(next_sequence(5), 6);
        assert_eq!(next_sequence(i32::MAX), 0);
    }

    #[test]
    fn in_sequence_batches_are_appended_and_recorded() {
        let mut s = ProducerStates::new();
        let mut next = 100;
        assert_eq!(v(send(&mut s, &mut next, 7, 0, 0, 3)), Ok(SeqCheck::Append));
        assert_eq!(v(send(&mut s, &mut next, 7, 0, 3, 2)), Ok(SeqCheck::Append));
        assert_eq!(v(send(&mut s, &mut next, 7, 0, 5, 1)), Ok(SeqCheck::Append));
        let e = s.get(7).unwrap();
        assert_eq!(e.epoch, 0);
        assert_eq!(e.next_seq(), 6);
        assert_eq!(
            e.batches.iter().copied().collect::<Vec<_>>(),
            vec![
                BatchMeta {
                    first_seq: 0,
                    last_seq: 2,
                    first_offset: 100,
                    last_offset: 102
                },
                BatchMeta {
                    first_seq: 3,
                    last_seq: 4,
                    first_offset: 103,
                    last_offset: 104
                },
                BatchMeta {
                    first_seq: 5,
                    last_seq: 5,
                    first_offset: 105,
                    last_offset: 105
                },
            ]
        );
        assert_eq!(s.len(), 1);
        assert!(!s.is_empty());
        assert!(s.get(8).is_none());
    }

    #[test]
    fn each_of_the_last_five_batches_is_a_duplicate_the_sixth_oldest_is_not() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        // Ten batches of 1..=3 records, interleaved with another producer so offsets differ
        // from sequences.
        let mut sent = Vec::new();
        let mut seq = 0;
        for i in 0..10 {
            let n = i % 3 + 1;
            let first = next;
            assert_eq!(
                v(send(&mut s, &mut next, 1, 3, seq, n)),
                Ok(SeqCheck::Append)
            );
            sent.push((seq, n, first));
            send(&mut s, &mut next, 2, 0, i, 1).unwrap();
            seq += n;
        }
        let end = next;
        for (k, &(seq, n, first)) in sent.iter().enumerate() {
            let r = s.check(1, 3, seq, n);
            if k >= sent.len() - KEPT_BATCHES {
                assert_eq!(
                    v(r),
                    Ok(SeqCheck::Duplicate(BatchMeta {
                        first_seq: seq,
                        last_seq: seq + n - 1,
                        first_offset: first,
                        last_offset: first + n as u64 - 1,
                    })),
                    "batch {k} is among the last five"
                );
            } else {
                assert_eq!(out_of_order(r), (seq_after(&sent), seq), "batch {k}");
            }
        }
        // A checked duplicate changes nothing.
        assert_eq!(next, end);
        assert_eq!(s.get(1).unwrap().batches.len(), KEPT_BATCHES);
        // The same first sequence with a different length is not a duplicate.
        let (seq, n, _) = sent[9];
        assert_eq!(
            out_of_order(s.check(1, 3, seq, n + 1)),
            (seq_after(&sent), seq)
        );
    }

    fn seq_after(sent: &[(i32, i32, u64)]) -> i32 {
        let (seq, n, _) = *sent.last().unwrap();
        seq + n
    }

    #[test]
    fn gaps_are_refused() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        send(&mut s, &mut next, 1, 0, 0, 2).unwrap();
        assert_eq!(out_of_order(s.check(1, 0, 3, 1)), (2, 3));
        assert_eq!(
            out_of_order(s.check(1, 0, 1, 1)),
            (2, 1),
            "overlap, not a retry"
        );
        assert_eq!(out_of_order(s.check(1, 0, 1000, 1)), (2, 1000));
        assert_eq!(v(s.check(1, 0, 2, 1)), Ok(SeqCheck::Append));
    }

    #[test]
    fn old_epochs_are_fenced_new_epochs_start_at_zero() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        send(&mut s, &mut next, 1, 5, 0, 2).unwrap();
        match s.check(1, 4, 2, 1) {
            Err(LogError::ProducerFenced {
                producer_id: 1,
                epoch: 4,
                current: 5,
            }) => {}
            other => panic!("{other:?}"),
        }
        // Even an exact retry of a kept batch is fenced at an older epoch.
        assert!(matches!(
            s.check(1, 4, 0, 2),
            Err(LogError::ProducerFenced { .. })
        ));
        assert_eq!(out_of_order(s.check(1, 6, 2, 1)), (0, 2));
        assert_eq!(out_of_order(s.check(1, 6, 1, 1)), (0, 1));
        assert_eq!(v(send(&mut s, &mut next, 1, 6, 0, 1)), Ok(SeqCheck::Append));
        let e = s.get(1).unwrap();
        assert_eq!(e.epoch, 6);
        assert_eq!(
            e.batches.len(),
            1,
            "a new epoch starts the kept batches afresh"
        );
        assert_eq!(e.next_seq(), 1);
        // The old epoch is now fenced, and its batches are no longer duplicates.
        assert!(matches!(
            s.check(1, 5, 0, 2),
            Err(LogError::ProducerFenced { current: 6, .. })
        ));
        assert_eq!(out_of_order(s.check(1, 6, 0, 2)), (1, 0));
    }

    #[test]
    fn unknown_producers_must_start_at_zero() {
        let s = ProducerStates::new();
        match s.check(9, 0, 5, 1) {
            Err(LogError::UnknownProducerId {
                producer_id: 9,
                sequence: 5,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(v(s.check(9, 0, 0, 1)), Ok(SeqCheck::Append));
        assert_eq!(v(s.check(9, 3, 0, 4)), Ok(SeqCheck::Append), "at any epoch");
    }

    #[test]
    fn an_entry_without_batches_expects_zero() {
        let mut s = ProducerStates::new();
        s.entries.insert(
            4,
            ProducerEntry {
                epoch: 2,
                batches: VecDeque::new(),
                last_seen_ms: NOW,
            },
        );
        assert_eq!(v(s.check(4, 2, 0, 1)), Ok(SeqCheck::Append));
        assert_eq!(out_of_order(s.check(4, 2, 1, 1)), (0, 1));
        assert!(matches!(
            s.check(4, 1, 0, 1),
            Err(LogError::ProducerFenced { .. })
        ));
    }

    #[test]
    fn expiry_removes_only_producers_idle_for_longer_than_the_limit() {
        let mut s = ProducerStates::new();
        s.record(1, 0, 0, 0, 0, 0, 1_000);
        s.record(2, 0, 0, 0, 1, 1, 2_000);
        s.record(3, 0, 0, 0, 2, 2, 3_000);
        // Producer 1 seen again later: its newest sighting counts.
        s.record(1, 0, 1, 1, 3, 3, 2_500);
        assert_eq!(s.expire(3_000, 1_000), 0, "2 was seen exactly 1000 ms ago");
        assert_eq!(s.expire(3_001, 1_000), 1);
        assert!(s.get(2).is_none());
        assert!(s.get(1).is_some() && s.get(3).is_some());
        assert_eq!(s.expire(10_000, 1_000), 2);
        assert!(s.is_empty());
        // An expired producer is unknown again.
        assert!(matches!(
            s.check(1, 0, 2, 1),
            Err(LogError::UnknownProducerId { .. })
        ));
        // A sighting never moves last_seen back.
        s.record(5, 0, 0, 0, 9, 9, 5_000);
        s.record(5, 0, 1, 1, 10, 10, 4_000);
        assert_eq!(s.get(5).unwrap().last_seen_ms, 5_000);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut s = ProducerStates::new();
        // A producer whose last batch ends just before the wrap.
        s.record(1, 0, i32::MAX - 9, i32::MAX - 1, 0, 8, NOW);
        let mut next = 9;
        // Three records: MAX - 1 + 1 = MAX, then 0, 1.
        assert_eq!(v(s.check(1, 0, i32::MAX, 3)), Ok(SeqCheck::Append));
        assert_eq!(
            v(send(&mut s, &mut next, 1, 0, i32::MAX, 3)),
            Ok(SeqCheck::Append)
        );
        let e = s.get(1).unwrap();
        assert_eq!(e.batches.back().unwrap().last_seq, 1);
        assert_eq!(e.next_seq(), 2);
        // Its retry is a duplicate; the next batch continues at 2.
        assert_eq!(
            v(s.check(1, 0, i32::MAX, 3)),
            Ok(SeqCheck::Duplicate(BatchMeta {
                first_seq: i32::MAX,
                last_seq: 1,
                first_offset: 9,
                last_offset: 11
            }))
        );
        assert_eq!(out_of_order(s.check(1, 0, 0, 1)), (2, 0));
        assert_eq!(v(send(&mut s, &mut next, 1, 0, 2, 1)), Ok(SeqCheck::Append));
        // A batch ending exactly at MAX is followed by 0.
        let mut t = ProducerStates::new();
        t.record(2, 0, i32::MAX - 1, i32::MAX, 0, 1, NOW);
        assert_eq!(v(t.check(2, 0, 0, 1)), Ok(SeqCheck::Append));
        assert_eq!(out_of_order(t.check(2, 0, i32::MAX, 1)), (0, i32::MAX));
    }

    #[test]
    fn overlay_checks_in_order_without_changing_the_state() {
        let mut s = ProducerStates::new();
        s.record(1, 0, 0, 1, 0, 1, NOW);
        let before = s.clone();
        let mut o = Overlay::new(&s);
        assert_eq!(v(o.check(1, 0, 2, 2)), Ok(SeqCheck::Append));
        o.record(1, 0, 2, 3, 2, 3, NOW);
        // The next batch of the same append must follow the first; a repeat of it is a
        // duplicate of the overlay's batch (which the log refuses as a mixed append).
        assert_eq!(out_of_order(o.check(1, 0, 3, 1)), (4, 3));
        assert_eq!(
            v(o.check(1, 0, 2, 2)),
            Ok(SeqCheck::Duplicate(BatchMeta {
                first_seq: 2,
                last_seq: 3,
                first_offset: 2,
                last_offset: 3
            }))
        );
        assert_eq!(v(o.check(1, 0, 4, 1)), Ok(SeqCheck::Append));
        // A new producer recorded in the overlay only.
        assert_eq!(v(o.check(2, 0, 0, 1)), Ok(SeqCheck::Append));
        o.record(2, 0, 0, 0, 4, 4, NOW);
        assert_eq!(out_of_order(o.check(2, 0, 5, 1)), (1, 5));
        drop(o);
        assert_eq!(s, before);
    }

    fn sample() -> ProducerStates {
        let mut s = ProducerStates::new();
        let mut next = 0;
        for i in 0..8 {
            send(&mut s, &mut next, 3, 1, i * 2, 2).unwrap();
        }
        send(&mut s, &mut next, 0, 0, 0, 1).unwrap();
        send(&mut s, &mut next, i64::MAX, i16::MAX, 0, 4).unwrap();
        s.record(
            77,
            2,
            i32::MAX - 1,
            0,
            next,
            next + 2,
            -5, // any timestamp round-trips
        );
        s
    }

    #[test]
    fn snapshot_round_trips() {
        let s = sample();
        let b = s.encode(1_000);
        assert_eq!(ProducerStates::decode(&b), Some((1_000, s.clone())));
        let empty = ProducerStates::new();
        let b = empty.encode(0);
        assert_eq!(b.len(), HEADER + CRC);
        assert_eq!(ProducerStates::decode(&b), Some((0, empty)));
        // The encoding is a function of the state: equal states, equal bytes.
        assert_eq!(s.clone().encode(1_000), s.encode(1_000));
    }

    #[test]
    fn any_damaged_snapshot_is_refused() {
        let s = sample();
        let good = s.encode(1_000);
        for i in 0..good.len() {
            for mask in [0x01u8, 0x80, 0xff, 0x5a] {
                let mut b = good.clone();
                b[i] ^= mask;
                assert_eq!(ProducerStates::decode(&b), None, "byte {i} ^ {mask:#x}");
            }
        }
        for n in 0..good.len() {
            assert_eq!(ProducerStates::decode(&good[..n]), None, "cut to {n} bytes");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(ProducerStates::decode(&long), None, "a trailing byte");
        // Well-checksummed contents that break the invariants are refused too.
        let reseal = |mut b: Vec<u8>| {
            let n = b.len() - CRC;
            let crc = crc32c::crc32c(&b[..n]);
            b[n..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        // A snapshot claiming to cover less than its batches.
        let mut b = good.clone();
        b[16..24].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(ProducerStates::decode(&reseal(b)), None);
        // One more entry than encoded.
        let mut b = good.clone();
        b[12] += 1;
        assert_eq!(ProducerStates::decode(&reseal(b)), None);
        // A wrong version.
        let mut b = good;
        b[8] = 2;
        assert_eq!(ProducerStates::decode(&reseal(b)), None);
    }
}
