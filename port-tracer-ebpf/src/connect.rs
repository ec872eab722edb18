//! TCP connect's port, on every tier: who started connecting a socket, kept until the port
//! the kernel chose for it is known, and the event that reports it. The fentry and kprobe
//! tiers call in from `inet_hash_connect`; the tracepoint tier from the socket's state
//! changes ([`crate::tcp_state`]) and connect()'s exit ([`crate::syscalls`]).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use port_tracer_common::{
    errno::{EADDRINUSE, EADDRNOTAVAIL},
    flags, lost, more_flags, EventKind, Origin, Owner, IPPROTO_TCP,
};

use crate::{
    emit::{count_lost, emit_assigned, emit_failed, emit_plain, Meta},
    kernel::{alloc_of, fill_owner, off, read, sock_num, tid},
    pending::Call,
    CONNECTING, SYSCALLS,
};

/// Who started a connect (or a listen's autobind), kept until its port is known.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connecting {
    pub ts_ns: u64,
    pub owner: Owner,
    /// The socket was bound before connect: no new port, only the remote endpoint.
    pub had_port: u16,
    pub _pad: [u16; 3],
}

const _: () = assert!(core::mem::size_of::<Connecting>() == 72);

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

/// A failed allocation of `c`'s, with `errno`: no port (`origin` Connect, or Autobind for
/// a listen); `timed` as in [`finish_connect`].
#[inline(always)]
pub fn report_failed(sk: u64, c: &Connecting, origin: Origin, errno: i32, timed: bool) {
    let (alloc, timed_flag) = alloc_of(sk, if timed { c.ts_ns } else { 0 });
    let meta = Meta::at(c.ts_ns, EventKind::AllocFailure, origin, IPPROTO_TCP).flags(timed_flag);
    emit_failed(sk, meta, None, |f| {
        f.owner = c.owner;
        f.alloc = alloc;
        f.errno = errno;
        Ok(())
    });
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
        None if closed && c.had_port == 0 => {
            report_failed(sk, &c, Origin::Connect, EADDRNOTAVAIL, false)
        }
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
    let (alloc, _) = alloc_of(sk, 0);
    let meta = Meta::at(c.ts_ns, EventKind::Assign, Origin::Autobind, IPPROTO_TCP);
    emit_assigned(sk, meta, |a| {
        a.owner = c.owner;
        a.alloc = alloc;
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
    report_failed(sk, &c, Origin::Autobind, EADDRINUSE, false);
}

#[inline(always)]
fn report_connecting(sk: u64, c: &Connecting, port: u16, timed: bool) {
    let meta = Meta::at(c.ts_ns, EventKind::Assign, Origin::Connect, IPPROTO_TCP).lport(port);
    if c.had_port != 0 {
        // A bound socket: the port is not new, only its peer.
        return emit_plain(sk, meta.flags(flags::REMOTE_UPDATE));
    }
    let (alloc, timed_flag) = alloc_of(sk, if timed { c.ts_ns } else { 0 });
    emit_assigned(sk, meta.flags(timed_flag), |a| {
        a.owner = c.owner;
        a.alloc = alloc;
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
    let meta = Meta::at(syn_sent_ns, EventKind::Assign, Origin::Connect, IPPROTO_TCP).lport(port);
    if had_port {
        return emit_plain(sk, meta.flags(flags::REMOTE_UPDATE));
    }
    let (alloc, _) = alloc_of(sk, 0);
    emit_assigned(sk, meta, |a| {
        fill_owner(&mut a.owner);
        a.alloc = alloc;
        Ok(())
    });
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
        ts_ns: unsafe { bpf_ktime_get_ns() },
        owner: Owner::default(),
        had_port: (sock_num(sk)? != 0) as u16,
        _pad: [0; 3],
    };
    fill_owner(&mut c.owner);
    if CONNECTING.insert(sk, c, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
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
    let (alloc, _) = alloc_of(sk, 0);
    let meta = Meta::now(EventKind::Assign, Origin::Connect, IPPROTO_TCP)
        .more_flags(more_flags::OWNER_UNKNOWN);
    emit_assigned(sk, meta, |a| {
        a.alloc = alloc;
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
