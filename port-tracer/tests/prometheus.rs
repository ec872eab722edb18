//! A real Prometheus (Debian's `prometheus` package, as `cargo xtask setup` installs it)
//! scrapes `--metrics` during a run and gives the workload's numbers back through its HTTP
//! API; the shipped rules (`contrib/prometheus`) pass `promtool check rules` and its unit
//! tests. Host only: the VM matrix does not build this file.

mod support;

use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::*;

/// Prints the body of a URL (nothing if it cannot be fetched).
const FETCH: &str = r#"
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=5) as r:
        sys.stdout.write(r.read().decode())
except Exception:
    pass
"#;

fn contrib() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus")
}

/// Whether `tool` runs; a visible skip when it does not.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!(
            "{tool} is not installed (`cargo xtask setup` installs Debian's prometheus)"
        ));
    }
    ok
}

#[test]
fn the_shipped_rules_pass_promtool_check_and_their_unit_tests() {
    if !have("promtool") {
        return;
    }
    for args in [
        &["check", "rules", "port-tracer.rules.yml"][..],
        &["test", "rules", "port-tracer.rules.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(contrib())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus server of the test's own on loopback, scraping one target every second
/// with the shipped rules loaded; killed and its data removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Serving on `port`, scraping `target`.
    fn start(port: u16, target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("pt-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: port-tracer\n    static_configs:\n      - targets: ['{target}']\n",
            contrib().join("port-tracer.rules.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, dir, port }
    }

    /// `GET path` of the server's API; its JSON, or None before it answers. From another
    /// process (Python's urllib): a connection of this test's would count in the numbers
    /// filtered by its pid.
    fn get(&self, path_and_query: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path_and_query}", self.port);
        let out = Command::new("python3")
            .args(["-c", FETCH, &url])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The instant vector `promql` gives now: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Some(v) = self.get(&format!("/api/v1/query?query={q}")) else {
            return Vec::new();
        };
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The one value `promql` gives now, if it gives one.
    fn value(&self, promql: &str) -> Option<f64> {
        match self.query(promql)[..] {
            [(_, v)] => Some(v),
            [] => None,
            ref many => panic!("{promql} gave {many:?}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `net.ipv4.ip_local_port_range` of this namespace, less its reserved ports: the ports
/// the kernel hands out.
fn ephemeral_ports() -> f64 {
    let read = |p: &str| std::fs::read_to_string(Path::new("/proc/sys/net/ipv4").join(p));
    let range = read("ip_local_port_range").unwrap();
    let mut it = range.split_whitespace().map(|p| p.parse::<u32>().unwrap());
    let (low, high) = (it.next().unwrap(), it.next().unwrap());
    let reserved = read("ip_local_reserved_ports").unwrap_or_default();
    assert!(
        reserved.trim().is_empty(),
        "this test assumes no reserved ports: {reserved}"
    );
    f64::from(high - low + 1)
}

#[test]
fn a_real_prometheus_scrapes_the_workloads_numbers() {
    require_root!();
    if !have("prometheus") {
        return;
    }
    const CONNECTS: usize = 5;
    const UDP_BINDS: usize = 3;
    let pid = std::process::id().to_string();
    // Before tracing: finding it binds a port in this process, which the counts follow.
    let prometheus_port = free_tcp_port();
    let tracer = Tracer::start_with(&["--pid", &pid, "--metrics", "127.0.0.1:0"]);
    let url = tracer
        .startup
        .iter()
        .find_map(|l| l.strip_prefix("port-tracer: serving metrics at "))
        .expect("the metrics address")
        .to_string();
    let target = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let prometheus = Prometheus::start(prometheus_port, &target);
    let netns = netns_of("/proc/self/ns/net").to_string();

    // The workload: a listener, five connections to it, three UDP sockets, all held.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let mut pairs = Vec::new();
    for _ in 0..CONNECTS {
        let c = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        pairs.push((c, listener.accept().unwrap().0));
    }
    let udp: Vec<UdpSocket> = (0..UDP_BINDS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();

    // Scraped once the counts are there (scrapes every second; the reorder window holds
    // events 50 ms).
    let allocations = r#"sum(port_tracer_allocations_total{job="port-tracer"})"#;
    let scraped = wait_for(Duration::from_secs(60), || {
        prometheus.value(allocations) == Some((1 + CONNECTS + UDP_BINDS) as f64)
    });
    assert!(
        scraped,
        "Prometheus never saw the allocations: {:?}\n{}",
        prometheus.query(allocations),
        prometheus.log()
    );
    assert_eq!(
        prometheus.value(r#"up{job="port-tracer"}"#),
        Some(1.0),
        "the target is up"
    );
    let count = |proto: &str, origin: &str| {
        prometheus.value(&format!(
            r#"port_tracer_allocations_total{{proto="{proto}",origin="{origin}"}}"#
        ))
    };
    assert_eq!(count("tcp", "connect"), Some(CONNECTS as f64));
    assert_eq!(count("tcp", "bind_ephemeral"), Some(1.0), "the listener");
    assert_eq!(count("udp", "bind_ephemeral"), Some(UDP_BINDS as f64));
    assert_eq!(count("tcp", "bind"), Some(0.0));
    assert_eq!(
        prometheus.value(&format!(
            r#"port_tracer_live_ports{{proto="tcp",netns="{netns}"}}"#
        )),
        Some((1 + 2 * CONNECTS) as f64),
        "the listener, the clients and the accepted sockets"
    );
    // Occupancy: the listener's and the clients' distinct ports over the range.
    let size = ephemeral_ports();
    let ratio = prometheus
        .value(&format!(
            r#"port_tracer_range_occupancy_ratio{{netns="{netns}",proto="tcp",laddr="127.0.0.1"}}"#
        ))
        .expect("the occupancy gauge");
    assert!(
        (ratio - (1 + CONNECTS) as f64 / size).abs() < 1e-9,
        "{ratio} of {size}"
    );
    // connect() towards the listener: the range less its port (bind-held) and the
    // clients' (connected to it).
    assert_eq!(
        prometheus.value(&format!(
            r#"port_tracer_connect_headroom{{netns="{netns}",raddr="127.0.0.1",rport="{server_port}"}}"#
        )),
        Some(size - 1.0 - CONNECTS as f64)
    );
    // Every reason's lost counter, each 0; the recording rule over them.
    let lost = prometheus.query("port_tracer_lost_events_total");
    let reasons: Vec<&str> = lost
        .iter()
        .map(|(m, _)| m["reason"].as_str().unwrap())
        .collect();
    for reason in ["ringbuf_full", "map_full", "backlog_full", "undecodable"] {
        assert!(reasons.contains(&reason), "{reason} missing: {reasons:?}");
    }
    assert!(lost.iter().all(|(_, v)| *v == 0.0), "{lost:?}");
    // The shipped rules load and evaluate: the recording rule gives the TCP range, and
    // no alert fires for this quiet workload.
    let recorded = wait_for(Duration::from_secs(10), || {
        prometheus
            .value(&format!(
                r#"port_tracer:range_occupancy_ratio:max{{netns="{netns}",proto="tcp"}}"#
            ))
            .is_some_and(|v| (v - ratio).abs() < 1e-9)
    });
    assert!(recorded, "the recording rule: {}", prometheus.log());
    assert_eq!(
        prometheus.query(r#"ALERTS{alertname=~"PortTracer.*"}"#),
        [],
        "no alert for a quiet workload"
    );
    drop((pairs, udp));
    tracer.stop();
}
