//! Headroom of TCP connect() per destination, by the rule the kernel applies.
//!
//! `__inet_hash_connect` (5.10-6.12) walks the range, skipping reserved ports, and takes a
//! port unless its bind bucket was made by bind() or listen() (never shared: the bucket is
//! per namespace and port, whatever the address) or the new 4-tuple is taken (a socket,
//! TIME_WAIT included, from the same local address and port to the same destination). So
//! connect() from local address L to destination D fails with EADDRNOTAVAIL once every
//! port of the range is bind-held or in use from L towards D:
//!
//! headroom(D) = ports of the range − bind-held ports − ports in use towards D.
//!
//! Distinct-port occupancy ([`super::occupancy`]) is the measure for bind(0) and UDP,
//! which take ports for themselves; this one is connect()'s.
//!
//! A bind-held port counts against every destination at once, so destinations are not
//! all updated at each bind: each is settled at its own changes (and at the end) against
//! the most bind-held ports since its last change ([`MaxSince`]).

mod dest;
mod space;

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};
use serde::Serialize;

use self::{
    dest::{AtWorst, Dest, DestKey, Worst},
    space::{BoundSpan, Space},
};
use super::{
    containers::{self, ContainerSockets, MostOf},
    holders::PortHolders,
};
use crate::{
    cgroups::Lookup,
    event::{Comm, Endpoints, Event, Origin, Proto},
    lifetime::{HeldAtStart, HeldKey, Lifetime, Links},
    port_range::PortRange,
};

/// Destinations followed; connections to more are counted, not followed.
const MAX_DESTINATIONS: usize = 100_000;
/// Bind-held lifetimes kept per namespace, to name who held ports at a destination's
/// minimum; more are counted in `holders_not_kept`.
const MAX_BOUND_SPANS: usize = 100_000;
/// Holders named per destination.
const NAMED: usize = 5;

/// A socket's process and its cgroup id (for the containers at a destination's minimum:
/// one key, so no second table update per socket).
type Who = (u32, Comm, u64);

/// Headroom of every destination in namespaces whose range is known.
#[derive(Clone, Debug, Default)]
pub struct Headroom {
    /// Each namespace's ports, in the order their ranges came, by netns.
    spaces: Vec<Space>,
    space_of: HashMap<u32, u32>,
    /// The last namespace looked up, and its space: storms repeat it.
    last_space: Option<(u32, u32)>,
    /// Destinations in the order first seen, by key.
    dests: Vec<(DestKey, Dest)>,
    dest_of: HashMap<DestKey, u32>,
    /// Connected sockets held at start taken as connect()'s (the rest are accepted ones).
    held_towards: foldhash::HashSet<HeldKey>,
    /// Connections towards destinations past [`MAX_DESTINATIONS`].
    untracked: u64,
    start_ns: u64,
    now_ns: u64,
}

/// A process's sockets counting against a destination's headroom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HolderCount {
    pub pid: u32,
    pub comm: String,
    pub sockets: u32,
    /// No process is known (TIME_WAIT sockets found at the start, which none holds, or an
    /// owner the snapshot at start could not find): pid 0, comm "".
    pub no_process: bool,
    /// The cgroup most of them were in (0: none known), for what is reported about it.
    #[serde(skip)]
    pub cgroup_id: u64,
}

/// One destination, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationReport {
    pub netns: u32,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    /// Ports connect() hands out in the namespace (the range minus reserved ports).
    pub range_size: u32,
    /// Most ports in use towards it at once (TIME_WAIT included).
    pub peak_in_use: u32,
    /// Fewest ports a new connection to it could have got.
    pub min_headroom: u32,
    pub min_headroom_ns: u64,
    /// Ports counting against it then: in use towards it, and bind-held (bind() and
    /// listen() ports, which cost every destination).
    pub in_use_at_min: u32,
    pub bind_held_at_min: u32,
    /// Share of the sockets counting against it then that were in TIME_WAIT.
    pub time_wait_share_at_min: Option<f64>,
    /// Every holder of a port that counted against it then, bind-held included, most
    /// sockets first.
    pub top_holders_at_min: Vec<HolderCount>,
    /// The same sockets per container (with its pod) or host unit, most first (see
    /// [`DestinationReport::group_by_container`]; empty until then).
    pub top_containers_at_min: Vec<ContainerSockets>,
    /// Those sockets per cgroup id, all of them: what `top_containers_at_min` is grouped
    /// from.
    #[serde(skip)]
    pub per_cgroup_at_min: Vec<(u64, u64)>,
    pub headroom_at_end: u32,
}

