//! Writing records to the ring buffer, and counting what could not be written.
//!
//! A record is as long as its socket's family and its kind need (`port_tracer_common::
//! Record`): the socket is read first, then a record of that size is reserved (the
//! verifier wants each reservation's size fixed at its call site: one per family and body)
//! and built in place in the ring buffer, not on the stack: the BPF stack is 512 bytes for
//! a whole call chain, and older verifiers count it strictly.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
};
use port_tracer_common::{
    body, lost, Addrs4, Addrs6, Assigned, EventKind, Failed, Head, NoBody, Origin, Record, AF_INET,
    AF_INET6,
};

use crate::{
    kernel::{off, read},
    CONFIG, EVENTS, LOST,
};

/// Counts one dropped event under `reason` (an index of `port_tracer_common::lost`).
#[inline(always)]
pub fn count_lost(reason: u32) {
    if let Some(p) = LOST.get_ptr_mut(reason) {
        // Per-CPU slot: no other writer.
        unsafe { *p += 1 };
    }
}

/// What a cgroup socket program returns after `r`: always 1 ("allow": a program that
/// returns 0 refuses the call, or for `sock_release` stops the hook), counting a failed
/// kernel read.
#[inline(always)]
pub fn allow(r: Result<(), i32>) -> i32 {
    if r.is_err() {
        count_lost(lost::READ_ERROR);
    }
    1
}

/// `Meta::lport` for "the port the socket holds".
const PORT_OF_SOCK: u32 = 1 << 16;

/// What a record says beyond what its socket gives: when, what, how.
#[derive(Clone, Copy)]
pub struct Meta {
    pub ts_ns: u64,
    pub kind: EventKind,
    pub origin: Origin,
    pub proto: u8,
    pub flags: u8,
    pub more_flags: u8,
    /// The local port to report instead of the one the socket holds now (which may be
    /// gone), or [`PORT_OF_SOCK`].
    lport: u32,
}

impl Meta {
    /// An event now.
    #[inline(always)]
    pub fn now(kind: EventKind, origin: Origin, proto: u8) -> Meta {
        Meta::at(unsafe { bpf_ktime_get_ns() }, kind, origin, proto)
    }

    /// An event timed at `ts_ns`.
    #[inline(always)]
    pub fn at(ts_ns: u64, kind: EventKind, origin: Origin, proto: u8) -> Meta {
        Meta {
            ts_ns,
            kind,
            origin,
            proto,
            flags: 0,
            more_flags: 0,
            lport: PORT_OF_SOCK,
        }
    }

    #[inline(always)]
    pub fn flags(mut self, flags: u8) -> Meta {
        self.flags |= flags;
        self
    }

    #[inline(always)]
    pub fn more_flags(mut self, more_flags: u8) -> Meta {
        self.more_flags |= more_flags;
        self
    }

    /// Reports `port` as the local port, not the socket's own now.
    #[inline(always)]
    pub fn lport(mut self, port: u16) -> Meta {
        self.lport = port as u32;
        self
    }
}

/// The head of `sock_common`, read in one go: `skc_addrpair`, `skc_hash`, `skc_portpair`,
/// `skc_family`, then up to `skc_net` (at [`SOCK_HEAD_NET`] from `skc_daddr`). Userspace
/// checks at start that the kernel lays them out this way (every kernel since 4.x does).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockHead {
    pub daddr: [u8; 4],
    pub rcv_saddr: [u8; 4],
    _hash: u32,
    pub dport: u16,
    pub num: u16,
    pub family: u16,
    _state_and_flags: u16,
    _between: [u64; 3],
    pub net: u64,
}

const _: () = assert!(core::mem::offset_of!(SockHead, net) == port_tracer_common::SOCK_HEAD_NET);

/// What a record takes from its socket, read before the record is reserved: the family
/// says how long the record is.
pub struct Sock {
    pub sk: u64,
    pub head: SockHead,
    pub netns: u32,
}

/// Reads what a record of socket `sk` takes from it: two kernel reads (one for the head
/// and the namespace's address, one for the namespace's inode), each a helper call.
#[inline(always)]
pub fn read_sock(sk: u64) -> Result<Sock, i32> {
    let head: SockHead = read(sk, off!(skc_daddr))?;
    let netns: u32 = read(head.net, off!(net_inum))?;
    Ok(Sock { sk, head, netns })
}

/// An address the caller asked for, in place of the socket's (a failed bind's or
/// connect's sockaddr): `local` or remote, the address in the family's bytes, the port.
#[derive(Clone, Copy)]
pub struct Requested {
    pub local: bool,
    pub addr: [u8; 16],
    pub port: u16,
}

/// A family's addresses in a record.
trait Addrs {
    fn fill(&mut self, s: &Sock) -> Result<(), i32>;
    fn request(&mut self, r: &Requested);
}

impl Addrs for Addrs4 {
    #[inline(always)]
    fn fill(&mut self, s: &Sock) -> Result<(), i32> {
        self.laddr = s.head.rcv_saddr;
        self.raddr = s.head.daddr;
        Ok(())
    }

