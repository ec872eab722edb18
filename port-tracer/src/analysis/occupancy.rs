//! Ephemeral range occupancy: how many distinct ports of a namespace's range were held at
//! once, per (netns, protocol, local address) and over all local addresses; when the peak
//! was, who held the ports then and how much of them sat in TIME_WAIT.
//!
//! The level changes at each assignment and release, in timestamp order. Who held what at
//! the peak is only known when those lifetimes end: every lifetime that spans the final
//! peak ends after it, so counting the lifetimes that span the peak current at their end
//! (and starting over when a higher peak comes) counts exactly the final peak's holders.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};
use serde::Serialize;

use crate::{
    cgroups::Lookup,
    event::{Comm, Event, Origin, Proto},
    lifetime::{HeldAtStart, Lifetime, Links},
    port_range::PortRange,
};

use super::{
    containers::{self, ContainerSockets, MostOf},
    ports::PortMap,
    timeline::{Series, Timeline},
    Span,
};

/// Width of the timelines' buckets before they coarsen.
const TIMELINE_NS: u64 = 1_000_000_000;

/// Ports held in one namespace, protocol and local address (`None`: all addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct GroupKey {
    netns: u32,
    proto: Proto,
    laddr: Option<IpAddr>,
}

/// Who holds sockets at a peak: a process, or no process (TIME_WAIT sockets whose owner is
/// unknown: those found at start, which no process holds); and its cgroup id, for the
/// containers at the peak (one key, so no second table update per socket).
type Holder = (u32, Comm, bool, u64);

#[derive(Clone, Debug, Default)]
struct AtPeak {
    sockets: u32,
    time_wait: u32,
    by_process: HashMap<Holder, u32>,
}

#[derive(Clone, Debug)]
struct Group {
    key: GroupKey,
    /// The namespace's range when the group began; `None`: unknown, every port counts.
    range: Option<PortRange>,
    /// Its size (see [`PortRange::size`]).
    size: Option<u32>,
    /// Sockets holding each port (several can share one).
    ports: PortMap<u32>,
    /// Distinct ports held that count (in the range, when known).
    level: u32,
    peak: u32,
    peak_ns: Option<u64>,
    at_peak: AtPeak,
    port_time_ns: u128,
    time_wait_ns: u128,
    timeline: Timeline,
}

impl Group {
    fn counts(&self, port: u16) -> bool {
        self.range.as_ref().is_none_or(|r| r.contains(port))
    }

    fn hold(&mut self, port: u16, ts: u64) {
        let n = self.ports.update(port, |n| n + 1);
        if n == 1 && self.counts(port) {
            self.level += 1;
            self.timeline.set(ts, self.level);
            if self.level > self.peak {
                self.peak = self.level;
                self.peak_ns = Some(ts);
                self.at_peak = AtPeak::default();
            }
        }
    }

    /// The namespace's range, read only now (it could not be read when the group began):
    /// the ports held now are counted again within it, and the peak is measured from here.
    fn adopt(&mut self, range: PortRange, now_ns: u64) {
        self.size = Some(range.size());
        self.range = Some(range);
        self.level = self.ports.iter().filter(|&(p, _)| self.counts(p)).count() as u32;
        self.peak = self.level;
        self.peak_ns = (self.level > 0).then_some(now_ns);
        self.at_peak = AtPeak::default();
        self.timeline.set(now_ns, self.level);
    }

    fn unhold(&mut self, port: u16, ts: u64) {
        if self.ports.get(port) == 0 {
            return;
        }
        if self.ports.update(port, |n| n - 1) == 0 && self.counts(port) {
            self.level -= 1;
            self.timeline.set(ts, self.level);
        }
    }

