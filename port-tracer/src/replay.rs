//! `port-tracer report` and `export`: a recorded trace ([`crate::trace_file`]) through the
//! rebuild engine ([`crate::rebuild`]) to a printer, as live tracing would have shown it,
//! summary included. The fuzz targets run this same [`replay`].

use std::{io, path::PathBuf};

use anyhow::{bail, Result};
use port_tracer_common::{lost, tiers};

use crate::{
    cgroups::Cgroups,
    lifetime::OutputRef,
    output::{Destination, Printer, RunInfo, WallClock},
    rebuild::{Rebuild, RebuildConfig, Upto},
    summary::Summary,
    trace_file::{
        set::{Coverage, TraceSet},
        Block, Blocks, Metadata, TraceError,
    },
};

/// What `report` and `export` do.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    /// The files of one recording by `record`: a trace, or a ring's files or directory.
    pub traces: Vec<PathBuf>,
    pub output: Destination,
    pub rebuild: RebuildConfig,
    /// The host's name on lifetime rows instead of the one recorded.
    pub host: Option<String>,
}

/// Reports a trace. A damaged trace is reported up to its last good block, then the
/// damage is the error; a trace without its end mark (the recorder was killed) is
/// reported whole, then that is the error: either way a non-zero exit. The files of a
/// ring are reported as one trace, saying what time they cover and what is missing.
pub fn run(config: ReportConfig) -> Result<()> {
    config.output.check()?;
    let set = TraceSet::open(&config.traces)?;
    let meta = set.meta().clone();
    let coverage = set.coverage();
    let clock = WallClock {
        offset_ns: meta.realtime_offset_ns.into(),
    };
    let cgroups = Cgroups::recorded();
    let run = RunInfo {
        host: config
            .host
            .clone()
            .or_else(|| Some(meta.host.clone()).filter(|h| !h.is_empty())),
        boot_id: meta.boot_id.clone(),
        started_ns: Some(meta.started_ns).filter(|&ns| ns != 0),
    };
    if let Some(kept) = &meta.recorded_only {
        eprintln!(
            "port-tracer: this trace holds only the sockets `record {}` kept",
            kept.flags()
        );
        for line in kept.excluded_by(&config.rebuild.filter) {
            eprintln!("port-tracer: {line}");
        }
    }
    let (mut printer, _) = config.output.open(clock, cgroups.clone(), &run)?;
    // Which file the damage, if any, is in: the set's reader stops there.
    let mut set = set;
    let done = replay(&mut set, config.rebuild, &mut *printer, &cgroups)
        .map_err(|e| anyhow::anyhow!("{}: {e}", set.path().display()))?;
    if meta.part.is_some() || coverage.files > 1 {
        eprintln!("port-tracer: {}", coverage.describe(&clock, done.newest_ns));
    }
    for path in &set.unended {
        eprintln!(
            "port-tracer: warning: {} has no end mark, yet later files of its recording \
             follow: read on",
            path.display()
        );
    }
    config.output.result(done.write_error)?;
    let path = set.path();
    if let Some(e) = done.damage {
        bail!(
            "{}: {e}; reported the {} bytes before it, skipped the last {} bytes",
            path.display(),
            done.good_bytes,
            set.size().saturating_sub(done.good_bytes)
        );
    }
    if !done.ended {
        // Complete up to its last flush, but not a whole recording: scripts must know.
        bail!(
            "{}: no end mark: the recording did not stop cleanly (killed?); reported \
             everything up to its last flush",
            path.display()
        );
    }
    Ok(())
}

impl Coverage {
    /// One line: the files, the time they cover, and what is missing.
    pub fn describe(&self, clock: &WallClock, end_ns: u64) -> String {
        let files = if self.files == 1 {
            format!("file {} of its recording", self.first_seq)
        } else {
            format!(
                "{} files of one recording (parts {} to {})",
                self.files, self.first_seq, self.last_seq
            )
        };
        let mut line = format!(
            "{files}, covering {} to {}",
            clock.date_time(self.first_started_ns),
            clock.date_time(end_ns.max(self.first_started_ns))
        );
        if self.first_seq > 1 {
            let older = if self.first_seq == 2 {
                "part 1 was".to_string()
            } else {
                format!("parts 1 to {} were", self.first_seq - 1)
            };
            line += &format!(
                "; {older} rotated away: nothing from the recording's start ({}) to {} is \
                 here, the sockets held at its start are unknown, and lifetimes begun \
                 before are seen from their first event here",
                clock.date_time(self.recording_started_ns),
                clock.date_time(self.first_started_ns)
            );
        }
        if !self.gaps.is_empty() {
            let gaps: Vec<String> = self.gaps.iter().map(u32::to_string).collect();
            line += &format!(
                "; missing between them: part {} (removed?): what it held is not here",
                gaps.join(", ")
            );
        }
        line
    }
}

/// What a replay came to.
#[derive(Debug)]
pub struct Replayed {
    pub summary: Summary,
    /// Blocks read intact, and the records in their `EVENTS` blocks.
    pub blocks: u64,
    pub records: u64,
    /// Bytes before the damage (or the whole trace) and the damage, if any.
    pub good_bytes: u64,
    pub damage: Option<TraceError>,
    /// The newest time the trace reached (monotonic ns): its end mark's, or its newest
    /// record's.
    pub newest_ns: u64,
    /// The trace has its end mark (the recorder stopped cleanly).
    pub ended: bool,
    /// The printer's first error; nothing more was written after it.
    pub write_error: Option<io::Error>,
}

