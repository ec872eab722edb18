//! The end-of-run summary, computed from the tracker's counts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::lifetime::{Counters, Log2Histogram, Tracker};

/// Events the kernel side could not deliver, by reason (see `port_tracer_common::lost`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Ring buffer records userspace could not decode.
    pub undecodable: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum::<u64>() + self.undecodable
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TopTask {
    pub pid: u32,
    pub comm: String,
    pub allocations: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Bucket {
    /// Upper bound of the bucket (exclusive), in ns: a power of two.
    pub lt_ns: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub counters: Counters,
    pub open_lifetimes: u64,
    pub lost: Lost,
    pub top_processes: Vec<TopTask>,
    pub lifetime_histogram: Vec<Bucket>,
    pub time_wait_histogram: Vec<Bucket>,
}

fn buckets(h: &Log2Histogram) -> Vec<Bucket> {
    h.0.iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &count)| Bucket { lt_ns: 1u64.checked_shl(i as u32).unwrap_or(u64::MAX), count })
        .collect()
}

impl Summary {
    /// `open_lifetimes`: how many were still open at the end (emitted unreleased).
    pub fn new(tracker: &Tracker, open_lifetimes: u64, lost: Lost, top: usize) -> Self {
        let mut tasks: Vec<TopTask> = tracker
            .allocations_by_task
            .iter()
            .map(|(&(pid, comm), &allocations)| TopTask {
                pid,
                comm: comm.as_str().into_owned(),
                allocations,
            })
            .collect();
        tasks.sort_by(|a, b| b.allocations.cmp(&a.allocations).then(a.pid.cmp(&b.pid)));
        tasks.truncate(top);
        Summary {
            counters: tracker.counters.clone(),
            open_lifetimes,
            lost,
            top_processes: tasks,
            lifetime_histogram: buckets(&tracker.durations),
            time_wait_histogram: buckets(&tracker.time_waits),
        }
    }
}
