//! `cargo xtask bench`: the end-to-end benchmark. A loopback TCP storm and a UDP flood (the
//! `storm` binary), run without a tracer, under port-tracer (each tier this kernel allows,
//! JSONL to a file), under libbpf-tools `tcpstates` (to a file) and under a bpftrace
//! equivalent (counting in the kernel), in alternating rounds. `--soak SECONDS` instead
//! samples port-tracer's memory through a long TIME_WAIT-heavy storm.

mod bpf_stats;
mod parse;
mod report;
mod soak;
mod tools;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{ensure_apt_packages, is_root, output_of, run, workspace_root};

use self::{
    bpf_stats::{programs, BpfStats, Program},
    parse::{bpftrace_count, count_tcpstates, count_tracer_output, lost_in_line},
    report::{describe, median, render_programs, render_table, to_json},
    soak::soak,
    tools::{
        free_port, idle_cpu, machine_line, mount_tracefs, on_path, probe_tier, start, stop, storm,
    },
};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// TCP connections per storm run.
    #[arg(long, default_value_t = 100_000)]
    pub(super) connections: u64,
    /// UDP sockets per flood run, per thread.
    #[arg(long, default_value_t = 100_000)]
    pub(super) sockets: u64,
    /// Threads of the UDP flood (one per core pushes the kernel's rate to the top).
    #[arg(long, default_value_t = 2)]
    pub(super) udp_threads: u32,
    /// Rounds; each runs every tool once, in a rotating order.
    #[arg(long, default_value_t = 5)]
    pub(super) runs: u32,
    /// Only these workloads (default: both).
    #[arg(long, value_enum)]
    pub(super) workload: Vec<Workload>,
    /// Leave the peers (tcpstates, bpftrace) out.
    #[arg(long)]
    pub(super) no_peers: bool,
    /// Arguments for port-tracer runs, e.g. "--wakeup-bytes 0" (live JSONL) or "record
    /// --wakeup-bytes 0" (`port-tracer record`); "bin=PATH ..." runs another build of
    /// port-tracer (before/after a change). Given several times, each is a variant of its
    /// own, measured in the same rounds (A/B of a setting or a build). Default: live JSONL
    /// and record, default settings.
    #[arg(long, allow_hyphen_values = true, value_name = "ARGS")]
    pub(super) tracer_args: Vec<String>,
    /// Also measure port-tracer's kernel programs: run time per operation of each, from the
    /// kernel's own BPF statistics (`kernel.bpf_stats_enabled`, read with bpftool, installed
    /// when missing). Precise where rates are noisy; the statistics cost some 20 ns per
    /// program run while on, so rates measured with it read a little low.
    #[arg(long)]
    pub(super) bpf_stats: bool,
    /// Instead: run port-tracer through a FIN-close storm (TIME_WAIT holds) this many
    /// seconds and print its memory every 10 s.
    #[arg(long, value_name = "SECONDS")]
    pub(super) soak: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Tcp,
    Udp,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Tcp => "tcp",
            Workload::Udp => "udp",
        }
    }
}

/// `--tracer-args` starting with this runs `port-tracer record` (the binary trace) instead
/// of live JSONL; by default each tier is measured both ways.
pub(super) const RECORD: &str = "record";

