//! `port-tracer record`: the live kernel side, with the raw records written to a trace file
//! ([`crate::trace_file`]) instead of rebuilt: the cheapest path per event; `report` does
//! the rebuilding later, anywhere.

use std::{fs::File, io::BufWriter, time::Duration};

use anyhow::{Context, Result};
use port_tracer_common::lost;

use crate::{
    cli::RecordArgs,
    clock::monotonic_ns,
    collector::{announce, deadline, Stop, Traced},
    kernel::{self, held},
    output::WallClock,
    trace_file::{Metadata, PortRange, TraceWriter, RECORD_SIZE},
};

/// Records waiting in memory are written as a block once they reach this size, between
/// the timer's flushes.
const BLOCK_BYTES: usize = 4 << 20;

/// Records until a signal or the deadline.
pub async fn run(args: RecordArgs) -> Result<()> {
    let traced = Traced::start(&args.kernel)?;
    let (kernel, mut ring, lost_counters) = (traced.kernel, traced.ring, traced.lost);
    let held_at_start = traced.held_at_start;

    let path = &args.output;
    let writing = || format!("writing to {}", path.display());
    let file = File::create(path)
        .with_context(|| format!("cannot create trace file {}", path.display()))?;
    let meta = Metadata {
        host: read_trimmed("/proc/sys/kernel/hostname"),
        kernel_release: kernel::kernel_release(),
        tier: kernel.tier.to_string(),
        port_tracer_version: env!("CARGO_PKG_VERSION").into(),
        record_size: RECORD_SIZE as u32,
        lost_reasons: lost::NAMES.iter().map(|n| n.to_string()).collect(),
        realtime_offset_ns: WallClock::now().offset_ns as i64,
        started_ns: monotonic_ns(),
        port_ranges: own_port_range().into_iter().collect(),
    };
    let mut w = TraceWriter::new(BufWriter::with_capacity(BLOCK_BYTES, file), &meta)
        .with_context(writing)?;
    w.write_held(&held_at_start).with_context(writing)?;
    w.flush().with_context(writing)?;

    let mut stop = Stop::install()?;
    announce(&kernel, &format!(", recording to {}", path.display()));
    let deadline = deadline(args.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(args.kernel.drain_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut records, mut lost_written) = (0u64, [0u64; lost::COUNT as usize]);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    w.push_record(&item);
                    records += 1;
                }
                guard.clear_ready();
                if w.pending_bytes() >= BLOCK_BYTES {
                    w.write_events().with_context(writing)?;
                }
            }
            _ = tick.tick() => {
                let ring = ring.get_mut();
                while let Some(item) = ring.next() {
                    w.push_record(&item);
                    records += 1;
                }
                w.write_events().with_context(writing)?;
                let lost_now = lost_counters.read()?;
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

    let ring = ring.get_mut();
    while let Some(item) = ring.next() {
        w.push_record(&item);
        records += 1;
    }
    let lost_now = lost_counters.read()?;
    w.write_lost(&lost_now).with_context(writing)?;
    w.finish().with_context(writing)?;
    drop(kernel);
    let lost_total: u64 = lost_now.iter().sum();
    eprintln!(
        "port-tracer: recorded {records} events to {}; lost {lost_total}",
        path.display()
    );
    Ok(())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The ephemeral range and reserved ports of the tracer's own network namespace.
pub(crate) fn own_port_range() -> Option<PortRange> {
    let range = read_trimmed("/proc/sys/net/ipv4/ip_local_port_range");
    let mut it = range.split_whitespace().map(|p| p.parse::<u16>());
    let (Some(Ok(low)), Some(Ok(high))) = (it.next(), it.next()) else {
        return None;
    };
    Some(PortRange {
        netns: held::own_netns().ok()?,
        low,
        high,
        reserved: read_trimmed("/proc/sys/net/ipv4/ip_local_reserved_ports"),
    })
}
