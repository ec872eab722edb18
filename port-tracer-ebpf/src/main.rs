//! Kernel programs of port-tracer: four tiers (fentry, kprobe, cgroup, tracepoint) emitting the
//! same events.
//!
//! Each module is one hook and one concern; they only observe and report, userspace does the
//! thinking (pairing, ordering, lifetimes).
#![no_std]
#![no_main]

mod bind;
mod connect;
mod emit;
mod fentry;
mod hooks;
mod kernel;
mod kprobe;
mod pending;
mod sock_ops;
mod syscalls;
mod tcp_state;
mod time_wait;
mod udp_autobind;
mod udp_release;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use port_tracer_common::{lost, KernelOffsets, ProgramConfig};

/// Field offsets of the running kernel, written by userspace before load.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Settings written by userspace before load.
#[unsafe(no_mangle)]
static CONFIG: ProgramConfig = ProgramConfig {
    wakeup_bytes: 0,
    cgroup_tier: 0,
    _pad: 0,
};

/// Events to userspace. Userspace sizes it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counts of dropped events, indexed by `port_tracer_common::lost`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);

/// Socket syscalls between their entry and exit, by thread id.
#[map]
static SYSCALLS: HashMap<u32, pending::Pending> = HashMap::with_max_entries(16384, 0);

/// TCP sockets in SYN_SENT whose port is being chosen by connect, by socket address.
#[map]
static CONNECTING: HashMap<u64, connect::Connecting> = HashMap::with_max_entries(65536, 0);

