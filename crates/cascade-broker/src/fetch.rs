//! The fetch path: resolve each partition's start, read stored batches below the high
//! watermark, and long-poll until enough data arrives or the wait runs out.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::partition::{Partition, Role};
use bytes::Bytes;
use cascade_log::LogError;
use futures::future::select_all;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At this offset.
    Offset(u64),
    /// At the first record with a timestamp at or after this (ms).
    Timestamp(i64),
    /// At the high watermark (only new records).
    Latest,
}

/// One partition to fetch.
#[derive(Debug, Clone)]
pub struct FetchPart {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Where to start.
    pub position: Position,
    /// Byte budget for this partition.
    pub max_bytes: usize,
    /// The newest leader epoch the requester knows: a replica leading at an older one has been
    /// replaced and refuses to serve (see [`BrokerError::StaleLeader`]).
    pub leader_epoch: Option<i32>,
}

/// What a partition returned.
#[derive(Debug, Clone)]
pub struct FetchOut {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Whole stored batches.
    pub batches: Bytes,
    /// Where to continue.
    pub next_offset: u64,
    /// High watermark at the time of the read.
    pub high_watermark: u64,
    /// Log start offset.
    pub log_start_offset: u64,
    /// Set if this partition failed.
    pub error: Option<Arc<BrokerError>>,
    /// The leader epoch this replica served at (0 on failure).
    pub leader_epoch: i32,
}

/// Default per-partition budget.
pub const DEFAULT_PARTITION_MAX_BYTES: usize = 1 << 20;

impl Broker {
    /// Resolves a start position to an offset.
    pub fn resolve_position(&self, part: &Partition, position: Position) -> Result<u64> {
        let hw = part.high_watermark();
        Ok(match position {
            Position::Offset(o) => o,
            Position::Latest => hw,
            Position::Timestamp(ts) => part
                .reader()
                .offset_for_timestamp(ts)?
                .map_or(hw, |o| o.min(hw)),
        })
    }

    /// Refuses to serve from a replica that leads at an older epoch than the requester knows.
    fn check_fetch_epoch(
        &self,
        part: Arc<Partition>,
        requested: Option<i32>,
    ) -> Result<Arc<Partition>> {
        match (part.role(), requested) {
            (Role::Leader { epoch }, Some(requested)) if epoch < requested => {
                Err(BrokerError::StaleLeader {
                    node: self.config.node_id,
                    topic: part.topic.to_string(),
                    partition: part.index,
                    epoch,
                    requested,
                })
            }
            _ => Ok(part),
        }
    }

    /// Reads one partition once, without waiting.
    pub fn read_partition(
        &self,
        part: &Partition,
        offset: u64,
        max_bytes: usize,
    ) -> Result<FetchOut> {
        let hw = part.high_watermark();
        let r = part.reader();
        let f = r
            .read_until(offset, max_bytes.max(1), hw)
            .map_err(|e| match e {
                LogError::OffsetOutOfRange {
                    requested,
                    start,
                    end,
                } => BrokerError::OffsetOutOfRange {
                    topic: part.topic.to_string(),
                    partition: part.index,
                    requested,
                    start,
                    end,
                },
                other => BrokerError::from(other),
            })?;
        metrics::counter!("cascade_fetched_bytes_total", "topic" => part.topic.to_string())
            .increment(f.data.len() as u64);
        Ok(FetchOut {
            topic: part.topic.to_string(),
            partition: part.index,
            next_offset: if f.data.is_empty() {
                offset
            } else {
                f.next_offset
            },
            batches: f.data,
            high_watermark: hw,
            log_start_offset: f.start_offset,
            error: None,
            leader_epoch: epoch_of(part),
        })
    }

    /// Fetches from several partitions, waiting up to `max_wait` until at least `min_bytes`
    /// are available in total. `max_bytes` bounds the total; the first partition with data
    /// returns at least one whole batch regardless.
    pub async fn fetch(
        &self,
        parts: Vec<FetchPart>,
        max_wait: Duration,
        min_bytes: usize,
        max_bytes: usize,
    ) -> Result<Vec<FetchOut>> {
        if parts.is_empty() {
            return Err(BrokerError::InvalidRequest("no partitions to fetch".into()));
        }
        let deadline = Instant::now() + max_wait;
        // Resolve partitions and start offsets once; timestamps map to offsets at the start.
        type Resolved = std::result::Result<(Arc<Partition>, u64), Arc<BrokerError>>;
        let mut resolved: Vec<(FetchPart, Resolved)> = Vec::new();
        for p in parts {
            let r = self
                .partition(&p.topic, p.partition)
                .and_then(|part| self.check_fetch_epoch(part, p.leader_epoch))
                .and_then(|part| self.resolve_position(&part, p.position).map(|o| (part, o)))
                .map_err(Arc::new);
            resolved.push((p, r));
        }
        loop {
            let mut out = Vec::with_capacity(resolved.len());
            let mut total = 0usize;
            let mut watches = Vec::new();
            for (req, r) in &resolved {
                // Subscribed before the read, so a move between the read and the wait below
                // still wakes this poll, and only a move does.
                if let Ok((part, _)) = r {
                    watches.push(part.watch_high_watermark());
                }
                let fo = match r {
                    Err(e) => failed(req, e.clone()),
                    Ok((part, offset)) => {
                        let budget = req.max_bytes.min(max_bytes.saturating_sub(total));
                        if budget == 0 && total > 0 {
                            empty(req, part, *offset)
                        } else {
                            match self.read_partition(part, *offset, budget) {
                                Ok(f) => f,
                                Err(e) => FetchOut {
                                    error: Some(Arc::new(e)),
                                    ..empty(req, part, *offset)
                                },
                            }
                        }
                    }
                };
                total += fo.batches.len();
                out.push(fo);
            }
            let has_error = out.iter().any(|f| f.error.is_some());
            if total >= min_bytes.max(1)
                || has_error
                || Instant::now() >= deadline
                || watches.is_empty()
            {
                return Ok(out);
            }
            // Long poll: wake on any high-watermark move, the deadline, or shutdown.
            let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
            tokio::select! {
                _ = select_all(changes) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => return Ok(out),
            }
        }
    }
}

fn empty(req: &FetchPart, part: &Partition, offset: u64) -> FetchOut {
    FetchOut {
        topic: req.topic.clone(),
        partition: req.partition,
        batches: Bytes::new(),
        next_offset: offset,
        high_watermark: part.high_watermark(),
        log_start_offset: part.reader().start_offset(),
        error: None,
        leader_epoch: epoch_of(part),
    }
}

fn epoch_of(part: &Partition) -> i32 {
    match part.role() {
        Role::Leader { epoch } | Role::Follower { epoch, .. } => epoch,
        Role::Idle => 0,
    }
}

fn failed(req: &FetchPart, error: Arc<BrokerError>) -> FetchOut {
    FetchOut {
        topic: req.topic.clone(),
        partition: req.partition,
        batches: Bytes::new(),
        next_offset: 0,
        high_watermark: 0,
        log_start_offset: 0,
        error: Some(error),
        leader_epoch: 0,
    }
}
