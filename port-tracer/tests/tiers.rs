//! Tier equivalence: one scripted socket workload, traced at the same time by one tracer per
//! attach tier, must give the same lifetimes from each (timestamps aside).
//!
//! It needs a kernel where several tiers work, which this machine's is not: it runs when
//! PORT_TRACER_TEST_TIERS names the tiers (`cargo xtask vm-test` sets it inside each
//! guest) and says it skipped otherwise.

mod support;

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use port_tracer_common::tiers::{self, TierInfo};
use support::*;

/// A port the workload obtained, as the kernel reported it through getsockname.
struct Obtained {
    proto: &'static str,
    port: u16,
    origin: &'static str,
}

/// What one tier's trace says, reduced to what every tier must agree on: one line per
/// lifetime and per allocation failure (bind failures only if `bind_failures`), sorted.
fn facts(t: &Trace, bind_failures: bool) -> Vec<String> {
    let mut out: Vec<String> = t
        .of_type("lifetime")
        .map(|l| {
            format!(
                "lifetime {} {} {}:{} -> {}:{} netns={} pid={} ppid={} tid={} comm={} thread={} \
                 origin={} sock={} released={} time_wait={} lossy={}",
                l["proto"],
                l["family"],
                l["laddr"],
                l["lport"],
                l["raddr"],
                l["rport"],
                l["netns"],
                l["pid"],
                l["ppid"],
                l["tid"],
                l["comm"],
                l["thread"],
                l["origin"],
                l["sock_id"],
                !l["released_ns"].is_null(),
                !l["time_wait_start_ns"].is_null(),
                l["lossy"],
            )
        })
        .chain(
            t.of_type("alloc_failure")
                .filter(|f| bind_failures || f["error"] != "EADDRINUSE")
                .map(|f| {
                    format!(
                        "alloc_failure {} {} {}:{} netns={} pid={} tid={} origin={} error={}",
                        f["proto"],
                        f["family"],
                        f["laddr"],
                        f["lport"],
                        f["netns"],
                        f["pid"],
                        f["tid"],
                        f["origin"],
                        f["error"],
                    )
                }),
        )
        .collect();
    out.sort();
    out
}

fn listen_autobind() -> u16 {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert_eq!(libc::listen(fd, 8), 0);
        let port = local_port(fd);
        libc::close(fd);
        port
    }
}

/// The scripted workload: every way a port is obtained and given back, TCP and UDP, IPv4
/// and IPv6, a failure, and a TIME_WAIT ended by its network namespace going away.
fn workload(tcp_fixed: u16, udp_fixed: u16) -> (Vec<Obtained>, u16) {
    let mut got = Vec::new();
    let mut add = |proto, port, origin| {
        got.push(Obtained {
            proto,
            port,
            origin,
        })
    };

    // bind(0)+listen, connect, accept; the client resets.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();
    add("tcp", lport, "bind_ephemeral");
    let c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
    add("tcp", c.local_addr().unwrap().port(), "connect");
    let (a, _) = l.accept().unwrap();
    reset_close(c);
    drop(a);
    // A second bind to the listener's port fails.
    assert!(TcpListener::bind(("127.0.0.1", lport)).is_err());
    drop(l);

    let fixed = TcpListener::bind(("127.0.0.1", tcp_fixed)).unwrap();
    add("tcp", tcp_fixed, "bind");
    drop(fixed);
    add("tcp", listen_autobind(), "autobind");

    let u = UdpSocket::bind(("127.0.0.1", udp_fixed)).unwrap();
    add("udp", udp_fixed, "bind");
    add("udp", udp_sendto_autobind(udp_fixed), "autobind");
    // connect() autobinds an unbound UDP socket (the cgroup tier sees its port at close).
    let ua = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    let to = loopback(udp_fixed);
    assert_eq!(
        unsafe { libc::connect(ua, (&to as *const libc::sockaddr_in).cast(), 16) },
        0
    );
    add("udp", local_port(ua), "autobind");
    unsafe { libc::close(ua) };
    let uc = UdpSocket::bind("0.0.0.0:0").unwrap();
    add("udp", uc.local_addr().unwrap().port(), "bind_ephemeral");
    uc.connect(("127.0.0.1", udp_fixed)).unwrap();
    drop(uc);
    drop(u);

    let l6 = TcpListener::bind("[::1]:0").unwrap();
    add("tcp", l6.local_addr().unwrap().port(), "bind_ephemeral");
    let c6 = TcpStream::connect(l6.local_addr().unwrap()).unwrap();
    add("tcp", c6.local_addr().unwrap().port(), "connect");
    let (a6, _) = l6.accept().unwrap();
    reset_close(c6);
    drop(a6);
    drop(l6);
    let u6 = UdpSocket::bind("[::1]:0").unwrap();
    add("udp", u6.local_addr().unwrap().port(), "bind_ephemeral");
    drop(u6);

    // Active close in a namespace of its own: the client's port sits in TIME_WAIT until the
    // namespace dies with this thread.
    let tw_port = std::thread::spawn(|| {
        enter_new_netns();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let port = c.local_addr().unwrap().port();
        let (a, _) = l.accept().unwrap();
        drop(c);
        std::thread::sleep(Duration::from_millis(50));
        drop(a);
        drop(l);
        port
    })
    .join()
    .unwrap();
    add("tcp", tw_port, "connect");
    (got, tw_port)
}

