//! BPF time per operation, by tier: a measurement, not a check, so it runs only when asked
//! (`--ignored`). `cargo xtask vm-test --bpf-cost` runs it in each guest (where the fentry
//! and kprobe tiers work; under emulation absolute nanoseconds mean nothing, the ratio
//! between tiers does); on the host, `sudo cargo xtask bench --bpf-stats` measures the
//! same beside the end-to-end storm.
//!
//! For each tier named in PORT_TRACER_TEST_TIERS (default: every tier; on a kernel that
//! refuses some, name those it runs), one at a time: the tracer attached, the kernel's BPF
//! run-time statistics on, N loopback TCP connections (connect, accept, both closed with a
//! reset, as the storm does) and N UDP sockets (bind 127.0.0.1:0, close); each program's
//! run count and run time before and after each workload give its runs and nanoseconds
//! per operation.

mod support;

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use support::*;

const OPERATIONS: u64 = 2000;

/// Run count and run time (ns) of every loaded program of port-tracer's, by name.
fn snapshot() -> BTreeMap<String, (u64, u64)> {
    let ours = |name: &str| {
        // The kernel keeps 15 bytes of a program's name.
        port_tracer_common::programs::ALL
            .iter()
            .any(|p| !name.is_empty() && p.starts_with(name))
    };
    let mut out = BTreeMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        let Some(name) = info.name_as_str().filter(|n| ours(n)) else {
            continue;
        };
        let e = out.entry(name.to_string()).or_insert((0, 0));
        e.0 += info.run_count();
        e.1 += info.run_time().as_nanos() as u64;
    }
    out
}

/// Per program: runs and ns per operation between two snapshots, costliest first; and
/// the total ns per operation.
fn per_operation(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> (Vec<(String, f64, f64)>, f64) {
    let mut rows: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(name, &(runs, ns))| {
            let (runs0, ns0) = before.get(name).copied().unwrap_or((0, 0));
            let n = OPERATIONS as f64;
            (
                name.clone(),
                (runs - runs0) as f64 / n,
                (ns - ns0) as f64 / n,
            )
        })
        .filter(|r| r.1 > 0.0)
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total = rows.iter().map(|r| r.2).sum();
    (rows, total)
}

fn tcp_connections() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    for _ in 0..OPERATIONS {
        let c = TcpStream::connect(to).unwrap();
        let (a, _) = l.accept().unwrap();
        reset_close(c);
        reset_close(a);
    }
}

fn udp_sockets() {
    for _ in 0..OPERATIONS {
        drop(UdpSocket::bind("127.0.0.1:0").unwrap());
    }
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One tier's measurement in one round: per program, runs and ns per operation.
type Round = (Vec<(String, f64, f64)>, Vec<(String, f64, f64)>);

#[test]
#[ignore = "a measurement: run with --ignored (cargo xtask vm-test --bpf-cost)"]
fn bpf_time_per_operation_by_tier() {
    require_root!();
    let tiers = std::env::var("PORT_TRACER_TEST_TIERS").unwrap_or_else(|_| {
        let all: Vec<&str> = port_tracer_common::tiers::ALL
            .iter()
            .map(|t| t.name)
            .collect();
        all.join(",")
    });
    let tiers: Vec<&str> = tiers.split(',').collect();
    // Rounds alternate the tiers, so that a noisy moment weighs on each alike; medians.
    let rounds: usize = std::env::var("PORT_TRACER_COST_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut measured: BTreeMap<&str, Vec<Round>> = BTreeMap::new();
    for round in 0..rounds {
        for i in 0..tiers.len() {
            let tier = tiers[(i + round) % tiers.len()];
            // A pid no process has: the kernel side runs for every socket all the same,
            // and the output stays empty.
            let tracer = Tracer::start_tier(Some(tier), &["--pid", "4194304"]);
            std::thread::sleep(Duration::from_millis(200));
            let start = snapshot();
            tcp_connections();
            let mid = snapshot();
            udp_sockets();
            let end = snapshot();
            let t = tracer.stop();
            assert_eq!(t.summary()["lost"]["total"], 0, "{tier}");
            let (tcp, tcp_ns) = per_operation(&start, &mid);
            let (udp, udp_ns) = per_operation(&mid, &end);
            assert!(tcp_ns > 0.0 && udp_ns > 0.0, "{tier}: no BPF time measured");
            measured.entry(tier).or_default().push((tcp, udp));
        }
    }
    let mut totals = Vec::new();
    for tier in &tiers {
        let runs = &measured[tier];
        let mut tier_totals = [0.0; 2];
        for (w, what) in ["tcp connection", "udp socket"].iter().enumerate() {
            let of = |r: &Round| if w == 0 { r.0.clone() } else { r.1.clone() };
            let mut names: Vec<String> = runs.iter().flat_map(&of).map(|p| p.0).collect();
            names.sort();
            names.dedup();
            let mut rows: Vec<(String, f64, f64)> = names
                .into_iter()
                .map(|name| {
                    let pick = |k: usize| {
                        median(
                            runs.iter()
                                .map(|r| {
                                    of(r).iter().find(|p| p.0 == name).map_or(0.0, |p| {
                                        if k == 1 {
                                            p.1
                                        } else {
                                            p.2
                                        }
                                    })
                                })
                                .collect(),
                        )
                    };
                    (name.clone(), pick(1), pick(2))
                })
                .filter(|r| r.2 >= 0.5)
                .collect();
            rows.sort_by(|a, b| b.2.total_cmp(&a.2));
            let total = median(
                runs.iter()
                    .map(|r| of(r).iter().map(|p| p.2).sum::<f64>())
                    .collect(),
            );
            tier_totals[w] = total;
            println!(
                "\n{tier} tier, per {what} ({OPERATIONS} of them, median of {rounds} rounds):\n"
            );
            println!("| program | runs per op | ns per run | ns per op |\n|---|---|---|---|");
            for (name, runs_per_op, ns) in rows {
                println!(
                    "| {name} | {runs_per_op:.2} | {:.0} | {ns:.0} |",
                    ns / runs_per_op.max(1e-9)
                );
            }
            println!("| **total** | | | **{total:.0}** |");
        }
        totals.push((tier, tier_totals[0], tier_totals[1]));
    }
    println!("\n| tier | BPF ns per TCP connection | BPF ns per UDP socket |\n|---|---|---|");
    for (tier, tcp, udp) in totals {
        println!("| {tier} | {tcp:.0} | {udp:.0} |");
    }
}
