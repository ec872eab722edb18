//! The live collector: drains the ring buffer in batches, puts events back in order, feeds
//! the tracker and writes what it produces. The same [`Pipeline`] replays recorded traces
//! ([`crate::replay`]); [`crate::record`] writes raw records instead.

use std::{
    io::{self, BufWriter, IsTerminal, Write},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use port_tracer_common::lost;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    analysis::Span,
    cli::{Args, KernelArgs, RebuildArgs, ViewArgs},
    clock::monotonic_ns,
    event::Event,
    filter::Filter,
    kernel::{self, held, ranges::RangeFinder, Kernel, LoadOptions},
    lifetime::{HeldAtStart, Output, Tracker},
    metrics::{self, Publisher},
    output::{OutputQueue, Sink, WallClock},
    port_range::PortRange,
    reorder::Reorderer,
    summary::{Lost, Stats, Summary},
};

/// Where the shown outputs go.
enum Writer<W: Write> {
    /// Written here, in turn (replaying a trace: nothing waits on the output).
    Here {
        /// Boxed: it holds every format's state, the queue only a handle.
        sink: Box<Sink<W>>,
        /// The first write error; nothing more is written after it.
        error: Option<io::Error>,
    },
    /// Handed to a writer thread (live tracing: draining never waits on the output).
    Queued(OutputQueue),
}

/// The user's side of the pipeline: filter, count, write.
struct Shown<W: Write> {
    filter: Filter,
    stats: Stats,
    /// With `--metrics`: the same outputs counted for the metrics endpoint.
    metrics: Option<Box<metrics::Counts>>,
    writer: Writer<W>,
}

impl<W: Write> Shown<W> {
    /// Runs one write unless an earlier one failed, keeping the first error.
    fn write(&mut self, f: impl FnOnce(&mut Sink<W>) -> io::Result<()>) {
        if let Writer::Here { sink, error } = &mut self.writer {
            if error.is_none() {
                *error = f(sink).err();
            }
        }
    }

    fn take(&mut self, o: Output) {
        if self.filter.matches_output(&o) {
            self.stats.observe(&o);
            if let Some(m) = &mut self.metrics {
                m.observe(&o);
            }
            match &mut self.writer {
                Writer::Queued(q) => q.push(o),
                Writer::Here { .. } => self.write(|sink| sink.write(&o)),
            }
        }
    }

    fn flush(&mut self) {
        match &mut self.writer {
            Writer::Queued(q) => q.flush(),
            Writer::Here { .. } => self.write(|sink| sink.flush()),
        }
    }

    fn failed(&self) -> bool {
        match &self.writer {
            Writer::Queued(q) => q.failed(),
            Writer::Here { error, .. } => error.is_some(),
        }
    }

    /// Writes the summary last; the first write error, if any.
    fn finish(self, mut summary: Summary) -> Option<io::Error> {
        match self.writer {
            Writer::Queued(q) => {
                summary.output_dropped = q.dropped();
                q.finish(summary).err()
            }
            Writer::Here { mut sink, error } => {
                error.or_else(|| sink.summary(&summary).and_then(|()| sink.flush()).err())
            }
        }
    }
}

/// Everything between raw kernel records and the output.
pub(crate) struct Pipeline<W: Write> {
    reorder: Reorderer,
    tracker: Tracker,
    shown: Shown<W>,
    undecodable: u64,
    lost_seen: u64,
    /// Live tracing: finds the ranges of namespaces as their first events arrive.
    ranges: Option<RangeFinder>,
    span: Span,
}

/// How far [`Pipeline::process`] goes.
pub(crate) enum Upto {
    /// Only what exceeds the reorder window's limit.
    Excess,
    /// What is old enough at this time to be in order.
    InOrder(u64),
    /// Everything, at the end.
    End,
}

/// The most events the reorder window holds (about 117 MB): far above what 50 ms of the
/// fastest storm measured brings, so only a stalled collector reaches it.
const MAX_REORDER_HELD: usize = 1 << 20;

/// Records that may wait for a terminal: more than anyone reads before the summary.
const TERMINAL_OUTPUT_BUFFER: usize = 1 << 14;
/// Records that may wait for a file or a pipe (about 40 MB).
const OUTPUT_BUFFER: usize = 1 << 18;

