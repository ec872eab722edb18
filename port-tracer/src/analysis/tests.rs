//! The analyses on synthetic tracker outputs.

use super::*;
use crate::lifetime::{time, time_of};
use crate::{
    event::{Comm, Endpoints, Event, Family, Origin, Proto, Task},
    lifetime::{Lifetime, Output, Tracker},
};

const NS: u32 = 7;
const S: u64 = 1_000_000_000;

fn task(pid: u32) -> Task {
    Task {
        pid,
        tid: pid,
        uid: 0,
        ppid: Some(1),
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
        ends: ends(Proto::Tcp, lport, 80),
        origin,
        task: task(pid),
        ..crate::testing::event(Kind::Assign, ts, sock, lport)
    })
}

/// The lifetime of socket `sock` assigned at `from`, released at `to`.
fn ended(sock: u64, lport: u16, from: u64, tw: Option<u64>, to: Option<u64>, pid: u32) -> Output {
    Output::Lifetime(Lifetime {
        assigned: time(from),
        released: time_of(to),
        time_wait_start: time_of(tw),
        ..Lifetime::new(
            ends(Proto::Tcp, lport, 80),
            task(pid),
            Origin::Connect,
            sock,
        )
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

/// Feeds outputs made by hand, without a tracker: no handles in a slot, every analysis
/// looks its state up (as for lifetimes held at start).
fn feed(a: &mut Analysis, outputs: &[Output]) {
    for o in outputs {
        a.observe(o.as_ref(), None);
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
            assigned: time(1),
            released: time(2),
            ..Lifetime::new(ends(proto, 40000, rport), task(pid), origin, 1)
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
            origin: Origin::Connect,
            errno: 99,
            task: task(1),
            ..Event::new(Kind::AllocFailure, ts, 1, ends(Proto::Tcp, 0, rport))
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
        seen_at_close: false,
        ended_at_close: false,
        origin_guessed: false,
        owner_unknown: false,
        ends: ends(Proto::Tcp, 40004, 80),
        origin: Origin::Connect,
        errno: 0,
        task: task(1),
        alloc_ns: None,
        own_port_range: None,
    };
    let events = [
        ev(1, Kind::Assign, 1, false),
        ev(2, Kind::TimeWait, 2, true),
        ev(3, Kind::Release, 1, false),
        ev(9, Kind::Release, 2, true),
    ];
    for e in &events {
        t.process(e, &mut |e| a.observe(e.output, e.links));
    }
    t.finish(&mut |e| a.observe(e.output, e.links));
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

/// TCP `kind` event of socket `sock` from 127.0.0.1:`lport` to `raddr`:`rport`.
fn tcp_event(kind: Kind, ts: u64, sock: u64, lport: u16, raddr: &str, rport: u16) -> Event {
    let Output::Event(mut ev) = assign(ts, sock, lport, Origin::Connect, 1) else {
        unreachable!()
    };
    ev.kind = kind;
    ev.ends.raddr = raddr.parse().unwrap();
    ev.ends.rport = rport;
    ev
}

fn tcp_lifetime(ev: &Event, to: Option<u64>) -> Output {
    Output::Lifetime(Lifetime {
        assigned: time(ev.ts_ns),
        released: time_of(to),
        ..Lifetime::new(ev.ends, ev.task, ev.origin, ev.sock_id)
    })
}

/// A range of 20 ports; 20 connections to each of two destinations share them; then a
/// third destination, and 5 ports held by bind().
#[test]
fn connect_headroom_follows_the_kernels_rule_per_destination() {
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40019));
    let (d1, d2, d3) = ("127.0.0.2", "127.0.0.3", "127.0.0.4");
    let mut conns = Vec::new();
    for i in 0..20u16 {
        for (first_ts, first_sock, raddr) in [(10, 100, d1), (40, 200, d2)] {
            let (ts, sock) = (first_ts + u64::from(i), first_sock + u64::from(i));
            conns.push(tcp_event(Kind::Assign, ts, sock, 40000 + i, raddr, 5000));
        }
    }
    conns.sort_by_key(|e| e.ts_ns);
    for c in &conns {
        a.observe(OutputRef::Event(c), None);
    }
    // The 21st connect() to the first: no port left towards it.
    let refused = Event {
        kind: Kind::AllocFailure,
        errno: 99,
        ..tcp_event(Kind::AllocFailure, 70, 999, 0, d1, 5000)
    };
    a.observe(OutputRef::Event(&refused), None);
    let to_d3 = tcp_event(Kind::Assign, 80, 300, 40000, d3, 5000);
    a.observe(OutputRef::Event(&to_d3), None);
    for c in &conns {
        a.observe(tcp_lifetime(c, Some(90)).as_ref(), None);
    }
    // 5 ports held by bind(), by process 2: every destination's cost.
    let mut binds = Vec::new();
    for i in 0..5u16 {
        let b = Event {
            origin: Origin::Bind,
            task: task(2),
            ..tcp_event(
                Kind::Assign,
                100 + u64::from(i),
                400 + u64::from(i),
                40010 + i,
                "0.0.0.0",
                0,
            )
        };
        a.observe(OutputRef::Event(&b), None);
        binds.push(b);
    }
    // bind() to one of them again: EADDRINUSE, naming its holder.
    let in_use = Event {
        kind: Kind::AllocFailure,
        errno: 98,
        origin: Origin::Bind,
        task: task(3),
        ..tcp_event(Kind::AllocFailure, 110, 500, 40012, "0.0.0.0", 0)
    };
    a.observe(OutputRef::Event(&in_use), None);
    // The run ends: what is open is emitted open.
    a.observe(tcp_lifetime(&to_d3, None).as_ref(), None);
    for b in &binds {
        a.observe(tcp_lifetime(b, None).as_ref(), None);
    }
    let r = a.report(
        Span {
            start_ns: 0,
            end_ns: 120,
        },
        10,
    );

    let occupancy = &r.occupancy[0];
    assert_eq!(
        (occupancy.peak_ports, occupancy.range.as_ref().unwrap().size),
        (20, 20)
    );
    let dests: Vec<(&str, u32, u32, u32)> = r
        .destinations
        .iter()
        .map(|d| {
            let raddr = match d.raddr.to_string().as_str() {
                "127.0.0.2" => "d1",
                "127.0.0.3" => "d2",
                _ => "d3",
            };
            (raddr, d.min_headroom, d.peak_in_use, d.bind_held_at_min)
        })
        .collect();
    assert_eq!(
        dests,
        [("d1", 0, 20, 0), ("d2", 0, 20, 0), ("d3", 14, 1, 5)]
    );
    let d1 = &r.destinations[0];
    assert_eq!(
        (d1.min_headroom_ns, d1.in_use_at_min, d1.range_size),
        (29, 20, 20)
    );
    assert_eq!(d1.headroom_at_end, 15, "5 bind-held at the end");
    assert_eq!(d1.top_holders_at_min.len(), 1);
    assert_eq!(
        (
            d1.top_holders_at_min[0].pid,
            d1.top_holders_at_min[0].sockets
        ),
        (1, 20)
    );
    let d3 = &r.destinations[2];
    assert_eq!(d3.min_headroom_ns, 104, "when the fifth port was bound");
    let holders: Vec<(u32, u32)> = d3
        .top_holders_at_min
        .iter()
        .map(|h| (h.pid, h.sockets))
        .collect();
    assert_eq!(
        holders,
        [(2, 5), (1, 1)],
        "bind-held ports count against it"
    );

    let failures = &r.failures.groups;
    let notavail = failures.iter().find(|g| g.errno == 99).unwrap();
    let h = notavail.headroom.as_ref().unwrap();
    assert_eq!(
        (h.headroom, h.in_use, h.bind_held, h.range_size),
        (0, 20, 0, 20)
    );
    assert_eq!((h.top_holders[0].pid, h.top_holders[0].sockets), (1, 20));
    assert!(notavail.holders.is_none());
    let inuse = failures.iter().find(|g| g.errno == 98).unwrap();
    assert_eq!(inuse.lport, 40012);
    let holders = inuse.holders.as_ref().unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(
        (
            holders[0].pid,
            holders[0].origin,
            holders[0].state,
            holders[0].since_ns
        ),
        (2, "bind", holders::State::Bound, Some(102))
    );
    assert!(inuse.headroom.is_none());
}

#[test]
fn holders_of_a_port_say_listening_connected_and_time_wait() {
    let mut a = Analysis::new(0);
    let listener = Event {
        origin: Origin::Bind,
        ..tcp_event(Kind::Assign, 1, 1, 8080, "0.0.0.0", 0)
    };
    let accepted = Event {
        origin: Origin::Inherited,
        ..tcp_event(Kind::Assign, 2, 2, 8080, "127.0.0.9", 50000)
    };
    let client = tcp_event(Kind::Assign, 3, 3, 40001, "127.0.0.9", 80);
    for ev in [listener, accepted, client] {
        a.observe(OutputRef::Event(&ev), None);
    }
    let tw = Event {
        sock_id: 33,
        time_wait_sock: true,
        ..tcp_event(Kind::TimeWait, 4, 33, 40001, "127.0.0.9", 80)
    };
    a.observe(OutputRef::Event(&tw), None);
    let of = |a: &Analysis, port| {
        a.holders
            .of(&ends(Proto::Tcp, port, 0))
            .iter()
            .map(|h| (h.state, h.origin))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(&a, 8080),
        [
            (holders::State::Listening, "bind"),
            (holders::State::Connected, "inherited")
        ]
    );
    assert_eq!(of(&a, 40001), [(holders::State::TimeWait, "connect")]);
    // Released: no longer a holder.
    a.observe(tcp_lifetime(&client, Some(5)).as_ref(), None);
    assert!(of(&a, 40001).is_empty());
}

/// Half the range in TIME_WAIT towards one destination, while the range's peak is mostly
/// live connections elsewhere: the destination names its TIME_WAIT holders.
#[test]
fn a_destination_filled_by_time_wait_names_its_holders() {
    let mut a = Analysis::new(0);
    let mut in_time_wait = Vec::new();
    a.set_range(range(40000, 40019));
    for i in 0..10u16 {
        let t = 10 * u64::from(i) + 10;
        let c = tcp_event(
            Kind::Assign,
            t,
            100 + u64::from(i),
            40000 + i,
            "127.0.0.2",
            80,
        );
        a.observe(OutputRef::Event(&c), None);
        let tw = Event {
            sock_id: 900 + u64::from(i),
            time_wait_sock: true,
            ..tcp_event(Kind::TimeWait, t + 5, 0, 40000 + i, "127.0.0.2", 80)
        };
        a.observe(OutputRef::Event(&tw), None);
        in_time_wait.push((c, t + 5));
    }
    let mut live = Vec::new();
    for i in 0..20u16 {
        let c = Event {
            task: task(2),
            ..tcp_event(
                Kind::Assign,
                200 + u64::from(i),
                300 + u64::from(i),
                40000 + i,
                "127.0.0.3",
                80,
            )
        };
        a.observe(OutputRef::Event(&c), None);
        live.push(c);
    }
    // The end of the run: every lifetime is emitted, still open.
    for (c, tw) in in_time_wait {
        if let Output::Lifetime(mut lt) = tcp_lifetime(&c, None) {
            lt.time_wait_start = time(tw);
            a.observe(OutputRef::Lifetime(&lt), None);
        }
    }
    for c in &live {
        a.observe(tcp_lifetime(c, None).as_ref(), None);
    }
    let r = a.report(
        Span {
            start_ns: 0,
            end_ns: 300,
        },
        10,
    );
    let d = r
        .destinations
        .iter()
        .find(|d| d.raddr.to_string() == "127.0.0.2")
        .unwrap();
    assert_eq!((d.min_headroom, d.min_headroom_ns), (10, 100));
    assert_eq!(d.time_wait_share_at_min, Some(0.9));
    let found: Vec<(&str, u32)> = r.anti_patterns.iter().map(|f| (f.pattern, f.pid)).collect();
    assert_eq!(found, [("time_wait_bound_range", 1)]);
}

#[test]
fn allocator_time_is_split_by_how_full_the_range_was_for_that_search() {
    // 10 ports; connect()s to one destination take longer as it fills; a bind(0) search
    // sees distinct ports held (the same 10, then one more bound: a second address).
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40009));
    let timed = |o: Output, ns: u32| match o {
        Output::Event(ev) => Output::Event(Event {
            alloc_ns: Some(ns),
            ..ev
        }),
        o => o,
    };
    for i in 0..10u16 {
        // Before the i-th: i of 10 ports used towards it.
        let ns = 1000 * (u32::from(i) + 1);
        let o = assign(
            u64::from(i) + 1,
            u64::from(i) + 1,
            40000 + i,
            Origin::Connect,
            1,
        );
        feed(&mut a, &[timed(o, ns)]);
    }
    // Untimed (another tier's event) and a bind(0) with the range full of connections.
    feed(&mut a, &[assign(20, 20, 41000, Origin::Bind, 2)]);
    let mut b = assign(21, 21, 40005, Origin::BindEphemeral, 2);
    if let Output::Event(ev) = &mut b {
        ev.ends.laddr = "127.0.0.2".parse().unwrap();
    }
    feed(&mut a, &[timed(b, 70_000)]);
    let r = a.report(Span::default(), 10).allocator_time;
    assert_eq!(r.untimed, 1);
    assert_eq!(r.groups.len(), 2);
    let connect = r.groups.iter().find(|g| g.origin == "connect").unwrap();
    assert_eq!(connect.count, 10);
    assert_eq!(connect.max_ns, Some(10_000));
    let bands: Vec<(&str, u64, Option<u64>)> = connect
        .by_occupancy
        .iter()
        .map(|b| (b.label, b.count, b.max_ns))
        .collect();
    // 0-4 of 10 used: under 50%; 5-8: 50-90%; 9: 90-99%.
    assert_eq!(
        bands,
        [
            ("under 50%", 5, Some(5000)),
            ("50-90%", 4, Some(9000)),
            ("90-99%", 1, Some(10_000))
        ]
    );
    let bind = r
        .groups
        .iter()
        .find(|g| g.origin == "bind_ephemeral")
        .unwrap();
    assert_eq!(bind.by_occupancy[0].label, "99% and over");
    // The middle of 70,000's bucket: 65,536 to 73,728.
    assert_eq!(bind.p50_ns, Some(65_536 + 4_096), "{bind:?}");
}

