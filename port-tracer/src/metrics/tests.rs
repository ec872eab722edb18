use super::{encode, *};
use crate::lifetime::{time, time_of};
use crate::tally::{Tally, ORIGINS};
use crate::{
    event::{Event, Kind, Origin, Proto, Task},
    lifetime::{Lifetime, Output, OutputRef},
    testing::ends,
};

const NETNS: u32 = 7;

fn event(kind: Kind, proto: Proto, lport: u16, origin: Origin) -> Event {
    let mut e = ends(lport);
    e.proto = proto;
    Event {
        ends: e,
        origin,
        ..crate::testing::event(kind, 1, u64::from(lport), lport)
    }
}

fn assign(proto: Proto, lport: u16, origin: Origin) -> Output {
    Output::Event(event(Kind::Assign, proto, lport, origin))
}

fn ended(proto: Proto, lport: u16, origin: Origin, assigned: Option<u64>, ns: u64) -> Output {
    let mut e = ends(lport);
    e.proto = proto;
    Output::Lifetime(Lifetime {
        assigned: time_of(assigned),
        released: time(assigned.unwrap_or(0) + ns),
        ..Lifetime::new(e, Task::default(), origin, u64::from(lport))
    })
}

fn count(rows: &[(Proto, Origin, u64)], proto: Proto, origin: Origin) -> Option<u64> {
    rows.iter()
        .find(|r| r.0 == proto && r.1 == origin)
        .map(|r| r.2)
}

#[test]
fn origins_are_listed_in_discriminant_order() {
    for (i, o) in ORIGINS.iter().enumerate() {
        assert_eq!(*o as usize, i, "{o:?}");
    }
}

#[test]
fn allocations_and_releases_by_proto_and_origin() {
    let mut c = Tally::default();
    c.observe(assign(Proto::Tcp, 40000, Origin::Connect).as_ref());
    c.observe(assign(Proto::Tcp, 40001, Origin::Connect).as_ref());
    c.observe(assign(Proto::Tcp, 8080, Origin::Inherited).as_ref());
    c.observe(assign(Proto::Udp, 5353, Origin::Bind).as_ref());
    c.observe(ended(Proto::Tcp, 40000, Origin::Connect, Some(10), 5).as_ref());
    c.observe(ended(Proto::Udp, 6000, Origin::Preexisting, None, 5).as_ref());
    let s = Snapshot::of(&c, vec![]);
    assert_eq!(count(&s.allocations, Proto::Tcp, Origin::Connect), Some(2));
    assert_eq!(count(&s.allocations, Proto::Udp, Origin::Bind), Some(1));
    assert_eq!(count(&s.allocations, Proto::Udp, Origin::Connect), Some(0));
    // Accepted sockets share a port: no allocation, and no series for one.
    assert_eq!(count(&s.allocations, Proto::Tcp, Origin::Inherited), None);
    assert_eq!(s.allocations.len(), 8, "2 protocols x 4 allocating origins");
    assert_eq!(count(&s.releases, Proto::Tcp, Origin::Connect), Some(1));
    assert_eq!(count(&s.releases, Proto::Udp, Origin::Preexisting), Some(1));
    assert_eq!(s.releases.len(), 14);
}

#[test]
fn failures_by_errno_name() {
    let mut c = Tally::default();
    let mut f = event(Kind::AllocFailure, Proto::Tcp, 0, Origin::Connect);
    f.errno = libc::EADDRNOTAVAIL;
    c.observe(OutputRef::Event(&f));
    c.observe(OutputRef::Event(&f));
    f.errno = libc::EPERM;
    c.observe(OutputRef::Event(&f));
    f.errno = libc::EACCES; // also shown as "error": merged with EPERM
    c.observe(OutputRef::Event(&f));
    let s = Snapshot::of(&c, vec![]);
    assert_eq!(
        s.failures,
        vec![(Proto::Tcp, "EADDRNOTAVAIL", 2), (Proto::Tcp, "error", 2)]
    );
}

#[test]
fn live_ports_go_up_and_down() {
    let mut c = Tally::default();
    c.observe(assign(Proto::Tcp, 40000, Origin::Connect).as_ref());
    c.observe(assign(Proto::Tcp, 8080, Origin::Inherited).as_ref());
    c.observe(assign(Proto::Udp, 5353, Origin::Bind).as_ref());
    assert_eq!(
        Snapshot::of(&c, vec![]).live_ports,
        vec![(Proto::Tcp, NETNS, 2), (Proto::Udp, NETNS, 1)]
    );
    c.observe(ended(Proto::Tcp, 40000, Origin::Connect, Some(1), 1).as_ref());
    // Held before tracing: its start was never counted, so its end is not either.
    c.observe(ended(Proto::Tcp, 22, Origin::Preexisting, None, 1).as_ref());
    c.observe(ended(Proto::Udp, 5353, Origin::Bind, Some(1), 1).as_ref());
    assert_eq!(
        Snapshot::of(&c, vec![]).live_ports,
        vec![(Proto::Tcp, NETNS, 1)],
        "a namespace with nothing live leaves the gauge"
    );
}

