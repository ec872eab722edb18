//! Chrome's Trace Event Format (opens in the Perfetto UI): a track per port under its
//! process, a slice per lifetime, TIME_WAIT as a slice of its own inside it, allocation
//! failures as instants.

use std::{
    collections::HashSet,
    fmt::Write as _,
    io::{self, Write},
};

use super::{endpoint, Printer, Spec, WallClock};
use crate::{
    event::{errno_name, Event, Kind},
    lifetime::Lifetime,
    summary::Summary,
};

pub const SPEC: Spec = Spec {
    name: "chrome-trace",
    help: "Chrome Trace Event Format (opens in the Perfetto UI): a track per port under its \
           process, a slice per lifetime, TIME_WAIT as a slice inside it",
    binary: false,
    for_tools: true,
    printer: |out, clock, _| Box::new(ChromeTracePrinter::new(out, clock)),
    partitioned: None,
};

pub struct ChromeTracePrinter<W: Write> {
    out: W,
    clock: WallClock,
    records: ChromeTrace,
    started: bool,
}

impl<W: Write> ChromeTracePrinter<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        ChromeTracePrinter {
            out,
            clock,
            records: ChromeTrace::default(),
            started: false,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            self.out.write_all(ChromeTrace::START.as_bytes())?;
        }
        Ok(())
    }
}

