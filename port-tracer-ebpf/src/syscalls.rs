//! Socket syscalls (classic tracepoints `syscalls:sys_{enter,exit}_*`): bind, listen, UDP
//! connect and send autobinds, and the allocation failures they return.
//!
//! On entry the socket behind the fd is looked up and remembered by thread; on exit the
//! result says what the kernel did. TCP connect's port is reported by [`crate::connect`], which
//! sees it even when connect fails after the port was chosen.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use port_tracer_common::{
    errno, flags, lost, EventKind, Origin, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    connect,
    emit::{count_lost, emit_assigned, emit_failed, emit_plain, Meta, Requested},
    kernel::{
        alloc_of, fill_owner, is_inet, sock_family, sock_num, sock_of_fd, sock_protocol, tid,
    },
    pending::{Call, Pending},
    SYSCALLS,
};

// Syscall return values are i64.
const EAGAIN: i64 = errno::EAGAIN as i64;
const EADDRINUSE: i64 = errno::EADDRINUSE as i64;
const EADDRNOTAVAIL: i64 = errno::EADDRNOTAVAIL as i64;
const AF_UNSPEC: u8 = 0;

/// Offsets in the classic syscall tracepoint records: args start at 16, ret is at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;

/// A sockaddr from user memory.
struct UserAddr {
    family: u8,
    /// Host order.
    port: u16,
    addr: [u8; 16],
}

/// Reads the sockaddr at `uaddr` (still the caller's, unchanged, at syscall exit).
#[inline(always)]
fn user_sockaddr(uaddr: u64) -> Result<UserAddr, i32> {
    let mut a = UserAddr {
        family: 0,
        port: 0,
        addr: [0; 16],
    };
    if uaddr == 0 {
        return Ok(a);
    }
    let sa_family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16)? };
    let port: u16 = unsafe { bpf_probe_read_user((uaddr + 2) as *const u16)? };
    a.family = sa_family as u8;
    a.port = u16::from_be(port);
    if a.family == AF_INET {
        let v4: [u8; 4] = unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4])? };
        a.addr[..4].copy_from_slice(&v4);
    } else if a.family == AF_INET6 {
        a.addr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16])? };
    }
    Ok(a)
}

/// Looks up the TCP or UDP socket behind `fd` and remembers the call; `want_unbound` skips
/// sockets that already hold a port (no allocation can follow).
fn enter(ctx: &TracePointContext, call: Call, uaddr: u64, want_unbound: bool) -> Result<(), i32> {
    let fd: u64 = unsafe { ctx.read_at(ARG0)? };
    let sk = sock_of_fd(fd)?;
    let family = sock_family(sk)?;
    if !is_inet(family) {
        return Ok(());
    }
    let proto = sock_protocol(sk)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(());
    }
    if call == Call::Send && proto != IPPROTO_UDP {
        return Ok(());
    }
    let num_before = sock_num(sk)?;
    if want_unbound && num_before != 0 {
        return Ok(());
    }
    let p = Pending {
        sk,
        uaddr,
        syn_sent_ns: 0,
        num_before,
        call,
        proto,
        family,
        _pad: [0; 3],
    };
    if SYSCALLS.insert(tid(), p, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
    Ok(())
}

/// Takes the call remembered at entry, if any, with the syscall's return value.
fn exit(ctx: &TracePointContext, call: Call) -> Option<(Pending, i64)> {
    let tid = tid();
    let p = *unsafe { SYSCALLS.get(tid) }?;
    let _ = SYSCALLS.remove(tid);
    if p.call != call {
        return None;
    }
    let ret: i64 = unsafe { ctx.read_at(RET) }.ok()?;
    Some((p, ret))
}

/// Reports the port `p.sk` got, taken by the current task.
#[inline(always)]
fn assigned(p: &Pending, origin: Origin) {
    let (alloc, _) = alloc_of(p.sk, 0);
    emit_assigned(p.sk, Meta::now(EventKind::Assign, origin, p.proto), |a| {
        fill_owner(&mut a.owner);
        a.alloc = alloc;
        Ok(())
    });
}

