//! `port-tracer report`: a recorded trace ([`crate::trace_file`]) through the live mode's
//! pipeline, so a report shows what live tracing would have shown, summary included.

use std::{fs::File, io::BufReader};

use anyhow::{bail, Context, Result};
use port_tracer_common::lost;

use crate::{
    cli::ReportArgs,
    collector::{Pipeline, Upto},
    output::WallClock,
    trace_file::{Block, Metadata, TraceError, TraceReader, RECORD_SIZE},
};

/// Reports a trace. A damaged trace is reported up to its last good block, then the
/// damage is the error; a trace without its end mark (the recorder was killed) is
/// reported whole, then that is the error: either way a non-zero exit.
pub fn run(args: ReportArgs) -> Result<()> {
    args.view.check()?;
    let path = &args.trace;
    let file = File::open(path).with_context(|| format!("cannot open trace {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = TraceReader::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let clock = WallClock {
        offset_ns: r.meta.realtime_offset_ns.into(),
    };
    let mut p = Pipeline::new(&args.view, &args.rebuild, clock, r.meta.started_ns)?;
    for range in &r.meta.port_ranges {
        p.set_range(range.clone());
    }
    let mut lost_counts = vec![0u64; lost::COUNT as usize];
    let mut newest = 0u64;
    let mut ended = false;
    let damage = loop {
        match r.next_block() {
            Ok(Some(Block::Events(raw))) => {
                for rec in raw.chunks_exact(RECORD_SIZE) {
                    if let Some(ts) = p.push_record(rec) {
                        newest = newest.max(ts);
                    }
                }
                p.process(Upto::Excess);
                // The newest record stands for "now": what the live mode had at its drain.
                p.process(Upto::InOrder(newest));
            }
            Ok(Some(Block::Lost(counts))) => {
                lost_counts = by_our_names(&r.meta, &counts);
                p.check_lost(&lost_counts);
            }
            Ok(Some(Block::Held(held))) => p.set_held_at_start(held),
            Ok(Some(Block::Ranges(ranges))) => {
                for range in ranges {
                    p.set_range(range);
                }
            }
            Ok(Some(Block::End(end_ns))) => {
                ended = true;
                newest = newest.max(end_ns.unwrap_or(0));
            }
            Ok(None) => break None,
            Err(e @ (TraceError::Truncated { .. } | TraceError::Corrupt { .. })) => break Some(e),
            Err(e) => bail!("{}: {e}", path.display()),
        }
        if p.write_failed() {
            break None;
        }
    };
    let good = r.offset;
    p.finish(&lost_counts, newest, args.view.output.as_deref())?;
    if let Some(e) = damage {
        bail!(
            "{}: {e}; reported the {good} bytes before it, skipped the last {} bytes",
            path.display(),
            size.saturating_sub(good)
        );
    }
    if !ended {
        // Complete up to its last flush, but not a whole recording: scripts must know.
        bail!(
            "{}: no end mark: the recording did not stop cleanly (killed?); reported \
             everything up to its last flush",
            path.display()
        );
    }
    Ok(())
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