#[test]
fn histogram_buckets_are_powers_of_two_seconds() {
    let mut c = Tally::default();
    // 1 µs is above 2^-20 s (0.95 µs): the 2^-19 s bucket.
    c.observe(ended(Proto::Tcp, 1, Origin::Bind, Some(10), 1_000).as_ref());
    // Exactly 1 s: within the 1 s bucket (`le` is inclusive).
    c.observe(ended(Proto::Tcp, 2, Origin::Bind, Some(10), 1_000_000_000).as_ref());
    c.observe(ended(Proto::Tcp, 3, Origin::Bind, Some(10), 1_000_000_001).as_ref());
    // A day: beyond the last bound.
    c.observe(ended(Proto::Tcp, 4, Origin::Bind, Some(10), 86_400_000_000_000).as_ref());
    let h = Snapshot::of(&c, vec![]).lifetimes;
    assert_eq!(h.count, 4);
    assert!(
        (h.sum_seconds - 86_402.000001001).abs() < 1e-6,
        "{}",
        h.sum_seconds
    );
    let at = |le: f64| h.buckets.iter().find(|b| b.0 == le).map(|b| b.1);
    assert_eq!(h.buckets.first().map(|b| b.0), Some(2f64.powi(-20)));
    assert_eq!(at(2f64.powi(-20)), Some(0));
    assert_eq!(at(2f64.powi(-19)), Some(1));
    assert_eq!(at(1.0), Some(1));
    assert_eq!(at(2.0), Some(1));
    assert_eq!(at(f64::INFINITY), Some(1));
    assert_eq!(h.buckets.iter().map(|b| b.1).sum::<u64>(), 4);
}

#[test]
fn occupancy_gauges_come_from_the_occupancy_analysis() {
    let mut a = crate::analysis::occupancy::Occupancy::new(0);
    a.set_range(crate::port_range::PortRange {
        netns: NETNS,
        low: 40000,
        high: 40009,
        reserved: "40009".into(),
    });
    for (proto, port) in [(Proto::Tcp, 40000), (Proto::Tcp, 8080), (Proto::Udp, 40001)] {
        if let Output::Event(ev) = assign(proto, port, Origin::Connect) {
            a.assigned(&ev, None);
        }
    }
    let mut unknown = event(Kind::Assign, Proto::Tcp, 40002, Origin::Connect);
    unknown.ends.netns = NETNS + 1;
    a.assigned(&unknown, None);
    let gauges = Occupancy::of(a.current());
    // 9 ports (one reserved); the namespace without a known range has no gauge.
    assert_eq!(
        gauges,
        vec![
            Occupancy {
                netns: NETNS,
                proto: Proto::Tcp,
                laddr: "*".into(),
                ratio: 1.0 / 9.0
            },
            Occupancy {
                netns: NETNS,
                proto: Proto::Tcp,
                laddr: "127.0.0.1".into(),
                ratio: 1.0 / 9.0
            },
            Occupancy {
                netns: NETNS,
                proto: Proto::Udp,
                laddr: "*".into(),
                ratio: 1.0 / 9.0
            },
            Occupancy {
                netns: NETNS,
                proto: Proto::Udp,
                laddr: "127.0.0.1".into(),
                ratio: 1.0 / 9.0
            },
        ]
    );
}

