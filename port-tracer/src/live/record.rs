//! `port-tracer record`: the live kernel side, with the raw records written to a trace file
//! ([`crate::trace_file`]) instead of rebuilt: the cheapest path per event; `report` does
//! the rebuilding later, anywhere.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use port_tracer_common::lost;

use super::{
    announce, deadline, drop_privileges, held_ranges,
    recorder::{Opened, RecordTarget, Recorded, Recorder},
    warn_if_absent, Stop, Traced,
};
use crate::{
    cgroups::Noter,
    clock::monotonic_ns,
    event::{record_owner, Event},
    filter::Filter,
    kernel::{self, ranges::RangeFinder, LoadOptions},
    output::{RunInfo, WallClock},
    trace_file::{Metadata, RecordedFilter, RECORD_SIZE_VARIABLE},
};

/// What `record` does.
#[derive(Clone, Debug)]
pub struct RecordConfig {
    /// Where the trace goes.
    pub target: RecordTarget,
    /// Stop after this long (else at SIGINT or SIGTERM).
    pub duration: Option<Duration>,
    /// Record only the sockets this selects (None: all).
    pub keep: Option<Filter>,
    pub load: LoadOptions,
    /// Drain the ring buffer (and flush the file) at least this often.
    pub drain: Duration,
    /// Where container runtimes keep their state (see [`crate::cgroups::runtime`]).
    pub runtime_state: PathBuf,
    /// The host's name to store (None: its hostname).
    pub host: Option<String>,
}

/// The trace's header for a recording starting now on this host, its wall times read
/// with `clock` (live `--record` passes its output's: report of the trace renders times
/// as the live output did).
pub(crate) fn metadata(
    clock: WallClock,
    host: Option<String>,
    tier: &kernel::Tier,
    port_ranges: Vec<crate::trace_file::PortRange>,
) -> Metadata {
    let run = RunInfo::this_host(host);
    Metadata {
        host: run.host.unwrap_or_default(),
        boot_id: run.boot_id,
        kernel_release: kernel::kernel_release(),
        tier: tier.to_string(),
        port_tracer_version: env!("CARGO_PKG_VERSION").into(),
        record_size: RECORD_SIZE_VARIABLE,
        lost_reasons: lost::NAMES.iter().map(|n| n.to_string()).collect(),
        realtime_offset_ns: clock.offset_ns as i64,
        started_ns: monotonic_ns(),
        port_ranges,
        part: None,
        recorded_only: None,
    }
}

/// Records until a signal or the deadline.
pub async fn run(args: RecordConfig) -> Result<()> {
    // The file before the programs: a refused path costs no loading.
    kernel::privileges::check_load()?;
    let mut cgroups = Noter::new(super::host_cgroups(&args.runtime_state)?);
    let opened = Opened::open(args.target.clone())?;
    let traced = match Traced::start(&args.load) {
        Ok(t) => t,
        Err(e) => {
            opened.abandon();
            return Err(e);
        }
    };
    warn_if_absent(args.keep.as_ref().and_then(|f| f.netns));
    let (kernel, mut ring, mut lost_counters) = (traced.kernel, traced.ring, traced.lost);
    // The filters keep what the trace holds, sockets held at start included.
    let mut held_at_start = traced.held_at_start;
    if let Some(f) = &args.keep {
        held_at_start.retain(|h| f.matches(&h.ends, &h.owner));
    }

    let mut finder = RangeFinder::new()?;
    let keep = args.keep.as_ref();
    let mut meta = metadata(
        WallClock::now(),
        args.host.clone(),
        &kernel.tier,
        held_ranges(&mut finder, &held_at_start),
    );
    meta.recorded_only = keep.and_then(RecordedFilter::of);
    drop_privileges()?;
    // Their owners' cgroups first, which no record will name.
    for h in &held_at_start {
        cgroups.note(h.owner.cgroup_id, h.owner.tid);
    }
    let mut rec = opened.start(meta, &held_at_start, cgroups.table.take_new())?;

    let mut stop = Stop::install()?;
    announce(
        &kernel,
        &format!(", recording to {}", args.target.path.display()),
    );
    let deadline = deadline(args.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(args.drain.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                take(guard.get_inner_mut(), &mut rec, &mut finder, &mut cgroups, keep)
                    .with_context(|| rec.writing())?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                take(ring.get_mut(), &mut rec, &mut finder, &mut cgroups, keep)
                    .and_then(|()| rec.tick(&lost_counters.read()))
                    .with_context(|| rec.writing())?;
            }
            _ = stop.wait() => break,
            _ = &mut deadline => break,
        }
    }

    take(ring.get_mut(), &mut rec, &mut finder, &mut cgroups, keep)
        .with_context(|| rec.writing())?;
    let lost_now = lost_counters.read();
    let writing = rec.writing();
    let done = rec.finish(&lost_now, monotonic_ns()).context(writing)?;
    kernel.detach();
    for (netns, why) in finder.unreadable() {
        eprintln!(
            "port-tracer: the port range of network namespace {netns} could not be read \
             ({why}): the trace has none for it"
        );
    }
    let lost_total: u64 = lost_now.iter().sum();
    eprintln!(
        "port-tracer: recorded {} events to {}{}; lost {lost_total}",
        done.records,
        args.target.path.display(),
        done.describe()
    );
    Ok(())
}

impl Recorded {
    /// ` (N bytes, B per event, compressed Rx; F files, K rotated away)`.
    pub fn describe(&self) -> String {
        let mut s = format!(" ({} bytes", self.bytes_out);
        if self.records > 0 {
            s += &format!(
                ", {:.1} per event",
                self.bytes_out as f64 / self.records as f64
            );
        }
        if self.bytes_out > 0 && self.bytes_in > self.bytes_out {
            s += &format!(
                ", compressed {:.1}x",
                self.bytes_in as f64 / self.bytes_out as f64
            );
        }
        if self.parts > 1 || self.removed > 0 {
            s += &format!("; {} files, {} rotated away", self.parts, self.removed);
        }
        s + ")"
    }
}

/// Moves what the ring buffer holds (what `keep` matches) to the recording, each
/// namespace's range and each cgroup's path before its first record.
fn take(
    ring: &mut RingBuf<MapData>,
    rec: &mut Recorder,
    finder: &mut RangeFinder,
    cgroups: &mut Noter,
    keep: Option<&Filter>,
) -> std::io::Result<()> {
    while let Some(item) = ring.next() {
        if let Some(f) = keep {
            // Undecodable records are kept: `report` counts them.
            if Event::decode(&item).is_ok_and(|ev| !f.matches(&ev.ends, &ev.task)) {
                continue;
            }
        }
        if let Some(o) = record_owner(&item) {
            // Releases and TIME_WAIT events carry no task: a later event names where to look.
            if o.pid != 0 && !finder.tried(o.netns) {
                if let Some(range) = finder.find(o.netns, o.pid, o.tid) {
                    rec.range(range)?;
                }
            }
            if cgroups.note(o.cgroup_id, o.tid) {
                rec.cgroups(cgroups.table.take_new())?;
            }
        }
        rec.push(&item)?;
    }
    Ok(())
}
