//! Decoded events: the kernel's records (`port_tracer_common::Record`) turned into typed
//! values, and back (for tests, benchmarks and synthetic traces).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use port_tracer_common::{
    body, flags, more_flags, record_len, Addrs4, Addrs6, Assigned, EventKind, Failed, Head, NoBody,
    Origin as RawOrigin, Owner, Record, AF_INET, AF_INET6, COMM_LEN, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Transport protocol of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// How a socket obtained its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Unknown,
    Bind,
    BindEphemeral,
    Connect,
    Autobind,
    Inherited,
    /// Held before tracing started.
    Preexisting,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Unknown => "unknown",
            Origin::Bind => "bind",
            Origin::BindEphemeral => "bind_ephemeral",
            Origin::Connect => "connect",
            Origin::Autobind => "autobind",
            Origin::Inherited => "inherited",
            Origin::Preexisting => "preexisting",
        }
    }

    /// Whether this origin takes a port from the kernel (accepted sockets share one).
    pub fn is_allocation(self) -> bool {
        !matches!(
            self,
            Origin::Inherited | Origin::Preexisting | Origin::Unknown
        )
    }

    pub(crate) fn from_raw(o: RawOrigin) -> Self {
        match o {
            RawOrigin::Unknown => Origin::Unknown,
            RawOrigin::Bind => Origin::Bind,
            RawOrigin::BindEphemeral => Origin::BindEphemeral,
            RawOrigin::Connect => Origin::Connect,
            RawOrigin::Autobind => Origin::Autobind,
            RawOrigin::Inherited => Origin::Inherited,
        }
    }
}

/// What an event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Assign,
    /// The socket learnt its remote endpoint; its port did not change.
    RemoteUpdate,
    Release,
    TimeWait,
    AllocFailure,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Assign => "assign",
            Kind::RemoteUpdate => "remote_update",
            Kind::Release => "release",
            Kind::TimeWait => "time_wait",
            Kind::AllocFailure => "alloc_failure",
        }
    }
}

/// A task name, as the kernel keeps it (up to 16 bytes, NUL padded).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm(pub [u8; COMM_LEN]);

impl Comm {
    pub fn new(s: &str) -> Self {
        let mut c = [0u8; COMM_LEN];
        let n = s.len().min(COMM_LEN - 1);
        c[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(c)
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.0[..end])
    }
}

/// As a string (trace files' held sockets).
impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Comm::new(&String::deserialize(d)?))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The process a socket event is attributed to. As a trace file's held sockets store it,
/// fields it lacks (written by an older version) are their defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// The process's parent (`getppid()`); None when not known (no owner, traces recorded
    /// before it was traced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub cgroup_id: u64,
    /// The process's name (its thread group leader's, as `ps` and /proc/PID/comm show).
    pub comm: Comm,
    /// The thread's own name (empty when not known: sockets held at start, traces
    /// recorded before it was traced).
    pub thread: Comm,
}

impl Task {
    pub fn is_known(&self) -> bool {
        self.pid != 0
    }

    /// The task a kernel record names (none when its pid is 0).
    pub fn from_owner(o: &Owner) -> Task {
        Task {
            pid: o.pid,
            tid: o.tid,
            uid: o.uid,
            ppid: (o.pid != 0).then_some(o.ppid),
            cgroup_id: o.cgroup_id,
            comm: Comm(o.comm),
            thread: Comm(o.thread),
        }
    }

    /// As a kernel record carries it.
    pub fn to_owner(&self) -> Owner {
        Owner {
            cgroup_id: self.cgroup_id,
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            ppid: self.ppid.unwrap_or(0),
            comm: self.comm.0,
            thread: self.thread.0,
        }
    }
}

/// The local and remote endpoints of a socket, in one network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub proto: Proto,
    pub family: Family,
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

impl Endpoints {
    /// Takes the peer from `other`, a later view of the same socket after connect(); a
    /// wildcard local address is replaced by the one connect() chose.
    pub fn learn_peer(&mut self, other: &Endpoints) {
        self.raddr = other.raddr;
        self.rport = other.rport;
        if self.laddr.is_unspecified() {
            self.laddr = other.laddr;
        }
    }
}

