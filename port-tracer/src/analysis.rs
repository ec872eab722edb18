//! What a trace says about ports, beyond counts: churn, range occupancy, allocation
//! failures, port reuse and known anti-patterns. Pure: fed the tracker's outputs in order
//! (the same in live tracing and in `report`), read once at the end.

pub mod antipatterns;
pub mod churn;
pub mod failures;
pub mod occupancy;
pub mod reuse;
pub mod timeline;

use serde::Serialize;

use crate::{
    event::Kind,
    histogram::Bucket,
    lifetime::{HeldAtStart, Output},
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
    pub reuse: reuse::Reuse,
    pub anti_patterns: antipatterns::AntiPatterns,
}

/// What the analyses found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnalysisReport {
    pub span: Span,
    pub churn: churn::ChurnReport,
    pub occupancy: Vec<occupancy::GroupReport>,
    pub failures: failures::FailureReport,
    /// Release to the next assignment of the same port (power-of-two buckets).
    pub port_reuse_histogram: Vec<Bucket>,
    pub anti_patterns: Vec<antipatterns::Finding>,
}

impl Analysis {
    /// Analyses of a run that started at `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Analysis {
            occupancy: occupancy::Occupancy::new(start_ns),
            ..Default::default()
        }
    }

    /// The ephemeral range of a namespace, best given before its first event.
    pub fn set_range(&mut self, range: PortRange) {
        self.occupancy.set_range(range);
    }

    /// A socket holding a port when tracing started.
    pub fn held_at_start(&mut self, h: &HeldAtStart) {
        self.occupancy.held_at_start(h);
    }

    pub fn observe(&mut self, o: &Output) {
        match o {
            Output::Event(ev) => {
                self.occupancy.seen(ev.ts_ns);
                match ev.kind {
                    Kind::Assign => {
                        self.occupancy.assigned(ev);
                        if ev.origin.is_allocation() {
                            self.churn.allocation(ev);
                            self.reuse.allocated(ev);
                        }
                    }
                    Kind::AllocFailure => self.failures.failed(ev),
                    Kind::RemoteUpdate | Kind::Release | Kind::TimeWait => {}
                }
            }
            Output::Lifetime(lt) => {
                self.occupancy.ended(lt);
                self.reuse.released(lt);
                self.anti_patterns.ended(lt);
            }
        }
    }

    /// The findings over `span`, `top` entries per list.
    pub fn report(&self, span: Span, top: usize) -> AnalysisReport {
        let occupancy = self.occupancy.report(span, top);
        AnalysisReport {
            span,
            churn: self.churn.report(span, top),
            anti_patterns: self.anti_patterns.report(&occupancy),
            occupancy,
            failures: self.failures.report(top),
            port_reuse_histogram: self.reuse.intervals.buckets(),
        }
    }
}

#[cfg(test)]
mod tests;