/// The cgroup ids of [`task`]'s pids 1, 2 and 3 named in a recording's table: a docker
/// container (with its name), a host unit, and a cgroup that names neither.
fn named_cgroups() -> (crate::cgroups::Lookup, String) {
    use crate::cgroups::{Cgroups, Entry, RuntimeNames};
    let id = "4f1c8d0e9b2a".repeat(5) + "abcd";
    let cgroups = Cgroups::recorded();
    cgroups.insert(Entry {
        id: 41,
        path: format!("/system.slice/docker-{id}.scope"),
        runtime: RuntimeNames {
            container_name: Some("web".into()),
            ..RuntimeNames::default()
        },
    });
    cgroups.insert(Entry {
        id: 42,
        path: "/system.slice/cron.service".into(),
        runtime: RuntimeNames::default(),
    });
    cgroups.insert(Entry {
        id: 43,
        path: "/system.slice".into(),
        runtime: RuntimeNames::default(),
    });
    for id in [41, 42, 43] {
        cgroups.note(id);
    }
    (crate::cgroups::Lookup::new(cgroups), id)
}

/// (container id, unit, sockets) of a list of containers' sockets.
fn by_workload(v: &[containers::ContainerSockets]) -> Vec<(Option<&str>, Option<&str>, u32)> {
    v.iter()
        .map(|c| {
            let w = &c.workload;
            (w.container_id.as_deref(), w.unit.as_deref(), c.sockets)
        })
        .collect()
}

