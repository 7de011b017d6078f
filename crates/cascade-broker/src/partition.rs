//! [`Partition`]: one replica of a partition — its log behind a single-writer actor thread,
//! its role (leader, follower) and, on the leader, the replication state that moves the high
//! watermark.
//!
//! The actor thread (`partition/actor.rs`) owns the [`Log`] and the [`EpochCache`] and is the
//! only code that writes them. Producers send [`Command::Append`] through a bounded channel (backpressure) and wait
//! on a oneshot. The actor takes the first command, drains whatever else is already queued (up
//! to a bound), appends them all with one `pwrite` each, then makes them durable with **one**
//! fsync (group commit) and only then answers them all. A dedicated thread, not an async task,
//! because every step is blocking file IO and the loop never waits on anything but its channel.
//!
//! Roles change through the same channel ([`Command::BecomeLeader`], `BecomeFollower`), so no
//! leader append can slip in after the replica stopped leading: an append carries the epoch it
//! was accepted under and the actor refuses it if that is no longer its epoch. The leader
//! stamps its epoch into every batch it appends. A cut of the log (truncation, a damage cut)
//! ends the leader role in the same step: no append is ever acknowledged against a cut log
//! until the role is given again.
//!
//! High watermark (what consumers may read): on the leader, the smallest *acknowledged end*
//! over the in-sync replicas — its own durable end (or end under `flush=never|interval`) and,
//! for each follower, the offset it last fetched from (a follower fetches from offset N only
//! once everything below N is durable on it). On a follower, the leader's high watermark capped
//! by its own end. It never moves backwards while the replica keeps its role.
//!
//! Readers never go through the actor: they use the shared [`LogReader`] and learn about new
//! data from watch channels.

