//! Types shared by the kernel programs (`port-tracer-ebpf`) and userspace (`port-tracer`).
//!
//! Every type here is `#[repr(C)]` with explicit padding and integer fields only, so the
//! byte layout is the same on both sides; each has a compile-time size assertion.
#![no_std]

/// What happened to a local port. Stored in [`Head::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A socket got a local port (or, with [`flags::REMOTE_UPDATE`], learnt its peer).
    Assign = 1,
    /// The port was given back to the kernel.
    Release = 2,
    /// The port moved to a TIME_WAIT socket: the hold continues.
    TimeWait = 3,
    /// bind/connect/autobind could not get a port.
    AllocFailure = 4,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Assign,
            2 => Self::Release,
            3 => Self::TimeWait,
            4 => Self::AllocFailure,
            _ => return None,
        })
    }
}

/// How a socket obtained its port. Stored in [`Head::origin`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Unknown = 0,
    /// bind() with an explicit port.
    Bind = 1,
    /// bind() to port 0: the kernel picked.
    BindEphemeral = 2,
    /// TCP connect() picked the port.
    Connect = 3,
    /// listen() without bind, or UDP send/connect on an unbound socket.
    Autobind = 4,
    /// Accepted socket sharing its listener's port: not an allocation.
    Inherited = 5,
}

impl Origin {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Bind,
            2 => Self::BindEphemeral,
            3 => Self::Connect,
            4 => Self::Autobind,
            5 => Self::Inherited,
            _ => Self::Unknown,
        }
    }
}

/// Bits of [`Head::flags`].
pub mod flags {
    /// `sock_id` is an `inet_timewait_sock`, not a full socket.
    pub const TIME_WAIT_SOCK: u8 = 1 << 0;
    /// Release of a TIME_WAIT socket whose timer was cancelled. The kernel also cancels the
    /// timer when it re-arms it, in which case a TimeWait event for the same socket follows.
    pub const TW_CANCEL: u8 = 1 << 1;
    /// Assign of a socket that already had its port: carries the remote endpoint only.
    pub const REMOTE_UPDATE: u8 = 1 << 2;
    /// TIME_WAIT timer armed (tracepoint tier): the program told a re-arm from a first arm,
    /// and [`TW_REARM`] says which. Traces written before it existed lack both bits.
    pub const TW_ARM_KNOWN: u8 = 1 << 3;
    /// With [`TW_ARM_KNOWN`]: the timer was re-armed (its cancel came just before, on the
    /// same CPU, inside one `mod_timer`); without: a new TIME_WAIT socket's first arm.
    pub const TW_REARM: u8 = 1 << 4;
    /// [`Alloc::alloc_ns`] holds the time spent inside the port allocator (fentry and
    /// kprobe tiers, which hook it); without it the time is not known.
    pub const ALLOC_TIMED: u8 = 1 << 5;
    /// Assign reported when the socket closed, timed and attributed as at the call that
    /// took the port (cgroup tier: a UDP `connect()` autobind, which no hook sees).
    pub const SEEN_AT_CLOSE: u8 = 1 << 6;
    /// Release at the close of a socket that holds no port any more (cgroup tier: a UDP
    /// `connect(AF_UNSPEC)` gave it back unseen): ends the socket's lifetime if one is open.
    pub const GONE_BEFORE_CLOSE: u8 = 1 << 7;
}

/// Bits of [`Head::more_flags`].
pub mod more_flags {
    /// A bind's origin (bind or bind_ephemeral) could not be told: the cgroup tier's
    /// `bind` hook's note of the port asked for was not found by `post_bind` (another thread
    /// whose id shares its slot bound at the same moment). Reported as `bind`.
    pub const ORIGIN_GUESSED: u8 = 1 << 0;
    /// A connect's port reported without who connected (cgroup tier: the task taken at
    /// CLOSE->SYN_SENT was not found at `TCP_CONNECT_CB`: that state change came before
    /// the programs were attached, or the map was full, counted).
    pub const OWNER_UNKNOWN: u8 = 1 << 1;
}

