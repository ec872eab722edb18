//! Who holds each port now, so that a failed bind() can name them: an EADDRINUSE says
//! which sockets had the port at that instant (listening, bound, connected or in
//! TIME_WAIT, since when), from the same outputs as every other analysis.

use std::{hash::BuildHasher, net::IpAddr};

use foldhash::HashMap;
use serde::Serialize;

use crate::{
    event::{Comm, Endpoints, Event, Origin, Proto},
    lifetime::{HeldAtStart, Lifetime},
};

/// Holders named per refused port, longest-held first.
const NAMED: usize = 8;
/// Sockets kept (the tracker's own limit of open lifetimes: evicted ones stay here, held,
/// as in the occupancy); more are counted in `not_kept`.
const MAX_KEPT: usize = crate::lifetime::DEFAULT_MAX_OPEN;

/// One socket holding a port: 48 bytes, kept for every open socket.
#[derive(Clone, Copy, Debug)]
struct Holding {
    sock_id: u64,
    /// Its local address, hashed (0: the wildcard): a bind() conflicts with the same
    /// address or a wildcard.
    laddr: u32,
    /// The remote end (and the local address), hashed: tells which socket entered
    /// TIME_WAIT among those sharing a port.
    peer: u32,
    /// When it got the port; 0: held when tracing started.
    since_ns: u64,
    pid: u32,
    comm: Comm,
    origin: Origin,
    state: State,
}

/// What a socket was doing with its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Bound, no connection seen from or to it (a listener nobody connected to yet looks
    /// the same: the kernel side sees listen() only as a second bind).
    Bound,
    /// A listener: listen() without bind, or a socket whose accepted connections were seen.
    Listening,
    Connected,
    TimeWait,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Bound => "bound",
            State::Listening => "listening",
            State::Connected => "connected",
            State::TimeWait => "in TIME_WAIT",
        }
    }
}

/// A holder of a refused port, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub origin: &'static str,
    pub state: State,
    /// When it got the port (monotonic ns); None: held when tracing started.
    pub since_ns: Option<u64>,
}

/// Open sockets by (netns, protocol, port).
const _: () = assert!(std::mem::size_of::<Holding>() == 48);

#[derive(Clone, Debug, Default)]
pub struct PortHolders {
    by_port: HashMap<(u32, Proto, u16), Vec<Holding>>,
    kept: usize,
    /// Sockets past [`MAX_KEPT`]: not named as holders.
    pub not_kept: u64,
}

fn peer_of(e: &Endpoints) -> u32 {
    foldhash::fast::FixedState::with_seed(0).hash_one((e.laddr, e.raddr, e.rport)) as u32
}

fn laddr_of(a: IpAddr) -> u32 {
    if a.is_unspecified() {
        return 0;
    }
    (foldhash::fast::FixedState::with_seed(1).hash_one(a) as u32).max(1)
}

fn key(e: &Endpoints) -> (u32, Proto, u16) {
    (e.netns, e.proto, e.lport)
}

impl PortHolders {
    fn add(&mut self, e: &Endpoints, h: Holding) {
        if self.kept >= MAX_KEPT {
            self.not_kept += 1;
            return;
        }
        self.kept += 1;
        self.by_port.entry(key(e)).or_default().push(h);
    }

    pub fn held_at_start(&mut self, h: &HeldAtStart) {
        let state = if h.time_wait {
            State::TimeWait
        } else if h.listening {
            State::Listening
        } else if h.ends.rport != 0 {
            State::Connected
        } else {
            State::Bound
        };
        self.add(
            &h.ends,
            Holding {
                sock_id: 0,
                laddr: laddr_of(h.ends.laddr),
                peer: peer_of(&h.ends),
                since_ns: 0,
                pid: h.owner.pid,
                comm: h.owner.comm,
                origin: Origin::Preexisting,
                state,
            },
        );
    }

