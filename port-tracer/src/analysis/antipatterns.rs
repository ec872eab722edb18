//! Known ways of burning ports, named with the processes that do them.

use foldhash::HashMap;
use serde::Serialize;

use crate::{
    cgroups::Lookup,
    event::{Comm, Origin, Proto},
    lifetime::Lifetime,
};

use super::{containers, headroom::DestinationReport, occupancy::GroupReport};

/// One anti-pattern seen in one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier, e.g. `bind_before_connect`.
    pub pattern: &'static str,
    pub pid: u32,
    pub comm: String,
    /// TIME_WAIT sockets no process holds (found at start): pid 0, comm "".
    pub no_process: bool,
    /// The process's container, or its host unit (None where its cgroup names none or is
    /// not known): named at the end of the run (see [`Finding::name_container`]).
    pub container_id: Option<String>,
    pub unit: Option<String>,
    /// The process's cgroup id (0: none known).
    #[serde(skip)]
    pub cgroup_id: u64,
    /// How many lifetimes showed it.
    pub count: u64,
    /// What it costs and what to do instead.
    pub advice: &'static str,
}

const BIND_BEFORE_CONNECT: &str = "bind_before_connect";
const BIND_BEFORE_CONNECT_ADVICE: &str = "bind() to port 0 before connect() takes the port \
    from the bind path, where it cannot be shared with connections to other destinations: \
    each such port counts against every destination's connect headroom; set \
    IP_BIND_ADDRESS_NO_PORT before bind() so connect() picks the port";
const TIME_WAIT_BOUND: &str = "time_wait_bound_range";
const TIME_WAIT_BOUND_ADVICE: &str = "most of the range's ports at its peak (or of a \
    destination's, at its fewest left) were in TIME_WAIT: this process closes first (active close) at a high rate; reuse connections \
    (keep-alive, pooling), let the peer close first, or enable net.ipv4.tcp_tw_reuse for \
    outgoing connections";

/// A range this full at its peak, mostly in TIME_WAIT, is reported.
const TIME_WAIT_BOUND_RATIO: f64 = 0.5;

impl Finding {
    /// Names its container or unit from its cgroup id, through the run's table `names`.
    pub fn name_container(&mut self, names: &mut Lookup) {
        (self.container_id, self.unit) = containers::container_and_unit(names, self.cgroup_id);
    }
}

#[derive(Clone, Debug, Default)]
pub struct AntiPatterns {
    /// Per process: its lifetimes that showed it, and the cgroup id of the first.
    bind_before_connect: HashMap<(u32, Comm), (u64, u64)>,
}

impl AntiPatterns {
    pub fn ended(&mut self, lt: &Lifetime) {
        // A TCP port from bind(0) that then connected: with IP_BIND_ADDRESS_NO_PORT the
        // kernel would have assigned it at connect (origin `connect`).
        if lt.ends.proto == Proto::Tcp && lt.origin == Origin::BindEphemeral && lt.ends.rport != 0 {
            self.bind_before_connect
                .entry((lt.owner.pid, lt.owner.comm))
                .or_insert((0, lt.owner.cgroup_id))
                .0 += 1;
        }
    }

    /// Findings, most frequent first; `occupancy` and `destinations` name the processes
    /// holding ranges, or a destination's share of one, that were filled mostly by
    /// TIME_WAIT.
    pub fn report(
        &self,
        occupancy: &[GroupReport],
        destinations: &[DestinationReport],
    ) -> Vec<Finding> {
        let mut out: Vec<Finding> = self
            .bind_before_connect
            .iter()
            .map(|(&(pid, comm), &(count, cgroup_id))| Finding {
                pattern: BIND_BEFORE_CONNECT,
                pid,
                comm: comm.as_str().into_owned(),
                no_process: false,
                container_id: None,
                unit: None,
                cgroup_id,
                count,
                advice: BIND_BEFORE_CONNECT_ADVICE,
            })
            .collect();
        let bound = |full: Option<f64>, time_wait: Option<f64>| {
            full.is_some_and(|r| r >= TIME_WAIT_BOUND_RATIO)
                && time_wait.is_some_and(|s| s >= TIME_WAIT_BOUND_RATIO)
        };
        let mut time_wait_bound =
            |pid: u32, comm: &str, no_process: bool, sockets: u32, cgroup_id: u64| {
                let seen = out.iter().any(|f| {
                    f.pattern == TIME_WAIT_BOUND
                        && (f.pid, f.comm.as_str(), f.no_process) == (pid, comm, no_process)
                });
                if !seen {
                    out.push(Finding {
                        pattern: TIME_WAIT_BOUND,
                        pid,
                        comm: comm.to_string(),
                        no_process,
                        container_id: None,
                        unit: None,
                        cgroup_id,
                        count: sockets.into(),
                        advice: TIME_WAIT_BOUND_ADVICE,
                    });
                }
            };
        for g in occupancy {
            if bound(g.peak_ratio, g.time_wait_share_at_peak) {
                for h in &g.top_holders_at_peak {
                    time_wait_bound(h.pid, &h.comm, h.no_process, h.sockets, h.cgroup_id);
                }
            }
        }
        // One destination can run out while the range does not.
        for d in destinations {
            let used = d.range_size.saturating_sub(d.min_headroom);
            let full = (d.range_size > 0).then(|| f64::from(used) / f64::from(d.range_size));
            if bound(full, d.time_wait_share_at_min) {
                for h in &d.top_holders_at_min {
                    time_wait_bound(h.pid, &h.comm, h.no_process, h.sockets, h.cgroup_id);
                }
            }
        }
        // Ties in a total order: the maps iterate in a random one.
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (a.pid, &a.comm, a.pattern).cmp(&(b.pid, &b.comm, b.pattern)))
                .then(a.no_process.cmp(&b.no_process))
        });
        out
    }
}