impl DestinationReport {
    /// Groups the sockets counting against it at its minimum by the container (or, on the
    /// host, the systemd unit) each cgroup id names in `names`, the `top` biggest; cgroups
    /// that name neither are left out.
    pub fn group_by_container(&mut self, names: &mut Lookup, top: usize) {
        self.top_containers_at_min =
            containers::grouped(names, self.per_cgroup_at_min.iter().copied(), top)
                .into_iter()
                .map(|(workload, n)| ContainerSockets {
                    workload,
                    sockets: n as u32,
                })
                .collect();
    }
}

/// What the headroom analysis's bounds left out (0 and 0 but on huge runs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NotFollowed {
    /// Connections towards destinations past the first 100,000: not in `destinations`.
    pub connections: u64,
    /// Bind-held sockets past 100,000 per namespace: counted, but not named as holders.
    pub bind_held_holders: u64,
}

/// Ports a connect() to a destination could get now (a metric).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadroomGauge {
    pub netns: u32,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    /// Ports left.
    pub ports: u32,
    /// Connections to it holding ports now, and the ports its space has.
    pub in_use: u32,
    pub size: u32,
}

/// Ports from `low` to `high`, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ports {
    pub low: u16,
    pub high: u16,
}

/// A destination's headroom at one instant, for a failed connect().
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeadroomNow {
    /// The socket's own range (`IP_LOCAL_PORT_RANGE`) as the kernel applied it within the
    /// namespace's, when it had one: the counts below are of the ports in it.
    pub own_range: Option<Ports>,
    /// Ports a connect() to it could get (0 when the model is right about a failure).
    pub headroom: u32,
    pub range_size: u32,
    pub in_use: u32,
    pub bind_held: u32,
    pub top_holders: Vec<HolderCount>,
}

/// The processes of `by`, most sockets first (at most [`NAMED`]).
fn holder_counts(by: &HashMap<Who, u32>) -> Vec<HolderCount> {
    let mut per_process: HashMap<(u32, Comm), MostOf> = HashMap::new();
    for (&(pid, comm, cgroup), &n) in by {
        per_process.entry((pid, comm)).or_default().add(cgroup, n);
    }
    let mut out: Vec<HolderCount> = per_process
        .into_iter()
        .map(|((pid, comm), most)| HolderCount {
            pid,
            comm: comm.as_str().into_owned(),
            sockets: most.total,
            no_process: pid == 0,
            cgroup_id: most.cgroup(),
        })
        .collect();
    out.sort_by(|a, b| {
        b.sockets
            .cmp(&a.sockets)
            .then_with(|| (a.pid, &a.comm).cmp(&(b.pid, &b.comm)))
    });
    out.truncate(NAMED);
    out
}

fn merged(mut a: HashMap<Who, u32>, b: &HashMap<Who, u32>) -> HashMap<Who, u32> {
    for (who, n) in b {
        *a.entry(*who).or_default() += n;
    }
    a
}

/// How a TCP socket holds its port, for connect(): bind-held (never shared) or in use
/// towards a destination (shared with other destinations).
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// In the namespace's space (an index of `spaces`).
    Bound(u32),
    Towards(DestKey),
    /// Accepted sockets share their listener's port; UDP is another table.
    Nothing,
}