    /// A socket got a port; an accepted one shows its listener listens.
    pub fn assigned(&mut self, ev: &Event) {
        let e = &ev.ends;
        if ev.origin == Origin::Inherited {
            if let Some(hs) = self.by_port.get_mut(&key(e)) {
                for h in hs.iter_mut().filter(|h| h.state == State::Bound) {
                    h.state = State::Listening;
                }
            }
        }
        let state = match ev.origin {
            _ if e.rport != 0 => State::Connected,
            // listen() without bind() takes its port itself.
            Origin::Autobind if e.proto == Proto::Tcp => State::Listening,
            _ => State::Bound,
        };
        self.add(
            e,
            Holding {
                sock_id: ev.sock_id,
                laddr: laddr_of(e.laddr),
                peer: peer_of(e),
                since_ns: ev.ts_ns,
                pid: ev.task.pid,
                comm: ev.task.comm,
                origin: ev.origin,
                state,
            },
        );
    }

    /// A bound socket connected: its remote end, to know it when it enters TIME_WAIT.
    pub fn remote_learnt(&mut self, ev: &Event) {
        if let Some(hs) = self.by_port.get_mut(&key(&ev.ends)) {
            if let Some(h) = hs.iter_mut().find(|h| h.sock_id == ev.sock_id) {
                h.peer = peer_of(&ev.ends);
                if h.state == State::Bound {
                    h.state = State::Connected;
                }
            }
        }
    }

    /// A socket of this port went into TIME_WAIT. The event names the TIME_WAIT socket, so
    /// the holding is found by its endpoints, else as the port's one connected or bound
    /// socket.
    pub fn time_wait(&mut self, ev: &Event) {
        let peer = peer_of(&ev.ends);
        let Some(hs) = self.by_port.get_mut(&key(&ev.ends)) else {
            return;
        };
        let live = |h: &&mut Holding| matches!(h.state, State::Bound | State::Connected);
        let at = match hs
            .iter()
            .position(|h| h.peer == peer && h.state != State::TimeWait)
        {
            Some(i) => Some(i),
            None if hs.iter_mut().filter(live).count() == 1 => hs
                .iter()
                .position(|h| matches!(h.state, State::Bound | State::Connected)),
            None => None,
        };
        if let Some(i) = at {
            hs[i].state = State::TimeWait;
            hs[i].peer = peer;
        }
    }

    /// A lifetime ended (one cut off still open keeps its holding: it is still held).
    pub fn ended(&mut self, lt: &Lifetime) {
        if lt.released_ns().is_none() {
            return;
        }
        let k = key(&lt.ends);
        let Some(hs) = self.by_port.get_mut(&k) else {
            return;
        };
        let at = if lt.sock_id != 0 {
            hs.iter().position(|h| h.sock_id == lt.sock_id)
        } else {
            let peer = peer_of(&lt.ends);
            hs.iter().position(|h| h.sock_id == 0 && h.peer == peer)
        };
        if let Some(i) = at {
            hs.swap_remove(i);
            self.kept -= 1;
        }
        if hs.is_empty() {
            self.by_port.remove(&k);
        }
    }

    /// Whether a socket holds `port` connected to (or in TIME_WAIT with) `ends`' remote end
    /// from its local address: a connect() there cannot take that port.
    pub fn towards(&self, ends: &Endpoints, port: u16) -> bool {
        let peer = peer_of(ends);
        self.by_port
            .get(&(ends.netns, ends.proto, port))
            .is_some_and(|hs| {
                hs.iter().any(|h| {
                    h.peer == peer && matches!(h.state, State::Connected | State::TimeWait)
                })
            })
    }

    /// Who holds `ends`' port now on its address (or a wildcard one, or on any when it is
    /// the wildcard): listeners and bound sockets first, then longest-held first.
    pub fn of(&self, ends: &Endpoints) -> Vec<Holder> {
        let asked = laddr_of(ends.laddr);
        let overlaps = |a: u32| a == asked || a == 0 || asked == 0;
        let mut held: Vec<Holding> = self
            .by_port
            .get(&key(ends))
            .into_iter()
            .flatten()
            .filter(|h| overlaps(h.laddr))
            .copied()
            .collect();
        let rank = |s: State| match s {
            State::Listening => 0,
            State::Bound => 1,
            State::TimeWait => 2,
            State::Connected => 3,
        };
        held.sort_by_key(|h| (rank(h.state), h.since_ns, h.pid, h.sock_id));
        held.truncate(NAMED);
        held.iter()
            .map(|h| Holder {
                pid: h.pid,
                comm: h.comm.as_str().into_owned(),
                origin: h.origin.as_str(),
                state: h.state,
                since_ns: (h.since_ns != 0).then_some(h.since_ns),
            })
            .collect()
    }
}
