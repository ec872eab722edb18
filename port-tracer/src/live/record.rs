//! `port-tracer record`: the live kernel side, with the raw records written to a trace file
//! ([`crate::trace_file`]) instead of rebuilt: the cheapest path per event; `report` does
//! the rebuilding later, anywhere.

use std::{io::BufWriter, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use port_tracer_common::lost;

use super::{announce, deadline, drop_privileges, held_ranges, warn_if_absent, Stop, Traced};
use crate::{
    cgroups::Noter,
    clock::monotonic_ns,
    event::{record_owner, Event},
    filter::Filter,
    kernel::{self, ranges::RangeFinder, LoadOptions},
    output::{file, RunInfo, WallClock},
    trace_file::{Metadata, TraceWriter, RECORD_SIZE_VARIABLE},
};

/// What `record` does.
#[derive(Clone, Debug)]
pub struct RecordConfig {
    /// The trace file to write.
    pub output: PathBuf,
    /// Stop after this long (else at SIGINT or SIGTERM).
    pub duration: Option<Duration>,
    /// Replace an existing trace file.
    pub force: bool,
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

/// Records waiting in memory are written as a block once they reach this size, between
/// the timer's flushes.
const BLOCK_BYTES: usize = 4 << 20;

/// Records until a signal or the deadline.
pub async fn run(args: RecordConfig) -> Result<()> {
    // The file before the programs: a refused path costs no loading.
    kernel::privileges::check_load()?;
    let mut cgroups = Noter::new(super::host_cgroups(&args.runtime_state)?);
    let path = &args.output;
    let file = file::create(path, args.force, "trace file")?;
    let created = file::Created::of(path, &file);
    let traced = Traced::start(&args.load).inspect_err(|_| {
        if let Some(c) = created {
            c.remove_if_empty()
        }
    })?;
    warn_if_absent(args.keep.as_ref().and_then(|f| f.netns));
    let (kernel, mut ring, mut lost_counters) = (traced.kernel, traced.ring, traced.lost);
    let held_at_start = traced.held_at_start;

    let writing = || format!("writing to {}", path.display());
    let mut finder = RangeFinder::new()?;
    let keep = args.keep.as_ref();
    let run = RunInfo::this_host(args.host.clone());
    let meta = Metadata {
        host: run.host.unwrap_or_default(),
        boot_id: run.boot_id,
        kernel_release: kernel::kernel_release(),
        tier: kernel.tier.to_string(),
        port_tracer_version: env!("CARGO_PKG_VERSION").into(),
        record_size: RECORD_SIZE_VARIABLE,
        lost_reasons: lost::NAMES.iter().map(|n| n.to_string()).collect(),
        realtime_offset_ns: WallClock::now().offset_ns as i64,
        started_ns: monotonic_ns(),
        port_ranges: held_ranges(&mut finder, &held_at_start),
    };
    drop_privileges()?;
    let mut w = TraceWriter::new(BufWriter::with_capacity(BLOCK_BYTES, file), &meta)
        .with_context(writing)?;
    // Their owners' cgroups first, which no record will name.
    for h in &held_at_start {
        cgroups.note(h.owner.cgroup_id, h.owner.tid);
    }
    let named = cgroups.table.take_new();
    if !named.is_empty() {
        w.write_cgroups(&named).with_context(writing)?;
    }
    w.write_held(&held_at_start).with_context(writing)?;
    w.flush().with_context(writing)?;

    let mut stop = Stop::install()?;
    announce(&kernel, &format!(", recording to {}", path.display()));
    let deadline = deadline(args.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(args.drain.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut records, mut lost_written) = (0u64, [0u64; lost::COUNT as usize]);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                records += take(guard.get_inner_mut(), &mut w, &mut finder, &mut cgroups, keep).with_context(writing)?;
                guard.clear_ready();
                if w.pending_bytes() >= BLOCK_BYTES {
                    w.write_events().with_context(writing)?;
                }
            }
            _ = tick.tick() => {
                records += take(ring.get_mut(), &mut w, &mut finder, &mut cgroups, keep).with_context(writing)?;
                w.write_events().with_context(writing)?;
                let lost_now = lost_counters.read();
                if lost_now != lost_written {
                    w.write_lost(&lost_now).with_context(writing)?;
                    lost_written = lost_now;
                }
                // Flushed every tick: a crash loses at most this tick's records.
                w.flush().with_context(writing)?;
            }
            _ = stop.wait() => break,
            _ = &mut deadline => break,
        }
    }

    records +=
        take(ring.get_mut(), &mut w, &mut finder, &mut cgroups, keep).with_context(writing)?;
    let lost_now = lost_counters.read();
    w.write_lost(&lost_now).with_context(writing)?;
    w.finish(monotonic_ns()).with_context(writing)?;
    kernel.detach();
    for (netns, why) in finder.unreadable() {
        eprintln!(
            "port-tracer: the port range of network namespace {netns} could not be read \
             ({why}): the trace has none for it"
        );
    }
    let lost_total: u64 = lost_now.iter().sum();
    eprintln!(
        "port-tracer: recorded {records} events to {}; lost {lost_total}",
        path.display()
    );
    Ok(())
}

/// Moves what the ring buffer holds (what `keep` matches) to the trace, each namespace's
/// range and each cgroup's path before its first record; returns how many records.
fn take<W: std::io::Write>(
    ring: &mut RingBuf<MapData>,
    w: &mut TraceWriter<W>,
    finder: &mut RangeFinder,
    cgroups: &mut Noter,
    keep: Option<&Filter>,
) -> std::io::Result<u64> {
    let mut n = 0;
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
                    w.write_ranges(&[range])?;
                }
            }
            if cgroups.note(o.cgroup_id, o.tid) {
                w.write_cgroups(&cgroups.table.take_new())?;
            }
        }
        w.push_record(&item);
        n += 1;
    }
    Ok(n)
}
