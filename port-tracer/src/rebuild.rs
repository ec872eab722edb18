//! The rebuild engine: raw kernel records in; lifetimes, the events shown and the run's
//! summary out. Decode, put back in timestamp order ([`Reorderer`]), rebuild lifetimes
//! ([`Tracker`]), select ([`Filter`]), count and analyse ([`Stats`]).
//!
//! Pure: its caller reads the records (ring buffer or trace file), gives the namespaces'
//! port ranges and the kernel's lost counts, and writes what comes out. Live tracing,
//! `report`, `export`, the fuzz targets and the collector benchmark all drive this one
//! engine.

use port_tracer_common::{lost, tiers::TierInfo};

use crate::{
    analysis::Span,
    cgroups::{Cgroups, Lookup},
    event::{DecodeError, Event},
    filter::Filter,
    lifetime::{Emitted, HeldAtStart, OutputRef, Tracker, DEFAULT_MAX_OPEN},
    port_range::PortRange,
    reorder::Reorderer,
    summary::{Lost, Stats, Summary},
};

/// How lifetimes are rebuilt, and which are shown.
#[derive(Clone, Debug)]
pub struct RebuildConfig {
    /// How long events are held to put those from different CPUs back in order.
    pub reorder_delay_ns: u64,
    /// The most events the reorder window holds; beyond it the oldest go early (counted
    /// as `released_early`).
    pub max_reorder_held: usize,
    /// The most lifetimes kept open (see [`Tracker::with_max_open`]).
    pub max_open: usize,
    /// What is shown: the rest is rebuilt but neither counted nor written.
    pub filter: Filter,
    /// Entries per list in the summary.
    pub top: usize,
}

/// The most events the reorder window holds by default (about 117 MB): far above what
/// 50 ms of the fastest storm measured brings, so only a stalled collector reaches it.
pub const MAX_REORDER_HELD: usize = 1 << 20;

impl Default for RebuildConfig {
    fn default() -> Self {
        RebuildConfig {
            reorder_delay_ns: 50_000_000,
            max_reorder_held: MAX_REORDER_HELD,
            max_open: DEFAULT_MAX_OPEN,
            filter: Filter::default(),
            top: 10,
        }
    }
}

/// The lost-event reason of records live tracing's backlog dropped, beside the kernel's
/// (`port_tracer_common::lost::NAMES`).
pub const BACKLOG_FULL: &str = "backlog_full";

/// How far [`Rebuild::process`] goes.
pub enum Upto {
    /// Only what exceeds the reorder window's limit.
    Excess,
    /// What is old enough at this time to be in order.
    InOrder(u64),
}

pub struct Rebuild {
    reorder: Reorderer,
    max_reorder_held: usize,
    tracker: Tracker,
    /// None when it selects everything: no test per output.
    filter: Option<Filter>,
    /// Owners' cgroups, for a filter by container, pod or cgroup.
    names: Lookup,
    stats: Stats,
    top: usize,
    undecodable: u64,
    /// Records live tracing's backlog dropped because it was full (see
    /// `live::backlog`); a rise marks the open lifetimes lossy.
    backlog_full: u64,
    /// The kernel's lost count last seen: a rise marks the open lifetimes lossy.
    lost_seen: u64,
    span: Span,
    /// Why the events carry no allocator time, when they cannot.
    alloc_time_unmeasured: Option<String>,
    bind_failures_unseen: Option<String>,
}

impl Rebuild {
    /// An engine for a run that began at `start_ns` (after its snapshot of held sockets).
    pub fn new(config: RebuildConfig, start_ns: u64) -> Self {
        let mut tracker = Tracker::with_max_open(config.max_open);
        tracker.set_start(start_ns);
        Rebuild {
            reorder: Reorderer::new(config.reorder_delay_ns),
            max_reorder_held: config.max_reorder_held,
            tracker,
            filter: (config.filter != Filter::default()).then_some(config.filter),
            names: Lookup::default(),
            stats: Stats::new(start_ns),
            top: config.top,
            undecodable: 0,
            backlog_full: 0,
            lost_seen: 0,
            span: Span {
                start_ns,
                end_ns: start_ns,
            },
            alloc_time_unmeasured: None,
            bind_failures_unseen: None,
        }
    }

