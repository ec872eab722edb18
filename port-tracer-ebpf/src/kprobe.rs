//! The kprobe tier: kprobes and kretprobes on the same functions as the fentry tier.
//! A kretprobe sees only the return value, so the entry probe keeps the arguments in a
//! map by thread.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_tracer_common::lost;

use crate::{emit::count_lost, hooks, kernel::tid, PROBE_ARGS};

/// Arguments of a probed call, kept from entry to return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProbeArgs {
    pub sk: u64,
    pub arg: u64,
    /// When the call entered (its time inside is the allocator's).
    pub start_ns: u64,
}

/// Which probed function a kept argument set belongs to: a softirq can interrupt a thread
/// inside one probed function and run another on the same thread id.
#[derive(Clone, Copy)]
enum Func {
    TcpGetPort = 1,
    UdpGetPort = 2,
    HashConnect = 3,
    InheritPort = 4,
}

fn key(f: Func) -> u64 {
    ((f as u64) << 32) | tid() as u64
}

fn keep(f: Func, sk: Option<u64>, arg: Option<u64>) {
    let key = key(f);
    // These functions do not recurse: arguments still kept from an earlier call mean its
    // kretprobe never ran.
    if unsafe { PROBE_ARGS.get(key) }.is_some() {
        count_lost(lost::RETURN_MISSED);
    }
    let args = ProbeArgs {
        sk: sk.unwrap_or(0),
        arg: arg.unwrap_or(0),
        start_ns: unsafe { bpf_ktime_get_ns() },
    };
    if PROBE_ARGS.insert(key, args, 0).is_err() {
        count_lost(lost::MAP_FULL);
    }
}

fn take(f: Func) -> Option<ProbeArgs> {
    let key = key(f);
    let args = *unsafe { PROBE_ARGS.get(key) }?;
    let _ = PROBE_ARGS.remove(key);
    Some(args)
}

#[kprobe]
pub fn kprobe_inet_bind(_ctx: ProbeContext) -> u32 {
    hooks::bind_enter();
    0
}

#[kretprobe]
pub fn kretprobe_inet_bind(_ctx: RetProbeContext) -> u32 {
    hooks::bind_exit();
    0
}

#[kprobe]
pub fn kprobe_inet_csk_get_port(ctx: ProbeContext) -> u32 {
    keep(Func::TcpGetPort, ctx.arg(0), ctx.arg(1));
    0
}

#[kretprobe]
pub fn kretprobe_inet_csk_get_port(ctx: RetProbeContext) -> u32 {
    if let Some(a) = take(Func::TcpGetPort) {
        hooks::tcp_get_port_exit(a.sk, a.arg as u16, ctx.ret::<u64>() as i32, a.start_ns);
    }
    0
}

#[kprobe]
pub fn kprobe_udp_lib_get_port(ctx: ProbeContext) -> u32 {
    keep(Func::UdpGetPort, ctx.arg(0), ctx.arg(1));
    0
}

#[kretprobe]
pub fn kretprobe_udp_lib_get_port(ctx: RetProbeContext) -> u32 {
    if let Some(a) = take(Func::UdpGetPort) {
        hooks::udp_get_port_exit(a.sk, a.arg as u16, ctx.ret::<u64>() as i32, a.start_ns);
    }
    0
}

/// inet_hash_connect and inet6_hash_connect: (death_row, sk)
#[kprobe]
pub fn kprobe_hash_connect(ctx: ProbeContext) -> u32 {
    let sk: Option<u64> = ctx.arg(1);
    keep(Func::HashConnect, sk, None);
    if let Some(sk) = sk {
        hooks::hash_connect_enter(sk);
    }
    0
}

#[kretprobe]
pub fn kretprobe_hash_connect(ctx: RetProbeContext) -> u32 {
    if let Some(a) = take(Func::HashConnect) {
        hooks::hash_connect_exit(a.sk, ctx.ret::<u64>() as i32);
    }
    0
}

/// __inet_inherit_port(sk, child)
#[kprobe]
pub fn kprobe_inet_inherit_port(ctx: ProbeContext) -> u32 {
    keep(Func::InheritPort, ctx.arg(1), None);
    0
}

#[kretprobe]
pub fn kretprobe_inet_inherit_port(ctx: RetProbeContext) -> u32 {
    if let Some(a) = take(Func::InheritPort) {
        hooks::inherit_port_exit(a.sk, ctx.ret::<u64>() as i32);
    }
    0
}

#[kprobe]
pub fn kprobe_inet_put_port(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg(0) {
        hooks::put_port(sk);
    }
    0
}

#[kprobe]
pub fn kprobe_udp_lib_unhash(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg(0) {
        hooks::udp_unhash(sk);
    }
    0
}

/// inet_twsk_hashdance_schedule or inet_twsk_hashdance: (tw, sk, hashinfo, ...)
#[kprobe]
pub fn kprobe_inet_twsk_hashdance(ctx: ProbeContext) -> u32 {
    if let (Some(tw), Some(sk)) = (ctx.arg(0), ctx.arg(1)) {
        hooks::time_wait_enter(tw, sk);
    }
    0
}

#[kprobe]
pub fn kprobe_inet_twsk_kill(ctx: ProbeContext) -> u32 {
    if let Some(tw) = ctx.arg(0) {
        hooks::time_wait_kill(tw);
    }
    0
}
