//! Reading kernel structures at offsets resolved from BTF by userspace.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    bpf_probe_read_kernel,
    generated::{self as gen, bpf_get_current_task},
};
use port_tracer_common::{flags, EventKind, Origin, PortEvent, AF_INET, AF_INET6, COMM_LEN};

/// Reads the offset field `$f` of the global `OFFSETS`.
macro_rules! off {
    ($f:ident) => {
        unsafe { core::ptr::read_volatile(&crate::OFFSETS.$f) } as usize
    };
}
pub(crate) use off;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: usize) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base as usize + offset) as *const T) }
}

/// The socket's own port range (`IP_LOCAL_PORT_RANGE`, Linux 6.3+) into `ev`; nothing on
/// kernels without it, or when the socket has none.
#[inline(always)]
pub fn fill_own_port_range(ev: &mut PortEvent, sk: u64) {
    let at = off!(inet_local_port_range);
    if at != 0 {
        ev.own_port_range = read::<u32>(sk, at).unwrap_or(0);
    }
}

/// Records the time since `start_ns` (0: not known) as the event's time inside the
/// allocator.
#[inline(always)]
pub fn set_alloc_time(ev: &mut PortEvent, start_ns: u64) {
    if start_ns != 0 {
        let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start_ns);
        ev.alloc_ns = ns.min(u32::MAX as u64) as u32;
        ev.flags |= flags::ALLOC_TIMED;
    }
}

/// The current thread's id.
#[inline(always)]
pub fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// A task name as two words: names sit 8-byte aligned in `PortEvent` and `Connecting`
/// (asserted where they are defined), so they move in two loads and stores, not sixteen.
pub type Name = [u64; 2];

/// The current process's name (its thread group leader's `comm`, what `ps` shows) into
/// `process` and the current thread's into `thread`, written in place: names copied through
/// the stack cost a byte per instruction. A thread's own name says little to someone
/// looking for a process.
#[inline(always)]
pub fn fill_names(process: &mut Name, thread: &mut Name, pid: u32, tid: u32) {
    let (group_leader, comm_at) = (off!(task_group_leader), off!(task_comm));
    // SAFETY: helpers writing COMM_LEN bytes into COMM_LEN-byte buffers.
    unsafe {
        if gen::bpf_get_current_comm(thread.as_mut_ptr().cast(), COMM_LEN as u32) != 0 {
            *thread = [0; 2];
        }
        *process = *thread;
        if pid == tid {
            return;
        }
        let task = gen::bpf_get_current_task();
        if let Ok(leader) = read::<u64>(task, group_leader) {
            let comm = (leader as usize + comm_at) as *const _;
            if gen::bpf_probe_read_kernel(process.as_mut_ptr().cast(), COMM_LEN as u32, comm) != 0 {
                *process = *thread;
            }
        }
    }
}

/// `name`'s field of a `PortEvent` as a [`Name`].
#[inline(always)]
pub fn name_mut(name: &mut [u8; COMM_LEN]) -> &mut Name {
    // SAFETY: same size; the field is 8-byte aligned (asserted in port-tracer-common).
    unsafe { &mut *(name as *mut [u8; COMM_LEN]).cast::<Name>() }
}

/// Timestamp and the current task's identity.
#[inline(always)]
pub fn fill_task(ev: &mut PortEvent) {
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let (pid, tid) = (ev.pid, ev.tid);
    // Two disjoint fields, each written in place.
    let (comm, thread) = (&mut ev.comm as *mut _, &mut ev.thread as *mut _);
    // SAFETY: distinct fields of one event.
    unsafe { fill_names(name_mut(&mut *comm), name_mut(&mut *thread), pid, tid) };
}

/// Family of the socket at `sk`.
#[inline(always)]
pub fn sock_family(sk: u64) -> Result<u8, i32> {
    read::<u16>(sk, off!(skc_family)).map(|f| f as u8)
}

/// Local port (host order) the socket holds now; 0 when none.
#[inline(always)]
pub fn sock_num(sk: u64) -> Result<u16, i32> {
    read::<u16>(sk, off!(skc_num))
}

