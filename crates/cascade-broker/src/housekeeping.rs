//! The broker's periodic background work, in one task: evict silent group members (every
//! second), flush partitions with `flush=interval`, run retention, and refresh the gauges
//! that `/metrics` shows (including replication health: led and under-replicated partitions,
//! and on the controller offline partitions and fenced brokers). Work on partitions is sent to
//! their actors, never done here. It also watches storage health: a replica whose log a failed
//! fsync poisoned is handed to `Broker::retire_failed_replica` (leadership moves, the replica is
//! reopened), and offline replicas (and replicas a reconciliation could not give their role)
//! are retried every second.

use crate::broker::Broker;
use cascade_types::FlushMode;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// Replication health as this node sees it: under-replicated partitions it leads; the
/// controller also reports offline partitions and fenced brokers for the whole cluster (only
/// it, so sums over nodes count each once).
fn cluster_gauges(broker: &Broker) {
    let snap = broker.meta.snapshot();
    let me = broker.config.node_id;
    let controller = broker.meta.is_controller();
    let (mut led, mut under, mut offline) = (0u64, 0u64, 0u64);
    for a in snap.topics.values().flat_map(|t| t.partitions.iter()) {
        if a.leader == me {
            led += 1;
            if a.isr.len() < a.replicas.len() {
                under += 1;
            }
        }
        if a.leader == 0 {
            offline += 1;
        }
    }
    let fenced = snap.brokers.values().filter(|b| b.fenced).count();
    metrics::gauge!("cascade_leader_partitions").set(led as f64);
    metrics::gauge!("cascade_under_replicated_partitions").set(under as f64);
    metrics::gauge!("cascade_is_controller").set(if controller { 1.0 } else { 0.0 });
    metrics::gauge!("cascade_offline_partitions").set(if controller {
        offline as f64
    } else {
        0.0
    });
    metrics::gauge!("cascade_fenced_brokers").set(if controller { fenced as f64 } else { 0.0 });
    metrics::gauge!("cascade_metadata_version").set(snap.version as f64);
}

pub(crate) fn spawn(broker: Arc<Broker>) {
    let token = broker.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut last_retention = Instant::now();
        let mut last_second = Instant::now();
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let retention = last_retention.elapsed() >= broker.config.retention_check_interval;
            if retention {
                last_retention = Instant::now();
            }
            let snap = broker.meta.snapshot();
            let handles: Vec<_> = broker
                .topics_read()
                .iter()
                .map(|(n, h)| (n.clone(), h.clone()))
                .collect();
            let mut partitions = 0u64;
            for (name, h) in &handles {
                let Some(t) = snap.topics.get(name) else {
                    continue;
                };
                let interval = t.config.flush == FlushMode::Interval;
                for p in h.partitions.values() {
                    partitions += 1;
                    if let Some(reason) = p.reader().poisoned() {
                        let (b, p) = (broker.clone(), p.clone());
                        tokio::spawn(async move { b.retire_failed_replica(p, reason).await });
                        continue;
                    }
                    if interval || retention {
                        p.maintain(retention);
                    }
                }
            }
            if last_second.elapsed() >= Duration::from_secs(1) {
                last_second = Instant::now();
                // Offline replicas (a failing disk, a replica retired after a failed fsync)
                // are retried here too, not only when the metadata changes: a disk that
                // recovers must bring its replicas back by itself.
                let offline = !broker
                    .offline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                    || broker
                        .reconcile_incomplete
                        .load(std::sync::atomic::Ordering::SeqCst);
                if offline && let Err(e) = broker.reconcile().await {
                    tracing::debug!(error = %e, "retrying offline replicas");
                }
                broker.groups().expire_members();
                broker.expire_consumers();
                metrics::gauge!("cascade_partitions").set(partitions as f64);
                cluster_gauges(&broker);
                metrics::gauge!("cascade_topics").set(handles.len() as f64);
                for (name, h) in &handles {
                    for p in h.partitions.values() {
                        p.checkpoint_hw();
                        let labels = [("topic", name.clone()), ("partition", p.index.to_string())];
                        let r = p.reader();
                        metrics::gauge!("cascade_log_size_bytes", &labels)
                            .set(r.size_bytes() as f64);
                        metrics::gauge!("cascade_log_end_offset", &labels)
                            .set(r.end_offset() as f64);
                        metrics::gauge!("cascade_log_start_offset", &labels)
                            .set(r.start_offset() as f64);
                        metrics::gauge!("cascade_high_watermark", &labels)
                            .set(p.high_watermark() as f64);
                    }
                }
                crate::lag::record_lag_metrics(&broker);
            }
        }
    });
}
