//! Lifetime reconstruction: the pure core. Decoded events in (in timestamp order, see
//! [`crate::reorder`]), lifetimes out. No I/O.
//!
//! A lifetime is one socket's hold on one local port, from assignment to release. A TCP
//! socket that enters TIME_WAIT hands its port to a TIME_WAIT socket: the lifetime goes on
//! until that one dies, and the time in TIME_WAIT is measured on its own.

use std::{collections::VecDeque, num::NonZeroU64};

use foldhash::HashMap;

use serde::Serialize;

use crate::event::{Endpoints, Event, Kind, Origin, Proto, Task};

/// How long a cancelled TIME_WAIT timer may wait for its re-arm (or, at expiry, for its
/// handler) before the cancel counts as the end of TIME_WAIT. The kernel cancels and
/// re-arms (or runs the handler) in one call on one CPU, microseconds apart on bare metal;
/// in a virtual machine the host can deschedule the vCPU in between (5.8 ms seen in an
/// emulated guest on a loaded host, where a 1 ms grace took the expiry's handler for a
/// TIME_WAIT socket never seen). Waiting longer costs nothing but the delay: the end keeps
/// the cancel's time, and whether a start is a re-arm is the kernel's mark, not the gap.
pub const TW_REARM_GRACE_NS: u64 = 50_000_000;

/// Default limit of open lifetimes: about 190 MB of tables at 187 bytes each.
pub const DEFAULT_MAX_OPEN: usize = 1 << 20;

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

/// What the tracker had to work around: signs of events it never saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Events processed.
    pub events: u64,
    /// Assignments of a port a socket already held (e.g. listen re-validating its bind).
    pub duplicate_assign: u64,
    /// Releases, TIME_WAITs and updates of sockets never seen assigned nor held at start.
    pub unmatched: u64,
    /// Lifetimes ended without their release: the socket got another port.
    pub release_missing: u64,
    /// TIME_WAIT timers re-armed (FIN_WAIT2 -> TIME_WAIT, a retransmitted FIN): the same
    /// socket goes on.
    pub time_wait_rearm: u64,
    /// TIME_WAIT sockets killed by a new connection that reused their 4-tuple
    /// (`net.ipv4.tcp_tw_reuse`): each ends where that connection's lifetime begins.
    pub time_wait_reused: u64,
    /// TIME_WAIT timer arms where the tracepoint tier had to guess whether the socket was
    /// re-armed or new: from its endpoints alone (traces recorded before the kernel side
    /// marked re-arms), or where that mark and the endpoints disagreed (the endpoints win).
    pub time_wait_guessed: u64,
    /// Binds whose origin (bind or bind_ephemeral) the cgroup tier could not tell (see
    /// `port_tracer_common::more_flags::ORIGIN_GUESSED`): reported as `bind`.
    pub origin_guessed: u64,
    /// Accepted sockets whose listener's owner was not known (the listener was neither
    /// traced nor held at start), and connects whose task the cgroup tier lost (see
    /// `port_tracer_common::more_flags::OWNER_UNKNOWN`): emitted without an owner, marked
    /// lossy.
    pub owner_unknown: u64,
    /// Sockets from before the start seen first in an event timed before the start (the
    /// snapshot of held sockets comes after attaching: one that went away or changed in
    /// between is in neither): emitted as held at start, not counted as unmatched.
    pub changed_while_starting: u64,
    /// Open lifetimes pushed out, oldest first, when the table was full: each was emitted
    /// still open and marked lossy; its release, if it comes, counts as unmatched.
    pub evicted: u64,
    /// Events the reorder window let go early because it was full (possibly out of order).
    pub released_early: u64,
    /// Events that reached the reorder window after a newer one had left it (their CPU
    /// was held up for longer than `--reorder-ms`): handled out of order, which can show
    /// as an unmatched event or a lifetime cut short.
    pub arrived_late: u64,
}

/// A UDP autobind reported by a send (not a connect seen at close): the cgroup tier's
/// guess at a wildcard-bound socket's first send.
fn is_first_send(ev: &Event) -> bool {
    ev.ends.proto == Proto::Udp && ev.origin == Origin::Autobind && !ev.seen_at_close
}

/// Identity of an open lifetime in the table.
type Id = usize;

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
            ends: self.ends,
            owner: self.owner,
            origin: Origin::Preexisting,
            sock_id: 0,
            assigned: None,
            released: None,
            time_wait_start: self.time_wait.then(|| time(self.seen_ns)).flatten(),
            lossy: false,
            laddr_learnt: false,
            seen_at_close: false,
            ended_at_close: false,
            alloc_ns: None,
        }
    }
}

