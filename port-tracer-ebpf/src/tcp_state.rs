//! TCP state changes (raw tracepoints `inet_sock_set_state`, `tcp_destroy_sock`): connect's
//! port choice (through [`crate::connect`]), accepted sockets, and release of the port.
//!
//! The port is given back either when the socket reaches CLOSE (ports the kernel chose) or
//! when it is destroyed (ports bound explicitly): whichever finds the bind bucket gone, or
//! about to go.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use port_tracer_common::{lost, EventKind, Origin, IPPROTO_TCP};

use crate::{
    connect::{self, inet_sport},
    emit::{count_lost, emit_plain, emit_plain_sock, read_sock, Meta},
    kernel::{off, read, sock_num, sock_protocol},
    time_wait, CONFIG,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// An accepted socket `sk` shares its listener's port. This runs in softirq, where the
/// current task is not the owner: userspace takes the owner from the listener.
#[inline(always)]
pub fn report_accepted(sk: u64) {
    emit_plain(
        sk,
        Meta::now(EventKind::Assign, Origin::Inherited, IPPROTO_TCP),
    );
}

/// TCP socket `sk` gives `port` back, unless a TIME_WAIT socket just took it over.
#[inline(always)]
pub fn release(sk: u64, port: u16) {
    let Ok(s) = read_sock(sk) else {
        return count_lost(lost::READ_ERROR);
    };
    if time_wait::handed_over(&s, port) {
        return;
    }
    let meta = Meta::now(EventKind::Release, Origin::Unknown, IPPROTO_TCP);
    emit_plain_sock(&s, meta.lport(port));
}

#[inline(always)]
fn on_set_state(sk: u64, old: i32, new: i32) -> Result<(), i32> {
    // Most changes (FIN_WAIT1, CLOSE_WAIT, ...) carry nothing: bail out before any read.
    let cgroup_tier = unsafe { core::ptr::read_volatile(&CONFIG.cgroup_tier) } != 0;
    let listen_start = cgroup_tier && old == TCP_CLOSE && new == TCP_LISTEN;
    // On the cgroup tier sockops' `TCP_CONNECT_CB` reported the port: leaving SYN_SENT
    // says something only when it ends in CLOSE without one (EADDRNOTAVAIL).
    let leaves_syn_sent = old == TCP_SYN_SENT && (!cgroup_tier || new == TCP_CLOSE);
    if new != TCP_SYN_SENT
        && !leaves_syn_sent
        && new != TCP_CLOSE
        && !(old == TCP_SYN_RECV && new == TCP_ESTABLISHED)
        && !listen_start
    {
        return Ok(());
    }
    if sock_protocol(sk)? != IPPROTO_TCP {
        return Ok(());
    }
    if new == TCP_SYN_SENT {
        if cgroup_tier {
            // The sockops program reports the port once connect chose it.
            connect::start_connect(sk);
        } else {
            connect::syn_sent(sk);
        }
        return Ok(());
    }
    if listen_start {
        // listen() stores LISTEN before it takes a port: without one, it autobinds.
        if sock_num(sk)? == 0 {
            connect::start_connect(sk);
        }
        return Ok(());
    }
    if leaves_syn_sent {
        connect::left_syn_sent(sk, new == TCP_CLOSE);
    }
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // An accepted socket, now with both addresses set.
        report_accepted(sk);
    } else if new == TCP_CLOSE && old != TCP_CLOSE {
        if cgroup_tier && old == TCP_LISTEN {
            connect::listen_failed(sk);
        }
        let bind_hash: u64 = read(sk, off!(icsk_bind_hash))?;
        let port = inet_sport(sk)?;
        if bind_hash == 0 && port != 0 {
            release(sk, port);
        }
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    if on_set_state(sk, old as i32, new as i32).is_err() {
        count_lost(lost::READ_ERROR);
    }
    0
}

#[inline(always)]
fn on_destroy(sk: u64) -> Result<(), i32> {
    // Fires just before tcp_v4_destroy_sock puts a port that CLOSE did not (bound ports).
    let bind_hash: u64 = read(sk, off!(icsk_bind_hash))?;
    if bind_hash != 0 {
        release(sk, sock_num(sk)?);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    if on_destroy(ctx.arg(0)).is_err() {
        count_lost(lost::READ_ERROR);
    }
    0
}