/// Connections from pids 1 (twice), 2 and 3 to one destination, all open at ts 4.
fn three_cgroups_connected() -> Analysis {
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40009));
    feed(
        &mut a,
        &[
            assign(1, 1, 40000, Origin::Connect, 1),
            assign(2, 2, 40001, Origin::Connect, 1),
            assign(3, 3, 40002, Origin::Connect, 2),
            assign(4, 4, 40003, Origin::Connect, 3),
            ended(1, 40000, 1, None, Some(10), 1),
            ended(2, 40001, 2, None, Some(11), 1),
            ended(3, 40002, 3, None, Some(12), 2),
            ended(4, 40003, 4, None, Some(13), 3),
        ],
    );
    a
}

#[test]
fn the_range_at_its_peak_is_grouped_by_container_and_unit() {
    let (mut names, id) = named_cgroups();
    let a = three_cgroups_connected();
    let mut r = a.report(
        Span {
            start_ns: 0,
            end_ns: 20,
        },
        10,
    );
    // Empty until named.
    assert!(r.occupancy[0].top_containers_at_peak.is_empty());
    r.name_containers(&mut names, 10);
    let g = &r.occupancy[0];
    assert_eq!(g.sockets_at_peak, 4);
    // pid 3's cgroup names neither a container nor a unit: left out.
    assert_eq!(
        by_workload(&g.top_containers_at_peak),
        [
            (Some(id.as_str()), None, 2),
            (None, Some("cron.service"), 1)
        ]
    );
    let c = &g.top_containers_at_peak[0].workload;
    assert_eq!(c.names.container_name.as_deref(), Some("web"));
    // The holders stay per process.
    assert_eq!(
        g.top_holders_at_peak
            .iter()
            .map(|h| (h.pid, h.sockets, h.cgroup_id))
            .collect::<Vec<_>>(),
        [(1, 2, 41), (2, 1, 42), (3, 1, 43)]
    );
    let json = serde_json::to_value(g).unwrap();
    assert_eq!(
        json["top_containers_at_peak"][0],
        serde_json::json!({"container_id": id, "pod_uid": null, "unit": null,
            "container_name": "web", "sockets": 2})
    );
    assert!(json.get("per_cgroup_at_peak").is_none());
}

