//! Command line: flags become the library's plain configs ([`LiveConfig`], [`RecordConfig`],
//! [`ReportConfig`]) before it sees them.

use std::{
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    builder::{PossibleValue, PossibleValuesParser, TypedValueParser},
    CommandFactory, FromArgMatches, Parser,
};
use clap_complete::Shell;
use port_tracer::{
    event::Proto,
    filter::Filter,
    kernel::{LoadOptions, TierChoice},
    live::{
        record::RecordConfig,
        recorder::{RecordTarget, Rotation},
        LiveConfig,
    },
    output::{
        parquet::partitioned::DEFAULT_MAX_FILE_SIZE, Destination, Format, Partitioning, Target,
    },
    rebuild::RebuildConfig,
    replay::ReportConfig,
    top::{Grouping, Source, TopConfig},
    trace_file::Compression,
};

/// Trace every local port the kernel hands out and takes back (TCP and UDP, IPv4 and IPv6,
/// every network namespace) and rebuild each port's lifetime: who held it, how it was
/// obtained, from when to when, including TIME_WAIT.
///
/// Without a command: trace live until Ctrl-C, SIGTERM or --duration; then print the
/// lifetimes still open and a summary: events, lost events by reason, churn (allocations
/// per second by process, cgroup, netns, protocol, origin), ephemeral range occupancy
/// (peak ports held against the range, holders and TIME_WAIT share at the peak),
/// allocation failures, lifetime / TIME_WAIT / port reuse distributions and anti-patterns.
/// `record` writes the raw events to a trace file instead, `report` rebuilds lifetimes
/// and the same summary from one. Tracing needs root, or CAP_BPF and CAP_PERFMON (and for
/// the cgroup tier CAP_NET_ADMIN, for the tracepoint tier also CAP_DAC_READ_SEARCH); once
/// attached, it drops every capability it no longer needs (README, "Privileges").
#[derive(Parser, Debug, Clone)]
#[command(
    name = "port-tracer",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub live: Args,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Record the raw events to a binary trace file (the cheapest way to trace).
    ///
    /// The file also carries what analysis needs later: host, kernel, tier, clock mapping,
    /// the port range of every namespace seen, sockets held at start, lost counts. It is
    /// flushed every --drain-ms: after a crash it reads up to its last complete block.
    Record(RecordArgs),
    /// Rebuild lifetimes and the summary's analyses from a recorded trace.
    ///
    /// Same formats, filters and summary as live tracing: churn, range occupancy per
    /// namespace and address, allocation failures, distributions, anti-patterns. `--port N`
    /// gives the history of one port: every holder, when, for how long, TIME_WAIT
    /// included. A trace cut short or damaged is used up to its last complete block; the
    /// report then says where it stopped and how much it skipped, and exits with status 1.
    /// So does a trace without its end mark (the recorder was killed), reported whole.
    Report(ReportArgs),
    /// Convert a recorded trace's lifetimes for other tools (JSONL, CSV, Parquet, Chrome trace).
    ///
    /// `jsonl`: the live mode's records; `csv`: one row per lifetime with the JSONL field
    /// names as columns; `parquet`: the same rows and columns, typed (unsigned integers,
    /// UTF-8 strings, null where unknown), zstd-compressed, for DuckDB, pandas or Spark,
    /// e.g. `duckdb -c "select comm, count(*) from 'out.parquet' group by 1"` or pandas'
    /// `pd.read_parquet("out.parquet")`; `chrome-trace`:
    /// Trace Event Format JSON for the Perfetto UI (a track per port under its process, a
    /// slice per lifetime, TIME_WAIT inside it).
    ///
    /// A fleet's traces in one dataset: `--format parquet --output-dir DIR` writes
    /// Hive-style partitions, DIR/host=HOST/date=YYYY-MM-DD/part-N.parquet. HOST is --host
    /// or the host the trace recorded, characters a directory name cannot hold (`/`, `=`,
    /// `%`, control characters...) written %XX as Hive and Spark do (readers decode them);
    /// none recorded: `host=__HIVE_DEFAULT_PARTITION__`, which readers take as null. The
    /// date is the UTC day the lifetime started (held since before tracing started: the
    /// day tracing started). The rows keep their `host` column. A new part every
    /// --max-file-size; each is written under a hidden name (.part-N.parquet.tmp) and
    /// appears when the export ends, under a number no file there has: exports of other
    /// hosts (or of the same host later) add files, never replace one; a failed export
    /// leaves nothing. Read with DuckDB:
    /// `select host, count(*) from read_parquet('DIR/**/*.parquet', hive_partitioning = true) group by 1`;
    /// with Spark: `spark.read.option("basePath", DIR).parquet(DIR)` (with
    /// spark.sql.sources.partitionColumnTypeInference.enabled=false, or host `007` reads
    /// as the number 7).
    Export(ExportArgs),
    /// A full-screen view that refreshes: range occupancy, destinations closest to running
    /// out, churn by process, container or pod, the latest failures, TIME_WAIT, losses.
    ///
    /// Live by default (as root, as tracing is), or `--replay TRACE` to watch a recording
    /// again. Keys: `q` or Esc quits, `g` cycles the grouping (process, container, pod),
    /// `/` filters the churn rows by name (Enter keeps the filter, Esc drops it), `s`
    /// changes the sort (rate, total, name), arrows, PgUp and PgDn scroll. It needs a
    /// terminal on standard output; `--once --format json` prints one view for scripts.
    Top(TopArgs),
    /// Print the completion script of a shell for port-tracer.
    ///
    /// The Debian package installs bash's, zsh's and fish's already. Otherwise, for
    /// example: `port-tracer completions bash > /etc/bash_completion.d/port-tracer`,
    /// `port-tracer completions zsh > /usr/local/share/zsh/site-functions/_port-tracer`,
    /// `port-tracer completions fish > ~/.config/fish/completions/port-tracer.fish`.
    Completions(CompletionsArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete port-tracer in.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// The hidden command that writes the manual pages (`cargo xtask package` runs it). It is
/// added to the parser only, not to [`Cli`]: clap's completion generators offer hidden
/// commands too, and neither the completions nor the pages should.
const MAN_PAGES: &str = "man-pages";

/// What the command line asks for.
pub enum Invocation {
    Cli(Box<Cli>),
    /// Write the manual pages into this directory.
    ManPages(PathBuf),
}

/// Parses the process's arguments (exits with clap's message and status 2 on a bad one).
pub fn parse() -> Invocation {
    let man_pages = clap::Command::new(MAN_PAGES)
        .hide(true)
        .about("Write the manual pages (roff) into DIR, which must exist")
        .arg(
            clap::Arg::new("dir")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf)),
        );
    let matches = command().subcommand(man_pages).get_matches();
    if let Some((MAN_PAGES, m)) = matches.subcommand() {
        let dir = m.get_one::<PathBuf>("dir").expect("required").clone();
        return Invocation::ManPages(dir);
    }
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => Invocation::Cli(Box::new(cli)),
        Err(e) => e.exit(),
    }
}