/// Where the output goes: `--output FILE` or standard output.
pub(crate) fn open_output(path: Option<&Path>) -> Result<Box<dyn Write + Send>> {
    Ok(match path {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    })
}

/// What pipelines write to.
pub(crate) type Out = BufWriter<Box<dyn Write + Send>>;

impl Pipeline<Out> {
    /// A pipeline writing what `view` asks for, with the times of `clock`, for a run that
    /// began at `start_ns`.
    pub(crate) fn new(
        view: &ViewArgs,
        rebuild: &RebuildArgs,
        clock: WallClock,
        start_ns: u64,
    ) -> Result<Self> {
        let out = open_output(view.output.as_deref())?;
        let tracker = Tracker::with_max_open(rebuild.max_lifetimes);
        let filter = Filter {
            pid: view.pid,
            comm: view.comm.clone(),
            ..view.sockets.filter().unwrap_or_default()
        };
        Ok(Pipeline {
            reorder: Reorderer::new(rebuild.reorder_ms * 1_000_000),
            tracker,
            shown: Shown {
                filter,
                stats: Stats::new(start_ns),
                metrics: None,
                writer: Writer::Here {
                    sink: Box::new(Sink::new(
                        BufWriter::with_capacity(1 << 16, out),
                        view.format,
                        clock,
                    )),
                    error: None,
                },
            },
            undecodable: 0,
            lost_seen: 0,
            ranges: None,
            span: Span {
                start_ns,
                end_ns: start_ns,
            },
        })
    }
}

impl Pipeline<Out> {
    /// Writes from a thread of its own from now on, at most `limit` records waiting (see
    /// [`OutputQueue`]).
    pub(crate) fn queue_output(&mut self, limit: usize) {
        let writer = std::mem::replace(&mut self.shown.writer, Writer::Queued(OutputQueue::idle()));
        self.shown.writer = match writer {
            Writer::Here { sink, error: None } => Writer::Queued(OutputQueue::start(*sink, limit)),
            other => other,
        };
    }
}

impl<W: Write> Pipeline<W> {
    /// Decodes one raw kernel record into the reorder window; its timestamp if valid.
    pub(crate) fn push_record(&mut self, bytes: &[u8]) -> Option<u64> {
        match Event::decode(bytes) {
            Ok(ev) => {
                let ts = ev.ts_ns;
                if let Some(finder) = &mut self.ranges {
                    if !finder.tried(ev.ends.netns) {
                        // Before the event reaches the analyses: their groups take the
                        // range they find when they begin.
                        if let Some(r) = finder.find(ev.ends.netns, ev.task.pid, ev.task.tid) {
                            self.shown.stats.analysis.set_range(r);
                        }
                    }
                }
                self.span.end_ns = self.span.end_ns.max(ts);
                self.reorder.push(ev);
                Some(ts)
            }
            Err(_) => {
                self.undecodable += 1;
                None
            }
        }
    }

    /// Sockets that held ports when tracing started (see [`Tracker::set_held_at_start`]);
    /// their namespaces' ranges are best known first.
    pub(crate) fn set_held_at_start(&mut self, held: Vec<HeldAtStart>) {
        for h in &held {
            if self.shown.filter.matches(&h.ends, &h.owner) {
                self.shown.stats.analysis.held_at_start(h);
            }
        }
        self.tracker.set_held_at_start(held);
    }

    /// The ephemeral range of a namespace, best given before its first event.
    pub(crate) fn set_range(&mut self, range: PortRange) {
        self.shown.stats.analysis.set_range(range);
    }