/// [`Links::dest`] of a bind-held socket: its space's index with this bit (else a
/// destination's index).
const BOUND: u32 = 1 << 31;

/// Where a socket's hold was found when it was assigned, from its handle.
enum Found {
    Space(usize),
    Dest(usize),
}

fn found(links: Option<&Links>) -> Option<Found> {
    let d = links?.dest;
    match d {
        Links::NONE => None,
        d if d & BOUND != 0 => Some(Found::Space((d & !BOUND) as usize)),
        d => Some(Found::Dest(d as usize)),
    }
}

impl Headroom {
    pub fn new(start_ns: u64) -> Self {
        Headroom {
            start_ns,
            now_ns: start_ns,
            ..Default::default()
        }
    }

    /// A namespace's range: its destinations are followed once it is known.
    pub fn set_range(&mut self, range: PortRange) {
        if !self.space_of.contains_key(&range.netns) {
            self.space_of.insert(range.netns, self.spaces.len() as u32);
            self.spaces.push(Space::new(range));
        }
    }

    /// Time goes on.
    pub fn seen(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
    }

    /// The space of `netns`, if its range is known.
    fn space(&mut self, netns: u32) -> Option<u32> {
        if let Some((n, i)) = self.last_space {
            if n == netns {
                return Some(i);
            }
        }
        let i = *self.space_of.get(&netns)?;
        self.last_space = Some((netns, i));
        Some(i)
    }

    fn hold(&mut self, origin: Origin, e: &Endpoints, laddr: IpAddr) -> Hold {
        if e.proto != Proto::Tcp {
            return Hold::Nothing;
        }
        let Some(space) = self.space(e.netns) else {
            return Hold::Nothing;
        };
        let towards = Hold::Towards(DestKey {
            netns: e.netns,
            laddr,
            raddr: e.raddr,
            rport: e.rport,
        });
        match origin {
            Origin::Inherited | Origin::Unknown => Hold::Nothing,
            Origin::Connect if e.rport != 0 => towards,
            Origin::Connect => Hold::Nothing,
            Origin::Preexisting if e.rport != 0 => {
                if self.held_towards.contains(&HeldKey::of(e)) {
                    towards
                } else {
                    Hold::Nothing
                }
            }
            _ => Hold::Bound(space),
        }
    }

    /// A socket held its port when tracing started. Listeners and bound sockets first:
    /// a connected socket on a listener's port is an accepted one, else connect()'s.
    pub fn held_at_start(&mut self, h: &HeldAtStart) {
        let e = &h.ends;
        if e.proto != Proto::Tcp {
            return;
        }
        if e.rport != 0 {
            let accepted = self
                .space(e.netns)
                .is_none_or(|s| self.spaces[s as usize].bound.get(e.lport) > 0);
            if accepted {
                return;
            }
            self.held_towards.insert(HeldKey::of(e));
        }
        let hold = self.hold(Origin::Preexisting, e, e.laddr);
        let who = (h.owner.pid, h.owner.comm, h.owner.cgroup_id);
        self.take(hold, e.lport, who, self.start_ns);
    }

    /// A port assigned (TCP: bind, listen, connect); where its hold is goes in `links`.
    /// Returns, for a connect(), the share of the range it could not use towards its
    /// destination just before it got its port: bind-held ports and ports already
    /// connected to it (how far the kernel's search had to walk); None when the range is
    /// not known.
    pub fn assigned(&mut self, ev: &Event, links: Option<&mut Links>) -> Option<f64> {
        let e = &ev.ends;
        let hold = self.hold(ev.origin, e, e.laddr);
        let share = if ev.origin == Origin::Connect && e.proto == Proto::Tcp {
            self.space(e.netns).and_then(|s| {
                let space = &self.spaces[s as usize];
                let level = match hold {
                    Hold::Towards(k) => self
                        .dest_of
                        .get(&k)
                        .map_or(0, |&d| self.dests[d as usize].1.level),
                    _ => 0,
                };
                (space.size > 0).then(|| {
                    (f64::from(space.bound_ports + level) / f64::from(space.size)).min(1.0)
                })
            })
        } else {
            None
        };
        let who = (ev.task.pid, ev.task.comm, ev.task.cgroup_id);
        let handle = self.take(hold, e.lport, who, ev.ts_ns);
        if let (Some(l), Some(h)) = (links, handle) {
            l.dest = h;
        }
        share
    }

