//! What the tools wrote: tcpstates lines, libbpf-tools lost lines, bpftrace counts,
//! port-tracer's JSONL.

use super::*;

/// tcpstates lines about the storm (its listener's port local or remote), and all lines.
pub(super) fn count_tcpstates(text: &str, port: u16) -> (u64, u64) {
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
pub(super) fn lost_in_line(line: &str) -> Option<u64> {
    line.trim()
        .strip_prefix("lost ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value of bpftrace's map printed at exit (`@name: N`).
pub(super) fn bpftrace_count(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.split_once(": ").filter(|(k, _)| k.starts_with('@')))
        .and_then(|(_, v)| v.trim().parse().ok())
}

pub(super) struct TracerCounts {
    pub(super) storm_events: u64,
    pub(super) all_events: u64,
    pub(super) lost: u64,
    /// Releases the tracker never saw (the socket's lifetime ended lossy when its memory was
    /// reused): not lost in transit, missed at the source.
    pub(super) release_missing: u64,
}

/// Counts the storm's events (by pid and origin) in a JSONL trace, and reads its summary.
pub(super) fn count_tracer_output(path: &Path, pid: u64, origins: &[&str]) -> Result<TracerCounts> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut c = TracerCounts {
        storm_events: 0,
        all_events: 0,
        lost: 0,
        release_missing: 0,
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
                c.release_missing = v["tracker"]["release_missing"]
                    .as_u64()
                    .context("summary without tracker.release_missing")?;
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
}
