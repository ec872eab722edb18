//! Churn: how fast ports are handed out, and to whom.

use foldhash::HashMap;
use serde::Serialize;

use crate::{
    cgroups::{Lookup, RuntimeNames},
    event::{Comm, Event, Origin, Proto},
};

use super::{containers, Span};

/// Who made an allocation and how: every dimension churn is reported by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Cell {
    pid: u32,
    comm: Comm,
    cgroup: u64,
    netns: u32,
    proto: Proto,
    origin: Origin,
}

/// Allocations counted by who made them and how. One count per distinct `Cell`, summed
/// per dimension only for the report: one table update per allocation (none when it
/// repeats the last cell, as storms do), not one per dimension.
#[derive(Clone, Debug, Default)]
pub struct Churn {
    total: u64,
    cells: Vec<(Cell, u64)>,
    index: HashMap<Cell, usize>,
    last: Option<(Cell, usize)>,
    /// The second being counted (monotonic clock) and its allocations so far.
    second: (u64, u64),
    /// The busiest second before it.
    peak: (u64, u64),
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
    /// The busiest containers and units, most allocations first (see
    /// [`ChurnReport::group_by_container`]; empty until then).
    pub by_container: Vec<ContainerCount>,
    /// Allocations per cgroup id, all of them: what `by_container` is grouped from.
    #[serde(skip)]
    pub per_cgroup: Vec<(u64, u64)>,
}

/// Allocations of one container (with its pod), or of one host unit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerCount {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub unit: Option<String>,
    /// The names the runtime's state gave, if any.
    #[serde(flatten)]
    pub names: RuntimeNames,
    pub allocations: u64,
    pub per_second: Option<f64>,
}

impl ChurnReport {
    /// Groups the allocations by the container (or, on the host, the systemd unit) that
    /// each cgroup id names in `names`, the `top` busiest over `span`; cgroups that name
    /// neither are left out.
    pub fn group_by_container(&mut self, names: &mut Lookup, span: Span, top: usize) {
        self.by_container = containers::grouped(names, self.per_cgroup.iter().copied(), top)
            .into_iter()
            .map(|(w, allocations)| ContainerCount {
                container_id: w.container_id,
                pod_uid: w.pod_uid,
                unit: w.unit,
                names: w.names,
                allocations,
                per_second: span.rate(allocations),
            })
            .collect();
    }
}

impl Churn {
    /// Counts an assignment that took a port from the kernel.
    pub fn allocation(&mut self, ev: &Event) {
        self.total += 1;
        let cell = Cell {
            pid: ev.task.pid,
            comm: ev.task.comm,
            cgroup: ev.task.cgroup_id,
            netns: ev.ends.netns,
            proto: ev.ends.proto,
            origin: ev.origin,
        };
        let i = match self.last {
            Some((c, i)) if c == cell => i,
            _ => {
                let i = *self.index.entry(cell).or_insert_with(|| {
                    self.cells.push((cell, 0));
                    self.cells.len() - 1
                });
                self.last = Some((cell, i));
                i
            }
        };
        self.cells[i].1 += 1;
        let second = ev.ts_ns / 1_000_000_000;
        if second == self.second.0 {
            self.second.1 += 1;
        } else {
            self.peak = self.busiest();
            self.second = (second, 1);
        }
    }

    /// The busiest second so far: (second, allocations).
    fn busiest(&self) -> (u64, u64) {
        if self.second.1 > self.peak.1 {
            self.second
        } else {
            self.peak
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Allocations per (cgroup id, protocol, origin).
    pub fn per_cgroup_origin(&self) -> Vec<((u64, Proto, Origin), u64)> {
        self.by(|c| (c.cgroup, c.proto, c.origin))
            .into_iter()
            .collect()
    }

    /// Allocations per owner: (pid, comm, cgroup id) and their count, in no order.
    pub fn per_owner(&self) -> Vec<(u32, Comm, u64, u64)> {
        self.by(|c| (c.pid, c.comm, c.cgroup))
            .into_iter()
            .map(|((pid, comm, cgroup), n)| (pid, comm, cgroup, n))
            .collect()
    }

    /// Allocations summed by `key`.
    fn by<K: std::hash::Hash + Eq>(&self, key: impl Fn(&Cell) -> K) -> HashMap<K, u64> {
        let mut out: HashMap<K, u64> = HashMap::default();
        for (cell, n) in &self.cells {
            *out.entry(key(cell)).or_default() += n;
        }
        out
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
            .by(|c| (c.pid, c.comm))
            .into_iter()
            .map(|((pid, comm), allocations)| ProcessCount {
                pid,
                comm: comm.as_str().into_owned(),
                allocations,
                per_second: rate(allocations),
            })
            .collect();
        // Ties in a total order: the map iterates in a random one.
        by_process.sort_by(|a, b| {
            b.allocations
                .cmp(&a.allocations)
                .then_with(|| (a.pid, &a.comm).cmp(&(b.pid, &b.comm)))
        });
        by_process.truncate(top);
        let (peak_second, peak_count) = self.busiest();
        ChurnReport {
            allocations: self.total,
            per_second: rate(self.total),
            peak_per_second: peak_count,
            peak_second_ns: (peak_count > 0).then_some(peak_second * 1_000_000_000),
            by_proto: counts(
                self.by(|c| c.proto.as_str().to_string())
                    .into_iter()
                    .collect(),
                usize::MAX,
            ),
            by_origin: counts(
                self.by(|c| c.origin.as_str().to_string())
                    .into_iter()
                    .collect(),
                usize::MAX,
            ),
            by_netns: counts(self.by(|c| c.netns.to_string()).into_iter().collect(), top),
            by_cgroup: counts(self.by(|c| c.cgroup.to_string()).into_iter().collect(), top),
            by_process,
            by_container: Vec::new(),
            per_cgroup: {
                let mut v: Vec<(u64, u64)> = self.by(|c| c.cgroup).into_iter().collect();
                v.sort_unstable();
                v
            },
        }
    }
}
