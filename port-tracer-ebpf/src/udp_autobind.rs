//! UDP autobind on the cgroup tier (cgroup `sendmsg4/6`, `connect4/6`).
//!
//! A UDP socket that sends before it binds gets a port inside `sendmsg`; the kernel runs the
//! `sendmsg` hook after that autobind, but the hook cannot tell a port just taken from one
//! held for hours. An autobound socket is bound to no address (the wildcard) until it
//! connects; so the first unconnected send of a wildcard-bound UDP socket is taken for its
//! autobind, and remembered (`SEEN_UDP`) so that later sends are not. Wildcard binds
//! (`post_bind`) are remembered too. A socket from before the start, bound to the wildcard,
//! is reported at its first send all the same: userspace knows it from the snapshot of
//! sockets held at start (the lifetime tracker's `assign`). Sends on sockets bound to an
//! address, the usual client, cost one read.
//!
//! `connect()` autobinds too, but no hook runs after it: the `connect` hook, just before,
//! remembers who connects an unbound socket (`CONNECTING`), and the socket's port is
//! reported when it closes (`udp_release`), timed and attributed as at the connect.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use port_tracer_common::{flags, lost, EventKind, Origin, AF_INET, IPPROTO_UDP};

use crate::{
    connect,
    emit::{allow, count_lost, emit_assigned, Meta},
    kernel::{alloc_of, fill_owner, off, plain_address, read, sock_family, sock_num},
    SEEN_UDP,
};

/// `SEEN_UDP` values: a port known (bound to the wildcard, or autobound by a send), or
/// autobound by a `connect()` whose port is read at the close.
const KNOWN: u8 = 0;
const CONNECTED: u8 = 1;

/// Remembers `sk` as `mark`; false (counted) when the map is full.
#[inline(always)]
fn remember(sk: u64, mark: u8) -> bool {
    if SEEN_UDP.insert(sk, mark, 0).is_err() {
        count_lost(lost::MAP_FULL);
        return false;
    }
    true
}

/// Whether `sk` is bound to no local address (IPv4 0.0.0.0 or IPv6 ::), as an autobound
/// socket is.
#[inline(always)]
fn wildcard(sk: u64) -> Result<bool, i32> {
    if sock_family(sk)? == AF_INET {
        return Ok(read::<u32>(sk, off!(skc_rcv_saddr))? == 0);
    }
    Ok(read::<[u64; 2]>(sk, off!(skc_v6_rcv_saddr))? == [0, 0])
}

/// After a UDP bind (`post_bind`): one to the wildcard is remembered, so that its sends are
/// not taken for autobinds.
#[inline(always)]
pub fn bound(sk: u64) -> Result<(), i32> {
    if wildcard(sk)? {
        remember(sk, KNOWN);
    }
    Ok(())
}

/// Takes the mark of `sk`, once: KNOWN, CONNECTED, or None for a socket not remembered.
#[inline(always)]
fn take_mark(sk: u64) -> Option<u8> {
    let mark = *unsafe { SEEN_UDP.get(sk) }?;
    SEEN_UDP.remove(sk).ok().map(|_| mark)
}

/// The kernel address of the socket behind a sock_addr hook, a plain number.
#[inline(always)]
fn sock_addr_sock(ctx: &SockAddrContext) -> Result<u64, i32> {
    plain_address(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk } as u64)
}

#[inline(always)]
fn on_sendmsg(ctx: &SockAddrContext) -> Result<(), i32> {
    if unsafe { (*ctx.sock_addr).protocol } != IPPROTO_UDP as u32 {
        return Ok(());
    }
    let sk = sock_addr_sock(ctx)?;
    // Not remembered (a full map, counted): not reported either, or every send would be.
    if !wildcard(sk)? || unsafe { SEEN_UDP.get(sk) }.is_some() || !remember(sk, KNOWN) {
        return Ok(());
    }
    let (alloc, _) = alloc_of(sk, 0);
    let meta = Meta::now(EventKind::Assign, Origin::Autobind, IPPROTO_UDP);
    emit_assigned(sk, meta, |a| {
        fill_owner(&mut a.owner);
        a.alloc = alloc;
        Ok(())
    });
    Ok(())
}

#[cgroup_sock_addr(sendmsg4)]
pub fn udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    allow(on_sendmsg(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    allow(on_sendmsg(&ctx))
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext) -> Result<(), i32> {
    if unsafe { (*ctx.sock_addr).protocol } != IPPROTO_UDP as u32 {
        return Ok(());
    }
    let sk = sock_addr_sock(ctx)?;
    // The close looks up the connect only for sockets marked so.
    if sock_num(sk)? == 0 && remember(sk, CONNECTED) {
        connect::start_connect(sk);
    }
    Ok(())
}

#[cgroup_sock_addr(connect4)]
pub fn udp_connect4(ctx: SockAddrContext) -> i32 {
    allow(on_connect(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn udp_connect6(ctx: SockAddrContext) -> i32 {
    allow(on_connect(&ctx))
}

/// At the close of UDP socket `sk` (cgroup tier): the port a `connect()` autobound, reported
/// now as taken at the connect. Forgets the socket; true if its port was given back unseen
/// (nothing more to report).
#[inline(always)]
pub fn released(sk: u64) -> bool {
    if take_mark(sk) != Some(CONNECTED) {
        return false;
    }
    let Some(c) = connect::take_connecting(sk) else {
        return false;
    };
    let port = match sock_num(sk) {
        Ok(p) => p,
        Err(_) => {
            count_lost(lost::READ_ERROR);
            return false;
        }
    };
    if port == 0 {
        // The connect failed, or a disconnect gave the port back: which port it held, if
        // any, is not known.
        count_lost(lost::PORT_UNKNOWN);
        return true;
    }
    let (alloc, _) = alloc_of(sk, 0);
    let meta = Meta::at(c.ts_ns, EventKind::Assign, Origin::Autobind, IPPROTO_UDP)
        .flags(flags::SEEN_AT_CLOSE);
    emit_assigned(sk, meta, |a| {
        a.owner = c.owner;
        a.alloc = alloc;
        Ok(())
    });
    false
}