/// One decoded kernel event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub kind: Kind,
    /// Kernel address of the socket; see `port_tracer_common::Head::sock_id`.
    pub sock_id: u64,
    /// The socket is a TIME_WAIT socket.
    pub time_wait_sock: bool,
    /// Release of a TIME_WAIT socket by timer cancellation (maybe a re-arm).
    pub tw_cancel: bool,
    /// TIME_WAIT timer armed: `Some(true)` a re-arm of the same socket, `Some(false)` a new
    /// TIME_WAIT socket; `None` when the source does not say (other tiers, older traces).
    pub tw_rearm: Option<bool>,
    pub ends: Endpoints,
    pub origin: Origin,
    pub errno: i32,
    pub task: Task,
    /// Nanoseconds inside the kernel's port allocator, for assignments and failures on the
    /// tiers that hook it (fentry, kprobe); `None` elsewhere.
    pub alloc_ns: Option<u32>,
    /// The socket's own `IP_LOCAL_PORT_RANGE` (low, high), when it set one (Linux 6.3+;
    /// on assignments and failures).
    pub own_port_range: Option<(u16, u16)>,
    /// An assignment reported only when its socket closed (cgroup tier: UDP `connect()`
    /// autobind), timed and attributed as at the call that took the port.
    pub seen_at_close: bool,
    /// A release at the close of a socket that held no port any more (cgroup tier: a UDP
    /// `connect(AF_UNSPEC)` gave it back unseen); ends its lifetime, if one is open.
    pub ended_at_close: bool,
    /// A bind reported as `bind` because the cgroup tier could not tell bind(0) (see
    /// `port_tracer_common::more_flags::ORIGIN_GUESSED`).
    pub origin_guessed: bool,
    /// A connect's port reported without who connected (see
    /// `port_tracer_common::more_flags::OWNER_UNKNOWN`).
    pub owner_unknown: bool,
}

/// Why a ring buffer record could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Bytes of the record, and what its head says it should have.
    Size(usize, Option<usize>),
    Kind(u8),
    Proto(u8),
    Family(u8),
    Body(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Size(n, Some(want)) => write!(f, "record of {n} bytes, expected {want}"),
            DecodeError::Size(n, None) => write!(f, "record of {n} bytes: too short"),
            DecodeError::Kind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::Proto(p) => write!(f, "unknown protocol {p}"),
            DecodeError::Family(a) => write!(f, "unknown address family {a}"),
            DecodeError::Body(b) => write!(f, "unknown record body {b}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Bytes of every record's head.
pub const HEAD_LEN: usize = std::mem::size_of::<Head>();

/// A `T` at the start of `bytes` (plain integers: any bit pattern is valid), if long
/// enough.
fn read_pod<T: Copy>(bytes: &[u8], offset: usize) -> Option<T> {
    let b = bytes.get(offset..offset.checked_add(std::mem::size_of::<T>())?)?;
    // SAFETY: the length is checked; T is one of the `#[repr(C)]` plain-integer records of
    // port-tracer-common; read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) })
}

/// The bytes of a plain-integer record.
fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `#[repr(C)]` plain integers with explicit padding, fully initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), std::mem::size_of::<T>()) }
}

/// A record's head, if `bytes` holds one.
pub fn head(bytes: &[u8]) -> Option<Head> {
    read_pod(bytes, 0)
}

fn addr(family: Family, bytes: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

/// Who a raw record names, read without decoding the rest: the drain side's per-record
/// check for namespaces and cgroups not seen yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordOwner {
    pub netns: u32,
    /// 0s for a record without an owner (releases, TIME_WAIT transitions).
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
}

/// The namespace and owner of a raw record, without decoding the rest.
pub fn record_owner(bytes: &[u8]) -> Option<RecordOwner> {
    let h = head(bytes)?;
    let addrs = match h.family {
        AF_INET => std::mem::size_of::<Addrs4>(),
        AF_INET6 => std::mem::size_of::<Addrs6>(),
        _ => return None,
    };
    if h.body == body::NONE {
        return Some(RecordOwner {
            netns: h.netns,
            ..Default::default()
        });
    }
    let owner: Owner = read_pod(bytes, HEAD_LEN + addrs)?;
    Some(RecordOwner {
        netns: h.netns,
        pid: owner.pid,
        tid: owner.tid,
        cgroup_id: owner.cgroup_id,
    })
}

