//! Collector benchmark: a synthetic connection storm, as raw ring buffer records, through
//! the rebuild engine that live tracing and `report` drive (decode, reorder, lifetime
//! reconstruction, the summary's counts and analyses) on one thread.
//!
//! Shape: clients connecting to many destinations (the same ephemeral port in use towards
//! several of them at once), one connection in 64 to a local listener whose accepted
//! sockets share its port, active closes that hold each client port in TIME_WAIT for
//! `--hold` further connections (so about that many ports are live), and records from
//! several CPUs arriving slightly out of timestamp order.
//!
//! Reports, as the median of `--runs` runs: events/s, ns/event, and heap bytes per live
//! port at the storm's peak (a counting allocator sees every allocation of the pipeline).
//!
//! `cargo bench -p port-tracer --bench collector [-- --connections N --hold N --runs N]`
//!
//! `-- --format jsonl` (or text, csv, ...) also formats every output as live tracing's
//! writer thread does, into a sink: the difference from a run without it is the
//! printer's cost per event.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use port_tracer::{
    event::{Comm, Endpoints, Event, Family, Kind, Origin, Proto, Task},
    lifetime::OutputRef,
    output::Printer,
    rebuild::{Rebuild, RebuildConfig, Upto},
    trace_file::Records,
};

/// Counts live heap bytes.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Params {
    connections: u64,
    hold: u64,
    runs: usize,
    /// Synthetic time between connections, ns (sets the reorder window's depth in events).
    spacing_ns: u64,
    /// Format every output in this format too (into a sink).
    format: Option<port_tracer::output::Format>,
}

fn params() -> Params {
    let mut p = Params {
        connections: 1_500_000,
        hold: 1_000_000,
        runs: 5,
        spacing_ns: 400,
        format: None,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = || -> u64 {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", args[i]))
        };
        if args[i] == "--format" {
            let name = args.get(i + 1).map_or("", String::as_str);
            p.format = Some(port_tracer::output::Format::from_name(name).unwrap_or_else(|| {
                panic!("--format: unknown format {name:?} (text, jsonl, csv, parquet, chrome-trace)")
            }));
            i += 2;
            continue;
        }
        if args[i] == "--summary" {
            // The summary's analyses are part of the engine now: always measured.
            i += 1;
            continue;
        }
        match args[i].as_str() {
            "--connections" => p.connections = value(),
            "--hold" => p.hold = value(),
            "--runs" => p.runs = value() as usize,
            "--spacing-ns" => p.spacing_ns = value(),
            _ => {
                i += 1;
                continue; // cargo bench's own flags (--bench)
            }
        }
        i += 2;
    }
    p
}

const DESTINATIONS: u64 = 64;
const EPHEMERAL_FIRST: u64 = 32768;
const EPHEMERAL_COUNT: u64 = 60999 - 32768 + 1;
const LISTEN_PORT: u16 = 8080;
const CPUS: u64 = 4;

fn record(ts: u64, kind: Kind, sock: u64, lport: u16, raddr: [u8; 4], rport: u16) -> Event {
    let ends = Endpoints {
        proto: Proto::Tcp,
        family: Family::Ipv4,
        netns: NETNS,
        laddr: [10, 1, 0, 1].into(),
        lport,
        raddr: raddr.into(),
        rport,
    };
    let mut ev = Event::new(kind, ts, sock, ends);
    // As the kernel side writes them: releases and TIME_WAIT transitions carry no task.
    if matches!(kind, Kind::Assign | Kind::AllocFailure) {
        ev.task = Task {
            pid: 4242,
            tid: 4242 + (ts % CPUS) as u32,
            ppid: Some(1),
            cgroup_id: 1,
            comm: Comm::new("storm"),
            thread: Comm::new("storm"),
            ..Task::default()
        };
    }
    ev
}

/// Where connection `i` goes: one in DESTINATIONS to the local listener, the others to
/// remote servers. Each destination sees one connection per DESTINATIONS, so a port is in
/// use towards several destinations at once but never twice towards one (as long as the
/// hold stays under DESTINATIONS x the range, as the kernel would ensure).
/// The namespace of every socket (the host's usual inode).
const NETNS: u32 = 4026531840;

fn destination(i: u64) -> (bool, [u8; 4], u16) {
    match i % DESTINATIONS {
        0 => (true, [10, 1, 0, 1], LISTEN_PORT),
        d => (false, [10, 2, (d >> 8) as u8, d as u8], 443),
    }
}