/// The command line as clap describes it: what --help, the completions and the manual
/// pages are made from.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Writes `shell`'s completion script to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut command(), "port-tracer", out);
}

/// The manual pages: file name (`port-tracer.1`, `port-tracer-record.1`, ...) and roff text,
/// the program's first. Each command's page is what its --help says, with SEE ALSO
/// pointing to the others; the program's also names the files the Debian package installs.
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut root = command().disable_help_subcommand(true);
    root.build();
    let subs: Vec<clap::Command> = root
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    let names: Vec<String> = subs
        .iter()
        .map(|c| format!("port-tracer-{}", c.get_name()))
        .collect();
    let mut pages = Vec::new();
    let mut main = Vec::new();
    clap_mangen::Man::new(root).render(&mut main)?;
    let mut see_also: Vec<String> = names.iter().map(|n| format!("{n}(1)")).collect();
    see_also.extend(["systemctl(1)", "ss(8)"].map(String::from));
    main.extend_from_slice(MAN_FILES.as_bytes());
    main.extend_from_slice(see_also_section(&see_also).as_bytes());
    pages.push(("port-tracer.1".to_string(), main));
    for (sub, name) in subs.into_iter().zip(&names) {
        let mut page = Vec::new();
        clap_mangen::Man::new(sub)
            .source(format!("port-tracer {}", env!("CARGO_PKG_VERSION")))
            .render(&mut page)?;
        let others = std::iter::once("port-tracer(1)".to_string()).chain(
            names
                .iter()
                .filter(|n| *n != name)
                .map(|n| format!("{n}(1)")),
        );
        page.extend_from_slice(see_also_section(&others.collect::<Vec<_>>()).as_bytes());
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// What the Debian package installs besides the program, in port-tracer(1).
const MAN_FILES: &str = r#".SH FILES
.TP
\fI/lib/systemd/system/port\-tracer.service\fR
The systemd unit: live tracing as the Prometheus metrics exporter (127.0.0.1:9464) with the flight recorder. Not enabled on install: \fBsystemctl enable \-\-now port\-tracer\fR.
.TP
\fI/var/lib/port\-tracer/flight\fR
The flight recorder's ring of trace files (the unit's state directory, mode 0700); read one with \fBport\-tracer report\fR.
.SH EXIT STATUS
0 when tracing or the command ended normally (a closed pipe included); 1 on an error, named in one line on standard error; 2 for a command line it cannot parse.
"#;

