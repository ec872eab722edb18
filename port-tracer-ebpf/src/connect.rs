//! TCP connect's port, on every tier: who started connecting a socket, kept until the port
//! the kernel chose for it is known, and the event that reports it. The fentry and kprobe
//! tiers call in from `inet_hash_connect`; the tracepoint tier from the socket's state
//! changes ([`crate::tcp_state`]) and connect()'s exit ([`crate::syscalls`]).

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
};
use port_tracer_common::{flags, lost, more_flags, EventKind, Origin, PortEvent, IPPROTO_TCP};

use crate::{
    emit::{count_lost, emit},
    kernel::{
        fill_event, fill_names, fill_own_port_range, fill_sock, name_mut, off, read,
        set_alloc_time, sock_num, tid, Name,
    },
    pending::Call,
    CONNECTING, SYSCALLS,
};

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
pub fn inet_sport(sk: u64) -> Result<u16, i32> {
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

/// Reports the port connect gave `sk`, once, from whichever hook sees it first; `timed`:
/// the hook is `inet_hash_connect`'s exit, so the time since its entry is the search's.
#[inline(always)]
pub fn finish_connect(sk: u64, timed: bool) {
    let Some(c) = take_connecting(sk) else {
        return;
    };
    let Some(port) = connected_port(sk) else {
        return;
    };
    report_connecting(sk, &c, port, timed);
}

/// When `sk` leaves SYN_SENT for `new_state` (a state change, where no other hook reported
/// the connect): the port chosen, or at CLOSE with none, connect's EADDRNOTAVAIL (what
/// `inet_hash_connect` fails with when the range has no port left for the destination; it
/// is the only step between SYN_SENT and CLOSE that leaves no port).
#[inline(always)]
pub fn left_syn_sent(sk: u64, closed: bool) {
    let Some(c) = take_connecting(sk) else {
        return;
    };
    match connected_port(sk) {
        Some(port) => report_connecting(sk, &c, port, false),
        None if closed && c.had_port == 0 => emit(|ev| {
            fill_connecting(ev, sk, &c)?;
            ev.kind = EventKind::AllocFailure as u8;
            ev.errno = port_tracer_common::errno::EADDRNOTAVAIL;
            Ok(())
        }),
        None => {}
    }
}

/// After `listen()` took its port (cgroup tier, sockops `TCP_LISTEN_CB`): the listen
/// autobind started at CLOSE->LISTEN, if this socket had none.
#[inline(always)]
pub fn finish_listen(sk: u64) {
    let Some(c) = take_connecting(sk) else {
        return;
    };
    emit(|ev| {
        fill_connecting(ev, sk, &c)?;
        ev.kind = EventKind::Assign as u8;
        ev.origin = Origin::Autobind as u8;
        Ok(())
    });
}

/// A listen whose autobind started (CLOSE->LISTEN) and which fell back to CLOSE: no port
/// was free (EADDRINUSE, as `listen()` returns).
#[inline(always)]
pub fn listen_failed(sk: u64) {
    let Some(c) = take_connecting(sk) else {
        return;
    };
    emit(|ev| {
        fill_connecting(ev, sk, &c)?;
        ev.kind = EventKind::AllocFailure as u8;
        ev.origin = Origin::Autobind as u8;
        ev.errno = port_tracer_common::errno::EADDRINUSE;
        Ok(())
    });
}

#[inline(always)]
fn report_connecting(sk: u64, c: &Connecting, port: u16, timed: bool) {
    emit(|ev| {
        fill_connecting(ev, sk, c)?;
        ev.lport = port;
        ev.kind = EventKind::Assign as u8;
        if c.had_port != 0 {
            ev.flags = flags::REMOTE_UPDATE;
        } else if timed {
            set_alloc_time(ev, c.ts_ns);
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
        fill_own_port_range(ev, sk);
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
    fill_own_port_range(ev, sk);
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
    let mut c = Connecting {
        ts_ns: 0,
        cgroup_id: 0,
        pid: 0,
        tid: 0,
        uid: 0,
        had_port: 0,
        _pad: 0,
        comm: [0; 2],
        thread: [0; 2],
    };
    fill_who(&mut c, sk)?;
    if CONNECTING.insert(sk, c, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
    Ok(())
}

/// Who connects `sk`, now, and whether it already had a port.
#[inline(always)]
fn fill_who(c: &mut Connecting, sk: u64) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    c.ts_ns = unsafe { bpf_ktime_get_ns() };
    c.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    c.pid = pid;
    c.tid = tid;
    c.uid = bpf_get_current_uid_gid() as u32;
    c.had_port = (sock_num(sk)? != 0) as u16;
    fill_names(&mut c.comm, &mut c.thread, pid, tid);
    Ok(())
}

/// cgroup tier, at `TCP_CONNECT_CB`: the port connect chose for `sk`. Without who started
/// it (its CLOSE->SYN_SENT came before the programs were attached, or `CONNECTING` was
/// full, counted), reported all the same, its owner unknown.
#[inline(always)]
pub fn connect_chose(sk: u64) {
    if let Some(c) = take_connecting(sk) {
        if let Some(port) = connected_port(sk) {
            report_connecting(sk, &c, port, false);
        }
        return;
    }
    emit(|ev| {
        fill_sock(ev, sk)?;
        fill_own_port_range(ev, sk);
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.kind = EventKind::Assign as u8;
        ev.origin = Origin::Connect as u8;
        ev.proto = IPPROTO_TCP;
        ev.more_flags = more_flags::OWNER_UNKNOWN;
        Ok(())
    });
}

/// At CLOSE->SYN_SENT (tracepoint tier): inside connect() its exit reports the port;
/// elsewhere (io_uring, in-kernel sockets) who connects is remembered.
#[inline(always)]
pub fn syn_sent(sk: u64) {
    if !note_syn_sent(sk) {
        start_connect(sk);
    }
}

/// Called at CLOSE->SYN_SENT: if the current thread is inside connect() on `sk`, notes the
/// time and returns true, and the syscall's exit reports the port; otherwise (io_uring,
/// in-kernel sockets) the caller remembers the connect on its own.
#[inline(always)]
fn note_syn_sent(sk: u64) -> bool {
    let Some(p) = SYSCALLS.get_ptr_mut(tid()) else {
        return false;
    };
    // SAFETY: a map value of this thread, written only by this thread's programs.
    let p = unsafe { &mut *p };
    if p.call != Call::Connect || p.sk != sk {
        return false;
    }
    p.syn_sent_ns = unsafe { bpf_ktime_get_ns() };
    true
}