    /// Counts a hold; its handle (see [`Links::dest`]), if it is followed.
    fn take(&mut self, hold: Hold, port: u16, who: Who, ts: u64) -> Option<u32> {
        match hold {
            Hold::Nothing => None,
            Hold::Bound(s) => {
                self.spaces[s as usize].bind(port, who, ts);
                Some(s | BOUND)
            }
            Hold::Towards(k) => {
                let d = match self.dest_of.get(&k) {
                    Some(&d) => d,
                    None if self.dests.len() >= MAX_DESTINATIONS => {
                        self.untracked += 1;
                        return None;
                    }
                    None => {
                        let s = self.space(k.netns).expect("a destination's space is known");
                        let d = self.dests.len() as u32;
                        self.dests.push((
                            k,
                            Dest {
                                space: s,
                                since: self.spaces[s as usize].seq,
                                ..Default::default()
                            },
                        ));
                        self.dest_of.insert(k, d);
                        d
                    }
                };
                let dest = &mut self.dests[d as usize].1;
                let space = &self.spaces[dest.space as usize];
                dest.settle(space, ts);
                dest.sockets += 1;
                if space.counts(port) {
                    dest.level += 1;
                    dest.peak_in_use = dest.peak_in_use.max(dest.level);
                }
                *dest.by.entry(who).or_default() += 1;
                dest.settle(space, ts);
                Some(d)
            }
        }
    }

    /// The destination of a socket towards `e`: from its handle, else looked up.
    fn dest_for(&self, e: &Endpoints, laddr: IpAddr, links: Option<&Links>) -> Option<usize> {
        match found(links) {
            Some(Found::Dest(d)) => Some(d),
            Some(Found::Space(_)) => None,
            None => {
                let k = DestKey {
                    netns: e.netns,
                    laddr,
                    raddr: e.raddr,
                    rport: e.rport,
                };
                self.dest_of.get(&k).map(|&d| d as usize)
            }
        }
    }

    /// A socket towards a destination entered TIME_WAIT (it goes on holding its port).
    pub fn time_wait(&mut self, ev: &Event, links: Option<&Links>) {
        let e = &ev.ends;
        if e.proto != Proto::Tcp || e.rport == 0 {
            return;
        }
        let Some(d) = self.dest_for(e, e.laddr, links) else {
            return;
        };
        let dest = &mut self.dests[d].1;
        let space = &self.spaces[dest.space as usize];
        if dest.sockets > dest.time_wait {
            dest.settle(space, ev.ts_ns);
            dest.time_wait += 1;
            dest.settle(space, ev.ts_ns);
        }
    }