    /// Decodes one raw kernel record into the reorder window; its timestamp if valid
    /// (undecodable records are counted).
    pub fn push_record(&mut self, bytes: &[u8]) -> Option<u64> {
        self.push_decoded(Event::decode(bytes))
    }

    /// A record decoded (by its trace's layout) into the reorder window; its timestamp if
    /// valid (undecodable records are counted).
    pub fn push_decoded(&mut self, decoded: Result<Event, DecodeError>) -> Option<u64> {
        match decoded {
            Ok(ev) => {
                let ts = ev.ts_ns;
                self.push_event(ev);
                Some(ts)
            }
            Err(_) => {
                self.undecodable += 1;
                None
            }
        }
    }

    /// A decoded event into the reorder window.
    pub fn push_event(&mut self, ev: Event) {
        self.span.end_ns = self.span.end_ns.max(ev.ts_ns);
        if !self.reorder.push(ev) {
            self.tracker.counters.arrived_late += 1;
        }
    }

    /// Where owners' cgroups are named, for a filter by container, pod or cgroup (without
    /// it such a filter selects nothing).
    pub fn set_cgroups(&mut self, cgroups: Cgroups) {
        self.names = Lookup::new(cgroups);
    }

    /// The ephemeral range of a namespace, best given before its first event: the
    /// analyses' groups take the range they find when they begin.
    pub fn set_range(&mut self, range: PortRange) {
        self.stats.analysis.set_range(range);
    }

    /// The tier the events come from (None: not one this build knows), for what the
    /// summary says it could not see; `trace_version`: the recorded trace's format.
    pub fn set_tier(&mut self, tier: Option<&'static TierInfo>, trace_version: Option<u16>) {
        self.alloc_time_unmeasured =
            crate::analysis::alloc_time::unmeasured_reason(tier, trace_version);
        self.bind_failures_unseen = crate::analysis::failures::bind_failures_unseen(tier);
    }

    /// Sockets that held ports when tracing started (see [`Tracker::set_held_at_start`]).
    pub fn set_held_at_start(&mut self, held: Vec<HeldAtStart>) {
        // Listeners and bound sockets before connected ones (see Analysis::held_at_start).
        let (unconnected, connected): (Vec<_>, Vec<_>) =
            held.iter().partition(|h| h.ends.rport == 0);
        for h in unconnected.into_iter().chain(connected) {
            let names = &mut self.names;
            if self.filter.as_ref().is_none_or(|f| {
                let cg = f
                    .by_cgroup()
                    .then(|| names.get(h.owner.cgroup_id))
                    .flatten();
                f.matches_named(&h.ends, &h.owner, cg.as_deref())
            }) {
                self.stats.analysis.held_at_start(h);
            }
        }
        self.tracker.set_held_at_start(held);
    }

    /// The kernel's lost counts by reason, as they stand: a rise marks the lifetimes open
    /// now lossy.
    pub fn check_lost(&mut self, counts: &[u64]) {
        // Counts from a damaged trace can be anything: add them without overflow.
        let total = counts.iter().fold(0u64, |sum, &c| sum.saturating_add(c));
        if total > self.lost_seen {
            self.lost_seen = total;
            self.tracker.mark_lossy();
        }
    }

    /// Records dropped before reaching the engine because live tracing's backlog was full,
    /// as the count stands: a rise marks the lifetimes open now lossy.
    pub fn check_backlog_full(&mut self, dropped: u64) {
        if dropped > self.backlog_full {
            self.backlog_full = dropped;
            self.tracker.mark_lossy();
        }
    }

