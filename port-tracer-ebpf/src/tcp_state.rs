//! TCP state changes (raw tracepoints `inet_sock_set_state`, `tcp_destroy_sock`): connect's
//! port choice, accepted sockets, and release of the port.
//!
//! The port is given back either when the socket reaches CLOSE (ports the kernel chose) or
//! when it is destroyed (ports bound explicitly): whichever finds the bind bucket gone, or
//! about to go.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use port_tracer_common::{flags, lost, EventKind, Origin, PortEvent, IPPROTO_TCP};

use crate::{
    emit::{count_lost, emit},
    kernel::{
        fill_event, fill_names, fill_sock, name_mut, off, read, sock_num, sock_protocol, Name,
    },
    CONNECTING,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// Who started a connect, kept until its port is known.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// The socket was bound before connect: no new port, only the remote endpoint.
    pub had_port: u16,
    pub _pad: u16,
    /// The process's name and the thread's (see `kernel::fill_names`).
    pub comm: Name,
    pub thread: Name,
}

const _: () = assert!(core::mem::size_of::<Connecting>() == 64);
const _: () = assert!(core::mem::offset_of!(Connecting, comm) % 8 == 0);

/// The local port in `inet_sport` (host order): still set after the port was put back.
#[inline(always)]
fn inet_sport(sk: u64) -> Result<u16, i32> {
    read::<u16>(sk, off!(inet_sport)).map(u16::from_be)
}

/// Takes who started connecting `sk`, once: of hooks racing on two CPUs only the one whose
/// delete succeeds gets it.
#[inline(always)]
pub fn take_connecting(sk: u64) -> Option<Connecting> {
    let c = (unsafe { CONNECTING.get(sk) }).copied()?;
    CONNECTING.remove(sk).ok().map(|_| c)
}

/// The port connect chose for `sk`; None when it failed before choosing one (or the read
/// failed, counted).
#[inline(always)]
fn connected_port(sk: u64) -> Option<u16> {
    match inet_sport(sk) {
        Ok(0) => None,
        Ok(port) => Some(port),
        Err(_) => {
            count_lost(lost::READ_ERROR);
            None
        }
    }
}

/// Reports the port connect gave `sk`, once, from whichever hook sees it first.
#[inline(always)]
pub fn finish_connect(sk: u64) {
    let Some(c) = take_connecting(sk) else {
        return;
    };
    let Some(port) = connected_port(sk) else {
        return;
    };
    emit(|ev| {
        fill_connecting(ev, sk, &c)?;
        ev.lport = port;
        ev.kind = EventKind::Assign as u8;
        if c.had_port != 0 {
            ev.flags = flags::REMOTE_UPDATE;
        }
        Ok(())
    });
}

/// Reports the port connect() gave `sk`, from the connecting task at the syscall's exit,
/// timed at SYN_SENT (see `syscalls::note_syn_sent`): no per-connect map entry needed.
#[inline(always)]
pub fn report_connect(sk: u64, syn_sent_ns: u64, had_port: bool) {
    let Some(port) = connected_port(sk) else {
        return;
    };
    emit(|ev| {
        fill_event(ev, sk, EventKind::Assign, Origin::Connect, IPPROTO_TCP)?;
        ev.ts_ns = syn_sent_ns;
        ev.lport = port;
        if had_port {
            ev.flags = flags::REMOTE_UPDATE;
        }
        Ok(())
    });
}

/// Fills an event about a connecting TCP socket, attributed to who started the connect.
#[inline(always)]
pub fn fill_connecting(ev: &mut PortEvent, sk: u64, c: &Connecting) -> Result<(), i32> {
    fill_sock(ev, sk)?;
    ev.ts_ns = c.ts_ns;
    ev.cgroup_id = c.cgroup_id;
    ev.pid = c.pid;
    ev.tid = c.tid;
    ev.uid = c.uid;
    *name_mut(&mut ev.comm) = c.comm;
    *name_mut(&mut ev.thread) = c.thread;
    ev.origin = Origin::Connect as u8;
    ev.proto = IPPROTO_TCP;
    Ok(())
}

/// Remembers who connects `sk`, and whether it already had a port.
#[inline(always)]
pub fn start_connect(sk: u64) {
    if try_start_connect(sk).is_err() {
        count_lost(lost::READ_ERROR);
    }
}

#[inline(always)]
fn try_start_connect(sk: u64) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let mut c = Connecting {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid,
        tid,
        uid: bpf_get_current_uid_gid() as u32,
        had_port: (sock_num(sk)? != 0) as u16,
        _pad: 0,
        comm: [0; 2],
        thread: [0; 2],
    };
    fill_names(&mut c.comm, &mut c.thread, pid, tid);
    if CONNECTING.insert(sk, c, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
    Ok(())
}

/// An accepted socket `sk` shares its listener's port. This runs in softirq, where the
/// current task is not the owner: userspace takes the owner from the listener.
#[inline(always)]
pub fn report_accepted(sk: u64) {
    emit(|ev| {
        fill_sock(ev, sk)?;
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.kind = EventKind::Assign as u8;
        ev.origin = Origin::Inherited as u8;
        ev.proto = IPPROTO_TCP;
        Ok(())
    });
}

#[inline(always)]
fn on_set_state(sk: u64, old: i32, new: i32) -> Result<(), i32> {
    if sock_protocol(sk)? != IPPROTO_TCP {
        return Ok(());
    }
    if new == TCP_SYN_SENT {
        // Inside connect(): its exit reports the port. Elsewhere: remember who connects.
        if !crate::syscalls::note_syn_sent(sk) {
            start_connect(sk);
        }
        return Ok(());
    }
    if old == TCP_SYN_SENT {
        finish_connect(sk);
    }
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // An accepted socket, now with both addresses set.
        report_accepted(sk);
    } else if new == TCP_CLOSE && old != TCP_CLOSE {
        let bind_hash: u64 = read(sk, off!(icsk_bind_hash))?;
        let port = inet_sport(sk)?;
        if bind_hash == 0 && port != 0 {
            emit(|ev| {
                fill_event(ev, sk, EventKind::Release, Origin::Unknown, IPPROTO_TCP)?;
                ev.lport = port;
                Ok(())
            });
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
        emit(|ev| fill_event(ev, sk, EventKind::Release, Origin::Unknown, IPPROTO_TCP));
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
