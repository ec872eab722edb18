//! Output edge: text for people, JSON Lines for machines, and data files for other tools
//! (CSV, Parquet, Chrome trace). The JSONL schema is documented in the README; field names
//! here are that schema.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
};

pub mod columns;
mod export;
mod jsonl;
pub mod parquet;
mod queue;
mod summary_text;

pub use queue::OutputQueue;

use crate::{
    event::{Endpoints, Event, Kind, Origin, Task},
    lifetime::{Lifetime, Output},
    summary::Summary,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, one line per event, a lifetime line per release.
    Text,
    /// JSON Lines: event, lifetime and summary records.
    Jsonl,
    /// CSV: one row per lifetime, the JSONL lifetime fields as columns.
    Csv,
    /// Parquet (needs --output): one row per lifetime, the JSONL lifetime fields as typed
    /// columns, for DuckDB, pandas or Spark.
    Parquet,
    /// Chrome Trace Event Format (opens in the Perfetto UI): a track per port under its
    /// process, a slice per lifetime, TIME_WAIT as a slice inside it.
    ChromeTrace,
}

/// Converts kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime - monotonic, in ns.
    pub offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let mono = crate::clock::monotonic_ns() as i128;
        let real = crate::clock::realtime_ns() as i128;
        WallClock {
            offset_ns: real - mono,
        }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }

    /// Local time of `mono_ns` and its milliseconds.
    fn local(&self, mono_ns: u64) -> (libc::tm, u32) {
        let wall = self.wall_ns(mono_ns);
        let secs = wall.div_euclid(1_000_000_000) as libc::time_t;
        let ms = (wall.rem_euclid(1_000_000_000) / 1_000_000) as u32;
        // SAFETY: tm is plain integers; localtime_r fills it from a valid time_t.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::localtime_r(&secs, &mut tm) };
        (tm, ms)
    }

    /// Local time of day, "HH:MM:SS.mmm".
    pub fn time_of_day(&self, mono_ns: u64) -> String {
        let (tm, ms) = self.local(mono_ns);
        format!(
            "{:02}:{:02}:{:02}.{ms:03}",
            tm.tm_hour, tm.tm_min, tm.tm_sec
        )
    }

    /// Local date and time, "YYYY-MM-DD HH:MM:SS.mmm".
    pub fn date_time(&self, mono_ns: u64) -> String {
        let (tm, _) = self.local(mono_ns);
        format!(
            "{}-{:02}-{:02} {}",
            i64::from(tm.tm_year) + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            self.time_of_day(mono_ns)
        )
    }
}

/// Human-readable duration: "850ns", "12.3us", "4.56ms", "1.20s", "2m03s".
pub fn human_duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        1_000_000_000..120_000_000_000 => format!("{:.2}s", ns as f64 / 1e9),
        _ => format!("{}m{:02}s", ns / 60_000_000_000, (ns / 1_000_000_000) % 60),
    }
}

pub(crate) fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Writes outputs in one format.
pub struct Sink<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
    header_done: bool,
    line: jsonl::Line,
    chrome: export::ChromeTrace,
    parquet: parquet::ParquetTable,
}

impl<W: Write> Sink<W> {
    pub fn new(out: W, format: Format, clock: WallClock) -> Self {
        Sink {
            out,
            format,
            clock,
            header_done: false,
            line: jsonl::Line(Vec::with_capacity(Self::BLOCK + 1024)),
            chrome: export::ChromeTrace::default(),
            parquet: parquet::ParquetTable::new(parquet::ROW_GROUP_ROWS),
        }
    }

    pub fn into_inner(mut self) -> W {
        let _ = self.write_pending();
        self.out
    }