/// Indices of the per-CPU `LOST` counter array: one per place that can drop an event.
pub mod lost {
    /// The ring buffer had no room.
    pub const RINGBUF_FULL: u32 = 0;
    /// A map that carries state between two hooks was full.
    pub const MAP_FULL: u32 = 1;
    /// A kernel read failed, so the event could not be built.
    pub const READ_ERROR: u32 = 2;
    /// A kretprobe did not fire for a call whose entry was seen (the kernel's `maxactive`
    /// ran out): that call's result is unknown.
    pub const RETURN_MISSED: u32 = 3;
    /// A port taken without a hook seeing it, and given back before one could read it
    /// (cgroup tier: a UDP socket autobound by `connect()`, then disconnected by
    /// `connect(AF_UNSPEC)` before its close).
    pub const PORT_UNKNOWN: u32 = 4;
    pub const COUNT: u32 = 5;
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full",
        "map_full",
        "read_error",
        "return_missed",
        "port_unknown",
    ];
}

/// The errors a port allocation fails with, as the kernel numbers them (positive; the
/// kernel returns them negated).
pub mod errno {
    /// No port left in a UDP autobind (`udp_lib_get_port`).
    pub const EAGAIN: i32 = 11;
    /// The port asked for is taken (bind, listen's autobind).
    pub const EADDRINUSE: i32 = 98;
    /// No port left for connect's 4-tuple (`__inet_hash_connect`), or `bind(0)`'s range.
    pub const EADDRNOTAVAIL: i32 = 99;

    /// The name of an allocation failure's errno.
    pub const fn name(errno: i32) -> &'static str {
        match errno {
            EADDRINUSE => "EADDRINUSE",
            EADDRNOTAVAIL => "EADDRNOTAVAIL",
            EAGAIN => "EAGAIN",
            _ => "error",
        }
    }
}

