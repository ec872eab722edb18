//! Decoded events: the kernel's [`PortEvent`] records turned into typed values.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use port_tracer_common::{
    flags, more_flags, EventKind, Origin as RawOrigin, PortEvent, AF_INET, AF_INET6, COMM_LEN,
    IPPROTO_TCP, IPPROTO_UDP,
};
use serde::Serialize;

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

    fn from_raw(o: RawOrigin) -> Self {
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

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The process a socket event is attributed to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
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
    /// Kernel address of the socket; see [`PortEvent::sock_id`].
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
    Size(usize),
    Kind(u8),
    Proto(u8),
    Family(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Size(n) => write!(f, "record of {n} bytes, expected {}", RECORD_SIZE),
            DecodeError::Kind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::Proto(p) => write!(f, "unknown protocol {p}"),
            DecodeError::Family(a) => write!(f, "unknown address family {a}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Bytes of one ring buffer record.
const RECORD_SIZE: usize = std::mem::size_of::<PortEvent>();

fn addr(family: Family, bytes: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

/// The network namespace, pid and tid of a raw record, without decoding the rest (the
/// recorder's per-record check for namespaces it has not seen).
pub fn netns_and_thread(bytes: &[u8]) -> Option<(u32, u32, u32)> {
    let field = |offset: usize| {
        let b = bytes.get(offset..offset + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    };
    Some((
        field(std::mem::offset_of!(PortEvent, netns))?,
        field(std::mem::offset_of!(PortEvent, pid))?,
        field(std::mem::offset_of!(PortEvent, tid))?,
    ))
}

impl Event {
    /// Decodes one ring buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < RECORD_SIZE {
            return Err(DecodeError::Size(bytes.len()));
        }
        // SAFETY: the length is checked and PortEvent is plain integers (any bit pattern is
        // valid); read_unaligned copes with any alignment.
        let raw: PortEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_raw(&raw)
    }

    pub fn from_raw(raw: &PortEvent) -> Result<Self, DecodeError> {
        let kind = match EventKind::from_u8(raw.kind).ok_or(DecodeError::Kind(raw.kind))? {
            EventKind::Assign if raw.flags & flags::REMOTE_UPDATE != 0 => Kind::RemoteUpdate,
            EventKind::Assign => Kind::Assign,
            EventKind::Release => Kind::Release,
            EventKind::TimeWait => Kind::TimeWait,
            EventKind::AllocFailure => Kind::AllocFailure,
        };
        let proto = match raw.proto {
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            p => return Err(DecodeError::Proto(p)),
        };
        let family = match raw.family {
            AF_INET => Family::Ipv4,
            AF_INET6 => Family::Ipv6,
            f => return Err(DecodeError::Family(f)),
        };
        Ok(Event {
            ts_ns: raw.ts_ns,
            kind,
            sock_id: raw.sock_id,
            time_wait_sock: raw.flags & flags::TIME_WAIT_SOCK != 0,
            tw_cancel: raw.flags & flags::TW_CANCEL != 0,
            tw_rearm: (raw.flags & flags::TW_ARM_KNOWN != 0)
                .then_some(raw.flags & flags::TW_REARM != 0),
            ends: Endpoints {
                proto,
                family,
                netns: raw.netns,
                laddr: addr(family, &raw.laddr),
                lport: raw.lport,
                raddr: addr(family, &raw.raddr),
                rport: raw.rport,
            },
            origin: Origin::from_raw(RawOrigin::from_u8(raw.origin)),
            errno: raw.errno,
            task: Task {
                pid: raw.pid,
                tid: raw.tid,
                uid: raw.uid,
                cgroup_id: raw.cgroup_id,
                comm: Comm(raw.comm),
                thread: Comm(raw.thread),
            },
            alloc_ns: (raw.flags & flags::ALLOC_TIMED != 0).then_some(raw.alloc_ns),
            own_port_range: (raw.own_port_range != 0)
                .then_some((raw.own_port_range as u16, (raw.own_port_range >> 16) as u16)),
            seen_at_close: raw.flags & flags::SEEN_AT_CLOSE != 0,
            ended_at_close: raw.flags & flags::GONE_BEFORE_CLOSE != 0,
            origin_guessed: raw.more_flags & more_flags::ORIGIN_GUESSED != 0,
            owner_unknown: raw.more_flags & more_flags::OWNER_UNKNOWN != 0,
        })
    }
}

/// Name of an allocation-failure errno.
pub fn errno_name(errno: i32) -> &'static str {
    port_tracer_common::errno::name(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_record() {
        let mut raw = PortEvent::zeroed();
        raw.ts_ns = 42;
        raw.kind = EventKind::Assign as u8;
        raw.origin = RawOrigin::Connect as u8;
        raw.proto = IPPROTO_TCP;
        raw.family = AF_INET;
        raw.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.lport = 40000;
        raw.comm[..4].copy_from_slice(b"curl");
        let bytes: [u8; RECORD_SIZE] = unsafe { std::mem::transmute(raw) };
        let ev = Event::decode(&bytes).unwrap();
        assert_eq!(ev.kind, Kind::Assign);
        assert_eq!(ev.origin, Origin::Connect);
        assert_eq!(ev.ends.laddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.ends.lport, 40000);
        assert_eq!(ev.task.comm.as_str(), "curl");
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut raw = PortEvent::zeroed();
        raw.kind = 9;
        let bytes: [u8; RECORD_SIZE] = unsafe { std::mem::transmute(raw) };
        assert_eq!(Event::decode(&bytes), Err(DecodeError::Kind(9)));
        raw.kind = 1;
        raw.proto = IPPROTO_UDP;
        raw.family = 1;
        let bytes: [u8; RECORD_SIZE] = unsafe { std::mem::transmute(raw) };
        assert_eq!(Event::decode(&bytes), Err(DecodeError::Family(1)));
    }

    #[test]
    fn remote_update_flag_makes_its_own_kind() {
        let mut raw = PortEvent::zeroed();
        raw.kind = EventKind::Assign as u8;
        raw.flags = flags::REMOTE_UPDATE;
        raw.proto = IPPROTO_UDP;
        raw.family = AF_INET6;
        assert_eq!(Event::from_raw(&raw).unwrap().kind, Kind::RemoteUpdate);
    }
}
