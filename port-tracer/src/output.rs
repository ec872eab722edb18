//! Output edge: text for people, JSON Lines for machines, and data files for other tools
//! (CSV, Parquet, Chrome trace). One printer type per format ([`Printer`]), one file each;
//! [`Format`] names them and builds one. The JSONL schema is documented in the README;
//! field names here are that schema.
//!
//! A new format: a file with its printer and its [`Spec`], a variant of [`Format`] and its
//! arm in [`Format::spec`].
//!
//! A [`Destination`] is a format and where it goes ([`Target`]): standard output, one file
//! (`--output`), or, for a format that can (Parquet), a directory of Hive-style partitions
//! for many hosts' exports (`export --output-dir`, [`parquet::partitioned`]).

use std::{
    io::{self, BufWriter, Write},
    net::IpAddr,
    path::PathBuf,
};

mod chrome_trace;
pub mod columns;
mod csv;
pub mod file;
mod jsonl;
pub mod parquet;
mod queue;
mod summary_text;
pub(crate) mod text;

pub use queue::OutputQueue;

use crate::{
    cgroups::Cgroups,
    event::Event,
    lifetime::{Lifetime, OutputRef},
    summary::Summary,
};

/// Which host and which boot of it a run traced: on every lifetime row of the tables
/// (JSONL, CSV, Parquet), so that many hosts' (and one host's many boots') rows can be
/// one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInfo {
    /// The hostname (or `--host NAME`); None: unknown.
    pub host: Option<String>,
    /// `/proc/sys/kernel/random/boot_id` of that boot; None: unknown (traces recorded
    /// before it was).
    pub boot_id: Option<String>,
    /// When tracing started (CLOCK_MONOTONIC ns), when the sockets held at start were
    /// seen; None: not known (live tracing does not need it). Partitions by date take it
    /// for lifetimes that no time of their own places.
    pub started_ns: Option<u64>,
}

impl RunInfo {
    /// This host now: its name (unless `host` names it otherwise) and its boot.
    pub fn this_host(host: Option<String>) -> RunInfo {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        RunInfo {
            host: host.or_else(|| read("/proc/sys/kernel/hostname")),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            started_ns: None,
        }
    }
}

/// Writes the tracker's outputs and the summary in one format.
pub trait Printer {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()>;
    /// The run's summary, last (data files for other tools end their file instead).
    fn summary(&mut self, s: &Summary) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// `n` records were not written (a slow reader): text says so in place.
    fn skipped(&mut self, _n: u64) -> io::Result<()> {
        Ok(())
    }

    /// The host and boot traced, before the first record (the tables name them on every
    /// row; the other formats do not).
    fn set_run(&mut self, _run: &RunInfo) {}

    fn write(&mut self, o: OutputRef<'_>) -> io::Result<()> {
        match o {
            OutputRef::Event(ev) => self.event(ev),
            OutputRef::Lifetime(lt) => self.lifetime(lt),
        }
    }
}

/// Where printers write: a file, standard output, or memory.
pub type Out = BufWriter<Box<dyn Write + Send>>;

/// What a format is, for the command line and for whoever writes it.
pub struct Spec {
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// A binary file: never to a terminal or a pipe (needs --output).
    pub binary: bool,
    /// A file for other tools (what `export` writes): lifetimes, no summary.
    pub for_tools: bool,
    /// A printer writing to `Out`, times of day from the clock, owners' cgroups named from
    /// the table.
    pub printer: fn(Out, WallClock, Cgroups) -> Box<dyn Printer + Send>,
    /// For a format that can be written as a directory of partitions (`--output-dir`): a
    /// printer writing them, made ready (the directory opened) before anything is read.
    pub partitioned: Option<PartitionedPrinter>,
}

/// A printer writing partitions as `Partitioning` says, times from the clock, owners'
/// cgroups named from the table.
pub type PartitionedPrinter =
    fn(&Partitioning, WallClock, Cgroups) -> anyhow::Result<Box<dyn Printer + Send>>;

