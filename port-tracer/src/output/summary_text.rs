//! The summary for people: counts, then what the analyses found, one section each.

use std::io::{self, Write};

use crate::{
    analysis::{
        alloc_time::AllocTimeReport,
        antipatterns::Finding,
        churn::{ChurnReport, Count},
        containers::{ContainerSockets, Workload},
        failures::{FailureGroup, FailureReport},
        headroom::{DestinationReport, HolderCount},
        occupancy::GroupReport,
        timeline::Series,
        AnalysisReport,
    },
    histogram::Bucket,
    summary::Summary,
};

use super::{endpoint, human_duration, printable, WallClock};

/// Marks of a timeline, lowest to highest.
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Marks per timeline.
const TIMELINE_WIDTH: usize = 60;

fn rate(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.2}/s"),
        None => "-".into(),
    }
}

fn percent(share: f64) -> String {
    match share * 100.0 {
        p if p > 0.0 && p < 1.0 => format!("{p:.2}%"),
        p => format!("{p:.1}%"),
    }
}

fn counts(c: &[Count]) -> String {
    c.iter()
        .map(|c| format!("{} {}", c.key, c.allocations))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One mark per bucket group, scaled to the highest shown.
pub(crate) fn sparkline(s: &Series) -> (String, u64) {
    let values = s.resampled(TIMELINE_WIDTH);
    let top = values.iter().copied().max().unwrap_or(0);
    let line = values
        .iter()
        .map(|&v| match top {
            0 => SPARKS[0],
            _ => SPARKS[(v as usize * (SPARKS.len() - 1)).div_ceil(top as usize)],
        })
        .collect();
    let per = s.max.len().div_ceil(TIMELINE_WIDTH).max(1) as u64 * s.bucket_ns;
    (line, per)
}

fn histogram(out: &mut impl Write, title: &str, buckets: &[Bucket]) -> io::Result<()> {
    if buckets.is_empty() {
        return Ok(());
    }
    writeln!(out, "{title}")?;
    for b in buckets {
        writeln!(out, "    < {:>10} {:>8}", human_duration(b.lt_ns), b.count)?;
    }
    Ok(())
}

fn occupancy(out: &mut impl Write, g: &GroupReport, clock: &WallClock) -> io::Result<()> {
    let place = match g.laddr {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]"),
        Some(a) => a.to_string(),
        None => "all addresses".into(),
    };
    let of_range = match (&g.range, g.peak_ratio) {
        (Some(r), Some(ratio)) => format!(
            " of {} ({}, range {}-{})",
            r.size,
            percent(ratio),
            r.low,
            r.high
        ),
        _ => " (range unknown: all ports counted)".into(),
    };
    let when = g
        .peak_ns
        .map(|t| format!(" at {}", clock.time_of_day(t)))
        .unwrap_or_default();
    writeln!(
        out,
        "  netns {} {} {place}: peak {}{of_range}{when}; {} held at the end",
        g.netns, g.proto, g.peak_ports, g.ports_held_at_end
    )?;
    let mut at_peak = format!("{} sockets at the peak", g.sockets_at_peak);
    if let Some(s) = g.time_wait_share_at_peak {
        at_peak += &format!(", {} in TIME_WAIT", percent(s));
    }
    if let Some(s) = g.time_wait_share_of_port_time {
        at_peak += &format!("; TIME_WAIT {} of all port-time", percent(s));
    }
    writeln!(out, "    {at_peak}")?;
    if !g.top_holders_at_peak.is_empty() {
        let holders: Vec<String> = g
            .top_holders_at_peak
            .iter()
            .map(|h| {
                if h.no_process {
                    format!(
                        "{} in TIME_WAIT since before the start (no process)",
                        h.sockets
                    )
                } else {
                    format!("{} pid {} ({})", h.sockets, h.pid, printable(&h.comm))
                }
            })
            .collect();
        writeln!(out, "    holders at the peak: {}", holders.join(", "))?;
    }
    if !g.top_containers_at_peak.is_empty() {
        writeln!(
            out,
            "    containers and units at the peak: {}",
            container_sockets(&g.top_containers_at_peak)
        )?;
    }
    if g.over_time.max.len() > 1 {
        let (line, per) = sparkline(&g.over_time);
        let top = g.over_time.max.iter().max().copied().unwrap_or(0);
        writeln!(
            out,
            "    over time (each mark {}, top {top}): {line}",
            human_duration(per)
        )?;
    }
    Ok(())
}

