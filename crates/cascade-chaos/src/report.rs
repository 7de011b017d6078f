//! The run's report: what was done, what was measured, and the checker's verdict, as a human
//! summary and as JSON (`--output json`).
//!
//! A run passes ([`RunReport::ok`]) only when the checker found no violation and the harness
//! found no problem (the cluster settled after healing, everything could be read).

use crate::checker::CheckReport;
use crate::faults::FaultRecord;
use crate::workload::WorkloadStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Failover times over all faults, in ms.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FailoverStats {
    /// Faults with a measured failover.
    pub measured: usize,
    /// Faults after which no affected partition took an acknowledged write before the end.
    pub unrecovered: usize,
    /// Fastest.
    pub min_ms: Option<f64>,
    /// Median (nearest rank).
    pub p50_ms: Option<f64>,
    /// Slowest.
    pub max_ms: Option<f64>,
    /// Median of the time from the end of healing to that write.
    pub after_heal_p50_ms: Option<f64>,
    /// Slowest of those.
    pub after_heal_max_ms: Option<f64>,
}

impl FailoverStats {
    /// [`FailoverStats::of`] per kind of fault.
    pub fn by_kind(faults: &[FaultRecord]) -> BTreeMap<String, Self> {
        let mut kinds: BTreeMap<String, Vec<FaultRecord>> = BTreeMap::new();
        for f in faults {
            kinds
                .entry(f.kind.name().to_string())
                .or_default()
                .push(f.clone());
        }
        kinds.into_iter().map(|(k, v)| (k, Self::of(&v))).collect()
    }

    /// Summarises the faults' failover times. Faults that affected no partition of the
    /// workload topic (none of the nodes led one) have nothing to measure and are left out.
    pub fn of(faults: &[FaultRecord]) -> Self {
        let relevant: Vec<&FaultRecord> =
            faults.iter().filter(|f| !f.partitions.is_empty()).collect();
        let sorted = |f: fn(&FaultRecord) -> Option<f64>| {
            let mut v: Vec<f64> = relevant.iter().filter_map(|r| f(r)).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let times = sorted(|f| f.failover_ms);
        let after = sorted(|f| f.after_heal_ms);
        Self {
            measured: times.len(),
            unrecovered: relevant.len() - times.len(),
            min_ms: times.first().copied(),
            p50_ms: median(&times),
            max_ms: times.last().copied(),
            after_heal_p50_ms: median(&after),
            after_heal_max_ms: after.last().copied(),
        }
    }
}

/// The nearest-rank median of sorted values.
fn median(sorted: &[f64]) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[sorted.len().div_ceil(2) - 1])
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Passed: no violation, no problem.
    pub ok: bool,
    /// The seed (`--seed` reproduces the fault schedule).
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: u32,
    /// Image run.
    pub image: String,
    /// Wall time of the fault phase, seconds.
    pub duration_secs: f64,
    /// Workload topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: u32,
    /// Its replication factor.
    pub replication_factor: u32,
    /// Its `min.insync.replicas`.
    pub min_insync_replicas: u32,
    /// Faults injected, by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Every fault.
    pub faults: Vec<FaultRecord>,
    /// Failover times.
    pub failover: FailoverStats,
    /// Failover times per kind of fault: a leader that dies, hangs or is cut off is replaced
    /// by a survivor; a full restart has no survivor and measures the restart itself.
    pub failover_by_kind: BTreeMap<String, FailoverStats>,
    /// Workload counters.
    pub workload: WorkloadStats,
    /// Seconds the cluster took to settle after the final heal.
    pub settle_secs: Option<f64>,
    /// Problems found by the harness itself (each fails the run).
    pub problems: Vec<String>,
    /// The checker's verdict.
    pub check: CheckReport,
    /// Where the nodes' data (and container logs) were left, if kept.
    pub data_dir: Option<String>,
    /// A StatefulSet's rolling restart or upgrade, when that is what ran instead of faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutReport>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

