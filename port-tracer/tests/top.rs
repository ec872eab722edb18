//! `port-tracer top` as an operator meets it: in a terminal (tmux, 200x50), keys and all,
//! and `--once --format json` in a script; each against a real workload's sockets. Host
//! only (the VM guests have neither tmux nor Python).

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn tracer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_port-tracer"))
}

/// Names itself (argv[1]), opens a TCP listener and five connections to it, binds three
/// UDP sockets, all on loopback; prints the ports getsockname gave, and holds everything
/// until its stdin closes. Allocations: the listener's bind(0), five connects, three UDP
/// bind(0)s: 9; sockets holding ports: 14 (the five accepted ones share the listener's).
const WORKLOAD: &str = r#"
import ctypes, json, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(16)
pairs = []
for _ in range(5):
    c = socket.socket(); c.connect(l.getsockname()); a, _ = l.accept(); pairs.append((c, a))
udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
for u in udp:
    u.bind(("127.0.0.1", 0))
print(json.dumps({"listener": l.getsockname()[1],
                  "clients": [c.getsockname()[1] for c, _ in pairs],
                  "udp": [u.getsockname()[1] for u in udp]}), flush=True)
sys.stdin.read()
"#;

/// The workload, running and holding its sockets, with the ports it got.
struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    ports: Value,
}