    /// JSON lines accumulate in `line` and go out in blocks of this many bytes: one copy
    /// less than line by line through a `BufWriter`.
    const BLOCK: usize = 1 << 16;

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.line.0.is_empty() {
            self.out.write_all(&self.line.0)?;
            self.line.clear();
        }
        Ok(())
    }

    fn line_done(&mut self) -> io::Result<()> {
        if self.line.0.len() >= Self::BLOCK {
            self.write_pending()?;
        }
        Ok(())
    }

    fn header(&mut self) -> io::Result<()> {
        if self.header_done {
            return Ok(());
        }
        self.header_done = true;
        match self.format {
            Format::Text => writeln!(
                self.out,
                "{:<12} {:<13} {:<5} {:<28} {:<28} {:>7} {:<16} {:<14} HELD",
                "TIME", "EVENT", "PROTO", "LOCAL", "REMOTE", "PID", "COMM", "ORIGIN"
            ),
            Format::Csv => writeln!(self.out, "{}", export::csv_header()),
            Format::ChromeTrace => self.out.write_all(export::ChromeTrace::START.as_bytes()),
            Format::Jsonl | Format::Parquet => Ok(()),
        }
    }

    pub fn write(&mut self, o: &Output) -> io::Result<()> {
        match o {
            Output::Event(ev) => self.event(ev),
            Output::Lifetime(lt) => self.lifetime(lt),
        }
    }

    /// One aligned text line.
    fn text_row(
        &mut self,
        ts_ns: u64,
        what: &str,
        e: &Endpoints,
        task: &Task,
        origin: Origin,
        tail: &str,
    ) -> io::Result<()> {
        self.header()?;
        writeln!(
            self.out,
            "{:<12} {:<13} {:<5} {:<28} {:<28} {:>7} {:<16} {:<14} {tail}",
            self.clock.time_of_day(ts_ns),
            what,
            e.proto.as_str(),
            endpoint(e.laddr, e.lport),
            endpoint(e.raddr, e.rport),
            task.pid,
            task.comm.as_str(),
            origin.as_str(),
        )
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        match self.format {
            Format::Csv | Format::Parquet => Ok(()),
            Format::ChromeTrace => {
                self.header()?;
                let text = self.chrome.event(&self.clock, ev);
                self.out.write_all(text.as_bytes())
            }
            // A release is shown by its lifetime line.
            Format::Text if ev.kind == Kind::Release => Ok(()),
            Format::Text => {
                let tail = if ev.kind == Kind::AllocFailure {
                    errno_name(ev.errno)
                } else {
                    ""
                };
                self.text_row(
                    ev.ts_ns,
                    ev.kind.as_str(),
                    &ev.ends,
                    &ev.task,
                    ev.origin,
                    tail,
                )
            }
            Format::Jsonl => {
                let l = &mut self.line;
                l.raw("{\"type\":\"");
                l.raw(ev.kind.as_str());
                l.raw("\",\"ts_ns\":");
                l.u64(ev.ts_ns);
                l.socket(&ev.ends, &ev.task, ev.origin, ev.sock_id);
                if ev.kind == Kind::AllocFailure {
                    l.raw(",\"errno\":");
                    l.i64(ev.errno.into());
                    l.raw(",\"error\":\"");
                    l.raw(errno_name(ev.errno));
                    l.raw("\"");
                }
                if ev.time_wait_sock {
                    l.raw(",\"time_wait_sock\":true");
                }
                l.raw("}\n");
                self.line_done()
            }
        }
    }

    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()> {
        match self.format {
            Format::Csv => {
                self.header()?;
                self.out.write_all(export::csv_row(lt).as_bytes())
            }
            Format::Parquet => self.parquet.push(lt, &mut self.out),
            Format::ChromeTrace => {
                self.header()?;
                let text = self.chrome.lifetime(&self.clock, lt);
                self.out.write_all(text.as_bytes())
            }
            Format::Text => {
                let (what, ts) = match lt.released_ns() {
                    Some(ts) => ("release", ts),
                    None => ("still-held", lt.assigned_ns().unwrap_or(0)),
                };
                let mut held = match (lt.duration_ns(), lt.released_ns()) {
                    (Some(d), _) => human_duration(d),
                    (None, Some(_)) => "since before start".to_string(),
                    (None, None) => match lt.time_wait_start_ns() {
                        Some(tw) => {
                            format!("open, in time-wait since {}", self.clock.time_of_day(tw))
                        }
                        None => "open".to_string(),
                    },
                };
                if let Some(tw) = lt.time_wait_ns() {
                    let _ = write!(held, " (time-wait {})", human_duration(tw));
                }
                if lt.lossy {
                    held.push_str(" [events lost]");
                }
                self.text_row(ts, what, &lt.ends, &lt.owner, lt.origin, &held)
            }
            Format::Jsonl => {
                let l = &mut self.line;
                l.raw("{\"type\":\"lifetime\"");
                l.socket(&lt.ends, &lt.owner, lt.origin, lt.sock_id);
                l.raw(",\"assigned_ns\":");
                l.opt_u64(lt.assigned_ns());
                l.raw(",\"released_ns\":");
                l.opt_u64(lt.released_ns());
                l.raw(",\"duration_ns\":");
                l.opt_u64(lt.duration_ns());
                l.raw(",\"time_wait_start_ns\":");
                l.opt_u64(lt.time_wait_start_ns());
                l.raw(",\"time_wait_ns\":");
                l.opt_u64(lt.time_wait_ns());
                l.raw(if lt.lossy {
                    ",\"lossy\":true}\n"
                } else {
                    ",\"lossy\":false}\n"
                });
                self.line_done()
            }
        }
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.write_pending()?;
        match self.format {
            // Data files for other tools: no summary record (an empty run still gets its
            // header, or a valid empty array).
            Format::Csv => self.header(),
            Format::Parquet => self.parquet.finish(&mut self.out),
            Format::ChromeTrace => {
                self.header()?;
                self.out.write_all(export::ChromeTrace::END.as_bytes())
            }
            Format::Jsonl => {
                let mut v = serde_json::to_value(s).expect("summary serializes");
                let obj = v.as_object_mut().expect("summary is an object");
                obj.insert("type".into(), "summary".into());
                let mut lost = serde_json::Map::new();
                for (k, n) in &s.lost.by_reason {
                    lost.insert((*k).into(), (*n).into());
                }
                lost.insert("undecodable".into(), s.lost.undecodable.into());
                lost.insert("total".into(), s.lost.total().into());
                obj.insert("lost".into(), lost.into());
                // Times in the summary are monotonic ns, as everywhere in the JSONL.
                obj.insert(
                    "realtime_offset_ns".into(),
                    (self.clock.offset_ns as i64).into(),
                );
                writeln!(self.out, "{v}")
            }
            Format::Text => summary_text::write(&mut self.out, s, &self.clock),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }

    /// A line of its own in text output (nothing in the other formats).
    pub fn note(&mut self, line: &str) -> io::Result<()> {
        if self.format != Format::Text {
            return Ok(());
        }
        self.write_pending()?;
        writeln!(self.out, "{line}")
    }
}

