//! The analyses on synthetic tracker outputs.

use super::*;
use crate::lifetime::{time, time_of};
use crate::{
    event::{Comm, Endpoints, Event, Family, Origin, Proto, Task},
    lifetime::{Lifetime, Tracker},
};

const NS: u32 = 7;
const S: u64 = 1_000_000_000;

fn task(pid: u32) -> Task {
    Task {
        pid,
        tid: pid,
        uid: 0,
        cgroup_id: 40 + u64::from(pid),
        comm: Comm::new(&format!("app{pid}")),
        thread: Comm::new(&format!("worker{pid}")),
    }
}

fn ends(proto: Proto, lport: u16, rport: u16) -> Endpoints {
    Endpoints {
        proto,
        family: Family::Ipv4,
        netns: NS,
        laddr: "127.0.0.1".parse().unwrap(),
        lport,
        raddr: "127.0.0.1".parse().unwrap(),
        rport,
    }
}

fn assign(ts: u64, sock: u64, lport: u16, origin: Origin, pid: u32) -> Output {
    Output::Event(Event {
        ts_ns: ts,
        kind: Kind::Assign,
        sock_id: sock,
        time_wait_sock: false,
        tw_cancel: false,
        tw_rearm: None,
        ends: ends(Proto::Tcp, lport, 80),
        origin,
        errno: 0,
        task: task(pid),
    })
}

/// The lifetime of socket `sock` assigned at `from`, released at `to`.
fn ended(sock: u64, lport: u16, from: u64, tw: Option<u64>, to: Option<u64>, pid: u32) -> Output {
    Output::Lifetime(Lifetime {
        ends: ends(Proto::Tcp, lport, 80),
        owner: task(pid),
        origin: Origin::Connect,
        sock_id: sock,
        assigned: time(from),
        released: time_of(to),
        time_wait_start: time_of(tw),
        lossy: false,
        laddr_learnt: false,
    })
}

fn range(low: u16, high: u16) -> PortRange {
    PortRange {
        netns: NS,
        low,
        high,
        reserved: String::new(),
    }
}

fn feed(a: &mut Analysis, outputs: &[Output]) {
    for o in outputs {
        a.observe(o);
    }
}

#[test]
fn churn_counts_allocations_by_process_origin_and_second() {
    let mut a = Analysis::new(0);
    feed(
        &mut a,
        &[
            assign(S / 2, 1, 40000, Origin::Connect, 1),
            assign(S + 1, 2, 40001, Origin::Connect, 1),
            assign(S + 2, 3, 40002, Origin::BindEphemeral, 2),
            // Accepted sockets share their listener's port: not allocations.
            assign(S + 3, 4, 8080, Origin::Inherited, 2),
        ],
    );
    let r = a.report(
        Span {
            start_ns: 0,
            end_ns: 2 * S,
        },
        10,
    );
    let c = &r.churn;
    assert_eq!(c.allocations, 3);
    assert_eq!(c.per_second, Some(1.5));
    assert_eq!((c.peak_per_second, c.peak_second_ns), (2, Some(S)));
    assert_eq!(
        c.by_origin
            .iter()
            .map(|c| (c.key.as_str(), c.allocations))
            .collect::<Vec<_>>(),
        [("connect", 2), ("bind_ephemeral", 1)]
    );
    assert_eq!(c.by_process[0].pid, 1);
    assert_eq!(c.by_process[0].allocations, 2);
    assert_eq!(c.by_process[0].per_second, Some(1.0));
    assert_eq!(c.by_cgroup[0].key, "41");
    assert_eq!(c.by_netns[0].key, "7");
    assert_eq!(c.by_proto[0].key, "tcp");
}

#[test]
fn occupancy_peaks_on_distinct_ports_in_the_range_with_holders_and_time_wait() {
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40003));
    feed(
        &mut a,
        &[
            assign(1, 1, 40000, Origin::Connect, 1),
            assign(2, 2, 40001, Origin::Connect, 1),
            // Outside the range: held, but not part of the occupancy.
            assign(3, 9, 8080, Origin::Bind, 3),
            // The same port towards another destination: still 2 distinct ports.
            assign(4, 3, 40000, Origin::Connect, 2),
            assign(5, 4, 40002, Origin::Connect, 2),
            ended(1, 40000, 1, None, Some(6), 1),
            ended(3, 40000, 4, None, Some(7), 2),
            ended(2, 40001, 2, Some(3), Some(10), 1),
            ended(9, 8080, 3, None, Some(11), 3),
            // Still open at the end.
            ended(4, 40002, 5, None, None, 2),
        ],
    );
    let r = a.report(
        Span {
            start_ns: 0,
            end_ns: 12,
        },
        10,
    );
    assert_eq!(r.occupancy.len(), 1, "one address: no all-address group");
    let g = &r.occupancy[0];
    assert_eq!((g.netns, g.proto), (NS, "tcp"));
    assert_eq!(g.range.as_ref().unwrap().size, 4);
    assert_eq!((g.peak_ports, g.peak_ns), (3, Some(5)));
    assert_eq!(g.peak_ratio, Some(0.75));
    // At 5: sockets 1, 2 (in TIME_WAIT since 3), 3 and 4.
    assert_eq!(g.sockets_at_peak, 4);
    assert_eq!(g.time_wait_share_at_peak, Some(0.25));
    assert_eq!(
        g.top_holders_at_peak
            .iter()
            .map(|h| (h.pid, h.sockets))
            .collect::<Vec<_>>(),
        [(1, 2), (2, 2)]
    );
    // In the range: 5 + 3 + 8 ns held by ended lifetimes, 7 of them in TIME_WAIT, and 6
    // by the open one up to the last time seen (11).
    assert_eq!(g.time_wait_share_of_port_time, Some(7.0 / 22.0));
    assert_eq!(g.ports_held_at_end, 1, "the open one");
    assert_eq!(g.over_time.max, vec![3]);
}