#[test]
fn the_exposition_has_every_family() {
    let mut c = Tally::default();
    c.observe(assign(Proto::Tcp, 40000, Origin::Connect).as_ref());
    // 3 µs inside the allocator (an untimed assignment, above, counts in no bucket).
    let mut timed = event(Kind::Assign, Proto::Tcp, 40001, Origin::Connect);
    timed.alloc_ns = Some(3_000);
    c.observe(OutputRef::Event(&timed));
    c.observe(ended(Proto::Udp, 5353, Origin::Bind, Some(10), 3_000_000_000).as_ref());
    let mut snapshot = Snapshot::of(&c, vec![("ringbuf_full", 3), ("undecodable", 0)]);
    snapshot.occupancy = vec![Occupancy {
        netns: NETNS,
        proto: Proto::Tcp,
        laddr: "*".into(),
        ratio: 0.1,
    }];
    let shared = std::sync::Arc::new(std::sync::Mutex::new(snapshot));
    let text = encode::text(&encode::registry(shared)).unwrap();
    for line in [
        "# TYPE port_tracer_allocations_total counter",
        "port_tracer_allocations_total{proto=\"tcp\",origin=\"connect\"} 2",
        "port_tracer_allocations_total{proto=\"udp\",origin=\"bind\"} 0",
        "port_tracer_releases_total{proto=\"udp\",origin=\"bind\"} 1",
        "# TYPE port_tracer_allocation_failures_total counter",
        "# TYPE port_tracer_live_ports gauge",
        "port_tracer_live_ports{proto=\"tcp\",netns=\"7\"} 2",
        "port_tracer_lost_events_total{reason=\"ringbuf_full\"} 3",
        "port_tracer_lost_events_total{reason=\"undecodable\"} 0",
        "# TYPE port_tracer_lifetime_seconds histogram",
        "port_tracer_lifetime_seconds_count 1",
        "port_tracer_lifetime_seconds_sum 3.0",
        "port_tracer_lifetime_seconds_bucket{le=\"2\"} 0",
        "port_tracer_lifetime_seconds_bucket{le=\"4\"} 1",
        "port_tracer_lifetime_seconds_bucket{le=\"+Inf\"} 1",
        "port_tracer_range_occupancy_ratio{netns=\"7\",proto=\"tcp\",laddr=\"*\"} 0.1",
        "# TYPE port_tracer_allocator_seconds histogram",
        "port_tracer_allocator_seconds_count{proto=\"tcp\",origin=\"connect\"} 1",
        "port_tracer_allocator_seconds_bucket{proto=\"tcp\",origin=\"connect\",le=\"1.9073486328125e-06\"} 0",
        "port_tracer_allocator_seconds_bucket{proto=\"tcp\",origin=\"connect\",le=\"3.814697265625e-06\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
}

#[test]
fn connect_headroom_is_exported_for_the_destinations_closest_to_running_out() {
    let mut a = crate::analysis::headroom::Headroom::new(0);
    a.set_range(crate::port_range::PortRange {
        netns: NETNS,
        low: 40000,
        high: 40009,
        reserved: String::new(),
    });
    // 3 ports towards 127.0.0.1:80, 1 towards 127.0.0.1:81 (a port shared), 30 more
    // destinations with one connection each.
    for (i, (lport, rport)) in [(40000, 80), (40001, 80), (40002, 80), (40000, 81)]
        .into_iter()
        .chain((0..30).map(|i| (40003, 1000 + i)))
        .enumerate()
    {
        let mut ev = event(Kind::Assign, Proto::Tcp, lport, Origin::Connect);
        ev.ts_ns = i as u64 + 1;
        ev.ends.rport = rport;
        a.assigned(&ev, None);
    }
    let closest = a.closest(HEADROOM_DESTINATIONS);
    assert_eq!(closest.len(), HEADROOM_DESTINATIONS, "bounded");
    assert_eq!((closest[0].rport, closest[0].ports), (80, 7));
    assert!(closest[1..].iter().all(|g| g.ports == 9), "{closest:?}");
    let mut snapshot = Snapshot::of(&Tally::default(), vec![]);
    snapshot.headroom = closest;
    let shared = std::sync::Arc::new(std::sync::Mutex::new(snapshot));
    let text = encode::text(&encode::registry(shared)).unwrap();
    let line = "port_tracer_connect_headroom{netns=\"7\",rport=\"80\",laddr=\"127.0.0.1\",raddr=\"127.0.0.1\"} 7";
    assert!(
        text.lines().any(|l| l == line),
        "missing `{line}` in:\n{text}"
    );
    assert!(
        text.contains("# TYPE port_tracer_connect_headroom gauge"),
        "{text}"
    );
}

#[test]
fn allocations_take_a_container_label_only_when_asked() {
    let per_cgroup = vec![
        ((5, Proto::Tcp, Origin::Connect), 2),
        ((6, Proto::Tcp, Origin::Connect), 1),
        ((7, Proto::Tcp, Origin::Connect), 4),
        ((0, Proto::Udp, Origin::Autobind), 1),
    ];
    // Cgroups 5 and 6 are one container (a nested cgroup), 7 a host unit, 0 unknown.
    let rows = by_container(per_cgroup, |id| match id {
        5 | 6 => Some("abcdef012345".into()),
        7 => Some("cron.service".into()),
        _ => None,
    });
    assert_eq!(
        rows,
        vec![
            (Proto::Tcp, Origin::Connect, "abcdef012345".into(), 3),
            (Proto::Tcp, Origin::Connect, "cron.service".into(), 4),
            (Proto::Udp, Origin::Autobind, String::new(), 1),
        ]
    );
    let plain = Snapshot::of(&Tally::default(), vec![]);
    let labelled = Snapshot {
        allocations_by_container: rows,
        ..plain.clone()
    };
    let text = |s: Snapshot| {
        let shared = std::sync::Arc::new(std::sync::Mutex::new(s));
        encode::text(&encode::registry(shared)).unwrap()
    };
    let (plain, labelled) = (text(plain), text(labelled));
    assert!(!plain.contains("container="), "{plain}");
    for line in [
        "port_tracer_allocations_total{proto=\"tcp\",origin=\"connect\",container=\"abcdef012345\"} 3",
        "port_tracer_allocations_total{proto=\"tcp\",origin=\"connect\",container=\"cron.service\"} 4",
        "port_tracer_allocations_total{proto=\"udp\",origin=\"autobind\",container=\"\"} 1",
    ] {
        assert!(labelled.lines().any(|l| l == line), "{line}\n{labelled}");
    }
}
