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

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};
use serde::Serialize;

use super::holders::PortHolders;
use crate::{
    event::{Comm, Endpoints, Event, Origin, Proto},
    lifetime::{HeldAtStart, Lifetime},
    port_range::PortRange,
};

/// Destinations followed; connections to more are counted, not followed.
const MAX_DESTINATIONS: usize = 100_000;
/// Bind-held lifetimes kept per namespace, to name who held ports at a destination's
/// minimum; more are counted in `holders_not_kept`.
const MAX_BOUND_SPANS: usize = 100_000;
/// Holders named per destination.
const NAMED: usize = 5;

type Who = (u32, Comm);

/// The highest value set after a point in a sequence of changes, in memory bounded by the
/// number of distinct values: entries hold strictly decreasing values.
#[derive(Clone, Debug, Default)]
struct MaxSince {
    /// (sequence number, time, value).
    entries: Vec<(u64, u64, u32)>,
}

impl MaxSince {
    fn push(&mut self, seq: u64, ts: u64, value: u32) {
        while self.entries.last().is_some_and(|e| e.2 <= value) {
            self.entries.pop();
        }
        self.entries.push((seq, ts, value));
    }

    /// The highest value set after change `seq`, and when it was set.
    fn after(&self, seq: u64) -> Option<(u64, u32)> {
        let i = self.entries.partition_point(|e| e.0 <= seq);
        self.entries.get(i).map(|e| (e.1, e.2))
    }
}

/// A bind-held socket's time on its port.
#[derive(Clone, Copy, Debug)]
struct BoundSpan {
    from_ns: u64,
    /// None: still held at the end.
    to_ns: Option<u64>,
    time_wait_from_ns: Option<u64>,
    who: Who,
}

impl BoundSpan {
    fn spans(&self, t: u64) -> bool {
        self.from_ns <= t && self.to_ns.is_none_or(|e| e > t)
    }
}

/// One namespace's TCP ports, as connect() sees them.
#[derive(Clone, Debug)]
struct Space {
    range: PortRange,
    size: u32,
    /// Ports connect() hands out (the range minus reserved ports), from `range.low`.
    automatic: Vec<bool>,
    /// Bind-held sockets per port.
    bound: HashMap<u16, u32>,
    /// Distinct bind-held ports connect() would otherwise hand out.
    bound_ports: u32,
    /// Bind-held sockets now, by process.
    bound_by: HashMap<Who, u32>,
    /// Changes of `bound_ports` so far.
    seq: u64,
    history: MaxSince,
    spans: Vec<BoundSpan>,
    spans_not_kept: u64,
}

impl Space {
    fn new(range: PortRange) -> Self {
        let mut automatic = vec![true; usize::from(range.high.saturating_sub(range.low)) + 1];
        for (lo, hi) in range.reserved_intervals() {
            for p in lo.max(range.low)..=hi.min(range.high) {
                automatic[usize::from(p - range.low)] = false;
            }
        }
        Space {
            size: range.size(),
            range,
            automatic,
            bound: HashMap::new(),
            bound_ports: 0,
            bound_by: HashMap::new(),
            seq: 0,
            history: MaxSince::default(),
            spans: Vec::new(),
            spans_not_kept: 0,
        }
    }

    /// The headroom of a connect() to `e` by a socket with its own range `low..=high`
    /// (`IP_LOCAL_PORT_RANGE`): the kernel searches only that range, each bound taken where
    /// it lies inside the namespace's (`inet_sk_get_local_port_range`), so the ports
    /// counted are those in it (`holders` tells which are connected to `e`).
    fn within(
        &self,
        low: u16,
        high: u16,
        e: &Endpoints,
        holders: &PortHolders,
        top_holders: Vec<HolderCount>,
    ) -> HeadroomNow {
        let inside = |p: u16| (self.range.low..=self.range.high).contains(&p);
        let lo = if inside(low) { low } else { self.range.low };
        let hi = if inside(high) { high } else { self.range.high };
        let (mut size, mut bind_held, mut in_use) = (0u32, 0u32, 0u32);
        for port in (lo..=hi).filter(|&p| self.counts(p)) {
            size += 1;
            if self.bound.get(&port).is_some_and(|&n| n > 0) {
                bind_held += 1;
            } else if holders.towards(e, port) {
                in_use += 1;
            }
        }
        HeadroomNow {
            own_range: Some(Ports { low: lo, high: hi }),
            headroom: size - bind_held - in_use,
            range_size: size,
            in_use,
            bind_held,
            top_holders,
        }
    }