#[test]
fn a_namespace_without_a_known_range_counts_every_port() {
    let mut a = Analysis::new(0);
    feed(
        &mut a,
        &[
            assign(1, 1, 80, Origin::Bind, 1),
            assign(2, 2, 40000, Origin::Connect, 1),
        ],
    );
    let g = &a.report(Span::default(), 10).occupancy[0];
    assert_eq!(g.peak_ports, 2);
    assert_eq!((g.range.as_ref(), g.peak_ratio), (None, None));
}

#[test]
fn ports_held_at_start_occupy_the_range_until_released() {
    let mut a = Analysis::new(100);
    a.set_range(range(40000, 40009));
    let held = crate::lifetime::HeldAtStart {
        ends: ends(Proto::Tcp, 40005, 80),
        owner: task(5),
        listening: false,
        time_wait: false,
        seen_ns: 0,
    };
    a.held_at_start(&held);
    feed(&mut a, &[assign(150, 1, 40001, Origin::Connect, 1)]);
    let mut lt = held.lifetime();
    lt.released = time(200);
    feed(&mut a, &[Output::Lifetime(lt)]);
    let g = &a.report(Span::default(), 10).occupancy[0];
    assert_eq!(
        (g.peak_ports, g.peak_ns, g.ports_held_at_end),
        (2, Some(150), 1)
    );
    assert_eq!(
        g.top_holders_at_peak.len(),
        1,
        "pid 1's is still open: not ended yet"
    );
    assert_eq!(g.top_holders_at_peak[0].pid, 5);
}

#[test]
fn groups_per_address_and_for_all_addresses_when_there_are_several() {
    let mut a = Analysis::new(0);
    let mut other = assign(2, 2, 40001, Origin::Connect, 1);
    if let Output::Event(ev) = &mut other {
        ev.ends.laddr = "10.0.0.1".parse().unwrap();
    }
    feed(&mut a, &[assign(1, 1, 40000, Origin::Connect, 1), other]);
    let r = a.report(Span::default(), 10);
    assert_eq!(r.occupancy.len(), 3);
    assert_eq!(r.occupancy[0].laddr, None);
    assert_eq!(r.occupancy[0].peak_ports, 2);
}

#[test]
fn reuse_interval_runs_from_release_to_the_next_allocation_of_the_port() {
    let mut a = Analysis::new(0);
    feed(
        &mut a,
        &[
            assign(1, 1, 40000, Origin::Connect, 1),
            ended(1, 40000, 1, None, Some(10), 1),
            assign(13, 2, 40000, Origin::Connect, 1),
        ],
    );
    let r = a.report(Span::default(), 10);
    assert_eq!(r.port_reuse_histogram.len(), 1);
    assert_eq!(
        (
            r.port_reuse_histogram[0].lt_ns,
            r.port_reuse_histogram[0].count
        ),
        (4, 1)
    );
}

#[test]
fn bind_zero_before_connect_is_named_with_its_process() {
    let mut a = Analysis::new(0);
    let lifetime = |origin, proto, rport, pid| {
        Output::Lifetime(Lifetime {
            ends: ends(proto, 40000, rport),
            owner: task(pid),
            origin,
            sock_id: 1,
            assigned: time(1),
            released: time(2),
            time_wait_start: None,
            lossy: false,
            laddr_learnt: false,
        })
    };
    feed(
        &mut a,
        &[
            lifetime(Origin::BindEphemeral, Proto::Tcp, 80, 1),
            lifetime(Origin::BindEphemeral, Proto::Tcp, 81, 1),
            // With IP_BIND_ADDRESS_NO_PORT connect() assigns the port.
            lifetime(Origin::Connect, Proto::Tcp, 80, 2),
            // A listener, and UDP, bind first by nature.
            lifetime(Origin::BindEphemeral, Proto::Tcp, 0, 3),
            lifetime(Origin::BindEphemeral, Proto::Udp, 53, 4),
        ],
    );
    let found = a.report(Span::default(), 10).anti_patterns;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].pattern, found[0].pid, found[0].count),
        ("bind_before_connect", 1, 2)
    );
    assert!(found[0].advice.contains("IP_BIND_ADDRESS_NO_PORT"));
}