#[test]
fn a_destinations_holders_at_its_minimum_are_grouped_by_container_and_unit() {
    let (mut names, id) = named_cgroups();
    let a = three_cgroups_connected();
    let mut r = a.report(Span::default(), 10);
    r.name_containers(&mut names, 10);
    let d = &r.destinations[0];
    assert_eq!((d.in_use_at_min, d.min_headroom), (4, 6));
    assert_eq!(
        by_workload(&d.top_containers_at_min),
        [
            (Some(id.as_str()), None, 2),
            (None, Some("cron.service"), 1)
        ]
    );
    assert_eq!(d.top_holders_at_min.len(), 3);
    // At most `top`.
    let mut r = a.report(Span::default(), 10);
    r.name_containers(&mut names, 1);
    assert_eq!(r.destinations[0].top_containers_at_min.len(), 1);
}

#[test]
fn failures_are_counted_by_container_and_unit_and_name_the_holders_containers() {
    let (mut names, id) = named_cgroups();
    let mut a = Analysis::new(0);
    let fail = |ts, pid, errno, lport, rport| {
        Output::Event(Event {
            origin: if rport == 0 {
                Origin::Bind
            } else {
                Origin::Connect
            },
            errno,
            task: task(pid),
            ..Event::new(Kind::AllocFailure, ts, 1, ends(Proto::Tcp, lport, rport))
        })
    };
    feed(
        &mut a,
        &[
            // pid 2 (cron.service) holds 40002, pid 3 (no container or unit) 40003.
            assign(1, 1, 40002, Origin::Connect, 2),
            assign(2, 2, 40003, Origin::Connect, 3),
            fail(5, 1, 99, 0, 80),
            fail(6, 1, 99, 0, 443),
            // Refused ports: held by the unit's process, and by pid 3.
            fail(7, 1, 98, 40002, 0),
            fail(8, 2, 99, 0, 80),
            fail(9, 3, 98, 40003, 0),
        ],
    );
    let mut f = a.report(Span::default(), 10).failures;
    assert!(f.by_container.is_empty());
    f.group_by_container(&mut names, 10);
    let by: Vec<_> = f
        .by_container
        .iter()
        .map(|c| {
            let w = &c.workload;
            (w.container_id.as_deref(), w.unit.as_deref(), c.count)
        })
        .collect();
    assert_eq!(
        by,
        [
            (Some(id.as_str()), None, 3),
            (None, Some("cron.service"), 1)
        ]
    );
    let holders_of = |lport: u16| {
        let g = f.groups.iter().find(|g| g.lport == lport).unwrap();
        let h = &g.holders.as_ref().unwrap()[0];
        (h.pid, h.container_id.clone(), h.unit.clone())
    };
    assert_eq!(holders_of(40002), (2, None, Some("cron.service".into())));
    assert_eq!(holders_of(40003), (3, None, None));
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(json["by_container"][1]["count"], 1);
    let g = json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["lport"] == 40003)
        .unwrap();
    // Named, or null: never absent.
    assert_eq!(g["holders"][0]["container_id"], serde_json::Value::Null);
    assert_eq!(g["holders"][0]["unit"], serde_json::Value::Null);
    assert!(g["holders"][0].get("cgroup_id").is_none());
}

