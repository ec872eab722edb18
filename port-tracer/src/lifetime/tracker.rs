//! The tracker: events in (in timestamp order), lifetimes out.

use std::{collections::VecDeque, hash::BuildHasher};

use foldhash::HashMap;
use hashbrown::HashTable;
use serde::Serialize;

use super::record::*;
use crate::event::{Endpoints, Event, Kind, Origin, Proto, Task};

/// How long a cancelled TIME_WAIT timer may wait for its re-arm (or, at expiry, for its
/// handler) before the cancel counts as the end of TIME_WAIT. The kernel cancels and
/// re-arms (or runs the handler) in one call on one CPU, microseconds apart on bare metal;
/// in a virtual machine the host can deschedule the vCPU in between (5.8 ms seen in an
/// emulated guest on a loaded host, where a 1 ms grace took the expiry's handler for a
/// TIME_WAIT socket never seen). Waiting longer costs nothing but the delay: the end keeps
/// the cancel's time, and whether a start is a re-arm is the kernel's mark, not the gap.
pub const TW_REARM_GRACE_NS: u64 = 50_000_000;

/// Default limit of open lifetimes: about 190 MB at some 180 bytes each (the analyses'
/// state included).
pub const DEFAULT_MAX_OPEN: usize = 1 << 20;

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

/// Identity of an open lifetime in the table: its slot.
type Id = u32;

/// Bits of [`Open::flags`].
const LOSSY: u8 = 1;
const LADDR_LEARNT: u8 = 1 << 1;
const SEEN_AT_CLOSE: u8 = 1 << 2;
const ENDED_AT_CLOSE: u8 = 1 << 3;
const ALLOC_TIMED: u8 = 1 << 4;

/// An open lifetime as the table keeps it: a [`Lifetime`] with its owner interned (one
/// [`Task`] for all the sockets a thread holds) and its analyses' [`Links`].
#[derive(Clone, Copy, Debug)]
struct Open {
    ends: Endpoints,
    sock_id: u64,
    /// The TIME_WAIT socket that holds its port now (0: none).
    tw_sock: u64,
    assigned: Time,
    time_wait_start: Time,
    /// In [`Owners`].
    owner: u32,
    alloc_ns: u32,
    /// How many losses had been seen when it opened: one that ends after a later loss is
    /// lossy (marking them all at each loss would walk the whole table, again and again
    /// while losses go on).
    losses: u32,
    links: Links,
    origin: Origin,
    flags: u8,
}

impl Open {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        }
    }

    /// Takes the peer from a later view of the socket (see [`Endpoints::learn_peer`]).
    fn learn_peer(&mut self, other: &Endpoints) {
        let wildcard = self.ends.laddr.is_unspecified();
        self.ends.learn_peer(other);
        self.set(LADDR_LEARNT, wildcard && !self.ends.laddr.is_unspecified());
    }

    fn lifetime(&self, owner: Task, released: Time, lossy: bool) -> Lifetime {
        Lifetime {
            ends: self.ends,
            owner,
            origin: self.origin,
            sock_id: self.sock_id,
            assigned: self.assigned,
            released,
            time_wait_start: self.time_wait_start,
            lossy: lossy || self.has(LOSSY),
            laddr_learnt: self.has(LADDR_LEARNT),
            seen_at_close: self.has(SEEN_AT_CLOSE),
            ended_at_close: self.has(ENDED_AT_CLOSE),
            alloc_ns: self.has(ALLOC_TIMED).then_some(self.alloc_ns),
        }
    }
}

/// The tables' hasher: fixed (no per-process seed to draw), fast on small keys.
fn hash(key: impl std::hash::Hash) -> u64 {
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key)
}

/// A TCP 4-tuple in a namespace, as `by_tuple` hashes it.
fn tuple_hash(e: &Endpoints) -> u64 {
    hash((e.netns, e.lport, e.rport, e.laddr, e.raddr))
}

fn same_tuple(a: &Endpoints, b: &Endpoints) -> bool {
    (
        a.netns, a.lport, a.rport, a.laddr, a.raddr, a.proto, a.family,
    ) == (
        b.netns, b.lport, b.rport, b.laddr, b.raddr, b.proto, b.family,
    )
}

/// The owners of open lifetimes, each kept once while any lifetime has it.
#[derive(Default)]
struct Owners {
    tasks: Vec<(Task, u32)>,
    free: Vec<u32>,
    index: HashTable<u32>,
    /// The last one interned: storms repeat their owner.
    last: Option<u32>,
}