/// A SEE ALSO section naming `pages` (`name(section)`).
fn see_also_section(pages: &[String]) -> String {
    let refs: Vec<String> = pages
        .iter()
        .map(|p| {
            let (name, section) = p.split_once('(').expect("name(section)");
            format!("\\fB{}\\fR({section}", name.replace('-', "\\-"))
        })
        .collect();
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", "))
}

/// Writes [`man_pages`] into `dir` and prints their names.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    for (name, text) in man_pages().context("rendering the manual pages")? {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    /// Refresh every this many seconds (`0.5`, `2`, or with a unit: `500ms`).
    #[arg(short = 'd', long = "delay", value_name = "SECONDS", value_parser = parse_duration, default_value = "1")]
    pub delay: Duration,

    /// Group churn by this at start (`g` cycles).
    #[arg(long, value_enum, default_value = "process")]
    pub group: Grouping,

    /// Print one view and exit: live, after one refresh (-d); with --replay, at the
    /// trace's end. Needs no terminal.
    #[arg(long)]
    pub once: bool,

    /// What --once prints.
    #[arg(long, value_enum, default_value = "json", requires = "once")]
    pub format: OnceFormat,

    /// Play a trace written by `port-tracer record` instead of tracing (no root needed).
    #[arg(long, value_name = "TRACE")]
    pub replay: Option<PathBuf>,

    /// With --replay: trace seconds played per second (`1`: as recorded, `10`: ten times
    /// faster).
    #[arg(long, value_name = "FACTOR", default_value = "1", requires = "replay", value_parser = parse_speed)]
    pub speed: f64,

    /// With --replay: as fast as the trace reads, not paced.
    #[arg(long, requires = "replay", conflicts_with = "speed")]
    pub full_speed: bool,

    #[command(flatten)]
    pub select: SelectArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,

    #[command(flatten)]
    pub rebuild: RebuildArgs,
}

/// What `top --once` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnceFormat {
    /// One JSON object: the view, and churn by process, container and pod.
    Json,
}

/// A replay speed: a positive factor.
fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!(
            "`{s}` is not a speed: a positive factor (1: as recorded)"
        )),
    }
}

impl TopArgs {
    pub fn config(self) -> TopConfig {
        let rebuild = self.rebuild.config(self.select.filter());
        let source = match self.replay {
            Some(trace) => Source::Replay {
                trace,
                speed: (!self.full_speed).then_some(self.speed),
                rebuild,
            },
            None => Source::Live(Box::new(LiveConfig {
                output: Destination {
                    format: Format::Text,
                    target: Target::Stdout,
                    force: false,
                },
                load: self.kernel.load_options(),
                drain: self.kernel.drain(),
                runtime_state: self.kernel.runtime_state.clone(),
                rebuild,
                duration: None,
                output_buffer: None,
                metrics: None,
                metrics_by_container: false,
                backlog_bytes: None,
                host: None,
                record: None,
            })),
        };
        TopConfig {
            source,
            refresh: self.delay,
            grouping: self.group,
            once: self.once,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// A trace written by `port-tracer record`; or the files of one recording kept with
    /// --rotate (several paths, or their directory), read as one trace in order.
    #[arg(value_name = "TRACE", required = true, num_args = 1..)]
    pub traces: Vec<PathBuf>,

    /// What to write.
    #[arg(long, value_parser = formats(|f| f.spec().for_tools))]
    pub format: Format,

    /// The file to write: created anew, mode 0600; an existing file is refused (see
    /// --force), a symbolic link never followed.
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "output_dir"
    )]
    pub output: Option<PathBuf>,

    /// Replace FILE if it exists (it is removed and created anew, never written into).
    #[arg(long)]
    pub force: bool,

    /// With --format parquet: write Hive-style partitions under DIR instead of one file,
    /// DIR/host=HOST/date=YYYY-MM-DD/part-N.parquet, adding to what other exports wrote
    /// there (see above). DIR is made (mode 0700) if missing; what is made under it is
    /// private (0700, 0600) unless DIR has its set-group-id bit (`chgrp GROUP DIR; chmod
    /// 2750 DIR`): then its group may read it. Symbolic links are never followed.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["output", "force"])]
    pub output_dir: Option<PathBuf>,

    /// With --output-dir: start a new part once one reaches about this size (`64M`, `1G`,
    /// or bytes; default 128M), estimated from the compression seen so far.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "output_dir", conflicts_with = "output")]
    pub max_file_size: Option<usize>,

    /// The `host` of every row (and the partition's, with --output-dir) instead of the
    /// hostname the trace recorded.
    #[arg(long, value_name = "NAME", value_parser = parse_host)]
    pub host: Option<String>,

    #[command(flatten)]
    pub select: SelectArgs,

    #[command(flatten)]
    pub rebuild: RebuildArgs,
}