    fn counts(&self, port: u16) -> bool {
        port >= self.range.low
            && self
                .automatic
                .get(usize::from(port - self.range.low))
                .copied()
                .unwrap_or(false)
    }

    fn bind(&mut self, port: u16, who: Who, ts: u64) {
        if self.counts(port) {
            *self.bound_by.entry(who).or_default() += 1;
        }
        let n = self.bound.entry(port).or_default();
        *n += 1;
        if *n == 1 && self.counts(port) {
            self.bound_ports += 1;
            self.seq += 1;
            self.history.push(self.seq, ts, self.bound_ports);
        }
    }

    fn unbind(&mut self, port: u16, who: Who, ts: u64) {
        let counted = self.counts(port);
        if let Some(n) = self.bound_by.get_mut(&who).filter(|_| counted) {
            *n -= 1;
            if *n == 0 {
                self.bound_by.remove(&who);
            }
        }
        let Some(n) = self.bound.get_mut(&port) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.bound.remove(&port);
            if self.counts(port) {
                self.bound_ports -= 1;
                self.seq += 1;
                self.history.push(self.seq, ts, self.bound_ports);
            }
        }
    }

    /// Bind-held sockets at `t`, by process, with how many of them were in TIME_WAIT.
    fn bound_at(&self, t: u64) -> (HashMap<Who, u32>, u32) {
        let mut by = HashMap::new();
        let mut time_wait = 0;
        for s in self.spans.iter().filter(|s| s.spans(t)) {
            *by.entry(s.who).or_default() += 1;
            time_wait += u32::from(s.time_wait_from_ns.is_some_and(|tw| tw <= t));
        }
        (by, time_wait)
    }
}

/// A destination of TCP connections from one local address in one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct DestKey {
    netns: u32,
    laddr: IpAddr,
    raddr: IpAddr,
    rport: u16,
}

#[derive(Clone, Debug, Default)]
struct Dest {
    /// Sockets towards it. The kernel lets one socket at a time hold a 4-tuple, so they
    /// hold as many ports (a TIME_WAIT socket killed by a new connection reusing its
    /// 4-tuple ends a moment after that one begins: the two count for an instant).
    sockets: u32,
    /// Those whose port is in the range.
    level: u32,
    peak_in_use: u32,
    /// Its sockets now, by process, and how many are in TIME_WAIT.
    by: HashMap<Who, u32>,
    time_wait: u32,
    /// The space's `seq` when last settled. Between settles its sockets do not change.
    since: u64,
    /// The most ports that counted against its headroom at once, and when.
    worst: Option<Worst>,
    /// Its sockets spanning the worst moment, counted as they end (a new worst starts
    /// over: every socket spanning it ends after it, as with the occupancy's peak).
    at_worst: AtWorst,
}

#[derive(Clone, Copy, Debug)]
struct Worst {
    used: u32,
    ts: u64,
    level: u32,
}

#[derive(Clone, Debug, Default)]
struct AtWorst {
    sockets: u32,
    time_wait: u32,
    by: HashMap<Who, u32>,
}

impl Dest {
    /// A worse moment than the worst so far, since the last settle or now, if any.
    fn worse(&self, space: &Space, now: u64) -> Option<Worst> {
        let mut worse: Option<Worst> = None;
        let candidates = space
            .history
            .after(self.since)
            .into_iter()
            .chain([(now, space.bound_ports)]);
        for (ts, bound) in candidates {
            let used = bound + self.level;
            let best = worse.or(self.worst);
            if best.is_none_or(|w| used > w.used) {
                worse = Some(Worst {
                    used,
                    ts,
                    level: self.level,
                });
            }
        }
        worse
    }

