//! The live collector: drains the ring buffer in batches, puts events back in order, feeds
//! the tracker and writes what it produces.

use std::{
    io::{self, BufWriter, Write},
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
    cli::Args,
    clock::monotonic_ns,
    event::Event,
    filter::Filter,
    kernel::{self, held, Kernel, LoadOptions},
    lifetime::Output,
    lifetime::Tracker,
    output::{Sink, WallClock},
    reorder::Reorderer,
    summary::{Lost, Stats, Summary},
};

/// The user's side of the pipeline: filter, count, write.
struct Shown<W: Write> {
    filter: Filter,
    stats: Stats,
    sink: Sink<W>,
    /// The first write error; nothing more is written after it.
    write_error: Option<io::Error>,
}

impl<W: Write> Shown<W> {
    /// Runs one write unless an earlier one failed, keeping the first error.
    fn write(&mut self, f: impl FnOnce(&mut Sink<W>) -> io::Result<()>) {
        if self.write_error.is_none() {
            self.write_error = f(&mut self.sink).err();
        }
    }

    fn take(&mut self, o: Output) {
        if self.filter.matches_output(&o) {
            self.stats.observe(&o);
            self.write(|sink| sink.write(&o));
        }
    }
}

/// Everything between the ring buffer and the output.
struct Pipeline<W: Write> {
    reorder: Reorderer,
    tracker: Tracker,
    shown: Shown<W>,
    undecodable: u64,
    lost_seen: u64,
}

/// How far [`Pipeline::process`] goes.
enum Upto {
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

impl<W: Write> Pipeline<W> {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            match Event::decode(&item) {
                Ok(ev) => self.reorder.push(ev),
                Err(_) => self.undecodable += 1,
            }
        }
        self.process(Upto::Excess);
    }

    /// Processes held events up to `upto`.
    fn process(&mut self, upto: Upto) {
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
    fn check_lost(&mut self, counts: &[u64]) {
        let total: u64 = counts.iter().sum();
        if total > self.lost_seen {
            self.lost_seen = total;
            self.tracker.mark_lossy();
        }
    }
}

fn open_output(args: &Args) -> Result<Box<dyn Write + Send>> {
    Ok(match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    })
}

/// Runs the live tracer until a signal or the deadline.
pub async fn run(args: Args) -> Result<()> {
    let out = open_output(&args)?;
    let mut kernel = Kernel::load(&LoadOptions {
        tier: args.attach,
        ring_bytes: args.ring_size,
        wakeup_bytes: args.wakeup_bytes,
    })?;
    let ring = kernel.take_events()?;
    let lost_counters = kernel.take_lost()?;
    #[allow(deprecated)] // AsyncFd owns the ring buffer, and so its fd, for as long as it lives.
    let mut ring = AsyncFd::new(ring).context("polling the ring buffer")?;

    // Loading parsed the kernel's BTF (tens of MB, freed by now): give those pages back
    // rather than carry them for the whole run.
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments to check; only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let mut tracker = Tracker::with_max_open(args.max_lifetimes);
    // After attaching: a socket in this snapshot that goes away later was held before start.
    tracker.set_held_at_start(held::snapshot()?);

    let filter = Filter {
        pid: args.pid,
        comm: args.comm.clone(),
        ports: args.port,
        proto: args.proto.map(Into::into),
        netns: args.netns,
    };
    let mut p = Pipeline {
        reorder: Reorderer::new(args.reorder_ms * 1_000_000),
        tracker,
        shown: Shown {
            filter,
            stats: Stats::default(),
            sink: Sink::new(
                BufWriter::with_capacity(1 << 16, out),
                args.format,
                WallClock::now(),
            ),
            write_error: None,
        },
        undecodable: 0,
        lost_seen: 0,
    };

    // Before saying we trace: a signal from then on must end the run cleanly.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let tw_note = if kernel.time_wait_traced {
        ""
    } else {
        " (TIME_WAIT not traced: tw_timer_handler not in /proc/kallsyms)"
    };
    for (tier, why) in &kernel.passed_over {
        eprintln!("port-tracer: the {tier} tier does not work here: {why}");
    }
    eprintln!(
        "port-tracer: tracing with the {} tier on Linux {}{tw_note}; Ctrl-C to stop",
        kernel.tier,
        kernel::kernel_release()
    );

    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(args.drain_ms.max(1)));
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
                p.check_lost(&lost_counters.read()?);
                p.process(Upto::InOrder(monotonic_ns()));
                p.shown.write(|sink| sink.flush());
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
        if p.shown.write_error.is_some() {
            break;
        }
    }

    // Programs still run until `kernel` drops: take what they wrote so far.
    p.drain(ring.get_mut());
    let lost_counts = lost_counters.read()?;
    p.check_lost(&lost_counts);
    p.process(Upto::End);
    let lost = Lost {
        by_reason: lost::NAMES.iter().copied().zip(lost_counts).collect(),
        undecodable: p.undecodable,
    };
    let summary = Summary::new(&p.shown.stats, &p.tracker.counters, lost, 10);
    p.shown.write(|sink| sink.summary(&summary));
    p.shown.write(|sink| sink.flush());
    drop(kernel);
    match p.shown.write_error {
        // The reader went away (`| head`): stop quietly.
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context(match &args.output {
                Some(path) => format!("writing to {}", path.display()),
                None => "writing to standard output".to_string(),
            }))
        }
        _ => Ok(()),
    }
}
