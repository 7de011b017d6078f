//! The partition's single writer: [`Actor`] owns the [`Log`] and the [`EpochCache`] on a
//! dedicated thread and takes [`Command`]s from its channel, one group at a time (appends
//! drained together, made durable by one fsync, then answered). See the parent module for
//! the invariants it keeps.

use super::ReplState;
use crate::epochs::EpochCache;
use crate::error::{BrokerError, Result};
use bytes::BytesMut;
use cascade_log::{AppendInfo, FlushPolicy, Log, LogConfig, LogError};
use cascade_record::BatchHeader;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// Most commands handled in one group (one fsync).
const MAX_GROUP: usize = 512;

impl Command {
    /// The bytes of an append (empty for other commands).
    pub(crate) fn batches(&self) -> &[u8] {
        match self {
            Command::Append { batches, .. } => batches,
            Command::AppendReplicated { batches, .. } => batches,
            _ => &[],
        }
    }
}

/// Requests to a partition's actor.
pub(crate) enum Command {
    /// A leader append under `epoch`.
    Append {
        batches: BytesMut,
        epoch: i32,
        reply: oneshot::Sender<Result<AppendInfo>>,
    },
    /// A follower's copy of the leader's batches (offsets kept).
    AppendReplicated {
        batches: Vec<u8>,
        /// The leader epoch the fetcher that read them follows: refused unless it is still
        /// the one this replica follows (a cancelled fetcher's last append can arrive after
        /// the role changed, and after the new fetcher checked for a divergent suffix), and
        /// refused if a batch is stamped with a newer epoch (no leader of `epoch` holds one).
        epoch: i32,
        reply: oneshot::Sender<Result<AppendInfo>>,
    },
    /// Start leading at `epoch`; replies with the offset where the epoch starts.
    BecomeLeader {
        epoch: i32,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Refuse appends as the leader of `epoch` from now on, touching nothing else (the
    /// follower state is the reconciler's): a no-op if this replica no longer leads `epoch`.
    StopLeading {
        epoch: i32,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop leading (appends are refused from now on).
    BecomeFollower {
        /// The leader epoch followed (None: no leader, nothing to follow).
        epoch: Option<i32>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Cut the log at `offset` (a divergent suffix).
    Truncate {
        offset: u64,
        /// A cut for damage: what it drops is kept under the log's `damaged/` first.
        keep: bool,
        /// A follower's cut, decided against the leader of this epoch: refused unless the
        /// replica still follows that epoch (a fetcher stopped late must not cut a log that
        /// has since changed role).
        follower_of: Option<i32>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Drop everything and restart empty at `start`.
    TruncateFully {
        start: u64,
        /// As for `Truncate`.
        follower_of: Option<i32>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Look for damage in the segments starting at or after `from` (the sealed ones before
    /// were checked off the actor).
    FindDamage {
        from: u64,
        reply: oneshot::Sender<Result<Option<u64>>>,
    },
    /// The epoch and next sequence the log expects from an idempotent producer, if it
    /// knows the producer (for the admission order of its appends).
    ProducerTurn {
        producer_id: i64,
        reply: oneshot::Sender<Result<Option<(i16, i32)>>>,
    },
    /// Periodic housekeeping: interval flush, retention.
    Maintain { retention: bool },
    /// Replace the configuration for everything from now on.
    Reconfigure {
        config: LogConfig,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Close the log cleanly and stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

pub(super) fn publish_hw(tx: &watch::Sender<u64>, hw: u64) {
    tx.send_if_modified(|cur| {
        if hw > *cur {
            *cur = hw;
            true
        } else {
            false
        }
    });
}

pub(super) fn acknowledged_end(log: &Log) -> u64 {
    match log.config().flush {
        FlushPolicy::Always => log.durable_offset(),
        _ => log.end_offset(),
    }
}

pub(super) fn storage_failure(log: &Log, e: &LogError) -> BrokerError {
    BrokerError::Storage(LogError::Poisoned {
        dir: log.dir().to_path_buf(),
        reason: e.to_string(),
    })
}

/// Stamps `epoch` into every batch (the field is outside the CRC).
pub(super) fn stamp_epoch(batches: &mut [u8], epoch: i32) {
    let mut at = 0;
    while at + 61 <= batches.len() {
        let Ok(h) = BatchHeader::parse(&batches[at..]) else {
            return; // the log's validation reports it
        };
        cascade_record::header::set_leader_epoch(&mut batches[at..], epoch);
        at += h.total_len();
    }
}

/// The epochs that start inside `batches`, with their first offsets.
pub(super) fn epochs_in(batches: &[u8]) -> Vec<(i32, u64)> {
    let mut out: Vec<(i32, u64)> = Vec::new();
    let mut at = 0;
    while at < batches.len() {
        let Ok(h) = BatchHeader::parse(&batches[at..]) else {
            break;
        };
        if out.last().is_none_or(|&(e, _)| h.leader_epoch > e) {
            out.push((h.leader_epoch, h.base_offset as u64));
        }
        at += h.total_len();
    }
    out
}

pub(super) struct Actor {
    pub(super) log: Log,
    /// The replica's disk-full report, set and cleared here from every append's outcome.
    pub(super) disk_full: Arc<Mutex<Option<String>>>,
    pub(super) dir: PathBuf,
    pub(super) epochs: Arc<Mutex<EpochCache>>,
    pub(super) leader_epoch: Option<i32>,
    /// The leader epoch followed, while following: replicated appends of any other are refused.
    pub(super) follower_epoch: Option<i32>,
    pub(super) repl: Arc<Mutex<ReplState>>,
    pub(super) hw_tx: watch::Sender<u64>,
    pub(super) end_tx: watch::Sender<u64>,
}

impl Actor {
    fn epochs(&self) -> std::sync::MutexGuard<'_, EpochCache> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why a follower's cut decided against the leader of epoch `follower_of` must not run:
    /// the replica no longer follows that epoch (it leads now, or follows a newer leader), so
    /// the cut was computed for a log that has since changed role. `None`: go ahead.
    fn stale_follower_cut(&self, follower_of: Option<i32>) -> Option<BrokerError> {
        let epoch = follower_of?;
        (self.follower_epoch != Some(epoch)).then(|| BrokerError::FencedLeaderEpoch {
            topic: String::new(),
            partition: 0,
            got: epoch,
            current: self.follower_epoch.unwrap_or(-1),
        })
    }

    /// Cuts the log at `offset` (keeping what it drops under `damaged/` when `keep`). A cut
    /// ends the leader role here, in the same step: a leader's log is only ever cut for
    /// damage, and an append taken after the cut would be acknowledged at offsets the other
    /// copies hold other events at. The replica takes appends again only once the metadata
    /// gives it a role under a new epoch (`BecomeLeader`); were it still named leader at the
    /// same epoch, refusing is right: leading on with the cut log would reuse offsets.
    fn cut(&mut self, offset: u64, keep: bool) -> Result<u64> {
        self.leader_epoch = None;
        let kept = if keep {
            self.log.keep_from(offset).map(|_| ())
        } else {
            Ok(())
        };
        kept.and_then(|()| self.log.truncate_to(offset))
            .map_err(BrokerError::from)
            .and_then(|end| {
                self.epochs().truncate_from(end)?;
                Ok(end)
            })
    }

    /// Appends a leader's batches, recording each new epoch they start first (the cache
    /// invariant). A first batch that does not start at the log end is refused before any
    /// epoch is recorded for it, and a failed append forgets the epochs it recorded: an entry
    /// left behind would name batches already in the log as the new epoch's, and truncation,
    /// which trusts the cache, would keep them.
    fn append_replicated(&mut self, batches: &[u8]) -> Result<AppendInfo> {
        let end = self.log.end_offset();
        if let Ok(h) = BatchHeader::parse(batches)
            && u64::try_from(h.base_offset).ok() != Some(end)
        {
            return Err(BrokerError::Storage(LogError::NonContiguous {
                expected: end,
                got: h.base_offset.max(0) as u64,
            }));
        }
        let appended = epochs_in(batches)
            .into_iter()
            .try_for_each(|(epoch, start)| self.epochs().assign(epoch, start))
            .and_then(|()| Ok(self.log.append_replicated(batches)?));
        if appended.is_err() {
            let end = self.log.end_offset();
            if let Err(e) = self.epochs().truncate_from(end) {
                tracing::error!(dir = %self.dir.display(), error = %e, "forgetting the epochs of a failed append");
            }
        }
        appended
    }

    fn publish(&self) {
        let end = acknowledged_end(&self.log);
        let hw = {
            let mut r = self.repl.lock().unwrap_or_else(|e| e.into_inner());
            r.local_end = end;
            r.compute_hw()
        };
        self.end_tx.send_if_modified(|e| {
            let changed = *e != end;
            *e = end;
            changed
        });
        publish_hw(&self.hw_tx, hw);
    }

    /// The actor loop. See the module docs.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut replies: Vec<(oneshot::Sender<Result<AppendInfo>>, Result<AppendInfo>)> =
            Vec::with_capacity(MAX_GROUP);
        loop {
            let Some(first) = rx.blocking_recv() else {
                if let Err(e) = self.log.close() {
                    tracing::error!(dir = %self.dir.display(), error = %e, "closing partition log");
                }
                return;
            };
            let mut next = Some(first);
            let mut handled = 0;
            let mut close: Option<oneshot::Sender<Result<()>>> = None;
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append {
                        mut batches,
                        epoch,
                        reply,
                    } => {
                        let r = if self.leader_epoch == Some(epoch) {
                            stamp_epoch(&mut batches, epoch);
                            self.log.append(&mut batches).map_err(BrokerError::from)
                        } else {
                            Err(BrokerError::NotLeader {
                                node: 0,
                                topic: String::new(),
                                partition: 0,
                                leader: None,
                            })
                        };
                        super::note_space(&self.disk_full, &self.dir, &r);
                        replies.push((reply, r));
                    }
                    Command::AppendReplicated {
                        batches,
                        epoch,
                        reply,
                    } => {
                        // The leader of `epoch` can only hold batches of `epoch` or older: a
                        // newer one means the log that answered had changed hands (a deposed
                        // leader copying its successor) and the batches are not that leader's.
                        let newer = epochs_in(&batches)
                            .into_iter()
                            .map(|(e, _)| e)
                            .find(|&e| e > epoch);
                        let r = match (self.follower_epoch == Some(epoch), newer) {
                            (true, None) => self.append_replicated(&batches),
                            (true, Some(newer)) => Err(BrokerError::FencedLeaderEpoch {
                                topic: String::new(),
                                partition: 0,
                                got: epoch,
                                current: newer,
                            }),
                            (false, _) => Err(BrokerError::FencedLeaderEpoch {
                                topic: String::new(),
                                partition: 0,
                                got: epoch,
                                current: self.follower_epoch.unwrap_or(-1),
                            }),
                        };
                        super::note_space(&self.disk_full, &self.dir, &r);
                        replies.push((reply, r));
                    }
                    Command::BecomeLeader { epoch, reply } => {
                        let end = self.log.end_offset();
                        let r = {
                            let mut epochs = self.epochs();
                            epochs.assign(epoch, end).map(|()| {
                                // Taking the same epoch again (a repeated reconcile) keeps
                                // the start recorded the first time.
                                match epochs.latest() {
                                    Some((e, start)) if e == epoch => start,
                                    _ => end,
                                }
                            })
                        };
                        if r.is_ok() {
                            self.leader_epoch = Some(epoch);
                            self.follower_epoch = None;
                        }
                        let _ = reply.send(r);
                    }
                    Command::StopLeading { epoch, reply } => {
                        if self.leader_epoch == Some(epoch) {
                            self.leader_epoch = None;
                        }
                        let _ = reply.send(Ok(()));
                    }
                    Command::BecomeFollower { epoch, reply } => {
                        self.leader_epoch = None;
                        self.follower_epoch = epoch;
                        let _ = reply.send(Ok(()));
                    }
                    Command::Truncate {
                        offset,
                        keep,
                        follower_of,
                        reply,
                    } => {
                        let r = match self.stale_follower_cut(follower_of) {
                            Some(stale) => Err(stale),
                            None => self.cut(offset, keep),
                        };
                        let _ = reply.send(r);
                    }
                    Command::TruncateFully {
                        start,
                        follower_of,
                        reply,
                    } => {
                        let r = match self.stale_follower_cut(follower_of) {
                            Some(stale) => Err(stale),
                            None => {
                                self.leader_epoch = None; // as for a cut (see `cut`)
                                self.log
                                    .truncate_fully(start)
                                    .map_err(BrokerError::from)
                                    .and_then(|()| self.epochs().clear())
                            }
                        };
                        let _ = reply.send(r);
                    }
                    Command::FindDamage { from, reply } => {
                        let r = match self.log.find_damage_from(from) {
                            Ok(None) => Ok(None),
                            Ok(Some((at, e))) => {
                                tracing::error!(dir = %self.dir.display(), error = %e, at, "scrub found damage");
                                Ok(Some(at))
                            }
                            Err(e) => Err(BrokerError::from(e)),
                        };
                        let _ = reply.send(r);
                    }
                    Command::ProducerTurn { producer_id, reply } => {
                        let turn = self
                            .log
                            .producer_states()
                            .get(producer_id)
                            .map(|p| (p.epoch, p.next_seq()));
                        let _ = reply.send(Ok(turn));
                    }
                    Command::Maintain { retention } => {
                        if let Err(e) = self.log.flush_if_due() {
                            tracing::error!(dir = %self.dir.display(), error = %e, "periodic flush failed");
                        }
                        if retention && let Err(e) = self.log.apply_retention() {
                            tracing::error!(dir = %self.dir.display(), error = %e, "retention failed");
                        }
                        let expired = self.log.expire_producers();
                        if expired > 0 {
                            tracing::debug!(dir = %self.dir.display(), expired, "idle producer ids expired");
                        }
                    }
                    Command::Reconfigure { config, reply } => {
                        let _ = reply.send(self.log.set_config(config).map_err(BrokerError::from));
                    }
                    Command::Close { reply } => {
                        close = Some(reply);
                        break;
                    }
                }
                handled += 1;
                if handled < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            // Group commit: one fsync makes every append of this round durable.
            let appended = replies.iter().filter(|(_, r)| r.is_ok()).count();
            let durable_before = self.log.durable_offset();
            let flush_started = Instant::now();
            let flushed = if appended > 0 {
                self.log.flush_if_due()
            } else {
                Ok(())
            };
            if appended > 0 {
                metrics::histogram!("cascade_append_group_size").record(appended as f64);
                if self.log.durable_offset() > durable_before {
                    metrics::histogram!("cascade_log_fsync_duration_seconds")
                        .record(flush_started.elapsed().as_secs_f64());
                }
            }
            if let Err(e) = flushed {
                tracing::error!(dir = %self.dir.display(), error = %e, "fsync failed: partition is now read-only");
                for (_, r) in replies.iter_mut() {
                    if r.is_ok() {
                        *r = Err(storage_failure(&self.log, &e));
                    }
                }
            }
            self.publish();
            for (reply, r) in replies.drain(..) {
                let _ = reply.send(r);
            }
            if let Some(reply) = close {
                rx.close();
                // Answer anything still queued, then close.
                while let Ok(cmd) = rx.try_recv() {
                    match cmd {
                        Command::Append { reply, .. } | Command::AppendReplicated { reply, .. } => {
                            let _ = reply.send(Err(BrokerError::ShuttingDown));
                        }
                        _ => {}
                    }
                }
                let _ = reply.send(self.log.close().map_err(BrokerError::from));
                return;
            }
        }
    }
}