/// Protocol of a full socket (`sk_protocol`).
#[inline(always)]
pub fn sock_protocol(sk: u64) -> Result<u8, i32> {
    read::<u16>(sk, off!(sk_protocol)).map(|p| p as u8)
}

/// The head of `sock_common`, read in one go: `skc_addrpair`, `skc_hash`, `skc_portpair`,
/// `skc_family`. Userspace checks at start that the kernel lays them out this way (every
/// kernel since 2.6.38 does).
#[repr(C)]
struct SockHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    _hash: u32,
    dport: u16,
    num: u16,
    family: u16,
    _state_and_flags: u16,
}

/// Fills family, addresses, ports and netns from the `sock_common` at `sk`.
/// The local port is `skc_num`, the one the socket holds now.
#[inline(always)]
pub fn fill_sock(ev: &mut PortEvent, sk: u64) -> Result<(), i32> {
    // One kernel read instead of five: each costs a helper call on every event.
    let h: SockHead = read(sk, off!(skc_daddr))?;
    let family = h.family as u8;
    ev.family = family;
    ev.sock_id = sk;
    ev.lport = h.num;
    ev.rport = u16::from_be(h.dport);
    if family == AF_INET {
        ev.laddr[..4].copy_from_slice(&h.rcv_saddr);
        ev.raddr[..4].copy_from_slice(&h.daddr);
    } else if family == AF_INET6 {
        ev.laddr = read(sk, off!(skc_v6_rcv_saddr))?;
        ev.raddr = read(sk, off!(skc_v6_daddr))?;
    }
    let net: u64 = read(sk, off!(skc_net))?;
    ev.netns = read(net, off!(net_inum))?;
    Ok(())
}

/// Fills an event about socket `sk` (a full or TIME_WAIT socket) from the current task.
#[inline(always)]
pub fn fill_event(
    ev: &mut PortEvent,
    sk: u64,
    kind: EventKind,
    origin: Origin,
    proto: u8,
) -> Result<(), i32> {
    fill_task(ev);
    fill_sock(ev, sk)?;
    ev.kind = kind as u8;
    ev.origin = origin as u8;
    ev.proto = proto;
    Ok(())
}

/// A kernel pointer from a program's context (a cgroup or sockops hook's socket) as a
/// plain number, like the socket addresses the tracing hooks get: copied through memory,
/// the verifier no longer treats it as a pointer it must check.
#[inline(always)]
pub fn plain_address(ptr: u64) -> Result<u64, i32> {
    unsafe { bpf_probe_read_kernel(&ptr as *const u64) }
}

/// Fills an event about socket `sk` giving its port back, or handing it to a TIME_WAIT
/// socket: no task. Userspace attributes it to the lifetime's owner; the task at hand is
/// often not the owner anyway (a softirq, a timer), and five helper calls are saved.
#[inline(always)]
pub fn fill_release(ev: &mut PortEvent, sk: u64, kind: EventKind, proto: u8) -> Result<(), i32> {
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    fill_sock(ev, sk)?;
    ev.kind = kind as u8;
    ev.origin = Origin::Unknown as u8;
    ev.proto = proto;
    Ok(())
}

/// The `struct sock` behind file descriptor `fd` of the current task, or 0.
#[inline(always)]
pub fn sock_of_fd(fd: u64) -> Result<u64, i32> {
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, off!(task_files))?;
    let fdt: u64 = read(files, off!(files_fdt))?;
    let max_fds: u32 = read(fdt, off!(fdt_max_fds))?;
    if fd >= max_fds as u64 {
        return Err(-1);
    }
    let fd_array: u64 = read(fdt, off!(fdt_fd))?;
    let file: u64 = read(fd_array, fd as usize * 8)?;
    if file == 0 {
        return Err(-1);
    }
    let socket: u64 = read(file, off!(file_private_data))?;
    read(socket, off!(socket_sk))
}

/// Whether `family` is one this tool traces.
#[inline(always)]
pub fn is_inet(family: u8) -> bool {
    family == AF_INET || family == AF_INET6
}
