//! Who holds each port now, so that a failed bind() can name them: an EADDRINUSE says
//! which sockets had the port at that instant (listening, bound, connected or in
//! TIME_WAIT, since when), from the same outputs as every other analysis.

use std::{hash::BuildHasher, net::IpAddr};

use serde::Serialize;

use foldhash::HashMap;

use super::ports::PortTables;
use crate::{
    event::{Comm, Endpoints, Event, Origin, Proto},
    lifetime::{HeldAtStart, Lifetime, Links},
};

/// Holders named per refused port, longest-held first.
const NAMED: usize = 8;
/// Sockets kept (the tracker's own limit of open lifetimes: evicted ones stay here, held,
/// as in the occupancy); more are counted in `not_kept`.
const MAX_KEPT: usize = crate::lifetime::DEFAULT_MAX_OPEN;

/// One socket holding a port, kept for every open socket, in its port's chain.
#[derive(Clone, Copy, Debug)]
struct Holding {
    sock_id: u64,
    /// When it got the port; 0: held when tracing started.
    since_ns: u64,
    /// Its local address, hashed (0: the wildcard): a bind() conflicts with the same
    /// address or a wildcard.
    laddr: u32,
    /// The remote end (and the local address), hashed: tells which socket entered
    /// TIME_WAIT among those sharing a port.
    peer: u32,
    /// Its process, in [`Whos`].
    who: u32,
    /// Its port's chain: the port, the other holdings.
    netns: u32,
    port: u16,
    proto: Proto,
    origin: Origin,
    state: State,
    prev: u32,
    next: u32,
}

/// No holding (the end of a chain).
const END: u32 = u32::MAX;

/// A holding's process: its pid, name and cgroup id.
type Who = (u32, Comm, u64);

/// The processes of the holdings kept, each once while a holding has it.
#[derive(Clone, Debug, Default)]
struct Whos {
    list: Vec<(Who, u32)>,
    free: Vec<u32>,
    index: HashMap<Who, u32>,
    /// The last one interned: storms repeat it.
    last: Option<u32>,
}

impl Whos {
    fn get(&self, id: u32) -> Who {
        self.list[id as usize].0
    }

    fn intern(&mut self, who: Who) -> u32 {
        let id = match self.last.filter(|&id| self.list[id as usize].0 == who) {
            Some(id) => id,
            None => match self.index.get(&who) {
                Some(&id) => id,
                None => {
                    let id = match self.free.pop() {
                        Some(id) => {
                            self.list[id as usize] = (who, 0);
                            id
                        }
                        None => {
                            self.list.push((who, 0));
                            (self.list.len() - 1) as u32
                        }
                    };
                    self.index.insert(who, id);
                    id
                }
            },
        };
        self.list[id as usize].1 += 1;
        self.last = Some(id);
        id
    }

    fn release(&mut self, id: u32) {
        let (who, refs) = &mut self.list[id as usize];
        *refs -= 1;
        if *refs == 0 {
            self.index.remove(who);
            self.free.push(id);
            if self.last == Some(id) {
                self.last = None;
            }
        }
    }
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
    /// Its container, or its host unit (None where its cgroup names none or is not known):
    /// named at the end of the run from `cgroup_id` (see [`Holder::name_container`]).
    pub container_id: Option<String>,
    pub unit: Option<String>,
    /// Its owner's cgroup id (0: none known).
    #[serde(skip)]
    pub cgroup_id: u64,
}

impl Holder {
    /// Names its container or unit from its cgroup id, through the run's table `names`.
    pub fn name_container(&mut self, names: &mut crate::cgroups::Lookup) {
        (self.container_id, self.unit) =
            super::containers::container_and_unit(names, self.cgroup_id);
    }
}

/// Open sockets, each in the chain of its (netns, protocol, port).
#[derive(Clone, Debug, Default)]
pub struct PortHolders {
    holdings: Vec<Holding>,
    free: Vec<u32>,
    /// Per (netns, protocol): each port's first holding, plus one (0: none).
    heads: PortTables<u32>,
    whos: Whos,
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

impl PortHolders {
    /// The holdings of `netns`, `proto`, `port`, first to last.
    fn chain(&self, netns: u32, proto: Proto, port: u16) -> impl Iterator<Item = u32> + '_ {
        let mut at = self
            .heads
            .get(netns, proto)
            .map_or(END, |ports| ports.get(port).wrapping_sub(1));
        std::iter::from_fn(move || {
            if at == END {
                return None;
            }
            let here = at;
            at = self.holdings[here as usize].next;
            Some(here)
        })
    }