/// Writes `s` as text, times of day from `clock`: one section after another.
pub(crate) fn write(out: &mut impl Write, s: &Summary, clock: &WallClock) -> io::Result<()> {
    totals(out, s, clock)?;
    churn(out, &s.analysis.churn, clock)?;
    occupancies(out, &s.analysis.occupancy, clock)?;
    destinations(out, &s.analysis, clock)?;
    failures(out, &s.analysis.failures, clock)?;
    allocator_time(out, &s.analysis.allocator_time)?;
    distributions(out, s)?;
    anti_patterns(out, &s.analysis.anti_patterns)
}

/// The span, what was seen, what was lost, and each work-around the tracker needed.
fn totals(out: &mut impl Write, s: &Summary, clock: &WallClock) -> io::Result<()> {
    let c = &s.stats;
    let span = &s.analysis.span;
    writeln!(out, "\nSummary")?;
    writeln!(
        out,
        "  span: {} to {} ({})",
        clock.date_time(span.start_ns),
        clock.time_of_day(span.end_ns),
        human_duration(span.end_ns.saturating_sub(span.start_ns))
    )?;
    if let Some(kept) = &s.recorded_only {
        writeln!(
            out,
            "  recorded only: {} (the trace holds no other socket)",
            kept.flags()
        )?;
    }
    writeln!(
        out,
        "  events: {} (assign {}, release {}, time-wait {}, alloc-failure {})",
        c.events, c.assign, c.release, c.time_wait, c.alloc_failure
    )?;
    writeln!(
        out,
        "  lifetimes: {} ended, {} still held; {} allocations",
        c.lifetimes_ended, c.lifetimes_open, c.allocations
    )?;
    let reasons: Vec<String> = s
        .lost
        .by_reason
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    writeln!(
        out,
        "  lost events: {} ({}, undecodable {})",
        s.lost.total(),
        reasons.join(", "),
        s.lost.undecodable
    )?;
    let t = &s.tracker;
    let notes = [
        (
            s.output_dropped,
            "records not written, the output could not keep up (counted above)",
        ),
        (t.unmatched, "events for sockets never seen assigned"),
        (
            t.changed_while_starting,
            "sockets from before the start that went away or changed while it started",
        ),
        (
            t.evicted,
            "open lifetimes evicted (table full, see --max-lifetimes)",
        ),
        (
            t.owner_unknown,
            "sockets whose owner was unknown: accepted with an unknown listener, or connects started before the start (marked lossy)",
        ),
        (
            t.origin_guessed,
            "binds reported as `bind`, their origin not told (cgroup tier: another thread's bind took its note's slot)",
        ),
        (
            t.time_wait_guessed,
            "TIME_WAIT re-arms told from new TIME_WAIT sockets by their endpoints alone",
        ),
        (
            t.time_wait_reused,
            "TIME_WAIT sockets taken over by a new connection to the same peer (tcp_tw_reuse)",
        ),
        (
            t.released_early,
            "events released early by a full reorder window (order not assured)",
        ),
        (
            t.arrived_late,
            "events that came after newer ones had been handled (their CPU was held up past --reorder-ms): handled out of order",
        ),
        (
            s.cgroups.unresolved,
            "owners' cgroups not named (removed before they could be resolved, or not in the recording's table): their container, pod and unit are null",
        ),
    ];
    for (n, what) in notes {
        if n > 0 {
            writeln!(out, "  {what}: {n}")?;
        }
    }
    Ok(())
}