/// The kernel programs' names, which are their function names in `port-tracer-ebpf` (each
/// is tied to its constant there, so a rename fails to compile) and what userspace loads
/// them by.
pub mod programs {
    // The fentry tier (fentry.rs).
    pub const FENTRY_INET_BIND: &str = "fentry_inet_bind";
    pub const FEXIT_INET_BIND: &str = "fexit_inet_bind";
    pub const FENTRY_INET6_BIND: &str = "fentry_inet6_bind";
    pub const FEXIT_INET6_BIND: &str = "fexit_inet6_bind";
    pub const FENTRY_INET_CSK_GET_PORT: &str = "fentry_inet_csk_get_port";
    pub const FEXIT_INET_CSK_GET_PORT: &str = "fexit_inet_csk_get_port";
    pub const FENTRY_UDP_LIB_GET_PORT: &str = "fentry_udp_lib_get_port";
    pub const FEXIT_UDP_LIB_GET_PORT: &str = "fexit_udp_lib_get_port";
    pub const FENTRY_INET_HASH_CONNECT: &str = "fentry_inet_hash_connect";
    pub const FEXIT_INET_HASH_CONNECT: &str = "fexit_inet_hash_connect";
    pub const FENTRY_INET6_HASH_CONNECT: &str = "fentry_inet6_hash_connect";
    pub const FEXIT_INET6_HASH_CONNECT: &str = "fexit_inet6_hash_connect";
    pub const FEXIT_INET_INHERIT_PORT: &str = "fexit_inet_inherit_port";
    pub const FENTRY_INET_PUT_PORT: &str = "fentry_inet_put_port";
    pub const FENTRY_UDP_LIB_UNHASH: &str = "fentry_udp_lib_unhash";
    pub const FENTRY_INET_TWSK_HASHDANCE: &str = "fentry_inet_twsk_hashdance";
    pub const FENTRY_INET_TWSK_KILL: &str = "fentry_inet_twsk_kill";
    // The kprobe tier (kprobe.rs).
    pub const KPROBE_INET_BIND: &str = "kprobe_inet_bind";
    pub const KRETPROBE_INET_BIND: &str = "kretprobe_inet_bind";
    pub const KPROBE_INET_CSK_GET_PORT: &str = "kprobe_inet_csk_get_port";
    pub const KRETPROBE_INET_CSK_GET_PORT: &str = "kretprobe_inet_csk_get_port";
    pub const KPROBE_UDP_LIB_GET_PORT: &str = "kprobe_udp_lib_get_port";
    pub const KRETPROBE_UDP_LIB_GET_PORT: &str = "kretprobe_udp_lib_get_port";
    pub const KPROBE_HASH_CONNECT: &str = "kprobe_hash_connect";
    pub const KRETPROBE_HASH_CONNECT: &str = "kretprobe_hash_connect";
    pub const KPROBE_INET_INHERIT_PORT: &str = "kprobe_inet_inherit_port";
    pub const KRETPROBE_INET_INHERIT_PORT: &str = "kretprobe_inet_inherit_port";
    pub const KPROBE_INET_PUT_PORT: &str = "kprobe_inet_put_port";
    pub const KPROBE_UDP_LIB_UNHASH: &str = "kprobe_udp_lib_unhash";
    pub const KPROBE_INET_TWSK_HASHDANCE: &str = "kprobe_inet_twsk_hashdance";
    pub const KPROBE_INET_TWSK_KILL: &str = "kprobe_inet_twsk_kill";
    // The tracepoint tier (syscalls.rs, tcp_state.rs, time_wait.rs, udp_release.rs).
    pub const SYS_ENTER_BIND: &str = "sys_enter_bind";
    pub const SYS_EXIT_BIND: &str = "sys_exit_bind";
    pub const SYS_ENTER_LISTEN: &str = "sys_enter_listen";
    pub const SYS_EXIT_LISTEN: &str = "sys_exit_listen";
    pub const SYS_ENTER_CONNECT: &str = "sys_enter_connect";
    pub const SYS_EXIT_CONNECT: &str = "sys_exit_connect";
    pub const SYS_ENTER_SENDTO: &str = "sys_enter_sendto";
    pub const SYS_EXIT_SENDTO: &str = "sys_exit_sendto";
    pub const SYS_ENTER_SENDMSG: &str = "sys_enter_sendmsg";
    pub const SYS_EXIT_SENDMSG: &str = "sys_exit_sendmsg";
    pub const SYS_ENTER_SENDMMSG: &str = "sys_enter_sendmmsg";
    pub const SYS_EXIT_SENDMMSG: &str = "sys_exit_sendmmsg";
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    pub const TCP_DESTROY_SOCK: &str = "tcp_destroy_sock";
    pub const TIMER_START: &str = "timer_start";
    pub const TIMER_CANCEL: &str = "timer_cancel";
    pub const TIMER_EXPIRE_ENTRY: &str = "timer_expire_entry";
    pub const UDP_SOCK_RELEASE: &str = "udp_sock_release";
    // The cgroup tier (bind.rs, udp_autobind.rs, sock_ops.rs; with tcp_state.rs,
    // time_wait.rs and udp_release.rs).
    pub const BIND4_REQUEST: &str = "bind4_request";
    pub const BIND6_REQUEST: &str = "bind6_request";
    pub const POST_BIND4: &str = "post_bind4";
    pub const POST_BIND6: &str = "post_bind6";
    pub const UDP_SENDMSG4: &str = "udp_sendmsg4";
    pub const UDP_SENDMSG6: &str = "udp_sendmsg6";
    pub const UDP_CONNECT4: &str = "udp_connect4";
    pub const UDP_CONNECT6: &str = "udp_connect6";
    pub const TCP_SOCK_OPS: &str = "tcp_sock_ops";