    /// A lifetime the tracker emitted: released, or cut off still open at the end.
    pub fn ended(&mut self, lt: &Lifetime, links: Option<&Links>) {
        let e = &lt.ends;
        let released = lt.released_ns();
        let ts = released.unwrap_or(self.now_ns);
        self.now_ns = self.now_ns.max(ts);
        let who = (lt.owner.pid, lt.owner.comm, lt.owner.cgroup_id);
        let (space, dest) = match found(links) {
            Some(Found::Space(s)) => (Some(s), None),
            Some(Found::Dest(d)) => (None, Some(d)),
            None => match self.hold(lt.origin, e, lt.assigned_laddr()) {
                Hold::Nothing => return,
                Hold::Bound(s) => (Some(s as usize), None),
                Hold::Towards(k) => {
                    if lt.origin == Origin::Preexisting && released.is_some() {
                        self.held_towards.remove(&HeldKey::of(e));
                    }
                    match self.dest_of.get(&k) {
                        Some(&d) => (None, Some(d as usize)),
                        None => return,
                    }
                }
            },
        };
        if let Some(s) = space {
            let start = self.start_ns;
            let space = &mut self.spaces[s];
            // Never bound here (a socket from before the start that was not in the
            // snapshot, say): nothing to undo.
            if space.bound.get(e.lport) == 0 {
                return;
            }
            if space.counts(e.lport) {
                if space.spans.len() < MAX_BOUND_SPANS {
                    space.spans.push(BoundSpan {
                        from_ns: lt.assigned_ns().unwrap_or(start),
                        to_ns: released,
                        time_wait_from_ns: lt.time_wait_start_ns(),
                        who,
                    });
                } else {
                    space.spans_not_kept += 1;
                }
            }
            if released.is_some() {
                space.unbind(e.lport, who, ts);
            }
            return;
        }
        let Some(d) = dest else { return };
        let dest = &mut self.dests[d].1;
        let space = &self.spaces[dest.space as usize];
        if dest.sockets == 0 {
            return;
        }
        dest.settle(space, ts);
        if let Some(w) = dest.worst {
            let spans =
                lt.assigned_ns().is_none_or(|a| a <= w.ts) && released.is_none_or(|r| r > w.ts);
            if spans {
                dest.at_worst.sockets += 1;
                let time_wait = lt.time_wait_start_ns().is_some_and(|t| t <= w.ts);
                dest.at_worst.time_wait += u32::from(time_wait);
                *dest.at_worst.by.entry(who).or_default() += 1;
            }
        }
        if released.is_none() {
            return;
        }
        dest.sockets -= 1;
        if space.counts(e.lport) {
            dest.level = dest.level.saturating_sub(1);
        }
        if let Some(n) = dest.by.get_mut(&who) {
            *n -= 1;
            if *n == 0 {
                dest.by.remove(&who);
            }
        }
        if lt.time_wait_start_ns().is_some() {
            dest.time_wait = dest.time_wait.saturating_sub(1);
        }
        dest.since = space.seq;
    }

    /// The headroom towards the destination of a failed connect() `ev`, at its instant.
    /// Its local address may be the wildcard (chosen with the port): then the busiest
    /// destination with that remote end.
    pub fn now(&self, ev: &Event, holders: &PortHolders) -> Option<HeadroomNow> {
        let e = &ev.ends;
        if e.proto != Proto::Tcp {
            return None;
        }
        let space = &self.spaces[*self.space_of.get(&e.netns)? as usize];
        let exact = DestKey {
            netns: e.netns,
            laddr: e.laddr,
            raddr: e.raddr,
            rport: e.rport,
        };
        let d = match self.dest_of.get(&exact) {
            Some(&d) => Some(&self.dests[d as usize]),
            None if e.laddr.is_unspecified() => self
                .dests
                .iter()
                .filter(|(k, _)| (k.netns, k.raddr, k.rport) == (e.netns, e.raddr, e.rport))
                .max_by_key(|(k, d)| (d.level, std::cmp::Reverse(*k))),
            None => None,
        };
        let (in_use, by) = d.map_or((0, HashMap::new()), |(_, d)| (d.level, d.by.clone()));
        let top_holders = holder_counts(&merged(by, &space.bound_by));
        if let Some((low, high)) = ev.own_port_range {
            // From the local address the destination was found with.
            let ends = Endpoints {
                laddr: d.map_or(e.laddr, |(k, _)| k.laddr),
                ..*e
            };
            return Some(space.within(low, high, &ends, holders, top_holders));
        }
        Some(HeadroomNow {
            own_range: None,
            headroom: space.size.saturating_sub(space.bound_ports + in_use),
            range_size: space.size,
            in_use,
            bind_held: space.bound_ports,
            top_holders,
        })
    }

