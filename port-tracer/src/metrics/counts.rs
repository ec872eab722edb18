//! The pure side of the metrics: plain integers updated per shown output, and the
//! [`Snapshot`] the server encodes. No metric families are looked up per event: arrays
//! indexed by protocol and origin, and small tables keyed by netns and errno.

use foldhash::HashMap;

use crate::{
    event::errno_name,
    event::{Kind, Origin, Proto},
    lifetime::{Lifetime, Output},
};

/// Every origin, in the order of its discriminant (the index of the count arrays).
pub const ORIGINS: [Origin; 7] = [
    Origin::Unknown,
    Origin::Bind,
    Origin::BindEphemeral,
    Origin::Connect,
    Origin::Autobind,
    Origin::Inherited,
    Origin::Preexisting,
];

/// Both protocols, in the order of the count arrays.
pub const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

fn proto_index(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    }
}

/// Smallest and largest histogram bounds: 2^-20 s (about 1 µs) to 2^14 s (about 4.5 h).
const LOWEST_BOUND_LOG2: i32 = -20;
const HIGHEST_BOUND_LOG2: i32 = 14;
const BOUNDS: usize = (HIGHEST_BOUND_LOG2 - LOWEST_BOUND_LOG2 + 1) as usize;

/// Lifetimes by duration in power-of-two buckets of seconds (`le` = 2^k s, inclusive, as
/// Prometheus defines buckets), plus the overflow bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct DurationHistogram {
    /// Each bound in whole nanoseconds, rounded down: a duration `d` (ns) is within
    /// bound `2^k s` exactly when `d <= bound_ns`.
    bounds_ns: [u64; BOUNDS],
    counts: [u64; BOUNDS + 1],
    sum_ns: u128,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            bounds_ns: std::array::from_fn(|i| (bound_seconds(i) * 1e9).floor() as u64),
            counts: [0; BOUNDS + 1],
            sum_ns: 0,
        }
    }
}

/// The upper bound of bucket `i`, in seconds.
fn bound_seconds(i: usize) -> f64 {
    2f64.powi(LOWEST_BOUND_LOG2 + i as i32)
}

impl DurationHistogram {
    pub fn add(&mut self, duration_ns: u64) {
        let bucket = self.bounds_ns.partition_point(|&b| b < duration_ns);
        self.counts[bucket] += 1;
        self.sum_ns += u128::from(duration_ns);
    }

    /// What Prometheus shows: per-bucket (not cumulative) counts by upper bound in
    /// seconds, the last bound infinite.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            sum_seconds: self.sum_ns as f64 / 1e9,
            count: self.counts.iter().sum(),
            buckets: (0..=BOUNDS)
                .map(|i| {
                    let le = if i < BOUNDS {
                        bound_seconds(i)
                    } else {
                        f64::INFINITY
                    };
                    (le, self.counts[i])
                })
                .collect(),
        }
    }
}

/// A histogram as the exposition needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, count in this bucket only); the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

/// Counts over the shown outputs since the start, updated per output.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Assignments that took a port from the kernel, by protocol and origin.
    allocations: [[u64; ORIGINS.len()]; 2],
    /// Ended lifetimes, by protocol and origin.
    releases: [[u64; ORIGINS.len()]; 2],
    /// Failed allocations by protocol and errno (rare: a table is cheap enough).
    failures: HashMap<(Proto, i32), u64>,
    /// Sockets holding a port whose assignment was seen, by (protocol, netns).
    live: HashMap<(Proto, u32), u64>,
    lifetimes: DurationHistogram,
}

impl Counts {
    /// Counts one output of the tracker (after filtering).
    ///
    /// A socket counts as live from its `assign` to the end of its lifetime (TIME_WAIT
    /// included), and accepted sockets count as they hold the listener's port too. Sockets
    /// that held ports before tracing started are left out: their start was not seen, so
    /// counting their end alone would drive the gauge below what is held.
    pub fn observe(&mut self, o: &Output) {
        match o {
            Output::Event(ev) => match ev.kind {
                Kind::Assign => {
                    let p = proto_index(ev.ends.proto);
                    if ev.origin.is_allocation() {
                        self.allocations[p][ev.origin as usize] += 1;
                    }
                    *self.live.entry((ev.ends.proto, ev.ends.netns)).or_default() += 1;
                }
                Kind::AllocFailure => {
                    *self.failures.entry((ev.ends.proto, ev.errno)).or_default() += 1;
                }
                Kind::RemoteUpdate | Kind::Release | Kind::TimeWait => {}
            },
            Output::Lifetime(lt) => self.lifetime_out(lt),
        }
    }

