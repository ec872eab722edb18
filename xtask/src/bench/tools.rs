//! Starting, watching and stopping what the benchmark runs: the storm, port-tracer and
//! the peers; their CPU time and memory.

use super::*;

pub(super) fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// bpftrace and the tracepoint tier need tracefs, which this machine does not mount at boot.
pub(super) fn mount_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    crate::run_quiet(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

pub(super) fn machine_line() -> String {
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
pub(super) fn probe_tier(tracer: &Path, tier: &str) -> std::result::Result<(), String> {
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
pub(super) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A tool running in the background, and where its output goes.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) out: PathBuf,
    pub(super) stderr_lines: mpsc::Receiver<String>,
}

pub(super) fn start(paths: &Paths, w: Workload, tool: &Tool, port: u16) -> Result<Option<Running>> {
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
pub(super) fn wait_ready(r: &mut Running, tool: &Tool) -> Result<()> {
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
pub(super) struct Usage {
    pub(super) cpu_s: f64,
    pub(super) max_rss_kb: u64,
}

/// SIGINT, then reaps the child with its CPU time (SIGKILL after 120 s). Peak memory is
/// the child's own `VmHWM`, read until it exits: wait4's `ru_maxrss` would also count the
/// pages of xtask it was forked from.
pub(super) fn stop(r: &mut Running) -> Result<Usage> {
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
pub(super) struct StormResult {
    pub(super) pid: u64,
    pub(super) ops: u64,
    pub(super) rate: f64,
}

pub(super) fn storm(paths: &Paths, args: &[String]) -> Result<StormResult> {
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

/// CPU seconds `tool` spends to start, trace an idle second, and stop.
pub(super) fn idle_cpu(paths: &Paths, tool: &Tool) -> Result<f64> {
    let mut r = start(paths, Workload::Tcp, tool, free_port()?)?.expect("a traced tool");
    std::thread::sleep(Duration::from_secs(1));
    let usage = stop(&mut r)?;
    let _ = fs::remove_file(&r.out);
    Ok(usage.cpu_s)
}

pub(super) fn proc_status_kb(pid: u32, key: &str) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}
