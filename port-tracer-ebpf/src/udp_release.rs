//! UDP port release on close (cgroup `sock_release`, attached at the cgroup v2 root).
//!
//! No tracepoint sees a UDP socket close; this hook runs in `inet_release` for every socket,
//! just before the protocol unhashes it.

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use port_tracer_common::{flags, EventKind, Origin, IPPROTO_UDP};

use crate::{
    bind::sock_address,
    emit::{allow, emit_plain, Meta},
    kernel::sock_num,
    udp_autobind, CONFIG,
};

#[inline(always)]
fn on_release(ctx: &SockContext) -> Result<(), i32> {
    if unsafe { (*ctx.sock).protocol } != IPPROTO_UDP as u32 {
        return Ok(());
    }
    let sk = sock_address(ctx)?;
    let num = sock_num(sk)?;
    if unsafe { core::ptr::read_volatile(&CONFIG.cgroup_tier) } != 0 {
        // A port autobound in connect() is seen only now (see `udp_autobind`).
        if udp_autobind::released(sk) {
            return Ok(()); // its port went unseen (counted)
        }
        if num == 0 {
            // A port the socket held may have been given back by connect(AF_UNSPEC), which
            // no hook of this tier sees: its lifetime, if one is open, ends now.
            emit_plain(sk, release().flags(flags::GONE_BEFORE_CLOSE));
            return Ok(());
        }
    }
    if num == 0 {
        return Ok(());
    }
    emit_plain(sk, release());
    Ok(())
}

/// A UDP socket's release, now.
#[inline(always)]
pub fn release() -> Meta {
    Meta::now(EventKind::Release, Origin::Unknown, IPPROTO_UDP)
}

#[cgroup_sock(sock_release)]
pub fn udp_sock_release(ctx: SockContext) -> i32 {
    allow(on_release(&ctx))
}
