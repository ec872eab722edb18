//! Churn: how fast ports are handed out, and to whom.

use std::collections::BTreeMap;

use foldhash::HashMap;
use serde::Serialize;

use crate::event::{Comm, Event, Origin};

use super::Span;

/// Allocations counted by who made them and how.
#[derive(Clone, Debug, Default)]
pub struct Churn {
    total: u64,
    by_process: HashMap<(u32, Comm), u64>,
    by_cgroup: HashMap<u64, u64>,
    by_netns: HashMap<u32, u64>,
    by_proto: BTreeMap<&'static str, u64>,
    by_origin: BTreeMap<Origin, u64>,
    /// Allocations per whole second of the monotonic clock: the busiest one is the peak.
    per_second: HashMap<u64, u64>,
}

/// Allocations of one kind of thing (a protocol, an origin, a netns, a cgroup).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Count {
    pub key: String,
    pub allocations: u64,
    /// Average over the trace's span; None when the span is empty.
    pub per_second: Option<f64>,
}

/// Allocations of one process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessCount {
    pub pid: u32,
    pub comm: String,
    pub allocations: u64,
    pub per_second: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChurnReport {
    pub allocations: u64,
    pub per_second: Option<f64>,
    /// The busiest second: its allocations and when it began (monotonic ns).
    pub peak_per_second: u64,
    pub peak_second_ns: Option<u64>,
    pub by_proto: Vec<Count>,
    pub by_origin: Vec<Count>,
    pub by_netns: Vec<Count>,
    pub by_cgroup: Vec<Count>,
    /// The busiest processes, most allocations first.
    pub by_process: Vec<ProcessCount>,
}

impl Churn {
    /// Counts an assignment that took a port from the kernel.
    pub fn allocation(&mut self, ev: &Event) {
        self.total += 1;
        *self
            .by_process
            .entry((ev.task.pid, ev.task.comm))
            .or_default() += 1;
        *self.by_cgroup.entry(ev.task.cgroup_id).or_default() += 1;
        *self.by_netns.entry(ev.ends.netns).or_default() += 1;
        *self.by_proto.entry(ev.ends.proto.as_str()).or_default() += 1;
        *self.by_origin.entry(ev.origin).or_default() += 1;
        *self.per_second.entry(ev.ts_ns / 1_000_000_000).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Rates over `span`; at most `top` entries per process and per cgroup.
    pub fn report(&self, span: Span, top: usize) -> ChurnReport {
        let rate = |n: u64| span.rate(n);
        let counts = |it: Vec<(String, u64)>, limit: usize| -> Vec<Count> {
            let mut v: Vec<Count> = it
                .into_iter()
                .map(|(key, allocations)| Count {
                    key,
                    allocations,
                    per_second: rate(allocations),
                })
                .collect();
            v.sort_by(|a, b| b.allocations.cmp(&a.allocations).then(a.key.cmp(&b.key)));
            v.truncate(limit);
            v
        };
        let mut by_process: Vec<ProcessCount> = self
            .by_process
            .iter()
            .map(|(&(pid, comm), &allocations)| ProcessCount {
                pid,
                comm: comm.as_str().into_owned(),
                allocations,
                per_second: rate(allocations),
            })
            .collect();
        by_process.sort_by(|a, b| b.allocations.cmp(&a.allocations).then(a.pid.cmp(&b.pid)));
        by_process.truncate(top);
        let peak = self
            .per_second
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
        ChurnReport {
            allocations: self.total,
            per_second: rate(self.total),
            peak_per_second: peak.map_or(0, |(_, &n)| n),
            peak_second_ns: peak.map(|(&s, _)| s * 1_000_000_000),
            by_proto: counts(
                self.by_proto
                    .iter()
                    .map(|(k, &n)| (k.to_string(), n))
                    .collect(),
                usize::MAX,
            ),
            by_origin: counts(
                self.by_origin
                    .iter()
                    .map(|(k, &n)| (k.as_str().to_string(), n))
                    .collect(),
                usize::MAX,
            ),
            by_netns: counts(
                self.by_netns
                    .iter()
                    .map(|(k, &n)| (k.to_string(), n))
                    .collect(),
                top,
            ),
            by_cgroup: counts(
                self.by_cgroup
                    .iter()
                    .map(|(k, &n)| (k.to_string(), n))
                    .collect(),
                top,
            ),
            by_process,
        }
    }
}
