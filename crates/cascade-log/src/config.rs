//! Per-log settings ([`LogConfig`]), the flush policy, and the clock the log reads time from.

use crate::error::{LogError, Result};
use std::fmt::Debug;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When appended data is made durable with fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync before an append is acknowledged. Concurrent appends share one fsync (group
    /// commit): see [`crate::SharedLog`], or call [`crate::Log::flush_if_due`] after a group of
    /// appends.
    Always,
    /// fsync when this much time has passed since the last one; an acknowledged append may be
    /// lost to a power failure within that window (not to a process crash).
    Interval(Duration),
    /// Never fsync while running (only on roll and close): the operating system decides.
    Never,
}

/// What opening a log does when a sealed segment fails its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorruptionPolicy {
    /// Refuse to open, reporting the damaged file and position.
    Fail,
    /// Truncate the log just before the first damaged batch; what is cut is moved aside into
    /// the log's `damaged/` directory, never deleted (see [`crate::quarantine`]). Only for a
    /// replica that will fetch the missing suffix again from a leader.
    Truncate,
}

/// Settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before one would grow past this many bytes. At most `u32::MAX`,
    /// because the dense index stores 4-byte positions.
    pub segment_bytes: u64,
    /// Roll a segment this long after it was created, if it holds data.
    pub segment_age: Option<Duration>,
    /// Write a time-index entry after about this many bytes of batches.
    pub index_interval_bytes: u64,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// When to fsync.
    pub flush: FlushPolicy,
    /// What to do about a damaged sealed segment on open.
    pub on_corruption: CorruptionPolicy,
    /// Take a bad batch in the active segment that valid batches follow as damage even under
    /// [`FlushPolicy::Always`], when nothing proves it lies past the last fsync (the recovery
    /// point, rewritten without an fsync of its own, can be stale after a power cut). Under
    /// `Always` such a batch is either a write torn by a power cut (never acknowledged) or
    /// acknowledged data gone bad; the two look alike. A lone copy has to guess torn (cutting
    /// what may be a bit flip); a replica that another copy can repair should not guess: set
    /// this, and it is repaired instead (and with every copy damaged, the partition refuses).
    pub ambiguous_tail_is_damage: bool,
    /// Offset of the first event of a log created empty.
    pub initial_offset: u64,
    /// Forget an idempotent producer not seen for this long ([`crate::Log::expire_producers`]);
    /// its next batch must then start at sequence 0. Kafka's `producer.id.expiration.ms`
    /// (default one day). `None`: never.
    pub producer_id_expiration: Option<Duration>,
}

/// Kafka's `log.segment.bytes` default.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_age: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: 4096,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            flush: FlushPolicy::Always,
            on_corruption: CorruptionPolicy::Fail,
            ambiguous_tail_is_damage: false,
            initial_offset: 0,
            producer_id_expiration: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

impl LogConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<()> {
        let min = (crate::format::FILE_HEADER_LEN + cascade_record::HEADER_LEN) as u64;
        if self.segment_bytes < min || self.segment_bytes > u64::from(u32::MAX) {
            return Err(LogError::Config(format!(
                "segment_bytes must be between {min} and {} (4-byte index positions), got {}",
                u32::MAX,
                self.segment_bytes
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::Config("index_interval_bytes must be > 0".into()));
        }
        if let FlushPolicy::Interval(d) = self.flush
            && d.is_zero()
        {
            return Err(LogError::Config(
                "flush interval must be > 0 (use Always for fsync on every append)".into(),
            ));
        }
        if self.producer_id_expiration.is_some_and(|d| d.is_zero()) {
            return Err(LogError::Config(
                "producer_id_expiration must be > 0 (None never expires producers)".into(),
            ));
        }
        if self.initial_offset > i64::MAX as u64 / 2 {
            return Err(LogError::Config("initial_offset is too large".into()));
        }
        Ok(())
    }
}

/// Where the log reads wall-clock time (ms since the Unix epoch): segment age, retention and
/// producer expiry.
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock as this process first read it, advanced by the monotonic clock:
/// a step of the system clock while the process runs (NTP stepping it, an operator, a VM
/// resumed from a snapshot) does not move it. What the log times is elapsed time (how long a
/// producer has been idle, how old a segment is), so a step must not make every producer look
/// a day idle, and be forgotten mid-stream, or every segment a week old, and deleted, at once.
/// Every log in the process reads the same base, so they agree; a restart takes the system
/// clock again.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        static BASE: OnceLock<(i64, Instant)> = OnceLock::new();
        let (wall, at) = BASE.get_or_init(|| {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            (wall, Instant::now())
        });
        wall.saturating_add(at.elapsed().as_millis() as i64)
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