    /// What the bounds left out: connections to destinations past the ones followed, and
    /// bind-held sockets not kept to be named as holders.
    pub fn not_followed(&self) -> NotFollowed {
        NotFollowed {
            connections: self.untracked,
            bind_held_holders: self.spaces.iter().map(|s| s.spans_not_kept).sum(),
        }
    }

    /// The `n` destinations with the fewest ports left now, fewest first.
    pub fn closest(&self, n: usize) -> Vec<HeadroomGauge> {
        let mut all: Vec<HeadroomGauge> = self
            .dests
            .iter()
            .filter(|(_, d)| d.level > 0)
            .map(|(k, d)| {
                let space = &self.spaces[d.space as usize];
                HeadroomGauge {
                    netns: k.netns,
                    laddr: k.laddr,
                    raddr: k.raddr,
                    rport: k.rport,
                    ports: space.size.saturating_sub(space.bound_ports + d.level),
                    in_use: d.level,
                    size: space.size,
                }
            })
            .collect();
        let order = |a: &HeadroomGauge, b: &HeadroomGauge| {
            (a.ports, a.netns, a.laddr, a.raddr, a.rport)
                .cmp(&(b.ports, b.netns, b.laddr, b.raddr, b.rport))
        };
        if all.len() > n {
            all.select_nth_unstable_by(n, order);
            all.truncate(n);
        }
        all.sort_by(order);
        all
    }

    /// Destinations, closest to running out first (fewest ports left at the minimum,
    /// then most in use); at most `top`.
    pub fn report(&self, top: usize) -> Vec<DestinationReport> {
        let now = self.now_ns;
        // The worst moment of each, and its own sockets then: counted as they ended, or,
        // for a worst moment found only now, the ones it has now.
        let mut settled: Vec<(&DestKey, &Dest, &Space, Worst, AtWorst)> = self
            .dests
            .iter()
            .filter_map(|(k, d)| {
                let space = &self.spaces[d.space as usize];
                match d.worse(space, now) {
                    Some(w) => {
                        let by = d.by.clone();
                        let at = AtWorst {
                            sockets: by.values().sum(),
                            time_wait: d.time_wait,
                            by,
                        };
                        Some((k, d, space, w, at))
                    }
                    None => Some((k, d, space, d.worst?, d.at_worst.clone())),
                }
            })
            .collect();
        let left =
            |x: &(&DestKey, &Dest, &Space, Worst, AtWorst)| x.2.size.saturating_sub(x.3.used);
        settled.sort_by(|a, b| {
            left(a)
                .cmp(&left(b))
                .then(b.1.peak_in_use.cmp(&a.1.peak_in_use))
                .then(a.0.cmp(b.0))
        });
        settled.truncate(top);
        settled
            .into_iter()
            .map(|(k, d, space, w, at)| {
                let (bound_by, bound_time_wait) = space.bound_at(w.ts);
                let sockets = at.sockets + bound_by.values().sum::<u32>();
                let time_wait = at.time_wait + bound_time_wait;
                let holding = merged(at.by, &bound_by);
                DestinationReport {
                    netns: k.netns,
                    laddr: k.laddr,
                    raddr: k.raddr,
                    rport: k.rport,
                    range_size: space.size,
                    peak_in_use: d.peak_in_use,
                    min_headroom: space.size.saturating_sub(w.used),
                    min_headroom_ns: w.ts,
                    in_use_at_min: w.level,
                    bind_held_at_min: w.used - w.level,
                    time_wait_share_at_min: (sockets > 0)
                        .then(|| f64::from(time_wait) / f64::from(sockets)),
                    top_holders_at_min: holder_counts(&holding),
                    top_containers_at_min: Vec::new(),
                    per_cgroup_at_min: containers::per_cgroup(
                        holding
                            .iter()
                            .map(|(&(_, _, cgroup), &n)| (cgroup, u64::from(n))),
                    ),
                    headroom_at_end: space.size.saturating_sub(space.bound_ports + d.level),
                }
            })
            .collect()
    }
}
