//! The results: statistics over rounds, the tables and the JSON.

use super::*;

pub(super) fn describe(m: &Measured) -> String {
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
    if let Some(r) = m.missed.filter(|&r| r > 0) {
        s += &format!("  releases missed {r}");
    }
    if let (Some(cpu), Some(rss)) = (m.cpu_s, m.max_rss_kb) {
        s += &format!("  cpu {cpu:.2}s  rss {:.1}MB", rss as f64 / 1024.0);
    }
    s
}

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
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
pub(super) fn groups(
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

pub(super) fn render_table(all: &[Measured], idle: &[(Tool, f64)], opts: &Options) -> String {
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
        // Missed at the source (a hook that did not run), not lost in transit: said apart.
        let missed = runs.iter().filter_map(|m| m.missed).max().unwrap_or(0);
        let lost = if missed > 0 {
            format!("{lost} (+{missed} releases missed)")
        } else {
            lost
        };
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
pub(super) fn render_programs(all: &[Measured], opts: &Options) -> String {
    let mut out = String::new();
    // (tool, workload, total ns per op), for the closing per-tier table.
    let mut totals: Vec<(String, Workload, f64)> = Vec::new();
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
        totals.push((tool.label(), w, total));
        if let Some(u) = untraced_ns {
            out += &format!(
                "\nOne untraced operation takes {u:.0} ns of its thread (median): the programs alone add {:.1}% to it, a ratio of at best {:.3}.\n",
                100.0 * total / u,
                u / (u + total)
            );
        }
    }
    out + &render_tier_totals(&totals)
}

/// One line per tool: the BPF time its programs add per TCP connection and per UDP socket.
fn render_tier_totals(totals: &[(String, Workload, f64)]) -> String {
    let mut tools: Vec<&str> = Vec::new();
    for (tool, _, _) in totals {
        if !tools.contains(&tool.as_str()) {
            tools.push(tool);
        }
    }
    if tools.is_empty() {
        return String::new();
    }
    let mut out = "\nBPF time per operation, by tier (medians above)\n\n\
                   | tool | ns per TCP connection | ns per UDP socket |\n|---|---|---|\n"
        .to_string();
    for tool in tools {
        let of = |w: Workload| {
            totals
                .iter()
                .find(|t| t.0 == tool && t.1 == w)
                .map_or("-".to_string(), |t| format!("{:.0}", t.2))
        };
        out += &format!(
            "| {tool} | {} | {} |\n",
            of(Workload::Tcp),
            of(Workload::Udp)
        );
    }
    out
}

pub(super) fn to_json(m: &Measured) -> Value {
    serde_json::json!({
        "workload": m.workload.name(),
        "tool": m.tool.label(),
        "round": m.round + 1,
        "ops_per_s": m.rate,
        "events_expected": m.expected,
        "events_delivered": m.delivered,
        "lost": m.lost,
        "release_missing": m.missed,
        "tool_events": m.tool_events,
        "tool_cpu_s": m.cpu_s,
        "tool_max_rss_kb": m.max_rss_kb,
        "kernel_programs": m.programs.iter().map(|(n, runs, ns)| serde_json::json!({
            "name": n, "runs_per_op": runs, "ns_per_op": ns,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_totals_have_a_line_per_tool() {
        let t = render_tier_totals(&[
            ("port-tracer (cgroup)".into(), Workload::Tcp, 900.4),
            ("port-tracer (tracepoint)".into(), Workload::Tcp, 2112.0),
            ("port-tracer (cgroup)".into(), Workload::Udp, 500.0),
        ]);
        assert!(t.contains("| port-tracer (cgroup) | 900 | 500 |"), "{t}");
        assert!(t.contains("| port-tracer (tracepoint) | 2112 | - |"), "{t}");
        assert_eq!(render_tier_totals(&[]), "");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