impl Owners {
    fn get(&self, id: u32) -> Task {
        self.tasks[id as usize].0
    }

    /// `task`'s id, one more lifetime holding it.
    fn intern(&mut self, task: &Task) -> u32 {
        if let Some(id) = self.last.filter(|&id| self.tasks[id as usize].0 == *task) {
            self.tasks[id as usize].1 += 1;
            return id;
        }
        let h = hash(task);
        let tasks = &self.tasks;
        let id = match self.index.find(h, |&id| tasks[id as usize].0 == *task) {
            Some(&id) => {
                self.tasks[id as usize].1 += 1;
                id
            }
            None => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.tasks[id as usize] = (*task, 1);
                        id
                    }
                    None => {
                        self.tasks.push((*task, 1));
                        (self.tasks.len() - 1) as u32
                    }
                };
                let tasks = &self.tasks;
                self.index
                    .insert_unique(h, id, |&id| hash(tasks[id as usize].0));
                id
            }
        };
        self.last = Some(id);
        id
    }

    /// One lifetime fewer holds `id`; the last one frees it.
    fn release(&mut self, id: u32) {
        let refs = &mut self.tasks[id as usize].1;
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let task = self.tasks[id as usize].0;
        if let Ok(e) = self.index.find_entry(hash(task), |&x| x == id) {
            e.remove();
        }
        self.free.push(id);
        if self.last == Some(id) {
            self.last = None;
        }
    }

    fn clear(&mut self) {
        self.tasks.clear();
        self.free.clear();
        self.index.clear();
        self.last = None;
    }
}