    /// Takes in the bind-held high-water marks since the last settle, then now: before
    /// and after each change of its own sockets.
    fn settle(&mut self, space: &Space, now: u64) {
        if let Some(w) = self.worse(space, now) {
            self.worst = Some(w);
            self.at_worst.sockets = 0;
            self.at_worst.time_wait = 0;
            self.at_worst.by.clear();
        }
        self.since = space.seq;
    }
}

/// Headroom of every destination in namespaces whose range is known.
#[derive(Clone, Debug, Default)]
pub struct Headroom {
    spaces: HashMap<u32, Space>,
    dests: HashMap<DestKey, Dest>,
    /// Connected sockets held at start taken as connect()'s (the rest are accepted ones).
    held_towards: foldhash::HashSet<crate::lifetime::HeldKey>,
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
    pub headroom_at_end: u32,
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
    pub ports: u32,
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

fn holder_counts(by: HashMap<Who, u32>) -> Vec<HolderCount> {
    let mut out: Vec<HolderCount> = by
        .into_iter()
        .map(|((pid, comm), sockets)| HolderCount {
            pid,
            comm: comm.as_str().into_owned(),
            sockets,
            no_process: pid == 0,
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
    Bound(u32),
    Towards(DestKey),
    /// Accepted sockets share their listener's port; UDP is another table.
    Nothing,
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
        self.spaces
            .entry(range.netns)
            .or_insert_with(|| Space::new(range));
    }

    /// Time goes on.
    pub fn seen(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
    }

    fn hold(&self, origin: Origin, e: &Endpoints, laddr: IpAddr) -> Hold {
        if e.proto != Proto::Tcp || !self.spaces.contains_key(&e.netns) {
            return Hold::Nothing;
        }
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
                if self.held_towards.contains(&crate::lifetime::HeldKey::of(e)) {
                    towards
                } else {
                    Hold::Nothing
                }
            }
            _ => Hold::Bound(e.netns),
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
                .spaces
                .get(&e.netns)
                .is_none_or(|s| s.bound.contains_key(&e.lport));
            if accepted {
                return;
            }
            self.held_towards.insert(crate::lifetime::HeldKey::of(e));
        }
        let hold = self.hold(Origin::Preexisting, e, e.laddr);
        let who = (h.owner.pid, h.owner.comm);
        self.take(hold, e.lport, who, self.start_ns);
    }

    /// A port assigned (TCP: bind, listen, connect).
    pub fn assigned(&mut self, ev: &Event) {
        let hold = self.hold(ev.origin, &ev.ends, ev.ends.laddr);
        self.take(hold, ev.ends.lport, (ev.task.pid, ev.task.comm), ev.ts_ns);
    }

    fn take(&mut self, hold: Hold, port: u16, who: Who, ts: u64) {
        match hold {
            Hold::Nothing => {}
            Hold::Bound(netns) => {
                if let Some(space) = self.spaces.get_mut(&netns) {
                    space.bind(port, who, ts);
                }
            }
            Hold::Towards(k) => {
                if !self.dests.contains_key(&k) && self.dests.len() >= MAX_DESTINATIONS {
                    self.untracked += 1;
                    return;
                }
                let space = &self.spaces[&k.netns];
                let d = self.dests.entry(k).or_insert_with(|| Dest {
                    since: space.seq,
                    ..Default::default()
                });
                d.settle(space, ts);
                d.sockets += 1;
                if space.counts(port) {
                    d.level += 1;
                    d.peak_in_use = d.peak_in_use.max(d.level);
                }
                *d.by.entry(who).or_default() += 1;
                d.settle(space, ts);
            }
        }
    }

