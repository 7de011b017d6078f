//! [`Partition`]: one partition's log behind a single-writer actor thread.
//!
//! The actor thread owns the [`Log`] and is the only code that writes it. Producers send
//! [`Command::Append`] through a bounded channel (backpressure) and wait on a oneshot. The actor
//! takes the first command, drains whatever else is already queued (up to a bound), appends them
//! all with one `pwrite` each, then makes them durable with **one** fsync (group commit) and only
//! then answers them all. A dedicated thread, not an async task, because every step is blocking
//! file IO and the loop never waits on anything but its channel.
//!
//! Readers never go through the actor: they use the shared [`LogReader`] directly and learn
//! about new data from the high-watermark watch channel, which the actor advances after each
//! group. Under `flush=always` the high watermark is the durable offset, so a consumer never
//! sees an event that a power loss could take back.

use crate::error::{BrokerError, Result};
use cascade_log::{AppendInfo, FlushPolicy, Log, LogConfig, LogError, LogReader};
use cascade_types::{FlushMode, TopicConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Commands queued per partition before producers wait.
const QUEUE: usize = 1024;
/// Most commands handled in one group (one fsync).
const MAX_GROUP: usize = 512;

/// Requests to a partition's actor.
pub(crate) enum Command {
    Append {
        batches: Vec<u8>,
        reply: oneshot::Sender<Result<AppendInfo>>,
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
        flush: match c.flush {
            FlushMode::Always => FlushPolicy::Always,
            FlushMode::Interval => FlushPolicy::Interval(Duration::from_millis(c.flush_ms)),
            FlushMode::Never => FlushPolicy::Never,
        },
        ..LogConfig::default()
    }
}

/// A running partition: the handle producers, fetchers and admin use.
#[derive(Debug)]
pub struct Partition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub index: u32,
    dir: PathBuf,
    tx: mpsc::Sender<Command>,
    reader: LogReader,
    hw: watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Partition {
    /// Opens (recovering if needed) the log in `dir` and starts its actor thread. Blocking.
    pub fn open(topic: Arc<str>, index: u32, dir: &Path, config: &TopicConfig) -> Result<Self> {
        let log_cfg = log_config(config);
        let log = Log::open(dir, log_cfg)?;
        let reader = log.reader();
        let (hw_tx, hw) = watch::channel(high_watermark(&log));
        let (tx, rx) = mpsc::channel(QUEUE);
        let name = format!("p-{topic}-{index}");
        let dir_owned = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || run(log, dir_owned, rx, hw_tx))
            .map_err(|e| BrokerError::Metadata(format!("cannot start partition thread: {e}")))?;
        Ok(Self {
            topic,
            index,
            dir: dir.to_path_buf(),
            tx,
            reader,
            hw,
            thread: Mutex::new(Some(thread)),
        })
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

    /// A receiver that changes whenever the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.hw.clone()
    }

    /// Appends batches (offsets assigned by the log) and waits for the result, which comes
    /// after the fsync under `flush=always`.
    pub async fn append(&self, batches: Vec<u8>) -> Result<AppendInfo> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append { batches, reply })
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Queues an append without waiting for its result (`acks=none`).
    pub async fn append_detached(&self, batches: Vec<u8>) -> Result<()> {
        let (reply, _) = oneshot::channel();
        self.tx
            .send(Command::Append { batches, reply })
            .await
            .map_err(|_| BrokerError::ShuttingDown)
    }

    /// Asks for housekeeping; never waits (skipped if the queue is full).
    pub(crate) fn maintain(&self, retention: bool) {
        let _ = self.tx.try_send(Command::Maintain { retention });
    }

    /// Applies new settings.
    pub async fn reconfigure(&self, config: &TopicConfig) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Reconfigure {
                config: log_config(config),
                reply,
            })
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)?
    }

    /// Flushes and closes the log (writing its clean-shutdown marker) and stops the actor.
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close { reply }).await.is_err() {
            return Ok(()); // already closed
        }
        let r = rx.await.map_err(|_| BrokerError::ShuttingDown)?;
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        r
    }
}

fn high_watermark(log: &Log) -> u64 {
    match log.config().flush {
        FlushPolicy::Always => log.durable_offset(),
        _ => log.end_offset(),
    }
}

fn storage_failure(log: &Log, e: &LogError) -> BrokerError {
    BrokerError::Storage(LogError::Poisoned {
        dir: log.dir().to_path_buf(),
        reason: e.to_string(),
    })
}

/// The actor loop. See the module docs.
fn run(mut log: Log, dir: PathBuf, mut rx: mpsc::Receiver<Command>, hw_tx: watch::Sender<u64>) {
    let mut replies: Vec<(oneshot::Sender<Result<AppendInfo>>, Result<AppendInfo>)> =
        Vec::with_capacity(MAX_GROUP);
    loop {
        let Some(first) = rx.blocking_recv() else {
            if let Err(e) = log.close() {
                tracing::error!(dir = %dir.display(), error = %e, "closing partition log");
            }
            return;
        };
        let mut next = Some(first);
        let mut handled = 0;
        let mut close: Option<oneshot::Sender<Result<()>>> = None;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append { mut batches, reply } => {
                    let r = log.append(&mut batches).map_err(BrokerError::from);
                    replies.push((reply, r));
                }
                Command::Maintain { retention } => {
                    if let Err(e) = log.flush_if_due() {
                        tracing::error!(dir = %dir.display(), error = %e, "periodic flush failed");
                    }
                    if retention && let Err(e) = log.apply_retention() {
                        tracing::error!(dir = %dir.display(), error = %e, "retention failed");
                    }
                }
                Command::Reconfigure { config, reply } => {
                    let _ = reply.send(log.set_config(config).map_err(BrokerError::from));
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
        if replies.iter().any(|(_, r)| r.is_ok())
            && let Err(e) = log.flush_if_due()
        {
            tracing::error!(dir = %dir.display(), error = %e, "fsync failed: partition is now read-only");
            for (_, r) in replies.iter_mut() {
                if r.is_ok() {
                    *r = Err(storage_failure(&log, &e));
                }
            }
        }
        hw_tx.send_if_modified(|hw| {
            let new = high_watermark(&log);
            let changed = new != *hw;
            *hw = new;
            changed
        });
        for (reply, r) in replies.drain(..) {
            let _ = reply.send(r);
        }
        if let Some(reply) = close {
            rx.close();
            // Answer anything still queued, then close.
            while let Ok(cmd) = rx.try_recv() {
                if let Command::Append { reply, .. } = cmd {
                    let _ = reply.send(Err(BrokerError::ShuttingDown));
                }
            }
            let _ = reply.send(log.close().map_err(BrokerError::from));
            return;
        }
    }
}