/// Replays the trace `r` through a rebuild engine configured by `config` to `printer`,
/// summary last; the trace's cgroups go in `cgroups` (which `printer` names owners from). Damage (truncation, corruption) ends the replay where it is, reported in
/// [`Replayed::damage`]; any other read error is the error.
pub fn replay(
    r: impl Blocks,
    config: RebuildConfig,
    printer: &mut (dyn Printer + Send),
    cgroups: &Cgroups,
) -> Result<Replayed, TraceError> {
    replay_with(r, config, printer, cgroups, &mut |_| true)
}

/// Where a replay is: after each block of events, what the engine has shown up to the
/// newest record read (the live mode's "now"), and the kernel's lost counts so far.
pub struct Progress<'a> {
    pub engine: &'a Rebuild,
    pub newest_ns: u64,
    pub lost: &'a [u64],
    /// The trace ended (or its damage, or `progress` ended it): the last call.
    pub end: bool,
}

/// [`replay`], telling `progress` where it is after each block of events and once more at
/// the end, before the lifetimes still open are cut off; it ends early (as if the trace
/// ended there) when `progress` returns false.
pub fn replay_with(
    mut r: impl Blocks,
    config: RebuildConfig,
    printer: &mut (dyn Printer + Send),
    cgroups: &Cgroups,
    progress: &mut dyn FnMut(Progress<'_>) -> bool,
) -> Result<Replayed, TraceError> {
    // Traces before version 5 carry no cgroup table: their ids are not looked for.
    let names_cgroups = r.version() >= 5;
    let mut engine = Rebuild::new(config, r.meta().started_ns);
    engine.set_cgroups(cgroups.clone());
    // The trace names its tier: the one place it is looked up by name.
    engine.set_tier(tiers::by_name(&r.meta().tier), Some(r.version()));
    for range in r.meta().port_ranges.clone() {
        engine.set_range(range);
    }
    let mut w = Written {
        printer,
        error: None,
    };
    let mut lost_counts = vec![0u64; lost::COUNT as usize];
    let (mut newest, mut ended, mut blocks, mut records) = (0u64, false, 0u64, 0u64);
    let damage = loop {
        let block = match r.next_block() {
            Ok(Some(block)) => block,
            Ok(None) => break None,
            Err(e @ (TraceError::Truncated { .. } | TraceError::Corrupt { .. })) => break Some(e),
            Err(e) => return Err(e),
        };
        blocks += 1;
        match block {
            Block::Events(raw) => {
                for rec in raw.iter() {
                    records += 1;
                    let decoded = raw.decode(rec);
                    if let (true, Ok(ev)) = (names_cgroups, &decoded) {
                        cgroups.note(ev.task.cgroup_id);
                    }
                    if let Some(ts) = engine.push_decoded(decoded) {
                        newest = newest.max(ts);
                    }
                }
                engine.process(Upto::Excess, &mut |o| w.take(o));
                // The newest record stands for "now": what the live mode had at its drain.
                engine.process(Upto::InOrder(newest), &mut |o| w.take(o));
                let going_on = progress(Progress {
                    engine: &engine,
                    newest_ns: newest,
                    lost: &lost_counts,
                    end: false,
                });
                if !going_on {
                    break None;
                }
            }
            Block::Lost(counts) => {
                lost_counts = by_our_names(r.meta(), &counts);
                engine.check_lost(&lost_counts);
            }
            Block::Held(held) => {
                for h in held.iter().filter(|_| names_cgroups) {
                    cgroups.note(h.owner.cgroup_id);
                }
                engine.set_held_at_start(held)
            }
            Block::Cgroups(entries) => {
                for e in entries {
                    cgroups.insert(e);
                }
            }
            Block::Ranges(ranges) => {
                for range in ranges {
                    engine.set_range(range);
                }
            }
            Block::End(end_ns) => {
                ended = true;
                newest = newest.max(end_ns.unwrap_or(0));
            }
        }
        if w.error.is_some() {
            break None;
        }
    };
    // What the end mark's time puts in order, before the last look.
    engine.process(Upto::InOrder(newest), &mut |o| w.take(o));
    progress(Progress {
        engine: &engine,
        newest_ns: newest,
        lost: &lost_counts,
        end: true,
    });
    let mut summary = engine.finish(&lost_counts, newest, &mut |o| w.take(o));
    summary.cgroups = cgroups.counts();
    summary.recorded_only = r.meta().recorded_only.clone();
    if w.error.is_none() {
        w.error = w
            .printer
            .summary(&summary)
            .and_then(|()| w.printer.flush())
            .err();
    }
    Ok(Replayed {
        summary,
        blocks,
        records,
        good_bytes: r.good_bytes(),
        newest_ns: newest,
        damage,
        ended,
        write_error: w.error,
    })
}

/// A printer and its first error: nothing more is written after it.
struct Written<'a> {
    printer: &'a mut (dyn Printer + Send),
    error: Option<io::Error>,
}

impl Written<'_> {
    fn take(&mut self, o: OutputRef<'_>) {
        if self.error.is_none() {
            self.error = self.printer.write(o).err();
        }
    }
}

/// Lost counts in this build's reason order, matched by name (a trace from another version
/// may list them differently; unknown reasons are dropped, missing ones are 0).
fn by_our_names(meta: &Metadata, counts: &[u64]) -> Vec<u64> {
    lost::NAMES
        .iter()
        .map(|name| {
            meta.lost_reasons
                .iter()
                .position(|n| n == name)
                .and_then(|i| counts.get(i).copied())
                .unwrap_or(0)
        })
        .collect()
}