    /// A socket towards a destination entered TIME_WAIT (it goes on holding its port).
    pub fn time_wait(&mut self, ev: &Event) {
        let e = &ev.ends;
        if e.proto != Proto::Tcp || e.rport == 0 {
            return;
        }
        let k = DestKey {
            netns: e.netns,
            laddr: e.laddr,
            raddr: e.raddr,
            rport: e.rport,
        };
        let (Some(d), Some(space)) = (self.dests.get_mut(&k), self.spaces.get(&e.netns)) else {
            return;
        };
        if d.sockets > d.time_wait {
            d.settle(space, ev.ts_ns);
            d.time_wait += 1;
            d.settle(space, ev.ts_ns);
        }
    }

    /// A lifetime the tracker emitted: released, or cut off still open at the end.
    pub fn ended(&mut self, lt: &Lifetime) {
        let e = &lt.ends;
        let hold = self.hold(lt.origin, e, lt.assigned_laddr());
        let released = lt.released_ns();
        let ts = released.unwrap_or(self.now_ns);
        self.now_ns = self.now_ns.max(ts);
        let who = (lt.owner.pid, lt.owner.comm);
        match hold {
            Hold::Nothing => {}
            Hold::Bound(netns) => {
                let start = self.start_ns;
                let Some(space) = self.spaces.get_mut(&netns) else {
                    return;
                };
                // Never bound here (a socket from before the start that was not in the
                // snapshot, say): nothing to undo.
                if !space.bound.contains_key(&e.lport) {
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
            }
            Hold::Towards(k) => {
                if lt.origin == Origin::Preexisting && released.is_some() {
                    self.held_towards.remove(&crate::lifetime::HeldKey::of(e));
                }
                let (Some(d), Some(space)) = (self.dests.get_mut(&k), self.spaces.get(&k.netns))
                else {
                    return;
                };
                if d.sockets == 0 {
                    return;
                }
                d.settle(space, ts);
                if let Some(w) = d.worst {
                    let spans = lt.assigned_ns().is_none_or(|a| a <= w.ts)
                        && released.is_none_or(|r| r > w.ts);
                    if spans {
                        d.at_worst.sockets += 1;
                        let time_wait = lt.time_wait_start_ns().is_some_and(|t| t <= w.ts);
                        d.at_worst.time_wait += u32::from(time_wait);
                        *d.at_worst.by.entry(who).or_default() += 1;
                    }
                }
                if released.is_none() {
                    return;
                }
                d.sockets -= 1;
                if space.counts(e.lport) {
                    d.level = d.level.saturating_sub(1);
                }
                if let Some(n) = d.by.get_mut(&who) {
                    *n -= 1;
                    if *n == 0 {
                        d.by.remove(&who);
                    }
                }
                if lt.time_wait_start_ns().is_some() {
                    d.time_wait = d.time_wait.saturating_sub(1);
                }
                d.since = space.seq;
            }
        }
    }

    /// The share of the range a connect() `ev` could not use towards its destination just
    /// before it got its port: bind-held ports and ports already connected to it (how far
    /// the kernel's search had to walk). None when the range is not known.
    pub fn used_share(&self, ev: &Event) -> Option<f64> {
        let e = &ev.ends;
        let space = self
            .spaces
            .get(&e.netns)
            .filter(|s| e.proto == Proto::Tcp && s.size > 0)?;
        let key = DestKey {
            netns: e.netns,
            laddr: e.laddr,
            raddr: e.raddr,
            rport: e.rport,
        };
        let level = self.dests.get(&key).map_or(0, |d| d.level);
        Some((f64::from(space.bound_ports + level) / f64::from(space.size)).min(1.0))
    }

    /// The headroom towards the destination of a failed connect() `ev`, at its instant.
    /// Its local address may be the wildcard (chosen with the port): then the busiest
    /// destination with that remote end.
    pub fn now(&self, ev: &Event, holders: &PortHolders) -> Option<HeadroomNow> {
        let e = &ev.ends;
        let space = self
            .spaces
            .get(&e.netns)
            .filter(|_| e.proto == Proto::Tcp)?;
        let exact = DestKey {
            netns: e.netns,
            laddr: e.laddr,
            raddr: e.raddr,
            rport: e.rport,
        };
        let d = match self.dests.get_key_value(&exact) {
            Some(d) => Some(d),
            None if e.laddr.is_unspecified() => self
                .dests
                .iter()
                .filter(|(k, _)| (k.netns, k.raddr, k.rport) == (e.netns, e.raddr, e.rport))
                .max_by_key(|(k, d)| (d.level, std::cmp::Reverse(**k))),
            None => None,
        };
        let (in_use, by) = d.map_or((0, HashMap::new()), |(_, d)| (d.level, d.by.clone()));
        let top_holders = holder_counts(merged(by, &space.bound_by));
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
            bind_held_holders: self.spaces.values().map(|s| s.spans_not_kept).sum(),
        }
    }

