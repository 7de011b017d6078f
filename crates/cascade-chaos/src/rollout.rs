//! Rolling restarts and image upgrades of a StatefulSet's pods, as Kubernetes performs them.
//!
//! Kubernetes' StatefulSet controller rolls pods from the highest ordinal down, one at a
//! time: SIGTERM, up to the grace period, SIGKILL if still running, a new pod (the same
//! volume; for an upgrade, the new image), and the next only once this one is ready. That is
//! all it waits for, so it is all this waits for too ([`run`]). Meanwhile the run's
//! `acks=all` workload keeps writing; [`stalls`] measures, per partition, the longest time
//! without an acknowledgement while the roll went on.

use crate::checker::{SendOutcome, Sent};
use crate::docker::Cluster;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What to roll.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The StatefulSet whose pods the nodes are.
    pub pod: crate::pod::PodTemplate,
    /// Start the pods on this image and upgrade them to the run's image in a second roll.
    pub from_image: Option<String>,
    /// Rolling restarts (same image) before the upgrade.
    pub restarts: u32,
}

/// One pod's turn.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `restart` or `upgrade`.
    pub action: String,
    /// The node (ordinal + 1).
    pub node: u32,
    /// It exited within its grace period after SIGTERM (else it was SIGKILLed).
    pub graceful: bool,
    /// From SIGTERM to exit, ms.
    pub stop_ms: f64,
    /// From start to ready, ms.
    pub ready_ms: f64,
}

/// What the roll did and what it cost the writers.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RolloutReport {
    /// Each pod's turn, in order.
    pub steps: Vec<Step>,
    /// The longest time without an acknowledgement per partition while rolling, ms.
    pub stall_ms: BTreeMap<u32, f64>,
    /// When the roll started and ended, on the workload's clock (ns).
    #[serde(skip)]
    pub window: (u64, u64),
}

impl RolloutReport {
    /// The longest stall over every partition, ms.
    pub fn max_stall_ms(&self) -> f64 {
        self.stall_ms.values().copied().fold(0.0, f64::max)
    }
}

/// Rolls every pod `rollout.restarts` times, then upgrades each to `image` if the pods
/// started on another; `now` reads the workload's clock.
pub async fn run(
    cluster: &mut Cluster,
    rollout: &Rollout,
    image: &str,
    now: impl Fn() -> u64,
) -> Result<RolloutReport> {
    // Writers settle in first, so the first stall is the roll's, not the start's.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut report = RolloutReport {
        window: (now(), 0),
        ..Default::default()
    };
    let nodes = cluster.nodes.len() as u32;
    let mut rounds: Vec<(&str, Option<&str>)> = vec![("restart", None); rollout.restarts as usize];
    if rollout.from_image.is_some() {
        rounds.push(("upgrade", Some(image)));
    }
    for (action, new_image) in rounds {
        for id in (1..=nodes).rev() {
            let t = Instant::now();
            let graceful = cluster.stop_graceful(id).await?;
            let stop_ms = t.elapsed().as_secs_f64() * 1e3;
            if let Some(img) = new_image {
                cluster.replace_image(id, img).await?;
            }
            let t = Instant::now();
            cluster.start_node(id).await?;
            cluster.wait_ready(id, Duration::from_secs(120)).await?;
            let ready_ms = t.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "  {action} node {id}: stopped in {stop_ms:.0} ms ({}), ready {ready_ms:.0} ms after its start",
                if graceful {
                    "graceful"
                } else {
                    "SIGKILL after the grace period"
                }
            );
            report.steps.push(Step {
                action: action.into(),
                node: id,
                graceful,
                stop_ms,
                ready_ms,
            });
        }
    }
    // The last pod's followers catch up while writers keep going.
    tokio::time::sleep(Duration::from_secs(5)).await;
    report.window.1 = now();
    Ok(report)
}

/// Per partition, the longest time without an acknowledgement within `window` (the gap
/// from the last acknowledgement before it counts from the window's start), in ms.
pub fn stalls(sent: &[Sent], window: (u64, u64)) -> BTreeMap<u32, f64> {
    let mut acks: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for s in sent {
        if let SendOutcome::Acked { at, .. } = s.outcome {
            acks.entry(s.partition).or_default().push(at);
        }
    }
    acks.into_iter()
        .map(|(p, mut at)| {
            at.sort_unstable();
            let mut last = window.0;
            let mut longest = 0u64;
            for t in at.into_iter().filter(|&t| t > window.0 && t <= window.1) {
                longest = longest.max(t - last);
                last = t;
            }
            longest = longest.max(window.1.saturating_sub(last));
            (p, longest as f64 / 1e6)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest gap between acknowledgements inside the window, the window's edges
    /// included; acknowledgements outside it do not count.
    #[test]
    fn a_stall_is_the_longest_gap_between_acknowledgements_while_rolling() {
        let ms = 1_000_000;
        let sent: Vec<Sent> = [(0, 50), (0, 110), (0, 130), (0, 900), (0, 1000), (1, 500)]
            .iter()
            .enumerate()
            .map(|(i, &(partition, t))| Sent {
                payload: Vec::new(),
                producer: 0,
                session: 0,
                partition,
                seq: i as u64,
                invoked: t * ms,
                outcome: SendOutcome::Acked {
                    offset: i as u64,
                    at: t * ms,
                },
            })
            .collect();
        let s = stalls(&sent, (100 * ms, 950 * ms));
        assert_eq!(s[&0], 770.0, "130 → 900");
        assert_eq!(s[&1], 450.0, "500 → the window's end");
    }
}