/// Reconstructs lifetimes from events.
pub struct Tracker {
    /// The most lifetimes open at once; beyond it the oldest are evicted.
    max_open: usize,
    slots: Vec<Option<Lifetime>>,
    /// Per slot: how many losses had been seen when its lifetime opened. One that ends
    /// after a later loss is lossy: marking them all at each loss would walk the whole
    /// table, again and again while losses go on.
    opened_after: Vec<u32>,
    /// Losses seen (see [`Tracker::mark_lossy`]).
    losses: u32,
    free: Vec<Id>,
    by_sock: HashMap<u64, Id>,
    by_tw: HashMap<u64, Id>,
    /// Open TCP lifetimes with a remote endpoint and not yet in TIME_WAIT, by endpoints.
    by_tuple: HashMap<Endpoints, Id>,
    /// Open TCP lifetimes without a remote endpoint (bound, listening), by (netns, port).
    bound_tcp: HashMap<(u32, u16), Id>,
    /// Cancelled TIME_WAIT timers, waiting to see whether they are re-armed.
    pending_cancel: HashMap<u64, Event>,
    cancel_queue: VecDeque<(u64, u64)>,
    /// Sockets held at start and not yet seen in an event.
    held_at_start: HashMap<HeldKey, HeldAtStart>,
    /// Owners of TCP listeners not in `bound_tcp`, by (netns, port): held at start, or
    /// evicted while open; accepted sockets take their owner from here.
    listener_owners: HashMap<(u32, u16), Task>,
    /// When the run started (after the snapshot of held sockets): an unknown socket's
    /// event before it is the start's race, not a missed event.
    start_ns: u64,
    pub counters: Counters,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::with_max_open(DEFAULT_MAX_OPEN)
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker that keeps at most `max_open` lifetimes open (at least 1).
    pub fn with_max_open(max_open: usize) -> Self {
        Tracker {
            max_open: max_open.max(1),
            slots: Vec::new(),
            opened_after: Vec::new(),
            losses: 0,
            free: Vec::new(),
            by_sock: HashMap::default(),
            by_tw: HashMap::default(),
            by_tuple: HashMap::default(),
            bound_tcp: HashMap::default(),
            pending_cancel: HashMap::default(),
            cancel_queue: VecDeque::new(),
            held_at_start: HashMap::default(),
            listener_owners: HashMap::default(),
            start_ns: 0,
            counters: Counters::default(),
        }
    }

    /// The run started at `ns`, after its snapshot of held sockets was taken.
    pub fn set_start(&mut self, ns: u64) {
        self.start_ns = ns;
    }

    /// Sockets that held ports when tracing started: their release produces a lifetime
    /// with origin `preexisting`, those still held at the end are emitted open.
    pub fn set_held_at_start(&mut self, held: impl IntoIterator<Item = HeldAtStart>) {
        for h in held {
            if h.listening {
                self.listener_owners
                    .insert((h.ends.netns, h.ends.lport), h.owner);
            }
            self.held_at_start.insert(HeldKey::of(&h.ends), h);
        }
    }

    /// Lifetimes open now (TIME_WAIT holds included).
    pub fn open_lifetimes(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Events were lost: every lifetime open now may be incomplete.
    pub fn mark_lossy(&mut self) {
        self.losses = self.losses.wrapping_add(1);
    }

    /// Takes the lifetime in slot `id` out of the table, lossy if events were lost while
    /// it was open.
    fn take_slot(&mut self, id: Id) -> Lifetime {
        let mut lt = self.slots[id].take().expect("open lifetime");
        lt.lossy |= self.opened_after[id] != self.losses;
        lt
    }

    /// Opens `lt` to stay, first making room if the table is full.
    fn open(&mut self, lt: Lifetime, emit: &mut impl FnMut(OutputRef<'_>)) -> Id {
        if self.open_lifetimes() >= self.max_open {
            self.evict_oldest(emit);
        }
        self.insert(lt)
    }

    /// Puts `lt` in a slot (callers that close it at once do not evict for it).
    fn insert(&mut self, lt: Lifetime) -> Id {
        match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(lt);
                self.opened_after[id] = self.losses;
                id
            }
            None => {
                self.slots.push(Some(lt));
                self.opened_after.push(self.losses);
                self.slots.len() - 1
            }
        }
    }