/// An allocation failure: the port (if any) and address the caller asked for.
#[inline(always)]
fn failure(p: &Pending, origin: Origin, errno: i64, requested_local: bool) {
    let Ok(a) = user_sockaddr(p.uaddr) else {
        return count_lost(lost::READ_ERROR);
    };
    let requested = Requested {
        local: requested_local,
        addr: a.addr,
        port: a.port,
    };
    let (alloc, _) = alloc_of(p.sk, 0);
    let meta = Meta::now(EventKind::AllocFailure, origin, p.proto);
    emit_failed(p.sk, meta, Some(&requested), |f| {
        fill_owner(&mut f.owner);
        f.alloc = alloc;
        f.errno = errno as i32;
        Ok(())
    });
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    let uaddr: u64 = unsafe { ctx.read_at(ARG1) }.unwrap_or(0);
    let _ = enter(&ctx, Call::Bind, uaddr, false);
    0
}

#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    let Some((p, ret)) = exit(&ctx, Call::Bind) else {
        return 0;
    };
    // Only the requested port: one user read, not the whole sockaddr.
    let requested: u16 = if p.uaddr == 0 {
        0
    } else {
        unsafe { bpf_probe_read_user((p.uaddr + 2) as *const u16) }.unwrap_or(0)
    };
    let origin = if requested == 0 {
        Origin::BindEphemeral
    } else {
        Origin::Bind
    };
    if ret == 0 {
        // With IP_BIND_ADDRESS_NO_PORT, bind(0) takes no port: connect will.
        match sock_num(p.sk) {
            Ok(0) => {}
            Ok(_) => assigned(&p, origin),
            Err(_) => count_lost(lost::READ_ERROR),
        }
    } else if ret == -EADDRINUSE {
        failure(&p, origin, EADDRINUSE, true);
    }
    0
}

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    let _ = enter(&ctx, Call::Listen, 0, true);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    let Some((p, ret)) = exit(&ctx, Call::Listen) else {
        return 0;
    };
    if ret == 0 {
        assigned(&p, Origin::Autobind);
    } else if ret == -EADDRINUSE {
        failure(&p, Origin::Autobind, EADDRINUSE, true);
    }
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let uaddr: u64 = unsafe { ctx.read_at(ARG1) }.unwrap_or(0);
    let _ = enter(&ctx, Call::Connect, uaddr, false);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some((p, ret)) = exit(&ctx, Call::Connect) else {
        return 0;
    };
    if p.proto == IPPROTO_TCP {
        if ret == -EADDRNOTAVAIL {
            failure(&p, Origin::Connect, EADDRNOTAVAIL, false);
        } else if p.syn_sent_ns != 0 {
            connect::report_connect(p.sk, p.syn_sent_ns, p.num_before != 0);
        } else {
            // Connecting started elsewhere; a non-blocking connect returns before the
            // handshake: report the port now.
            connect::finish_connect(p.sk, false);
        }
        return 0;
    }
    // UDP
    if p.num_before == 0 {
        if ret == 0 {
            assigned(&p, Origin::Autobind);
        } else if ret == -EAGAIN {
            failure(&p, Origin::Autobind, EAGAIN, false);
        }
    } else if ret == 0 {
        if user_sockaddr(p.uaddr).is_ok_and(|a| a.family == AF_UNSPEC) {
            // Disconnect: unless bound explicitly, the socket gives its port back.
            if sock_num(p.sk) == Ok(0) {
                let meta = Meta::now(EventKind::Release, Origin::Unknown, p.proto);
                emit_plain(p.sk, meta.lport(p.num_before));
            }
        } else {
            let meta = Meta::now(EventKind::Assign, Origin::Unknown, p.proto);
            emit_plain(p.sk, meta.flags(flags::REMOTE_UPDATE));
        }
    }
    0
}

fn enter_send(ctx: &TracePointContext) -> u32 {
    let _ = enter(ctx, Call::Send, 0, true);
    0
}

fn exit_send(ctx: &TracePointContext) -> u32 {
    let Some((p, ret)) = exit(ctx, Call::Send) else {
        return 0;
    };
    let Ok(num) = sock_num(p.sk) else {
        count_lost(lost::READ_ERROR);
        return 0;
    };
    if num != 0 {
        assigned(&p, Origin::Autobind);
    } else if ret == -EAGAIN {
        failure(&p, Origin::Autobind, EAGAIN, false);
    }
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    enter_send(&ctx)
}

#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    exit_send(&ctx)
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter_send(&ctx)
}

#[tracepoint]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    exit_send(&ctx)
}

#[tracepoint]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    enter_send(&ctx)
}

#[tracepoint]
pub fn sys_exit_sendmmsg(ctx: TracePointContext) -> u32 {
    exit_send(&ctx)
}