fn churn(out: &mut impl Write, ch: &ChurnReport, clock: &WallClock) -> io::Result<()> {
    let busiest = ch
        .peak_second_ns
        .map(|t| {
            format!(
                " (busiest second: {} at {})",
                ch.peak_per_second,
                clock.time_of_day(t)
            )
        })
        .unwrap_or_default();
    writeln!(
        out,
        "\nChurn: {} allocations, {}{busiest}",
        ch.allocations,
        rate(ch.per_second)
    )?;
    if ch.allocations > 0 {
        writeln!(out, "  by protocol: {}", counts(&ch.by_proto))?;
        writeln!(out, "  by origin: {}", counts(&ch.by_origin))?;
        writeln!(out, "  by netns: {}", counts(&ch.by_netns))?;
        writeln!(out, "  by cgroup id: {}", counts(&ch.by_cgroup))?;
        writeln!(out, "  top processes:")?;
        for p in &ch.by_process {
            writeln!(
                out,
                "    {:>8} {:>9} {:>7} {}",
                p.allocations,
                rate(p.per_second),
                p.pid,
                printable(&p.comm)
            )?;
        }
        if !ch.by_container.is_empty() {
            writeln!(out, "  top containers and units:")?;
            for c in &ch.by_container {
                let who = workload(&Workload {
                    container_id: c.container_id.clone(),
                    pod_uid: c.pod_uid.clone(),
                    unit: c.unit.clone(),
                    names: c.names.clone(),
                });
                writeln!(
                    out,
                    "    {:>8} {:>9} {who}",
                    c.allocations,
                    rate(c.per_second)
                )?;
            }
        }
    }
    Ok(())
}

/// "container 4f1c8d0e9b2a web (pod shop/web-0)", "unit cron.service".
fn workload(w: &Workload) -> String {
    match (&w.container_id, &w.unit) {
        (Some(id), _) => {
            let mut who = format!("container {}", printable(&id[..id.len().min(12)]));
            if let Some(name) = &w.names.container_name {
                who += &format!(" {}", printable(name));
            }
            match (&w.names.pod_name, &w.pod_uid) {
                (Some(pod), _) => {
                    let ns = w.names.pod_namespace.as_deref().unwrap_or("?");
                    who += &format!(" (pod {}/{})", printable(ns), printable(pod));
                }
                (None, Some(uid)) => who += &format!(" (pod {})", printable(uid)),
                (None, None) => {}
            }
            who
        }
        (None, Some(unit)) => format!("unit {}", printable(unit)),
        (None, None) => String::new(),
    }
}

/// " in container 4f1c8d0e9b2a", " in unit cron.service", or "" for neither.
fn in_container(container_id: &Option<String>, unit: &Option<String>) -> String {
    match (container_id, unit) {
        (Some(id), _) => format!(" in container {}", printable(&id[..id.len().min(12)])),
        (None, Some(unit)) => format!(" in unit {}", printable(unit)),
        (None, None) => String::new(),
    }
}

/// "20 container 4f1c8d0e9b2a, 5 unit cron.service".
fn container_sockets(by: &[ContainerSockets]) -> String {
    let named: Vec<String> = by
        .iter()
        .map(|c| format!("{} {}", c.sockets, workload(&c.workload)))
        .collect();
    named.join(", ")
}

fn occupancies(out: &mut impl Write, groups: &[GroupReport], clock: &WallClock) -> io::Result<()> {
    if !groups.is_empty() {
        writeln!(
            out,
            "\nRange occupancy: most distinct ports of the ephemeral range held at once \
             (the measure for bind(0) and UDP, which take ports for themselves)"
        )?;
        for g in groups {
            occupancy(out, g, clock)?;
        }
    }
    Ok(())
}

/// "20 pid 4242 (curl), 5 pid 1 (nginx)".
fn holder_counts(holders: &[HolderCount]) -> String {
    let named: Vec<String> = holders
        .iter()
        .map(|h| {
            if h.no_process {
                format!("{} held by no known process", h.sockets)
            } else {
                format!("{} pid {} ({})", h.sockets, h.pid, printable(&h.comm))
            }
        })
        .collect();
    named.join(", ")
}

