//! bind() on the cgroup tier (cgroup `bind4/6` and `post_bind4/6`, attached at the cgroup
//! v2 root): the port a bind took, TCP and UDP.
//!
//! `post_bind` runs in `__inet_bind` once `get_port` succeeded, so it sees the port but
//! not what was asked for: `bind4/6` runs just before, in the same call, and keeps in the
//! thread's slot of `BIND_REQUESTS` whether the caller asked for port 0 (bind(0): an
//! ephemeral port) or a given one. (Not per CPU: the thread may be preempted and move in
//! between.) A bind whose request is not found (another thread sharing the slot bound at
//! the same time) is reported as `bind`, marked guessed. A bind that fails runs no
//! `post_bind` hook: the cgroup tier does not see bind failures (README).

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use port_tracer_common::{lost, more_flags, EventKind, Origin, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    emit::{allow, count_lost, emit_assigned, Meta},
    kernel::{alloc_of, fill_owner, plain_address, tid},
    udp_autobind, BIND_REQUESTS,
};

/// Slots of `BIND_REQUESTS` (a power of two): a thread's is its id modulo this.
pub const BIND_SLOTS: u32 = 16384;

/// A bind in progress, in its thread's slot.
///
/// Two threads whose ids share a slot may write it at once. The thread and the port it
/// asked for are one word, written by one store; a thread takes the request only if both
/// words are its own (its socket, its thread id), which another thread's writes cannot
/// produce: a mix of two requests is taken by neither (reported guessed).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BindRequest {
    pub sk: u64,
    /// The thread id (bits 32-63) and the port asked for (bits 0-15, host order; 0 for
    /// bind(0)).
    pub tid_port: u64,
}

const _: () = assert!(core::mem::size_of::<BindRequest>() == 16);
const _: () = assert!(BIND_SLOTS.is_power_of_two());

#[inline(always)]
fn on_bind_request(ctx: &SockAddrContext) -> Result<(), i32> {
    let a = unsafe { &*ctx.sock_addr };
    if a.protocol != IPPROTO_TCP as u32 && a.protocol != IPPROTO_UDP as u32 {
        return Ok(());
    }
    let sk = plain_address(unsafe { a.__bindgen_anon_1.sk } as u64)?;
    let tid = tid();
    let port = u16::from_be(a.user_port as u16);
    let Some(slot) = BIND_REQUESTS.get_ptr_mut(tid & (BIND_SLOTS - 1)) else {
        count_lost(lost::MAP_FULL);
        return Ok(());
    };
    // SAFETY: a slot of an array map; see `BindRequest` for threads sharing it.
    unsafe {
        core::ptr::write_volatile(&mut (*slot).sk, sk);
        core::ptr::write_volatile(
            &mut (*slot).tid_port,
            u64::from(tid) << 32 | u64::from(port),
        );
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
    if let Some(slot) = BIND_REQUESTS.get_ptr_mut(tid & (BIND_SLOTS - 1)) {
        // SAFETY: a slot of an array map; see `BindRequest` for threads sharing it.
        unsafe {
            let (r_sk, tid_port) = (
                core::ptr::read_volatile(&(*slot).sk),
                core::ptr::read_volatile(&(*slot).tid_port),
            );
            if r_sk == sk && (tid_port >> 32) as u32 == tid {
                guessed = false;
                if tid_port as u16 == 0 {
                    origin = Origin::BindEphemeral;
                }
                // Taken: a later post_bind of this socket without a request of its own
                // (none is known) must not find it.
                core::ptr::write_volatile(&mut (*slot).sk, 0);
            }
        }
    }
    if proto == IPPROTO_UDP {
        udp_autobind::bound(sk)?;
    }
    let mut meta = Meta::now(EventKind::Assign, origin, proto);
    if guessed {
        meta = meta.more_flags(more_flags::ORIGIN_GUESSED);
    }
    let (alloc, _) = alloc_of(sk, 0);
    emit_assigned(sk, meta, |a| {
        fill_owner(&mut a.owner);
        a.alloc = alloc;
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
