//! What `top` shows at one moment, taken from the rebuild engine's analyses with the owners
//! named from their cgroups. Plain data: the screen draws it, `top --once` prints it.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    analysis::{failures::FailureGroup, headroom::HeadroomGauge, occupancy::Current},
    cgroups::Lookup,
    rebuild::Rebuild,
};

/// The most owners a view carries (busiest first): bounds a view's size on a host with
/// many short-lived processes.
pub const MAX_OWNERS: usize = 2000;
/// Destinations and failures a view carries.
pub const DESTINATIONS: usize = 20;
pub const FAILURES: usize = 20;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct View {
    /// When it was taken (monotonic ns), and seconds since tracing started.
    pub now_ns: u64,
    pub elapsed_s: f64,
    pub tier: Option<String>,
    /// Events shown (after the filters) and allocations among them.
    pub events: u64,
    pub allocations: u64,
    /// Events lost, by reason (every reason, 0 included).
    pub lost: Vec<Lost>,
    /// Ephemeral range occupancy, fullest first.
    pub ranges: Vec<RangeUse>,
    /// connect() destinations with the fewest ports left, fewest first.
    pub destinations: Vec<DestinationUse>,
    /// Allocations by owner (process and cgroup) since the start, most first.
    pub owners: Vec<Owner>,
    /// Owners past [`MAX_OWNERS`], and their allocations.
    pub owners_not_shown: u64,
    pub allocations_not_shown: u64,
    /// Allocation failures since the start, and the kinds that failed last, latest first.
    pub failures_total: u64,
    pub failures: Vec<FailureGroup>,
    /// Sockets holding ports now (those whose assignment was traced), and those of them
    /// in TIME_WAIT.
    pub sockets: u64,
    pub time_wait: u64,
    pub time_wait_share: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lost {
    pub reason: &'static str,
    pub events: u64,
}

/// Ports of one namespace's ephemeral range held now, for one local address or all.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RangeUse {
    pub netns: u32,
    pub proto: &'static str,
    /// None: all local addresses together (listed where there are several).
    pub laddr: Option<IpAddr>,
    pub ports: u32,
    /// Ports the kernel hands out (None: the range could not be read).
    pub size: Option<u32>,
    pub ratio: Option<f64>,
    pub peak: u32,
    pub peak_ratio: Option<f64>,
}

/// connect()'s ports towards one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestinationUse {
    pub netns: u32,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    pub left: u32,
    pub in_use: u32,
    pub size: u32,
}

/// Allocations of one process in one cgroup, with what the cgroup names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Its cgroup's path (None: not resolved).
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub unit: Option<String>,
    pub allocations: u64,
}