    /// Every program, for tools that look them up among the kernel's (the cost test).
    pub const ALL: [&str; 58] = [
        FENTRY_INET_BIND,
        FEXIT_INET_BIND,
        FENTRY_INET6_BIND,
        FEXIT_INET6_BIND,
        FENTRY_INET_CSK_GET_PORT,
        FEXIT_INET_CSK_GET_PORT,
        FENTRY_UDP_LIB_GET_PORT,
        FEXIT_UDP_LIB_GET_PORT,
        FENTRY_INET_HASH_CONNECT,
        FEXIT_INET_HASH_CONNECT,
        FENTRY_INET6_HASH_CONNECT,
        FEXIT_INET6_HASH_CONNECT,
        FEXIT_INET_INHERIT_PORT,
        FENTRY_INET_PUT_PORT,
        FENTRY_UDP_LIB_UNHASH,
        FENTRY_INET_TWSK_HASHDANCE,
        FENTRY_INET_TWSK_KILL,
        KPROBE_INET_BIND,
        KRETPROBE_INET_BIND,
        KPROBE_INET_CSK_GET_PORT,
        KRETPROBE_INET_CSK_GET_PORT,
        KPROBE_UDP_LIB_GET_PORT,
        KRETPROBE_UDP_LIB_GET_PORT,
        KPROBE_HASH_CONNECT,
        KRETPROBE_HASH_CONNECT,
        KPROBE_INET_INHERIT_PORT,
        KRETPROBE_INET_INHERIT_PORT,
        KPROBE_INET_PUT_PORT,
        KPROBE_UDP_LIB_UNHASH,
        KPROBE_INET_TWSK_HASHDANCE,
        KPROBE_INET_TWSK_KILL,
        SYS_ENTER_BIND,
        SYS_EXIT_BIND,
        SYS_ENTER_LISTEN,
        SYS_EXIT_LISTEN,
        SYS_ENTER_CONNECT,
        SYS_EXIT_CONNECT,
        SYS_ENTER_SENDTO,
        SYS_EXIT_SENDTO,
        SYS_ENTER_SENDMSG,
        SYS_EXIT_SENDMSG,
        SYS_ENTER_SENDMMSG,
        SYS_EXIT_SENDMMSG,
        INET_SOCK_SET_STATE,
        TCP_DESTROY_SOCK,
        TIMER_START,
        TIMER_CANCEL,
        TIMER_EXPIRE_ENTRY,
        UDP_SOCK_RELEASE,
        BIND4_REQUEST,
        BIND6_REQUEST,
        POST_BIND4,
        POST_BIND6,
        UDP_SENDMSG4,
        UDP_SENDMSG6,
        UDP_CONNECT4,
        UDP_CONNECT6,
        TCP_SOCK_OPS,
    ];
    /// The tracepoint tier's syscall tracepoints (category `syscalls`, named as the
    /// programs).
    pub const SYSCALLS: [&str; 12] = [
        SYS_ENTER_BIND,
        SYS_EXIT_BIND,
        SYS_ENTER_LISTEN,
        SYS_EXIT_LISTEN,
        SYS_ENTER_CONNECT,
        SYS_EXIT_CONNECT,
        SYS_ENTER_SENDTO,
        SYS_EXIT_SENDTO,
        SYS_ENTER_SENDMSG,
        SYS_EXIT_SENDMSG,
        SYS_ENTER_SENDMMSG,
        SYS_EXIT_SENDMMSG,
    ];
    /// The tracepoint tier's raw tracepoints, named as the programs.
    pub const RAW_TRACEPOINTS: [&str; 5] = [
        INET_SOCK_SET_STATE,
        TCP_DESTROY_SOCK,
        TIMER_START,
        TIMER_CANCEL,
        TIMER_EXPIRE_ENTRY,
    ];
}

/// The attach tiers, best first: the one list that `--attach`, the loader, the VM matrix
/// and the benchmark read. Each produces the same events; they differ in what the kernel
/// lets them hook.
pub mod tiers {
    #[derive(Debug, PartialEq, Eq)]
    pub struct TierInfo {
        /// As `--attach` and the traces name it.
        pub name: &'static str,
        /// What it hooks, and what it traces exactly.
        pub about: &'static str,
        /// It hooks the port allocators themselves, so it times them (`alloc_ns`).
        pub times_allocator: bool,
        /// It sees bind() and listen() fail (EADDRINUSE); the cgroup tier's hooks run only
        /// after a bind succeeded.
        pub sees_bind_failures: bool,
    }

    pub const FENTRY: TierInfo = TierInfo {
        name: "fentry",
        about: "fentry/fexit on the port allocators themselves: exact, cheapest",
        times_allocator: true,
        sees_bind_failures: true,
    };
    pub const KPROBE: TierInfo = TierInfo {
        name: "kprobe",
        about: "kprobes/kretprobes on the same functions: exact",
        times_allocator: true,
        sees_bind_failures: true,
    };
    pub const TRACEPOINT: TierInfo = TierInfo {
        name: "tracepoint",
        about: "syscall and raw tracepoints and a cgroup socket hook: works where fentry and \
                kprobes do not; a few cases approximate (README)",
        times_allocator: false,
        sees_bind_failures: true,
    };
    pub const CGROUP: TierInfo = TierInfo {
        name: "cgroup",
        about: "cgroup socket hooks and raw tracepoints, no syscall tracepoint: works where \
                fentry and kprobes do not and costs least there; failed bind() calls are \
                not seen, a few cases approximate (README)",
        times_allocator: false,
        sees_bind_failures: false,
    };
    pub const ALL: [TierInfo; 4] = [FENTRY, KPROBE, CGROUP, TRACEPOINT];