    /// Finds namespaces' ranges itself, as their first events arrive (live tracing).
    pub(crate) fn find_ranges(&mut self, finder: RangeFinder) {
        self.ranges = Some(finder);
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            self.push_record(&item);
        }
        self.process(Upto::Excess);
    }

    /// Processes held events up to `upto`.
    pub(crate) fn process(&mut self, upto: Upto) {
        let Pipeline {
            reorder,
            tracker,
            shown,
            ..
        } = self;
        let mut emit = |o: Output| shown.take(o);
        match upto {
            Upto::Excess => {
                let early =
                    reorder.release_excess(MAX_REORDER_HELD, |ev| tracker.process(ev, &mut emit));
                tracker.counters.released_early += early;
            }
            Upto::InOrder(now) => {
                reorder.release(now, |ev| tracker.process(ev, &mut emit));
                tracker.advance(now.saturating_sub(reorder.delay_ns()), &mut emit);
            }
            Upto::End => {
                reorder.release_all(|ev| tracker.process(ev, &mut emit));
                tracker.finish(&mut emit);
            }
        }
    }

    /// Marks open lifetimes when the kernel reports new losses.
    pub(crate) fn check_lost(&mut self, counts: &[u64]) {
        // Counts from a damaged trace can be anything: add them without overflow.
        let total = counts.iter().fold(0u64, |sum, &c| sum.saturating_add(c));
        if total > self.lost_seen {
            self.lost_seen = total;
            self.tracker.mark_lossy();
        }
    }

    /// Counts what is shown into `counts` too, for the metrics endpoint.
    pub(crate) fn count_metrics(&mut self, counts: metrics::Counts) {
        self.shown.metrics = Some(Box::new(counts));
    }

    /// The metrics now, with the kernel's lost counts `lost_counts`; None without
    /// [`Pipeline::count_metrics`].
    pub(crate) fn metrics_snapshot(&mut self, lost_counts: &[u64]) -> Option<metrics::Snapshot> {
        let lost = lost::NAMES
            .iter()
            .copied()
            .zip(lost_counts.iter().copied())
            .chain([("undecodable", self.undecodable)])
            .collect();
        let mut snapshot = self.shown.metrics.as_mut()?.snapshot(lost);
        snapshot.occupancy = metrics::Occupancy::of(self.shown.stats.analysis.occupancy.current());
        Some(snapshot)
    }

    pub(crate) fn flush(&mut self) {
        self.shown.flush();
    }

    pub(crate) fn write_failed(&self) -> bool {
        self.shown.failed()
    }

    /// Ends the run at `end_ns` (or its newest event, if later): everything held goes
    /// through, then the summary with the kernel's lost counts; the first write error, if
    /// any, named by where the output went.
    pub(crate) fn finish(
        mut self,
        lost_counts: &[u64],
        end_ns: u64,
        output: Option<&Path>,
    ) -> Result<()> {
        self.span.end_ns = self.span.end_ns.max(end_ns);
        self.check_lost(lost_counts);
        self.process(Upto::End);
        if let Some(finder) = &self.ranges {
            for (netns, why) in finder.unreadable() {
                eprintln!(
                    "port-tracer: the port range of network namespace {netns} could not be \
                     read ({why}): its occupancy counts every port"
                );
            }
        }
        let lost = Lost {
            by_reason: lost::NAMES
                .iter()
                .copied()
                .zip(lost_counts.iter().copied())
                .collect(),
            undecodable: self.undecodable,
        };
        let summary = Summary::new(
            &self.shown.stats,
            &self.tracker.counters,
            lost,
            self.span,
            10,
        );
        match self.shown.finish(summary) {
            // The reader went away (`| head`): stop quietly.
            Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(e).context(match output {
                    Some(path) => format!("writing to {}", path.display()),
                    None => "writing to standard output".to_string(),
                }))
            }
            _ => Ok(()),
        }
    }
}

/// Signals that end a run cleanly, installed before saying we trace.
pub(crate) struct Stop {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
}

impl Stop {
    pub(crate) fn install() -> Result<Stop> {
        Ok(Stop {
            sigint: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }

    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.sigint.recv() => {}
            _ = self.sigterm.recv() => {}
        }
    }
}

/// Says which tier traces (and why better ones were passed over); `doing` follows.
pub(crate) fn announce(kernel: &Kernel, doing: &str) {
    let tw_note = if kernel.time_wait_traced {
        ""
    } else {
        " (TIME_WAIT not traced: tw_timer_handler not in /proc/kallsyms)"
    };
    for (tier, why) in &kernel.passed_over {
        eprintln!("port-tracer: the {tier} tier does not work here: {why}");
    }
    eprintln!(
        "port-tracer: tracing with the {} tier on Linux {}{tw_note}{doing}; Ctrl-C to stop",
        kernel.tier,
        kernel::kernel_release()
    );
}