    /// A lifetime of a port in this group ended at `end_ns` (or was cut off then, still
    /// open: at the end of the run, or evicted).
    fn ended(&mut self, lt: &Lifetime, start_ns: u64, end_ns: u64) {
        if !self.counts(lt.ends.lport) {
            return;
        }
        if let Some(p) = self.peak_ns {
            let spans_peak =
                lt.assigned_ns().is_none_or(|a| a <= p) && lt.released_ns().is_none_or(|r| r > p);
            if spans_peak {
                self.at_peak.sockets += 1;
                let time_wait = lt.time_wait_start_ns().is_some_and(|t| t <= p);
                if time_wait {
                    self.at_peak.time_wait += 1;
                }
                let no_process = time_wait && !lt.owner.is_known();
                *self
                    .at_peak
                    .by_process
                    .entry((lt.owner.pid, lt.owner.comm, no_process, lt.owner.cgroup_id))
                    .or_default() += 1;
            }
        }
        let assigned = lt.assigned_ns().unwrap_or(start_ns);
        self.port_time_ns += u128::from(end_ns.saturating_sub(assigned));
        if let Some(t) = lt.time_wait_start_ns() {
            // Held at start in TIME_WAIT: seen there just before the start.
            self.time_wait_ns += u128::from(end_ns.saturating_sub(t.max(assigned)));
        }
    }
}

/// Occupancy of every namespace's ranges, fed assignments and ended lifetimes in order.
#[derive(Clone, Debug, Default)]
pub struct Occupancy {
    ranges: HashMap<u32, PortRange>,
    groups: Vec<Group>,
    group_of: HashMap<GroupKey, u32>,
    /// The last address's groups (specific, all addresses): most events repeat it.
    last: Option<(GroupKey, [u32; 2])>,
    start_ns: u64,
    now_ns: u64,
}

/// Ports of a range held now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub netns: u32,
    pub proto: Proto,
    /// `None`: all local addresses together.
    pub laddr: Option<IpAddr>,
    /// Distinct ports held (in the range, when known).
    pub ports: u32,
    pub range_size: Option<u32>,
    /// Most ports held at once so far (since the range became known, if later).
    pub peak: u32,
}

/// One process's sockets at a peak.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeakHolder {
    pub pid: u32,
    pub comm: String,
    pub sockets: u32,
    /// TIME_WAIT sockets that no process holds (found in TIME_WAIT at start, so no process
    /// is known): pid 0, comm "".
    pub no_process: bool,
    /// The cgroup most of them were in (0: none known), for what is reported about it.
    #[serde(skip)]
    pub cgroup_id: u64,
}

/// The ephemeral range of one group, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RangeSize {
    pub low: u16,
    pub high: u16,
    /// Ports the kernel hands out: the range minus reserved ports.
    pub size: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupReport {
    pub netns: u32,
    pub proto: &'static str,
    /// `None`: all local addresses of this namespace and protocol together.
    pub laddr: Option<IpAddr>,
    /// `None` when the namespace's range could not be read: then every port counts.
    pub range: Option<RangeSize>,
    /// Most distinct ports held at once (in the range, when known).
    pub peak_ports: u32,
    pub peak_ns: Option<u64>,
    /// `peak_ports` / range size.
    pub peak_ratio: Option<f64>,
    pub ports_held_at_end: u32,
    /// Sockets holding those ports at the peak (several can share a port).
    pub sockets_at_peak: u32,
    /// Share of the sockets at the peak that were in TIME_WAIT.
    pub time_wait_share_at_peak: Option<f64>,
    /// Share of the port-time spent in TIME_WAIT (lifetimes still open at the end count
    /// up to their last event).
    pub time_wait_share_of_port_time: Option<f64>,
    pub top_holders_at_peak: Vec<PeakHolder>,
    /// The sockets at the peak per container (with its pod) or host unit, most first (see
    /// [`GroupReport::group_by_container`]; empty until then).
    pub top_containers_at_peak: Vec<ContainerSockets>,
    /// The sockets at the peak per cgroup id, all of them: what `top_containers_at_peak`
    /// is grouped from.
    #[serde(skip)]
    pub per_cgroup_at_peak: Vec<(u64, u64)>,
    /// Most distinct ports held, per time bucket.
    pub over_time: Series,
}

impl GroupReport {
    /// Groups the sockets at the peak by the container (or, on the host, the systemd unit)
    /// each cgroup id names in `names`, the `top` biggest; cgroups that name neither are
    /// left out.
    pub fn group_by_container(&mut self, names: &mut Lookup, top: usize) {
        self.top_containers_at_peak =
            containers::grouped(names, self.per_cgroup_at_peak.iter().copied(), top)
                .into_iter()
                .map(|(workload, n)| ContainerSockets {
                    workload,
                    sockets: n as u32,
                })
                .collect();
    }
}

impl Occupancy {
    pub fn new(start_ns: u64) -> Self {
        Occupancy {
            start_ns,
            now_ns: start_ns,
            ..Default::default()
        }
    }