impl<W: Write> Printer for ChromeTracePrinter<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.start()?;
        let text = self.records.event(&self.clock, ev);
        self.out.write_all(text.as_bytes())
    }

    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()> {
        self.start()?;
        let text = self.records.lifetime(&self.clock, lt);
        self.out.write_all(text.as_bytes())
    }

    /// No summary record: the array is closed (an empty run gives a valid empty one).
    fn summary(&mut self, _: &Summary) -> io::Result<()> {
        self.start()?;
        self.out.write_all(ChromeTrace::END.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Trace Event Format records, written as the elements of one JSON array.
#[derive(Default)]
pub struct ChromeTrace {
    /// Processes and (process, port) tracks already named.
    named_processes: HashSet<u32>,
    named_tracks: HashSet<(u32, u16, &'static str)>,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Microseconds of wall time, as the format counts.
fn us(clock: &WallClock, ns: u64) -> f64 {
    clock.wall_ns(ns) as f64 / 1000.0
}

impl ChromeTrace {
    /// Names the process and the port's track the first time they appear.
    fn names(&mut self, out: &mut String, pid: u32, comm: &str, proto: &'static str, port: u16) {
        if self.named_processes.insert(pid) {
            let name = if pid == 0 {
                "unknown process".to_string()
            } else {
                format!("{comm} ({pid})")
            };
            let _ = writeln!(
                out,
                "{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{pid},\"tid\":0,\"args\":{{\"name\":{}}}}},",
                json_str(&name)
            );
        }
        if self.named_tracks.insert((pid, port, proto)) {
            let _ = writeln!(
                out,
                "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{pid},\"tid\":{},\"args\":{{\"name\":\"{proto} port {port}\"}}}},",
                track(proto, port)
            );
        }
    }

    /// A lifetime as a slice on its port's track, TIME_WAIT as a slice inside it. Each
    /// record ends with a comma; [`ChromeTrace::END`] closes the array.
    pub fn lifetime(&mut self, clock: &WallClock, lt: &Lifetime) -> String {
        let mut out = String::new();
        let e = &lt.ends;
        let (pid, proto) = (lt.owner.pid, e.proto.as_str());
        self.names(&mut out, pid, &lt.owner.comm.as_str(), proto, e.lport);
        let Some(start) = lt
            .assigned_ns()
            .or(lt.time_wait_start_ns())
            .or(lt.released_ns())
        else {
            return out; // held before start and still held: no time at all
        };
        let end = lt.released_ns().unwrap_or(start);
        let name = format!(
            "{proto} {} -> {} ({}{})",
            endpoint(e.laddr, e.lport),
            endpoint(e.raddr, e.rport),
            lt.origin.as_str(),
            if lt.released_ns().is_none() {
                ", still held"
            } else {
                ""
            }
        );
        let args = format!(
            "{{\"netns\":{},\"tid\":{},\"comm\":{},\"thread\":{},\"sock_id\":\"{:#x}\",\"lossy\":{}}}",
            e.netns,
            lt.owner.tid,
            json_str(&lt.owner.comm.as_str()),
            json_str(&lt.owner.thread.as_str()),
            lt.sock_id,
            lt.lossy
        );
        let _ = writeln!(
            out,
            "{{\"ph\":\"X\",\"cat\":\"lifetime\",\"name\":{},\"pid\":{pid},\"tid\":{},\"ts\":{:.3},\"dur\":{:.3},\"args\":{args}}},",
            json_str(&name),
            track(proto, e.lport),
            us(clock, start),
            end.saturating_sub(start) as f64 / 1000.0
        );
        if let Some(tw) = lt.time_wait_start_ns() {
            let _ = writeln!(
                out,
                "{{\"ph\":\"X\",\"cat\":\"time_wait\",\"name\":\"TIME_WAIT\",\"pid\":{pid},\"tid\":{},\"ts\":{:.3},\"dur\":{:.3}}},",
                track(proto, e.lport),
                us(clock, tw),
                end.saturating_sub(tw) as f64 / 1000.0
            );
        }
        out
    }

    /// An allocation failure as an instant on its process's track 0; other events are
    /// in the lifetimes already.
    pub fn event(&mut self, clock: &WallClock, ev: &Event) -> String {
        if ev.kind != Kind::AllocFailure {
            return String::new();
        }
        let mut out = String::new();
        self.names(
            &mut out,
            ev.task.pid,
            &ev.task.comm.as_str(),
            ev.ends.proto.as_str(),
            ev.ends.lport,
        );
        let _ = writeln!(
            out,
            "{{\"ph\":\"i\",\"s\":\"p\",\"cat\":\"failure\",\"name\":\"{} {} {}\",\"pid\":{},\"tid\":0,\"ts\":{:.3}}},",
            ev.ends.proto.as_str(),
            ev.origin.as_str(),
            errno_name(ev.errno),
            ev.task.pid,
            us(clock, ev.ts_ns)
        );
        out
    }

    pub const START: &'static str = "[\n";
    /// Closes the array (after the trailing comma of the last record, an empty metadata
    /// record keeps the JSON valid).
    pub const END: &'static str =
        "{\"ph\":\"M\",\"name\":\"trace_end\",\"pid\":0,\"tid\":0,\"args\":{}}\n]\n";
}

/// The track of a port: TCP and UDP ports of one process on separate tracks.
fn track(proto: &str, port: u16) -> u32 {
    u32::from(port) + if proto == "udp" { 65536 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lifetime as lt;

    #[test]
    fn chrome_trace_is_a_json_array_with_time_wait_inside_the_lifetime() {
        let clock = WallClock { offset_ns: 0 };
        let mut c = ChromeTrace::default();
        let mut text = ChromeTrace::START.to_string();
        text += &c.lifetime(&clock, &lt());
        text += &c.lifetime(&clock, &lt()); // names only once
        text += ChromeTrace::END;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let recs = v.as_array().unwrap();
        let meta = recs.iter().filter(|r| r["ph"] == "M").count();
        assert_eq!(meta, 3, "process name, track name, end");
        let slices: Vec<_> = recs.iter().filter(|r| r["ph"] == "X").collect();
        assert_eq!(slices.len(), 4);
        assert_eq!(slices[0]["cat"], "lifetime");
        assert_eq!(slices[0]["ts"], 1.0);
        assert_eq!(slices[0]["dur"], 4.0);
        assert_eq!(slices[1]["cat"], "time_wait");
        assert_eq!(slices[1]["ts"], 3.0);
        assert_eq!(slices[1]["dur"], 2.0);
        assert_eq!(slices[0]["tid"], slices[1]["tid"]);
        assert_eq!(slices[0]["pid"], 9);
    }
}