/// Reconstructs lifetimes from events.
pub struct Tracker {
    /// The most lifetimes open at once; beyond it the oldest are evicted.
    max_open: usize,
    slots: Vec<Option<Open>>,
    /// Losses seen (see [`Tracker::mark_lossy`]).
    losses: u32,
    free: Vec<Id>,
    owners: Owners,
    /// Open lifetimes by socket address (slot ids, hashed by their `sock_id`).
    by_sock: HashTable<Id>,
    /// Lifetimes in TIME_WAIT, by the TIME_WAIT socket's address (slot ids, hashed by
    /// their `tw_sock`).
    by_tw: HashTable<Id>,
    /// Open TCP lifetimes with a remote endpoint and not yet in TIME_WAIT, by endpoints.
    by_tuple: HashTable<Id>,
    /// Open TCP lifetimes without a remote endpoint (bound, listening), by (netns, port).
    bound_tcp: HashTable<Id>,
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

/// Emits an output with the handles of the lifetime it is about.
fn give(emit: &mut impl FnMut(Emitted<'_>), output: OutputRef<'_>, links: Option<&mut Links>) {
    emit(Emitted { output, links });
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker that keeps at most `max_open` lifetimes open (at least 1).
    pub fn with_max_open(max_open: usize) -> Self {
        Tracker {
            max_open: max_open.clamp(1, u32::MAX as usize - 1),
            slots: Vec::new(),
            losses: 0,
            free: Vec::new(),
            owners: Owners::default(),
            by_sock: HashTable::new(),
            by_tw: HashTable::new(),
            by_tuple: HashTable::new(),
            bound_tcp: HashTable::new(),
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

    fn get(&mut self, id: Id) -> &mut Open {
        self.slots[id as usize]
            .as_mut()
            .expect("index points at an open lifetime")
    }

    fn owner_of(&self, id: Id) -> Task {
        let o = self.slots[id as usize].as_ref().expect("open lifetime");
        self.owners.get(o.owner)
    }

    /// Takes lifetime `id` out of the table as it ends (`released`: when, or None, cut off
    /// still open), lossy if events were lost while it was open; with its handles.
    fn take_slot(&mut self, id: Id, released: Time) -> (Lifetime, Links) {
        let (sock, tw) = (self.get(id).sock_id, self.get(id).tw_sock);
        if self.sock_of(sock) == Some(id) {
            self.unmap_sock(sock);
        }
        if tw != 0 && self.tw_of(tw) == Some(id) {
            self.unmap_tw(tw);
        }
        let o = self.slots[id as usize].take().expect("open lifetime");
        self.free.push(id);
        let owner = self.owners.get(o.owner);
        self.owners.release(o.owner);
        (
            o.lifetime(owner, released, o.losses != self.losses),
            o.links,
        )
    }

    /// A new open lifetime `lt`, owned by `owner`; opened to stay (`evict`: first making
    /// room if the table is full) or to be closed at once.
    fn open_new(&mut self, lt: Lifetime, evict: bool, emit: &mut impl FnMut(Emitted<'_>)) -> Id {
        if evict && self.open_lifetimes() >= self.max_open {
            self.evict_oldest(emit);
        }
        let mut flags = 0;
        for (on, bit) in [
            (lt.lossy, LOSSY),
            (lt.laddr_learnt, LADDR_LEARNT),
            (lt.seen_at_close, SEEN_AT_CLOSE),
            (lt.ended_at_close, ENDED_AT_CLOSE),
            (lt.alloc_ns.is_some(), ALLOC_TIMED),
        ] {
            if on {
                flags |= bit;
            }
        }
        let o = Open {
            ends: lt.ends,
            sock_id: lt.sock_id,
            tw_sock: 0,
            assigned: lt.assigned,
            time_wait_start: lt.time_wait_start,
            owner: self.owners.intern(&lt.owner),
            alloc_ns: lt.alloc_ns.unwrap_or(0),
            losses: self.losses,
            links: Links::UNSET,
            origin: lt.origin,
            flags,
        };
        match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(o);
                id
            }
            None => {
                self.slots.push(Some(o));
                (self.slots.len() - 1) as Id
            }
        }
    }

    /// The open lifetime of socket `sock`, if any.
    fn sock_of(&self, sock: u64) -> Option<Id> {
        let slots = &self.slots;
        self.by_sock
            .find(hash(sock), |&id| {
                slots[id as usize]
                    .as_ref()
                    .is_some_and(|o| o.sock_id == sock)
            })
            .copied()
    }

    /// Socket `sock`'s lifetime is `id` from now on.
    fn map_sock(&mut self, sock: u64, id: Id) {
        self.unmap_sock(sock);
        let slots = &self.slots;
        self.by_sock.insert_unique(hash(sock), id, |&id| {
            hash(slots[id as usize].as_ref().expect("open").sock_id)
        });
    }

    fn unmap_sock(&mut self, sock: u64) {
        let slots = &self.slots;
        if let Ok(e) = self.by_sock.find_entry(hash(sock), |&id| {
            slots[id as usize]
                .as_ref()
                .is_some_and(|o| o.sock_id == sock)
        }) {
            e.remove();
        }
    }

    /// The lifetime whose port TIME_WAIT socket `tw` holds, if any.
    fn tw_of(&self, tw: u64) -> Option<Id> {
        let slots = &self.slots;
        self.by_tw
            .find(hash(tw), |&id| {
                slots[id as usize].as_ref().is_some_and(|o| o.tw_sock == tw)
            })
            .copied()
    }

    /// TIME_WAIT socket `tw` holds lifetime `id`'s port from now on.
    fn map_tw(&mut self, tw: u64, id: Id) {
        self.unmap_tw(tw);
        self.get(id).tw_sock = tw;
        let slots = &self.slots;
        self.by_tw.insert_unique(hash(tw), id, |&id| {
            hash(slots[id as usize].as_ref().expect("open").tw_sock)
        });
    }

    /// Forgets TIME_WAIT socket `tw`; the lifetime it held, if any.
    fn unmap_tw(&mut self, tw: u64) -> Option<Id> {
        let slots = &self.slots;
        let e = self
            .by_tw
            .find_entry(hash(tw), |&id| {
                slots[id as usize].as_ref().is_some_and(|o| o.tw_sock == tw)
            })
            .ok()?;
        let (id, _) = e.remove();
        Some(id)
    }

    /// The open connected TCP lifetime (not in TIME_WAIT) of endpoints `e`, if any.
    fn tuple_of(&self, e: &Endpoints) -> Option<Id> {
        let slots = &self.slots;
        self.by_tuple
            .find(tuple_hash(e), |&id| {
                slots[id as usize]
                    .as_ref()
                    .is_some_and(|o| same_tuple(&o.ends, e))
            })
            .copied()
    }

    /// The open bound TCP lifetime of `port` in `netns`, if any.
    fn bound_of(&self, netns: u32, port: u16) -> Option<Id> {
        let slots = &self.slots;
        self.bound_tcp
            .find(hash((netns, port)), |&id| {
                slots[id as usize]
                    .as_ref()
                    .is_some_and(|o| (o.ends.netns, o.ends.lport) == (netns, port))
            })
            .copied()
    }

    /// Adds `id` to the endpoint indexes its lifetime belongs in (replacing the entry of
    /// another lifetime with the same key).
    fn index(&mut self, id: Id) {
        let o = *self.get(id);
        if o.ends.proto != Proto::Tcp || o.time_wait_start.is_some() {
            return;
        }
        let slots = &self.slots;
        let ends = o.ends;
        if ends.rport != 0 {
            let h = tuple_hash(&ends);
            let slot_hash = |&id: &Id| tuple_hash(&slots[id as usize].as_ref().expect("open").ends);
            match self.by_tuple.find_entry(h, |&x| {
                slots[x as usize]
                    .as_ref()
                    .is_some_and(|o| same_tuple(&o.ends, &ends))
            }) {
                Ok(mut e) => *e.get_mut() = id,
                Err(_) => {
                    self.by_tuple.insert_unique(h, id, slot_hash);
                }
            }
        } else {
            let key = (ends.netns, ends.lport);
            let h = hash(key);
            let slot_hash = |&id: &Id| {
                let e = &slots[id as usize].as_ref().expect("open").ends;
                hash((e.netns, e.lport))
            };
            match self.bound_tcp.find_entry(h, |&x| {
                slots[x as usize]
                    .as_ref()
                    .is_some_and(|o| (o.ends.netns, o.ends.lport) == key)
            }) {
                Ok(mut e) => *e.get_mut() = id,
                Err(_) => {
                    self.bound_tcp.insert_unique(h, id, slot_hash);
                }
            }
        }
    }

    /// Removes `id` from the endpoint indexes.
    fn unindex(&mut self, id: Id) {
        let ends = self.get(id).ends;
        if let Ok(e) = self.by_tuple.find_entry(tuple_hash(&ends), |&x| x == id) {
            e.remove();
        }
        if let Ok(e) = self
            .bound_tcp
            .find_entry(hash((ends.netns, ends.lport)), |&x| x == id)
        {
            e.remove();
        }
    }

    /// Ends lifetime `id` at `ts` and emits it.
    fn close(&mut self, id: Id, ts: u64, emit: &mut impl FnMut(Emitted<'_>)) {
        self.unindex(id);
        let (lt, mut links) = self.take_slot(id, time(ts));
        give(emit, OutputRef::Lifetime(&lt), Some(&mut links));
    }

    /// Attributes `ev`, in place, to the owner and origin of lifetime `id`.
    fn attribute(&mut self, id: Id, ev: &mut Event) {
        ev.task = self.owner_of(id);
        ev.origin = self.get(id).origin;
    }

    /// Emits `ev` (attributed) about open lifetime `id`, with its handles.
    fn emit_about(&mut self, id: Id, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
        self.attribute(id, ev);
        let links = &mut self.get(id).links;
        give(emit, OutputRef::Event(ev), Some(links));
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
                let origin = if before_start {
                    Origin::Preexisting
                } else {
                    Origin::Unknown
                };
                Lifetime::new(ev.ends, Task::default(), origin, ev.sock_id)
            }
        }
    }

    fn finalize_cancels(&mut self, before_ns: u64, emit: &mut impl FnMut(Emitted<'_>)) {
        while let Some(&(ts, tw)) = self.cancel_queue.front() {
            if ts.saturating_add(TW_REARM_GRACE_NS) > before_ns {
                break;
            }
            self.cancel_queue.pop_front();
            if self.pending_cancel.get(&tw).map(|ev| ev.ts_ns) == Some(ts) {
                let mut ev = self.pending_cancel.remove(&tw).expect("checked above");
                if let Some(id) = self.unmap_tw(tw) {
                    self.end_time_wait(id, &mut ev, emit);
                }
            }
        }
    }

    /// Makes room when the table is full: evicts the oldest sixteenth of the open lifetimes
    /// (by assignment time; held-at-start ones first). Batches keep the cost per eviction
    /// constant without an age index, which would cost memory on every lifetime.
    fn evict_oldest(&mut self, emit: &mut impl FnMut(Emitted<'_>)) {
        let mut ages: Vec<(u64, Id)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, o)| Some((o.as_ref()?.assigned.map_or(0, |t| t.get()), id as Id)))
            .collect();
        let k = (self.max_open / 16).clamp(1, ages.len());
        ages.select_nth_unstable(k - 1);
        ages.truncate(k);
        ages.sort_unstable();
        for (_, id) in ages {
            self.unindex(id);
            let (mut lt, mut links) = self.take_slot(id, None);
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
            lt.lossy = true;
            self.counters.evicted += 1;
            give(emit, OutputRef::Lifetime(&lt), Some(&mut links));
        }
    }

    /// Feeds one event; ended lifetimes and attributed events go to `emit`.
    pub fn process(&mut self, ev: &Event, emit: &mut impl FnMut(Emitted<'_>)) {
        self.process_in_place(&mut ev.clone(), emit);
    }

    /// [`Tracker::process`] of an event the caller gives up: it is attributed to its
    /// lifetime's owner in place, not copied for that (the reorder window's events).
    pub fn process_in_place(&mut self, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
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
            Kind::AllocFailure => give(emit, OutputRef::Event(ev), None),
        }
    }

    fn assign(&mut self, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
        self.counters.origin_guessed += u64::from(ev.origin_guessed);
        if let Some(id) = self.sock_of(ev.sock_id) {
            let o = self.get(id);
            if o.time_wait_start.is_some() {
                // The old hold lives on in its TIME_WAIT socket; this address is reused.
                self.unmap_sock(ev.sock_id);
            } else if o.ends.lport == ev.ends.lport && o.ends.proto == ev.ends.proto {
                self.counters.duplicate_assign += 1;
                return;
            } else {
                o.flags |= LOSSY;
                self.counters.release_missing += 1;
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
                let lt = Lifetime {
                    sock_id: ev.sock_id,
                    ..h.lifetime()
                };
                let id = self.open_new(lt, true, emit);
                self.map_sock(ev.sock_id, id);
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
            if let Some(lid) = self.bound_of(listener.0, listener.1) {
                owner = self.owner_of(lid);
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
        let lt = Lifetime {
            assigned: time(ev.ts_ns),
            lossy,
            seen_at_close: ev.seen_at_close,
            alloc_ns: ev.alloc_ns,
            ..Lifetime::new(ev.ends, owner, ev.origin, ev.sock_id)
        };
        let id = self.open_new(lt, true, emit);
        self.map_sock(ev.sock_id, id);
        self.index(id);
        ev.task = owner;
        let links = &mut self.get(id).links;
        give(emit, OutputRef::Event(ev), Some(links));
    }

    fn remote_update(&mut self, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
        let Some(id) = self.sock_of(ev.sock_id) else {
            self.counters.unmatched += 1;
            return;
        };
        self.unindex(id);
        self.get(id).learn_peer(&ev.ends);
        self.index(id);
        self.emit_about(id, ev, emit);
    }

    fn release(&mut self, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
        match self.sock_of(ev.sock_id) {
            Some(id) => {
                self.unmap_sock(ev.sock_id);
                let o = self.get(id);
                if o.time_wait_start.is_some() {
                    return; // the TIME_WAIT socket holds the port now
                }
                o.set(ENDED_AT_CLOSE, ev.ended_at_close);
                if o.ends.rport == 0 && ev.ends.rport != 0 {
                    // Learnt the peer only now (e.g. bound before connect, on a tier that
                    // does not see connect itself): keep it, as a remote update would.
                    o.learn_peer(&ev.ends);
                }
                self.attribute(id, ev);
                self.close(id, ev.ts_ns, emit);
                give(emit, OutputRef::Event(ev), None);
            }
            // A socket that may never have held a port: nothing to end.
            None if ev.ended_at_close => {}
            None => {
                let lt = self.unseen(ev);
                let id = self.open_new(lt, false, emit);
                self.close(id, ev.ts_ns, emit);
                give(emit, OutputRef::Event(ev), None);
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
        let by_endpoints = *held == ev.ends && self.tuple_of(&ev.ends).is_none();
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

    fn time_wait(&mut self, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
        let tw = ev.sock_id;
        if let Some(old) = self.tw_of(tw) {
            let held = self.get(old).ends;
            if self.is_rearm(&held, ev) {
                self.pending_cancel.remove(&tw);
                self.counters.time_wait_rearm += 1;
                return;
            }
            // A new TIME_WAIT socket at the address of one that died: its cancel was its
            // end (or, without one, its end was missed).
            self.unmap_tw(tw);
            match self.pending_cancel.remove(&tw) {
                Some(mut cancel) => self.end_time_wait(old, &mut cancel, emit),
                None => {
                    self.counters.release_missing += 1;
                    self.get(old).flags |= LOSSY;
                    self.close(old, ev.ts_ns, emit);
                }
            }
        }
        let id = match self.tuple_of(&ev.ends) {
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
                self.open_new(lt, true, emit)
            }
        };
        self.get(id).time_wait_start = time(ev.ts_ns);
        self.map_tw(tw, id);
        self.emit_about(id, ev, emit);
    }

    /// The live connection that took over the 4-tuple of a TIME_WAIT socket ending at `ev`:
    /// assigned no later than `ev`, as a connection reusing the 4-tuple is (the kernel
    /// kills the TIME_WAIT socket inside that connect(), after choosing the port).
    fn reused_by(&mut self, ev: &Event) -> Option<u64> {
        let id = self.tuple_of(&ev.ends)?;
        self.get(id)
            .assigned
            .map(|t| t.get())
            .filter(|&a| a <= ev.ts_ns)
    }

    fn release_time_wait(&mut self, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
        let tw = ev.sock_id;
        // Killed by a new connection reusing its 4-tuple: a final end, even if a cancel,
        // timed where that connection began (on the tracepoint tier its assignment is timed
        // at SYN_SENT, microseconds before the port is chosen): the two never overlap.
        let reused_at = self.reused_by(ev);
        if reused_at.is_some() {
            self.counters.time_wait_reused += 1;
        }
        let end = reused_at.unwrap_or(ev.ts_ns);
        if self.tw_of(tw).is_none() {
            // A TIME_WAIT socket from before the start (or missed). A cancel may be a
            // re-arm, or the timer's own expiry (which cancels, then runs the handler):
            // decided as for any TIME_WAIT socket, so its final release is not a second,
            // unmatched one.
            let lt = self.unseen(ev);
            if ev.tw_cancel && reused_at.is_none() {
                let id = self.open_new(lt, true, emit);
                self.map_tw(tw, id);
                self.pending_cancel.insert(tw, *ev);
                self.cancel_queue.push_back((ev.ts_ns, tw));
                return;
            }
            let id = self.open_new(lt, false, emit);
            self.end_time_wait_at(id, ev, end, emit);
            return;
        }
        if ev.tw_cancel && reused_at.is_none() {
            self.pending_cancel.insert(tw, *ev);
            self.cancel_queue.push_back((ev.ts_ns, tw));
            return;
        }
        self.pending_cancel.remove(&tw);
        let id = self.unmap_tw(tw).expect("checked above");
        self.end_time_wait_at(id, ev, end, emit);
    }

    fn end_time_wait(&mut self, id: Id, ev: &mut Event, emit: &mut impl FnMut(Emitted<'_>)) {
        self.end_time_wait_at(id, ev, ev.ts_ns, emit);
    }

    /// Ends TIME_WAIT lifetime `id` at `end_ns` (the event keeps its own time).
    fn end_time_wait_at(
        &mut self,
        id: Id,
        ev: &mut Event,
        end_ns: u64,
        emit: &mut impl FnMut(Emitted<'_>),
    ) {
        self.attribute(id, ev);
        self.close(id, end_ns, emit);
        give(emit, OutputRef::Event(ev), None);
    }

    /// Settles what is pending (cancelled TIME_WAIT timers) as of `now_ns`.
    pub fn advance(&mut self, now_ns: u64, emit: &mut impl FnMut(Emitted<'_>)) {
        self.finalize_cancels(now_ns, emit);
    }

    /// Ends tracing: settles everything pending, then emits every lifetime still open
    /// (with `released_ns` None), oldest first.
    pub fn finish(&mut self, emit: &mut impl FnMut(Emitted<'_>)) {
        self.finalize_cancels(u64::MAX, emit);
        // Sort small keys, not the lifetimes.
        let mut order: Vec<(Option<u64>, u16, Id)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, o)| {
                o.as_ref()
                    .map(|o| (o.assigned.map(|t| t.get()), o.ends.lport, id as Id))
            })
            .collect();
        order.sort_unstable();
        for (_, _, id) in order {
            let (lt, mut links) = self.take_slot(id, None);
            give(emit, OutputRef::Lifetime(&lt), Some(&mut links));
        }
        self.slots.clear();
        self.free.clear();
        self.owners.clear();
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
            give(emit, OutputRef::Lifetime(&h.lifetime()), None);
        }
    }
}

#[cfg(test)]
mod size {
    /// What a million open lifetimes cost in slots (README's --max-lifetimes says so).
    #[test]
    fn an_open_slot_takes_about_a_hundred_bytes() {
        let n = std::mem::size_of::<Option<super::Open>>();
        eprintln!("open slot: {n} bytes");
        assert!(n <= 112, "{n}");
    }
}