    /// The range of a namespace. Groups begun before it was known (it could not be read
    /// then) count within it from now on.
    pub fn set_range(&mut self, range: PortRange) {
        let now = self.now_ns;
        for g in &mut self.groups {
            if g.key.netns == range.netns && g.range.is_none() {
                g.adopt(range.clone(), now);
            }
        }
        self.ranges.insert(range.netns, range);
    }

    pub fn knows_range(&self, netns: u32) -> bool {
        self.ranges.contains_key(&netns)
    }

    fn group(&mut self, netns: u32, proto: Proto, laddr: Option<IpAddr>) -> u32 {
        let key = GroupKey {
            netns,
            proto,
            laddr,
        };
        if let Some(&g) = self.group_of.get(&key) {
            return g;
        }
        let g = self.groups.len() as u32;
        let range = self.ranges.get(&netns).cloned();
        self.groups.push(Group {
            key,
            size: range.as_ref().map(PortRange::size),
            range,
            ports: PortMap::default(),
            level: 0,
            peak: 0,
            peak_ns: None,
            at_peak: AtPeak::default(),
            port_time_ns: 0,
            time_wait_ns: 0,
            timeline: Timeline::new(TIMELINE_NS),
        });
        self.group_of.insert(key, g);
        g
    }

    /// The groups of an address: its own and all addresses'.
    fn groups_of(&mut self, netns: u32, proto: Proto, laddr: IpAddr) -> [u32; 2] {
        let key = GroupKey {
            netns,
            proto,
            laddr: Some(laddr),
        };
        if let Some((k, g)) = self.last {
            if k == key {
                return g;
            }
        }
        let g = [
            self.group(netns, proto, Some(laddr)),
            self.group(netns, proto, None),
        ];
        self.last = Some((key, g));
        g
    }

    fn hold(&mut self, netns: u32, proto: Proto, laddr: IpAddr, port: u16, ts: u64) {
        for g in self.groups_of(netns, proto, laddr) {
            self.groups[g as usize].hold(port, ts);
        }
    }

    /// A socket holding a port when tracing started.
    pub fn held_at_start(&mut self, h: &HeldAtStart) {
        let e = &h.ends;
        self.hold(e.netns, e.proto, e.laddr, e.lport, self.start_ns);
    }

    /// Time goes on: lifetimes cut off still open end at the last time seen.
    pub fn seen(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
    }

    /// An assignment (accepted sockets share their listener's port: they do not count);
    /// its groups go in `links`. Returns how much of the namespace's range its protocol
    /// held just before, all addresses together (how far a bind(0) or autobind search
    /// walked), when the range is known.
    pub fn assigned(&mut self, ev: &Event, links: Option<&mut Links>) -> Option<f64> {
        if ev.origin == Origin::Inherited {
            return None;
        }
        let e = &ev.ends;
        let groups = self.groups_of(e.netns, e.proto, e.laddr);
        let all = &self.groups[groups[1] as usize];
        let share = all
            .size
            .filter(|&size| size > 0)
            .map(|size| (f64::from(all.level) / f64::from(size)).min(1.0));
        for g in groups {
            self.groups[g as usize].hold(e.lport, ev.ts_ns);
        }
        if let Some(l) = links {
            l.groups = groups;
        }
        share
    }

    /// A lifetime the tracker emitted: ended, or cut off still open (at the end, or evicted).
    /// It counted from its assignment (its groups in `links`), or from the start if held
    /// then; the tracker emits each lifetime once, so no table of holders is needed to pair
    /// the two.
    pub fn ended(&mut self, lt: &Lifetime, links: Option<&Links>) {
        let counted = lt.origin != Origin::Inherited
            && (lt.assigned_ns().is_some() || lt.origin == Origin::Preexisting);
        if !counted {
            return;
        }
        let ts = lt.released_ns().unwrap_or(self.now_ns);
        self.now_ns = self.now_ns.max(ts);
        let e = &lt.ends;
        let groups = match links.map(|l| l.groups) {
            Some(g) if g[0] != Links::NONE => g,
            _ => self.groups_of(e.netns, e.proto, lt.assigned_laddr()),
        };
        for g in groups {
            let group = &mut self.groups[g as usize];
            group.ended(lt, self.start_ns, ts);
            if lt.released_ns().is_some() {
                group.unhold(e.lport, ts);
            }
        }
    }