/// Name of an allocation-failure errno.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAGAIN => "EAGAIN",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifetime::time;
    use crate::{event::Comm, testing::ends};

    #[test]
    fn jsonl_lifetime_has_the_schema_fields() {
        let lt = Lifetime {
            ends: ends(40000),
            owner: Task {
                pid: 9,
                comm: Comm::new("a\"b"),
                ..Default::default()
            },
            origin: Origin::Connect,
            sock_id: 0x10,
            assigned: time(100),
            released: time(350),
            time_wait_start: time(300),
            lossy: false,
            laddr_learnt: false,
        };
        let mut sink = Sink::new(Vec::new(), Format::Jsonl, WallClock { offset_ns: 0 });
        sink.write(&Output::Lifetime(lt)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&sink.into_inner()).unwrap();
        assert_eq!(v["type"], "lifetime");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["lport"], 40000);
        assert_eq!(v["comm"], "a\"b");
        assert_eq!(v["origin"], "connect");
        assert_eq!(v["duration_ns"], 250);
        assert_eq!(v["time_wait_ns"], 50);
    }

    #[test]
    fn open_lifetime_has_null_release() {
        let lt = Lifetime {
            ends: ends(1),
            owner: Task::default(),
            origin: Origin::Bind,
            sock_id: 1,
            assigned: time(1),
            released: None,
            time_wait_start: None,
            lossy: true,
            laddr_learnt: false,
        };
        let mut sink = Sink::new(Vec::new(), Format::Jsonl, WallClock { offset_ns: 0 });
        sink.write(&Output::Lifetime(lt)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&sink.into_inner()).unwrap();
        assert!(v["released_ns"].is_null());
        assert!(v["duration_ns"].is_null());
        assert_eq!(v["lossy"], true);
    }

    #[test]
    fn text_summary_names_time_wait_sockets_found_at_start_as_held_by_no_process() {
        use crate::{
            analysis::Span,
            lifetime::{Counters, HeldAtStart},
            port_range::PortRange,
            summary::{Lost, Stats, Summary},
        };
        let mut stats = Stats::new(100);
        stats.analysis.set_range(PortRange {
            netns: 7,
            low: 40000,
            high: 40009,
            reserved: String::new(),
        });
        let held: Vec<HeldAtStart> = (40000..40006)
            .map(|lport| HeldAtStart {
                ends: ends(lport),
                owner: Task::default(),
                listening: false,
                time_wait: true,
                seen_ns: 90,
            })
            .collect();
        for h in &held {
            stats.analysis.held_at_start(h);
        }
        for h in &held {
            let mut lt = h.lifetime();
            lt.released = time(1_000);
            stats.observe(&Output::Lifetime(lt));
        }
        let span = Span {
            start_ns: 100,
            end_ns: 2_000,
        };
        let summary = Summary::new(&stats, &Counters::default(), Lost::default(), span, 10);
        let mut sink = Sink::new(Vec::new(), Format::Text, WallClock { offset_ns: 0 });
        sink.summary(&summary).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert!(
            text.contains("6 sockets at the peak, 100.0% in TIME_WAIT"),
            "{text}"
        );
        assert!(
            text.contains(
                "holders at the peak: 6 in TIME_WAIT since before the start (no process)"
            ),
            "{text}"
        );
        assert!(
            text.contains("time_wait_bound_range TIME_WAIT sockets from before the start (no process): 6 sockets"),
            "{text}"
        );
        assert!(!text.contains("pid 0"), "{text}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(999), "999ns");
        assert_eq!(human_duration(1_500), "1.5us");
        assert_eq!(human_duration(60_000_000_000), "60.00s");
        assert_eq!(human_duration(125_000_000_000), "2m05s");
    }
}
