//! `cargo xtask bench`: the end-to-end benchmark. A loopback TCP storm and a UDP flood (the
//! `storm` binary), run without a tracer, under port-tracer (each tier this kernel allows,
//! JSONL to a file), under libbpf-tools `tcpstates` (to a file) and under a bpftrace
//! equivalent (counting in the kernel), in alternating rounds. `--soak SECONDS` instead
//! samples port-tracer's memory through a long TIME_WAIT-heavy storm.

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

#[derive(clap::Args, Debug)]
pub struct Options {
    /// TCP connections per storm run.
    #[arg(long, default_value_t = 100_000)]
    connections: u64,
    /// UDP sockets per flood run, per thread.
    #[arg(long, default_value_t = 100_000)]
    sockets: u64,
    /// Threads of the UDP flood (one per core pushes the kernel's rate to the top).
    #[arg(long, default_value_t = 2)]
    udp_threads: u32,
    /// Rounds; each runs every tool once, in a rotating order.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Only these workloads (default: both).
    #[arg(long, value_enum)]
    workload: Vec<Workload>,
    /// Leave the peers (tcpstates, bpftrace) out.
    #[arg(long)]
    no_peers: bool,
    /// Arguments for port-tracer runs, e.g. "--wakeup-bytes 0" (live JSONL) or "record
    /// --wakeup-bytes 0" (`port-tracer record`); "bin=PATH ..." runs another build of
    /// port-tracer (before/after a change). Given several times, each is a variant of its
    /// own, measured in the same rounds (A/B of a setting or a build). Default: live JSONL
    /// and record, default settings.
    #[arg(long, allow_hyphen_values = true, value_name = "ARGS")]
    tracer_args: Vec<String>,
    /// Also measure port-tracer's kernel programs: run time per operation of each, from the
    /// kernel's own BPF statistics (`kernel.bpf_stats_enabled`, read with bpftool, installed
    /// when missing). Precise where rates are noisy; the statistics cost some 20 ns per
    /// program run while on, so rates measured with it read a little low.
    #[arg(long)]
    bpf_stats: bool,
    /// Instead: run port-tracer through a FIN-close storm (TIME_WAIT holds) this many
    /// seconds and print its memory every 10 s.
    #[arg(long, value_name = "SECONDS")]
    soak: Option<u64>,
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
const RECORD: &str = "record";

/// The port-tracer binary a variant runs ("bin=PATH" first in its arguments, else this
/// checkout's) and the rest of its arguments.
fn tracer_of<'a>(paths: &'a Paths, extra: &'a str) -> (&'a Path, &'a str) {
    match extra.strip_prefix("bin=") {
        Some(rest) => {
            let (bin, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            (Path::new(bin), rest.trim_start())
        }
        None => (&paths.tracer, extra),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tool {
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
struct Measured {
    workload: Workload,
    tool: Tool,
    round: u32,
    rate: f64,
    expected: Option<u64>,
    delivered: Option<u64>,
    lost: Option<u64>,
    /// Events the tool handled in all (port-tracer: every event it processed, any process).
    tool_events: Option<u64>,
    cpu_s: Option<f64>,
    max_rss_kb: Option<u64>,
    /// Kernel programs (name, runs per operation, ns per operation), with --bpf-stats.
    programs: Vec<(String, f64, f64)>,
}

struct Paths {
    tracer: PathBuf,
    storm: PathBuf,
    dir: PathBuf,
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

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// bpftrace and the tracepoint tier need tracefs, which this machine does not mount at boot.
fn mount_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    crate::run_quiet(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let release = output_of(Command::new("uname").arg("-r")).unwrap_or_default();
    format!("machine: {cpus} CPUs ({model}), Linux {}", release.trim())
}

/// Whether port-tracer can trace with `tier` here (a one-second run).
fn probe_tier(tracer: &Path, tier: &str) -> std::result::Result<(), String> {
    let out = Command::new(tracer)
        .args(["--attach", tier, "--duration", "1", "--output", "/dev/null"])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err.lines().last().unwrap_or("failed").trim().to_string())
}

/// A free port on 127.0.0.1 for the storm's listener, which the peers' filters name.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A tool running in the background, and where its output goes.
struct Running {
    child: Child,
    out: PathBuf,
    stderr_lines: mpsc::Receiver<String>,
}

fn start(paths: &Paths, w: Workload, tool: &Tool, port: u16) -> Result<Option<Running>> {
    let out = paths.dir.join("out");
    let _ = fs::remove_file(&out);
    let mut cmd = match tool {
        Tool::Untraced => return Ok(None),
        Tool::PortTracer(tier, extra) => {
            let (bin, extra) = tracer_of(paths, extra);
            let mut c = Command::new(bin);
            match extra.strip_prefix(RECORD) {
                // The binary trace; the JSONL comes afterwards, from `report`.
                Some(rest) => c
                    .args(["record", "--attach", tier, "--output"])
                    .arg(&out)
                    .args(rest.split_whitespace()),
                None => c
                    .args(["--attach", tier, "--format", "jsonl", "--output"])
                    .arg(&out)
                    .args(extra.split_whitespace()),
            };
            c.stdout(Stdio::null());
            c
        }
        Tool::Tcpstates => {
            let mut c = Command::new("tcpstates");
            c.stdout(fs::File::create(&out)?);
            c
        }
        Tool::Bpftrace => {
            let script = match w {
                Workload::Tcp => format!(
                    "tracepoint:sock:inet_sock_set_state /args->sport == {port} || args->dport == {port}/ {{ @transitions = count(); }}"
                ),
                Workload::Udp => "tracepoint:syscalls:sys_exit_bind /comm == \"storm\"/ { @binds = count(); }".to_string(),
            };
            let mut c = Command::new("bpftrace");
            c.args(["-e", &script]).stdout(fs::File::create(&out)?);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", tool.label()))?;
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut running = Running {
        child,
        out,
        stderr_lines: rx,
    };
    wait_ready(&mut running, tool)?;
    Ok(Some(running))
}

/// Waits until the tool traces: port-tracer and bpftrace say so; tcpstates prints its header
/// into a buffered file, so it gets a fixed two seconds.
fn wait_ready(r: &mut Running, tool: &Tool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    loop {
        while let Ok(line) = r.stderr_lines.try_recv() {
            said.push(line);
        }
        let ready = match tool {
            Tool::PortTracer(..) => said.iter().any(|l| l.contains("tracing with")),
            Tool::Bpftrace => fs::read_to_string(&r.out).is_ok_and(|s| s.contains("Attaching")),
            _ => true,
        };
        if ready {
            if matches!(tool, Tool::Tcpstates) {
                std::thread::sleep(Duration::from_secs(2));
            }
            if let Some(status) = r.child.try_wait()? {
                bail!("{} exited ({status}): {}", tool.label(), said.join(" / "));
            }
            return Ok(());
        }
        if let Some(status) = r.child.try_wait()? {
            bail!("{} exited ({status}): {}", tool.label(), said.join(" / "));
        }
        if Instant::now() > deadline {
            bail!("{} did not start tracing within 60 s", tool.label());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time and peak memory of a finished child.
struct Usage {
    cpu_s: f64,
    max_rss_kb: u64,
}

/// SIGINT, then reaps the child with its CPU time (SIGKILL after 120 s). Peak memory is
/// the child's own `VmHWM`, read until it exits: wait4's `ru_maxrss` would also count the
/// pages of xtask it was forked from.
fn stop(r: &mut Running) -> Result<Usage> {
    let pid = r.child.id() as libc::pid_t;
    let mut hwm_kb = proc_status_kb(pid as u32, "VmHWM:").unwrap_or(0);
    // SAFETY: plain syscalls on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(kb) = proc_status_kb(pid as u32, "VmHWM:") {
            hwm_kb = hwm_kb.max(kb);
        }
        let mut status = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if rc == pid {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                let said: Vec<String> = r.stderr_lines.try_iter().collect();
                bail!("exited with status {status:#x}: {}", said.join(" / "));
            }
            return Ok(Usage {
                cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
                max_rss_kb: hwm_kb,
            });
        }
        if rc < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("did not stop within 120 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the storm printed.
struct StormResult {
    pid: u64,
    ops: u64,
    rate: f64,
}

fn storm(paths: &Paths, args: &[String]) -> Result<StormResult> {
    let out = output_of(Command::new(&paths.storm).args(args))?;
    let v: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("storm said {out:?}"))?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("storm output lacks {k}: {out}"))
    };
    Ok(StormResult {
        pid: num("pid")? as u64,
        ops: num("ops")? as u64,
        rate: num("rate")?,
    })
}

fn measure(
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

/// Turns the kernel's BPF run-time statistics on for as long as it lives.
struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let before =
            fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.before.trim());
    }
}

/// A loaded BPF program and its statistics.
struct Program {
    id: u64,
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
}

fn programs() -> Result<Vec<Program>> {
    let out = output_of(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    parse_programs(&out)
}

fn parse_programs(json: &str) -> Result<Vec<Program>> {
    let v: Value = serde_json::from_str(json).context("bpftool's JSON")?;
    Ok(v.as_array()
        .context("bpftool prog show: not a list")?
        .iter()
        .filter_map(|p| {
            Some(Program {
                id: p["id"].as_u64()?,
                name: p["name"].as_str().unwrap_or("?").to_string(),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

/// tcpstates lines about the storm (its listener's port local or remote), and all lines.
fn count_tcpstates(text: &str, port: u16) -> (u64, u64) {
    let p = port.to_string();
    let mut lines = text.lines();
    let header = lines.next().is_some_and(|h| h.starts_with("SKADDR"));
    let (mut storm, mut all) = (0, 0);
    for l in lines {
        all += 1;
        let f: Vec<&str> = l.split_whitespace().collect();
        // SKADDR PID COMM LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS
        if f.len() > 6 && (f[4] == p || f[6] == p) {
            storm += 1;
        }
    }
    if !header {
        all += u64::from(!text.is_empty());
    }
    (storm, all)
}

/// N of a libbpf-tools "lost N events on CPU #C" line.
fn lost_in_line(line: &str) -> Option<u64> {
    line.trim()
        .strip_prefix("lost ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value of bpftrace's map printed at exit (`@name: N`).
fn bpftrace_count(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.split_once(": ").filter(|(k, _)| k.starts_with('@')))
        .and_then(|(_, v)| v.trim().parse().ok())
}

struct TracerCounts {
    storm_events: u64,
    all_events: u64,
    lost: u64,
}

/// Counts the storm's events (by pid and origin) in a JSONL trace, and reads its summary.
fn count_tracer_output(path: &Path, pid: u64, origins: &[&str]) -> Result<TracerCounts> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut c = TracerCounts {
        storm_events: 0,
        all_events: 0,
        lost: 0,
    };
    let mut summary = false;
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line?;
        // Cheap pre-filter: lifetime records are not counted (events are: assign, release).
        if line.starts_with("{\"type\":\"lifetime\"") {
            continue;
        }
        let v: Value = serde_json::from_str(&line).context("a trace line is not JSON")?;
        match v["type"].as_str() {
            Some("assign" | "release")
                if v["pid"].as_u64() == Some(pid)
                    && v["origin"].as_str().is_some_and(|o| origins.contains(&o)) =>
            {
                c.storm_events += 1;
            }
            Some("summary") => {
                summary = true;
                c.lost = v["lost"]["total"]
                    .as_u64()
                    .context("summary without lost.total")?;
                c.all_events = v["tracker"]["events"]
                    .as_u64()
                    .context("summary without tracker.events")?;
            }
            _ => {}
        }
    }
    if !summary {
        bail!("{} has no summary line", path.display());
    }
    Ok(c)
}

/// CPU seconds `tool` spends to start, trace an idle second, and stop.
fn idle_cpu(paths: &Paths, tool: &Tool) -> Result<f64> {
    let mut r = start(paths, Workload::Tcp, tool, free_port()?)?.expect("a traced tool");
    std::thread::sleep(Duration::from_secs(1));
    let usage = stop(&mut r)?;
    let _ = fs::remove_file(&r.out);
    Ok(usage.cpu_s)
}

fn describe(m: &Measured) -> String {
    let mut s = format!(
        "{} round {} {:<22} {:>9.0} ops/s",
        m.workload.name(),
        m.round + 1,
        m.tool.label(),
        m.rate
    );
    if let (Some(e), Some(d)) = (m.expected, m.delivered) {
        s += &format!("  events {d}/{e}");
    }
    if let Some(l) = m.lost {
        s += &format!("  lost {l}");
    }
    if let (Some(cpu), Some(rss)) = (m.cpu_s, m.max_rss_kb) {
        s += &format!("  cpu {cpu:.2}s  rss {:.1}MB", rss as f64 / 1024.0);
    }
    s
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The runs grouped by (workload, tool), in first-seen order, for groups with a run that
/// passes `keep`.
fn groups(
    all: &[Measured],
    keep: impl Fn(&Measured) -> bool,
) -> Vec<(Workload, Tool, Vec<&Measured>)> {
    let mut seen: Vec<(Workload, Tool)> = Vec::new();
    for m in all.iter().filter(|m| keep(m)) {
        if !seen.contains(&(m.workload, m.tool.clone())) {
            seen.push((m.workload, m.tool.clone()));
        }
    }
    seen.into_iter()
        .map(|(w, tool)| {
            let runs = all
                .iter()
                .filter(|m| m.workload == w && m.tool == tool)
                .collect();
            (w, tool, runs)
        })
        .collect()
}

fn render_table(all: &[Measured], idle: &[(Tool, f64)], opts: &Options) -> String {
    let mut out = String::new();
    let idle_labels: Vec<String> = idle
        .iter()
        .map(|(t, c)| format!("{} {c:.2} s", t.label()))
        .collect();
    out += &format!(
        "rounds: {}; tcp: {} connections per run (connect, accept, RST close; one thread); udp: {} x {} sockets per run (bind 127.0.0.1:0, close)\nCPU to start, trace an idle second and stop (subtracted below): {}\n\n",
        opts.runs,
        opts.connections,
        opts.udp_threads,
        opts.sockets,
        idle_labels.join(", ")
    );
    out += "| workload | tool | ops/s (median) | ratio to untraced (median) | events delivered / expected (worst run) | lost (max) | tool CPU s per M events (median, net of start-up) | peak RSS MB (max) |\n";
    out += "|---|---|---|---|---|---|---|---|\n";
    for (w, tool, runs) in groups(all, |_| true) {
        let rate = median(runs.iter().map(|m| m.rate).collect()).unwrap_or(0.0);
        // Ratio within each round: both runs saw the same machine weather.
        let ratios: Vec<f64> = runs
            .iter()
            .filter_map(|m| {
                all.iter()
                    .find(|u| u.workload == w && u.round == m.round && u.tool == Tool::Untraced)
                    .map(|u| m.rate / u.rate)
            })
            .collect();
        let ratio = median(ratios).map_or("-".into(), |r| format!("{r:.3}"));
        let worst = runs
            .iter()
            .filter_map(|m| Some((m.delivered?, m.expected?)))
            .min_by(|a, b| (a.0 as f64 / a.1 as f64).total_cmp(&(b.0 as f64 / b.1 as f64)));
        let delivered = worst.map_or("-".into(), |(d, e)| {
            format!("{d} / {e} ({:.1}%)", 100.0 * d as f64 / e as f64)
        });
        let lost = runs
            .iter()
            .filter_map(|m| m.lost)
            .max()
            .map_or("-".into(), |l| l.to_string());
        let idle_cpu = idle
            .iter()
            .find(|(t, _)| *t == tool)
            .map_or(0.0, |(_, c)| *c);
        let cpu = median(
            runs.iter()
                .filter_map(|m| {
                    Some((m.cpu_s? - idle_cpu).max(0.0) / (m.tool_events? as f64 / 1e6))
                })
                .filter(|x| x.is_finite())
                .collect(),
        )
        .map_or("-".into(), |c| format!("{c:.3}"));
        let rss = runs
            .iter()
            .filter_map(|m| m.max_rss_kb)
            .max()
            .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        out += &format!(
            "| {} | {} | {rate:.0} | {ratio} | {delivered} | {lost} | {cpu} | {rss} |\n",
            w.name(),
            tool.label()
        );
    }
    out
}

/// Per workload and port-tracer variant: each kernel program's runs and time per operation
/// (medians over rounds), and their sum against the untraced time of one operation.
fn render_programs(all: &[Measured], opts: &Options) -> String {
    let mut out = String::new();
    for (w, tool, runs) in groups(all, |m| !m.programs.is_empty()) {
        let mut names: Vec<String> = runs
            .iter()
            .flat_map(|m| m.programs.iter().map(|p| p.0.clone()))
            .collect();
        names.sort();
        names.dedup();
        let untraced_ns = median(
            all.iter()
                .filter(|u| u.workload == w && u.tool == Tool::Untraced)
                // Per thread: the flood's threads run side by side, each op on one CPU.
                .map(|u| {
                    let threads = match w {
                        Workload::Tcp => 1.0,
                        Workload::Udp => f64::from(opts.udp_threads.max(1)),
                    };
                    threads * 1e9 / u.rate
                })
                .collect(),
        );
        out += &format!(
            "\n{} under {}: kernel programs per operation (bpf_stats, median of {} runs)\n\n",
            w.name(),
            tool.label(),
            runs.len()
        );
        out += "| program | runs per op | ns per run | ns per op |\n|---|---|---|---|\n";
        let mut total = 0.0;
        let mut rows: Vec<(f64, String)> = Vec::new();
        for name in names {
            let get = |i: usize| {
                median(
                    runs.iter()
                        .filter_map(|m| m.programs.iter().find(|p| p.0 == name))
                        .map(|p| if i == 1 { p.1 } else { p.2 })
                        .collect(),
                )
                .unwrap_or(0.0)
            };
            let (per_op_runs, per_op_ns) = (get(1), get(2));
            total += per_op_ns;
            let per_run = if per_op_runs > 0.0 {
                per_op_ns / per_op_runs
            } else {
                0.0
            };
            rows.push((
                per_op_ns,
                format!("| {name} | {per_op_runs:.2} | {per_run:.0} | {per_op_ns:.0} |\n"),
            ));
        }
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, r) in rows {
            out += &r;
        }
        out += &format!("| **total** | | | **{total:.0}** |\n");
        if let Some(u) = untraced_ns {
            out += &format!(
                "\nOne untraced operation takes {u:.0} ns of its thread (median): the programs alone add {:.1}% to it, a ratio of at best {:.3}.\n",
                100.0 * total / u,
                u / (u + total)
            );
        }
    }
    out
}

fn to_json(m: &Measured) -> Value {
    serde_json::json!({
        "workload": m.workload.name(),
        "tool": m.tool.label(),
        "round": m.round + 1,
        "ops_per_s": m.rate,
        "events_expected": m.expected,
        "events_delivered": m.delivered,
        "lost": m.lost,
        "tool_events": m.tool_events,
        "tool_cpu_s": m.cpu_s,
        "tool_max_rss_kb": m.max_rss_kb,
        "kernel_programs": m.programs.iter().map(|(n, runs, ns)| serde_json::json!({
            "name": n, "runs_per_op": runs, "ns_per_op": ns,
        })).collect::<Vec<_>>(),
    })
}

/// Memory over a long storm: port-tracer (default settings plus --tracer-args) traces a
/// FIN-close storm that keeps client ports in TIME_WAIT; its RSS is read from /proc every
/// 10 s. It shows only port 1 (nothing, so the file stays small but for the summary): the
/// filter comes after reconstruction, so every event still goes through the tracker.
fn soak(paths: &Paths, opts: &Options, secs: u64) -> Result<()> {
    let out = paths.dir.join("soak.jsonl");
    let mut cmd = Command::new(&paths.tracer);
    cmd.args(["--format", "jsonl", "--port", "1", "--output"])
        .arg(&out);
    for extra in &opts.tracer_args {
        cmd.args(extra.split_whitespace());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting port-tracer")?;
    let (tx, rx) = mpsc::channel();
    let mut r = Running {
        child,
        out: out.clone(),
        stderr_lines: rx,
    };
    let stderr = r.child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    wait_ready(&mut r, &Tool::PortTracer("auto", String::new()))?;
    let pid = r.child.id();
    let mut storm = Command::new(&paths.storm)
        .args(["tcp", "--close", "fin", "--seconds", &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the storm")?;
    println!("{:>6}  {:>8}  {:>10}", "time s", "RSS MB", "TIME_WAIT");
    let start = Instant::now();
    let mut samples = Vec::new();
    while storm.try_wait()?.is_none() {
        let rss_kb = proc_status_kb(pid, "VmRSS:")?;
        println!(
            "{:>6.0}  {:>8.1}  {:>10}",
            start.elapsed().as_secs_f64(),
            rss_kb as f64 / 1024.0,
            time_wait_count()
        );
        samples.push(rss_kb);
        std::thread::sleep(Duration::from_secs(10));
    }
    let storm_out = storm.wait_with_output()?;
    let usage = stop(&mut r)?;
    println!(
        "storm: {}",
        String::from_utf8_lossy(&storm_out.stdout).trim()
    );
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "port-tracer: cpu {:.1} s, peak RSS {:.1} MB, RSS samples min/median/max {:.1}/{:.1}/{:.1} MB",
        usage.cpu_s,
        mb(usage.max_rss_kb),
        mb(samples.iter().copied().min().unwrap_or(0)),
        median(samples.iter().map(|&k| mb(k)).collect()).unwrap_or(0.0),
        mb(samples.iter().copied().max().unwrap_or(0)),
    );
    let trace = fs::read_to_string(&out).unwrap_or_default();
    let summary: Value = trace
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["type"] == "summary")
        })
        .context("the soak trace has no summary")?;
    println!("port-tracer tracker: {}", summary["tracker"]);
    println!("port-tracer lost: {}", summary["lost"]);
    Ok(())
}

fn proc_status_kb(pid: u32, key: &str) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// TCP sockets in TIME_WAIT on this host (IPv4, from /proc/net/tcp: state 06).
fn time_wait_count() -> u64 {
    fs::read_to_string("/proc/net/tcp")
        .map(|s| {
            s.lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some("06"))
                .count() as u64
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tcpstates_lines_of_the_storm() {
        let text = "\
SKADDR           PID     COMM       LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS
ffff888105c65340 26158   storm      127.0.0.1       45475 0.0.0.0         0     CLOSE       -> LISTEN      0.000
ffff888105c665c0 26158   storm      127.0.0.1       0     127.0.0.1       45475 CLOSE       -> SYN_SENT    0.000
ffff888105c665c0 0       swapper/1  10.0.0.2        22    10.0.0.9        51234 ESTABLISHED -> CLOSE_WAIT  1.000
ffff888105c61280 26158   storm      127.0.0.1       45475 127.0.0.1       37980 LISTEN      -> SYN_RECV    0.000
";
        assert_eq!(count_tcpstates(text, 45475), (3, 4));
        assert_eq!(count_tcpstates(text, 22), (1, 4));
        assert_eq!(count_tcpstates("", 1), (0, 0));
    }

    #[test]
    fn reads_libbpf_tools_lost_lines() {
        assert_eq!(lost_in_line("lost 2635 events on CPU #1"), Some(2635));
        assert_eq!(lost_in_line("Tracing TCP state changes"), None);
    }

    #[test]
    fn reads_bpftrace_counts() {
        assert_eq!(
            bpftrace_count("Attaching 1 probe...\n\n\n@transitions: 300002\n"),
            Some(300002)
        );
        assert_eq!(bpftrace_count("Attaching 1 probe...\n"), None);
    }

    #[test]
    fn reads_bpftool_program_statistics() {
        let json = r#"[{"id":7,"type":"raw_tracepoint","name":"inet_sock_set_state","run_time_ns":165500000,"run_cnt":600002},
                       {"id":9,"type":"tracepoint","name":"sys_enter_bind"}]"#;
        let p = parse_programs(json).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].id, p[0].name.as_str(), p[0].run_cnt, p[0].run_time_ns),
            (7, "inet_sock_set_state", 600002, 165500000)
        );
        assert_eq!((p[1].run_cnt, p[1].run_time_ns), (0, 0));
        assert!(parse_programs("not json").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
