//! What the metrics endpoint shows: a [`Snapshot`] of the summary's [`Tally`] (and of the
//! occupancy analysis), taken at a drain tick and encoded at scrape time.

use crate::{
    event::{errno_name, Origin, Proto},
    histogram::HistogramSnapshot,
    tally::{proto_index, Tally, ORIGINS, PROTOS},
};

impl Snapshot {
    /// What `tally` says now; `lost` pairs each reason with its count.
    pub fn of(tally: &Tally, lost: Vec<(&'static str, u64)>) -> Snapshot {
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
        for (&(proto, errno), &n) in &tally.failures {
            let name = errno_name(errno);
            match failures.iter_mut().find(|f| f.0 == proto && f.1 == name) {
                Some(f) => f.2 += n,
                None => failures.push((proto, name, n)),
            }
        }
        failures.sort();
        let mut live_ports: Vec<(Proto, u32, u64)> =
            // Namespaces with nothing live leave the exposition (they may be gone for good).
            tally.live.iter().filter(|&&(_, n)| n > 0).map(|&((p, ns), n)| (p, ns, n)).collect();
        live_ports.sort();
        let mut allocator: Vec<(Proto, Origin, HistogramSnapshot)> = tally
            .alloc_times
            .iter()
            .map(|&((p, o), ref h)| (p, o, h.snapshot()))
            .collect();
        allocator.sort_by_key(|a| (a.0, a.1));
        Snapshot {
            allocations: by_origin(&tally.allocations, true),
            releases: by_origin(&tally.releases, false),
            failures,
            live_ports,
            lost,
            lifetimes: tally.lifetimes.snapshot(),
            allocator,
            occupancy: Vec::new(),
            headroom: Vec::new(),
            allocations_by_container: Vec::new(),
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
    /// Time inside the allocator, per protocol and origin that had a timed allocation.
    pub allocator: Vec<(Proto, Origin, HistogramSnapshot)>,
    /// From the occupancy analysis ([`Occupancy::of`]).
    pub occupancy: Vec<Occupancy>,
    /// connect()'s headroom of the destinations closest to running out
    /// ([`HEADROOM_DESTINATIONS`] at most: bounded cardinality).
    pub headroom: Vec<crate::analysis::headroom::HeadroomGauge>,
    /// (protocol, origin, container or unit, count): with `--metrics-labels container`
    /// only (see [`by_container`]); then allocations carry a `container` label.
    pub allocations_by_container: Vec<(Proto, Origin, String, u64)>,
}

/// Allocations per (cgroup id, protocol, origin) summed by the container label `label`
/// gives each cgroup id ("" when it names none), in a stable order.
pub fn by_container(
    per_cgroup: Vec<((u64, Proto, Origin), u64)>,
    mut label: impl FnMut(u64) -> Option<String>,
) -> Vec<(Proto, Origin, String, u64)> {
    let mut sums: std::collections::BTreeMap<(Proto, Origin, String), u64> = Default::default();
    for ((id, proto, origin), n) in per_cgroup {
        let l = label(id).unwrap_or_default();
        *sums.entry((proto, origin, l)).or_default() += n;
    }
    sums.into_iter()
        .map(|((p, o, l), n)| (p, o, l, n))
        .collect()
}

/// Destinations whose connect() headroom is exported: those with the fewest ports left.
pub const HEADROOM_DESTINATIONS: usize = 20;