/// A host name for the `host` field: letters, digits, `.`, `-` and `_` (what hostnames and
/// FQDNs hold; a partition directory `host=NAME` takes it as it is).
fn parse_host(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err(format!(
            "`{s}` is not a host name: 1 to 253 letters, digits, `.`, `-` or `_`"
        ));
    }
    Ok(s.to_string())
}

impl ExportArgs {
    /// The report that writes this export: the lifetimes selected, in the chosen format.
    pub fn config(self) -> ReportConfig {
        let target = match (self.output_dir, self.output) {
            (Some(dir), _) => Target::Partitions(Partitioning {
                dir,
                max_file_size: self
                    .max_file_size
                    .map_or(DEFAULT_MAX_FILE_SIZE, |n| n as u64),
            }),
            (None, Some(path)) => Target::File(path),
            // clap requires one of the two.
            (None, None) => Target::Stdout,
        };
        ReportConfig {
            traces: self.traces,
            output: Destination {
                format: self.format,
                target,
                force: self.force,
            },
            rebuild: self.rebuild.config(self.select.filter()),
            host: self.host,
        }
    }
}

/// Live tracing (no command).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub view: ViewArgs,

    /// Stop after this long: seconds (`20`) or with a unit (`500ms`, `10s`, `2m`, `1h`).
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Let at most this many records wait for a slow output (a terminal, a pipe) before
    /// dropping them; the drops are counted (output_dropped) and the summary stays exact.
    /// Tracing never waits for the output. Default: 16384 on a terminal, 262144 otherwise
    /// (about 40 MB).
    #[arg(long, value_name = "RECORDS")]
    pub output_buffer: Option<usize>,

    /// Let at most this many bytes of kernel records wait between draining the ring buffer
    /// and rebuilding lifetimes (`256M`, `1G`, or bytes). Draining only copies records
    /// out, so a burst that rebuilding cannot keep up with waits here, taking memory only
    /// while it does, and is rebuilt after it; only a full backlog drops records, counted
    /// as lost (backlog_full). Default: 256M, or a quarter of the memory available at
    /// start if that is less.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub backlog_size: Option<usize>,

    /// Serve Prometheus metrics at http://ADDR/metrics while tracing (IP:PORT, e.g.
    /// 127.0.0.1:9464; port 0 picks a free one). They count what the filters show. The
    /// endpoint has no authentication: keep it on loopback or behind a firewall.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Labels the metrics take beyond the default ones, comma-separated. `container`:
    /// allocations also by the owner's container (12 hex digits, as `docker ps` prints
    /// it), or its systemd unit on the host, "" for others: one series per container,
    /// protocol and origin, so the operator chooses the cardinality.
    #[arg(long, value_name = "LABELS", value_enum, value_delimiter = ',')]
    pub metrics_labels: Vec<MetricsLabel>,

    /// Also record the raw events to a trace, as `record -o PATH` would (with --rotate,
    /// PATH is the directory of a ring of trace files): `report` of it later gives this
    /// run's lifetimes again. Every event is recorded; the filters apply to what is shown.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,

    #[command(flatten)]
    pub ring: RingArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,

    #[command(flatten)]
    pub rebuild: RebuildArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    /// The trace file to write: created anew, mode 0600; an existing file is refused (see
    /// --force), a symbolic link never followed. With --rotate, the directory of the
    /// trace files (created, mode 0700, if missing).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,

    /// Replace FILE if it exists (it is removed and created anew, never written into).
    #[arg(long, conflicts_with = "rotate")]
    pub force: bool,

    #[command(flatten)]
    pub ring: RingArgs,

    /// Stop after this long: seconds (`20`) or with a unit (`500ms`, `10s`, `2m`, `1h`).
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// The host's name to store in the trace (its rows' `host`), instead of its hostname.
    #[arg(long, value_name = "NAME", value_parser = parse_host)]
    pub host: Option<String>,

    /// Record only matching sockets (`report` filters by process too).
    #[command(flatten)]
    pub sockets: SocketFilterArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// How a recording is kept on disk.
#[derive(clap::Args, Debug, Clone)]
pub struct RingArgs {
    /// Flight recorder: write a ring of trace files in a directory (`record --output DIR`,
    /// `--record DIR`), a new file once the current one holds SIZE bytes (`64M`, `1G`, or bytes), named
    /// `trace-<start, UTC>-<number>.ptrace`; each file reads alone, and `report DIR` reads
    /// them all as one trace. As `tcpdump -C`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rotate: Option<usize>,

    /// With --rotate: keep at most N trace files in the directory (of any recording made
    /// there), removing the oldest. As `tcpdump -W`.
    #[arg(long, value_name = "N", requires = "rotate", default_value_t = 10)]
    pub keep: usize,