    #[inline(always)]
    fn request(&mut self, r: &Requested) {
        let a = [r.addr[0], r.addr[1], r.addr[2], r.addr[3]];
        if r.local {
            self.laddr = a;
        } else {
            self.raddr = a;
        }
    }
}

impl Addrs for Addrs6 {
    #[inline(always)]
    fn fill(&mut self, s: &Sock) -> Result<(), i32> {
        self.laddr = read(s.sk, off!(skc_v6_rcv_saddr))?;
        self.raddr = read(s.sk, off!(skc_v6_daddr))?;
        Ok(())
    }

    #[inline(always)]
    fn request(&mut self, r: &Requested) {
        if r.local {
            self.laddr = r.addr;
        } else {
            self.raddr = r.addr;
        }
    }
}

/// Writes one record about socket `sk`: `meta`, what the socket gives, and the body `fill`
/// writes (`body`: its `port_tracer_common::body` value), with the addresses `requested`
/// in place of the socket's when given. A failed read discards it, counted.
#[inline(always)]
fn emit<B: Copy + 'static>(
    sk: u64,
    meta: Meta,
    body: u8,
    requested: Option<&Requested>,
    fill: impl FnOnce(&mut B) -> Result<(), i32>,
) {
    match read_sock(sk) {
        Ok(s) => emit_sock(&s, meta, body, requested, fill),
        Err(_) => count_lost(lost::READ_ERROR),
    }
}

/// [`emit`] for a socket already read.
#[inline(always)]
fn emit_sock<B: Copy + 'static>(
    s: &Sock,
    meta: Meta,
    body: u8,
    requested: Option<&Requested>,
    fill: impl FnOnce(&mut B) -> Result<(), i32>,
) {
    match s.head.family as u8 {
        AF_INET => write::<Addrs4, B>(s, meta, body, requested, fill),
        AF_INET6 => write::<Addrs6, B>(s, meta, body, requested, fill),
        // Not an inet socket after all: a read raced with the socket's end.
        _ => count_lost(lost::READ_ERROR),
    }
}

#[inline(always)]
fn write<A: Addrs + Copy + 'static, B: Copy + 'static>(
    s: &Sock,
    meta: Meta,
    body: u8,
    requested: Option<&Requested>,
    fill: impl FnOnce(&mut B) -> Result<(), i32>,
) {
    let Some(mut entry) = EVENTS.reserve::<Record<A, B>>(0) else {
        count_lost(lost::RINGBUF_FULL);
        return;
    };
    // SAFETY: reserved memory of the right size, zeroed before use.
    let rec = unsafe {
        let p = entry.as_mut_ptr();
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    rec.head = Head {
        ts_ns: meta.ts_ns,
        sock_id: s.sk,
        netns: s.netns,
        lport: if meta.lport == PORT_OF_SOCK {
            s.head.num
        } else {
            meta.lport as u16
        },
        rport: u16::from_be(s.head.dport),
        kind: meta.kind as u8,
        origin: meta.origin as u8,
        flags: meta.flags,
        more_flags: meta.more_flags,
        proto: meta.proto,
        family: s.head.family as u8,
        body,
        len: core::mem::size_of::<Record<A, B>>() as u8,
    };
    let filled = rec.addrs.fill(s).and_then(|()| fill(&mut rec.body));
    if filled.is_err() {
        entry.discard(0);
        count_lost(lost::READ_ERROR);
        return;
    }
    if let Some(r) = requested {
        rec.addrs.request(r);
        if r.local {
            rec.head.lport = r.port;
        } else {
            rec.head.rport = r.port;
        }
    }
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&CONFIG.wakeup_bytes) };
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// A record of socket `sk` with nothing but what `meta` and the socket say: releases,
/// TIME_WAIT transitions, accepted sockets, peer updates. No task: userspace attributes
/// them to the lifetime's owner (the task at hand is often not the owner anyway: a
/// softirq, a timer).
#[inline(always)]
pub fn emit_plain(sk: u64, meta: Meta) {
    emit::<NoBody>(sk, meta, body::NONE, None, |_| Ok(()));
}

/// [`emit_plain`] for a socket already read.
#[inline(always)]
pub fn emit_plain_sock(s: &Sock, meta: Meta) {
    emit_sock::<NoBody>(s, meta, body::NONE, None, |_| Ok(()));
}

/// An assignment of socket `sk`; `fill` writes who got the port and what it cost.
#[inline(always)]
pub fn emit_assigned(sk: u64, meta: Meta, fill: impl FnOnce(&mut Assigned) -> Result<(), i32>) {
    emit::<Assigned>(sk, meta, body::ASSIGNED, None, fill);
}

/// A failed allocation for socket `sk`, with the addresses `requested` in place of the
/// socket's when given; `fill` writes who asked, what it cost and the errno.
#[inline(always)]
pub fn emit_failed(
    sk: u64,
    meta: Meta,
    requested: Option<&Requested>,
    fill: impl FnOnce(&mut Failed) -> Result<(), i32>,
) {
    emit::<Failed>(sk, meta, body::FAILED, requested, fill);
}