fn ephemeral_port(i: u64) -> u16 {
    (EPHEMERAL_FIRST + (i / DESTINATIONS) % EPHEMERAL_COUNT) as u16
}

/// The storm's records in ring buffer order, back to back as the ring buffer holds them.
fn storm(p: &Params) -> Records {
    let mut evs = Vec::with_capacity(p.connections as usize * 5);
    let mut listener = record(
        0,
        Kind::Assign,
        0xffff_9000_0000_0000,
        LISTEN_PORT,
        [0; 4],
        0,
    );
    listener.origin = Origin::Bind;
    listener.ends.laddr = [0, 0, 0, 0].into();
    evs.push(listener);
    for i in 0..p.connections {
        let t = 1_000 + i * p.spacing_ns;
        let (local, raddr, rport) = destination(i);
        let port = ephemeral_port(i);
        let client = 0xffff_8880_0000_0000 + i * 0x800;
        let tw = 0xffff_8890_0000_0000 + i * 0x100;
        let mut connect = record(t, Kind::Assign, client, port, raddr, rport);
        connect.origin = Origin::Connect;
        // Timed by the allocator hooks, as on the fentry and kprobe tiers.
        connect.alloc_ns = Some(800 + (i % 64) as u32 * 50);
        evs.push(connect);
        if local {
            let accepted = 0xffff_88a0_0000_0000 + i * 0x800;
            let mut inh = record(
                t + 50,
                Kind::Assign,
                accepted,
                LISTEN_PORT,
                [10, 1, 0, 1],
                port,
            );
            inh.origin = Origin::Inherited;
            inh.task = Task::default();
            evs.push(inh);
            evs.push(record(
                t + 300,
                Kind::Release,
                accepted,
                LISTEN_PORT,
                [10, 1, 0, 1],
                port,
            ));
        }
        let mut enter_tw = record(t + 200, Kind::TimeWait, tw, port, raddr, rport);
        enter_tw.time_wait_sock = true;
        evs.push(enter_tw);
        evs.push(record(t + 210, Kind::Release, client, port, raddr, rport));
        // The TIME_WAIT socket of connection i - hold dies now.
        if i >= p.hold {
            let j = i - p.hold;
            let (_, raddr, rport) = destination(j);
            let jport = ephemeral_port(j);
            let mut end = record(
                t + 100,
                Kind::Release,
                0xffff_8890_0000_0000 + j * 0x100,
                jport,
                raddr,
                rport,
            );
            end.time_wait_sock = true;
            evs.push(end);
        }
    }
    // Records of different CPUs interleave out of timestamp order: a deterministic
    // shuffle within windows of 16.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for w in evs.chunks_mut(16) {
        for k in (1..w.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            w.swap(k, (seed % (k as u64 + 1)) as usize);
        }
    }
    Records::current(evs.iter().flat_map(Event::encode).collect())
}

struct RunResult {
    secs: f64,
    events: u64,
    lifetimes: u64,
    peak_live: usize,
    bytes_per_live_port: f64,
    /// The pass's newest timestamp.
    newest_ns: u64,
}

/// The collector's path for one storm: decode each record, reorder in batches as the live
/// loop does, rebuild, count and analyse.
/// `engine` is fresh (cold: its tables grow during the run, as in a tracer's first
/// minutes) or has run the storm before (warm: the steady state of a long-running tracer);
/// `offset_ns` moves this pass's timestamps after the previous one's.
fn run(
    records: &[&[u8]],
    engine: &mut Rebuild,
    offset_ns: u64,
    printer: &mut Option<Box<dyn Printer + Send>>,
) -> RunResult {
    const BATCH: usize = 4096;
    let base = LIVE_BYTES.load(Ordering::Relaxed);
    let (mut lifetimes, mut events) = (0u64, 0u64);
    let mut peak = (0usize, 0usize);
    let start = Instant::now();
    let mut out = |o: OutputRef<'_>| {
        if let Some(p) = printer.as_mut() {
            p.write(o).expect("writing to a sink");
        }
        match o {
            OutputRef::Lifetime(l) => {
                lifetimes += 1;
                black_box(&l);
            }
            OutputRef::Event(e) => {
                events += 1;
                black_box(&e);
            }
        }
    };
    let mut newest = 0;
    for (n, chunk) in records.chunks(BATCH).enumerate() {
        for r in chunk {
            let mut ev = Event::decode(r).expect("valid record");
            ev.ts_ns += offset_ns;
            newest = newest.max(ev.ts_ns);
            engine.push_event(ev);
        }
        engine.process(Upto::InOrder(newest), &mut out);
        if n % 64 == 0 {
            let live = engine.open_lifetimes();
            if live > peak.0 {
                // The tracker's tables only: the reorder window's buffer scales with the
                // event rate, not with live ports.
                let bytes = LIVE_BYTES.load(Ordering::Relaxed).saturating_sub(base);
                peak = (live, bytes.saturating_sub(engine.reorder_heap_bytes()));
            }
        }
    }
    // The window's last events, as at the end of a run.
    engine.process(Upto::InOrder(newest + REORDER_NS), &mut out);
    let secs = start.elapsed().as_secs_f64();
    // The lifetimes still open (the storm's last TIME_WAIT holds) end here, untimed: the
    // next pass finds the tables grown but empty.
    engine.end_open(&mut out);
    RunResult {
        secs,
        events: records.len() as u64,
        lifetimes,
        peak_live: peak.0,
        bytes_per_live_port: peak.1 as f64 / peak.0.max(1) as f64,
        newest_ns: newest,
    }
}