    /// Keeps `h`, held by process `who`, for `e`'s port; its index, unless past the bound
    /// (counted).
    fn add(&mut self, e: &Endpoints, who: Who, mut h: Holding) -> Option<u32> {
        if self.kept >= MAX_KEPT {
            self.not_kept += 1;
            return None;
        }
        self.kept += 1;
        h.who = self.whos.intern(who);
        let head = self
            .heads
            .get_mut(e.netns, e.proto)
            .get(e.lport)
            .wrapping_sub(1);
        (h.netns, h.proto, h.port, h.prev, h.next) = (e.netns, e.proto, e.lport, END, head);
        let i = match self.free.pop() {
            Some(i) => {
                self.holdings[i as usize] = h;
                i
            }
            None => {
                self.holdings.push(h);
                (self.holdings.len() - 1) as u32
            }
        };
        if head != END {
            self.holdings[head as usize].prev = i;
        }
        self.heads.get_mut(e.netns, e.proto).set(e.lport, i + 1);
        Some(i)
    }

    /// Takes holding `i` out of its chain.
    fn remove(&mut self, i: u32) {
        let h = self.holdings[i as usize];
        match h.prev {
            END => {
                self.heads
                    .get_mut(h.netns, h.proto)
                    .set(h.port, h.next.wrapping_add(1));
            }
            p => self.holdings[p as usize].next = h.next,
        }
        if h.next != END {
            self.holdings[h.next as usize].prev = h.prev;
        }
        self.whos.release(h.who);
        self.free.push(i);
        self.kept -= 1;
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
            (h.owner.pid, h.owner.comm, h.owner.cgroup_id),
            Holding {
                sock_id: 0,
                since_ns: 0,
                laddr: laddr_of(h.ends.laddr),
                peer: peer_of(&h.ends),
                who: 0,
                netns: 0,
                port: 0,
                proto: Proto::Tcp,
                origin: Origin::Preexisting,
                state,
                prev: END,
                next: END,
            },
        );
    }

    /// A socket got a port (its holding's index goes in `links`); an accepted one shows
    /// its listener listens.
    pub fn assigned(&mut self, ev: &Event, links: Option<&mut Links>) {
        let e = &ev.ends;
        if ev.origin == Origin::Inherited {
            let bound: Vec<u32> = self
                .chain(e.netns, e.proto, e.lport)
                .filter(|&i| self.holdings[i as usize].state == State::Bound)
                .collect();
            for i in bound {
                self.holdings[i as usize].state = State::Listening;
            }
        }
        let state = match ev.origin {
            _ if e.rport != 0 => State::Connected,
            // listen() without bind() takes its port itself.
            Origin::Autobind if e.proto == Proto::Tcp => State::Listening,
            _ => State::Bound,
        };
        let i = self.add(
            e,
            (ev.task.pid, ev.task.comm, ev.task.cgroup_id),
            Holding {
                sock_id: ev.sock_id,
                since_ns: ev.ts_ns,
                laddr: laddr_of(e.laddr),
                peer: peer_of(e),
                who: 0,
                netns: 0,
                port: 0,
                proto: Proto::Tcp,
                origin: ev.origin,
                state,
                prev: END,
                next: END,
            },
        );
        if let (Some(l), Some(i)) = (links, i) {
            l.holder = i;
        }
    }

    /// The holding of socket `sock_id` on `e`'s port: from its handle, else looked up.
    fn find(&self, e: &Endpoints, sock_id: u64, links: Option<&Links>) -> Option<u32> {
        match links.map(|l| l.holder) {
            Some(i) if i != Links::NONE => Some(i),
            _ => self
                .chain(e.netns, e.proto, e.lport)
                .find(|&i| self.holdings[i as usize].sock_id == sock_id),
        }
    }

    /// A bound socket connected: its remote end, to know it when it enters TIME_WAIT.
    pub fn remote_learnt(&mut self, ev: &Event, links: Option<&Links>) {
        if let Some(i) = self.find(&ev.ends, ev.sock_id, links) {
            let h = &mut self.holdings[i as usize];
            h.peer = peer_of(&ev.ends);
            if h.state == State::Bound {
                h.state = State::Connected;
            }
        }
    }

    /// A socket of this port went into TIME_WAIT: found by its handle; else (the event
    /// names the TIME_WAIT socket) by its endpoints, or as the port's one connected or
    /// bound socket.
    pub fn time_wait(&mut self, ev: &Event, links: Option<&Links>) {
        let peer = peer_of(&ev.ends);
        let e = &ev.ends;
        let at = match links.map(|l| l.holder) {
            Some(i) if i != Links::NONE => Some(i),
            _ => {
                let live = |h: &Holding| matches!(h.state, State::Bound | State::Connected);
                let chain: Vec<u32> = self.chain(e.netns, e.proto, e.lport).collect();
                let hs = &self.holdings;
                match chain.iter().rev().find(|&&i| {
                    hs[i as usize].peer == peer && hs[i as usize].state != State::TimeWait
                }) {
                    Some(&i) => Some(i),
                    None if chain.iter().filter(|&&i| live(&hs[i as usize])).count() == 1 => {
                        chain.iter().rev().copied().find(|&i| live(&hs[i as usize]))
                    }
                    None => None,
                }
            }
        };
        if let Some(i) = at {
            let h = &mut self.holdings[i as usize];
            h.state = State::TimeWait;
            h.peer = peer;
        }
    }

    /// A lifetime ended (one cut off still open keeps its holding: it is still held).
    pub fn ended(&mut self, lt: &Lifetime, links: Option<&Links>) {
        if lt.released_ns().is_none() {
            return;
        }
        let e = &lt.ends;
        let at = match links.map(|l| l.holder) {
            Some(i) if i != Links::NONE => Some(i),
            _ if lt.sock_id != 0 => self
                .chain(e.netns, e.proto, e.lport)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .find(|&i| self.holdings[i as usize].sock_id == lt.sock_id),
            _ => {
                let peer = peer_of(e);
                self.chain(e.netns, e.proto, e.lport)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .find(|&i| {
                        let h = &self.holdings[i as usize];
                        h.sock_id == 0 && h.peer == peer
                    })
            }
        };
        if let Some(i) = at {
            self.remove(i);
        }
    }

    /// Whether a socket holds `port` connected to (or in TIME_WAIT with) `ends`' remote end
    /// from its local address: a connect() there cannot take that port.
    pub fn towards(&self, ends: &Endpoints, port: u16) -> bool {
        let peer = peer_of(ends);
        self.chain(ends.netns, ends.proto, port).any(|i| {
            let h = &self.holdings[i as usize];
            h.peer == peer && matches!(h.state, State::Connected | State::TimeWait)
        })
    }

    /// Who holds `ends`' port now on its address (or a wildcard one, or on any when it is
    /// the wildcard): listeners and bound sockets first, then longest-held first.
    pub fn of(&self, ends: &Endpoints) -> Vec<Holder> {
        let asked = laddr_of(ends.laddr);
        let overlaps = |a: u32| a == asked || a == 0 || asked == 0;
        let mut held: Vec<Holding> = self
            .chain(ends.netns, ends.proto, ends.lport)
            .map(|i| self.holdings[i as usize])
            .filter(|h| overlaps(h.laddr))
            .collect();
        let rank = |s: State| match s {
            State::Listening => 0,
            State::Bound => 1,
            State::TimeWait => 2,
            State::Connected => 3,
        };
        held.sort_by_key(|h| (rank(h.state), h.since_ns, self.whos.get(h.who).0, h.sock_id));
        held.truncate(NAMED);
        held.iter()
            .map(|h| {
                let (pid, comm, cgroup_id) = self.whos.get(h.who);
                Holder {
                    pid,
                    comm: comm.as_str().into_owned(),
                    origin: h.origin.as_str(),
                    state: h.state,
                    since_ns: (h.since_ns != 0).then_some(h.since_ns),
                    container_id: None,
                    unit: None,
                    cgroup_id,
                }
            })
            .collect()
    }
}