use crate::epochs::EpochCache;
use crate::error::{BrokerError, Result};
use bytes::BytesMut;
use cascade_log::{AppendInfo, FlushPolicy, Log, LogConfig, LogError, LogReader};
use cascade_types::{FlushMode, TopicConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

mod actor;
mod sequencer;

use actor::{Actor, Command, acknowledged_end, publish_hw};
#[cfg(test)]
use actor::{epochs_in, stamp_epoch};
use sequencer::{ProducerBatch, Sequencer};

/// Commands queued per partition before producers wait.
const QUEUE: usize = 1024;

/// Translates a topic's settings into the storage engine's.
pub fn log_config(c: &TopicConfig) -> LogConfig {
    LogConfig {
        segment_bytes: c.segment_bytes,
        segment_age: Some(Duration::from_millis(c.segment_ms)),
        index_interval_bytes: c.index_interval_bytes,
        retention_age: u64::try_from(c.retention_ms)
            .ok()
            .map(Duration::from_millis),
        retention_bytes: u64::try_from(c.retention_bytes).ok(),
        producer_id_expiration: Some(Duration::from_millis(c.producer_id_expiration_ms)),
        flush: match c.flush {
            FlushMode::Always => FlushPolicy::Always,
            FlushMode::Interval => FlushPolicy::Interval(Duration::from_millis(c.flush_ms)),
            FlushMode::Never => FlushPolicy::Never,
        },
        ..LogConfig::default()
    }
}

/// A replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not serving (just opened, or the partition has no leader).
    Idle,
    /// Leading at this epoch.
    Leader {
        /// The leader epoch.
        epoch: i32,
    },
    /// Following `leader` at this epoch.
    Follower {
        /// The leader's node id (0: none).
        leader: u32,
        /// The leader epoch.
        epoch: i32,
    },
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
pub struct FollowerProgress {
    /// Everything below this is durable on the follower.
    pub end: u64,
    /// When it last fetched.
    pub last_fetch: Instant,
    /// The leader's end offset when it last fetched.
    pub leader_end_at_last_fetch: u64,
    /// Last time it had everything the leader had (Kafka's lastCaughtUpTime).
    pub last_caught_up: Instant,
}

/// Replication state shared by the produce path, the fetch handlers and the actor.
#[derive(Debug)]
pub struct ReplState {
    /// This node.
    pub node_id: u32,
    /// Role.
    pub role: Role,
    /// Replicas of the partition (from the metadata).
    pub replicas: Vec<u32>,
    /// In-sync replicas (from the metadata).
    pub isr: Vec<u32>,
    /// Follower progress (leader only).
    pub followers: HashMap<u32, FollowerProgress>,
    /// The leader's high watermark as last heard (follower only).
    pub leader_hw: u64,
    /// This replica's acknowledged end: durable end under `flush=always`, else the end.
    pub local_end: u64,
    /// An ISR change is in flight (leader only), so it is not proposed twice.
    pub isr_change_pending: bool,
    /// A follower being added to the ISR: it counts for the high watermark from the moment
    /// the leader proposes it, not from when the metadata says so, so nothing is acknowledged
    /// without it that the metadata could then let it lead without ("maximal ISR", as
    /// Kafka's KIP-497). Cleared once the metadata's ISR has it, or the proposal failed.
    pub pending_isr_add: Option<u32>,
    /// Where the current leader epoch starts: this replica's log end when it took over
    /// (leader only). Everything a previous leader may have exposed to consumers lies below
    /// it, while the high watermark a new leader inherits can lag; so a follower rejoins the
    /// in-sync set only once it has reached both (Kafka's `leaderEpochStartOffset` check).
    pub epoch_start: u64,
    /// The topic's `min.insync.replicas` (see [`ReplState::compute_hw`]).
    pub min_insync: u32,
    /// Eligible leader replicas (from the metadata, with the in-sync set): while there are
    /// any and the in-sync set is below the minimum, the high watermark stands still (see
    /// [`ReplState::compute_hw`]).
    pub elr: Vec<u32>,
    /// The leader epoch this replica stepped down from on its own
    /// ([`Partition::stop_leading_appends`]: damage found, storage failed) before the
    /// metadata's new role reached it. `role` still says it leads that epoch, but its log may
    /// be cut at any moment: it answers no follower as that epoch's leader (a follower told
    /// where the epoch ends in a cut log would cut acknowledged events too).
    pub stepped_down: Option<i32>,
}

impl ReplState {
    /// The high watermark these facts allow.
    pub fn compute_hw(&self) -> u64 {
        match self.role {
            // While the partition has eligible leader replicas (KIP-966: they left the
            // in-sync set as it fell below `min.insync.replicas`), nothing more is committed:
            // they may lead only because they hold everything consumers may have seen. 0
            // leaves the published value where it is (it never goes down). Judged by the
            // eligible set rather than the in-sync set's size: both come from the same
            // metadata, while this replica's `min_insync` may lag a raised one, and a follower
            // being added is not in sync yet (if its addition fails, an eligible replica may
            // still have to lead). With none (nobody left that way, or an operator's unclean
            // election gave them up) nobody relies on it, and the in-sync replicas serve what
            // they hold.
            Role::Leader { .. } if !self.elr.is_empty() => 0,
            Role::Leader { .. } => self
                .isr
                .iter()
                .chain(self.pending_isr_add.iter())
                .filter(|&&r| r != self.node_id)
                .map(|r| self.followers.get(r).map(|f| f.end).unwrap_or(0))
                .fold(self.local_end, u64::min),
            Role::Follower { .. } => self.leader_hw.min(self.local_end),
            Role::Idle => 0,
        }
    }

    /// Whether a follower whose log ends at `end` may rejoin the in-sync set, given the
    /// published high watermark `hw`. It must hold everything consumers may have seen: the
    /// high watermark, and everything this leader had when its epoch began (a new leader's
    /// high watermark can lag the one its predecessor published; a replica admitted on the
    /// lagging one could later lead without records consumers already read).
    pub fn may_rejoin_isr(&self, follower: u32, end: u64, hw: u64) -> bool {
        matches!(self.role, Role::Leader { .. })
            && self.replicas.contains(&follower)
            && !self.isr.contains(&follower)
            && !self.isr_change_pending
            && end >= hw.max(self.compute_hw()).max(self.epoch_start)
    }
}

/// A running partition replica: the handle producers, fetchers, replication and admin use.
#[derive(Debug)]
pub struct Partition {
    /// The file system the log and the files beside it live on.
    fs: Arc<dyn cascade_log::fs::FileSystem>,
    /// Topic name.
    pub topic: Arc<str>,
    /// Topic id.
    pub topic_id: Arc<str>,
    /// Partition number.
    pub index: u32,
    dir: PathBuf,
    tx: mpsc::Sender<Command>,
    reader: LogReader,
    hw_tx: watch::Sender<u64>,
    hw: watch::Receiver<u64>,
    /// The acknowledged end (see [`ReplState::local_end`]), for followers' long polls.
    end: watch::Receiver<u64>,
    role_tx: watch::Sender<Role>,
    repl: Arc<Mutex<ReplState>>,
    epochs: Arc<Mutex<EpochCache>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    damaged: Mutex<Option<u64>>,
    /// Why the last append failed for want of space (ENOSPC), until an append succeeds: the
    /// broker reports the replica as `disk-full`, so the controller moves its leadership to
    /// a replica that can still write (see [`Partition::disk_full`]).
    /// Shared with the actor, which keeps it up to date from every append's outcome (an
    /// `acks=none` append too, whose result nobody waits for).
    disk_full: Arc<Mutex<Option<String>>>,
    /// Set once this replica's storage failed and the broker is retiring it (see
    /// `Broker::retire_failed_replica`), so that happens once.
    retiring: std::sync::atomic::AtomicBool,
    /// Held shared by the follower fetcher for each fetch round trip, and exclusively while a
    /// damaged log is taken out of the in-sync set and cut: a fetch from the uncut end would
    /// tell the leader this replica holds everything and get it readmitted to the in-sync set
    /// just before its log shrinks (then a preferred-leader election could make it lead, and
    /// the others truncate to it).
    fetch_gate: tokio::sync::RwLock<()>,
    /// The high watermark last checkpointed.
    hw_saved: std::sync::atomic::AtomicU64,
    /// Puts each idempotent producer's appends into the actor's queue in sequence order.
    sequencer: Sequencer,
}

impl Partition {
    /// Opens (recovering if needed) the log in `dir` and starts its actor thread. Blocking.
    /// The replica starts [`Role::Idle`]; a single-node or fresh partition becomes leader
    /// through [`Partition::become_leader`].
    ///
    /// A `repairable` replica (the topic has other replicas to copy from) whose sealed data
    /// turns out damaged is opened cut at the damage instead of refusing to open, and remembers
    /// it ([`Partition::damaged_at_open`]) so it is taken out of the in-sync set before it could
    /// lead; replication then fetches the rest again. A lone replica refuses to open instead:
    /// cutting it would lose acknowledged data for good.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        fs: Arc<dyn cascade_log::fs::FileSystem>,
        topic: Arc<str>,
        topic_id: Arc<str>,
        index: u32,
        node_id: u32,
        dir: &Path,
        config: &TopicConfig,
        repairable: bool,
    ) -> Result<Self> {
        let log_cfg = LogConfig {
            // Another copy can repair it: never guess that ambiguous damage is a torn write.
            ambiguous_tail_is_damage: repairable,
            ..log_config(config)
        };
        let mut damaged_at_open = None;
        let clock: Arc<dyn cascade_log::Clock> = Arc::new(cascade_log::SystemClock);
        let marker = crate::epochs::sibling(dir, "damaged");
        let opened = Log::open_with(fs.clone(), clock.clone(), dir, log_cfg.clone());
        // A repairable replica is cut here, once; a lone one is refused, and counted by the
        // caller the first time (it is refused again at every retry).
        if repairable && matches!(opened, Err(LogError::Corrupt { .. })) {
            metrics::counter!("cascade_log_damage_total", "found" => "open").increment(1);
        }
        let log = match opened {
            Err(e @ LogError::Corrupt { .. }) if repairable => {
                tracing::error!(dir = %dir.display(), error = %e, "damaged replica: cutting it at the damage to fetch the rest from the leader");
                // The flag is on disk before the cut: a crash right after the cut must not
                // leave a short log that looks clean and could lead (it stays flagged until
                // the replica has left the in-sync set).
                write_damage_marker(fs.as_ref(), &marker, &e.to_string())?;
                let log = Log::open_with(
                    fs.clone(),
                    clock,
                    dir,
                    LogConfig {
                        on_corruption: cascade_log::CorruptionPolicy::Truncate,
                        ..log_cfg
                    },
                )?;
                damaged_at_open = Some(log.end_offset());
                log
            }
            r => r?,
        };
        if damaged_at_open.is_none() && fs.exists(&marker) {
            tracing::error!(dir = %dir.display(), "replica still flagged damaged from before the restart: it leaves the in-sync set before it may lead");
            damaged_at_open = Some(log.end_offset());
        }
        let reader = log.reader();
        let epochs = Arc::new(Mutex::new(EpochCache::load_checked(
            fs.clone(),
            dir,
            &reader,
        )?));
        let local_end = acknowledged_end(&log);
        // The last high watermark this replica knew: everything below it was on every in-sync
        // replica, so it may be served again at once after a restart (capped by what is here).
        let hw_file = crate::epochs::sibling(dir, "hw");
        // A damaged checkpoint is ignored (0): the replica then waits for its followers
        // before serving the newest events, which costs a moment and loses nothing.
        let checkpoint = match crate::state_file::read(fs.as_ref(), &hw_file)
            .map_err(|e| e.to_string())
            .and_then(|c| c.body_if(crate::state_file::is_number))
        {
            Ok(b) => b
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0),
            // Written without an fsync: a power cut can leave it empty, which is no damage.
            Err(_) if crate::state_file::read_whole(fs.as_ref(), &hw_file)
                .is_ok_and(|b| b.is_some_and(|b| b.is_empty())) => 0,
            Err(why) => {
                tracing::error!(file = %hw_file.display(), %why, "ignoring a damaged high watermark checkpoint");
                metrics::counter!("cascade_log_damage_total", "found" => "hw").increment(1);
                0
            }
        }
        .min(local_end);
        let (hw_tx, hw) = watch::channel(checkpoint);
        let (end_tx, end) = watch::channel(local_end);
        let (role_tx, _) = watch::channel(Role::Idle);
        let repl = Arc::new(Mutex::new(ReplState {
            node_id,
            role: Role::Idle,
            replicas: vec![node_id],
            isr: vec![node_id],
            followers: HashMap::new(),
            leader_hw: 0,
            local_end,
            isr_change_pending: false,
            pending_isr_add: None,
            epoch_start: 0,
            min_insync: config.min_insync_replicas,
            elr: Vec::new(),
            stepped_down: None,
        }));
        let (tx, rx) = mpsc::channel(QUEUE);
        let name = format!("p-{topic}-{index}");
        let disk_full = Arc::new(Mutex::new(None));
        let actor = Actor {
            log,
            disk_full: disk_full.clone(),
            dir: dir.to_path_buf(),
            epochs: epochs.clone(),
            leader_epoch: None,
            follower_epoch: None,
            repl: repl.clone(),
            hw_tx: hw_tx.clone(),
            end_tx,
        };
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || actor.run(rx))
            .map_err(|e| BrokerError::Metadata(format!("cannot start partition thread: {e}")))?;
        Ok(Self {
            fs,
            topic,
            topic_id,
            index,
            dir: dir.to_path_buf(),
            tx,
            reader,
            hw_tx,
            hw,
            end,
            role_tx,
            repl,
            epochs,
            thread: Mutex::new(Some(thread)),
            damaged: Mutex::new(damaged_at_open),
            disk_full,
            retiring: Default::default(),
            fetch_gate: tokio::sync::RwLock::new(()),
            hw_saved: std::sync::atomic::AtomicU64::new(checkpoint),
            sequencer: Sequencer::default(),
        })
    }

    /// Where this replica's log was cut because of damage found when opening it or by a
    /// scrub, until the in-sync set no longer counts on it ([`Partition::clear_damage`]).
    pub fn damaged_at_open(&self) -> Option<u64> {
        *self.damaged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See `fetch_gate`: shared for one follower fetch round trip.
    pub(crate) async fn fetch_permit(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.fetch_gate.read().await
    }

    /// See `fetch_gate`: no follower fetch is in flight or starts while this is held.
    pub(crate) async fn hold_fetches(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.fetch_gate.write().await
    }

    /// The damage has been dealt with (this replica left the in-sync set).
    pub fn clear_damage(&self) {
        *self.damaged.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let marker = crate::epochs::sibling(&self.dir, "damaged");
        match self.fs.remove_file(&marker) {
            Ok(()) => {
                if let Some(parent) = marker.parent()
                    && let Err(e) = self.fs.sync_dir(parent)
                {
                    tracing::warn!(path = %marker.display(), error = %e, "damage flag removal not synced");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %marker.display(), error = %e, "cannot remove the damage flag: the replica will leave the in-sync set again after a restart");
            }
        }
    }

    /// Checks every batch of the log (CRC, framing, offsets); returns where the undamaged
    /// prefix ends if something is damaged. Reads the whole log: run it in the background.
    /// The sealed segments, nearly all of a large log, are read on a blocking thread beside
    /// the actor, so appends are not held up; only the rest (the active segment, bounded by
    /// the segment size) goes through the actor, which owns it.
    pub async fn scrub(&self) -> Result<Option<u64>> {
        let reader = self.reader.clone();
        let (found, from) = tokio::task::spawn_blocking(move || reader.find_damage_in_sealed())
            .await
            .map_err(|e| BrokerError::Metadata(format!("scrub task failed: {e}")))??;
        if let Some((at, e)) = found {
            tracing::error!(dir = %self.dir.display(), error = %e, at, "scrub found damage");
            return Ok(Some(at));
        }
        if from == u64::MAX {
            return Ok(None);
        }
        self.call(|reply| Command::FindDamage { from, reply }).await
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A read handle on the log.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Offsets below this are readable by consumers.
    pub fn high_watermark(&self) -> u64 {
        *self.hw.borrow()
    }

    /// A receiver that changes whenever the high watermark moves after this call: the current
    /// value counts as seen. Subscribe before reading, then wait on `changed()`, and no move
    /// between the read and the wait is missed. (A clone of a long-lived receiver would not
    /// do: it inherits that receiver's last-seen version, so its `changed()` could return at
    /// once forever and turn a long poll into a busy loop.)
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.hw_tx.subscribe()
    }

    /// A receiver of the acknowledged end offset.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.clone()
    }

    /// A receiver of role changes.
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.role_tx.subscribe()
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.lock_repl().role
    }

    /// Locks the replication state.
    pub fn lock_repl(&self) -> std::sync::MutexGuard<'_, ReplState> {
        self.repl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leader epoch cache.
    pub fn epochs(&self) -> std::sync::MutexGuard<'_, EpochCache> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves the high watermark beside the log (no fsync: a lost or older value only makes a
    /// restarted replica wait for its followers before serving the newest events).
    pub fn checkpoint_hw(&self) {
        let hw = self.high_watermark();
        if self.hw_saved.swap(hw, std::sync::atomic::Ordering::Relaxed) == hw {
            return;
        }
        let path = crate::epochs::sibling(&self.dir, "hw");
        // No fsync: a checkpoint lost in a power cut only delays serving (see `open`).
        let body = crate::state_file::encode(hw.to_string().as_bytes());
        let _ = crate::state_file::write_hint(self.fs.as_ref(), &path, &body);
    }

    /// Recomputes the high watermark from the replication state and publishes it if it grew.
    pub fn update_hw(&self) {
        let hw = self.lock_repl().compute_hw();
        publish_hw(&self.hw_tx, hw);
    }

    /// The leader epoch if this replica leads, else `NotLeader`.
    pub fn leader_epoch(&self) -> Result<i32> {
        match self.role() {
            Role::Leader { epoch } => Ok(epoch),
            Role::Follower { .. } => Err(self.not_leader()),
            Role::Idle => Err(BrokerError::LeaderNotAvailable {
                topic: self.topic.to_string(),
                partition: self.index,
            }),
        }
    }

    fn not_leader(&self) -> BrokerError {
        BrokerError::NotLeader {
            node: self.lock_repl().node_id,
            topic: self.topic.to_string(),
            partition: self.index,
            leader: None,
        }
    }

    /// The topic's `min.insync.replicas`.
    pub fn min_insync(&self) -> u32 {
        self.lock_repl().min_insync
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Appends batches as leader (offsets assigned by the log) and waits for the local result,
    /// which comes after the fsync under `flush=always` (`acks=leader`). An idempotent
    /// producer's batches are queued in sequence order (see `partition/sequencer.rs`); an
    /// exact retry of one of its last five batches is answered with the original offsets
    /// (`duplicate`) and not written again.
    pub async fn append_local(&self, batches: BytesMut) -> Result<AppendInfo> {
        let epoch = self.leader_epoch()?;
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Append {
            batches,
            epoch,
            reply,
        };
        match producer_of(cmd.batches()) {
            None => self.enqueue(cmd).await?,
            Some(b) => {
                if !self.sequencer.knows(b.producer_id).await {
                    let (epoch, next) = self
                        .call(|reply| Command::ProducerTurn {
                            producer_id: b.producer_id,
                            reply,
                        })
                        .await?
                        .unwrap_or((b.epoch, 0));
                    self.sequencer.learn(b.producer_id, epoch, next).await;
                }
                let turn = self.sequencer.turn(&b).await;
                let queued = self.enqueue(cmd).await;
                drop(turn);
                self.sequencer.queued();
                queued?
            }
        }
        let r = rx.await.map_err(|_| BrokerError::ShuttingDown)?;
        match r {
            Err(BrokerError::NotLeader { .. }) => Err(self.not_leader()),
            r => r,
        }
    }

    /// Clears [`Partition::disk_full`] once a probe write succeeded (see the follower's
    /// fetcher).
    pub fn clear_disk_full(&self) {
        if self
            .disk_full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
        {
            tracing::warn!(topic = %self.topic, partition = self.index, "replica's disk has space again");
        }
    }

    /// Why this replica cannot write for want of space, if its last append that wrote or
    /// failed failed so. Only a write clears it (an append, or the follower's probe write),
    /// never time: a report that lapsed while the disk was still full let the controller
    /// hand leadership back to the full replica (often the preferred one), which failed
    /// again, over and over.
    pub fn disk_full(&self) -> Option<String> {
        self.disk_full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn enqueue(&self, cmd: Command) -> Result<()> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| BrokerError::ShuttingDown)
    }

    /// Appends batches and waits until every in-sync replica has them (`acks=all`): refused
    /// up front when the in-sync set is smaller than `min.insync.replicas`, and reported as
    /// not acknowledged if it shrank below it while waiting or this replica stopped leading.
    pub async fn append(&self, batches: BytesMut) -> Result<AppendInfo> {
        self.check_min_isr(false)?;
        let info = self.append_local(batches).await?;
        self.wait_replicated(info.last_offset + 1).await?;
        Ok(info)
    }

    fn check_min_isr(&self, after_append: bool) -> Result<()> {
        let min = self.min_insync();
        let isr = self.lock_repl().isr.len();
        if (isr as u32) < min {
            return Err(BrokerError::NotEnoughReplicas {
                topic: self.topic.to_string(),
                partition: self.index,
                isr,
                min,
                after_append,
            });
        }
        Ok(())
    }

    /// Waits until the high watermark reaches `offset` while this replica leads.
    async fn wait_replicated(&self, offset: u64) -> Result<()> {
        let epoch = self.leader_epoch()?;
        let mut hw = self.hw.clone();
        let mut role = self.role_tx.subscribe();
        loop {
            if *hw.borrow_and_update() >= offset {
                return self.check_min_isr(true);
            }
            if *role.borrow_and_update() != (Role::Leader { epoch }) {
                return Err(self.not_leader());
            }
            tokio::select! {
                r = hw.changed() => r.map_err(|_| BrokerError::ShuttingDown)?,
                r = role.changed() => r.map_err(|_| BrokerError::ShuttingDown)?,
            }
        }
    }

    /// Queues an append without waiting for its result (`acks=none`).
    pub async fn append_detached(&self, batches: BytesMut) -> Result<()> {
        let epoch = self.leader_epoch()?;
        let (reply, _) = oneshot::channel();
        self.tx
            .send(Command::Append {
                batches,
                epoch,
                reply,
            })
            .await
            .map_err(|_| BrokerError::ShuttingDown)
    }

    /// Appends a leader's batches as a follower of `epoch` (refused if this replica no longer
    /// follows that epoch).
    pub async fn append_replicated(&self, batches: Vec<u8>, epoch: i32) -> Result<AppendInfo> {
        let r = self
            .call(|reply| Command::AppendReplicated {
                batches,
                epoch,
                reply,
            })
            .await;
        match r {
            // The actor does not know the partition's name: fill it in.
            Err(BrokerError::FencedLeaderEpoch { got, current, .. }) => {
                Err(BrokerError::FencedLeaderEpoch {
                    topic: self.topic.to_string(),
                    partition: self.index,
                    got,
                    current,
                })
            }
            r => r,
        }
    }

    /// Cuts the log at `offset`; returns the new end. `follower_of`: a follower's cut decided
    /// against the leader of that epoch, refused (`FencedLeaderEpoch`) if the replica no
    /// longer follows it by the time the cut runs; `None` for a cut before any role.
    pub async fn truncate(&self, offset: u64, follower_of: Option<i32>) -> Result<u64> {
        self.call(|reply| Command::Truncate {
            offset,
            keep: false,
            follower_of,
            reply,
        })
        .await
    }

    /// Like [`Partition::truncate`], for a cut at damage: what it drops is kept under the
    /// log's `damaged/` directory first (it may be the only copy of acknowledged events).
    /// Like every cut, it ends the leader role in the same step of the actor, so no produce
    /// queued behind it is acknowledged against the cut log, whenever the role change that
    /// the metadata decided reaches this replica.
    pub async fn cut_damaged(&self, offset: u64) -> Result<u64> {
        self.call(|reply| Command::Truncate {
            offset,
            keep: true,
            follower_of: None,
            reply,
        })
        .await
    }

    /// Empties the log, restarting it at `start`; `follower_of` as for
    /// [`Partition::truncate`].
    pub async fn truncate_fully(&self, start: u64, follower_of: Option<i32>) -> Result<()> {
        self.call(|reply| Command::TruncateFully {
            start,
            follower_of,
            reply,
        })
        .await
    }

    /// Takes the leader role at `epoch` with the given replicas, in-sync set and eligible
    /// leader replicas.
    pub async fn become_leader(
        &self,
        epoch: i32,
        replicas: Vec<u32>,
        isr: Vec<u32>,
        elr: Vec<u32>,
    ) -> Result<()> {
        let epoch_start = self
            .call(|reply| Command::BecomeLeader { epoch, reply })
            .await?;
        // Expected sequences from an earlier turn as leader are stale: learn them from the log.
        self.sequencer.reset().await;
        {
            let mut r = self.lock_repl();
            r.epoch_start = epoch_start;
            let now = Instant::now();
            // Followers get a grace period: they are caught up until proven otherwise.
            r.followers = replicas
                .iter()
                .filter(|&&id| id != r.node_id)
                .map(|&id| {
                    (
                        id,
                        FollowerProgress {
                            end: 0,
                            last_fetch: now,
                            leader_end_at_last_fetch: 0,
                            last_caught_up: now,
                        },
                    )
                })
                .collect();
            r.role = Role::Leader { epoch };
            r.replicas = replicas;
            r.isr = isr;
            r.elr = elr;
            r.isr_change_pending = false;
            r.pending_isr_add = None;
            r.stepped_down = None;
        }
        self.role_tx.send_replace(Role::Leader { epoch });
        self.update_hw();
        Ok(())
    }

    /// Stops accepting appends as leader at once, before the metadata's new role reaches this
    /// replica through the reconciler (which then gives it its real role: the role seen by
    /// [`Partition::role`] is left for it to change, so it still notices the change). Goes
    /// through the actor's queue, so every command queued after it — a truncation — finds the
    /// leader fenced: a damaged leader that handed over leadership steps down *before* its
    /// log is cut, and no produce is acknowledged against the cut log.
    pub async fn stop_leading_appends(&self) -> Result<()> {
        let Role::Leader { epoch } = self.role() else {
            return Ok(());
        };
        // Followers stop being served first (see `ReplState::stepped_down`), before any cut
        // can be queued behind the actor's fence.
        {
            let mut r = self.lock_repl();
            if r.role == (Role::Leader { epoch }) {
                r.stepped_down = Some(epoch);
            }
        }
        // Only the leader epoch is fenced: if the reconciler's `BecomeFollower` got to the
        // actor first, this must not undo the follower epoch it set.
        self.call(|reply| Command::StopLeading { epoch, reply })
            .await
    }

    /// True if this replica leads `epoch` and has not stepped down from it on its own (see
    /// [`ReplState::stepped_down`]): what a follower of `epoch` may be answered by.
    pub fn serves_followers_of(&self, epoch: i32) -> bool {
        let r = self.lock_repl();
        r.role == (Role::Leader { epoch }) && r.stepped_down != Some(epoch)
    }

    /// Takes the follower role (appends as leader are refused from now on).
    pub async fn become_follower(
        &self,
        leader: u32,
        epoch: i32,
        replicas: Vec<u32>,
        isr: Vec<u32>,
        elr: Vec<u32>,
    ) -> Result<()> {
        let followed = (leader != 0).then_some(epoch);
        self.call(|reply| Command::BecomeFollower {
            epoch: followed,
            reply,
        })
        .await?;
        self.sequencer.reset().await;
        let role = if leader == 0 {
            Role::Idle
        } else {
            Role::Follower { leader, epoch }
        };
        {
            let mut r = self.lock_repl();
            r.role = role;
            r.replicas = replicas;
            r.isr = isr;
            r.elr = elr;
            r.followers.clear();
            r.pending_isr_add = None;
            r.stepped_down = None;
        }
        self.role_tx.send_replace(role);
        Ok(())
    }

    /// Takes a new in-sync set, replica list or eligible leader replicas from the metadata
    /// without a role change (together: the high watermark depends on all three).
    pub fn set_isr(&self, replicas: Vec<u32>, isr: Vec<u32>, elr: Vec<u32>) {
        {
            let mut r = self.lock_repl();
            if r.pending_isr_add.is_some_and(|f| isr.contains(&f)) {
                r.pending_isr_add = None;
            }
            // An expansion still in flight keeps its flag (and its place in the high-watermark
            // computation) until the metadata has it or the proposal fails.
            if r.pending_isr_add.is_none() {
                r.isr_change_pending = false;
            }
            r.replicas = replicas;
            r.isr = isr;
            r.elr = elr;
        }
        self.update_hw();
    }

    /// Asks for housekeeping; never waits (skipped if the queue is full).
    pub(crate) fn maintain(&self, retention: bool) {
        let _ = self.tx.try_send(Command::Maintain { retention });
    }

    /// Applies new settings.
    pub async fn reconfigure(&self, config: &TopicConfig) -> Result<()> {
        self.lock_repl().min_insync = config.min_insync_replicas;
        // A lower minimum may let a standing high watermark move again.
        self.update_hw();
        let config = log_config(config);
        self.call(|reply| Command::Reconfigure { config, reply })
            .await
    }

    /// Claims the retirement of this replica after a storage failure: true the first time.
    pub(crate) fn begin_retiring(&self) -> bool {
        !self
            .retiring
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Flushes and closes the log (writing its clean-shutdown marker) and stops the actor.
    pub async fn close(&self) -> Result<()> {
        self.checkpoint_hw();
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close { reply }).await.is_err() {
            return Ok(()); // already closed
        }
        let r = rx.await.map_err(|_| BrokerError::ShuttingDown)?;
        self.role_tx.send_replace(Role::Idle);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        r
    }
}