#[test]
fn every_tier_reports_the_same_lifetimes() {
    require_root!();
    let Ok(tiers) = std::env::var("PORT_TRACER_TEST_TIERS") else {
        support::skip(
            "PORT_TRACER_TEST_TIERS is not set (it names the tiers to compare, e.g. \
             fentry,kprobe,tracepoint; cargo xtask test and vm-test set it)",
        );
        return;
    };
    // The environment names them: the one place a tier is looked up by name.
    let tiers: Vec<&'static TierInfo> = tiers
        .split(',')
        .map(|t| tiers::by_name(t).unwrap_or_else(|| panic!("unknown tier {t}")))
        .collect();
    assert!(tiers.len() >= 2, "compare at least two tiers");
    let tcp_fixed = free_tcp_port();
    let udp_fixed = free_udp_port();

    let me = std::process::id().to_string();
    let tracers: Vec<(&TierInfo, Tracer)> = tiers
        .iter()
        .map(|&t| (t, Tracer::start_tier(Some(t.name), &["--pid", &me])))
        .collect();
    let (obtained, tw_port) = workload(tcp_fixed, udp_fixed);
    for (tier, tracer) in &tracers {
        let ended = tracer.wait_for_record(Duration::from_secs(30), |r| {
            r["type"] == "release" && r["time_wait_sock"] == true && r["lport"] == tw_port
        });
        assert!(
            ended,
            "{}: TIME_WAIT of port {tw_port} never ended",
            tier.name
        );
    }
    let traces: Vec<(&TierInfo, Trace)> =
        tracers.into_iter().map(|(t, tr)| (t, tr.stop())).collect();

    // Each trace holds what the kernel did, checked against getsockname...
    for (info, t) in &traces {
        let tier = info.name;
        for o in &obtained {
            let lts = t.lifetimes(o.proto, o.port);
            assert!(
                lts.iter()
                    .any(|l| l["origin"] == o.origin && l["pid"] == std::process::id()),
                "{tier}: no {} lifetime of {} port {}: {lts:#?}",
                o.origin,
                o.proto,
                o.port
            );
        }
        let tw = t.lifetime("tcp", tw_port);
        assert!(!tw["time_wait_start_ns"].is_null() && !tw["released_ns"].is_null());
        let bind_failures = usize::from(info.sees_bind_failures);
        assert_eq!(
            t.of_type("alloc_failure").count(),
            bind_failures,
            "{tier}: the one EADDRINUSE, if it sees bind() fail"
        );
        assert_eq!(t.summary()["lost"]["total"], 0, "{tier}: lost events");
    }
    // ...and they agree line for line, but for the documented allowance: a tier blind to
    // bind failures is compared without them.
    let (ref_info, ref_trace) = &traces[0];
    let ref_tier = ref_info.name;
    let mut differences = BTreeMap::new();
    for (info, t) in &traces[1..] {
        let tier = info.name;
        let both_see = ref_info.sees_bind_failures && info.sees_bind_failures;
        let reference = facts(ref_trace, both_see);
        let these = facts(t, both_see);
        if these != reference {
            let only_ref: Vec<&String> = reference.iter().filter(|f| !these.contains(f)).collect();
            let only_this: Vec<&String> = these.iter().filter(|f| !reference.contains(f)).collect();
            differences.insert(
                tier,
                format!("only in {ref_tier}: {only_ref:#?}\nonly in {tier}: {only_this:#?}"),
            );
        }
    }
    assert!(
        differences.is_empty(),
        "tiers disagree:\n{}",
        differences
            .iter()
            .map(|(t, d)| format!("== {t} vs {ref_tier}\n{d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