    /// How trace blocks are stored: `zstd` (about 7x smaller, the default) or `none`
    /// (uncompressed, as trace format versions before 6 stored every block; for
    /// comparison).
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionArg {
    Zstd,
    None,
}

impl RingArgs {
    fn target(&self, path: PathBuf, force: bool) -> RecordTarget {
        RecordTarget {
            path,
            force,
            rotate: self.rotate.map(|size| Rotation {
                size: size as u64,
                keep: self.keep,
            }),
            compression: match self.compression {
                CompressionArg::Zstd => Compression::DEFAULT,
                CompressionArg::None => Compression::None,
            },
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// A trace written by `port-tracer record`; or the files of one recording kept with
    /// --rotate (several paths, or their directory), read as one trace in order.
    #[arg(value_name = "TRACE", required = true, num_args = 1..)]
    pub traces: Vec<PathBuf>,

    #[command(flatten)]
    pub view: ViewArgs,

    #[command(flatten)]
    pub rebuild: RebuildArgs,
}

/// What is shown, and where.
#[derive(clap::Args, Debug, Clone)]
pub struct ViewArgs {
    /// Output format: `text` (aligned columns), `jsonl` (JSON Lines, schema in README), or a
    /// table of lifetimes for other tools (`parquet` needs --output).
    #[arg(long, value_parser = formats(|_| true), default_value = "text")]
    pub format: Format,

    /// Write to FILE instead of standard output: created anew, mode 0600; an existing file
    /// is refused (see --force), a symbolic link never followed. A character device or a
    /// FIFO (/dev/null, mkfifo) is written as it is.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Replace FILE if it exists (it is removed and created anew, never written into).
    #[arg(long)]
    pub force: bool,

    /// The `host` of lifetime rows (JSONL, CSV, Parquet) instead of the hostname (live)
    /// or the one the trace recorded (`report`).
    #[arg(long, value_name = "NAME", value_parser = parse_host)]
    pub host: Option<String>,

    #[command(flatten)]
    pub select: SelectArgs,
}

/// Which sockets are shown: by their owner, and by what every event of a socket carries.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SelectArgs {
    /// Show only sockets owned by this process id.
    #[arg(long)]
    pub pid: Option<u32>,

    /// Show only sockets owned by a process of this name (exact, as `ps` and
    /// /proc/PID/comm show it: the thread group leader's name, not a thread's own).
    #[arg(long)]
    pub comm: Option<String>,

    /// Show only sockets owned by a process in this container: its id or a prefix of it
    /// (12 hex digits, as `docker ps` prints it). Named from the owner's cgroup (see
    /// README, "Containers, pods and units").
    #[arg(long, value_name = "ID", value_parser = parse_container_id)]
    pub container: Option<String>,

    /// Show only sockets owned by a process in this Kubernetes pod: its uid
    /// (`kubectl get pod NAME -o jsonpath='{.metadata.uid}'`), or its name or
    /// `NAMESPACE/NAME` where the runtime's state names it (containerd, cri-o).
    #[arg(long, value_name = "UID|NAME", value_parser = parse_pod)]
    pub pod: Option<String>,

    /// Show only sockets owned by a process in this cgroup or one below it: its cgroup v2
    /// path as /proc/PID/cgroup shows it (`/system.slice`, `/kubepods.slice`).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup_path)]
    pub cgroup: Option<String>,

    #[command(flatten)]
    pub sockets: SocketFilterArgs,
}

/// A container id or a prefix of one: hex digits, as runtimes print them.
fn parse_container_id(s: &str) -> Result<String, String> {
    let id = s.to_ascii_lowercase();
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{s}` is not a container id: hex digits, as `docker ps` or `crictl ps` print them"
        ));
    }
    Ok(id)
}

/// A pod uid, with dashes (underscores, as in systemd slice names, are taken too); or a
/// pod's name, or `namespace/name` (Kubernetes names: lowercase letters, digits, `-`, `.`).
fn parse_pod(s: &str) -> Result<String, String> {
    let uid = s.to_ascii_lowercase().replace('_', "-");
    let b = uid.as_bytes();
    let uid_shaped = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if uid_shaped {
        return Ok(uid);
    }
    let name = |n: &str| {
        !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    };
    let named = match s.split_once('/') {
        Some((ns, n)) => name(ns) && name(n),
        None => name(s),
    };
    if !named {
        return Err(format!(
            "`{s}` is not a pod uid (8-4-4-4-12 hex digits, as `kubectl get pod NAME -o \
             jsonpath='{{.metadata.uid}}'` prints it), a pod name or NAMESPACE/NAME"
        ));
    }
    Ok(s.to_string())
}

/// A cgroup v2 path, `/` first.
fn parse_cgroup_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "`{s}` is not a cgroup path: it starts with `/`, as in /proc/PID/cgroup"
        ));
    }
    Ok(s.to_string())
}

/// Which sockets are kept, by what every event of a socket carries (unlike its process:
/// the kernel often reports releases from interrupt context).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SocketFilterArgs {
    /// Only this local port or range of ports (`8080`, `32768-60999`).
    #[arg(long, value_name = "PORT|LO-HI", value_parser = parse_port_range)]
    pub port: Option<(u16, u16)>,

    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<ProtoArg>,

    /// Only this network namespace (its inode number, as in `ls -l /proc/PID/ns/net`). One
    /// that no process uses at start is warned about (it may appear later).
    #[arg(long, value_name = "INODE", value_parser = clap::value_parser!(u32).range(1..))]
    pub netns: Option<u32>,
}

impl SocketFilterArgs {
    /// The filter these select, or None when they select everything.
    pub fn filter(&self) -> Option<Filter> {
        let f = Filter {
            ports: self.port,
            proto: self.proto.map(Into::into),
            netns: self.netns,
            ..Filter::default()
        };
        (self.port.is_some() || self.proto.is_some() || self.netns.is_some()).then_some(f)
    }
}

impl ViewArgs {
    pub fn destination(&self) -> Destination {
        Destination {
            format: self.format,
            target: self.output.clone().map_or(Target::Stdout, Target::File),
            force: self.force,
        }
    }

    /// What is shown.
    pub fn filter(&self) -> Filter {
        self.select.filter()
    }
}

impl SelectArgs {
    /// What is shown: the owners and the sockets asked for.
    pub fn filter(&self) -> Filter {
        Filter {
            pid: self.pid,
            comm: self.comm.clone(),
            container: self.container.clone(),
            pod: self.pod.clone(),
            cgroup: self.cgroup.clone(),
            ..self.sockets.filter().unwrap_or_default()
        }
    }
}

impl Args {
    pub fn config(self) -> LiveConfig {
        LiveConfig {
            output: self.view.destination(),
            load: self.kernel.load_options(),
            drain: self.kernel.drain(),
            runtime_state: self.kernel.runtime_state.clone(),
            rebuild: self.rebuild.config(self.view.filter()),
            duration: self.duration,
            output_buffer: self.output_buffer,
            metrics: self.metrics,
            metrics_by_container: self.metrics_labels.contains(&MetricsLabel::Container),
            backlog_bytes: self.backlog_size,
            host: self.view.host.clone(),
            record: self.record.map(|path| self.ring.target(path, false)),
        }
    }
}

impl RecordArgs {
    pub fn config(self) -> RecordConfig {
        RecordConfig {
            target: self.ring.target(self.output, self.force),
            keep: self.sockets.filter(),
            load: self.kernel.load_options(),
            drain: self.kernel.drain(),
            runtime_state: self.kernel.runtime_state,
            duration: self.duration,
            host: self.host,
        }
    }
}

impl ReportArgs {
    pub fn config(self) -> ReportConfig {
        ReportConfig {
            output: self.view.destination(),
            rebuild: self.rebuild.config(self.view.filter()),
            host: self.view.host.clone(),
            traces: self.traces,
        }
    }
}

impl KernelArgs {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            tier: self.attach,
            ring_bytes: self.ring_size,
            wakeup_bytes: self.wakeup_bytes,
        }
    }

    fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

impl RebuildArgs {
    fn config(&self, filter: Filter) -> RebuildConfig {
        RebuildConfig {
            reorder_delay_ns: self.reorder_ms.saturating_mul(1_000_000),
            max_open: self.max_lifetimes,
            filter,
            ..RebuildConfig::default()
        }
    }
}

/// `--format`: the formats `keep` accepts, by name, each with its line of help.
fn formats(keep: fn(Format) -> bool) -> impl TypedValueParser<Value = Format> {
    let values = Format::ALL
        .into_iter()
        .filter(|&f| keep(f))
        .map(|f| PossibleValue::new(f.spec().name).help(f.spec().help));
    PossibleValuesParser::new(values).map(|name| Format::from_name(&name).expect("a listed name"))
}

/// `--attach`: `auto` or a tier.
fn tiers() -> impl TypedValueParser<Value = TierChoice> {
    let values = TierChoice::all().map(|t| PossibleValue::new(t.name()).help(t.help()));
    PossibleValuesParser::new(values)
        .map(|name| TierChoice::from_name(&name).expect("a listed name"))
}

/// How the kernel side is set up.
#[derive(clap::Args, Debug, Clone)]
pub struct KernelArgs {
    /// How to hook the kernel: `auto` picks the best tier that loads and attaches.
    #[arg(long, value_parser = tiers(), default_value = "auto")]
    pub attach: TierChoice,

    /// Ring buffer size in bytes (power of two).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub ring_size: u32,

    /// Wake the reader once this many bytes wait in the ring buffer (it also drains every
    /// --drain-ms regardless). Each wakeup costs the traced CPU; the default (a quarter of
    /// the default ring) leaves draining to the timer below about 200 MB/s of events.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub wakeup_bytes: u64,

    /// Drain the ring buffer at least this often, in milliseconds.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub drain_ms: u64,

    /// Where the container runtimes keep their state (containerd's and cri-o's bundles
    /// under run/, docker's under var/lib/docker/), for containers' and pods' names: the
    /// host's root, or where it is mounted when port-tracer runs in a container (`/host`).
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub runtime_state: PathBuf,
}

/// How lifetimes are rebuilt from events.
#[derive(clap::Args, Debug, Clone)]
pub struct RebuildArgs {
    /// Hold events this long (ms) to put events from different CPUs back in order.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub reorder_ms: u64,

    /// Keep at most this many lifetimes open (about 180 bytes each, the analyses' included).
    /// When full, the oldest sixteenth is emitted still open, marked lossy, and counted as
    /// evicted in the summary.
    #[arg(long, default_value_t = port_tracer::lifetime::DEFAULT_MAX_OPEN, value_name = "N")]
    pub max_lifetimes: usize,
}

/// Optional metrics labels (`--metrics-labels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsLabel {
    Container,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Proto {
        match p {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

/// "20" (seconds), "500ms", "10s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{s}`: expected e.g. 20, 10s, 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit `{unit}`: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("invalid duration `{s}`: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A size in bytes: "1048576", "64K", "256M", "1G" (powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size `{s}`: expected bytes, or a number with K, M or G"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size `{s}`: too large"))?;
    if bytes == 0 {
        return Err(format!("invalid size `{s}`: must be positive"));
    }
    Ok(bytes)
}

/// "8080" or "32768-60999".
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("invalid port `{p}`: expected 0-65535"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("invalid port range `{s}`: {lo} > {hi}"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10x").unwrap_err().contains("unit"));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").unwrap_err().contains("invalid size"));
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_port_range("1-2").unwrap(), (1, 2));
        assert!(parse_port_range("2-1").is_err());
        assert!(parse_port_range("70000").is_err());
    }

    #[test]
    fn unknown_flag_values_are_refused() {
        let e = Cli::try_parse_from(["port-tracer", "--format", "xml"]).unwrap_err();
        assert!(e.to_string().contains("xml"));
        let e = Cli::try_parse_from(["port-tracer", "--attach", "magic"]).unwrap_err();
        assert!(e.to_string().contains("magic"));
        // No namespace has inode 0.
        let e = Cli::try_parse_from(["port-tracer", "--netns", "0"]).unwrap_err();
        assert!(e.to_string().contains("--netns"), "{e}");
        assert!(Cli::try_parse_from(["port-tracer", "--netns", "4026531840"]).is_ok());
        let e = Cli::try_parse_from(["port-tracer", "record"]).unwrap_err();
        assert!(e.to_string().contains("--output"), "{e}");
    }

    #[test]
    fn commands_and_live_options() {
        let c = Cli::try_parse_from(["port-tracer", "--port", "80", "-d", "2s"]).unwrap();
        assert!(c.cmd.is_none());
        assert_eq!(c.live.view.select.sockets.port, Some((80, 80)));
        let c =
            Cli::try_parse_from(["port-tracer", "record", "-o", "t.ptrace", "-d", "5"]).unwrap();
        assert!(
            matches!(c.cmd, Some(Cmd::Record(r)) if r.duration == Some(Duration::from_secs(5)))
        );
        let c = Cli::try_parse_from(["port-tracer", "report", "t.ptrace", "--format", "jsonl"])
            .unwrap();
        assert!(matches!(c.cmd, Some(Cmd::Report(r)) if r.view.format == Format::Jsonl));
    }

    fn completion(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Each shell's script names the commands and the flags, and hides the hidden command.
    #[test]
    fn completions_name_the_commands_and_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = completion(shell);
            for word in [
                "record",
                "report",
                "export",
                "top",
                "completions",
                "--format",
                "--duration",
                "--metrics",
                "--attach",
                "jsonl",
            ] {
                // fish names a long flag `-l format`.
                let flag = match word.strip_prefix("--") {
                    Some(long) if shell == Shell::Fish => format!("-l {long}"),
                    _ => word.to_string(),
                };
                assert!(text.contains(&flag), "{shell} completion lacks {flag}");
            }
            assert!(
                !text.contains("man-pages"),
                "{shell} completes a hidden command"
            );
        }
        assert!(completion(Shell::Bash).contains("complete -F _port__tracer"));
        assert!(completion(Shell::Zsh).starts_with("#compdef port-tracer"));
        assert!(completion(Shell::Fish).contains("complete -c port-tracer"));
        let c = Cli::try_parse_from(["port-tracer", "completions", "zsh"]).unwrap();
        assert!(matches!(c.cmd, Some(Cmd::Completions(a)) if a.shell == Shell::Zsh));
        let e = Cli::try_parse_from(["port-tracer", "completions", "tcsh"]).unwrap_err();
        assert!(e.to_string().contains("tcsh"), "{e}");
    }

