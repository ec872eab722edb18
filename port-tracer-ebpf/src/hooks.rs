//! What the fentry and kprobe tiers do at each kernel function, independent of how they
//! are hooked. Both tiers call these with the function's arguments (and return value).

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use port_tracer_common::{flags, lost, EventKind, Origin, PortEvent, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    emit::{count_lost, submit},
    kernel::{fill_sock, fill_task, off, read, sock_num, sock_protocol},
    tcp_state::{self, Connecting},
    BINDING, CONNECTING,
};

const TCP_LISTEN: u8 = 10;
const EAGAIN: i32 = 11;
const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;

fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

fn sock_event(sk: u64, kind: EventKind, origin: Origin, proto: u8) -> Result<PortEvent, i32> {
    let mut ev = PortEvent::zeroed();
    fill_task(&mut ev);
    fill_sock(&mut ev, sk)?;
    ev.kind = kind as u8;
    ev.origin = origin as u8;
    ev.proto = proto;
    Ok(ev)
}

fn send(ev: Result<PortEvent, i32>) {
    match ev {
        Ok(ev) => submit(&ev),
        Err(_) => count_lost(lost::READ_ERROR),
    }
}

/// `inet_bind`/`inet6_bind` entry and exit: a port 0 get_port in between is bind(0).
pub fn bind_enter() {
    if BINDING.insert(tid(), 1u8, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
}

pub fn bind_exit() {
    let _ = BINDING.remove(tid());
}

/// After `inet_csk_get_port(sk, snum)` (TCP bind and listen) returned `ret`.
pub fn tcp_get_port_exit(sk: u64, snum: u16, ret: i32) {
    // listen() sets LISTEN before it (re)takes the port.
    let listening = read::<u8>(sk, off!(skc_state)).map(|s| s == TCP_LISTEN).unwrap_or(false);
    let origin = match (snum, listening) {
        (0, true) => Origin::Autobind,
        (0, false) => Origin::BindEphemeral,
        _ => Origin::Bind,
    };
    get_port_exit(sk, snum, ret, origin, IPPROTO_TCP, EADDRINUSE);
}

/// After `udp_lib_get_port(sk, snum, ...)` (UDP bind and autobind) returned `ret`.
pub fn udp_get_port_exit(sk: u64, snum: u16, ret: i32) {
    if sock_protocol(sk) != Ok(IPPROTO_UDP) {
        return; // UDP-Lite shares the function
    }
    let binding = unsafe { BINDING.get(tid()) }.is_some();
    let (origin, errno) = match (snum, binding) {
        (0, true) => (Origin::BindEphemeral, EADDRINUSE),
        (0, false) => (Origin::Autobind, EAGAIN),
        _ => (Origin::Bind, EADDRINUSE),
    };
    get_port_exit(sk, snum, ret, origin, IPPROTO_UDP, errno);
}

fn get_port_exit(sk: u64, snum: u16, ret: i32, origin: Origin, proto: u8, errno: i32) {
    if ret == 0 {
        send(sock_event(sk, EventKind::Assign, origin, proto));
    } else {
        send(sock_event(sk, EventKind::AllocFailure, origin, proto).map(|mut ev| {
            ev.errno = errno;
            ev.lport = snum;
            ev
        }));
    }
}

/// Entry of `inet_hash_connect`/`inet6_hash_connect`: who connects, and whether the socket
/// already had a port.
pub fn hash_connect_enter(sk: u64) {
    let mut ev = PortEvent::zeroed();
    fill_task(&mut ev);
    let c = Connecting {
        ts_ns: ev.ts_ns,
        cgroup_id: ev.cgroup_id,
        pid: ev.pid,
        tid: ev.tid,
        uid: ev.uid,
        had_port: (sock_num(sk).unwrap_or(0) != 0) as u16,
        _pad: 0,
        comm: ev.comm,
    };
    if CONNECTING.insert(sk, c, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
}

/// Exit of `inet_hash_connect`: the port connect chose, or EADDRNOTAVAIL.
pub fn hash_connect_exit(sk: u64, ret: i32) {
    if ret == 0 {
        // Timestamp and task from the entry; the port is set now.
        tcp_state::finish_connect(sk);
        return;
    }
    let Some(c) = (unsafe { CONNECTING.get(sk) }).copied() else { return };
    let _ = CONNECTING.remove(sk);
    if ret != -EADDRNOTAVAIL {
        return;
    }
    let mut ev = PortEvent::zeroed();
    if fill_sock(&mut ev, sk).is_err() {
        count_lost(lost::READ_ERROR);
        return;
    }
    ev.ts_ns = c.ts_ns;
    ev.cgroup_id = c.cgroup_id;
    ev.pid = c.pid;
    ev.tid = c.tid;
    ev.uid = c.uid;
    ev.comm = c.comm;
    ev.kind = EventKind::AllocFailure as u8;
    ev.origin = Origin::Connect as u8;
    ev.proto = IPPROTO_TCP;
    ev.errno = EADDRNOTAVAIL;
    submit(&ev);
}

/// After `__inet_inherit_port(sk, child)`: an accepted socket shares the listener's port.
pub fn inherit_port_exit(child: u64, ret: i32) {
    if ret != 0 {
        return;
    }
    // Runs in softirq: userspace takes the owner from the listener.
    send(sock_event(child, EventKind::Assign, Origin::Inherited, IPPROTO_TCP).map(|mut ev| {
        ev.pid = 0;
        ev.tid = 0;
        ev.uid = 0;
        ev.cgroup_id = 0;
        ev.comm = [0; 16];
        ev
    }));
}

/// Entry of `inet_put_port(sk)`: a TCP socket gives its port back.
pub fn put_port(sk: u64) {
    if sock_num(sk).unwrap_or(0) == 0 {
        return;
    }
    send(sock_event(sk, EventKind::Release, Origin::Unknown, IPPROTO_TCP));
}

/// Entry of `udp_lib_unhash(sk)`: a UDP socket gives its port back (close, disconnect).
pub fn udp_unhash(sk: u64) {
    if sock_protocol(sk) != Ok(IPPROTO_UDP) || sock_num(sk).unwrap_or(0) == 0 {
        return;
    }
    send(sock_event(sk, EventKind::Release, Origin::Unknown, IPPROTO_UDP));
}

/// `inet_twsk_hashdance_schedule` (`inet_twsk_hashdance` before 6.11): the port moves to
/// the TIME_WAIT socket `tw`.
pub fn time_wait_enter(tw: u64) {
    send(sock_event(tw, EventKind::TimeWait, Origin::Unknown, IPPROTO_TCP).map(|mut ev| {
        ev.flags = flags::TIME_WAIT_SOCK;
        ev
    }));
}

/// `inet_twsk_kill(tw)`: the TIME_WAIT socket dies and frees the port.
pub fn time_wait_kill(tw: u64) {
    send(sock_event(tw, EventKind::Release, Origin::Unknown, IPPROTO_TCP).map(|mut ev| {
        ev.flags = flags::TIME_WAIT_SOCK;
        ev
    }));
}