pub(crate) fn load_options(k: &KernelArgs) -> LoadOptions {
    LoadOptions {
        tier: k.attach,
        ring_bytes: k.ring_size,
        wakeup_bytes: k.wakeup_bytes,
    }
}

/// A deadline far enough to be never when none is given.
pub(crate) fn deadline(d: Option<Duration>) -> tokio::time::Sleep {
    tokio::time::sleep(d.unwrap_or(Duration::from_secs(u64::MAX / 4)))
}

/// The kernel side, running: programs attached, ring buffer and lost counters taken, and
/// the sockets that held ports when it started.
pub(crate) struct Traced {
    pub kernel: Kernel,
    pub ring: AsyncFd<RingBuf<MapData>>,
    pub lost: kernel::LostCounters,
    pub held_at_start: Vec<HeldAtStart>,
}

impl Traced {
    pub(crate) fn start(k: &KernelArgs) -> Result<Traced> {
        let mut kernel = Kernel::load(&load_options(k))?;
        let ring = kernel.take_events()?;
        let lost = kernel.take_lost()?;
        #[allow(deprecated)] // AsyncFd owns the ring buffer, and so its fd, while it lives.
        let ring = AsyncFd::new(ring).context("polling the ring buffer")?;
        // After attaching: a socket in this snapshot that goes away later was held before.
        let held_at_start = held::snapshot()?;
        trim_heap();
        Ok(Traced {
            kernel,
            ring,
            lost,
            held_at_start,
        })
    }
}

/// Runs the live tracer until a signal or the deadline.
pub async fn run(args: Args) -> Result<()> {
    args.view.check()?;
    // Before loading: a bad metrics address fails fast.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let Traced {
        kernel,
        mut ring,
        lost: mut lost_counters,
        held_at_start,
    } = Traced::start(&args.kernel)?;
    let mut p = Pipeline::new(&args.view, &args.rebuild, WallClock::now(), monotonic_ns())?;
    p.queue_output(args.output_buffer.unwrap_or_else(|| {
        let terminal = args.view.output.is_none() && io::stdout().is_terminal();
        if terminal {
            TERMINAL_OUTPUT_BUFFER
        } else {
            OUTPUT_BUFFER
        }
    }));
    let mut finder = RangeFinder::new();
    for r in held_ranges(&mut finder, &held_at_start) {
        p.set_range(r);
    }
    p.set_held_at_start(held_at_start);
    p.find_ranges(finder);
    let publisher = metrics_listener.map(|listener| {
        p.count_metrics(metrics::Counts::default());
        let first = p.metrics_snapshot(&[0; lost::NAMES.len()]);
        Publisher::serve(listener, first.unwrap_or_default())
    });

    let mut stop = Stop::install()?;
    announce(&kernel, "");
    let deadline = deadline(args.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(args.kernel.drain_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                p.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                p.drain(ring.get_mut());
                let lost_counts = lost_counters.read();
                p.check_lost(&lost_counts);
                p.process(Upto::InOrder(monotonic_ns()));
                p.flush();
                if let (Some(publisher), Some(s)) = (&publisher, p.metrics_snapshot(&lost_counts)) {
                    publisher.publish(s);
                }
            }
            _ = stop.wait() => break,
            _ = &mut deadline => break,
        }
        if p.write_failed() {
            break;
        }
    }

    // Programs still run until `kernel` drops: take what they wrote so far.
    p.drain(ring.get_mut());
    let lost_counts = lost_counters.read();
    let done = p.finish(&lost_counts, monotonic_ns(), args.view.output.as_deref());
    kernel.detach();
    done
}

/// The ranges of the tracer's namespace and of those where sockets held ports at start.
pub(crate) fn held_ranges(finder: &mut RangeFinder, held: &[HeldAtStart]) -> Vec<PortRange> {
    let own = kernel::held::own_netns().unwrap_or(0);
    let mut out = Vec::new();
    for (netns, pid, tid) in std::iter::once((own, 0, 0)).chain(
        held.iter()
            .map(|h| (h.ends.netns, h.owner.pid, h.owner.tid)),
    ) {
        out.extend(finder.find_anywhere(netns, pid, tid));
    }
    out
}

/// Loading parsed the kernel's BTF (tens of MB, freed by now): give those pages back
/// rather than carry them for the whole run.
pub(crate) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments to check; only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