fn destinations(out: &mut impl Write, a: &AnalysisReport, clock: &WallClock) -> io::Result<()> {
    let dests: &[DestinationReport] = &a.destinations;
    if dests.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nConnect headroom: ports a new connect() to each destination could still get, by \
         the kernel's rule (the range, less ports held by bind() or listen(), less ports \
         already connected to that destination from that address), fewest first"
    )?;
    for d in dests {
        writeln!(
            out,
            "  netns {} {} -> {}: at least {} of {} left, at {}: {} connected to it, {} \
             bind-held; peak {} connected to it; {} left at the end",
            d.netns,
            d.laddr,
            endpoint(d.raddr, d.rport),
            d.min_headroom,
            d.range_size,
            clock.time_of_day(d.min_headroom_ns),
            d.in_use_at_min,
            d.bind_held_at_min,
            d.peak_in_use,
            d.headroom_at_end
        )?;
        let mut then = String::new();
        if let Some(s) = d.time_wait_share_at_min {
            then += &format!("{} of them in TIME_WAIT", percent(s));
        }
        if !d.top_holders_at_min.is_empty() {
            if !then.is_empty() {
                then += "; ";
            }
            then += &format!("holders then: {}", holder_counts(&d.top_holders_at_min));
        }
        if !then.is_empty() {
            writeln!(out, "    {then}")?;
        }
        if !d.top_containers_at_min.is_empty() {
            writeln!(
                out,
                "    containers and units then: {}",
                container_sockets(&d.top_containers_at_min)
            )?;
        }
    }
    let left_out = a.destinations_not_followed;
    if left_out.connections > 0 {
        writeln!(
            out,
            "  ({} connections to destinations past the first 100,000 not followed)",
            left_out.connections
        )?;
    }
    if left_out.bind_held_holders > 0 {
        writeln!(
            out,
            "  ({} bind-held sockets counted but not named as holders)",
            left_out.bind_held_holders
        )?;
    }
    Ok(())
}

/// Why the first failure of a group happened, as things stood then.
fn failure_cause(g: &FailureGroup, clock: &WallClock) -> Option<String> {
    if let Some(holders) = &g.holders {
        if holders.is_empty() {
            return Some(format!("port {} held by no socket traced", g.lport));
        }
        // Alike holders (a listener's accepted sockets) in one entry, from the first.
        let mut named: Vec<(usize, String)> = Vec::new();
        let mut last = None;
        for h in holders {
            let who = (h.pid, &h.comm, h.state, h.origin);
            if last == Some(who) {
                if let Some((n, _)) = named.last_mut() {
                    *n += 1;
                }
                continue;
            }
            last = Some(who);
            let since = h
                .since_ns
                .map(|t| format!("since {}", clock.time_of_day(t)))
                .unwrap_or_else(|| "since before the start".into());
            named.push((
                1,
                format!(
                    "pid {} ({}){} {} (by {}), {since}",
                    h.pid,
                    printable(&h.comm),
                    in_container(&h.container_id, &h.unit),
                    h.state.as_str(),
                    h.origin
                ),
            ));
        }
        let named: Vec<String> = named
            .into_iter()
            .map(|(n, s)| {
                if n == 1 {
                    s
                } else {
                    format!("{n} sockets of {s} (the first)")
                }
            })
            .collect();
        return Some(format!("port {} held by: {}", g.lport, named.join("; ")));
    }
    let h = g.headroom.as_ref()?;
    let within = h.own_range.map_or(String::new(), |r| {
        format!(
            " in its own range {}-{} (IP_LOCAL_PORT_RANGE)",
            r.low, r.high
        )
    });
    let mut why = format!(
        "headroom towards it then{within}: {} of {} ({} connected to it, {} bind-held)",
        h.headroom, h.range_size, h.in_use, h.bind_held
    );
    if h.headroom > 0 {
        why += " -- the kernel refused with ports left: were events lost?";
    }
    if !h.top_holders.is_empty() {
        why += &format!("; holders: {}", holder_counts(&h.top_holders));
    }
    Some(why)
}