/// The port-tracer binary a variant runs ("bin=PATH" first in its arguments, else this
/// checkout's) and the rest of its arguments.
pub(super) fn tracer_of<'a>(paths: &'a Paths, extra: &'a str) -> (&'a Path, &'a str) {
    match extra.strip_prefix("bin=") {
        Some(rest) => {
            let (bin, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            (Path::new(bin), rest.trim_start())
        }
        None => (&paths.tracer, extra),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tool {
    Untraced,
    /// Tier and extra arguments.
    PortTracer(&'static str, String),
    Tcpstates,
    Bpftrace,
}

impl Tool {
    fn label(&self) -> String {
        match self {
            Tool::Untraced => "untraced".into(),
            Tool::PortTracer(tier, args) if args.is_empty() => format!("port-tracer ({tier})"),
            Tool::PortTracer(tier, args) => format!("port-tracer ({tier}) {args}"),
            Tool::Tcpstates => "tcpstates (file)".into(),
            Tool::Bpftrace => "bpftrace (count)".into(),
        }
    }

    fn applies_to(&self, w: Workload) -> bool {
        !(matches!(self, Tool::Tcpstates) && w == Workload::Udp)
    }
}

/// One measured run.
#[derive(Clone, Debug)]
pub(super) struct Measured {
    pub(super) workload: Workload,
    pub(super) tool: Tool,
    pub(super) round: u32,
    pub(super) rate: f64,
    pub(super) expected: Option<u64>,
    pub(super) delivered: Option<u64>,
    pub(super) lost: Option<u64>,
    /// port-tracer: releases the kernel's hooks never reported (`tracker.release_missing`).
    pub(super) missed: Option<u64>,
    /// Events the tool handled in all (port-tracer: every event it processed, any process).
    pub(super) tool_events: Option<u64>,
    pub(super) cpu_s: Option<f64>,
    pub(super) max_rss_kb: Option<u64>,
    /// Kernel programs (name, runs per operation, ns per operation), with --bpf-stats.
    pub(super) programs: Vec<(String, f64, f64)>,
}

pub(super) struct Paths {
    pub(super) tracer: PathBuf,
    pub(super) storm: PathBuf,
    pub(super) dir: PathBuf,
}

pub fn run_bench(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    let root = workspace_root();
    run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "port-tracer",
        "-p",
        "xtask",
        "--bin",
        "port-tracer",
        "--bin",
        "storm",
    ]))?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let paths = Paths {
        tracer: root.join("target/release/port-tracer"),
        storm: root.join("target/release/storm"),
        dir,
    };
    mount_tracefs()?;
    if let Some(secs) = opts.soak {
        return soak(&paths, opts, secs);
    }

    let mut tools = vec![Tool::Untraced];
    for tier in crate::vm::TIERS {
        match probe_tier(&paths.tracer, tier) {
            Ok(()) if opts.tracer_args.is_empty() => {
                tools.push(Tool::PortTracer(tier, String::new()));
                tools.push(Tool::PortTracer(tier, RECORD.to_string()));
            }
            Ok(()) => {
                for args in &opts.tracer_args {
                    tools.push(Tool::PortTracer(tier, args.trim().to_string()));
                }
            }
            Err(why) => println!("bench: port-tracer's {tier} tier does not run here: {why}"),
        }
    }
    if !opts.no_peers {
        let missing: Vec<&str> = [("tcpstates", "libbpf-tools"), ("bpftrace", "bpftrace")]
            .into_iter()
            .filter(|(bin, _)| !on_path(bin))
            .map(|(_, pkg)| pkg)
            .collect();
        ensure_apt_packages(&missing)?;
        tools.push(Tool::Tcpstates);
        tools.push(Tool::Bpftrace);
    }
    let _stats = if opts.bpf_stats {
        if !on_path("bpftool") {
            ensure_apt_packages(&["bpftool"])?;
        }
        Some(BpfStats::enable()?)
    } else {
        None
    };
    let workloads = if opts.workload.is_empty() {
        vec![Workload::Tcp, Workload::Udp]
    } else {
        opts.workload.clone()
    };
    let machine = machine_line();
    println!("bench: {machine}");

    // What starting and stopping costs each tool (loading BTF and programs, the socket
    // snapshot, ...): subtracted from the CPU per event, so that column is the steady state.
    let mut idle = Vec::new();
    for tool in tools.iter().filter(|t| **t != Tool::Untraced) {
        let cpu = idle_cpu(&paths, tool).with_context(|| format!("idle {}", tool.label()))?;
        println!("bench: {} start + stop, idle: {cpu:.2} CPU s", tool.label());
        idle.push((tool.clone(), cpu));
    }

    let mut all = Vec::new();
    for &w in &workloads {
        let these: Vec<&Tool> = tools.iter().filter(|t| t.applies_to(w)).collect();
        for round in 0..opts.runs {
            // Rotate the order so no tool always runs first or right after another.
            for i in 0..these.len() {
                let tool = these[(i + round as usize) % these.len()];
                let m = measure(&paths, opts, w, tool, round)
                    .with_context(|| format!("{} under {}", w.name(), tool.label()))?;
                println!("bench: {}", describe(&m));
                all.push(m);
            }
        }
    }
    let mut table = render_table(&all, &idle, opts);
    table += &render_programs(&all, opts);
    println!("\n{machine}\n{table}");
    let raw: Vec<Value> = all.iter().map(to_json).collect();
    let out = paths.dir.join("results.json");
    fs::write(&out, serde_json::to_string_pretty(&raw)?)?;
    fs::write(
        paths.dir.join("results.md"),
        format!("{machine}\n\n{table}"),
    )?;
    println!(
        "every run: {}; table: {}",
        out.display(),
        paths.dir.join("results.md").display()
    );
    Ok(())
}

