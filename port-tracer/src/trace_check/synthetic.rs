//! Valid traces built from arbitrary bytes. Random bytes almost never get past the
//! checksums, and random records almost never name the same socket twice; these traces
//! pass every check and draw sockets, ports and addresses from small pools, so the
//! tracker sees assigns, releases and TIME_WAITs of the same sockets in any order.

use port_tracer_common::{flags, Origin as RawOrigin};

use super::ReplayLimits;
use crate::{
    event::{Comm, Endpoints, Event, Family, Kind, Origin, Proto, Task},
    lifetime::HeldAtStart,
    trace_file::{Metadata, PortRange, TraceWriter, RECORD_SIZE_VARIABLE},
};

/// Where a record's head gives its kind.
const KIND_AT: usize = std::mem::offset_of!(port_tracer_common::Head, kind);

/// Hands out the input's bytes in order, then zeros.
struct Draw<'a>(&'a [u8]);

impl Draw<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// One of `pool`, chosen by the next byte.
    fn pick<T: Copy>(&mut self, pool: &[T]) -> T {
        pool[self.byte() as usize % pool.len()]
    }
}

const LPORTS: [u16; 6] = [0, 80, 8080, 40000, 40001, 65535];
const RPORTS: [u16; 3] = [0, 80, 443];
const ADDRS: [[u8; 4]; 3] = [[0, 0, 0, 0], [127, 0, 0, 1], [10, 0, 0, 1]];

fn addr16(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&v4);
    a
}

/// One raw kernel record; `clock` is the trace's running time, which mostly rises.
fn record(d: &mut Draw, clock: &mut u64) -> Vec<u8> {
    let what = d.byte();
    // Kinds 1-4 as the kernel numbers them; 0 and 5 are invalid (undecodable records).
    let raw_kind = what % 6;
    let bits = (what / 6)
        & (flags::TIME_WAIT_SOCK
            | flags::TW_CANCEL
            | flags::REMOTE_UPDATE
            | flags::TW_ARM_KNOWN
            | flags::TW_REARM);
    let kind = match raw_kind {
        1 if bits & flags::REMOTE_UPDATE != 0 => Kind::RemoteUpdate,
        1 => Kind::Assign,
        3 => Kind::TimeWait,
        4 => Kind::AllocFailure,
        _ => Kind::Release,
    };
    let sock_id = 0x1000 + u64::from(d.byte() % 8);
    let ends = endpoints(d);
    let origin = Origin::from_raw(RawOrigin::from_u8(d.byte() % 7));
    let pid = u32::from(d.byte() % 3);
    // Mostly small steps forward (a few ms: about the reorder delay and the TIME_WAIT
    // re-arm grace), sometimes back by up to 0.35 ms, rarely a leap towards u64::MAX.
    let step = d.byte();
    *clock = match step {
        255 => clock.saturating_add(u64::MAX / 4),
        s => clock.saturating_add(u64::from(s) * 20_000),
    };
    let ts_ns = clock.saturating_sub(u64::from(d.byte() % 8) * 50_000);
    let ev = Event {
        time_wait_sock: bits & flags::TIME_WAIT_SOCK != 0,
        tw_cancel: bits & flags::TW_CANCEL != 0,
        tw_rearm: (bits & flags::TW_ARM_KNOWN != 0).then_some(bits & flags::TW_REARM != 0),
        origin,
        task: Task {
            pid,
            ppid: (pid != 0).then_some(1),
            ..Task::default()
        },
        ..Event::new(kind, ts_ns, sock_id, ends)
    };
    let mut bytes = ev.encode();
    if raw_kind == 0 || raw_kind == 5 {
        bytes[KIND_AT] = raw_kind;
    }
    bytes
}

