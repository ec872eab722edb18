//! bind() on the cgroup tier (cgroup `bind4/6` and `post_bind4/6`, attached at the cgroup
//! v2 root): the port a bind took, TCP and UDP.
//!
//! `post_bind` runs in `__inet_bind` once `get_port` succeeded, so it sees the port but
//! not what was asked for: `bind4/6` runs just before, in the same call, and keeps by
//! thread (`BIND_REQUESTS`) whether the caller asked for port 0 (bind(0): an ephemeral
//! port) or a given one. (Not per CPU: the thread may be preempted and move in between.)
//! A bind whose request is not found (evicted) is reported as `bind`, marked guessed. A
//! bind that fails runs no `post_bind` hook: the cgroup tier does not see bind failures
//! (README).

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use port_tracer_common::{lost, more_flags, EventKind, Origin, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    emit::{allow, count_lost, emit},
    kernel::{fill_event, fill_own_port_range, plain_address, tid},
    udp_autobind, BIND_REQUESTS,
};

/// A bind in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BindRequest {
    pub sk: u64,
    pub tid: u32,
    /// The port asked for, host order: 0 for bind(0).
    pub port: u16,
    pub _pad: u16,
}

#[inline(always)]
fn on_bind_request(ctx: &SockAddrContext) -> Result<(), i32> {
    let a = unsafe { &*ctx.sock_addr };
    if a.protocol != IPPROTO_TCP as u32 && a.protocol != IPPROTO_UDP as u32 {
        return Ok(());
    }
    let sk = plain_address(unsafe { a.__bindgen_anon_1.sk } as u64)?;
    let tid = tid();
    let request = BindRequest {
        sk,
        tid,
        port: u16::from_be(a.user_port as u16),
        _pad: 0,
    };
    if BIND_REQUESTS.insert(tid, request, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
    Ok(())
}

#[cgroup_sock_addr(bind4)]
pub fn bind4_request(ctx: SockAddrContext) -> i32 {
    allow(on_bind_request(&ctx))
}

#[cgroup_sock_addr(bind6)]
pub fn bind6_request(ctx: SockAddrContext) -> i32 {
    allow(on_bind_request(&ctx))
}

/// The kernel address of the socket a cgroup sock program runs for.
#[inline(always)]
pub fn sock_address(ctx: &SockContext) -> Result<u64, i32> {
    plain_address(ctx.sock as u64)
}

#[inline(always)]
fn on_post_bind(ctx: &SockContext) -> Result<(), i32> {
    let proto = unsafe { (*ctx.sock).protocol };
    if proto != IPPROTO_TCP as u32 && proto != IPPROTO_UDP as u32 {
        return Ok(());
    }
    let proto = proto as u8;
    let sk = sock_address(ctx)?;
    // Plain integers, not an Option: the verifier refuses reading an unset payload.
    let (mut origin, mut guessed) = (Origin::Bind, true);
    let tid = tid();
    if let Some(r) = unsafe { BIND_REQUESTS.get(tid) } {
        if r.sk == sk {
            guessed = false;
            if r.port == 0 {
                origin = Origin::BindEphemeral;
            }
        }
    }
    if !guessed {
        let _ = BIND_REQUESTS.remove(tid);
    }
    if proto == IPPROTO_UDP {
        udp_autobind::bound(sk)?;
    }
    emit(|ev| {
        fill_event(ev, sk, EventKind::Assign, origin, proto)?;
        fill_own_port_range(ev, sk);
        if guessed {
            ev.more_flags = more_flags::ORIGIN_GUESSED;
        }
        Ok(())
    });
    Ok(())
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    allow(on_post_bind(&ctx))
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    allow(on_post_bind(&ctx))
}