    fn get(&mut self, id: Id) -> &mut Lifetime {
        self.slots[id]
            .as_mut()
            .expect("index points at an open lifetime")
    }

    /// Adds `id` to the endpoint indexes its lifetime belongs in.
    fn index(&mut self, id: Id) {
        let lt = self.get(id);
        if lt.ends.proto != Proto::Tcp || lt.time_wait_start_ns().is_some() {
            return;
        }
        let ends = lt.ends;
        if ends.rport != 0 {
            self.by_tuple.insert(ends, id);
        } else {
            self.bound_tcp.insert((ends.netns, ends.lport), id);
        }
    }

    /// Removes `id` from the endpoint indexes.
    fn unindex(&mut self, id: Id) {
        let ends = self.get(id).ends;
        if self.by_tuple.get(&ends) == Some(&id) {
            self.by_tuple.remove(&ends);
        }
        let key = (ends.netns, ends.lport);
        if self.bound_tcp.get(&key) == Some(&id) {
            self.bound_tcp.remove(&key);
        }
    }

    /// Ends lifetime `id` at `ts` and emits it.
    fn close(&mut self, id: Id, ts: u64, emit: &mut impl FnMut(OutputRef<'_>)) {
        self.unindex(id);
        let mut lt = self.take_slot(id);
        self.free.push(id);
        if self.by_sock.get(&lt.sock_id) == Some(&id) {
            self.by_sock.remove(&lt.sock_id);
        }
        lt.released = time(ts);
        emit(OutputRef::Lifetime(&lt));
    }

    /// `ev` attributed to the owner and origin of lifetime `id`.
    fn attributed(&mut self, id: Id, ev: &Event) -> Event {
        let lt = self.get(id);
        Event {
            task: lt.owner,
            origin: lt.origin,
            ..*ev
        }
    }

    /// A lifetime for a socket seen only at its end: held at start, or missed.
    fn unseen(&mut self, ev: &Event) -> Lifetime {
        match self.held_at_start.remove(&HeldKey::of(&ev.ends)) {
            Some(h) => Lifetime {
                sock_id: ev.sock_id,
                ..h.lifetime()
            },
            None => {
                let before_start = ev.ts_ns <= self.start_ns;
                if before_start {
                    self.counters.changed_while_starting += 1;
                } else {
                    self.counters.unmatched += 1;
                }
                Lifetime {
                    ends: ev.ends,
                    owner: Task::default(),
                    origin: if before_start {
                        Origin::Preexisting
                    } else {
                        Origin::Unknown
                    },
                    sock_id: ev.sock_id,
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
        }
    }

    fn finalize_cancels(&mut self, before_ns: u64, emit: &mut impl FnMut(OutputRef<'_>)) {
        while let Some(&(ts, tw)) = self.cancel_queue.front() {
            if ts.saturating_add(TW_REARM_GRACE_NS) > before_ns {
                break;
            }
            self.cancel_queue.pop_front();
            if self.pending_cancel.get(&tw).map(|ev| ev.ts_ns) == Some(ts) {
                let ev = self.pending_cancel.remove(&tw).expect("checked above");
                if let Some(id) = self.by_tw.remove(&tw) {
                    self.end_time_wait(id, &ev, emit);
                }
            }
        }
    }

    /// Makes room when the table is full: evicts the oldest sixteenth of the open lifetimes
    /// (by assignment time; held-at-start ones first). Batches keep the cost per eviction
    /// constant without an age index, which would cost memory on every lifetime.
    fn evict_oldest(&mut self, emit: &mut impl FnMut(OutputRef<'_>)) {
        let mut ages: Vec<(u64, Id)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, lt)| Some((lt.as_ref()?.assigned_ns().unwrap_or(0), id)))
            .collect();
        let k = (self.max_open / 16).clamp(1, ages.len());
        ages.select_nth_unstable(k - 1);
        ages.truncate(k);
        ages.sort_unstable();
        let mut evicted = vec![false; self.slots.len()];
        for &(_, id) in &ages {
            evicted[id] = true;
        }
        self.by_tw.retain(|_, id| !evicted[*id]);
        for (_, id) in ages {
            self.unindex(id);
            let mut lt = self.slots[id].take().expect("open lifetime");
            if lt.ends.proto == Proto::Tcp
                && lt.ends.rport == 0
                && lt.time_wait_start_ns().is_none()
            {
                // A listener, maybe: its accepted sockets still need their owner. Bounded by
                // the table size; a new bind of the port replaces it.
                if self.listener_owners.len() < self.max_open {
                    self.listener_owners
                        .insert((lt.ends.netns, lt.ends.lport), lt.owner);
                }
            }
            self.free.push(id);
            if self.by_sock.get(&lt.sock_id) == Some(&id) {
                self.by_sock.remove(&lt.sock_id);
            }
            lt.lossy = true;
            self.counters.evicted += 1;
            emit(OutputRef::Lifetime(&lt));
        }
    }

    /// Feeds one event; ended lifetimes and attributed events go to `emit`.
    pub fn process(&mut self, ev: &Event, emit: &mut impl FnMut(OutputRef<'_>)) {
        self.counters.events += 1;
        if !self.cancel_queue.is_empty() {
            self.finalize_cancels(ev.ts_ns, emit);
        }
        match ev.kind {
            Kind::Assign => self.assign(ev, emit),
            Kind::RemoteUpdate => self.remote_update(ev, emit),
            Kind::Release if ev.time_wait_sock => self.release_time_wait(ev, emit),
            Kind::Release => self.release(ev, emit),
            Kind::TimeWait => self.time_wait(ev, emit),
            Kind::AllocFailure => emit(OutputRef::Event(ev)),
        }
    }

    fn assign(&mut self, ev: &Event, emit: &mut impl FnMut(OutputRef<'_>)) {
        self.counters.origin_guessed += u64::from(ev.origin_guessed);
        if let Some(&id) = self.by_sock.get(&ev.sock_id) {
            let lt = self.get(id);
            if lt.time_wait_start_ns().is_some() {
                // The old hold lives on in its TIME_WAIT socket; this address is reused.
                self.by_sock.remove(&ev.sock_id);
            } else if lt.ends.lport == ev.ends.lport && lt.ends.proto == ev.ends.proto {
                self.counters.duplicate_assign += 1;
                return;
            } else {
                self.counters.release_missing += 1;
                self.get(id).lossy = true;
                self.close(id, ev.ts_ns, emit);
            }
        }
        // Created after the programs were attached but before the snapshot: not "held".
        // Not so a TIME_WAIT socket of the same 4-tuple: this connection reuses it, and
        // the kernel kills it just after (see `release_time_wait`).
        let key = HeldKey::of(&ev.ends);
        if self.held_at_start.get(&key).is_some_and(|h| !h.time_wait) {
            let h = self.held_at_start.remove(&key).expect("found just above");
            if ev.ts_ns > self.start_ns && is_first_send(ev) {
                // The first send of a wildcard-bound UDP socket held at start, which the
                // cgroup tier cannot tell from an autobind (see its `udp_autobind`): the
                // snapshot already saw this port held, so it is that socket, now known.
                let id = self.open(
                    Lifetime {
                        sock_id: ev.sock_id,
                        ..h.lifetime()
                    },
                    emit,
                );
                self.by_sock.insert(ev.sock_id, id);
                return;
            }
        }
        let mut owner = ev.task;
        let mut lossy = false;
        if ev.owner_unknown {
            self.counters.owner_unknown += 1;
            lossy = true;
        } else if ev.origin == Origin::Inherited && !owner.is_known() {
            let listener = (ev.ends.netns, ev.ends.lport);
            if let Some(&lid) = self.bound_tcp.get(&listener) {
                owner = self.get(lid).owner;
            } else if let Some(&known) = self.listener_owners.get(&listener) {
                owner = known;
            } else {
                self.counters.owner_unknown += 1;
                lossy = true;
            }
        } else if ev.ends.proto == Proto::Tcp && ev.ends.rport == 0 {
            // A new bound TCP socket on this port: it is the one to ask from now on.
            self.listener_owners.remove(&(ev.ends.netns, ev.ends.lport));
        }
        let id = self.open(
            Lifetime {
                ends: ev.ends,
                owner,
                origin: ev.origin,
                sock_id: ev.sock_id,
                assigned: time(ev.ts_ns),
                released: None,
                time_wait_start: None,
                lossy,
                laddr_learnt: false,
                seen_at_close: ev.seen_at_close,
                ended_at_close: false,
                alloc_ns: ev.alloc_ns,
            },
            emit,
        );
        self.by_sock.insert(ev.sock_id, id);
        self.index(id);
        emit(OutputRef::Event(&Event { task: owner, ..*ev }));
    }

    fn remote_update(&mut self, ev: &Event, emit: &mut impl FnMut(OutputRef<'_>)) {
        let Some(&id) = self.by_sock.get(&ev.sock_id) else {
            self.counters.unmatched += 1;
            return;
        };
        self.unindex(id);
        self.get(id).learn_peer(&ev.ends);
        self.index(id);
        let ev = self.attributed(id, ev);
        emit(OutputRef::Event(&ev));
    }

    fn release(&mut self, ev: &Event, emit: &mut impl FnMut(OutputRef<'_>)) {
        match self.by_sock.remove(&ev.sock_id) {
            Some(id) => {
                let lt = self.get(id);
                if lt.time_wait_start_ns().is_some() {
                    return; // the TIME_WAIT socket holds the port now
                }
                lt.ended_at_close |= ev.ended_at_close;
                if lt.ends.rport == 0 && ev.ends.rport != 0 {
                    // Learnt the peer only now (e.g. bound before connect, on a tier that
                    // does not see connect itself): keep it, as a remote update would.
                    lt.learn_peer(&ev.ends);
                }
                let ev = self.attributed(id, ev);
                self.close(id, ev.ts_ns, emit);
                emit(OutputRef::Event(&ev));
            }
            // A socket that may never have held a port: nothing to end.
            None if ev.ended_at_close => {}
            None => {
                let lt = self.unseen(ev);
                let id = self.insert(lt);
                self.close(id, ev.ts_ns, emit);
                emit(OutputRef::Event(ev));
            }
        }
    }

    /// Whether a TIME_WAIT timer armed for `ev.ends` re-arms the TIME_WAIT socket whose
    /// lifetime has endpoints `held`, at the same address, rather than starting a new
    /// one there (the kernel recycles a dead TIME_WAIT socket's memory at once, often for
    /// another 4-tuple).
    fn is_rearm(&mut self, held: &Endpoints, ev: &Event) -> bool {
        // A re-arm keeps the 4-tuple, and no other socket can hold it meanwhile: a live
        // one entering TIME_WAIT now is a new TIME_WAIT socket.
        let by_endpoints = *held == ev.ends && !self.by_tuple.contains_key(&ev.ends);
        match ev.tw_rearm {
            Some(kernel) => {
                if kernel && !by_endpoints {
                    self.counters.time_wait_guessed += 1;
                }
                kernel && by_endpoints
            }
            None => {
                if by_endpoints {
                    self.counters.time_wait_guessed += 1;
                }
                by_endpoints
            }
        }
    }

    fn time_wait(&mut self, ev: &Event, emit: &mut impl FnMut(OutputRef<'_>)) {
        let tw = ev.sock_id;
        if let Some(&old) = self.by_tw.get(&tw) {
            let held = self.get(old).ends;
            if self.is_rearm(&held, ev) {
                self.pending_cancel.remove(&tw);
                self.counters.time_wait_rearm += 1;
                return;
            }
            // A new TIME_WAIT socket at the address of one that died: its cancel was its
            // end (or, without one, its end was missed).
            self.by_tw.remove(&tw);
            match self.pending_cancel.remove(&tw) {
                Some(cancel) => self.end_time_wait(old, &cancel, emit),
                None => {
                    self.counters.release_missing += 1;
                    self.get(old).lossy = true;
                    self.close(old, ev.ts_ns, emit);
                }
            }
        }
        let id = match self.by_tuple.get(&ev.ends).copied() {
            Some(id) => {
                self.unindex(id);
                // The snapshot at start saw this very socket in TIME_WAIT (it entered it
                // between attaching and the snapshot): not a socket of its own.
                let key = HeldKey::of(&ev.ends);
                if self.held_at_start.get(&key).is_some_and(|h| h.time_wait) {
                    self.held_at_start.remove(&key);
                }
                id
            }
            None => {
                let lt = self.unseen(ev);
                self.open(lt, emit)
            }
        };
        self.get(id).time_wait_start = time(ev.ts_ns);
        self.by_tw.insert(tw, id);
        let ev = self.attributed(id, ev);
        emit(OutputRef::Event(&ev));
    }

    /// The live connection that took over the 4-tuple of a TIME_WAIT socket ending at `ev`:
    /// assigned no later than `ev`, as a connection reusing the 4-tuple is (the kernel
    /// kills the TIME_WAIT socket inside that connect(), after choosing the port).
    fn reused_by(&mut self, ev: &Event) -> Option<u64> {
        let id = *self.by_tuple.get(&ev.ends)?;
        self.get(id).assigned_ns().filter(|&a| a <= ev.ts_ns)
    }

    fn release_time_wait(&mut self, ev: &Event, emit: &mut impl FnMut(OutputRef<'_>)) {
        let tw = ev.sock_id;
        // Killed by a new connection reusing its 4-tuple: a final end, even if a cancel,
        // timed where that connection began (on the tracepoint tier its assignment is timed
        // at SYN_SENT, microseconds before the port is chosen): the two never overlap.
        let reused_at = self.reused_by(ev);
        if reused_at.is_some() {
            self.counters.time_wait_reused += 1;
        }
        let end = reused_at.unwrap_or(ev.ts_ns);
        if !self.by_tw.contains_key(&tw) {
            // A TIME_WAIT socket from before the start (or missed). A cancel may be a
            // re-arm, or the timer's own expiry (which cancels, then runs the handler):
            // decided as for any TIME_WAIT socket, so its final release is not a second,
            // unmatched one.
            let lt = self.unseen(ev);
            if ev.tw_cancel && reused_at.is_none() {
                let id = self.open(lt, emit);
                self.by_tw.insert(tw, id);
                self.pending_cancel.insert(tw, *ev);
                self.cancel_queue.push_back((ev.ts_ns, tw));
                return;
            }
            let id = self.insert(lt);
            self.end_time_wait_at(id, ev, end, emit);
            return;
        }
        if ev.tw_cancel && reused_at.is_none() {
            self.pending_cancel.insert(tw, *ev);
            self.cancel_queue.push_back((ev.ts_ns, tw));
            return;
        }
        self.pending_cancel.remove(&tw);
        let id = self.by_tw.remove(&tw).expect("checked above");
        self.end_time_wait_at(id, ev, end, emit);
    }

    fn end_time_wait(&mut self, id: Id, ev: &Event, emit: &mut impl FnMut(OutputRef<'_>)) {
        self.end_time_wait_at(id, ev, ev.ts_ns, emit);
    }

    /// Ends TIME_WAIT lifetime `id` at `end_ns` (the event keeps its own time).
    fn end_time_wait_at(
        &mut self,
        id: Id,
        ev: &Event,
        end_ns: u64,
        emit: &mut impl FnMut(OutputRef<'_>),
    ) {
        let ev = self.attributed(id, ev);
        self.close(id, end_ns, emit);
        emit(OutputRef::Event(&ev));
    }

    /// Settles what is pending (cancelled TIME_WAIT timers) as of `now_ns`.
    pub fn advance(&mut self, now_ns: u64, emit: &mut impl FnMut(OutputRef<'_>)) {
        self.finalize_cancels(now_ns, emit);
    }

    /// Ends tracing: settles everything pending, then emits every lifetime still open
    /// (with `released_ns` None), oldest first.
    pub fn finish(&mut self, emit: &mut impl FnMut(OutputRef<'_>)) {
        self.finalize_cancels(u64::MAX, emit);
        // Sort small keys, not the lifetimes: a million 144-byte moves cost more than the rest.
        let mut order: Vec<(Option<u64>, u16, Id)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, lt)| lt.as_ref().map(|lt| (lt.assigned_ns(), lt.ends.lport, id)))
            .collect();
        order.sort_unstable();
        for (_, _, id) in order {
            if self.slots[id].is_some() {
                let lt = self.take_slot(id);
                emit(OutputRef::Lifetime(&lt));
            }
        }
        self.slots.clear();
        self.opened_after.clear();
        self.free.clear();
        self.by_sock.clear();
        self.by_tw.clear();
        self.by_tuple.clear();
        self.bound_tcp.clear();
        self.listener_owners.clear();
        let mut held: Vec<HeldAtStart> = self.held_at_start.drain().map(|(_, h)| h).collect();
        // Every field in the key: the map's order is random, the output must not be.
        held.sort_by_key(|h| {
            let (e, o) = (&h.ends, &h.owner);
            (
                (e.netns, e.proto, e.lport, e.rport, e.laddr, e.raddr),
                (o.pid, o.tid, o.uid, o.cgroup_id, o.comm.0, o.thread.0),
                (h.listening, h.time_wait, h.seen_ns),
            )
        });
        for h in held {
            emit(OutputRef::Lifetime(&h.lifetime()));
        }
    }
}

#[cfg(test)]
mod tests;
