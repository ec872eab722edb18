//! What a run amounts to: counts and analyses over the outputs (after filtering), the
//! tracker's work-arounds and the kernel's lost-event counters. Live tracing and `report`
//! both end with this summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    analysis::{Analysis, AnalysisReport, Span},
    cgroups::CgroupCounts,
    histogram::{Bucket, Log2Histogram},
    lifetime::{Counters, Links, OutputRef},
    tally::{Counts, Tally},
};

/// Events the kernel side could not deliver, by reason (see `port_tracer_common::lost`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Ring buffer records userspace could not decode.
    pub undecodable: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        (self.by_reason.values()).fold(self.undecodable, |sum, &n| sum.saturating_add(n))
    }
}

/// Counts and analyses over what was shown: the one place the engine's outputs are counted
/// ([`Tally`], which the metrics endpoint reads too) and analysed.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub tally: Tally,
    pub durations: Log2Histogram,
    pub time_waits: Log2Histogram,
    pub analysis: Analysis,
}

impl Stats {
    /// Counts for a run that started at `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Stats {
            analysis: Analysis::new(start_ns),
            ..Default::default()
        }
    }

    /// Counts and analyses one output; `links`: the handles the analyses keep in the
    /// slot of the lifetime it is about, if open.
    pub fn observe(&mut self, o: OutputRef<'_>, links: Option<&mut Links>) {
        self.tally.observe(o);
        self.analysis.observe(o, links);
        if let OutputRef::Lifetime(lt) = o {
            if lt.released_ns().is_some() {
                if let Some(d) = lt.duration_ns() {
                    self.durations.add(d);
                }
                if let Some(tw) = lt.time_wait_ns() {
                    self.time_waits.add(tw);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TopTask {
    pub pid: u32,
    pub comm: String,
    pub allocations: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    #[serde(rename = "counters")]
    pub stats: Counts,
    /// Signs of events the tracker never saw (over all sockets, not only those shown).
    pub tracker: Counters,
    pub lost: Lost,
    pub top_processes: Vec<TopTask>,
    pub lifetime_histogram: Vec<Bucket>,
    pub time_wait_histogram: Vec<Bucket>,
    /// Records not written because the output could not keep up (live tracing); the
    /// summary still counts them.
    pub output_dropped: u64,
    /// Owners' cgroups named, and those that could not be (see [`crate::cgroups`]).
    pub cgroups: CgroupCounts,
    /// A trace's: the sockets `record` kept (absent: every socket, and live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_only: Option<crate::trace_file::RecordedFilter>,
    #[serde(flatten)]
    pub analysis: AnalysisReport,
}

impl Summary {
    /// The summary of a run over `span`, `top` entries per list.
    pub fn new(stats: &Stats, tracker: &Counters, lost: Lost, span: Span, top: usize) -> Self {
        let analysis = stats.analysis.report(span, top);
        Summary {
            stats: stats.tally.counts.clone(),
            tracker: tracker.clone(),
            lost,
            top_processes: analysis
                .churn
                .by_process
                .iter()
                .map(|p| TopTask {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    allocations: p.allocations,
                })
                .collect(),
            lifetime_histogram: stats.durations.buckets(),
            time_wait_histogram: stats.time_waits.buckets(),
            output_dropped: 0,
            cgroups: CgroupCounts::default(),
            recorded_only: None,
            analysis,
        }
    }
}