/// An event as a record of any layout gives it (its head's `body` and `len` aside), on its
/// way to the typed form.
pub(crate) struct Raw<'a> {
    pub head: Head,
    pub laddr: &'a [u8; 16],
    pub raddr: &'a [u8; 16],
    pub task: Task,
    pub errno: i32,
    pub alloc_ns: u32,
    pub own_port_range: u32,
}

impl Raw<'_> {
    /// The typed event these fields describe.
    pub(crate) fn event(&self) -> Result<Event, DecodeError> {
        let h = &self.head;
        let kind = match EventKind::from_u8(h.kind).ok_or(DecodeError::Kind(h.kind))? {
            EventKind::Assign if h.flags & flags::REMOTE_UPDATE != 0 => Kind::RemoteUpdate,
            EventKind::Assign => Kind::Assign,
            EventKind::Release => Kind::Release,
            EventKind::TimeWait => Kind::TimeWait,
            EventKind::AllocFailure => Kind::AllocFailure,
        };
        let proto = match h.proto {
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            p => return Err(DecodeError::Proto(p)),
        };
        let family = match h.family {
            AF_INET => Family::Ipv4,
            AF_INET6 => Family::Ipv6,
            f => return Err(DecodeError::Family(f)),
        };
        Ok(Event {
            ts_ns: h.ts_ns,
            kind,
            sock_id: h.sock_id,
            time_wait_sock: h.flags & flags::TIME_WAIT_SOCK != 0,
            tw_cancel: h.flags & flags::TW_CANCEL != 0,
            tw_rearm: (h.flags & flags::TW_ARM_KNOWN != 0)
                .then_some(h.flags & flags::TW_REARM != 0),
            ends: Endpoints {
                proto,
                family,
                netns: h.netns,
                laddr: addr(family, self.laddr),
                lport: h.lport,
                raddr: addr(family, self.raddr),
                rport: h.rport,
            },
            origin: Origin::from_raw(RawOrigin::from_u8(h.origin)),
            errno: self.errno,
            task: self.task,
            alloc_ns: (h.flags & flags::ALLOC_TIMED != 0).then_some(self.alloc_ns),
            own_port_range: (self.own_port_range != 0).then_some((
                self.own_port_range as u16,
                (self.own_port_range >> 16) as u16,
            )),
            seen_at_close: h.flags & flags::SEEN_AT_CLOSE != 0,
            ended_at_close: h.flags & flags::GONE_BEFORE_CLOSE != 0,
            origin_guessed: h.more_flags & more_flags::ORIGIN_GUESSED != 0,
            owner_unknown: h.more_flags & more_flags::OWNER_UNKNOWN != 0,
        })
    }
}

impl Event {
    /// An event of `kind` at `ts_ns` for socket `sock_id` with endpoints `ends`: origin
    /// unknown, no task, no flag; set the rest on top.
    pub fn new(kind: Kind, ts_ns: u64, sock_id: u64, ends: Endpoints) -> Event {
        Event {
            ts_ns,
            kind,
            sock_id,
            time_wait_sock: false,
            tw_cancel: false,
            tw_rearm: None,
            ends,
            origin: Origin::Unknown,
            errno: 0,
            task: Task::default(),
            alloc_ns: None,
            own_port_range: None,
            seen_at_close: false,
            ended_at_close: false,
            origin_guessed: false,
            owner_unknown: false,
        }
    }

