//! The one counting of what is shown, per output of the rebuild engine: allocations and
//! releases by protocol and origin, failures by errno, sockets live per namespace, the
//! lifetime distribution in Prometheus' buckets. The summary and the metrics endpoint both
//! read it ([`crate::summary::Stats`] holds it). No table is looked up per event but the
//! live sockets', and that one through a cache of the last namespace.

use foldhash::HashMap;
use serde::Serialize;

use crate::{
    event::{Kind, Origin, Proto},
    histogram::DurationHistogram,
    lifetime::{Lifetime, OutputRef},
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

pub fn proto_index(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    }
}

/// Counts over the shown outputs since the start, updated per output.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Assignments that took a port from the kernel, by protocol and origin.
    pub allocations: [[u64; ORIGINS.len()]; 2],
    /// Ended lifetimes, by protocol and origin.
    pub releases: [[u64; ORIGINS.len()]; 2],
    /// Failed allocations by protocol and errno (rare: a table is cheap enough).
    pub failures: HashMap<(Proto, i32), u64>,
    /// Sockets holding a port whose assignment was seen, by (protocol, netns), in the
    /// order first seen; `live_index` finds an entry, `live_last` is the last one used.
    pub live: Vec<((Proto, u32), u64)>,
    live_index: HashMap<(Proto, u32), usize>,
    live_last: Option<((Proto, u32), usize)>,
    pub lifetimes: DurationHistogram,
    /// Time inside the allocator of timed allocations, by protocol and origin (in the order
    /// first seen: a handful).
    pub alloc_times: Vec<((Proto, Origin), DurationHistogram)>,
    /// Outputs by kind, for the summary.
    pub counts: Counts,
    /// Sockets in TIME_WAIT now, of those counted in `live`.
    pub time_wait_now: u64,
}

/// Events and lifetimes shown, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
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
}

impl Tally {
    /// Counts one output of the tracker (after filtering).
    ///
    /// A socket counts as live from its `assign` to the end of its lifetime (TIME_WAIT
    /// included), and accepted sockets count as they hold the listener's port too. Sockets
    /// that held ports before tracing started are left out: their start was not seen, so
    /// counting their end alone would drive the gauge below what is held.
    pub fn observe(&mut self, o: OutputRef<'_>) {
        match o {
            OutputRef::Event(ev) => {
                let c = &mut self.counts;
                c.events += 1;
                match ev.kind {
                    Kind::Assign => {
                        c.assign += 1;
                        if ev.origin.is_allocation() {
                            c.allocations += 1;
                            self.allocations[proto_index(ev.ends.proto)][ev.origin as usize] += 1;
                            if let Some(ns) = ev.alloc_ns {
                                self.alloc_time(ev.ends.proto, ev.origin).add(ns.into());
                            }
                        }
                        *self.live_mut(ev.ends.proto, ev.ends.netns) += 1;
                    }
                    Kind::AllocFailure => {
                        c.alloc_failure += 1;
                        *self.failures.entry((ev.ends.proto, ev.errno)).or_default() += 1;
                    }
                    Kind::RemoteUpdate => c.remote_update += 1,
                    Kind::Release => c.release += 1,
                    Kind::TimeWait => {
                        c.time_wait += 1;
                        // As `live`: sockets whose assignment was seen.
                        if !matches!(ev.origin, Origin::Preexisting | Origin::Unknown) {
                            self.time_wait_now += 1;
                        }
                    }
                }
            }
            OutputRef::Lifetime(lt) => self.lifetime_out(lt),
        }
    }

    fn alloc_time(&mut self, proto: Proto, origin: Origin) -> &mut DurationHistogram {
        let key = (proto, origin);
        let i = match self.alloc_times.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.alloc_times.push((key, DurationHistogram::allocator()));
                self.alloc_times.len() - 1
            }
        };
        &mut self.alloc_times[i].1
    }

    /// The live count of (`proto`, `netns`), made at 0 the first time.
    fn live_mut(&mut self, proto: Proto, netns: u32) -> &mut u64 {
        let key = (proto, netns);
        let i = match self.live_last {
            Some((k, i)) if k == key => i,
            _ => {
                let live = &mut self.live;
                let i = *self.live_index.entry(key).or_insert_with(|| {
                    live.push((key, 0));
                    live.len() - 1
                });
                self.live_last = Some((key, i));
                i
            }
        };
        &mut self.live[i].1
    }

    /// A lifetime leaves the tracker: ended, evicted, or still open at the end.
    fn lifetime_out(&mut self, lt: &Lifetime) {
        if lt.released_ns().is_some() {
            self.counts.lifetimes_ended += 1;
            self.releases[proto_index(lt.ends.proto)][lt.origin as usize] += 1;
            if let Some(d) = lt.duration_ns() {
                self.lifetimes.add(d);
            }
        } else {
            self.counts.lifetimes_open += 1;
        }
        // Only lifetimes whose assignment was counted as live (see `observe`).
        if lt.assigned_ns().is_some() {
            let n = self.live_mut(lt.ends.proto, lt.ends.netns);
            *n = n.saturating_sub(1);
            if lt.time_wait_start_ns().is_some() {
                self.time_wait_now = self.time_wait_now.saturating_sub(1);
            }
        }
    }
}