/// A socket's endpoints: protocol, family and namespace from one byte, then ports and
/// addresses from the pools.
fn endpoints(d: &mut Draw) -> Endpoints {
    let ends = d.byte();
    let family = if ends & 2 == 0 {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    let ip = |a: [u8; 4]| match family {
        Family::Ipv4 => std::net::IpAddr::from(a),
        Family::Ipv6 => std::net::IpAddr::from(addr16(a)),
    };
    Endpoints {
        proto: if ends & 1 == 0 {
            Proto::Tcp
        } else {
            Proto::Udp
        },
        family,
        netns: u32::from(ends >> 2 & 1),
        lport: d.pick(&LPORTS),
        rport: d.pick(&RPORTS),
        laddr: ip(d.pick(&ADDRS)),
        raddr: ip(d.pick(&ADDRS)),
    }
}

fn held_socket(d: &mut Draw) -> HeldAtStart {
    let flags = d.byte();
    HeldAtStart {
        ends: endpoints(d),
        owner: Task {
            pid: u32::from(d.byte() % 3),
            tid: 1,
            cgroup_id: 1,
            comm: Comm::new("held"),
            ..Task::default()
        },
        listening: flags & 1 != 0,
        time_wait: flags & 2 != 0,
        seen_ns: 0,
    }
}

fn metadata() -> Metadata {
    Metadata {
        boot_id: None,
        part: None,
        recorded_only: None,
        host: "fuzz".into(),
        kernel_release: "6.18.0".into(),
        tier: "tracepoint".into(),
        port_tracer_version: env!("CARGO_PKG_VERSION").into(),
        record_size: RECORD_SIZE_VARIABLE,
        lost_reasons: port_tracer_common::lost::NAMES.map(String::from).to_vec(),
        realtime_offset_ns: 0,
        started_ns: 0,
        port_ranges: vec![PortRange {
            netns: 0,
            low: 32768,
            high: 60999,
            reserved: String::new(),
        }],
    }
}

/// A valid trace built from `data`, and the replay limits `data` chose (small ones, so
/// that eviction and the reorder window's early release are reached).
pub fn synthesize(data: &[u8]) -> (Vec<u8>, ReplayLimits) {
    let mut d = Draw(data);
    let limits = ReplayLimits {
        reorder_delay_ns: u64::from(d.byte() % 4) * 500_000,
        max_reorder_held: 1 + usize::from(d.byte() % 32),
        max_open: 1 + usize::from(d.byte() % 16),
    };
    let ends_cleanly = d.byte() & 1 == 0;
    let mut out = Vec::new();
    // Writes go to memory: they cannot fail.
    let mut w = TraceWriter::new(&mut out, &metadata()).expect("writing to memory");
    let mut clock = 1_000_000_000u64;
    let end_ns = u64::from(d.byte()) << 32;
    while !d.0.is_empty() {
        match d.byte() % 9 {
            0..=4 => w.push_record(&record(&mut d, &mut clock)),
            5 => w.write_events().expect("writing to memory"),
            6 => {
                let counts: Vec<u64> = (0..d.byte() % 5)
                    .map(|_| match d.byte() {
                        255 => u64::MAX,
                        n => n.into(),
                    })
                    .collect();
                w.write_lost(&counts).expect("writing to memory");
            }
            7 => {
                // Namespace 1's range arrives mid-trace; sometimes a tiny one, filled at once.
                let (low, span) = (40000 + u16::from(d.byte()), u16::from(d.byte() % 8));
                let range = PortRange {
                    netns: 1,
                    low,
                    high: low + span,
                    reserved: format!("{low}"),
                };
                w.write_ranges(&[range]).expect("writing to memory");
            }
            _ => {
                let held: Vec<HeldAtStart> =
                    (0..1 + d.byte() % 3).map(|_| held_socket(&mut d)).collect();
                w.write_held(&held).expect("writing to memory");
            }
        }
    }
    if ends_cleanly {
        w.finish(end_ns).expect("writing to memory");
    } else {
        w.write_events().expect("writing to memory");
    }
    drop(w);
    (out, limits)
}