impl Workload {
    fn start(comm: &str) -> Workload {
        let mut child = Command::new("python3")
            .args(["-c", WORKLOAD, comm])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the workload");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Value = serde_json::from_str(&line).expect("the workload's ports");
        Workload {
            stdin: child.stdin.take(),
            child,
            ports,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn top_without_a_terminal_refuses_in_one_line() {
    let out = tracer()
        .args(["top"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("standard output is not one"), "{stderr}");
    assert!(stderr.contains("--once --format json"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn top_once_json_counts_the_workload() {
    require_root!();
    let comm = format!("pt-once-{}", std::process::id() % 10000);
    let mut top = tracer()
        .args([
            "top", "--once", "--format", "json", "-d", "2", "--comm", &comm,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_until_tracing(&mut top);
    let work = Workload::start(&comm);
    let out = top.wait_with_output().unwrap();
    assert!(out.status.success());
    let view: Value = serde_json::from_slice(&out.stdout).expect("one JSON view");
    let owners = view["owners"].as_array().unwrap();
    assert_eq!(
        owners.len(),
        1,
        "only the workload passes --comm: {owners:?}"
    );
    assert_eq!(owners[0]["pid"], work.pid());
    assert_eq!(owners[0]["comm"], comm.as_str());
    assert_eq!(owners[0]["allocations"], 9);
    assert_eq!(view["allocations"], 9);
    // Held now: the listener, five connections each side, three UDP sockets.
    assert_eq!(view["sockets"], 14);
    assert_eq!(view["time_wait"], 0);
    let process = &view["churn"]["process"][0];
    assert_eq!(process["name"], format!("{} {comm}", work.pid()).as_str());
    assert_eq!(process["allocations"], 9);
    // The five connections towards the listener, and the ports the range lends them.
    let listener = work.ports["listener"].as_u64().unwrap();
    let dest = view["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["rport"] == listener)
        .unwrap_or_else(|| panic!("no destination :{listener} in {}", view["destinations"]));
    assert_eq!(dest["in_use"], 5);
    assert_eq!(dest["raddr"], "127.0.0.1");
    let range = |proto: &str| {
        view["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["proto"] == proto && r["laddr"] == "127.0.0.1")
            .unwrap_or_else(|| panic!("no {proto} range in {}", view["ranges"]))
            .clone()
    };
    // Distinct ports: the listener's and the five clients' (accepted sockets share one).
    assert_eq!(range("tcp")["ports"], 6);
    assert_eq!(range("udp")["ports"], 3);
    assert_eq!(
        view["lost"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["events"].as_u64().unwrap())
            .sum::<u64>(),
        0
    );
}

static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A tmux server of the test's own, 200x50, running one command in its only pane.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let t = Tmux {
            // One server per test: tests may run side by side.
            socket: format!(
                "port-tracer-test-{}-{}",
                std::process::id(),
                SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        };
        let ok = t
            .cmd(&["new-session", "-d", "-x", "200", "-y", "50", command])
            .status
            .success();
        assert!(ok, "tmux new-session failed");
        t
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-f", "/dev/null", "-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs (cargo xtask setup installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// The pane's alternate screen and cursor flags.
    fn modes(&self) -> String {
        let out = self.cmd(&["display-message", "-p", "#{alternate_on} #{cursor_flag}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits up to `limit` for the screen to satisfy `f`; the last screen seen.
    fn wait(&self, limit: Duration, f: impl Fn(&str) -> bool) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return Ok(s);
            }
            if start.elapsed() > limit {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_in_a_terminal_shows_the_workload_within_two_refreshes_and_q_restores_it() {
    require_root!();
    let comm = format!("pt-tmux-{}", std::process::id() % 10000);
    let exit = PathBuf::from(format!("/tmp/port-tracer-top-exit-{}", std::process::id()));
    let _ = std::fs::remove_file(&exit);
    let command = format!(
        "{} top -d 1 --comm {comm}; echo $? > {}; sleep 60",
        env!("CARGO_BIN_EXE_port-tracer"),
        exit.display()
    );
    let tmux = Tmux::start(&command);
    let up = tmux.wait(Duration::from_secs(30), |s| s.contains("Churn by process"));
    let shown = up.unwrap_or_else(|s| panic!("top did not draw:\n{s}"));
    assert!(shown.contains("port-tracer top | live"), "{shown}");
    assert_eq!(
        tmux.modes(),
        "1 0",
        "top draws on the alternate screen, cursor hidden"
    );

    let work = Workload::start(&comm);
    let row = format!("{} {comm}", work.pid());
    // Two refreshes of one second, and a little for drawing.
    let seen = tmux.wait(Duration::from_millis(2500), |s| {
        s.lines().any(|l| {
            let cols: Vec<&str> = l.trim_matches('│').split_whitespace().collect();
            l.contains(&row) && cols.get(3) == Some(&"9")
        })
    });
    let shown = seen.unwrap_or_else(|s| panic!("no row `{row}` with 9 allocations:\n{s}"));
    assert!(shown.contains("sockets 14, TIME_WAIT 0 (0.0%)"), "{shown}");
    assert!(shown.contains("Churn by process: 9 allocations"), "{shown}");
    let listener = work.ports["listener"].as_u64().unwrap();
    assert!(
        shown.contains(&format!("127.0.0.1 -> 127.0.0.1:{listener}")),
        "{shown}"
    );

    // `g` groups by container: this host process is in none.
    tmux.keys(&["g"]);
    let grouped = tmux.wait(Duration::from_secs(2), |s| s.contains("Churn by container"));
    let shown = grouped.unwrap_or_else(|s| panic!("g did not regroup:\n{s}"));
    assert!(shown.contains("(no container or unit)"), "{shown}");
    // `/` filters: a name matching nothing empties the table, Esc brings it back.
    tmux.keys(&["g", "g", "/"]);
    tmux.keys(&["-l", "nomatch"]);
    let filtered = tmux.wait(Duration::from_secs(2), |s| {
        s.contains("filter: nomatch_") && !s.contains(&row)
    });
    filtered.unwrap_or_else(|s| panic!("/ did not filter:\n{s}"));
    tmux.keys(&["Escape"]);
    let back = tmux.wait(Duration::from_secs(2), |s| s.contains(&row));
    back.unwrap_or_else(|s| panic!("Esc did not drop the filter:\n{s}"));

    tmux.keys(&["q"]);
    let exited = support::wait_for(Duration::from_secs(10), || exit.exists());
    assert!(exited, "top did not exit on q:\n{}", tmux.screen());
    std::thread::sleep(Duration::from_millis(100));
    let code = std::fs::read_to_string(&exit).unwrap();
    let _ = std::fs::remove_file(&exit);
    assert_eq!(code.trim(), "0");
    assert_eq!(tmux.modes(), "0 1", "alternate screen left, cursor shown");
    drop(work);
}

#[test]
fn top_replays_a_recorded_trace_once() {
    let trace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup.ptrace");
    let out = tracer()
        .args(["top", "--once", "--replay"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The same counts `report` gives of it.
    let report = tracer()
        .args(["report", "--format", "jsonl"])
        .arg(&trace)
        .output()
        .unwrap();
    let summary: Value = String::from_utf8_lossy(&report.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .expect("report's summary");
    assert_eq!(
        view["events"], summary["counters"]["events"],
        "{}",
        summary["counters"]
    );
    assert_eq!(view["allocations"], summary["counters"]["allocations"]);
    assert_eq!(view["failures_total"], summary["counters"]["alloc_failure"]);
    assert_eq!(view["tier"], "cgroup");
    let _ = std::io::stdout().flush();
}

#[test]
fn top_replay_is_paced_as_recorded_unless_asked_otherwise() {
    let trace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup.ptrace");
    let timed = |args: &[&str]| {
        let start = Instant::now();
        let out = tracer()
            .args(["top", "--once", "--replay"])
            .arg(&trace)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let view: Value = serde_json::from_slice(&out.stdout).unwrap();
        (start.elapsed(), view)
    };
    let (paced, view) = timed(&[]);
    // Played as recorded: no faster than the trace's records span.
    let span = Duration::from_secs_f64(view["elapsed_s"].as_f64().unwrap());
    assert!(span > Duration::from_secs(1), "the fixture spans {span:?}");
    assert!(
        paced >= span.mul_f64(0.7),
        "played in {paced:?}, recorded over {span:?}"
    );
    // Faster on request, to the same end.
    let (_, fast) = timed(&["--speed", "100"]);
    let (_, full) = timed(&["--full-speed"]);
    for v in [&fast, &full] {
        assert_eq!(v["events"], view["events"]);
        assert_eq!(v["owners"], view["owners"]);
    }
}

#[test]
fn top_replays_a_trace_on_screen_and_keeps_its_end_until_q() {
    let trace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tracepoint.ptrace");
    let exit = PathBuf::from(format!(
        "/tmp/port-tracer-top-replay-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&exit);
    let command = format!(
        "{} top -d 0.2 --full-speed --replay {}; echo $? > {}; sleep 60",
        env!("CARGO_BIN_EXE_port-tracer"),
        trace.display(),
        exit.display()
    );
    let tmux = Tmux::start(&command);
    let ended = tmux.wait(Duration::from_secs(20), |s| s.contains("(ended)"));
    let shown = ended.unwrap_or_else(|s| panic!("the replay did not end on screen:\n{s}"));
    assert!(shown.contains("8178 fixture-main"), "{shown}");
    assert!(
        shown.contains("Latest allocation failures: 6 in all"),
        "{shown}"
    );
    assert!(shown.contains("EADDRNOTAVAIL"), "{shown}");
    // Still there a refresh later: the end stays until q.
    std::thread::sleep(Duration::from_millis(500));
    assert!(tmux.screen().contains("(ended)"));
    assert!(!exit.exists());
    tmux.keys(&["q"]);
    assert!(support::wait_for(Duration::from_secs(10), || exit.exists()));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&exit).unwrap().trim(), "0");
    let _ = std::fs::remove_file(&exit);
    assert_eq!(tmux.modes(), "0 1", "alternate screen left, cursor shown");
}
