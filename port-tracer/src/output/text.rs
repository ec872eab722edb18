//! Text for people: aligned columns, one line per event, a lifetime line per release, and
//! the summary's sections at the end.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use super::{endpoint, human_duration, printable, summary_text, Printer, Spec, WallClock};
use crate::{
    cgroups::{Cgroup, Cgroups, Lookup},
    event::{errno_name, Endpoints, Event, Kind, Origin, Task},
    lifetime::Lifetime,
    summary::Summary,
};

pub const SPEC: Spec = Spec {
    name: "text",
    help: "Aligned columns, one line per event, a lifetime line per release",
    binary: false,
    for_tools: false,
    printer: |out, clock, cgroups| Box::new(Text::new(out, clock).with_cgroups(cgroups)),
    partitioned: None,
};

pub struct Text<W: Write> {
    out: W,
    clock: WallClock,
    header_done: bool,
    cgroups: Lookup,
}

impl<W: Write> Text<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        Text {
            out,
            clock,
            header_done: false,
            cgroups: Lookup::default(),
        }
    }

    /// Owners' containers or units named from `cgroups`.
    pub fn with_cgroups(mut self, cgroups: Cgroups) -> Self {
        self.cgroups = Lookup::new(cgroups);
        self
    }

    fn header(&mut self) -> io::Result<()> {
        if self.header_done {
            return Ok(());
        }
        self.header_done = true;
        writeln!(
            self.out,
            "{:<12} {:<13} {:<5} {:<28} {:<28} {:>7} {:<16} {:<14} HELD",
            "TIME", "EVENT", "PROTO", "LOCAL", "REMOTE", "PID", "COMM", "ORIGIN"
        )
    }

    /// One aligned line.
    fn row(
        &mut self,
        ts_ns: u64,
        what: &str,
        e: &Endpoints,
        task: &Task,
        origin: Origin,
        tail: &str,
    ) -> io::Result<()> {
        self.header()?;
        let named = self
            .cgroups
            .get(task.cgroup_id)
            .map(|cg| cgroup_label(&cg))
            .unwrap_or_default();
        writeln!(
            self.out,
            "{:<12} {:<13} {:<5} {:<28} {:<28} {:>7} {:<16} {:<14} {tail}{named}",
            self.clock.time_of_day(ts_ns),
            what,
            e.proto.as_str(),
            endpoint(e.laddr, e.lport),
            endpoint(e.raddr, e.rport),
            task.pid,
            printable(&task.comm.as_str()),
            origin.as_str(),
        )
    }
}

/// Longest name shown (a unit, a container's or a pod's); longer ones are cut, the cut
/// marked.
const NAME_SHOWN: usize = 40;

/// `s` escaped as text shows names, cut at [`NAME_SHOWN`] characters.
pub(crate) fn name(s: &str) -> String {
    let s = printable(s);
    match s.char_indices().nth(NAME_SHOWN) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.into_owned(),
    }
}

/// What a line says of its owner's cgroup, after the rest: the container (12 digits, as
/// `docker ps` shows it, then its name and pod where known) or the unit; nothing for
/// other cgroups.
fn cgroup_label(cg: &Cgroup) -> String {
    match (&cg.naming.container_id, &cg.naming.unit) {
        (Some(_), _) => {
            let mut s = format!(" container={}", cg.short());
            let r = &cg.runtime;
            if let Some(n) = &r.container_name {
                s += &format!(" name={}", name(n));
            }
            if let Some(pod) = &r.pod_name {
                let ns = r.pod_namespace.as_deref().unwrap_or("?");
                s += &format!(" pod={}/{}", name(ns), name(pod));
            }
            s
        }
        (None, Some(unit)) => format!(" unit={}", name(unit)),
        (None, None) => String::new(),
    }
}

impl<W: Write> Printer for Text<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        // A release is shown by its lifetime line.
        if ev.kind == Kind::Release {
            return Ok(());
        }
        let tail = if ev.kind == Kind::AllocFailure {
            errno_name(ev.errno)
        } else {
            ""
        };
        self.row(
            ev.ts_ns,
            ev.kind.as_str(),
            &ev.ends,
            &ev.task,
            ev.origin,
            tail,
        )
    }

    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()> {
        let (what, ts) = match lt.released_ns() {
            Some(ts) => ("release", ts),
            None => ("still-held", lt.assigned_ns().unwrap_or(0)),
        };
        let mut held = match (lt.duration_ns(), lt.released_ns()) {
            (Some(d), _) => human_duration(d),
            (None, Some(_)) => "since before start".to_string(),
            (None, None) => match lt.time_wait_start_ns() {
                Some(tw) => format!("open, in time-wait since {}", self.clock.time_of_day(tw)),
                None => "open".to_string(),
            },
        };
        if let Some(tw) = lt.time_wait_ns() {
            let _ = write!(held, " (time-wait {})", human_duration(tw));
        }
        if lt.lossy {
            held.push_str(" [events lost]");
        }
        self.row(ts, what, &lt.ends, &lt.owner, lt.origin, &held)
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        summary_text::write(&mut self.out, s, &self.clock)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn skipped(&mut self, n: u64) -> io::Result<()> {
        writeln!(
            self.out,
            "port-tracer: {n} records not shown here: the output could not keep up (the \
             summary counts them)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{Cgroups, Entry, RuntimeNames};

    #[test]
    fn lines_name_the_container_and_pod_escaped_and_cut() {
        let id = "ab".repeat(32);
        let cgroups = Cgroups::recorded();
        cgroups.insert(Entry {
            id: 5,
            path: format!("/system.slice/docker-{id}.scope"),
            runtime: RuntimeNames {
                container_name: Some("web\x1b[2J".into()),
                pod_name: Some("p".repeat(60)),
                pod_namespace: Some("shop".into()),
            },
        });
        cgroups.insert(Entry {
            id: 6,
            path: "/system.slice/cron.service".into(),
            runtime: RuntimeNames::default(),
        });
        cgroups.note(5);
        cgroups.note(6);
        let mut lt = crate::testing::lifetime();
        let mut t = Text::new(Vec::new(), WallClock { offset_ns: 0 }).with_cgroups(cgroups);
        lt.owner.cgroup_id = 5;
        t.lifetime(&lt).unwrap();
        lt.owner.cgroup_id = 6;
        t.lifetime(&lt).unwrap();
        let text = String::from_utf8(t.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let pods = format!(" pod=shop/{}...", "p".repeat(40));
        assert!(
            lines[1].ends_with(&format!(" container={} name=web\\x1b[2J{pods}", &id[..12])),
            "{text}"
        );
        assert!(lines[2].ends_with(" unit=cron.service"), "{text}");
    }
}
