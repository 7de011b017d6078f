//! Per-topic configuration with Kafka's key names, parsed and validated from `key=value`
//! strings (CLI `--config`, REST `configs`, gRPC `configs` maps).
//!
//! Unknown keys and out-of-range values are refused with a message naming the key, so a typo
//! never silently falls back to a default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// When a topic's partitions fsync appended data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// fsync before acknowledging (group commit). The default.
    Always,
    /// fsync every `flush.ms`.
    Interval,
    /// leave it to the operating system.
    Never,
}

/// A topic's settings. Field docs give the key and default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicConfig {
    /// `retention.ms`: delete data older than this; -1 keeps it forever. Default 7 days.
    pub retention_ms: i64,
    /// `retention.bytes`: per partition; -1 means no size limit. Default -1.
    pub retention_bytes: i64,
    /// `segment.bytes`: roll segments at this size. Default 1 GiB, at most 4 GiB − 1.
    pub segment_bytes: u64,
    /// `segment.ms`: roll segments this old. Default 7 days.
    pub segment_ms: u64,
    /// `max.message.bytes`: the largest batch accepted. Default 1 MiB + 12.
    pub max_message_bytes: u32,
    /// `flush`: `always`, `interval` or `never`. Default `always`.
    pub flush: FlushMode,
    /// `flush.ms`: the interval for `flush=interval`. Default 1000.
    pub flush_ms: u64,
    /// `min.insync.replicas`: replicas that must have a write before `acks=all` succeeds.
    pub min_insync_replicas: u32,
    /// `index.interval.bytes`: bytes between time index entries. Default 4096.
    pub index_interval_bytes: u64,
    /// `producer.id.expiration.ms`: a partition forgets an idempotent producer (its
    /// sequences, so its retries are no longer recognised) this long after its last batch.
    /// Kafka's broker-wide setting of the same name, here per topic. Default 1 day.
    pub producer_id_expiration_ms: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 1_048_588,
            flush: FlushMode::Always,
            flush_ms: 1000,
            min_insync_replicas: 1,
            index_interval_bytes: 4096,
            producer_id_expiration_ms: 24 * 3600 * 1000,
        }
    }
}

/// A refused configuration entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicConfigError {
    /// The key is not a known topic setting.
    #[error("unknown topic config {0:?} (known: {known})", known = TopicConfig::KEYS.join(", "))]
    UnknownKey(String),
    /// The value does not parse or is out of range.
    #[error("invalid value {value:?} for {key}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A `key=value` string without `=`.
    #[error("config {0:?} is not of the form key=value")]
    NotKeyValue(String),
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, TopicConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| TopicConfigError::BadValue {
            key: key.into(),
            value: value.into(),
            reason: "not a number in range".into(),
        })
}