    /// The `n` destinations with the fewest ports left now, fewest first.
    pub fn closest(&self, n: usize) -> Vec<HeadroomGauge> {
        let mut all: Vec<HeadroomGauge> = self
            .dests
            .iter()
            .filter(|(_, d)| d.level > 0)
            .filter_map(|(k, d)| {
                let space = self.spaces.get(&k.netns)?;
                Some(HeadroomGauge {
                    netns: k.netns,
                    laddr: k.laddr,
                    raddr: k.raddr,
                    rport: k.rport,
                    ports: space.size.saturating_sub(space.bound_ports + d.level),
                })
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
                let space = self.spaces.get(&k.netns)?;
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
                    top_holders_at_min: holder_counts(merged(at.by, &bound_by)),
                    headroom_at_end: space.size.saturating_sub(space.bound_ports + d.level),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_value_since_a_change_is_found_in_bounded_memory() {
        let mut m = MaxSince::default();
        for (seq, v) in [(1, 5), (2, 3), (3, 4), (4, 1), (5, 2)] {
            m.push(seq, seq * 10, v);
        }
        // Strictly decreasing: 5 (1), 4 (3), 2 (5).
        assert_eq!(m.entries.len(), 3);
        assert_eq!(m.after(0), Some((10, 5)));
        assert_eq!(m.after(1), Some((30, 4)));
        assert_eq!(m.after(3), Some((50, 2)));
        assert_eq!(m.after(5), None);
    }

    #[test]
    fn a_sockets_own_range_counts_only_its_ports_with_bounds_outside_the_namespaces_ignored() {
        let mut space = Space::new(PortRange {
            netns: 1,
            low: 40000,
            high: 40019,
            reserved: "40001".into(),
        });
        space.bind(40002, (9, Comm::new("srv")), 1);
        let ends = Endpoints {
            proto: Proto::Tcp,
            family: crate::event::Family::Ipv4,
            netns: 1,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 0,
            raddr: "127.0.0.2".parse().unwrap(),
            rport: 80,
        };
        let mut holders = PortHolders::default();
        let connected = Event {
            ends: Endpoints {
                lport: 40003,
                ..ends
            },
            origin: Origin::Connect,
            ..crate::testing::event(crate::event::Kind::Assign, 2, 5, 40003)
        };
        holders.assigned(&connected);
        // The low bound lies outside the namespace's range: the kernel keeps the range's.
        let h = space.within(39000, 40004, &ends, &holders, Vec::new());
        assert_eq!(
            h.own_range,
            Some(Ports {
                low: 40000,
                high: 40004
            })
        );
        // 40000..=40004 less reserved 40001: 4 ports, 40002 bind-held, 40003 connected.
        assert_eq!(
            (h.range_size, h.bind_held, h.in_use, h.headroom),
            (4, 1, 1, 2)
        );
        // Towards another destination, 40003 is free.
        let other = Endpoints { rport: 81, ..ends };
        assert_eq!(
            space
                .within(39000, 40004, &other, &holders, Vec::new())
                .headroom,
            3
        );
    }
}
