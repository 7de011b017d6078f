//! Partition assignors: who gets which partitions, as a pure function of the members (sorted
//! by id, so every coordinator computes the same answer) and the partition counts.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tp {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
}

impl Tp {
    /// A topic partition.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// The assignment strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions to the subscribed members in order; the first
    /// `count % members` members get one extra (Kafka's RangeAssignor).
    #[default]
    Range,
    /// All subscribed partitions in (topic, partition) order, dealt one by one to the members
    /// subscribed to each (Kafka's RoundRobinAssignor).
    RoundRobin,
}

impl Assignor {
    /// Parses a name; empty means the default.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "" | "range" => Some(Self::Range),
            "roundrobin" | "round-robin" | "round_robin" => Some(Self::RoundRobin),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
        }
    }

    /// Assigns the partitions of the subscribed topics (`counts`: topic → partition count;
    /// topics missing from it are skipped) to `members` (id → subscribed topics).
    pub fn assign(
        self,
        members: &BTreeMap<String, Vec<String>>,
        counts: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, BTreeSet<Tp>> {
        let mut out: BTreeMap<String, BTreeSet<Tp>> = members
            .keys()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        let subscribers = |topic: &str| -> Vec<&String> {
            members
                .iter()
                .filter(|(_, topics)| topics.iter().any(|t| t == topic))
                .map(|(m, _)| m)
                .collect()
        };
        match self {
            Self::Range => {
                for (topic, &count) in counts {
                    let subs = subscribers(topic);
                    if subs.is_empty() {
                        continue;
                    }
                    let n = subs.len() as u32;
                    let (per, extra) = (count / n, count % n);
                    let mut next = 0;
                    for (i, m) in subs.iter().enumerate() {
                        let take = per + u32::from((i as u32) < extra);
                        let set = out.get_mut(*m).expect("member");
                        for p in next..next + take {
                            set.insert(Tp::new(topic.clone(), p));
                        }
                        next += take;
                    }
                }
            }
            Self::RoundRobin => {
                let ids: Vec<&String> = members.keys().collect();
                let mut cursor = 0usize;
                for (topic, &count) in counts {
                    for p in 0..count {
                        // The next member in the cycle that subscribes to this topic.
                        for step in 0..ids.len() {
                            let m = ids[(cursor + step) % ids.len()];
                            if members[m].iter().any(|t| t == topic) {
                                out.get_mut(m)
                                    .expect("member")
                                    .insert(Tp::new(topic.clone(), p));
                                cursor = (cursor + step + 1) % ids.len();
                                break;
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn names(set: &BTreeSet<Tp>) -> Vec<String> {
        set.iter()
            .map(|tp| format!("{}{}", tp.topic, tp.partition))
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_extra_first() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let counts = BTreeMap::from([("t".to_string(), 7)]);
        let out = Assignor::Range.assign(&m, &counts);
        assert_eq!(names(&out["a"]), ["t0", "t1", "t2"]);
        assert_eq!(names(&out["b"]), ["t3", "t4"]);
        assert_eq!(names(&out["c"]), ["t5", "t6"]);
    }

    #[test]
    fn round_robin_deals_over_subscribers_only() {
        let m = members(&[("a", &["t", "u"]), ("b", &["t"])]);
        let counts = BTreeMap::from([("t".to_string(), 3), ("u".to_string(), 2)]);
        let out = Assignor::RoundRobin.assign(&m, &counts);
        assert_eq!(names(&out["a"]), ["t0", "t2", "u0", "u1"]);
        assert_eq!(names(&out["b"]), ["t1"]);
    }

    #[test]
    fn every_partition_exactly_once() {
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let m = members(&[("a", &["t", "u"]), ("b", &["t", "u"]), ("c", &["u"])]);
            let counts = BTreeMap::from([("t".to_string(), 5), ("u".to_string(), 4)]);
            let out = assignor.assign(&m, &counts);
            let mut all: Vec<Tp> = out.values().flatten().cloned().collect();
            all.sort();
            let len = all.len();
            all.dedup();
            assert_eq!((len, all.len()), (9, 9), "{assignor:?}");
        }
    }
}