    /// Decodes one kernel record (`port_tracer_common::Record`): its head, the addresses of
    /// its family, the body its head names.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let h = head(bytes).ok_or(DecodeError::Size(bytes.len(), None))?;
        let want = record_len(h.family, h.body);
        if want != Some(bytes.len()) || usize::from(h.len) != bytes.len() {
            return match want {
                None if record_len(h.family, body::NONE).is_none() => {
                    Err(DecodeError::Family(h.family))
                }
                None => Err(DecodeError::Body(h.body)),
                Some(_) => Err(DecodeError::Size(bytes.len(), want)),
            };
        }
        let mut laddr = [0u8; 16];
        let mut raddr = [0u8; 16];
        let addrs_len = if h.family == AF_INET {
            let a: Addrs4 = read_pod(bytes, HEAD_LEN).expect("length checked");
            laddr[..4].copy_from_slice(&a.laddr);
            raddr[..4].copy_from_slice(&a.raddr);
            std::mem::size_of::<Addrs4>()
        } else {
            let a: Addrs6 = read_pod(bytes, HEAD_LEN).expect("length checked");
            (laddr, raddr) = (a.laddr, a.raddr);
            std::mem::size_of::<Addrs6>()
        };
        let at = HEAD_LEN + addrs_len;
        let (owner, alloc, errno) = match h.body {
            body::ASSIGNED => {
                let b: Assigned = read_pod(bytes, at).expect("length checked");
                (Some(b.owner), b.alloc, 0)
            }
            body::FAILED => {
                let b: Failed = read_pod(bytes, at).expect("length checked");
                (Some(b.owner), b.alloc, b.errno)
            }
            _ => (None, Default::default(), 0),
        };
        Raw {
            head: h,
            laddr: &laddr,
            raddr: &raddr,
            task: owner.as_ref().map(Task::from_owner).unwrap_or_default(),
            errno,
            alloc_ns: alloc.alloc_ns,
            own_port_range: alloc.own_port_range,
        }
        .event()
    }

    /// The kernel record of this event, as the kernel side would write it (tests,
    /// benchmarks, synthetic traces). Assignments carry their owner, but accepted sockets
    /// (which take their listener's) and updates of a peer; failures carry theirs and the
    /// errno; releases and TIME_WAIT transitions carry neither.
    pub fn encode(&self) -> Vec<u8> {
        let e = &self.ends;
        let mut flags = 0u8;
        let mut set = |on: bool, bit: u8| {
            if on {
                flags |= bit
            }
        };
        set(self.time_wait_sock, flags::TIME_WAIT_SOCK);
        set(self.tw_cancel, flags::TW_CANCEL);
        set(self.kind == Kind::RemoteUpdate, flags::REMOTE_UPDATE);
        set(self.tw_rearm.is_some(), flags::TW_ARM_KNOWN);
        set(self.tw_rearm == Some(true), flags::TW_REARM);
        set(self.alloc_ns.is_some(), flags::ALLOC_TIMED);
        set(self.seen_at_close, flags::SEEN_AT_CLOSE);
        set(self.ended_at_close, flags::GONE_BEFORE_CLOSE);
        let more = if self.origin_guessed {
            more_flags::ORIGIN_GUESSED
        } else {
            0
        } | if self.owner_unknown {
            more_flags::OWNER_UNKNOWN
        } else {
            0
        };
        let (kind, body) = match self.kind {
            Kind::Assign if self.origin == Origin::Inherited && !self.task.is_known() => {
                (EventKind::Assign, body::NONE)
            }
            Kind::Assign => (EventKind::Assign, body::ASSIGNED),
            Kind::RemoteUpdate => (EventKind::Assign, body::NONE),
            Kind::Release => (EventKind::Release, body::NONE),
            Kind::TimeWait => (EventKind::TimeWait, body::NONE),
            Kind::AllocFailure => (EventKind::AllocFailure, body::FAILED),
        };
        let family = match e.family {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        };
        let head = Head {
            ts_ns: self.ts_ns,
            sock_id: self.sock_id,
            netns: e.netns,
            lport: e.lport,
            rport: e.rport,
            kind: kind as u8,
            origin: raw_origin(self.origin) as u8,
            flags,
            more_flags: more,
            proto: match e.proto {
                Proto::Tcp => IPPROTO_TCP,
                Proto::Udp => IPPROTO_UDP,
            },
            family,
            body,
            len: record_len(family, body).expect("a known family and body") as u8,
        };
        let alloc = port_tracer_common::Alloc {
            alloc_ns: self.alloc_ns.unwrap_or(0),
            own_port_range: self
                .own_port_range
                .map_or(0, |(lo, hi)| u32::from(lo) | u32::from(hi) << 16),
        };
        let owner = self.task.to_owner();
        let octets = |a: IpAddr| match a {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                b
            }
            IpAddr::V6(v6) => v6.octets(),
        };
        let (l, r) = (octets(e.laddr), octets(e.raddr));
        fn bytes<A: Copy, B: Copy>(head: Head, addrs: A, body: B) -> Vec<u8> {
            pod_bytes(&Record { head, addrs, body }).to_vec()
        }
        let a4 = Addrs4 {
            laddr: [l[0], l[1], l[2], l[3]],
            raddr: [r[0], r[1], r[2], r[3]],
        };
        let a6 = Addrs6 { laddr: l, raddr: r };
        let assigned = Assigned { owner, alloc };
        let failed = Failed {
            owner,
            alloc,
            errno: self.errno,
            _pad: 0,
        };
        match (family, body) {
            (AF_INET, body::NONE) => bytes(head, a4, NoBody),
            (AF_INET, body::ASSIGNED) => bytes(head, a4, assigned),
            (AF_INET, _) => bytes(head, a4, failed),
            (_, body::NONE) => bytes(head, a6, NoBody),
            (_, body::ASSIGNED) => bytes(head, a6, assigned),
            (_, _) => bytes(head, a6, failed),
        }
    }
}

