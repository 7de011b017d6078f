//! The reconciler: makes this node's partition replicas follow the metadata.
//!
//! After every metadata change (and once at start) it walks the assignments: opens the
//! replicas this node should hold, gives each the role the metadata names (leader at epoch E,
//! or follower of L at epoch E, starting or stopping the follower fetcher), passes in-sync set
//! changes to leaders, applies topic setting changes, and closes and removes replicas of
//! deleted topics. The consumer group coordinator loads a `__consumer_offsets` partition when
//! this node becomes its leader and drops it when it stops leading it.
//!
//! Invariant: a replica's role only changes here, so a change is always the metadata's; one
//! reconciliation runs at a time (a lock), and each works from one metadata snapshot. A
//! replica that cannot be opened or given its role costs only itself: the pass goes on with
//! the others and notes it (`Broker::offline`, `reconcile_incomplete`), and housekeeping runs
//! another pass every second until every replica has its role.

use crate::broker::{Broker, TopicHandle};
use crate::error::Result;
use crate::group::OFFSETS_TOPIC;
use crate::partition::{Partition, Role};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Reconciles after every metadata change `rx` has not seen yet (so a receiver subscribed
/// before the first reconciliation also covers the changes made during it).
pub(crate) fn spawn(
    broker: Arc<Broker>,
    mut rx: tokio::sync::watch::Receiver<Arc<crate::metadata::ClusterMetadata>>,
) {
    let token = broker.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            if let Err(e) = broker.reconcile().await {
                tracing::error!(error = %e, "reconciling partitions with the metadata");
            }
        }
    });
}

/// How long a replica that failed to take its role stays reported offline, whatever succeeds
/// meanwhile (see `Broker::role_failures`).
pub(crate) const ROLE_FAILURE_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

impl Broker {
    /// Brings local replicas in line with the current metadata. See the module docs.
    pub(crate) async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let _guard = self.reconcile_lock.lock().await;
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        let snap = self.meta.snapshot();
        let me = self.config.node_id;
        self.reconcile_incomplete.store(false, Ordering::SeqCst);

