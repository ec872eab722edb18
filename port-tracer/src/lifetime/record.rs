//! One socket's hold on one local port ([`Lifetime`]), what the tracker emits
//! ([`Output`]), and the sockets found holding ports at the start ([`HeldAtStart`]).

use std::num::NonZeroU64;

use crate::event::{Endpoints, Event, Origin, Proto, Task};

/// A CLOCK_MONOTONIC time in ns that may be unknown, in 8 bytes where `Option<u64>` takes
/// 16: a million open lifetimes carry three. A time of 0 (never seen on a running host) is
/// kept as 1.
pub type Time = Option<NonZeroU64>;

/// `ns` as a known [`Time`].
pub fn time(ns: u64) -> Time {
    NonZeroU64::new(ns.max(1))
}

/// `ns`, if known, as a [`Time`].
pub fn time_of(ns: Option<u64>) -> Time {
    ns.and_then(time)
}

/// One socket's hold on one local port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub ends: Endpoints,
    /// Who obtained the port (for accepted sockets: the listener's owner).
    pub owner: Task,
    pub origin: Origin,
    pub sock_id: u64,
    /// When the port was obtained; None when it was held before tracing started.
    pub assigned: Time,
    /// When the kernel took it back; None while the port is still held.
    pub released: Time,
    /// When the port moved to a TIME_WAIT socket.
    pub time_wait_start: Time,
    /// Events were lost while this lifetime was open: it may be incomplete.
    pub lossy: bool,
    /// `ends.laddr` was the wildcard when the port was assigned; connect() chose it later.
    pub laddr_learnt: bool,
    /// Its assignment was reported only when the socket closed (see
    /// [`Event::seen_at_close`]): until then, live views did not show it.
    pub seen_at_close: bool,
    /// It ended when its socket closed, which may be after the port was given back (see
    /// [`Event::ended_at_close`]).
    pub ended_at_close: bool,
    /// Nanoseconds the kernel's allocator took to give the port (fentry and kprobe tiers).
    pub alloc_ns: Option<u32>,
}

impl Lifetime {
    /// A lifetime of socket `sock_id` with endpoints `ends`, owned by `owner`, obtained by
    /// `origin`: no time known, no flag set; set the rest on top.
    pub fn new(ends: Endpoints, owner: Task, origin: Origin, sock_id: u64) -> Lifetime {
        Lifetime {
            ends,
            owner,
            origin,
            sock_id,
            assigned: None,
            released: None,
            time_wait_start: None,
            lossy: false,
            laddr_learnt: false,
            seen_at_close: false,
            ended_at_close: false,
            alloc_ns: None,
        }
    }

    pub fn assigned_ns(&self) -> Option<u64> {
        self.assigned.map(NonZeroU64::get)
    }

    pub fn released_ns(&self) -> Option<u64> {
        self.released.map(NonZeroU64::get)
    }

    pub fn time_wait_start_ns(&self) -> Option<u64> {
        self.time_wait_start.map(NonZeroU64::get)
    }

    pub fn duration_ns(&self) -> Option<u64> {
        Some(self.released_ns()?.saturating_sub(self.assigned_ns()?))
    }

    /// Takes the peer from a later view of the socket (see [`Endpoints::learn_peer`]).
    pub fn learn_peer(&mut self, other: &Endpoints) {
        let wildcard = self.ends.laddr.is_unspecified();
        self.ends.learn_peer(other);
        self.laddr_learnt |= wildcard && !self.ends.laddr.is_unspecified();
    }