pub(super) fn measure(
    paths: &Paths,
    opts: &Options,
    w: Workload,
    tool: &Tool,
    round: u32,
) -> Result<Measured> {
    let port = free_port()?;
    let stats_of = matches!(tool, Tool::PortTracer(..)) && opts.bpf_stats;
    let before: Vec<u64> = if stats_of {
        programs()?.iter().map(|p| p.id).collect()
    } else {
        Vec::new()
    };
    let mut running = start(paths, w, tool, port)?;
    let args: Vec<String> = match w {
        Workload::Tcp => vec![
            "tcp".into(),
            "--count".into(),
            opts.connections.to_string(),
            "--port".into(),
            port.to_string(),
        ],
        Workload::Udp => vec![
            "udp".into(),
            "--count".into(),
            opts.sockets.to_string(),
            "--threads".into(),
            opts.udp_threads.to_string(),
        ],
    };
    let s = storm(paths, &args);
    // The tracer's programs: those that were not loaded before it started.
    let ours: Vec<Program> = if stats_of {
        programs()?
            .into_iter()
            .filter(|p| !before.contains(&p.id))
            .collect()
    } else {
        Vec::new()
    };
    let usage = match running.as_mut() {
        Some(r) => Some(stop(r)?),
        None => None,
    };
    let s = s?;
    let mut m = Measured {
        workload: w,
        tool: tool.clone(),
        round,
        rate: s.rate,
        expected: None,
        delivered: None,
        lost: None,
        missed: None,
        tool_events: None,
        cpu_s: usage.as_ref().map(|u| u.cpu_s),
        max_rss_kb: usage.as_ref().map(|u| u.max_rss_kb),
        programs: ours
            .iter()
            .filter(|p| p.run_cnt > 0)
            .map(|p| {
                let ops = s.ops as f64;
                (
                    p.name.clone(),
                    p.run_cnt as f64 / ops,
                    p.run_time_ns as f64 / ops,
                )
            })
            .collect(),
    };
    let Some(r) = running else { return Ok(m) };
    let n = s.ops;
    match tool {
        Tool::Untraced => {}
        Tool::PortTracer(..) => {
            // Every connection: the client's connect and the accepted socket's inherited
            // port, each assigned and released. Every UDP socket: bind(0), then release.
            let (origins, per): (&[&str], u64) = match w {
                Workload::Tcp => (&["connect", "inherited"], 4),
                Workload::Udp => (&["bind_ephemeral"], 2),
            };
            let jsonl = match tool {
                Tool::PortTracer(_, extra) if tracer_of(paths, extra).1.starts_with(RECORD) => {
                    // Outside the measurement: the trace rebuilt as the live mode would.
                    let jsonl = r.out.with_extension("jsonl");
                    // port-tracer refuses to overwrite a file.
                    let _ = fs::remove_file(&jsonl);
                    output_of(
                        Command::new(tracer_of(paths, extra).0)
                            .arg("report")
                            .arg(&r.out)
                            .args(["--format", "jsonl", "--output"])
                            .arg(&jsonl),
                    )?;
                    jsonl
                }
                _ => r.out.clone(),
            };
            let c = count_tracer_output(&jsonl, s.pid, origins)?;
            let _ = fs::remove_file(r.out.with_extension("jsonl"));
            m.expected = Some(per * n);
            m.delivered = Some(c.storm_events);
            m.lost = Some(c.lost);
            m.missed = Some(c.release_missing);
            m.tool_events = Some(c.all_events);
        }
        Tool::Tcpstates => {
            // Per connection: client CLOSE->SYN_SENT->ESTABLISHED->CLOSE, accepted socket
            // LISTEN->SYN_RECV->ESTABLISHED->CLOSE; plus the listener's own two.
            let text = fs::read_to_string(&r.out)?;
            let (delivered, all) = count_tcpstates(&text, port);
            m.expected = Some(6 * n + 2);
            m.delivered = Some(delivered);
            m.tool_events = Some(all);
            // It reports perf buffer overflows on stderr: "lost N events on CPU #C".
            std::thread::sleep(Duration::from_millis(100));
            m.lost = Some(
                r.stderr_lines
                    .try_iter()
                    .filter_map(|l| lost_in_line(&l))
                    .sum(),
            );
        }
        Tool::Bpftrace => {
            let text = fs::read_to_string(&r.out)?;
            let count = bpftrace_count(&text)
                .with_context(|| format!("no count in bpftrace's output: {text:?}"))?;
            m.expected = Some(match w {
                Workload::Tcp => 6 * n + 2,
                Workload::Udp => n,
            });
            m.delivered = Some(count);
            m.tool_events = Some(count);
        }
    }
    let _ = fs::remove_file(&r.out);
    Ok(m)
}