#[test]
fn a_range_filled_by_time_wait_names_its_holders() {
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40001));
    feed(
        &mut a,
        &[
            assign(1, 1, 40000, Origin::Connect, 1),
            assign(2, 2, 40001, Origin::Connect, 1),
            ended(1, 40000, 1, Some(2), Some(60), 1),
            ended(2, 40001, 2, Some(3), Some(61), 1),
        ],
    );
    let r = a.report(Span::default(), 10);
    assert_eq!(r.occupancy[0].time_wait_share_at_peak, Some(0.5));
    let found = &r.anti_patterns;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].pattern, found[0].pid),
        ("time_wait_bound_range", 1)
    );
}

#[test]
fn failures_are_grouped_by_process_destination_and_error() {
    let mut a = Analysis::new(0);
    let fail = |ts, rport| {
        Output::Event(Event {
            ts_ns: ts,
            kind: Kind::AllocFailure,
            sock_id: 1,
            time_wait_sock: false,
            tw_cancel: false,
            tw_rearm: None,
            ends: ends(Proto::Tcp, 0, rport),
            origin: Origin::Connect,
            errno: 99,
            task: task(1),
        })
    };
    feed(&mut a, &[fail(5, 80), fail(7, 80), fail(8, 443)]);
    let f = a.report(Span::default(), 1).failures;
    assert_eq!((f.total, f.not_shown, f.groups.len()), (3, 1, 1));
    let g = &f.groups[0];
    assert_eq!((g.count, g.first_ns, g.last_ns, g.rport), (2, 5, 7, 80));
    assert_eq!(
        (g.error, g.pid, g.comm.as_str()),
        ("EADDRNOTAVAIL", 1, "app1")
    );
}

#[test]
fn time_wait_seen_through_the_tracker_counts_at_the_peak() {
    // Real tracker outputs: connect, TIME_WAIT on the 4-tuple, end of TIME_WAIT.
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40009));
    let mut t = Tracker::new();
    let ev = |ts, kind, sock, tw_sock| Event {
        ts_ns: ts,
        kind,
        sock_id: sock,
        time_wait_sock: tw_sock,
        tw_cancel: false,
        tw_rearm: None,
        ends: ends(Proto::Tcp, 40004, 80),
        origin: Origin::Connect,
        errno: 0,
        task: task(1),
    };
    let events = [
        ev(1, Kind::Assign, 1, false),
        ev(2, Kind::TimeWait, 2, true),
        ev(3, Kind::Release, 1, false),
        ev(9, Kind::Release, 2, true),
    ];
    for e in &events {
        t.process(e, &mut |o| a.observe(&o));
    }
    t.finish(&mut |o| a.observe(&o));
    let g = &a.report(Span::default(), 10).occupancy[0];
    assert_eq!(
        (g.peak_ports, g.ports_held_at_end, g.sockets_at_peak),
        (1, 0, 1)
    );
    assert_eq!(g.time_wait_share_of_port_time, Some(7.0 / 8.0));
}

#[test]
fn time_wait_sockets_held_at_start_count_as_time_wait_held_by_no_process() {
    // 6 TIME_WAIT sockets found at start fill most of a 10-port range: at the peak they are
    // TIME_WAIT, held by no process, and the range is bound by TIME_WAIT.
    let mut a = Analysis::new(100);
    a.set_range(range(40000, 40009));
    let held: Vec<crate::lifetime::HeldAtStart> = (0..6)
        .map(|i| crate::lifetime::HeldAtStart {
            ends: ends(Proto::Tcp, 40000 + i, 80),
            owner: Task::default(),
            listening: false,
            time_wait: true,
            seen_ns: 90,
        })
        .collect();
    for h in &held {
        a.held_at_start(h);
    }
    let ended: Vec<Output> = held
        .iter()
        .map(|h| {
            let mut lt = h.lifetime();
            lt.released = time(1_000);
            Output::Lifetime(lt)
        })
        .collect();
    feed(&mut a, &ended);
    let r = a.report(Span::default(), 10);
    let g = &r.occupancy[0];
    assert_eq!((g.peak_ports, g.sockets_at_peak), (6, 6));
    assert_eq!(g.time_wait_share_at_peak, Some(1.0));
    assert_eq!(
        g.time_wait_share_of_port_time,
        Some(1.0),
        "counted from the start, not the snapshot"
    );
    assert_eq!(g.top_holders_at_peak.len(), 1);
    assert!(g.top_holders_at_peak[0].no_process);
    assert_eq!(g.top_holders_at_peak[0].sockets, 6);
    let f = r
        .anti_patterns
        .iter()
        .find(|f| f.pattern == "time_wait_bound_range")
        .expect("a range bound by TIME_WAIT");
    assert!(f.no_process && f.count == 6, "{f:?}");
}