/// The reorder window, as live tracing has it by default.
const REORDER_NS: u64 = 50_000_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let p = params();
    let storm = storm(&p);
    let records: Vec<&[u8]> = storm.iter().collect();
    println!(
        "collector benchmark: {} connections, TIME_WAIT hold {} connections, {} records ({} MB), {} runs",
        p.connections,
        p.hold,
        records.len(),
        storm.bytes.len() >> 20,
        p.runs
    );
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..p.runs {
        let mut engine = Rebuild::new(
            RebuildConfig {
                reorder_delay_ns: REORDER_NS,
                ..RebuildConfig::default()
            },
            0,
        );
        // As live tracing does: the namespace's range, read before its first event.
        let range = format!(
            "{EPHEMERAL_FIRST} {}",
            EPHEMERAL_FIRST + EPHEMERAL_COUNT - 1
        );
        engine.set_range(port_tracer::port_range::PortRange::parse(NETNS, &range, "").unwrap());
        let mut printer = p.format.map(|f| {
            f.printer(
                port_tracer::output::buffered(Box::new(std::io::sink())),
                port_tracer::output::WallClock::now(),
                port_tracer::cgroups::Cgroups::recorded(),
            )
        });
        let c = run(&records, &mut engine, 0, &mut printer);
        let w = run(
            &records,
            &mut engine,
            c.newest_ns + REORDER_NS,
            &mut printer,
        );
        let summary = engine.finish(&[], w.newest_ns + REORDER_NS, &mut |o| {
            black_box(o);
        });
        let t = &summary.tracker;
        assert_eq!(
            (t.unmatched, t.duplicate_assign, t.release_missing),
            (0, 0, 0),
            "the synthetic storm is not coherent"
        );
        for (what, r) in [("cold", &c), ("warm", &w)] {
            println!(
                "  run {} {what}: {:.3} s, {:.2} M events/s, {:.1} ns/event, {:.2} M connections/s, peak {} live ports, {} lifetimes",
                i + 1,
                r.secs,
                r.events as f64 / r.secs / 1e6,
                r.secs * 1e9 / r.events as f64,
                p.connections as f64 / r.secs / 1e6,
                r.peak_live,
                r.lifetimes
            );
        }
        println!(
            "  run {}: {:.0} B/live port (tracker, cold)",
            i + 1,
            c.bytes_per_live_port
        );
        cold.push(c);
        warm.push(w);
    }
    let eps = |v: &[RunResult]| median(v.iter().map(|r| r.events as f64 / r.secs).collect());
    let (ec, ew) = (eps(&cold), eps(&warm));
    let bpp = median(cold.iter().map(|r| r.bytes_per_live_port).collect());
    let per_conn = records.len() as f64 / p.connections as f64;
    println!(
        "median: cold (fresh tables) {:.2} M events/s, {:.1} ns/event, {:.2} M connections/s; warm (tables grown) {:.2} M events/s, {:.1} ns/event, {:.2} M connections/s; {:.0} bytes per live port (peak {} live)",
        ec / 1e6,
        1e9 / ec,
        ec / per_conn / 1e6,
        ew / 1e6,
        1e9 / ew,
        ew / per_conn / 1e6,
        bpp,
        cold[0].peak_live
    );
}