    /// A lifetime leaves the tracker: ended, evicted, or still open at the end.
    fn lifetime_out(&mut self, lt: &Lifetime) {
        if lt.released_ns().is_some() {
            self.releases[proto_index(lt.ends.proto)][lt.origin as usize] += 1;
            if let Some(d) = lt.duration_ns() {
                self.lifetimes.add(d);
            }
        }
        // Only lifetimes whose assignment was counted as live (see `observe`).
        if lt.assigned_ns().is_some() {
            if let Some(n) = self.live.get_mut(&(lt.ends.proto, lt.ends.netns)) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// What the counts say now; `lost` pairs each reason with its count.
    pub fn snapshot(&mut self, lost: Vec<(&'static str, u64)>) -> Snapshot {
        // Namespaces with nothing live leave the exposition (they may be gone for good).
        self.live.retain(|_, n| *n > 0);
        let by_origin = |counts: &[[u64; ORIGINS.len()]; 2], only_allocations: bool| {
            let mut out = Vec::new();
            for proto in PROTOS {
                for origin in ORIGINS {
                    if !only_allocations || origin.is_allocation() {
                        out.push((proto, origin, counts[proto_index(proto)][origin as usize]));
                    }
                }
            }
            out
        };
        let mut failures: Vec<(Proto, &'static str, u64)> = Vec::new();
        for (&(proto, errno), &n) in &self.failures {
            let name = errno_name(errno);
            match failures.iter_mut().find(|f| f.0 == proto && f.1 == name) {
                Some(f) => f.2 += n,
                None => failures.push((proto, name, n)),
            }
        }
        failures.sort();
        let mut live_ports: Vec<(Proto, u32, u64)> =
            self.live.iter().map(|(&(p, ns), &n)| (p, ns, n)).collect();
        live_ports.sort();
        Snapshot {
            allocations: by_origin(&self.allocations, true),
            releases: by_origin(&self.releases, false),
            failures,
            live_ports,
            lost,
            lifetimes: self.lifetimes.snapshot(),
            occupancy: Vec::new(),
        }
    }
}

/// Held ports of a namespace's ephemeral range over its size, per local address and for
/// all addresses (`laddr` "*").
#[derive(Clone, Debug, PartialEq)]
pub struct Occupancy {
    pub netns: u32,
    pub proto: Proto,
    pub laddr: String,
    /// Between 0 and 1.
    pub ratio: f64,
}

impl Occupancy {
    /// The gauges of the occupancy analysis's groups whose range is known.
    pub fn of(current: impl Iterator<Item = crate::analysis::occupancy::Current>) -> Vec<Self> {
        let mut out: Vec<Occupancy> = current
            .filter_map(|c| {
                let size = c.range_size.filter(|&s| s > 0)?;
                Some(Occupancy {
                    netns: c.netns,
                    proto: c.proto,
                    laddr: c.laddr.map_or_else(|| "*".to_string(), |a| a.to_string()),
                    ratio: f64::from(c.ports) / f64::from(size),
                })
            })
            .collect();
        out.sort_by(|a, b| (a.netns, a.proto, &a.laddr).cmp(&(b.netns, b.proto, &b.laddr)));
        out
    }
}

/// Everything the exposition shows, taken at one drain tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// (protocol, origin, count) for every protocol and allocating origin.
    pub allocations: Vec<(Proto, Origin, u64)>,
    /// (protocol, origin, count) for every protocol and origin.
    pub releases: Vec<(Proto, Origin, u64)>,
    /// (protocol, errno name, count).
    pub failures: Vec<(Proto, &'static str, u64)>,
    /// (protocol, netns, sockets holding a port).
    pub live_ports: Vec<(Proto, u32, u64)>,
    /// (reason, events lost).
    pub lost: Vec<(&'static str, u64)>,
    pub lifetimes: HistogramSnapshot,
    /// From the occupancy analysis ([`Occupancy::of`]).
    pub occupancy: Vec<Occupancy>,
}
