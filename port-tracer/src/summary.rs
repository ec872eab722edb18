//! What a run amounts to: counts over the outputs (after filtering), the tracker's
//! work-arounds and the kernel's lost-event counters.

use std::collections::BTreeMap;

use foldhash::HashMap;

use serde::Serialize;

use crate::{
    event::{Comm, Kind},
    lifetime::{Counters, Output},
};

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

/// Counts by power-of-two buckets: bucket i holds values in [2^(i-1), 2^i).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Histogram(pub [u64; 64]);

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram([0; 64])
    }
}

impl Log2Histogram {
    pub fn add(&mut self, v: u64) {
        self.0[(64 - v.leading_zeros() as usize).min(63)] += 1;
    }

    /// Non-empty buckets.
    pub fn buckets(&self) -> Vec<Bucket> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &count)| Bucket {
                lt_ns: 1u64.checked_shl(i as u32).unwrap_or(u64::MAX),
                count,
            })
            .collect()
    }
}

/// Counts over what was shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub events: u64,
    pub assign: u64,
    pub remote_update: u64,
    pub release: u64,
    pub time_wait: u64,
    pub alloc_failure: u64,
    /// Assignments that took a port from the kernel (all origins but inherited).
    pub allocations: u64,
    pub lifetimes_ended: u64,
    pub lifetimes_open: u64,
    #[serde(skip)]
    pub allocations_by_task: HashMap<(u32, Comm), u64>,
    #[serde(skip)]
    pub durations: Log2Histogram,
    #[serde(skip)]
    pub time_waits: Log2Histogram,
}

impl Stats {
    pub fn observe(&mut self, o: &Output) {
        match o {
            Output::Event(ev) => {
                self.events += 1;
                match ev.kind {
                    Kind::Assign => {
                        self.assign += 1;
                        if ev.origin.is_allocation() {
                            self.allocations += 1;
                            *self
                                .allocations_by_task
                                .entry((ev.task.pid, ev.task.comm))
                                .or_default() += 1;
                        }
                    }
                    Kind::RemoteUpdate => self.remote_update += 1,
                    Kind::Release => self.release += 1,
                    Kind::TimeWait => self.time_wait += 1,
                    Kind::AllocFailure => self.alloc_failure += 1,
                }
            }
            Output::Lifetime(lt) => match lt.released_ns {
                Some(_) => {
                    self.lifetimes_ended += 1;
                    if let Some(d) = lt.duration_ns() {
                        self.durations.add(d);
                    }
                    if let Some(tw) = lt.time_wait_ns() {
                        self.time_waits.add(tw);
                    }
                }
                None => self.lifetimes_open += 1,
            },
        }
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
    #[serde(rename = "counters")]
    pub stats: Stats,
    /// Signs of events the tracker never saw (over all sockets, not only those shown).
    pub tracker: Counters,
    pub lost: Lost,
    pub top_processes: Vec<TopTask>,
    pub lifetime_histogram: Vec<Bucket>,
    pub time_wait_histogram: Vec<Bucket>,
}

impl Summary {
    pub fn new(stats: &Stats, tracker: &Counters, lost: Lost, top: usize) -> Self {
        let mut tasks: Vec<TopTask> = stats
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
            stats: stats.clone(),
            tracker: tracker.clone(),
            lost,
            top_processes: tasks,
            lifetime_histogram: stats.durations.buckets(),
            time_wait_histogram: stats.time_waits.buckets(),
        }
    }
}
