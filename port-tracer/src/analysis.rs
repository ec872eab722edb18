//! What a trace says about ports, beyond counts: churn, range occupancy, allocation
//! failures, port reuse and known anti-patterns. Pure: fed the tracker's outputs in order
//! (the same in live tracing and in `report`), read once at the end.

pub mod alloc_time;
pub mod antipatterns;
pub mod churn;
pub mod containers;
pub mod failures;
pub mod headroom;
pub mod holders;
pub mod occupancy;
pub mod ports;
pub mod reuse;
pub mod timeline;

use serde::Serialize;

use crate::{
    cgroups::Lookup,
    event::{Kind, Origin},
    histogram::Bucket,
    lifetime::{HeldAtStart, Links, OutputRef},
    port_range::PortRange,
};

/// The time a run covered, monotonic ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Span {
    pub fn seconds(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }

    /// `n` per second over the span; None for an empty span.
    pub fn rate(&self, n: u64) -> Option<f64> {
        let s = self.seconds();
        (s > 0.0).then(|| n as f64 / s)
    }
}

/// Every analysis, fed together.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub churn: churn::Churn,
    pub occupancy: occupancy::Occupancy,
    pub failures: failures::Failures,
    pub headroom: headroom::Headroom,
    pub holders: holders::PortHolders,
    pub reuse: reuse::Reuse,
    pub anti_patterns: antipatterns::AntiPatterns,
    pub alloc_time: alloc_time::AllocTime,
}

/// What the analyses found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnalysisReport {
    pub span: Span,
    pub churn: churn::ChurnReport,
    pub occupancy: Vec<occupancy::GroupReport>,
    /// connect()'s headroom per destination, closest to running out first.
    pub destinations: Vec<headroom::DestinationReport>,
    pub destinations_not_followed: headroom::NotFollowed,
    pub failures: failures::FailureReport,
    /// Release to the next assignment of the same port (power-of-two buckets).
    pub port_reuse_histogram: Vec<Bucket>,
    pub anti_patterns: Vec<antipatterns::Finding>,
    /// Time inside the kernel's allocator, by protocol, origin and occupancy.
    pub allocator_time: alloc_time::AllocTimeReport,
}

impl AnalysisReport {
    /// Names the containers (with their pods) and host units behind the cgroup ids the
    /// report kept, through the run's cgroup table `names`: churn, range occupancy,
    /// connect headroom and failures grouped by them (`top` entries each), the holders of
    /// refused ports and the anti-patterns' processes named with theirs. Once, at the end:
    /// the hot path only copies cgroup ids.
    pub fn name_containers(&mut self, names: &mut Lookup, top: usize) {
        self.churn.group_by_container(names, self.span, top);
        for g in &mut self.occupancy {
            g.group_by_container(names, top);
        }
        for d in &mut self.destinations {
            d.group_by_container(names, top);
        }
        self.failures.group_by_container(names, top);
        for f in &mut self.anti_patterns {
            f.name_container(names);
        }
    }
}

impl Analysis {
    /// Analyses of a run that started at `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Analysis {
            occupancy: occupancy::Occupancy::new(start_ns),
            headroom: headroom::Headroom::new(start_ns),
            ..Default::default()
        }
    }

    /// The ephemeral range of a namespace, best given before its first event.
    pub fn set_range(&mut self, range: PortRange) {
        self.headroom.set_range(range.clone());
        self.occupancy.set_range(range);
    }

    /// A socket holding a port when tracing started: listeners and bound sockets are best
    /// given before connected ones (a connected socket on a listener's port was accepted).
    pub fn held_at_start(&mut self, h: &HeldAtStart) {
        self.occupancy.held_at_start(h);
        self.headroom.held_at_start(h);
        self.holders.held_at_start(h);
    }

    /// One output of the tracker, shown; `links`: the handles kept in the slot of the
    /// lifetime it is about (see [`Links`]), None when there is none (or the outputs were
    /// made without a tracker): then each analysis looks its state up.
    pub fn observe(&mut self, o: OutputRef<'_>, mut links: Option<&mut Links>) {
        match o {
            OutputRef::Event(ev) => {
                self.occupancy.seen(ev.ts_ns);
                self.headroom.seen(ev.ts_ns);
                match ev.kind {
                    Kind::Assign => {
                        // How full the range was for this search, before it took a port.
                        let connect_share = self.headroom.assigned(ev, links.as_deref_mut());
                        let share = self.occupancy.assigned(ev, links.as_deref_mut());
                        if ev.origin.is_allocation() {
                            let share = match ev.origin {
                                Origin::Connect => connect_share,
                                _ => share,
                            };
                            self.alloc_time.assigned(ev, share);
                        }
                        self.holders.assigned(ev, links.as_deref_mut());
                        if ev.origin.is_allocation() {
                            self.churn.allocation(ev);
                            self.reuse.allocated(ev);
                        }
                    }
                    Kind::AllocFailure => {
                        let (holders, headroom) = (&self.holders, &self.headroom);
                        self.failures
                            .failed(ev, || failures::Why::of(ev, holders, headroom));
                    }
                    Kind::TimeWait => {
                        self.headroom.time_wait(ev, links.as_deref());
                        self.holders.time_wait(ev, links.as_deref());
                    }
                    Kind::RemoteUpdate => self.holders.remote_learnt(ev, links.as_deref()),
                    Kind::Release => {}
                }
            }
            OutputRef::Lifetime(lt) => {
                self.occupancy.ended(lt, links.as_deref());
                self.headroom.ended(lt, links.as_deref());
                self.holders.ended(lt, links.as_deref());
                self.reuse.released(lt);
                self.anti_patterns.ended(lt);
            }
        }
    }

    /// The findings over `span`, `top` entries per list.
    pub fn report(&self, span: Span, top: usize) -> AnalysisReport {
        let occupancy = self.occupancy.report(span, top);
        let destinations = self.headroom.report(top);
        AnalysisReport {
            span,
            churn: self.churn.report(span, top),
            anti_patterns: self.anti_patterns.report(&occupancy, &destinations),
            occupancy,
            destinations,
            destinations_not_followed: self.headroom.not_followed(),
            failures: self.failures.report(top, self.holders.not_kept),
            port_reuse_histogram: self.reuse.intervals.buckets(),
            allocator_time: self.alloc_time.report(),
        }
    }
}

#[cfg(test)]
mod tests;