    /// The tier of this name: for the edges where a name comes in (`--attach`, a trace
    /// file's metadata, a test's environment); everything past them holds the
    /// `&'static TierInfo`.
    pub fn by_name(name: &str) -> Option<&'static TierInfo> {
        const TIERS: &[TierInfo] = &ALL;
        TIERS.iter().find(|t| t.name == name)
    }
}

/// `AF_INET` and `AF_INET6` as the kernel numbers them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const COMM_LEN: usize = 16;

/// The task identity an assignment or a failure carries: who obtained (or failed to
/// obtain) the port. One definition for every program, for connect's pending state and for
/// userspace's decoder.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub cgroup_id: u64,
    /// Process (tgid) and thread of the task.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// The process's parent (its `real_parent`'s tgid, as `getppid()` returns it).
    pub ppid: u32,
    /// The process's name: its thread group leader's `comm`, as `ps` and /proc/PID/comm
    /// show it.
    pub comm: [u8; COMM_LEN],
    /// The name of the thread that triggered the event (threads may name themselves).
    pub thread: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<Owner>() == 56);
// The kernel side moves names as two 8-byte words.
const _: () = assert!(core::mem::offset_of!(Owner, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Owner, thread) % 8 == 0);

/// What an allocation cost and was bounded by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alloc {
    /// With [`flags::ALLOC_TIMED`]: nanoseconds from the allocator's entry to its exit
    /// (`inet_csk_get_port`, `udp_lib_get_port`, `inet_hash_connect`'s port search),
    /// saturating at `u32::MAX` (4.3 s).
    pub alloc_ns: u32,
    /// The socket's own `IP_LOCAL_PORT_RANGE` (Linux 6.3+), `low | high << 16`, on
    /// assignments and failures of connect(), bind(0) and autobind; 0: none (or a kernel
    /// without it).
    pub own_port_range: u32,
}

const _: () = assert!(core::mem::size_of::<Alloc>() == 8);