    /// The share of `netns`'s range that `proto` holds now, all local addresses together
    /// (how far a bind(0) or autobind search walks). None when the range is not known.
    pub fn used_share(&self, netns: u32, proto: Proto) -> Option<f64> {
        let size = self.ranges.get(&netns)?.size();
        if size == 0 {
            return None;
        }
        let key = GroupKey {
            netns,
            proto,
            laddr: None,
        };
        let level = self
            .group_of
            .get(&key)
            .map_or(0, |&g| self.groups[g as usize].level);
        Some((f64::from(level) / f64::from(size)).min(1.0))
    }

    /// How full each range is now, every group (all-address ones included).
    pub fn current(&self) -> impl Iterator<Item = Current> + '_ {
        self.groups.iter().map(|g| Current {
            netns: g.key.netns,
            proto: g.key.proto,
            laddr: g.key.laddr,
            ports: g.level,
            range_size: g.size,
            peak: g.peak,
        })
    }

    /// Groups, fullest first (all-address groups only where a namespace and protocol have
    /// several addresses); at most `top`, with `top` holders each.
    pub fn report(&self, span: Span, top: usize) -> Vec<GroupReport> {
        let mut addresses: HashMap<(u32, Proto), u32> = HashMap::new();
        for g in &self.groups {
            if g.key.laddr.is_some() {
                *addresses.entry((g.key.netns, g.key.proto)).or_default() += 1;
            }
        }
        let mut out: Vec<GroupReport> = self
            .groups
            .iter()
            .filter(|g| g.key.laddr.is_some() || addresses[&(g.key.netns, g.key.proto)] > 1)
            .map(|g| {
                let range = g.range.as_ref().zip(g.size).map(|(r, size)| RangeSize {
                    low: r.low,
                    high: r.high,
                    size,
                });
                let mut by_process: HashMap<(u32, Comm, bool), MostOf> = HashMap::new();
                for (&(pid, comm, no_process, cgroup), &n) in &g.at_peak.by_process {
                    by_process
                        .entry((pid, comm, no_process))
                        .or_default()
                        .add(cgroup, n);
                }
                let mut holders: Vec<PeakHolder> = by_process
                    .into_iter()
                    .map(|((pid, comm, no_process), most)| PeakHolder {
                        pid,
                        comm: comm.as_str().into_owned(),
                        sockets: most.total,
                        no_process,
                        cgroup_id: most.cgroup(),
                    })
                    .collect();
                // Ties in a total order: the map iterates in a random one.
                holders.sort_by(|a, b| {
                    b.sockets.cmp(&a.sockets).then_with(|| {
                        (a.pid, &a.comm, a.no_process).cmp(&(b.pid, &b.comm, b.no_process))
                    })
                });
                holders.truncate(top);
                let share = |part: f64, whole: f64| (whole > 0.0).then(|| part / whole);
                GroupReport {
                    netns: g.key.netns,
                    proto: g.key.proto.as_str(),
                    laddr: g.key.laddr,
                    peak_ratio: range
                        .as_ref()
                        .and_then(|r| share(g.peak.into(), r.size.into())),
                    range,
                    peak_ports: g.peak,
                    peak_ns: g.peak_ns,
                    ports_held_at_end: g.level,
                    sockets_at_peak: g.at_peak.sockets,
                    time_wait_share_at_peak: share(
                        g.at_peak.time_wait.into(),
                        g.at_peak.sockets.into(),
                    ),
                    time_wait_share_of_port_time: share(
                        g.time_wait_ns as f64,
                        g.port_time_ns as f64,
                    ),
                    top_holders_at_peak: holders,
                    top_containers_at_peak: Vec::new(),
                    per_cgroup_at_peak: containers::per_cgroup(
                        g.at_peak
                            .by_process
                            .iter()
                            .map(|(&(_, _, _, cgroup), &n)| (cgroup, u64::from(n))),
                    ),
                    over_time: g.timeline.series(span.end_ns),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            let ratio = |g: &GroupReport| g.peak_ratio.unwrap_or(-1.0);
            ratio(b)
                .total_cmp(&ratio(a))
                .then(b.peak_ports.cmp(&a.peak_ports))
                .then((a.netns, a.proto, a.laddr).cmp(&(b.netns, b.proto, b.laddr)))
        });
        out.truncate(top);
        out
    }
}
