//! Live tracing: the kernel programs attached, the ring buffer drained in batches into a
//! [`backlog`], the rebuild engine ([`crate::rebuild`]) fed from it on a thread of its own,
//! and what it shows written from a third. Draining only copies, so it never waits for
//! rebuilding. [`record`] writes the raw records to a trace file instead.

pub mod backlog;
pub mod record;
pub mod recorder;

use std::{
    io::{self, IsTerminal},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use port_tracer_common::lost;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use self::backlog::{backlog, records, BacklogReceiver, BacklogSender, Item};
use crate::{
    cgroups::{Cgroups, Lookup, Noter},
    clock::monotonic_ns,
    event::record_owner,
    kernel::{self, held, privileges, ranges::RangeFinder, Kernel, LoadOptions},
    lifetime::HeldAtStart,
    metrics::{self, Publisher},
    output::{Destination, OutputQueue, RunInfo, WallClock},
    port_range::PortRange,
    rebuild::{Rebuild, RebuildConfig, Upto},
    top::{Feed, View},
};

/// What live tracing does.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub output: Destination,
    pub load: LoadOptions,
    /// Drain the ring buffer at least this often.
    pub drain: Duration,
    /// Where container runtimes keep their state (see [`crate::cgroups::runtime`]).
    pub runtime_state: PathBuf,
    pub rebuild: RebuildConfig,
    /// Stop after this long (else at SIGINT or SIGTERM).
    pub duration: Option<Duration>,
    /// The most records that wait for a slow output; None: by where it goes.
    pub output_buffer: Option<usize>,
    /// Serve Prometheus metrics here.
    pub metrics: Option<SocketAddr>,
    /// Allocations in the metrics also by container (`--metrics-labels container`).
    pub metrics_by_container: bool,
    /// The most bytes of records that wait between draining and rebuilding; None: see
    /// [`default_backlog_bytes`].
    pub backlog_bytes: Option<usize>,
    /// The host's name on lifetime rows (None: its hostname).
    pub host: Option<String>,
    /// Also write the raw records to a trace (`--record`), as `record` would.
    pub record: Option<recorder::RecordTarget>,
}

/// Records that may wait for a terminal: more than anyone reads before the summary.
const TERMINAL_OUTPUT_BUFFER: usize = 1 << 14;
/// Records that may wait for a file or a pipe (about 40 MB).
const OUTPUT_BUFFER: usize = 1 << 18;

/// What the drain side tells the rebuild side, in order with the records.
#[derive(Debug, PartialEq)]
enum Note {
    /// A namespace's port range, found before the records of it that follow.
    Range(PortRange),
    /// The ring buffer was drained at `now_ns`; the kernel's lost counts and the records the
    /// backlog dropped, as they stood then.
    Tick {
        now_ns: u64,
        lost: [u64; lost::COUNT as usize],
        backlog_full: u64,
    },
    /// The run ended at `end_ns`, with the final counts.
    End {
        end_ns: u64,
        lost: [u64; lost::COUNT as usize],
        backlog_full: u64,
    },
}

/// The drain side: copies records out of the ring buffer into the backlog, and finds each
/// namespace's range as its first records arrive (while the process that made them is
/// likely still there to look through).
struct Drain {
    backlog: BacklogSender<Note>,
    ranges: RangeFinder,
    /// Owners' cgroups, resolved as they first appear (while they likely still exist).
    cgroups: Noter,
    /// `--record`: the same records to a trace, until it fails.
    recorder: Option<recorder::Recorder>,
    /// Why the recording stopped, if it failed.
    record_error: Option<anyhow::Error>,
}

impl Drain {
    fn push_record(&mut self, bytes: &[u8]) {
        if let Some(o) = record_owner(bytes) {
            // Releases and TIME_WAIT events carry no task: a later event names where to look.
            if o.pid != 0 && !self.ranges.tried(o.netns) {
                // Before the record reaches the analyses: their groups take the range
                // they find when they begin.
                if let Some(r) = self.ranges.find(o.netns, o.pid, o.tid) {
                    if let Some(rec) = &mut self.recorder {
                        let done = rec.range(r.clone());
                        self.recorded(done);
                    }
                    self.backlog.push_note(Note::Range(r));
                }
            }
            // Before the record reaches the printers, which name it.
            if self.cgroups.note(o.cgroup_id, o.tid) {
                let new = self.cgroups.table.take_new();
                if let Some(rec) = &mut self.recorder {
                    let done = rec.cgroups(new);
                    self.recorded(done);
                }
            }
        }
        if let Some(rec) = &mut self.recorder {
            let done = rec.push(bytes);
            self.recorded(done);
        }
        self.backlog.push_record(bytes);
    }

