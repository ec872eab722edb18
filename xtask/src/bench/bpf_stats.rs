//! The kernel's BPF run-time statistics (`--bpf-stats`), read through bpftool.

use super::*;

/// Turns the kernel's BPF run-time statistics on for as long as it lives.
pub(super) struct BpfStats {
    pub(super) before: String,
}

pub(super) const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
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
pub(super) struct Program {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) run_cnt: u64,
    pub(super) run_time_ns: u64,
}

pub(super) fn programs() -> Result<Vec<Program>> {
    let out = output_of(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    parse_programs(&out)
}

pub(super) fn parse_programs(json: &str) -> Result<Vec<Program>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
