//! Kernel programs of port-tracer: three tiers (fentry, kprobe, tracepoint) emitting the
//! same events.
//!
//! Each module is one hook and one concern; they only observe and report, userspace does the
//! thinking (pairing, ordering, lifetimes).
#![no_std]
#![no_main]

mod emit;
mod fentry;
mod hooks;
mod kernel;
mod kprobe;
mod syscalls;
mod tcp_state;
mod time_wait;
mod udp_release;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use port_tracer_common::{lost, KernelOffsets, ProgramConfig};

/// Field offsets of the running kernel, written by userspace before load.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Settings written by userspace before load.
#[unsafe(no_mangle)]
static CONFIG: ProgramConfig = ProgramConfig { wakeup_bytes: 0 };

/// Events to userspace. Userspace sizes it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counts of dropped events, indexed by `port_tracer_common::lost`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);

/// Socket syscalls between their entry and exit, by thread id.
#[map]
static SYSCALLS: HashMap<u32, syscalls::Pending> = HashMap::with_max_entries(16384, 0);

/// TCP sockets in SYN_SENT whose port is being chosen by connect, by socket address.
#[map]
static CONNECTING: HashMap<u64, tcp_state::Connecting> = HashMap::with_max_entries(65536, 0);

/// Per CPU: the TIME_WAIT timer whose cancel was this CPU's last timer event (0: none), to
/// tell a re-arm from a first arm (see `time_wait`).
#[map]
static TW_CANCELLED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Threads inside bind() (fentry and kprobe tiers), to tell bind(0) from autobind.
#[map]
static BINDING: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Arguments of kprobed calls, by function and thread, for their kretprobes.
#[map]
static PROBE_ARGS: HashMap<u64, kprobe::ProbeArgs> = HashMap::with_max_entries(16384, 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