    /// Records dropped because live tracing's backlog was full, so far.
    pub fn backlog_full(&self) -> u64 {
        self.backlog_full
    }

    /// Processes held events up to `upto`; what is shown goes to `out`.
    pub fn process(&mut self, upto: Upto, out: &mut impl FnMut(OutputRef<'_>)) {
        let Rebuild {
            reorder,
            tracker,
            filter,
            names,
            stats,
            ..
        } = self;
        let mut emit = shown(filter, names, stats, out);
        match upto {
            Upto::Excess => {
                let early = reorder.release_excess(self.max_reorder_held, |ev| {
                    tracker.process_in_place(ev, &mut emit)
                });
                tracker.counters.released_early += early;
            }
            Upto::InOrder(now) => {
                reorder.release(now, |ev| tracker.process_in_place(ev, &mut emit));
                tracker.advance(now.saturating_sub(reorder.delay_ns()), &mut emit);
            }
        }
    }

    /// Ends the run at `end_ns` (or its newest event, if later) with the kernel's lost
    /// counts `lost_counts` (in [`lost::NAMES`] order): everything held goes to `out`,
    /// lifetimes still open included; then the summary.
    pub fn finish(
        mut self,
        lost_counts: &[u64],
        end_ns: u64,
        out: &mut impl FnMut(OutputRef<'_>),
    ) -> Summary {
        self.span.end_ns = self.span.end_ns.max(end_ns);
        self.check_lost(lost_counts);
        self.end_open(out);
        let lost = Lost {
            by_reason: lost::NAMES
                .iter()
                .copied()
                .zip(lost_counts.iter().copied())
                .chain([(BACKLOG_FULL, self.backlog_full)])
                .collect(),
            undecodable: self.undecodable,
        };
        let mut summary = Summary::new(
            &self.stats,
            &self.tracker.counters,
            lost,
            self.span,
            self.top,
        );
        summary.analysis.name_containers(&mut self.names, self.top);
        summary.analysis.allocator_time.not_measured = self.alloc_time_unmeasured.take();
        summary.analysis.failures.bind_failures_unseen = self.bind_failures_unseen.take();
        summary
    }

    /// Everything held goes to `out`, the lifetimes still open included, and the tables
    /// are emptied (their capacity kept): a run's end, for an engine that may go on (the
    /// collector benchmark's second pass).
    pub fn end_open(&mut self, out: &mut impl FnMut(OutputRef<'_>)) {
        let Rebuild {
            reorder,
            tracker,
            filter,
            names,
            stats,
            ..
        } = self;
        let mut emit = shown(filter, names, stats, out);
        reorder.release_all(|ev| tracker.process_in_place(ev, &mut emit));
        tracker.finish(&mut emit);
    }

    /// When the run began (monotonic ns).
    pub fn start_ns(&self) -> u64 {
        self.span.start_ns
    }

    /// What has been shown so far, counted and analysed.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Records that did not decode.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Events the tracker has processed.
    pub fn events_tracked(&self) -> u64 {
        self.tracker.counters.events
    }

    /// Lifetimes open now, and the heap bytes the reorder window holds (for the collector
    /// benchmark's bytes per live port).
    pub fn open_lifetimes(&self) -> usize {
        self.tracker.open_lifetimes()
    }

    pub fn reorder_heap_bytes(&self) -> usize {
        self.reorder.heap_bytes()
    }
}

/// What the tracker emits, on its way out: selected, then counted and analysed (the
/// analyses keep their handles in the lifetime's slot).
fn shown<'a>(
    filter: &'a Option<Filter>,
    names: &'a mut Lookup,
    stats: &'a mut Stats,
    out: &'a mut impl FnMut(OutputRef<'_>),
) -> impl FnMut(Emitted<'_>) + 'a {
    move |e| {
        if filter
            .as_ref()
            .is_none_or(|f| f.matches_output(e.output, names))
        {
            stats.observe(e.output, e.links);
            out(e.output);
        }
    }
}