        // Topics gone (or re-created under a new id): close and remove their replicas.
        let stale: Vec<(String, Arc<TopicHandle>)> = self
            .topics_read()
            .iter()
            .filter(|(name, h)| snap.topics.get(*name).is_none_or(|t| t.id != h.id))
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect();
        for (name, h) in stale {
            for (p, part) in &h.partitions {
                self.stop_fetcher(&name, *p);
                if name == OFFSETS_TOPIC {
                    self.groups().unload_partition(*p);
                }
                let _ = part.close().await;
            }
            self.topics_write().remove(&name);
            let dir = self.config.data_dir.join("topics").join(&name);
            let doomed = self
                .config
                .data_dir
                .join("topics")
                .join(format!(".{name}.{}.deleted", h.id));
            if std::fs::rename(&dir, &doomed).is_ok() {
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(doomed));
            }
            tracing::info!(topic = %name, "removed the replicas of a deleted topic");
        }

        for t in snap.topics.values() {
            let existing = self.topic_handle(&t.name).ok().filter(|h| h.id == t.id);
            let mut parts: BTreeMap<u32, Arc<crate::partition::Partition>> = existing
                .as_ref()
                .map(|h| h.partitions.clone())
                .unwrap_or_default();
            let config_changed = existing.as_ref().is_some_and(|h| h.config != t.config);
            let mut opened = false;
            for (i, a) in t.partitions.iter().enumerate() {
                let i = i as u32;
                if !a.replicas.contains(&me) {
                    continue;
                }
                if let std::collections::btree_map::Entry::Vacant(slot) = parts.entry(i) {
                    // One replica that cannot be opened (damage its lone copy cannot repair, a
                    // failing disk) is offline; it must not stop the node or its other
                    // partitions.
                    match self.open_partition(t, i).await {
                        Ok(part) => {
                            slot.insert(part);
                            opened = true;
                            self.set_offline(&t.name, i, None);
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            // A lone damaged replica is refused again at every retry (each
                            // second): the damage is counted once, when first found.
                            if matches!(
                                e,
                                crate::error::BrokerError::Storage(
                                    cascade_log::LogError::Corrupt { .. }
                                )
                            ) && self.offline_reason(&t.name, i).as_deref() != Some(&reason)
                            {
                                metrics::counter!("cascade_log_damage_total", "found" => "open")
                                    .increment(1);
                            }
                            self.set_offline(&t.name, i, Some(reason))
                        }
                    }
                }
            }
            if opened || config_changed || existing.is_none() {
                self.topics_write().insert(
                    t.name.clone(),
                    Arc::new(TopicHandle {
                        id: t.id.clone(),
                        partitions: parts.clone(),
                        config: t.config.clone(),
                    }),
                );
            }
            for (&i, part) in &parts {
                let Some(a) = t.partitions.get(i as usize) else {
                    continue;
                };
                // One replica whose role change fails (its disk failed as it was reopened,
                // its group state could not load) must not keep the others from following
                // the metadata: log it, go on, and let the next pass retry it.
                // It is reported offline meanwhile, so the controller moves its leadership
                // (a preferred-leader election would otherwise hand it back, again and again,
                // to a replica that cannot lead) and takes it out of the in-sync set.
                let key = (t.name.clone(), i);
                match self.reconcile_replica(t, i, a, part, config_changed).await {
                    Ok(()) => {
                        let mut failures =
                            self.role_failures.lock().unwrap_or_else(|e| e.into_inner());
                        let held = failures
                            .get(&key)
                            .is_some_and(|at| at.elapsed() < ROLE_FAILURE_HOLD);
                        if held {
                            // Keep retrying (housekeeping) until the hold is over.
                            self.reconcile_incomplete.store(true, Ordering::SeqCst);
                        } else {
                            failures.remove(&key);
                            drop(failures);
                            self.set_offline(&t.name, i, None);
                        }
                    }
                    Err(e) => {
                        self.reconcile_incomplete.store(true, Ordering::SeqCst);
                        tracing::error!(topic = %t.name, partition = i, error = %e, "could not give this replica its role; retrying");
                        self.role_failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, std::time::Instant::now());
                        self.set_offline(&t.name, i, Some(format!("cannot take its role: {e}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives one replica the role, in-sync set and settings `a` names.
    async fn reconcile_replica(
        self: &Arc<Self>,
        t: &crate::metadata::TopicMeta,
        i: u32,
        a: &crate::metadata::PartitionAssignment,
        part: &Arc<Partition>,
        config_changed: bool,
    ) -> Result<()> {
        let me = self.config.node_id;
        if config_changed {
            part.reconfigure(&t.config).await?;
        }
        if part.damaged_at_open().is_some() {
            if a.leader == me && a.unclean_leader_epoch == Some(a.leader_epoch) {
                // An operator elected this replica uncleanly, accepting the loss: it leads with
                // its log as it is, cut at the damage (the cut bytes stay under `damaged/`).
                tracing::warn!(topic = %t.name, partition = i, epoch = a.leader_epoch, "leading a damaged replica by an unclean election");
                part.clear_damage();
            } else if a.isr.contains(&me) || a.elr.contains(&me) {
                // Never lead (or count as in sync, or as eligible to lead) with a log cut for
                // damage: leave the in-sync and eligible sets first; the next reconciliation
                // gives the role.
                return self.repair_damaged(part, None).await;
            } else {
                // Out of the in-sync and eligible sets already (an unclean restart takes it
                // out at registration): the cut log refetches the rest as a follower.
                tracing::info!(topic = %t.name, partition = i, isr = ?a.isr, "damaged replica is out of the in-sync set: it refetches the rest as a follower");
                part.clear_damage();
                metrics::counter!("cascade_replica_repairs_total").increment(1);
            }
        }
        let role = part.role();
        if a.leader == me {
            if role
                != (Role::Leader {
                    epoch: a.leader_epoch,
                })
            {
                self.stop_fetcher(&t.name, i);
                part.become_leader(
                    a.leader_epoch,
                    a.replicas.clone(),
                    a.isr.clone(),
                    a.elr.clone(),
                )
                .await?;
                tracing::info!(topic = %t.name, partition = i, epoch = a.leader_epoch, "leading");
                if t.name == OFFSETS_TOPIC {
                    self.groups().load_partition(i, part.clone()).await?;
                }
            } else {
                part.set_isr(a.replicas.clone(), a.isr.clone(), a.elr.clone());
            }
        } else {
            let want = if a.leader == 0 {
                Role::Idle
            } else {
                Role::Follower {
                    leader: a.leader,
                    epoch: a.leader_epoch,
                }
            };
            if role != want {
                if matches!(role, Role::Leader { .. }) && t.name == OFFSETS_TOPIC {
                    self.groups().unload_partition(i);
                }
                self.stop_fetcher(&t.name, i);
                part.become_follower(
                    a.leader,
                    a.leader_epoch,
                    a.replicas.clone(),
                    a.isr.clone(),
                    a.elr.clone(),
                )
                .await?;
                tracing::debug!(topic = %t.name, partition = i, leader = a.leader, epoch = a.leader_epoch, from = ?role, "following");
                if a.leader != 0 {
                    self.start_fetcher(part.clone(), a.leader, a.leader_epoch);
                }
            } else {
                part.set_isr(a.replicas.clone(), a.isr.clone(), a.elr.clone());
            }
        }
        Ok(())
    }
}
