//! Consumer lag: committed offset vs high watermark per group partition, for describe and
//! for the `cascade_group_lag` gauge.

use crate::broker::Broker;
use crate::group::{Committed, Tp};
use std::collections::{BTreeMap, BTreeSet};

/// Lag of one partition for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub tp: Tp,
    /// Committed offset, if any.
    pub committed: Option<u64>,
    /// Its high watermark.
    pub high_watermark: u64,
    /// `high_watermark - committed` (from the log start when nothing is committed).
    pub lag: u64,
    /// Member that owns it now, if any.
    pub owner: Option<String>,
}

impl Broker {
    /// Lag over every partition of the topics the group subscribes to or has committed.
    pub fn group_lag(
        &self,
        topics: &BTreeSet<String>,
        offsets: &BTreeMap<Tp, Committed>,
        owners: &BTreeMap<Tp, String>,
    ) -> Vec<PartitionLag> {
        let mut all: BTreeSet<String> = topics.clone();
        all.extend(offsets.keys().map(|tp| tp.topic.clone()));
        let mut out = Vec::new();
        for topic in all {
            let Ok(h) = self.topic_handle(&topic) else {
                continue;
            };
            for p in h.partitions.values() {
                let tp = crate::group::Tp::new(topic.clone(), p.index);
                let hw = p.high_watermark();
                let committed = offsets.get(&tp).map(|c| c.offset);
                let from = committed.unwrap_or_else(|| p.reader().start_offset());
                out.push(PartitionLag {
                    lag: hw.saturating_sub(from),
                    committed,
                    high_watermark: hw,
                    owner: owners.get(&tp).cloned(),
                    tp,
                });
            }
        }
        out
    }
}

pub(crate) fn record_lag_metrics(broker: &Broker) {
    let groups = broker.groups();
    for (id, _, _) in groups.list() {
        let Ok(view) = groups.describe(&id) else {
            continue;
        };
        let lags = broker.group_lag(
            &view.group.subscribed_topics(),
            &view.offsets,
            &BTreeMap::new(),
        );
        for l in lags {
            metrics::gauge!("cascade_group_lag", "group" => id.clone(), "topic" => l.tp.topic.clone(),
                "partition" => l.tp.partition.to_string())
            .set(l.lag as f64);
        }
    }
}
