//! Reading kernel structures at offsets resolved from BTF by userspace.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    bpf_probe_read_kernel,
    generated::{self as gen, bpf_get_current_task},
};
use port_tracer_common::{flags, Alloc, Owner, AF_INET, AF_INET6, COMM_LEN};

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

/// The socket's own port range (`IP_LOCAL_PORT_RANGE`, Linux 6.3+), `low | high << 16`;
/// 0 on kernels without it, or when the socket has none.
#[inline(always)]
pub fn own_port_range(sk: u64) -> u32 {
    let at = off!(inet_local_port_range);
    if at == 0 {
        return 0;
    }
    read::<u32>(sk, at).unwrap_or(0)
}

/// What an allocation of socket `sk` cost (the time since `start_ns`, 0: not known) and
/// was bounded by, and the flag that says the time is known.
#[inline(always)]
pub fn alloc_of(sk: u64, start_ns: u64) -> (Alloc, u8) {
    let mut a = Alloc {
        alloc_ns: 0,
        own_port_range: own_port_range(sk),
    };
    if start_ns == 0 {
        return (a, 0);
    }
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start_ns);
    a.alloc_ns = ns.min(u32::MAX as u64) as u32;
    (a, flags::ALLOC_TIMED)
}

/// The current thread's id.
#[inline(always)]
pub fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// A task name as two words: names sit 8-byte aligned in `Owner` (asserted where it is
/// defined), so they move in two loads and stores, not sixteen.
pub type Name = [u64; 2];

/// `name` as a [`Name`].
#[inline(always)]
fn name_mut(name: &mut [u8; COMM_LEN]) -> &mut Name {
    // SAFETY: same size; the field is 8-byte aligned (asserted in port-tracer-common).
    unsafe { &mut *(name as *mut [u8; COMM_LEN]).cast::<Name>() }
}

/// The current task: who it is, its process's name (its thread group leader's `comm`,
/// what `ps` shows) and its thread's, and its parent process. Written in place: names
/// copied through the stack cost a byte per instruction. A thread's own name says little
/// to someone looking for a process.
#[inline(always)]
pub fn fill_owner(o: &mut Owner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    o.pid = pid;
    o.tid = tid;
    o.uid = bpf_get_current_uid_gid() as u32;
    o.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let (group_leader, comm_at) = (off!(task_group_leader), off!(task_comm));
    let (parent_at, tgid_at) = (off!(task_real_parent), off!(task_tgid));
    let (process, thread) = (&mut o.comm as *mut _, &mut o.thread as *mut _);
    // SAFETY: two distinct fields; helpers writing COMM_LEN bytes into COMM_LEN-byte
    // buffers.
    unsafe {
        let (process, thread) = (name_mut(&mut *process), name_mut(&mut *thread));
        if gen::bpf_get_current_comm(thread.as_mut_ptr().cast(), COMM_LEN as u32) != 0 {
            *thread = [0; 2];
        }
        *process = *thread;
        let task = gen::bpf_get_current_task();
        // Threads share their process's parent.
        if let Ok(parent) = read::<u64>(task, parent_at) {
            o.ppid = read::<u32>(parent, tgid_at).unwrap_or(0);
        }
        if pid == tid {
            return;
        }
        if let Ok(leader) = read::<u64>(task, group_leader) {
            let comm = (leader as usize + comm_at) as *const _;
            if gen::bpf_probe_read_kernel(process.as_mut_ptr().cast(), COMM_LEN as u32, comm) != 0 {
                *process = *thread;
            }
        }
    }
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

/// A kernel pointer from a program's context (a cgroup or sockops hook's socket) as a
/// plain number, like the socket addresses the tracing hooks get: copied through memory,
/// the verifier no longer treats it as a pointer it must check.
#[inline(always)]
pub fn plain_address(ptr: u64) -> Result<u64, i32> {
    unsafe { bpf_probe_read_kernel(&ptr as *const u64) }
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
