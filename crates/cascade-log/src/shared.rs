//! [`SharedLog`]: a [`Log`] that many threads append to, with group commit.
//!
//! Appenders take the log's mutex only to write (a `pwrite` to the page cache); the fsync
//! happens outside it. Under [`FlushPolicy::Always`] an appender then waits until the durable
//! offset covers its records: if no fsync is running it starts one that covers everything
//! written so far, otherwise it waits for the running one and, if that did not cover it, for
//! the next. However many threads append at once, they share one fsync per round, and new
//! appends proceed while an fsync is in flight.

use crate::config::FlushPolicy;
use crate::error::Result;
use crate::log::{AppendInfo, Log};
use crate::reader::LogReader;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A thread-safe log with group commit. See the module docs.
#[derive(Debug)]
pub struct SharedLog {
    log: Mutex<Log>,
    /// True while some thread runs an fsync; guarded separately from the log so appends go on.
    syncing: Mutex<bool>,
    synced: Condvar,
    reader: LogReader,
    flush: FlushPolicy,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedLog {
    /// Wraps an open log.
    pub fn new(log: Log) -> Self {
        Self {
            reader: log.reader(),
            flush: log.config().flush,
            log: Mutex::new(log),
            syncing: Mutex::new(false),
            synced: Condvar::new(),
        }
    }

    /// A read handle.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// Appends batches (see [`Log::append`]) and returns once they are as durable as the flush
    /// policy promises: fsynced under `Always`. A duplicate (an idempotent producer's retry of
    /// batches already in the log) writes nothing but waits the same way for the originals,
    /// which another thread may have appended and not yet seen fsynced.
    pub fn append(&self, batches: &mut [u8]) -> Result<AppendInfo> {
        let info = {
            let mut log = lock(&self.log);
            let info = log.append(batches)?;
            if self.flush != FlushPolicy::Always {
                log.flush_if_due()?;
            }
            info
        };
        if self.flush == FlushPolicy::Always {
            self.wait_durable(info.last_offset + 1)?;
        }
        Ok(info)
    }

    /// Blocks until every offset below `target` is fsynced, running the fsync itself if no
    /// other thread is.
    pub fn wait_durable(&self, target: u64) -> Result<()> {
        let mut syncing = lock(&self.syncing);
        loop {
            if self.reader.durable_offset() >= target {
                return Ok(());
            }
            if !*syncing {
                *syncing = true;
                drop(syncing);
                let result = self.sync_once();
                syncing = lock(&self.syncing);
                *syncing = false;
                self.synced.notify_all();
                result?;
            } else {
                syncing = self.synced.wait(syncing).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    fn sync_once(&self) -> Result<()> {
        let (end, file, generation, path) = lock(&self.log).sync_target()?;
        let r = file.sync_data();
        lock(&self.log).complete_sync(end, generation, r, &path)?;
        Ok(())
    }

    /// Forgets idle producers (see [`Log::expire_producers`]); returns how many.
    pub fn expire_producers(&self) -> usize {
        lock(&self.log).expire_producers()
    }

    /// Runs `f` with the log locked, for operations other than append (retention, roll,
    /// truncation). Appenders wait meanwhile; readers do not.
    pub fn with_log<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R {
        f(&mut lock(&self.log))
    }

    /// Closes the log cleanly (see [`Log::close`]).
    pub fn close(self) -> Result<()> {
        self.log
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .close()
    }
}

impl From<Log> for SharedLog {
    fn from(log: Log) -> Self {
        Self::new(log)
    }
}