/// The head of every record: what happened to which socket, when. The socket's addresses
/// follow ([`Addrs4`] or [`Addrs6`], by `family`), then a body by `body` ([`body`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket (`struct sock` or `inet_timewait_sock`). Unique while the
    /// socket lives; userspace pairs it with the assignment to tell reuses apart.
    pub sock_id: u64,
    /// Network namespace inode number.
    pub netns: u32,
    /// Ports in host order.
    pub lport: u16,
    pub rport: u16,
    /// An [`EventKind`].
    pub kind: u8,
    /// An [`Origin`].
    pub origin: u8,
    /// [`flags`] and [`more_flags`] bits.
    pub flags: u8,
    pub more_flags: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6`: which addresses follow.
    pub family: u8,
    /// What follows the addresses: a [`body`] value.
    pub body: u8,
    /// Bytes of the whole record, head included.
    pub len: u8,
}

const _: () = assert!(core::mem::size_of::<Head>() == 32);

/// An IPv4 socket's local and remote address, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addrs4 {
    pub laddr: [u8; 4],
    pub raddr: [u8; 4],
}

/// An IPv6 socket's local and remote address, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addrs6 {
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// What follows a record's addresses ([`Head::body`]).
pub mod body {
    /// Nothing: releases, TIME_WAIT transitions, accepted sockets (their owner is their
    /// listener's), updates of a socket's peer.
    pub const NONE: u8 = 0;
    /// An assignment: [`super::Assigned`].
    pub const ASSIGNED: u8 = 1;
    /// A failed allocation: [`super::Failed`].
    pub const FAILED: u8 = 2;
}

/// The body of an assignment: who got the port, and what its allocation cost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    pub owner: Owner,
    pub alloc: Alloc,
}

const _: () = assert!(core::mem::size_of::<Assigned>() == 64);

/// The body of a failed allocation: who asked, what the search cost, and why it failed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failed {
    pub owner: Owner,
    pub alloc: Alloc,
    /// Positive errno.
    pub errno: i32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Failed>() == 72);

/// A record without a body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoBody;

/// One record as written to the ring buffer and to trace files: the head, the addresses of
/// the socket's family, and the body its kind needs. Releases of IPv4 sockets take 40
/// bytes, assignments 104.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record<A, B> {
    pub head: Head,
    pub addrs: A,
    pub body: B,
}

/// The records the kernel side writes, by family and body.
pub type Plain4 = Record<Addrs4, NoBody>;
pub type Plain6 = Record<Addrs6, NoBody>;
pub type Assigned4 = Record<Addrs4, Assigned>;
pub type Assigned6 = Record<Addrs6, Assigned>;
pub type Failed4 = Record<Addrs4, Failed>;
pub type Failed6 = Record<Addrs6, Failed>;

const _: () = assert!(core::mem::size_of::<Plain4>() == 40);
const _: () = assert!(core::mem::size_of::<Plain6>() == 64);
const _: () = assert!(core::mem::size_of::<Assigned4>() == 104);
const _: () = assert!(core::mem::size_of::<Assigned6>() == 128);
const _: () = assert!(core::mem::size_of::<Failed4>() == 112);
const _: () = assert!(core::mem::size_of::<Failed6>() == 136);
const _: () = assert!(core::mem::offset_of!(Assigned4, body) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Assigned6, body) % 8 == 0);

/// The size of a record with this family and body; None for a combination that does not
/// exist.
pub const fn record_len(family: u8, body: u8) -> Option<usize> {
    let addrs = match family {
        AF_INET => core::mem::size_of::<Addrs4>(),
        AF_INET6 => core::mem::size_of::<Addrs6>(),
        _ => return None,
    };
    let body = match body {
        body::NONE => 0,
        body::ASSIGNED => core::mem::size_of::<Assigned>(),
        body::FAILED => core::mem::size_of::<Failed>(),
        _ => return None,
    };
    Some(core::mem::size_of::<Head>() + addrs + body)
}

/// Where `skc_net` lies from `skc_daddr` (the start of `struct sock_common`): the kernel
/// side reads the socket's addresses, ports, family and namespace in one go up to it
/// (userspace refuses a kernel laid out otherwise).
pub const SOCK_HEAD_NET: usize = 48;

/// Field offsets of the running kernel, resolved from its BTF by userspace at start-up and
/// handed to the programs as a global: nothing depends on a compiled-in kernel layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    // struct sock_common (also the head of inet_timewait_sock)
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    // struct sock
    pub sk_protocol: u32,
    pub sk_type: u32,
    // struct inet_sock
    pub inet_sport: u32,
    // struct inet_connection_sock
    pub icsk_bind_hash: u32,
    // struct net: ns.inum
    pub net_inum: u32,
    // task_struct -> files_struct -> fdtable -> file -> socket -> sock
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    // struct timer_list and inet_timewait_sock.tw_timer
    pub timer_function: u32,
    pub tw_timer: u32,
    /// sock_common.skc_state (a byte).
    pub skc_state: u32,
    // task_struct.group_leader and task_struct.comm: the process's name
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// inet_sock.local_port_range (Linux 6.3+: a socket's own `IP_LOCAL_PORT_RANGE`); 0:
    /// the kernel has none.
    pub inet_local_port_range: u32,
    // task_struct.real_parent and task_struct.tgid: the parent process's id
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub _pad: u32,
    /// Address of `tw_timer_handler`, the TIME_WAIT timer's callback.
    pub tw_timer_handler: u64,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 120);

/// Settings of the kernel programs, set by userspace before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgramConfig {
    /// Wake the reader only once this many bytes wait in the ring buffer (batched wakeups);
    /// userspace also drains on a short timer, so nothing waits longer than that.
    pub wakeup_bytes: u64,
    /// 1: the cgroup tier is attached. The programs it shares with the tracepoint tier
    /// (state changes, UDP release) then do what no syscall tracepoint does for them.
    pub cgroup_tier: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ProgramConfig>() == 16);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ProgramConfig {}
}