impl View {
    /// What `engine` has shown up to `now_ns`; `lost`: each reason's count; `names`: the
    /// owners' cgroups.
    pub fn of(
        engine: &Rebuild,
        now_ns: u64,
        tier: Option<&str>,
        lost: &[(&'static str, u64)],
        names: &mut Lookup,
    ) -> View {
        let stats = engine.stats();
        let tally = &stats.tally;
        let analysis = &stats.analysis;
        let (owners, owners_not_shown, allocations_not_shown) =
            owners(analysis.churn.per_owner(), names);
        let sockets: u64 = tally.live.iter().map(|&(_, n)| n).sum();
        let time_wait = tally.time_wait_now.min(sockets);
        View {
            now_ns,
            elapsed_s: now_ns.saturating_sub(engine.start_ns()) as f64 / 1e9,
            tier: tier.map(str::to_string),
            events: tally.counts.events,
            allocations: tally.counts.allocations,
            lost: lost
                .iter()
                .map(|&(reason, events)| Lost { reason, events })
                .collect(),
            ranges: ranges(analysis.occupancy.current()),
            destinations: analysis
                .headroom
                .closest(DESTINATIONS)
                .into_iter()
                .map(DestinationUse::from)
                .collect(),
            owners,
            owners_not_shown,
            allocations_not_shown,
            failures_total: tally.counts.alloc_failure,
            failures: analysis.failures.latest(FAILURES),
            sockets,
            time_wait,
            time_wait_share: (sockets > 0).then(|| time_wait as f64 / sockets as f64),
        }
    }

    /// Events lost, all reasons together.
    pub fn lost_total(&self) -> u64 {
        self.lost.iter().map(|l| l.events).sum()
    }
}

impl From<HeadroomGauge> for DestinationUse {
    fn from(g: HeadroomGauge) -> Self {
        DestinationUse {
            netns: g.netns,
            laddr: g.laddr,
            raddr: g.raddr,
            rport: g.rport,
            left: g.ports,
            in_use: g.in_use,
            size: g.size,
        }
    }
}

/// Every address's occupancy, and all addresses' where a namespace and protocol have
/// several; fullest first.
fn ranges(current: impl Iterator<Item = Current>) -> Vec<RangeUse> {
    let all: Vec<Current> = current.collect();
    let addresses = |c: &Current| {
        all.iter()
            .filter(|o| o.laddr.is_some() && (o.netns, o.proto) == (c.netns, c.proto))
            .count()
    };
    let ratio =
        |n: u32, size: Option<u32>| size.filter(|&s| s > 0).map(|s| f64::from(n) / f64::from(s));
    let mut out: Vec<RangeUse> = all
        .iter()
        // An address that never held a port (a failed bind's) says nothing.
        .filter(|c| c.peak > 0 && (c.laddr.is_some() || addresses(c) > 1))
        .map(|c| RangeUse {
            netns: c.netns,
            proto: c.proto.as_str(),
            laddr: c.laddr,
            ports: c.ports,
            size: c.range_size,
            ratio: ratio(c.ports, c.range_size),
            peak: c.peak,
            peak_ratio: ratio(c.peak, c.range_size),
        })
        .collect();
    out.sort_by(|a, b| {
        let r = |u: &RangeUse| u.ratio.unwrap_or(-1.0);
        r(b).total_cmp(&r(a))
            .then(b.ports.cmp(&a.ports))
            .then((a.netns, a.proto, a.laddr).cmp(&(b.netns, b.proto, b.laddr)))
    });
    out
}

/// Allocations per owner named, busiest first, at most [`MAX_OWNERS`]; with the owners
/// and allocations left out.
fn owners(
    per_owner: Vec<(u32, crate::event::Comm, u64, u64)>,
    names: &mut Lookup,
) -> (Vec<Owner>, u64, u64) {
    let mut all: Vec<(u32, crate::event::Comm, u64, u64)> = per_owner;
    all.sort_unstable_by(|a, b| b.3.cmp(&a.3).then((a.0, a.1, a.2).cmp(&(b.0, b.1, b.2))));
    let not_shown = all.len().saturating_sub(MAX_OWNERS) as u64;
    let allocations_not_shown = all.iter().skip(MAX_OWNERS).map(|o| o.3).sum();
    all.truncate(MAX_OWNERS);
    let owners = all
        .into_iter()
        .map(|(pid, comm, cgroup_id, allocations)| {
            let mut o = Owner {
                pid,
                comm: comm.as_str().into_owned(),
                cgroup_id,
                allocations,
                ..Owner::default()
            };
            if let Some(cg) = names.get(cgroup_id) {
                o.cgroup = Some(cg.path.clone());
                o.container_id = cg.naming.container_id.clone();
                o.pod_uid = cg.naming.pod_uid.clone();
                o.unit = cg.naming.unit.clone();
                o.container_name = cg.runtime.container_name.clone();
                o.pod_name = cg.runtime.pod_name.clone();
                o.pod_namespace = cg.runtime.pod_namespace.clone();
            }
            o
        })
        .collect();
    (owners, not_shown, allocations_not_shown)
}