/// `--output-dir DIR`: Hive-style partitions under `dir`, part files of about
/// `max_file_size` bytes (see [`parquet::partitioned`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partitioning {
    pub dir: PathBuf,
    pub max_file_size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl,
    Csv,
    Parquet,
    ChromeTrace,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Text,
        Format::Jsonl,
        Format::Csv,
        Format::Parquet,
        Format::ChromeTrace,
    ];

    pub fn spec(self) -> &'static Spec {
        match self {
            Format::Text => &text::SPEC,
            Format::Jsonl => &jsonl::SPEC,
            Format::Csv => &csv::SPEC,
            Format::Parquet => &parquet::SPEC,
            Format::ChromeTrace => &chrome_trace::SPEC,
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.spec().name == name)
    }

    /// A printer of this format writing to `out`, times of day from `clock`, owners'
    /// cgroups named from `cgroups`.
    pub fn printer(self, out: Out, clock: WallClock, cgroups: Cgroups) -> Box<dyn Printer + Send> {
        (self.spec().printer)(out, clock, cgroups)
    }
}

/// `out` with the buffer every printer writes through.
pub fn buffered(out: Box<dyn Write + Send>) -> Out {
    BufWriter::with_capacity(1 << 16, out)
}

/// Where output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// `--output FILE`.
    File(PathBuf),
    /// `--output-dir DIR`.
    Partitions(Partitioning),
}

/// What is written, and where: `--output FILE`, standard output, or (`export`) a directory
/// of partitions.
#[derive(Clone, Debug)]
pub struct Destination {
    pub format: Format,
    pub target: Target,
    /// Replace an existing file (see [`file::create`]).
    pub force: bool,
}

impl Destination {
    /// Refuses, before anything is traced or read, what cannot be written: a binary file
    /// is not something for a terminal or a pipe; only some formats make partitions.
    pub fn check(&self) -> anyhow::Result<()> {
        let spec = self.format.spec();
        match &self.target {
            Target::Stdout if spec.binary => anyhow::bail!(
                "--format {} writes a binary file: name it with --output FILE",
                spec.name
            ),
            Target::Partitions(_) if spec.partitioned.is_none() => anyhow::bail!(
                "--output-dir writes Parquet partitions: use --format parquet with it, or \
                 --output FILE for --format {}",
                spec.name
            ),
            _ => Ok(()),
        }
    }

    /// Standard output (a terminal, a pipe) is where it goes.
    pub fn to_stdout(&self) -> bool {
        self.target == Target::Stdout
    }

    /// A printer writing there, and the file it created, if it did.
    pub fn open(
        &self,
        clock: WallClock,
        cgroups: Cgroups,
        run: &RunInfo,
    ) -> anyhow::Result<(Box<dyn Printer + Send>, Option<file::Created>)> {
        let (out, created): (Box<dyn Write + Send>, _) = match &self.target {
            Target::File(path) => {
                let f = file::create(path, self.force, "output file")?;
                let created = file::Created::of(path, &f);
                (Box::new(f), created)
            }
            Target::Stdout => (Box::new(io::stdout()), None),
            Target::Partitions(partitioning) => {
                self.check()?;
                let open = self.format.spec().partitioned.expect("checked");
                let mut printer = open(partitioning, clock, cgroups)?;
                printer.set_run(run);
                return Ok((printer, None));
            }
        };
        let mut printer = self.format.printer(buffered(out), clock, cgroups);
        printer.set_run(run);
        Ok((printer, created))
    }

    /// The outcome of writing, given its first error: the error named by where the output
    /// went; none when the reader went away (`| head`), to stop quietly.
    pub fn result(&self, error: Option<io::Error>) -> anyhow::Result<()> {
        match error {
            Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(e).context(match &self.target {
                    Target::File(path) => format!("writing to {}", path.display()),
                    Target::Stdout => "writing to standard output".to_string(),
                    Target::Partitions(p) => {
                        format!("writing Parquet partitions under {}", p.dir.display())
                    }
                }))
            }
            _ => Ok(()),
        }
    }
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

/// `s` as text output shows it: what a traced process controls (its name) can hold control
/// characters, which would move the cursor, clear the screen or start a forged line, and
/// bidirectional overrides, which reorder what the terminal shows. Those are written
/// escaped (`\n`, `\x1b`, `\u{202e}`); everything else as it is.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(hidden) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) && (c as u32) < 0x100 => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\x{:02x}", c as u32));
            }
            c if hidden(c) => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.into()
}

