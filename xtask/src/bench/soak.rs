//! `--soak`: port-tracer's memory through a long TIME_WAIT-heavy storm.

use super::{
    tools::{proc_status_kb, wait_ready, Running},
    *,
};

/// Memory over a long storm: port-tracer (default settings plus --tracer-args) traces a
/// FIN-close storm that keeps client ports in TIME_WAIT; its RSS is read from /proc every
/// 10 s. It shows only port 1 (nothing, so the file stays small but for the summary): the
/// filter comes after reconstruction, so every event still goes through the tracker.
pub(super) fn soak(paths: &Paths, opts: &Options, secs: u64) -> Result<()> {
    let out = paths.dir.join("soak.jsonl");
    // port-tracer refuses to overwrite a file.
    let _ = fs::remove_file(&out);
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

/// TCP sockets in TIME_WAIT on this host (IPv4, from /proc/net/tcp: state 06).
pub(super) fn time_wait_count() -> u64 {
    fs::read_to_string("/proc/net/tcp")
        .map(|s| {
            s.lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some("06"))
                .count() as u64
        })
        .unwrap_or(0)
}