fn failures(out: &mut impl Write, f: &FailureReport, clock: &WallClock) -> io::Result<()> {
    if let Some(why) = &f.bind_failures_unseen {
        writeln!(out, "\nFailed bind() calls: not traced: {why}")?;
    }
    if f.total == 0 {
        return Ok(());
    }
    writeln!(out, "\nAllocation failures: {}", f.total)?;
    writeln!(
        out,
        "    {:>6}  {:<12} {:<12} {:>7} {:<15} {:<4} {:<14} destination",
        "count", "first", "last", "pid", "comm", "prot", "error"
    )?;
    for g in &f.groups {
        let dest = if g.rport == 0 && g.lport != 0 {
            format!("(local {})", endpoint(g.laddr, g.lport))
        } else if g.rport == 0 {
            format!("(local {})", g.laddr)
        } else {
            endpoint(g.raddr, g.rport)
        };
        writeln!(
            out,
            "    {:>6}  {:<12} {:<12} {:>7} {:<15} {:<4} {:<14} {dest}",
            g.count,
            clock.time_of_day(g.first_ns),
            clock.time_of_day(g.last_ns),
            g.pid,
            printable(&g.comm),
            g.proto,
            g.error
        )?;
        if let Some(why) = failure_cause(g, clock) {
            writeln!(out, "            {why}")?;
        }
    }
    if f.not_shown > 0 {
        writeln!(out, "    ... and {} more", f.not_shown)?;
    }
    if !f.by_container.is_empty() {
        let named: Vec<String> = f
            .by_container
            .iter()
            .map(|c| format!("{} {}", c.count, workload(&c.workload)))
            .collect();
        writeln!(out, "  by container and unit: {}", named.join(", "))?;
    }
    if f.holders_not_kept > 0 {
        writeln!(
            out,
            "    ({} sockets past a million open at once are not named as holders)",
            f.holders_not_kept
        )?;
    }
    Ok(())
}

/// Time inside the allocator per protocol and origin, then by how full the range was.
fn allocator_time(out: &mut impl Write, a: &AllocTimeReport) -> io::Result<()> {
    const TITLE: &str = "\nTime inside the kernel's port allocator";
    if a.groups.is_empty() {
        if let (Some(why), true) = (&a.not_measured, a.untimed > 0) {
            writeln!(out, "{TITLE}: not measured: {why}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{TITLE} (its search, entry to exit), by how full the range was for it (connect(): \
         ports it could not use towards its destination; bind(0) and autobind: ports held):"
    )?;
    let times = |n: u64, p50: Option<u64>, p99: Option<u64>, max: Option<u64>| {
        let d = |v: Option<u64>| v.map_or("-".into(), human_duration);
        format!(
            "{n} timed: median {}, p99 {}, max {}",
            d(p50),
            d(p99),
            d(max)
        )
    };
    for g in &a.groups {
        writeln!(
            out,
            "  {} {} {}",
            g.proto,
            g.origin,
            times(g.count, g.p50_ns, g.p99_ns, g.max_ns)
        )?;
        if g.by_occupancy.len() > 1 || g.by_occupancy.iter().any(|b| b.occupancy_from.is_some()) {
            for b in &g.by_occupancy {
                let band = match b.occupancy_from {
                    Some(_) => format!("range {} full", b.label),
                    None => b.label.to_string(),
                };
                writeln!(
                    out,
                    "    {band:<22} {}",
                    times(b.count, b.p50_ns, b.p99_ns, b.max_ns)
                )?;
            }
        }
    }
    if a.untimed > 0 {
        writeln!(out, "  ({} allocations without a time)", a.untimed)?;
    }
    Ok(())
}

fn distributions(out: &mut impl Write, s: &Summary) -> io::Result<()> {
    histogram(
        out,
        "\nLifetimes (assignment to release):",
        &s.lifetime_histogram,
    )?;
    histogram(out, "\nTime in TIME_WAIT:", &s.time_wait_histogram)?;
    histogram(
        out,
        "\nPort reuse interval (release to the next assignment of the same port):",
        &s.analysis.port_reuse_histogram,
    )
}

fn anti_patterns(out: &mut impl Write, findings: &[Finding]) -> io::Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nAnti-patterns:")?;
    for p in findings {
        let who = if p.no_process {
            "TIME_WAIT sockets from before the start (no process)".to_string()
        } else {
            format!(
                "pid {} ({}){}",
                p.pid,
                printable(&p.comm),
                in_container(&p.container_id, &p.unit)
            )
        };
        writeln!(
            out,
            "  {} {who}: {} sockets: {}",
            p.pattern, p.count, p.advice
        )?;
    }
    Ok(())
}