    /// A recording that fails stops, said at once; tracing goes on, and the run ends in
    /// the error.
    fn recorded(&mut self, done: io::Result<()>) {
        if let Err(e) = done {
            let rec = self.recorder.take().expect("recording");
            let e = anyhow::Error::new(e).context(rec.writing());
            eprintln!("port-tracer: the recording stopped: {e:#}; tracing goes on");
            self.record_error = Some(e);
        }
    }

    fn tick_recording(&mut self, lost: &[u64]) {
        if let Some(rec) = &mut self.recorder {
            let done = rec.tick(lost);
            self.recorded(done);
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            self.push_record(&item);
        }
        self.backlog.hand_over();
    }
}

/// The rebuild side: the engine fed from the backlog, with the output queue and the
/// metrics it updates.
struct Live {
    engine: Rebuild,
    /// None for `top`, which shows no records.
    queue: Option<OutputQueue>,
    publisher: Option<Publisher>,
    /// `top`'s screen, which asks for a view now and then.
    screen: Option<Screen>,
    cgroups: Cgroups,
    /// Allocations in the metrics also by container.
    metrics_by_container: bool,
}

/// The backlog held at least this much since it was last empty: give the memory back
/// once it is.
const TRIM_AFTER_BYTES: usize = 32 << 20;

impl Live {
    fn process(&mut self, upto: Upto) {
        match &mut self.queue {
            Some(queue) => self.engine.process(upto, &mut |o| queue.push(o)),
            None => self.engine.process(upto, &mut |_| {}),
        }
    }

    /// Events lost by reason, with the kernel's counts `lost_counts`: the summary's own.
    fn lost(&self, lost_counts: &[u64]) -> Vec<(&'static str, u64)> {
        lost::NAMES
            .iter()
            .copied()
            .zip(lost_counts.iter().copied())
            .chain([
                ("undecodable", self.engine.undecodable()),
                (crate::rebuild::BACKLOG_FULL, self.engine.backlog_full()),
            ])
            .collect()
    }

    /// The metrics now, with the kernel's lost counts `lost_counts`: the summary's own
    /// counts.
    fn metrics_snapshot(&self, lost_counts: &[u64]) -> metrics::Snapshot {
        let lost = self.lost(lost_counts);
        let stats = self.engine.stats();
        let mut snapshot = metrics::Snapshot::of(&stats.tally, lost);
        snapshot.occupancy = metrics::Occupancy::of(stats.analysis.occupancy.current());
        snapshot.headroom = stats
            .analysis
            .headroom
            .closest(metrics::HEADROOM_DESTINATIONS);
        if self.metrics_by_container {
            let mut names = Lookup::new(self.cgroups.clone());
            snapshot.allocations_by_container =
                metrics::by_container(stats.analysis.churn.per_cgroup_origin(), |id| {
                    names.get(id).map(|cg| cg.short_label())
                });
        }
        snapshot
    }

    /// Rebuilds what the backlog hands over until its end; the first write error, if any.
    /// Sets `stop` when the output fails (a closed pipe, a full disk): tracing ends.
    fn run(mut self, backlog: BacklogReceiver<Note>, stop: &AtomicBool) -> Option<io::Error> {
        let mut held_most = 0;
        while let Some(item) = backlog.recv() {
            match item {
                Item::Records(chunk) => {
                    held_most = held_most.max(chunk.capacity() + backlog.queued_bytes());
                    for record in records(&chunk) {
                        self.engine.push_record(record);
                    }
                    self.process(Upto::Excess);
                }
                Item::Note(Note::Range(r)) => self.engine.set_range(r),
                Item::Note(Note::Tick {
                    now_ns,
                    lost,
                    backlog_full,
                }) => {
                    self.engine.check_lost(&lost);
                    self.engine.check_backlog_full(backlog_full);
                    self.process(Upto::InOrder(now_ns));
                    if let Some(queue) = &mut self.queue {
                        queue.flush();
                        if queue.failed() {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    if let Some(publisher) = &self.publisher {
                        publisher.publish(self.metrics_snapshot(&lost));
                    }
                    if self.screen.as_ref().is_some_and(|s| s.feed.wanted()) {
                        let lost = self.lost(&lost);
                        let screen = self.screen.as_mut().expect("checked above");
                        let view = View::of(
                            &self.engine,
                            now_ns,
                            Some(screen.tier),
                            &lost,
                            &mut screen.names,
                        );
                        screen.feed.publish(view);
                    }
                    if held_most >= TRIM_AFTER_BYTES && backlog.is_empty() {
                        held_most = 0;
                        trim_heap();
                    }
                }
                Item::Note(Note::End {
                    end_ns,
                    lost,
                    backlog_full,
                }) => {
                    self.engine.check_backlog_full(backlog_full);
                    return self.finish(&lost, end_ns);
                }
            }
        }
        // The drain side ended without its last word (it failed): end with what came.
        let lost = [0; lost::COUNT as usize];
        self.finish(&lost, monotonic_ns())
    }

    /// Ends the run: everything held goes through, then the summary; the first write
    /// error, if any.
    fn finish(self, lost_counts: &[u64], end_ns: u64) -> Option<io::Error> {
        let Live {
            engine,
            queue,
            cgroups,
            ..
        } = self;
        // `top` shows no summary: its screen is gone by now.
        let mut queue = queue?;
        let mut summary = engine.finish(lost_counts, end_ns, &mut |o| queue.push(o));
        summary.output_dropped = queue.dropped();
        summary.cgroups = cgroups.counts();
        queue.finish(summary).err()
    }
}

/// The traced host's cgroups, its hierarchy walked now, containers named from the
/// runtimes' state under `runtime_state`; without a cgroup v2 mount, an empty table
/// (every id counted as unresolved).
pub fn host_cgroups(runtime_state: &std::path::Path) -> Result<Cgroups> {
    if !runtime_state.is_dir() {
        anyhow::bail!(
            "--runtime-state {}: not a directory (the host's root, or where it is mounted)",
            runtime_state.display()
        );
    }
    let state = crate::cgroups::runtime::RuntimeState::at(runtime_state.to_path_buf());
    Ok(match kernel::cgroup2_root() {
        Ok(root) => Cgroups::on_host(crate::cgroups::host::Hierarchy::walk(root), state),
        Err(_) => Cgroups::recorded(),
    })
}

/// The backlog's default size: 256 MiB (2 million records of the largest kind, more than
/// the benchmark's UDP flood brings), or a quarter of the memory available at the start
/// if that is less (at least 16 MiB).
pub fn default_backlog_bytes() -> usize {
    const DEFAULT: usize = 256 << 20;
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    });
    match available {
        Some(bytes) => DEFAULT.min(bytes / 4).max(16 << 20),
        None => DEFAULT,
    }
}