/// The kernel's number for an origin (`Preexisting`, which no record carries, as unknown).
fn raw_origin(o: Origin) -> RawOrigin {
    match o {
        Origin::Bind => RawOrigin::Bind,
        Origin::BindEphemeral => RawOrigin::BindEphemeral,
        Origin::Connect => RawOrigin::Connect,
        Origin::Autobind => RawOrigin::Autobind,
        Origin::Inherited => RawOrigin::Inherited,
        Origin::Unknown | Origin::Preexisting => RawOrigin::Unknown,
    }
}

/// Name of an allocation-failure errno.
pub fn errno_name(errno: i32) -> &'static str {
    port_tracer_common::errno::name(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::event;

    #[test]
    fn records_are_as_long_as_their_family_and_kind_need() {
        let mut ev = event(Kind::Release, 42, 0x10, 40000);
        assert_eq!(ev.encode().len(), 40);
        ev.kind = Kind::Assign;
        ev.task.pid = 7;
        assert_eq!(ev.encode().len(), 104);
        ev.kind = Kind::AllocFailure;
        assert_eq!(ev.encode().len(), 112);
        ev.ends.family = Family::Ipv6;
        ev.ends.laddr = "::1".parse().unwrap();
        ev.ends.raddr = "::1".parse().unwrap();
        assert_eq!(ev.encode().len(), 136);
    }

    #[test]
    fn every_kind_round_trips() {
        let mut assign = event(Kind::Assign, 42, 0x10, 40000);
        assign.task = Task {
            pid: 5,
            tid: 6,
            uid: 7,
            ppid: Some(1),
            cgroup_id: 9,
            comm: Comm::new("curl"),
            thread: Comm::new("worker"),
        };
        assign.alloc_ns = Some(1500);
        assign.own_port_range = Some((40000, 40100));
        let mut failure = assign;
        failure.kind = Kind::AllocFailure;
        failure.errno = 99;
        let mut accepted = event(Kind::Assign, 43, 0x11, 8080);
        accepted.origin = Origin::Inherited;
        let mut tw = event(Kind::TimeWait, 44, 0x12, 40000);
        tw.time_wait_sock = true;
        tw.tw_rearm = Some(true);
        let mut six = event(Kind::RemoteUpdate, 45, 0x13, 1);
        six.ends.family = Family::Ipv6;
        six.ends.laddr = "fe80::1".parse().unwrap();
        six.ends.raddr = "2001:db8::2".parse().unwrap();
        six.origin = Origin::Unknown;
        for ev in [assign, failure, accepted, tw, six] {
            assert_eq!(Event::decode(&ev.encode()), Ok(ev), "{ev:?}");
        }
        let o = record_owner(&assign.encode()).unwrap();
        assert_eq!((o.netns, o.pid, o.tid, o.cgroup_id), (7, 5, 6, 9));
        let o = record_owner(&tw.encode()).unwrap();
        assert_eq!((o.netns, o.pid, o.cgroup_id), (7, 0, 0));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::Size(10, None)));
        let good = event(Kind::Release, 1, 2, 3).encode();
        let mut bad = good.clone();
        bad[24] = 9; // kind
        assert_eq!(Event::decode(&bad), Err(DecodeError::Kind(9)));
        let mut bad = good.clone();
        bad[29] = 1; // family
        assert_eq!(Event::decode(&bad), Err(DecodeError::Family(1)));
        let mut bad = good.clone();
        bad[30] = 7; // body
        assert_eq!(Event::decode(&bad), Err(DecodeError::Body(7)));
        assert_eq!(
            Event::decode(&good[..39]),
            Err(DecodeError::Size(39, Some(40)))
        );
        let mut bad = good;
        bad[28] = 200; // protocol
        assert_eq!(Event::decode(&bad), Err(DecodeError::Proto(200)));
    }
}