/// Writes the damage flag beside a partition directory durably (file and directory fsynced).
fn write_damage_marker(fs: &dyn cascade_log::fs::FileSystem, path: &Path, why: &str) -> Result<()> {
    let io = |e: std::io::Error| {
        BrokerError::Storage(LogError::Io {
            op: "write damage flag",
            path: path.to_path_buf(),
            source: e,
        })
    };
    let f = fs.open(path, true).map_err(io)?;
    f.set_len(0).map_err(io)?;
    f.write_all_at(why.as_bytes(), 0).map_err(io)?;
    f.sync_data().map_err(io)?;
    if let Some(parent) = path.parent() {
        fs.sync_dir(parent).map_err(io)?;
    }
    Ok(())
}
/// The idempotent producer of an append, if its first batch has one: its id and epoch, the
/// first batch's first sequence and the last batch's last (an append is one producer's run).
fn producer_of(batches: &[u8]) -> Option<ProducerBatch> {
    let first = cascade_record::BatchHeader::parse(batches).ok()?;
    if first.producer_id < 0 || first.base_sequence < 0 {
        return None;
    }
    let mut last = first;
    let mut at = first.total_len();
    while at < batches.len() {
        last = cascade_record::BatchHeader::parse(&batches[at..]).ok()?;
        at += last.total_len();
    }
    let last_seq = (i64::from(last.base_sequence) + i64::from(last.record_count) - 1)
        .rem_euclid(1 << 31) as i32;
    Some(ProducerBatch {
        producer_id: first.producer_id,
        epoch: first.producer_epoch,
        first_seq: first.base_sequence,
        last_seq,
    })
}
/// Keeps a replica's disk-full report up to date from an append's outcome (see
/// [`Partition::disk_full`]): set by a refusal for want of space, cleared by an append that
/// wrote (space is back). A duplicate wrote nothing, so it proves nothing either way.
pub(crate) fn note_space(slot: &Mutex<Option<String>>, dir: &Path, r: &Result<AppendInfo>) {
    let full = match r {
        Ok(info) if info.duplicate => return,
        Ok(_) => None,
        Err(BrokerError::Storage(e)) if e.is_out_of_space() => Some(e.to_string()),
        Err(_) => return,
    };
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    match (&*slot, &full) {
        (None, Some(reason)) => {
            tracing::error!(dir = %dir.display(), %reason, "replica's disk is full: writes fail until space returns");
        }
        (Some(_), None) => {
            tracing::warn!(dir = %dir.display(), "replica's disk has space again");
        }
        _ => {}
    }
    *slot = full;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the replica of `t`/0 in `dir` on node `node`, as a replicated topic's.
    fn open_replica(dir: &Path, node: u32) -> Partition {
        Partition::open(
            Arc::new(cascade_log::fs::StdFs),
            "t".into(),
            "id".into(),
            0,
            node,
            dir,
            &TopicConfig::default(),
            true,
        )
        .unwrap()
    }

    /// `err` is the refusal of an append read under epoch `got` by a replica at `current`.
    fn assert_fenced(err: &BrokerError, got: i32, current: i32) {
        assert!(
            matches!(
                err,
                BrokerError::FencedLeaderEpoch { got: g, current: c, .. } if *g == got && *c == current
            ),
            "{err}"
        );
    }

    /// A batch of one record holding `value`.
    fn one_record(value: &[u8]) -> Vec<u8> {
        let mut b = cascade_record::BatchBuilder::new();
        b.push(cascade_record::Record {
            timestamp: 1,
            key: None,
            value: Some(value),
            headers: &[],
        });
        b.finish()
    }

    /// A leader that stepped down on its own (damage found, storage failed) still has the
    /// leader role until the metadata's change reaches it, but its log may be cut: it must
    /// not answer followers as that epoch's leader meanwhile (one told where the epoch ends
    /// in the cut log would cut acknowledged events too; found in review).
    #[tokio::test]
    async fn a_leader_that_stepped_down_serves_no_follower_until_its_next_role() {
        let dir = tempfile::tempdir().unwrap();
        let part = open_replica(dir.path(), 1);
        part.become_leader(3, vec![1, 2], vec![1, 2], vec![])
            .await
            .unwrap();
        assert!(part.serves_followers_of(3));
        assert!(!part.serves_followers_of(2), "another epoch");
        part.stop_leading_appends().await.unwrap();
        assert_eq!(
            part.role(),
            Role::Leader { epoch: 3 },
            "the role is the reconciler's"
        );
        assert!(!part.serves_followers_of(3));
        part.become_leader(4, vec![1, 2], vec![1, 2], vec![])
            .await
            .unwrap();
        assert!(part.serves_followers_of(4), "a new role clears it");
    }

    /// The leader of epoch E holds no batch of a newer epoch: batches stamped newer come from
    /// a log that changed hands while the fetch waited (a deposed leader copying its
    /// successor), and are refused, writing nothing and recording no epoch.
    #[tokio::test]
    async fn a_follower_refuses_batches_newer_than_the_epoch_it_follows() {
        let dir = tempfile::tempdir().unwrap();
        let part = open_replica(dir.path(), 3);
        part.become_follower(1, 4, vec![1, 2, 3], vec![1, 2, 3], vec![])
            .await
            .unwrap();
        let mut batch = one_record(b"x");
        stamp_epoch(&mut batch, 5);
        let err = part.append_replicated(batch.clone(), 4).await.unwrap_err();
        assert_fenced(&err, 4, 5);
        assert_eq!(part.reader().end_offset(), 0, "nothing was written");
        assert!(part.epochs().entries().is_empty(), "no epoch was recorded");
        stamp_epoch(&mut batch, 4);
        part.append_replicated(batch, 4).await.unwrap();
        assert_eq!(part.epochs().entries(), &[(4, 0)]);
    }

    /// A fetched response that does not start at the log end (the log moved since the fetch
    /// was sent) is refused before its epochs are recorded: an entry left behind would name
    /// the batches already there as the new epoch's, and truncation, which trusts the cache,
    /// would keep them.
    #[tokio::test]
    async fn a_replicated_append_that_does_not_fit_records_no_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let part = open_replica(dir.path(), 3);
        part.become_follower(1, 3, vec![1, 2, 3], vec![1, 2, 3], vec![])
            .await
            .unwrap();
        let mut first = one_record(b"a");
        stamp_epoch(&mut first, 2);
        part.append_replicated(first, 3).await.unwrap();
        part.become_follower(1, 4, vec![1, 2, 3], vec![1, 2, 3], vec![])
            .await
            .unwrap();
        // The new leader's batch at offset 0 (it never had ours), sent to a log ending at 1.
        let mut other = one_record(b"b");
        stamp_epoch(&mut other, 4);
        let err = part.append_replicated(other, 4).await.unwrap_err();
        assert!(
            matches!(
                err,
                BrokerError::Storage(cascade_log::LogError::NonContiguous {
                    expected: 1,
                    got: 0
                })
            ),
            "{err}"
        );
        assert_eq!(
            part.epochs().entries(),
            &[(2, 0)],
            "epoch 4 must not be recorded over the epoch-2 batch"
        );
    }

    /// A fetcher cancelled by a leader change may still deliver its last response: once the
    /// replica follows a newer epoch, that append must be refused, or it could land after the
    /// new fetcher checked for a divergent suffix and stay as a batch no leader has.
    #[tokio::test]
    async fn a_replicated_append_read_under_an_older_epoch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let part = open_replica(dir.path(), 3);
        part.become_follower(1, 4, vec![1, 2, 3], vec![1, 2, 3], vec![])
            .await
            .unwrap();
        part.become_follower(2, 5, vec![1, 2, 3], vec![2, 3], vec![])
            .await
            .unwrap();
        let mut batch = one_record(b"x");
        stamp_epoch(&mut batch, 4);
        let err = part.append_replicated(batch.clone(), 4).await.unwrap_err();
        assert_fenced(&err, 4, 5);
        assert!(err.to_string().contains("t/0"), "{err}");
        assert_eq!(part.reader().end_offset(), 0, "nothing was written");
        stamp_epoch(&mut batch, 5);
        part.append_replicated(batch.clone(), 5).await.unwrap();
        assert_eq!(part.reader().end_offset(), 1);
        // Without a leader nothing is followed, so nothing is accepted.
        part.become_follower(0, 6, vec![1, 2, 3], vec![], vec![])
            .await
            .unwrap();
        assert!(part.append_replicated(batch, 5).await.is_err());
        assert_eq!(part.reader().end_offset(), 1);
    }

    /// A leader fenced by `stop_leading_appends` (what a damaged leader does before cutting
    /// its log) refuses appends at once, though its role has not changed yet.
    #[tokio::test]
    async fn a_fenced_leader_refuses_appends_before_its_role_changes() {
        let dir = tempfile::tempdir().unwrap();
        let part = open_replica(dir.path(), 1);
        part.become_leader(3, vec![1], vec![1], vec![])
            .await
            .unwrap();
        let batch = || BytesMut::from(one_record(b"x").as_slice());
        part.append(batch()).await.unwrap();
        part.stop_leading_appends().await.unwrap();
        assert_eq!(part.role(), Role::Leader { epoch: 3 });
        let err = part.append(batch()).await.unwrap_err();
        assert!(matches!(err, BrokerError::NotLeader { .. }), "{err}");
        assert_eq!(part.reader().end_offset(), 1, "nothing was written");
    }

    /// A damaged leader's log is cut while producers keep appending (the scrub found damage;
    /// the role change the metadata decided has not reached the replica yet): no append is
    /// acknowledged after the cut, so none can take an offset the other copies hold another
    /// event at. Before, the cut left the leader role in place and appends went on at the cut
    /// end (the broker had to remember to step down first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_append_is_acknowledged_against_a_cut_log() {
        for round in 0..20u64 {
            let dir = tempfile::tempdir().unwrap();
            let part = Arc::new(open_replica(dir.path(), 1));
            part.become_leader(3, vec![1], vec![1], vec![])
                .await
                .unwrap();
            let batch = || BytesMut::from(one_record(b"x").as_slice());
            // Four producers, each appending as fast as it is answered.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut producers = Vec::new();
            for _ in 0..4 {
                let (part, stop) = (part.clone(), stop.clone());
                producers.push(tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if part.append(batch()).await.is_err() {
                            tokio::task::yield_now().await;
                        }
                    }
                }));
            }
            while part.reader().end_offset() < 50 + round {
                tokio::task::yield_now().await;
            }
            let cut_at = 20 + round;
            let end = part.cut_damaged(cut_at).await.unwrap();
            assert_eq!(end, cut_at);
            // The producers keep trying for a while after the cut; then the role change the
            // metadata decided arrives (as the reconciler gives it), which answers the
            // appends still waiting for their replication.
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(
                part.reader().end_offset(),
                cut_at,
                "round {round}: appends were acknowledged against the cut log"
            );
            part.become_follower(2, 4, vec![1, 2], vec![2], vec![])
                .await
                .unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for p in producers {
                tokio::time::timeout(Duration::from_secs(10), p)
                    .await
                    .expect("a producer answered")
                    .unwrap();
            }
            assert_eq!(part.reader().end_offset(), cut_at, "round {round}");
            part.close().await.unwrap();
        }
    }

    /// A follower's cut is tied to the leader epoch it was decided against: a fetcher stopped
    /// too late (its cut queued behind the role change) must not cut the log of a replica
    /// that now leads, or follows a newer leader. Before, such a cut went through and took
    /// acknowledged events off a new leader.
    #[tokio::test]
    async fn a_stale_followers_cut_never_reaches_a_log_that_changed_role() {
        let dir = tempfile::tempdir().unwrap();
        let part = open_replica(dir.path(), 1);
        part.become_leader(3, vec![1], vec![1], vec![])
            .await
            .unwrap();
        for _ in 0..10 {
            part.append(BytesMut::from(one_record(b"x").as_slice()))
                .await
                .unwrap();
        }
        part.become_follower(2, 4, vec![1, 2], vec![1, 2], vec![])
            .await
            .unwrap();
        // Following epoch 4: a cut decided against epoch 4 runs.
        assert_eq!(part.truncate(9, Some(4)).await.unwrap(), 9);
        // It leads at epoch 5 now: cuts decided against epoch 4 are refused, changing nothing.
        part.become_leader(5, vec![1, 2], vec![1], vec![])
            .await
            .unwrap();
        let err = part.truncate(2, Some(4)).await.unwrap_err();
        assert!(
            matches!(err, BrokerError::FencedLeaderEpoch { .. }),
            "{err}"
        );
        assert!(part.truncate_fully(0, Some(4)).await.is_err());
        assert_eq!(part.reader().end_offset(), 9);
        // And it still leads: the refused cut did not fence it.
        part.append(BytesMut::from(one_record(b"y").as_slice()))
            .await
            .unwrap();
        assert_eq!(part.reader().end_offset(), 10);
    }

    /// The damage flag outlives the process: a replica cut for damage and then crashed
    /// before it left the in-sync set opens flagged again (its short log looks clean), and
    /// only dealing with it removes the flag.
    #[tokio::test]
    async fn a_damage_flag_survives_a_restart_until_it_is_dealt_with() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        let open = || open_replica(&dir, 1);
        let part = open();
        assert_eq!(part.damaged_at_open(), None);
        part.close().await.unwrap();
        drop(part);
        write_damage_marker(
            &cascade_log::fs::StdFs,
            &crate::epochs::sibling(&dir, "damaged"),
            "test",
        )
        .unwrap();
        let part = open();
        assert_eq!(part.damaged_at_open(), Some(0), "flagged from the file");
        part.close().await.unwrap();
        drop(part);
        let part = open();
        assert_eq!(
            part.damaged_at_open(),
            Some(0),
            "still flagged: nothing dealt with it"
        );
        part.clear_damage();
        part.close().await.unwrap();
        drop(part);
        let part = open();
        assert_eq!(part.damaged_at_open(), None, "cleared for good");
        assert!(!crate::epochs::sibling(&dir, "damaged").exists());
    }

    /// A replica that leads again after others led meanwhile must not expect a producer's
    /// sequences from its earlier turn: it learns them from its log, which followed along.
    /// (It used to keep the old expectation, so every batch of that producer waited the full
    /// park time for predecessors that had long been stored: seen in a chaos run.)
    #[tokio::test]
    async fn a_replica_leading_again_expects_what_its_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let part = open_replica(dir.path(), 1);
        let batch = |seq: i32, offset: i64, epoch: i32| {
            let mut bytes = one_record(b"x");
            cascade_record::header::set_producer(&mut bytes, 7, 0, seq);
            cascade_record::header::set_base_offset(&mut bytes, offset);
            stamp_epoch(&mut bytes, epoch);
            bytes
        };
        part.become_leader(1, vec![1, 2], vec![1], vec![])
            .await
            .unwrap();
        for seq in 0..3 {
            let info = part
                .append_local(BytesMut::from(&batch(seq, 0, 1)[..]))
                .await
                .unwrap();
            assert_eq!(info.base_offset, seq as u64);
        }
        assert!(part.sequencer.knows(7).await);
        // Another node leads and stores sequences 3 and 4; this replica copies them.
        part.become_follower(2, 2, vec![1, 2], vec![1, 2], vec![])
            .await
            .unwrap();
        assert!(
            !part.sequencer.knows(7).await,
            "forgotten on leaving the lead"
        );
        for seq in 3..5 {
            part.append_replicated(batch(seq, i64::from(seq), 2), 2)
                .await
                .unwrap();
        }
        part.become_leader(3, vec![1, 2], vec![1], vec![])
            .await
            .unwrap();
        assert!(
            !part.sequencer.knows(7).await,
            "forgotten on taking the lead"
        );
        // Sequence 5 is in turn at once: learnt from the log, not from the old turn (which
        // expected 3 and would have parked it).
        let info = part
            .append_local(BytesMut::from(&batch(5, 0, 3)[..]))
            .await
            .unwrap();
        assert_eq!(info.base_offset, 5);
        let turns = part.sequencer.turns.lock().await;
        assert_eq!(
            turns.standing(&sequencer::ProducerBatch {
                producer_id: 7,
                epoch: 0,
                first_seq: 6,
                last_seq: 6
            }),
            sequencer::Standing::InTurn
        );
    }

    fn state(role: Role, isr: &[u32], followers: &[(u32, u64)], local_end: u64) -> ReplState {
        let now = Instant::now();
        ReplState {
            node_id: 1,
            role,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            followers: followers
                .iter()
                .map(|&(id, end)| {
                    (
                        id,
                        FollowerProgress {
                            end,
                            last_fetch: now,
                            leader_end_at_last_fetch: 0,
                            last_caught_up: now,
                        },
                    )
                })
                .collect(),
            leader_hw: 0,
            local_end,
            isr_change_pending: false,
            pending_isr_add: None,
            epoch_start: 0,
            min_insync: 1,
            elr: Vec::new(),
            stepped_down: None,
        }
    }

    #[test]
    fn leader_high_watermark_is_the_slowest_in_sync_replica() {
        let leader = Role::Leader { epoch: 3 };
        // Everyone in sync: the slowest acknowledged end.
        assert_eq!(
            state(leader, &[1, 2, 3], &[(2, 80), (3, 95)], 100).compute_hw(),
            80
        );
        // The leader's own durable end bounds it too.
        assert_eq!(
            state(leader, &[1, 2, 3], &[(2, 120), (3, 130)], 100).compute_hw(),
            100
        );
        // A follower outside the ISR does not hold it back.
        assert_eq!(
            state(leader, &[1, 3], &[(2, 10), (3, 95)], 100).compute_hw(),
            95
        );
        // An in-sync follower not heard from since this leadership began counts as 0.
        assert_eq!(state(leader, &[1, 2], &[], 100).compute_hw(), 0);
        // A follower whose addition to the ISR is in flight already holds it back.
        let mut s = state(leader, &[1, 3], &[(2, 60), (3, 95)], 100);
        assert_eq!(s.compute_hw(), 95);
        s.pending_isr_add = Some(2);
        assert_eq!(s.compute_hw(), 60);
        // Alone in the ISR: its own durable end.
        assert_eq!(state(leader, &[1], &[(2, 5)], 100).compute_hw(), 100);
    }

    /// While the partition has eligible leader replicas the leader's high watermark stands
    /// still (KIP-966): they may lead only because they hold everything consumers may have
    /// seen. A pending addition does not count, nor does a stale minimum.
    #[test]
    fn the_high_watermark_stands_still_below_the_minimum() {
        let leader = Role::Leader { epoch: 3 };
        let mut s = state(leader, &[1], &[(2, 60)], 100);
        s.min_insync = 2;
        assert_eq!(s.compute_hw(), 100, "no eligible replica relies on it");
        s.elr = vec![3];
        assert_eq!(s.compute_hw(), 0, "0 publishes nothing: it stands still");
        // A follower being added does not count until the metadata has it.
        s.pending_isr_add = Some(2);
        assert_eq!(s.compute_hw(), 0);
        // Nor does a minimum this replica has not heard was raised.
        let mut s = state(leader, &[1, 2], &[(2, 90)], 100);
        (s.min_insync, s.elr) = (2, vec![3]);
        assert_eq!(s.compute_hw(), 0);
        s.elr.clear();
        assert_eq!(s.compute_hw(), 90);
        // A follower's view is the leader's, whatever the sets.
        let mut s = state(
            Role::Follower {
                leader: 2,
                epoch: 3,
            },
            &[2],
            &[],
            50,
        );
        (s.min_insync, s.elr) = (3, vec![1]);
        s.leader_hw = 40;
        assert_eq!(s.compute_hw(), 40);
    }

    #[test]
    fn a_follower_rejoins_only_with_everything_consumers_may_have_seen() {
        let leader = Role::Leader { epoch: 4 };
        // Just elected, with nothing heard from the other in-sync follower yet: the computed
        // high watermark is 0, but the inherited one (90) and the epoch start (120) still
        // bound who may rejoin.
        let mut s = state(leader, &[1, 2], &[(3, 0)], 130);
        s.epoch_start = 120;
        assert!(!s.may_rejoin_isr(3, 0, 90));
        assert!(!s.may_rejoin_isr(3, 100, 90), "below the epoch start");
        assert!(s.may_rejoin_isr(3, 120, 90));
        // The published high watermark bounds it when it is past the epoch start.
        assert!(!s.may_rejoin_isr(3, 125, 128));
        assert!(s.may_rejoin_isr(3, 128, 128));
        // Already in sync, not a replica, a change in flight, or not leading: no.
        assert!(!s.may_rejoin_isr(2, 130, 90));
        assert!(!s.may_rejoin_isr(7, 130, 90));
        s.isr_change_pending = true;
        assert!(!s.may_rejoin_isr(3, 130, 90));
        s.isr_change_pending = false;
        s.role = Role::Follower {
            leader: 2,
            epoch: 4,
        };
        assert!(!s.may_rejoin_isr(3, 130, 90));
    }

    #[test]
    fn follower_high_watermark_is_the_leaders_capped_by_its_own_end() {
        let mut s = state(
            Role::Follower {
                leader: 2,
                epoch: 3,
            },
            &[1, 2],
            &[],
            50,
        );
        s.leader_hw = 70;
        assert_eq!(s.compute_hw(), 50);
        s.local_end = 90;
        assert_eq!(s.compute_hw(), 70);
        assert_eq!(state(Role::Idle, &[1], &[], 50).compute_hw(), 0);
    }

    #[test]
    fn epochs_are_stamped_and_read_back_per_batch() {
        let mut bytes = Vec::new();
        for (base, n) in [(0i64, 2usize), (2, 3)] {
            let mut b = cascade_record::BatchBuilder::new();
            for i in 0..n {
                let v = format!("v{i}");
                b.push(cascade_record::Record {
                    timestamp: 0,
                    key: None,
                    value: Some(v.as_bytes()),
                    headers: &[],
                });
            }
            let mut batch = b.finish();
            cascade_record::header::set_base_offset(&mut batch, base);
            bytes.extend(batch);
        }
        stamp_epoch(&mut bytes, 7);
        assert_eq!(epochs_in(&bytes), vec![(7, 0)]);
        // The stamp is outside the CRC: the batches still validate.
        for b in cascade_record::Batches::new(&bytes) {
            b.expect("valid after stamping");
        }
    }
}