/// `top`'s screen, as the rebuild side sees it.
struct Screen {
    feed: Feed,
    tier: &'static str,
    names: Lookup,
}

/// Runs the live tracer until a signal or the deadline.
pub async fn run(config: LiveConfig) -> Result<()> {
    run_with(config, None).await
}

/// Runs the live tracer until a signal, the deadline or `screen` quits; with a `screen`
/// (`top`), nothing is written: views go to it when it asks.
pub async fn run_with(config: LiveConfig, screen: Option<Feed>) -> Result<()> {
    if screen.is_none() {
        config.output.check()?;
    }
    // Before loading: a bad metrics address fails fast.
    let metrics_listener = match config.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // The output before the programs: a refused path costs no loading.
    privileges::check_load()?;
    let cgroups = host_cgroups(&config.runtime_state)?;
    let recording = config
        .record
        .clone()
        .map(recorder::Opened::open)
        .transpose()?;
    // One clock for the output and the recording: times render alike in both.
    let clock = WallClock::now();
    let (printer, created) = match screen {
        None => {
            let run = RunInfo::this_host(config.host.clone());
            let (p, created) = config.output.open(clock, cgroups.clone(), &run)?;
            (Some(p), created)
        }
        Some(_) => (None, None),
    };
    let Traced {
        kernel,
        mut ring,
        lost: mut lost_counters,
        held_at_start,
    } = match Traced::start(&config.load) {
        Ok(t) => t,
        Err(e) => {
            if let Some(c) = created {
                c.remove_if_empty()
            }
            if let Some(r) = recording {
                r.abandon()
            }
            return Err(e);
        }
    };
    warn_if_absent(config.rebuild.filter.netns);
    let mut ranges = RangeFinder::new()?;
    let held_ranges = held_ranges(&mut ranges, &held_at_start);
    let record_meta = record::metadata(
        clock,
        config.host.clone(),
        &kernel.tier,
        held_ranges.clone(),
    );
    // Before the output's and the rebuild's threads start: they take the capabilities
    // their creator has.
    drop_privileges()?;
    let start_ns = monotonic_ns();
    let limit = config.output_buffer.unwrap_or_else(|| {
        let terminal = config.output.to_stdout() && io::stdout().is_terminal();
        if terminal {
            TERMINAL_OUTPUT_BUFFER
        } else {
            OUTPUT_BUFFER
        }
    });
    let mut live = Live {
        engine: Rebuild::new(config.rebuild.clone(), start_ns),
        queue: None,
        publisher: None,
        screen: screen.clone().map(|feed| Screen {
            feed,
            tier: kernel.tier.info().name,
            names: Lookup::new(cgroups.clone()),
        }),
        cgroups: cgroups.clone(),
        metrics_by_container: config.metrics_by_container,
    };
    for r in held_ranges {
        live.engine.set_range(r);
    }
    live.engine.set_tier(Some(kernel.tier.info()), None);
    live.engine.set_cgroups(live.cgroups.clone());
    // Their owners' cgroups, which no record will name.
    for h in &held_at_start {
        live.cgroups.note(h.owner.cgroup_id);
    }
    let held_cgroups = live.cgroups.take_new();
    let recorder = match recording {
        Some(r) => Some(r.start(record_meta, &held_at_start, held_cgroups)?),
        None => None,
    };
    live.engine.set_held_at_start(held_at_start);
    live.publisher = metrics_listener
        .map(|listener| Publisher::serve(listener, live.metrics_snapshot(&[0; lost::NAMES.len()])));
    live.queue = printer.map(|p| OutputQueue::start(p, limit));

    let backlog_bytes = config.backlog_bytes.unwrap_or_else(default_backlog_bytes);
    let (tx, rx) = backlog(backlog_bytes);
    let mut drain = Drain {
        backlog: tx,
        ranges,
        cgroups: Noter::new(cgroups),
        recorder,
        record_error: None,
    };
    let stop_rebuild = Arc::new(AtomicBool::new(false));
    let rebuilder = {
        let stop = stop_rebuild.clone();
        std::thread::Builder::new()
            .name("rebuild".into())
            .spawn(move || live.run(rx, &stop))
            .context("starting the rebuild thread")?
    };

    let mut stop = Stop::install()?;
    announce(&kernel, "");
    if let Some(s) = &screen {
        s.start();
    }
    let deadline = deadline(config.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(config.drain.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain.drain(ring.get_mut());
                let lost = lost_counters.read();
                drain.tick_recording(&lost);
                let backlog_full = drain.backlog.dropped();
                drain.backlog.push_note(Note::Tick { now_ns: monotonic_ns(), lost, backlog_full });
            }
            _ = stop.wait() => break,
            _ = &mut deadline => break,
        }
        if stop_rebuild.load(Ordering::Relaxed) || screen.as_ref().is_some_and(Feed::quitting) {
            break;
        }
    }

    // Programs still run until `kernel` is detached: take what they wrote so far.
    drain.drain(ring.get_mut());
    let lost = lost_counters.read();
    let backlog_full = drain.backlog.dropped();
    let end_ns = monotonic_ns();
    drain.backlog.push_note(Note::End {
        end_ns,
        lost,
        backlog_full,
    });
    let Drain {
        backlog,
        ranges,
        recorder,
        mut record_error,
        ..
    } = drain;
    if let Some(rec) = recorder {
        let writing = rec.writing();
        match rec.finish(&lost, end_ns) {
            Ok(done) => eprintln!(
                "port-tracer: recorded {} events to {}{}",
                done.records,
                config
                    .record
                    .as_ref()
                    .map_or(String::new(), |t| t.path.display().to_string()),
                done.describe()
            ),
            Err(e) => record_error = Some(anyhow::Error::new(e).context(writing)),
        }
    }
    drop(backlog);
    // While the rebuild thread works through what is left.
    kernel.detach();
    let error = match rebuilder.join() {
        Ok(error) => error,
        Err(_) => Some(io::Error::other("the rebuild thread panicked")),
    };
    for (netns, why) in ranges.unreadable() {
        eprintln!(
            "port-tracer: the port range of network namespace {netns} could not be \
             read ({why}): its occupancy counts every port"
        );
    }
    config.output.result(error)?;
    match record_error {
        Some(e) => Err(e.context("the recording stopped early (the trace reads up to there)")),
        None => Ok(()),
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
    let tw_note = kernel
        .time_wait_untraced
        .map(|why| format!(" (TIME_WAIT not traced: {why})"))
        .unwrap_or_default();
    for (tier, why) in &kernel.passed_over {
        eprintln!("port-tracer: the {tier} tier does not work here: {why}");
    }
    eprintln!(
        "port-tracer: tracing with the {} tier on Linux {}{tw_note}{doing}; Ctrl-C to stop",
        kernel.tier,
        kernel::kernel_release()
    );
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
    pub(crate) fn start(load: &LoadOptions) -> Result<Traced> {
        let mut kernel = Kernel::load(load)?;
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

/// Keeps only the capabilities tracing needs from now on (README, "Privileges"): the
/// programs are attached, the files open, the sockets held at start read.
pub(crate) fn drop_privileges() -> Result<()> {
    privileges::keep_only(&privileges::collector_keeps())
        .context("dropping the capabilities tracing no longer needs")
}

/// Says so when `--netns` names a namespace no thread and no /run/netns name uses now: a
/// typo traces nothing, but the namespace may also appear later.
pub(crate) fn warn_if_absent(netns: Option<u32>) {
    if let Some(netns) = netns {
        if !held::namespaces().contains_key(&netns) {
            eprintln!(
                "port-tracer: warning: no network namespace {netns} exists now (no process \
                 and no /run/netns name uses it): tracing it in case it appears"
            );
        }
    }
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