fn bad(key: &str, value: &str, reason: &str) -> TopicConfigError {
    TopicConfigError::BadValue {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

impl TopicConfig {
    /// Every key this type understands.
    pub const KEYS: &'static [&'static str] = &[
        "retention.ms",
        "retention.bytes",
        "segment.bytes",
        "segment.ms",
        "max.message.bytes",
        "flush",
        "flush.ms",
        "min.insync.replicas",
        "index.interval.bytes",
        "producer.id.expiration.ms",
    ];

    /// Sets one key, validating the value; on error nothing changes.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TopicConfigError> {
        let mut next = self.clone();
        match key {
            "retention.ms" => {
                next.retention_ms = parse(key, value)?;
                if next.retention_ms < -1 {
                    return Err(bad(key, value, "must be -1 (forever) or >= 0"));
                }
            }
            "retention.bytes" => {
                next.retention_bytes = parse(key, value)?;
                if next.retention_bytes < -1 {
                    return Err(bad(key, value, "must be -1 (no limit) or >= 0"));
                }
            }
            "segment.bytes" => {
                next.segment_bytes = parse(key, value)?;
                if !(1024..=u64::from(u32::MAX)).contains(&next.segment_bytes) {
                    return Err(bad(key, value, "must be between 1024 and 4294967295"));
                }
            }
            "segment.ms" => {
                next.segment_ms = parse(key, value)?;
                if next.segment_ms == 0 {
                    return Err(bad(key, value, "must be > 0"));
                }
            }
            "max.message.bytes" => {
                next.max_message_bytes = parse(key, value)?;
                if !(64..=(1 << 30)).contains(&next.max_message_bytes) {
                    return Err(bad(key, value, "must be between 64 and 1073741824"));
                }
            }
            "flush" => {
                next.flush = match value.trim() {
                    "always" => FlushMode::Always,
                    "interval" => FlushMode::Interval,
                    "never" => FlushMode::Never,
                    _ => return Err(bad(key, value, "must be always, interval or never")),
                }
            }
            "flush.ms" => {
                next.flush_ms = parse(key, value)?;
                if next.flush_ms == 0 {
                    return Err(bad(key, value, "must be > 0"));
                }
            }
            "min.insync.replicas" => {
                next.min_insync_replicas = parse(key, value)?;
                if next.min_insync_replicas == 0 {
                    return Err(bad(key, value, "must be >= 1"));
                }
            }
            "index.interval.bytes" => {
                next.index_interval_bytes = parse(key, value)?;
                if next.index_interval_bytes == 0 {
                    return Err(bad(key, value, "must be > 0"));
                }
            }
            "producer.id.expiration.ms" => {
                next.producer_id_expiration_ms = parse(key, value)?;
                if next.producer_id_expiration_ms == 0 {
                    return Err(bad(key, value, "must be > 0"));
                }
            }
            other => return Err(TopicConfigError::UnknownKey(other.to_string())),
        }
        *self = next;
        Ok(())
    }

    /// Defaults overridden by `entries`; fails on the first bad entry.
    pub fn from_map<'a>(
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, TopicConfigError> {
        let mut c = Self::default();
        for (k, v) in entries {
            c.set(k, v)?;
        }
        Ok(c)
    }

    /// Parses `key=value` strings (as given on a command line).
    pub fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>, TopicConfigError> {
        let mut out = BTreeMap::new();
        for p in pairs {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| TopicConfigError::NotKeyValue(p.clone()))?;
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(out)
    }

    /// Every setting as `key -> value` strings.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let flush = match self.flush {
            FlushMode::Always => "always",
            FlushMode::Interval => "interval",
            FlushMode::Never => "never",
        };
        [
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("flush", flush.to_string()),
            ("flush.ms", self.flush_ms.to_string()),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            (
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
            ),
            (
                "producer.id.expiration.ms",
                self.producer_id_expiration_ms.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_validates_and_round_trips() {
        let pairs = TopicConfig::parse_pairs(&[
            "retention.ms=1000".into(),
            "flush=never".into(),
            "segment.bytes = 4096".into(),
        ])
        .unwrap();
        let c = TopicConfig::from_map(&pairs).unwrap();
        assert_eq!(c.retention_ms, 1000);
        assert_eq!(c.flush, FlushMode::Never);
        assert_eq!(c.segment_bytes, 4096);
        assert_eq!(TopicConfig::from_map(&c.to_map()).unwrap(), c);
    }

    #[test]
    fn refuses_bad_entries_and_changes_nothing() {
        let mut c = TopicConfig::default();
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.ms", "-2"),
            ("segment.bytes", "10"),
            ("segment.bytes", "5000000000"),
            ("flush", "sometimes"),
            ("max.message.bytes", "1"),
            ("min.insync.replicas", "0"),
        ] {
            assert!(
                matches!(c.set(k, v), Err(TopicConfigError::BadValue { .. })),
                "{k}={v}"
            );
        }
        assert!(matches!(
            c.set("retention.mss", "1"),
            Err(TopicConfigError::UnknownKey(_))
        ));
        assert_eq!(c, TopicConfig::default());
        assert!(TopicConfig::parse_pairs(&["novalue".into()]).is_err());
    }
}