    /// The local address when the port was assigned.
    pub fn assigned_laddr(&self) -> std::net::IpAddr {
        match (self.laddr_learnt, self.ends.laddr) {
            (false, a) => a,
            (true, std::net::IpAddr::V4(_)) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            (true, std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    /// Time spent in TIME_WAIT, once it ended.
    pub fn time_wait_ns(&self) -> Option<u64> {
        Some(
            self.released_ns()?
                .saturating_sub(self.time_wait_start_ns()?),
        )
    }
}

/// What the analyses keep in an open lifetime's slot: handles to their state about it
/// (its occupancy groups, its destination or namespace, its holder entry), set when its
/// assignment is shown, so that its later outputs reach that state without a lookup. The
/// tracker keeps them and hands them over with each output; [`Links::NONE`] where unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Links {
    /// Occupancy: the groups of its local address and of all addresses.
    pub groups: [u32; 2],
    /// Headroom: its destination (connected sockets) or its namespace's space (bound ones).
    pub dest: u32,
    /// Holders: its entry.
    pub holder: u32,
}

impl Links {
    pub const NONE: u32 = u32::MAX;
    pub const UNSET: Links = Links {
        groups: [Self::NONE; 2],
        dest: Self::NONE,
        holder: Self::NONE,
    };
}

impl Default for Links {
    fn default() -> Self {
        Links::UNSET
    }
}

/// One output of the tracker, with the handles of the lifetime it is about while that is
/// open (its assignment, TIME_WAIT or peer learnt) or as it ends; None for outputs about no
/// open lifetime (failures, events of sockets never seen).
pub struct Emitted<'a> {
    pub output: OutputRef<'a>,
    pub links: Option<&'a mut Links>,
}

impl<'a> Emitted<'a> {
    /// An output about no open lifetime.
    pub fn alone(output: OutputRef<'a>) -> Self {
        Emitted {
            output,
            links: None,
        }
    }
}

/// What the tracker produces, kept (queued for a writer thread, collected by a test).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An event, attributed to the owner of its lifetime where one is known.
    Event(Event),
    /// A lifetime that ended (or, from [`Tracker::finish`], one still open).
    Lifetime(Lifetime),
}

/// What the tracker produces, lent: the tracker emits by reference and each consumer
/// (filter, counts, analyses, printers) reads in place, so an output is copied only by
/// whoever keeps it. By value, each hop moved 150 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputRef<'a> {
    Event(&'a Event),
    Lifetime(&'a Lifetime),
}

impl OutputRef<'_> {
    pub fn to_owned(self) -> Output {
        match self {
            OutputRef::Event(ev) => Output::Event(*ev),
            OutputRef::Lifetime(lt) => Output::Lifetime(lt.clone()),
        }
    }
}

impl Output {
    pub fn as_ref(&self) -> OutputRef<'_> {
        match self {
            Output::Event(ev) => OutputRef::Event(ev),
            Output::Lifetime(lt) => OutputRef::Lifetime(lt),
        }
    }
}

/// Endpoints that identify a socket held when tracing started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeldKey {
    pub netns: u32,
    pub proto: Proto,
    pub laddr: std::net::IpAddr,
    pub lport: u16,
    pub raddr: std::net::IpAddr,
    pub rport: u16,
}

impl HeldKey {
    pub fn of(e: &Endpoints) -> Self {
        HeldKey {
            netns: e.netns,
            proto: e.proto,
            laddr: e.laddr,
            lport: e.lport,
            raddr: e.raddr,
            rport: e.rport,
        }
    }
}

/// A socket that held its port when tracing started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldAtStart {
    pub ends: Endpoints,
    /// A process that had it open (pid 0 when none could be found, e.g. TIME_WAIT).
    pub owner: Task,
    /// A TCP listener: its accepted sockets belong to its owner.
    pub listening: bool,
    /// A TIME_WAIT socket (no process holds one).
    pub time_wait: bool,
    /// When the snapshot found it (monotonic ns; 0 when not known).
    pub seen_ns: u64,
}

impl HeldAtStart {
    /// Its lifetime, as the tracker emits it when it ends: a TIME_WAIT socket is in
    /// TIME_WAIT since at least the snapshot.
    pub fn lifetime(&self) -> Lifetime {
        Lifetime {
            time_wait_start: self.time_wait.then(|| time(self.seen_ns)).flatten(),
            ..Lifetime::new(self.ends, self.owner, Origin::Preexisting, 0)
        }
    }
}
