//! UDP port release on close (cgroup `sock_release`, attached at the cgroup v2 root).
//!
//! No tracepoint sees a UDP socket close; this hook runs in `inet_release` for every socket,
//! just before the protocol unhashes it.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::cgroup_sock, programs::SockContext};
use port_tracer_common::{lost, EventKind, Origin, IPPROTO_UDP};

use crate::{
    emit::{count_lost, emit},
    kernel::{fill_event, sock_num},
};

#[inline(always)]
fn on_release(ctx: &SockContext) -> Result<(), i32> {
    if unsafe { (*ctx.sock).protocol } != IPPROTO_UDP as u32 {
        return Ok(());
    }
    // The context is the kernel's `struct sock`; copy its address through memory so the
    // verifier treats it as a plain number, like the socket addresses of the other hooks.
    let ptr = ctx.sock as u64;
    let sk: u64 = unsafe { bpf_probe_read_kernel(&ptr as *const u64)? };
    if sock_num(sk)? == 0 {
        return Ok(());
    }
    emit(|ev| fill_event(ev, sk, EventKind::Release, Origin::Unknown, IPPROTO_UDP));
    Ok(())
}

#[cgroup_sock(sock_release)]
pub fn udp_sock_release(ctx: SockContext) -> i32 {
    if on_release(&ctx).is_err() {
        count_lost(lost::READ_ERROR);
    }
    1
}