impl RunReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.check;
        let w = &self.workload;
        let _ = writeln!(
            s,
            "cascade-chaos: {} — {} node(s), seed {}, {:.0}s of faults",
            if self.ok { "PASS" } else { "FAIL" },
            self.nodes,
            self.seed,
            self.duration_secs
        );
        let _ = writeln!(
            s,
            "  topic {}: {} partitions, RF {}, min.insync.replicas {}",
            self.topic, self.partitions, self.replication_factor, self.min_insync_replicas
        );
        if let Some(r) = &self.rollout {
            let _ = writeln!(
                s,
                "  rollout: {} pod turn(s), {} graceful; longest stop {:.0} ms, longest start-to-ready {:.0} ms",
                r.steps.len(),
                r.steps.iter().filter(|t| t.graceful).count(),
                r.steps.iter().map(|t| t.stop_ms).fold(0.0, f64::max),
                r.steps.iter().map(|t| t.ready_ms).fold(0.0, f64::max),
            );
            let per: Vec<String> = r
                .stall_ms
                .iter()
                .map(|(p, v)| format!("{p}: {v:.0}"))
                .collect();
            let _ = writeln!(
                s,
                "  longest time without an acknowledgement per partition while rolling: max {:.0} ms ({})",
                r.max_stall_ms(),
                per.join(", ")
            );
        } else {
            let kinds: Vec<String> = self
                .faults_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "  faults: {} ({})",
                self.faults.len(),
                if kinds.is_empty() {
                    "none".into()
                } else {
                    kinds.join(", ")
                }
            );
            let f = &self.failover;
            let _ = writeln!(
                s,
                "  failover (fault → first acks=all write to a partition the node led): min {} / p50 {} / max {} over {} fault(s){}",
                ms(f.min_ms),
                ms(f.p50_ms),
                ms(f.max_ms),
                f.measured,
                if f.unrecovered > 0 {
                    format!(", {} never recovered", f.unrecovered)
                } else {
                    String::new()
                }
            );
            for (kind, f) in &self.failover_by_kind {
                let _ = writeln!(
                    s,
                    "    {kind}: min {} / p50 {} / max {} over {}",
                    ms(f.min_ms),
                    ms(f.p50_ms),
                    ms(f.max_ms),
                    f.measured
                );
            }
            let _ = writeln!(
                s,
                "  after healing, the first such write came: p50 {} / max {}",
                ms(f.after_heal_p50_ms),
                ms(f.after_heal_max_ms)
            );
        }
        let _ = writeln!(
            s,
            "  produced: {} records sent, {} acknowledged, {} failed, {} unanswered ({} producer session(s), {} failed producer inits, {} sends skipped on a full partition backlog)",
            w.records_sent,
            c.acknowledged,
            w.records_failed,
            w.records_unknown,
            w.producer_sessions,
            w.producer_init_failures,
            w.backlog_full
        );
        let _ = writeln!(
            s,
            "  consumed: {} records, {} commits acknowledged, {} commits failed",
            w.records_consumed, w.commits_acked, w.commit_failures
        );
        let _ = writeln!(
            s,
            "  checked: {} records read back from {} partitions, {} replica logs read offline",
            c.records_read, c.partitions_checked, c.replica_logs
        );
        let _ = writeln!(
            s,
            "  unacknowledged records (failed or unanswered): {} stored, {} not stored (both allowed)",
            c.ambiguous_stored, c.ambiguous_absent
        );
        let _ = writeln!(
            s,
            "  lost: {}   read-then-lost: {} (of {} reads)   duplicates: {}   reordered: {}   violations: {}",
            c.lost,
            c.read_then_lost,
            c.reads_checked,
            c.duplicates,
            c.reordered,
            c.violation_total()
        );
        for (k, n) in &c.violation_counts {
            let _ = writeln!(s, "    {n} × {k:?}");
        }
        for v in c.violations.iter().take(20) {
            let _ = writeln!(
                s,
                "    {}/{}: {:?}: {}",
                v.topic, v.partition, v.kind, v.detail
            );
        }
        for p in &self.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        if !w.produce_errors.is_empty() {
            let _ = writeln!(s, "  produce errors seen:");
            let mut errors: Vec<(&String, &u64)> = w.produce_errors.iter().collect();
            errors.sort_by(|a, b| b.1.cmp(a.1));
            for (e, n) in errors.into_iter().take(8) {
                let _ = writeln!(s, "    {n} × {e}");
            }
        }
        if let Some(d) = &self.data_dir {
            let _ = writeln!(s, "  data and container logs kept in {d}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultKind;

    fn fault(partitions: Vec<u32>, failover_ms: Option<f64>) -> FaultRecord {
        FaultRecord {
            kind: FaultKind::PauseLeader,
            nodes: vec![1],
            partitions,
            start: 0,
            healed: 0,
            failover_ms,
            after_heal_ms: failover_ms.map(|f| f / 10.0),
            detail: None,
        }
    }

    #[test]
    fn failover_stats_take_min_median_max_and_count_the_unrecovered() {
        let faults = vec![
            fault(vec![0], Some(300.0)),
            fault(vec![1], Some(100.0)),
            fault(vec![2], Some(200.0)),
            fault(vec![3], Some(900.0)),
            fault(vec![4], None),
            fault(vec![], None), // hit no leader: nothing to measure
        ];
        let s = FailoverStats::of(&faults);
        assert_eq!(
            s,
            FailoverStats {
                measured: 4,
                unrecovered: 1,
                min_ms: Some(100.0),
                p50_ms: Some(200.0),
                max_ms: Some(900.0),
                after_heal_p50_ms: Some(20.0),
                after_heal_max_ms: Some(90.0),
            }
        );
        assert_eq!(FailoverStats::of(&[]), FailoverStats::default());
    }

    #[test]
    fn the_summary_shows_the_verdict_counts_failover_and_violations() {
        let mut check = CheckReport {
            acknowledged: 10,
            ..Default::default()
        };
        let faults = vec![fault(vec![0], Some(1500.0))];
        let mut report = RunReport {
            ok: true,
            seed: 3,
            nodes: 3,
            image: "cascade:latest".into(),
            duration_secs: 60.0,
            topic: "chaos".into(),
            partitions: 6,
            replication_factor: 3,
            min_insync_replicas: 2,
            faults_by_kind: [("pause_leader".to_string(), 1)].into(),
            failover: FailoverStats::of(&faults),
            failover_by_kind: FailoverStats::by_kind(&faults),
            faults,
            workload: WorkloadStats::default(),
            settle_secs: Some(1.0),
            problems: vec![],
            check: check.clone(),
            data_dir: None,
            rollout: None,
        };
        let s = report.summary();
        assert!(
            s.starts_with("cascade-chaos: PASS — 3 node(s), seed 3"),
            "{s}"
        );
        assert!(s.contains("faults: 1 (pause_leader 1)"), "{s}");
        assert!(
            s.contains("min 1500 ms / p50 1500 ms / max 1500 ms over 1 fault(s)"),
            "{s}"
        );
        assert!(
            s.contains("after healing, the first such write came: p50 150 ms"),
            "{s}"
        );
        assert!(
            s.contains(
                "lost: 0   read-then-lost: 0 (of 0 reads)   duplicates: 0   reordered: 0   violations: 0"
            ),
            "{s}"
        );

        check.lost = 1;
        check
            .violation_counts
            .insert(crate::checker::ViolationKind::Lost, 1);
        report.check = check;
        report.ok = false;
        report.problems.push("cluster did not settle".into());
        let s = report.summary();
        assert!(s.starts_with("cascade-chaos: FAIL"), "{s}");
        assert!(
            s.contains(
                "lost: 1   read-then-lost: 0 (of 0 reads)   duplicates: 0   reordered: 0   violations: 1"
            ),
            "{s}"
        );
        assert!(s.contains("1 × Lost"), "{s}");
        assert!(s.contains("problem: cluster did not settle"), "{s}");
    }
}