    /// One page per visible command, each a roff page with its options; the program's
    /// names the others.
    #[test]
    fn man_pages_render_every_command_and_its_options() {
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "port-tracer.1",
                "port-tracer-record.1",
                "port-tracer-report.1",
                "port-tracer-export.1",
                "port-tracer-top.1",
                "port-tracer-completions.1",
            ]
        );
        let text = |i: usize| String::from_utf8(pages[i].1.clone()).unwrap();
        let main = text(0);
        assert!(main.contains("\n.TH port-tracer 1 "), "{}", &main[..120]);
        for needle in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH SUBCOMMANDS",
            "port\\-tracer\\-record(1)",
            "\\-\\-metrics",
            "\\-\\-duration",
            ".SH FILES",
            "/var/lib/port\\-tracer/flight",
            ".SH \"SEE ALSO\"",
        ] {
            assert!(main.contains(needle), "port-tracer.1 lacks {needle}");
        }
        assert!(
            !main.contains("man\\-pages"),
            "the hidden command is documented"
        );
        let record = text(1);
        assert!(record.contains("\n.TH port-tracer-record 1 "));
        assert!(record.contains("\\-\\-output") && record.contains("port\\-tracer\\fR(1)"));
    }

    #[test]
    fn parquet_needs_an_output_file() {
        let c = Cli::try_parse_from(["port-tracer", "--format", "parquet"]).unwrap();
        let e = c.live.config().output.check().unwrap_err().to_string();
        assert!(e.contains("--output"), "{e}");
        let c =
            Cli::try_parse_from(["port-tracer", "--format", "parquet", "-o", "x.parquet"]).unwrap();
        assert!(c.live.config().output.check().is_ok());
        let c = Cli::try_parse_from(["port-tracer", "export", "t.ptrace", "--format", "parquet"])
            .unwrap_err();
        assert!(c.to_string().contains("--output"), "{c}");
        let c = Cli::try_parse_from([
            "port-tracer",
            "export",
            "t.ptrace",
            "--format",
            "parquet",
            "-o",
            "x.parquet",
        ])
        .unwrap();
        let Some(Cmd::Export(e)) = c.cmd else {
            panic!("an export")
        };
        assert_eq!(e.config().output.format, Format::Parquet);
        let c = Cli::try_parse_from(["port-tracer", "export", "t", "--format", "text", "-o", "x"]);
        assert!(c.unwrap_err().to_string().contains("text"));
    }

    #[test]
    fn export_writes_partitions_under_output_dir() {
        let export = |args: &[&str]| {
            let all = ["port-tracer", "export", "t.ptrace"].iter().chain(args);
            Cli::try_parse_from(all).map(|c| match c.cmd {
                Some(Cmd::Export(e)) => e.config().output,
                _ => panic!("an export"),
            })
        };
        let out = export(&["--format", "parquet", "--output-dir", "fleet"]).unwrap();
        assert_eq!(
            out.target,
            Target::Partitions(Partitioning {
                dir: "fleet".into(),
                max_file_size: 128 << 20,
            })
        );
        assert!(out.check().is_ok());
        let out = export(&[
            "--format",
            "parquet",
            "--output-dir",
            "fleet",
            "--max-file-size",
            "16K",
        ])
        .unwrap();
        assert!(matches!(out.target, Target::Partitions(p) if p.max_file_size == 16 << 10));
        // Other formats: refused in one line, before anything is read.
        for format in ["jsonl", "csv", "chrome-trace"] {
            let out = export(&["--format", format, "--output-dir", "fleet"]).unwrap();
            let e = out.check().unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "--output-dir writes Parquet partitions: use --format parquet with it, \
                     or --output FILE for --format {format}"
                )
            );
        }
        for (args, needle) in [
            (&["--output-dir", "d", "-o", "f"][..], "cannot be used with"),
            (&["--output-dir", "d", "--force"], "cannot be used with"),
            (&["-o", "f", "--max-file-size", "1M"], "cannot be used with"),
            (&["--max-file-size", "1M"], "--output"),
            (
                &["--output-dir", "d", "--max-file-size", "0"],
                "must be positive",
            ),
            (&[], "--output"),
        ] {
            let all: Vec<&str> = ["--format", "parquet"]
                .iter()
                .chain(args)
                .copied()
                .collect();
            let e = export(&all).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