/// Per CPU: the TIME_WAIT timer whose cancel was this CPU's last timer event (0: none), to
/// tell a re-arm from a first arm (see `time_wait`).
#[map]
static TW_CANCELLED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the socket that just handed its port to a TIME_WAIT socket (see
/// `time_wait::Handoff`): its own release, which follows on this CPU, is not reported.
#[map]
static TW_HANDOFF: PerCpuArray<time_wait::Handoff> = PerCpuArray::with_max_entries(1, 0);

/// Threads inside bind() (fentry and kprobe tiers), to tell bind(0) from autobind.
#[map]
static BINDING: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// When each thread entered the port allocator it is in (fentry tier): its time there.
/// The allocators do not nest, and no softirq runs them.
#[map]
static GET_PORT_START: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

/// Each thread's bind in progress (cgroup tier), from the cgroup `bind` hook to
/// `post_bind` (see `bind`), in the slot its thread id picks. An array, not a hash map:
/// an LRU insert cost 380 ns per bind. Threads that share a slot and bind at once are
/// told apart by the request's socket and thread (see `bind::BindRequest`).
#[map]
static BIND_REQUESTS: Array<bind::BindRequest> = Array::with_max_entries(bind::BIND_SLOTS, 0);

/// UDP sockets bound to the wildcard whose port is known, and those a `connect()`
/// autobound (cgroup tier), by socket address, until they close (see `udp_autobind`).
#[map]
static SEEN_UDP: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// Arguments of kprobed calls, by function and thread, for their kretprobes.
#[map]
static PROBE_ARGS: HashMap<u64, kprobe::ProbeArgs> = HashMap::with_max_entries(16384, 0);

/// Ties a program to its name in `port_tracer_common::programs`, which userspace loads it
/// by: compiling fails when the function is renamed or the name differs.
macro_rules! named {
    ($module:ident :: $program:ident, $name:ident) => {
        const _: () = {
            let _ = $module::$program;
            assert!(str_eq(
                stringify!($program),
                port_tracer_common::programs::$name
            ));
        };
    };
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

named!(fentry::fentry_inet_bind, FENTRY_INET_BIND);
named!(fentry::fexit_inet_bind, FEXIT_INET_BIND);
named!(fentry::fentry_inet6_bind, FENTRY_INET6_BIND);
named!(fentry::fexit_inet6_bind, FEXIT_INET6_BIND);
named!(fentry::fentry_inet_csk_get_port, FENTRY_INET_CSK_GET_PORT);
named!(fentry::fexit_inet_csk_get_port, FEXIT_INET_CSK_GET_PORT);
named!(fentry::fentry_udp_lib_get_port, FENTRY_UDP_LIB_GET_PORT);
named!(fentry::fexit_udp_lib_get_port, FEXIT_UDP_LIB_GET_PORT);
named!(fentry::fentry_inet_hash_connect, FENTRY_INET_HASH_CONNECT);
named!(fentry::fexit_inet_hash_connect, FEXIT_INET_HASH_CONNECT);
named!(fentry::fentry_inet6_hash_connect, FENTRY_INET6_HASH_CONNECT);
named!(fentry::fexit_inet6_hash_connect, FEXIT_INET6_HASH_CONNECT);
named!(fentry::fexit_inet_inherit_port, FEXIT_INET_INHERIT_PORT);
named!(fentry::fentry_inet_put_port, FENTRY_INET_PUT_PORT);
named!(fentry::fentry_udp_lib_unhash, FENTRY_UDP_LIB_UNHASH);
named!(
    fentry::fentry_inet_twsk_hashdance,
    FENTRY_INET_TWSK_HASHDANCE
);
named!(fentry::fentry_inet_twsk_kill, FENTRY_INET_TWSK_KILL);
named!(kprobe::kprobe_inet_bind, KPROBE_INET_BIND);
named!(kprobe::kretprobe_inet_bind, KRETPROBE_INET_BIND);
named!(kprobe::kprobe_inet_csk_get_port, KPROBE_INET_CSK_GET_PORT);
named!(
    kprobe::kretprobe_inet_csk_get_port,
    KRETPROBE_INET_CSK_GET_PORT
);
named!(kprobe::kprobe_udp_lib_get_port, KPROBE_UDP_LIB_GET_PORT);
named!(
    kprobe::kretprobe_udp_lib_get_port,
    KRETPROBE_UDP_LIB_GET_PORT
);
named!(kprobe::kprobe_hash_connect, KPROBE_HASH_CONNECT);
named!(kprobe::kretprobe_hash_connect, KRETPROBE_HASH_CONNECT);
named!(kprobe::kprobe_inet_inherit_port, KPROBE_INET_INHERIT_PORT);
named!(
    kprobe::kretprobe_inet_inherit_port,
    KRETPROBE_INET_INHERIT_PORT
);
named!(kprobe::kprobe_inet_put_port, KPROBE_INET_PUT_PORT);
named!(kprobe::kprobe_udp_lib_unhash, KPROBE_UDP_LIB_UNHASH);
named!(
    kprobe::kprobe_inet_twsk_hashdance,
    KPROBE_INET_TWSK_HASHDANCE
);
named!(kprobe::kprobe_inet_twsk_kill, KPROBE_INET_TWSK_KILL);
named!(syscalls::sys_enter_bind, SYS_ENTER_BIND);
named!(syscalls::sys_exit_bind, SYS_EXIT_BIND);
named!(syscalls::sys_enter_listen, SYS_ENTER_LISTEN);
named!(syscalls::sys_exit_listen, SYS_EXIT_LISTEN);
named!(syscalls::sys_enter_connect, SYS_ENTER_CONNECT);
named!(syscalls::sys_exit_connect, SYS_EXIT_CONNECT);
named!(syscalls::sys_enter_sendto, SYS_ENTER_SENDTO);
named!(syscalls::sys_exit_sendto, SYS_EXIT_SENDTO);
named!(syscalls::sys_enter_sendmsg, SYS_ENTER_SENDMSG);
named!(syscalls::sys_exit_sendmsg, SYS_EXIT_SENDMSG);
named!(syscalls::sys_enter_sendmmsg, SYS_ENTER_SENDMMSG);
named!(syscalls::sys_exit_sendmmsg, SYS_EXIT_SENDMMSG);
named!(tcp_state::inet_sock_set_state, INET_SOCK_SET_STATE);
named!(tcp_state::tcp_destroy_sock, TCP_DESTROY_SOCK);
named!(time_wait::timer_start, TIMER_START);
named!(time_wait::timer_cancel, TIMER_CANCEL);
named!(time_wait::timer_expire_entry, TIMER_EXPIRE_ENTRY);
named!(udp_release::udp_sock_release, UDP_SOCK_RELEASE);
named!(bind::bind4_request, BIND4_REQUEST);
named!(bind::bind6_request, BIND6_REQUEST);
named!(bind::post_bind4, POST_BIND4);
named!(bind::post_bind6, POST_BIND6);
named!(udp_autobind::udp_sendmsg4, UDP_SENDMSG4);
named!(udp_autobind::udp_sendmsg6, UDP_SENDMSG6);
named!(udp_autobind::udp_connect4, UDP_CONNECT4);
named!(udp_autobind::udp_connect6, UDP_CONNECT6);
named!(sock_ops::tcp_sock_ops, TCP_SOCK_OPS);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