#[test]
fn anti_patterns_name_the_container_or_unit_of_their_process() {
    let (mut names, id) = named_cgroups();
    let mut a = Analysis::new(0);
    let bind_then_connect = |sock, pid| {
        Output::Lifetime(Lifetime {
            assigned: time(1),
            released: time(2),
            ..Lifetime::new(
                ends(Proto::Tcp, 40000, 80),
                task(pid),
                Origin::BindEphemeral,
                sock,
            )
        })
    };
    feed(
        &mut a,
        &[
            bind_then_connect(1, 1),
            bind_then_connect(2, 1),
            bind_then_connect(3, 2),
            bind_then_connect(4, 3),
        ],
    );
    let mut r = a.report(Span::default(), 10);
    assert!(r.anti_patterns.iter().all(|f| f.container_id.is_none()));
    r.name_containers(&mut names, 10);
    let found: Vec<_> = r
        .anti_patterns
        .iter()
        .map(|f| (f.pid, f.count, f.container_id.as_deref(), f.unit.as_deref()))
        .collect();
    assert_eq!(
        found,
        [
            (1, 2, Some(id.as_str()), None),
            (2, 1, None, Some("cron.service")),
            (3, 1, None, None)
        ]
    );
    // TIME_WAIT-bound ranges name their holders' too.
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40001));
    feed(
        &mut a,
        &[
            assign(1, 1, 40000, Origin::Connect, 2),
            assign(2, 2, 40001, Origin::Connect, 2),
            ended(1, 40000, 1, Some(2), Some(60), 2),
            ended(2, 40001, 2, Some(3), Some(61), 2),
        ],
    );
    let mut r = a.report(Span::default(), 10);
    r.name_containers(&mut names, 10);
    let f = &r.anti_patterns[0];
    assert_eq!(
        (f.pattern, f.pid, f.unit.as_deref()),
        ("time_wait_bound_range", 2, Some("cron.service"))
    );
}

