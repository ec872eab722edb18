//! `--metrics ADDR`: the endpoint scraped during a live run, its body read by the
//! Prometheus project's own Python text parser. Host only (needs the Python readers of
//! `cargo xtask setup`); the VM matrix does not build this file.

mod support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::*;

/// Fetches a URL with Python's urllib (another process: its connection is not this
/// test's, so the counts filtered by this pid stay exact) and parses the body with
/// `prometheus_client.parser`; prints the content type and every sample as JSON.
const SCRAPE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=5) as r:
    content_type, body = r.headers.get("Content-Type"), r.read().decode()
samples = [
    {"family": f.name, "type": f.type, "name": s.name, "labels": s.labels, "value": s.value}
    for f in text_string_to_metric_families(body)
    for s in f.samples
]
print(json.dumps({"content_type": content_type, "samples": samples}))
"#;

/// One scrape, as the Prometheus parser read it.
struct Scrape {
    content_type: String,
    samples: Vec<Value>,
}

impl Scrape {
    fn of(url: &str) -> Scrape {
        let v: Value = serde_json::from_str(&python(SCRAPE, &[url])).expect("scrape JSON");
        Scrape {
            content_type: v["content_type"].as_str().unwrap_or_default().to_string(),
            samples: v["samples"].as_array().cloned().unwrap_or_default(),
        }
    }

    /// Samples named `name` whose labels include `labels`.
    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> Vec<&'a Value> {
        self.samples
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| labels.iter().all(|(k, v)| s["labels"][k] == *v))
            .collect()
    }

    /// The value of the one sample named `name` with `labels`, if there is one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.matching(name, labels)[..] {
            [s] => s["value"].as_f64(),
            [] => None,
            _ => panic!("more than one {name} sample with {labels:?}"),
        }
    }

    fn types(&self, family: &str) -> Vec<&str> {
        self.samples
            .iter()
            .filter(|s| s["family"] == family)
            .filter_map(|s| s["type"].as_str())
            .collect()
    }
}

/// The address the tracer says it serves metrics at.
fn metrics_url(tracer: &Tracer) -> String {
    tracer
        .startup
        .iter()
        .find_map(|l| l.strip_prefix("port-tracer: serving metrics at "))
        .unwrap_or_else(|| panic!("no metrics address in {:?}", tracer.startup))
        .to_string()
}