pub(crate) fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Origin, Task};
    use crate::lifetime::time;
    use crate::{event::Comm, testing::ends};

    #[test]
    fn jsonl_lifetime_has_the_schema_fields() {
        let owner = Task {
            pid: 9,
            comm: Comm::new("a\"b"),
            ..Default::default()
        };
        let lt = Lifetime {
            assigned: time(100),
            released: time(350),
            time_wait_start: time(300),
            alloc_ns: Some(42),
            ..Lifetime::new(ends(40000), owner, Origin::Connect, 0x10)
        };
        let mut p = jsonl::Jsonl::new(Vec::new(), WallClock { offset_ns: 0 });
        p.lifetime(&lt).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.into_inner()).unwrap();
        assert_eq!(v["type"], "lifetime");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["lport"], 40000);
        assert_eq!(v["comm"], "a\"b");
        assert_eq!(v["origin"], "connect");
        assert_eq!(v["duration_ns"], 250);
        assert_eq!(v["time_wait_ns"], 50);
        assert_eq!(v["alloc_ns"], 42);
    }

    #[test]
    fn open_lifetime_has_null_release() {
        let lt = Lifetime {
            assigned: time(1),
            lossy: true,
            ..Lifetime::new(ends(1), Task::default(), Origin::Bind, 1)
        };
        let mut p = jsonl::Jsonl::new(Vec::new(), WallClock { offset_ns: 0 });
        p.lifetime(&lt).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.into_inner()).unwrap();
        assert!(v["released_ns"].is_null());
        assert!(v["duration_ns"].is_null());
        assert!(v["alloc_ns"].is_null(), "a field, null when not measured");
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
            stats.observe(OutputRef::Lifetime(&lt), None);
        }
        let span = Span {
            start_ns: 100,
            end_ns: 2_000,
        };
        let summary = Summary::new(&stats, &Counters::default(), Lost::default(), span, 10);
        let mut text = Vec::new();
        summary_text::write(&mut text, &summary, &WallClock { offset_ns: 0 }).unwrap();
        let text = String::from_utf8(text).unwrap();
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
    fn text_summary_shows_allocator_time_by_how_full_the_range_was() {
        use crate::{
            analysis::Span,
            event::{Event, Kind},
            lifetime::Counters,
            port_range::PortRange,
            summary::{Lost, Stats, Summary},
        };
        let mut stats = Stats::new(0);
        stats.analysis.set_range(PortRange {
            netns: 7,
            low: 40000,
            high: 40001,
            reserved: String::new(),
        });
        // Two connects to one destination: the second searched a range half used.
        for (i, ns) in [(0u16, 900u32), (1, 40_000)] {
            stats.observe(
                OutputRef::Event(&Event {
                    origin: Origin::Connect,
                    alloc_ns: Some(ns),
                    ..crate::testing::event(
                        Kind::Assign,
                        u64::from(i) + 1,
                        u64::from(i) + 1,
                        40000 + i,
                    )
                }),
                None,
            );
        }
        let summary = Summary::new(
            &stats,
            &Counters::default(),
            Lost::default(),
            Span::default(),
            10,
        );
        let mut text = Vec::new();
        summary_text::write(&mut text, &summary, &WallClock { offset_ns: 0 }).unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in [
            // Quantiles are the middles of buckets an eighth of an octave wide.
            "  tcp connect 2 timed: median 928ns, p99 38.9us, max 40.0us",
            "    range under 50% full   1 timed: median 900ns, p99 900ns, max 900ns",
            "    range 50-90% full      1 timed: median 38.9us, p99 38.9us, max 40.0us",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn a_tier_blind_to_bind_failures_says_so_in_the_summary() {
        use crate::{
            analysis::{failures::bind_failures_unseen, Span},
            lifetime::Counters,
            summary::{Lost, Stats, Summary},
        };
        assert_eq!(
            bind_failures_unseen(Some(&port_tracer_common::tiers::FENTRY)),
            None
        );
        assert_eq!(
            bind_failures_unseen(Some(&port_tracer_common::tiers::TRACEPOINT)),
            None
        );
        let why = bind_failures_unseen(Some(&port_tracer_common::tiers::CGROUP)).unwrap();
        let mut summary = Summary::new(
            &Stats::new(0),
            &Counters::default(),
            Lost::default(),
            Span::default(),
            10,
        );
        summary.analysis.failures.bind_failures_unseen = Some(why.clone());
        let mut text = Vec::new();
        summary_text::write(&mut text, &summary, &WallClock { offset_ns: 0 }).unwrap();
        let text = String::from_utf8(text).unwrap();
        let line = format!("Failed bind() calls: not traced: {why}");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        let json = serde_json::to_value(&summary.analysis.failures).unwrap();
        assert_eq!(json["bind_failures_unseen"], why.as_str());
    }

    #[test]
    fn text_summary_names_containers_and_units_at_the_peak_in_failures_and_anti_patterns() {
        use crate::{
            analysis::Span,
            cgroups::{Cgroups, Entry, Lookup, RuntimeNames},
            event::{Endpoints, Event, Kind},
            lifetime::Counters,
            port_range::PortRange,
            summary::{Lost, Stats, Summary},
        };
        let id = "4f1c8d0e9b2a".repeat(5) + "abcd";
        let cgroups = Cgroups::recorded();
        cgroups.insert(Entry {
            id: 5,
            path: format!(
                "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
                "1234abcd-0000-1111-2222-333344445555"
            ),
            runtime: RuntimeNames {
                container_name: Some("web\x1b[2J".into()),
                pod_name: Some("web-0".into()),
                pod_namespace: Some("shop".into()),
            },
        });
        cgroups.insert(Entry {
            id: 6,
            path: "/system.slice/cron\n.service".into(),
            runtime: RuntimeNames::default(),
        });
        cgroups.note(5);
        cgroups.note(6);
        let mut stats = Stats::new(0);
        stats.analysis.set_range(PortRange {
            netns: 7,
            low: 40000,
            high: 40009,
            reserved: String::new(),
        });
        let task = |pid, cgroup_id| Task {
            pid,
            cgroup_id,
            comm: Comm::new("app"),
            ..Task::default()
        };
        let mut opened = Vec::new();
        for (i, cgroup) in [5u64, 5, 6].into_iter().enumerate() {
            let i = i as u16;
            let ev = Event {
                origin: Origin::Connect,
                task: task(u32::from(i) + 1, cgroup),
                ..crate::testing::event(Kind::Assign, u64::from(i) + 1, u64::from(i) + 1, 40000 + i)
            };
            stats.observe(OutputRef::Event(&ev), None);
            opened.push(ev);
        }
        // A bind() refused the unit's port; its process binds before it connects.
        let refused = Event {
            errno: 98,
            task: task(1, 5),
            ends: Endpoints {
                rport: 0,
                ..ends(40002)
            },
            ..crate::testing::event(Kind::AllocFailure, 4, 9, 40002)
        };
        stats.observe(OutputRef::Event(&refused), None);
        for ev in &opened {
            let mut lt = Lifetime::new(ev.ends, ev.task, ev.origin, ev.sock_id);
            lt.assigned = time(ev.ts_ns);
            lt.released = time(10);
            stats.observe(OutputRef::Lifetime(&lt), None);
        }
        let mut bound_first = Lifetime::new(ends(40005), task(3, 6), Origin::BindEphemeral, 99);
        (bound_first.assigned, bound_first.released) = (time(11), time(12));
        stats.observe(OutputRef::Lifetime(&bound_first), None);
        let mut summary = Summary::new(
            &stats,
            &Counters::default(),
            Lost::default(),
            Span {
                start_ns: 0,
                end_ns: 20,
            },
            10,
        );
        summary
            .analysis
            .name_containers(&mut Lookup::new(cgroups), 10);
        let mut text = Vec::new();
        summary_text::write(&mut text, &summary, &WallClock { offset_ns: 0 }).unwrap();
        let text = String::from_utf8(text).unwrap();
        let container = "container 4f1c8d0e9b2a web\\x1b[2J (pod shop/web-0)";
        let unit = "unit cron\\n.service";
        for line in [
            format!("    containers and units at the peak: 2 {container}, 1 {unit}"),
            format!("    containers and units then: 2 {container}, 1 {unit}"),
            format!("  by container and unit: 1 {container}"),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(
            text.contains("held by: pid 3 (app) in unit cron\\n.service connected (by connect)"),
            "{text}"
        );
        assert!(
            text.contains("bind_before_connect pid 3 (app) in unit cron\\n.service: 1 sockets"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn names_with_control_characters_stay_on_one_line() {
        assert_eq!(printable("storm"), "storm");
        assert_eq!(
            printable("\u{1b}[2J\nFAKE\tx\u{7f}"),
            "\\x1b[2J\\nFAKE\\tx\\x7f"
        );
        assert_eq!(printable("a\u{202e}b\u{85}"), "a\\u{202e}b\\x85");
        assert_eq!(printable("ünï"), "ünï");
        assert!(!printable("\r\n").contains(['\r', '\n']));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(999), "999ns");
        assert_eq!(human_duration(1_500), "1.5us");
        assert_eq!(human_duration(60_000_000_000), "60.00s");
        assert_eq!(human_duration(125_000_000_000), "2m05s");
    }
}