#[test]
fn a_process_in_two_cgroups_is_one_holder_named_by_the_one_with_most_sockets() {
    let mut a = Analysis::new(0);
    a.set_range(range(40000, 40009));
    let moved = |ts, sock, lport, cgroup_id| {
        Output::Event(Event {
            ends: ends(Proto::Tcp, lport, 80),
            origin: Origin::Connect,
            task: Task {
                cgroup_id,
                ..task(1)
            },
            ..crate::testing::event(Kind::Assign, ts, sock, lport)
        })
    };
    let lifetime = |sock, lport, from, cgroup_id| {
        Output::Lifetime(Lifetime {
            assigned: time(from),
            released: time(20),
            ..Lifetime::new(
                ends(Proto::Tcp, lport, 80),
                Task {
                    cgroup_id,
                    ..task(1)
                },
                Origin::Connect,
                sock,
            )
        })
    };
    feed(
        &mut a,
        &[
            moved(1, 1, 40000, 50),
            moved(2, 2, 40001, 51),
            moved(3, 3, 40002, 51),
            lifetime(1, 40000, 1, 50),
            lifetime(2, 40001, 2, 51),
            lifetime(3, 40002, 3, 51),
        ],
    );
    let r = a.report(Span::default(), 10);
    let h = &r.occupancy[0].top_holders_at_peak;
    assert_eq!(
        h.iter()
            .map(|h| (h.pid, h.sockets, h.cgroup_id))
            .collect::<Vec<_>>(),
        [(1, 3, 51)]
    );
    let d = &r.destinations[0].top_holders_at_min;
    assert_eq!(
        d.iter()
            .map(|h| (h.pid, h.sockets, h.cgroup_id))
            .collect::<Vec<_>>(),
        [(1, 3, 51)]
    );
}
