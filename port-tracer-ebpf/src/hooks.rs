//! What the fentry and kprobe tiers do at each kernel function, independent of how they
//! are hooked. Both tiers call these with the function's arguments (and return value).

use port_tracer_common::{
    errno::{EADDRINUSE, EADDRNOTAVAIL, EAGAIN},
    lost, EventKind, Origin, IPPROTO_TCP, IPPROTO_UDP,
};

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    connect,
    emit::{count_lost, emit_assigned, emit_failed, emit_plain, Meta},
    kernel::{alloc_of, fill_owner, off, read, sock_num, sock_protocol, tid},
    tcp_state, time_wait, udp_release, BINDING, GET_PORT_START,
};

const TCP_LISTEN: u8 = 10;

/// `inet_bind`/`inet6_bind` entry and exit: a port 0 get_port in between is bind(0).
#[inline(always)]
pub fn bind_enter() {
    if BINDING.insert(tid(), 1u8, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
}

#[inline(always)]
pub fn bind_exit() {
    let _ = BINDING.remove(tid());
}

/// Entry of a port allocator (fentry tier; kprobes keep the time with the arguments).
#[inline(always)]
pub fn get_port_enter() {
    if GET_PORT_START
        .insert(tid(), unsafe { bpf_ktime_get_ns() }, 0)
        .is_err()
    {
        count_lost(lost::MAP_FULL);
    }
}

/// When this thread entered the allocator it is leaving (0: the entry was not seen, e.g.
/// attached in between). A plain integer, not an `Option`: 5.10's verifier refuses the
/// read of an `Option`'s unset payload from the stack.
#[inline(always)]
pub fn get_port_started() -> u64 {
    let Some(&start) = (unsafe { GET_PORT_START.get(tid()) }) else {
        return 0;
    };
    let _ = GET_PORT_START.remove(tid());
    start
}

/// After `inet_csk_get_port(sk, snum)` (TCP bind and listen), entered at `start_ns` (0:
/// not known),
/// returned `ret`.
#[inline(always)]
pub fn tcp_get_port_exit(sk: u64, snum: u16, ret: i32, start_ns: u64) {
    // listen() sets LISTEN before it (re)takes the port.
    let listening = read::<u8>(sk, off!(skc_state))
        .map(|s| s == TCP_LISTEN)
        .unwrap_or(false);
    let origin = match (snum, listening) {
        (0, true) => Origin::Autobind,
        (0, false) => Origin::BindEphemeral,
        _ => Origin::Bind,
    };
    get_port_exit(sk, snum, ret, origin, IPPROTO_TCP, EADDRINUSE, start_ns);
}

/// After `udp_lib_get_port(sk, snum, ...)` (UDP bind and autobind), entered at
/// `start_ns`, returned `ret`.
#[inline(always)]
pub fn udp_get_port_exit(sk: u64, snum: u16, ret: i32, start_ns: u64) {
    if sock_protocol(sk) != Ok(IPPROTO_UDP) {
        return; // UDP-Lite shares the function
    }
    let binding = unsafe { BINDING.get(tid()) }.is_some();
    let (origin, errno) = match (snum, binding) {
        (0, true) => (Origin::BindEphemeral, EADDRINUSE),
        (0, false) => (Origin::Autobind, EAGAIN),
        _ => (Origin::Bind, EADDRINUSE),
    };
    get_port_exit(sk, snum, ret, origin, IPPROTO_UDP, errno, start_ns);
}

#[inline(always)]
fn get_port_exit(
    sk: u64,
    snum: u16,
    ret: i32,
    origin: Origin,
    proto: u8,
    errno: i32,
    start_ns: u64,
) {
    let (alloc, timed) = alloc_of(sk, start_ns);
    if ret == 0 {
        let meta = Meta::now(EventKind::Assign, origin, proto).flags(timed);
        emit_assigned(sk, meta, |a| {
            fill_owner(&mut a.owner);
            a.alloc = alloc;
            Ok(())
        });
    } else {
        let meta = Meta::now(EventKind::AllocFailure, origin, proto)
            .flags(timed)
            .lport(snum);
        emit_failed(sk, meta, None, |f| {
            fill_owner(&mut f.owner);
            f.alloc = alloc;
            f.errno = errno;
            Ok(())
        });
    }
}

/// Entry of `inet_hash_connect`/`inet6_hash_connect`: who connects, and whether the socket
/// already had a port.
#[inline(always)]
pub fn hash_connect_enter(sk: u64) {
    connect::start_connect(sk);
}

/// Exit of `inet_hash_connect`: the port connect chose, or EADDRNOTAVAIL.
#[inline(always)]
pub fn hash_connect_exit(sk: u64, ret: i32) {
    if ret == 0 {
        // Timestamp and task from the entry; the port is set now.
        connect::finish_connect(sk, true);
        return;
    }
    let Some(c) = connect::take_connecting(sk) else {
        return;
    };
    if ret != -EADDRNOTAVAIL {
        return;
    }
    connect::report_failed(sk, &c, Origin::Connect, EADDRNOTAVAIL, true);
}

/// After `__inet_inherit_port(sk, child)`: an accepted socket shares the listener's port.
#[inline(always)]
pub fn inherit_port_exit(child: u64, ret: i32) {
    if ret != 0 {
        return;
    }
    tcp_state::report_accepted(child);
}

/// Entry of `inet_put_port(sk)`: a TCP socket gives its port back.
#[inline(always)]
pub fn put_port(sk: u64) {
    let port = sock_num(sk).unwrap_or(0);
    if port != 0 {
        tcp_state::release(sk, port);
    }
}

/// Entry of `udp_lib_unhash(sk)`: a UDP socket gives its port back (close, disconnect).
#[inline(always)]
pub fn udp_unhash(sk: u64) {
    if sock_protocol(sk) != Ok(IPPROTO_UDP) || sock_num(sk).unwrap_or(0) == 0 {
        return;
    }
    emit_plain(sk, udp_release::release());
}

/// `inet_twsk_hashdance_schedule` (`inet_twsk_hashdance` before 6.11): the port of `sk`
/// moves to the TIME_WAIT socket `tw`.
#[inline(always)]
pub fn time_wait_enter(tw: u64, sk: u64) {
    time_wait::entered(tw, sk, 0);
}

/// `inet_twsk_kill(tw)`: the TIME_WAIT socket dies and frees the port.
#[inline(always)]
pub fn time_wait_kill(tw: u64) {
    time_wait::report_sock(tw, EventKind::Release, 0);
}