/// `net.ipv4.ip_local_port_range` of this namespace, as (low, high).
fn port_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = text.split_whitespace().map(|p| p.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn metrics_scraped_during_a_run_and_read_by_the_prometheus_parser() {
    require_root!();
    const CONNECTS: usize = 5;
    const UDP_BINDS: usize = 3;
    let (low, high) = port_range();
    let pid = std::process::id().to_string();
    let tracer = Tracer::start_with(&["--pid", &pid, "--metrics", "127.0.0.1:0"]);
    let url = metrics_url(&tracer);
    assert!(url.starts_with("http://127.0.0.1:") && !url.starts_with("http://127.0.0.1:0/"));
    let netns = netns_of("/proc/self/ns/net").to_string();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let mut pairs = Vec::new();
    let mut tcp_ports = vec![server_port];
    for _ in 0..CONNECTS {
        let c = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        tcp_ports.push(c.local_addr().unwrap().port());
        pairs.push((c, listener.accept().unwrap().0));
    }
    let udp: Vec<UdpSocket> = (0..UDP_BINDS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let udp_ports: Vec<u16> = udp.iter().map(|s| s.local_addr().unwrap().port()).collect();

    // While held: every allocation counted, every socket live.
    let tcp = |origin| [("proto", "tcp"), ("origin", origin)];
    let mut s = Scrape::of(&url);
    assert!(
        wait_for(Duration::from_secs(10), || {
            s = Scrape::of(&url);
            s.value("port_tracer_allocations_total", &tcp("connect")) == Some(CONNECTS as f64)
                && s.value("port_tracer_live_ports", &[("proto", "udp")]) == Some(UDP_BINDS as f64)
        }),
        "counts never appeared: {:#?}",
        s.samples
    );
    assert_eq!(s.content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(s.types("port_tracer_allocations"), ["counter"; 8]);
    assert_eq!(
        s.value("port_tracer_allocations_total", &tcp("bind_ephemeral")),
        Some(1.0),
        "the listener"
    );
    assert_eq!(
        s.value("port_tracer_allocations_total", &tcp("bind")),
        Some(0.0)
    );
    assert_eq!(
        s.value(
            "port_tracer_allocations_total",
            &[("proto", "udp"), ("origin", "bind_ephemeral")]
        ),
        Some(UDP_BINDS as f64)
    );
    assert_eq!(
        s.value(
            "port_tracer_live_ports",
            &[("proto", "tcp"), ("netns", &netns)]
        ),
        Some((1 + 2 * CONNECTS) as f64),
        "the listener, the clients and the accepted sockets"
    );
    // Accepted sockets share the listener's port: distinct TCP ports are the clients' and
    // the listener's, all ephemeral.
    assert!(tcp_ports
        .iter()
        .chain(&udp_ports)
        .all(|p| (low..=high).contains(p)));
    let size = f64::from(high - low + 1);
    let occupancy = |s: &Scrape, proto| {
        s.value(
            "port_tracer_range_occupancy_ratio",
            &[("netns", &netns), ("proto", proto), ("laddr", "*")],
        )
        .expect("occupancy gauge")
    };
    // Within an ulp or so: the text format's shortest decimals need not round-trip.
    let close_to = |got: f64, want: f64| (got - want).abs() <= want * 1e-12;
    assert!(close_to(occupancy(&s, "tcp"), (1 + CONNECTS) as f64 / size));
    assert!(close_to(occupancy(&s, "udp"), UDP_BINDS as f64 / size));
    assert!((0.0..=1.0).contains(&occupancy(&s, "tcp")));
    // connect() towards the listener: the range less its port (bind-held) and the
    // clients' (connected to it).
    let rport = server_port.to_string();
    let headroom = s.value(
        "port_tracer_connect_headroom",
        &[
            ("netns", &netns),
            ("rport", &rport),
            ("laddr", "127.0.0.1"),
            ("raddr", "127.0.0.1"),
        ],
    );
    assert_eq!(
        headroom,
        Some(size - 1.0 - CONNECTS as f64),
        "{:#?}",
        s.samples
    );
    for reason in [
        "ringbuf_full",
        "map_full",
        "read_error",
        "return_missed",
        "port_unknown",
        "undecodable",
        "backlog_full",
    ] {
        let lost = s.value("port_tracer_lost_events_total", &[("reason", reason)]);
        assert!(lost.is_some_and(|n| n >= 0.0), "lost reason {reason}");
    }

    // Closed (with resets: no TIME_WAIT), every lifetime ends and lands in the histogram.
    for (c, a) in pairs {
        reset_close(a);
        reset_close(c);
    }
    drop(listener);
    drop(udp);
    let ended = 1 + 2 * CONNECTS + UDP_BINDS;
    assert!(
        wait_for(Duration::from_secs(10), || {
            s = Scrape::of(&url);
            s.value("port_tracer_lifetime_seconds_count", &[]) == Some(ended as f64)
        }),
        "lifetimes never ended: {:#?}",
        s.samples
    );
    assert_eq!(s.types("port_tracer_lifetime_seconds")[0], "histogram");
    assert_eq!(
        s.value("port_tracer_lifetime_seconds_bucket", &[("le", "+Inf")]),
        Some(ended as f64)
    );
    let sum = s.value("port_tracer_lifetime_seconds_sum", &[]).unwrap();
    assert!(sum > 0.0 && sum < 60.0, "sum {sum}");
    assert_eq!(
        s.value("port_tracer_releases_total", &tcp("inherited")),
        Some(CONNECTS as f64)
    );
    assert_eq!(
        s.value("port_tracer_releases_total", &tcp("connect")),
        Some(CONNECTS as f64)
    );
    assert_eq!(
        s.value("port_tracer_live_ports", &[("proto", "tcp")]),
        None,
        "nothing held: no live series"
    );
    assert_eq!(occupancy(&s, "tcp"), 0.0);
    tracer.stop();
}

/// A raw HTTP/1.1 request; the whole response.
fn http(addr: &str, request: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_elsewhere_not_found_and_a_wide_address_warned_about() {
    require_root!();
    // Bound on every interface, reached over loopback only.
    let tracer = Tracer::start_with(&["--pid", "1", "--metrics", "0.0.0.0:0"]);
    assert!(
        tracer
            .startup
            .iter()
            .any(|l| l.contains("no authentication") && l.contains("loopback or behind a firewall")),
        "{:?}",
        tracer.startup
    );
    let url = metrics_url(&tracer);
    let port = url
        .trim_start_matches("http://0.0.0.0:")
        .trim_end_matches("/metrics");
    let addr = format!("127.0.0.1:{port}");
    let get = |path: &str, method: &str| {
        http(
            &addr,
            &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    };
    let not_found = get("/", "GET");
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
    assert!(get("/metrics/x", "GET").starts_with("HTTP/1.1 404"));
    let post = get("/metrics", "POST");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let ok = get("/metrics", "GET");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("# TYPE port_tracer_allocations_total counter"));
    tracer.stop();
}

fn tracer_exits_with(args: &[&str], code: i32, needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_port-tracer"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(said.len(), 1, "one line: {stderr}");
    assert!(!stderr.contains("tracing with"), "{stderr}");
}

#[test]
fn metrics_address_unusable_fails_before_tracing() {
    // Needs no root: the address is bound before the kernel programs are loaded.
    tracer_exits_with(
        &["--metrics", "256.0.0.1:1"],
        2,
        "invalid value '256.0.0.1:1' for '--metrics <ADDR>'",
    );
    tracer_exits_with(&["--metrics", "localhost"], 2, "--metrics <ADDR>");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    tracer_exits_with(
        &["--metrics", &addr],
        1,
        &format!("port-tracer: cannot serve metrics at {addr}: Address already in use"),
    );
    // TEST-NET-1: no interface here has it. Only bound, never sent to.
    tracer_exits_with(
        &["--metrics", "192.0.2.1:9464"],
        1,
        "cannot serve metrics at 192.0.2.1:9464: Cannot assign requested address",
    );
}
