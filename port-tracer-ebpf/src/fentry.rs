//! The fentry tier: fentry/fexit on the port allocators and release functions themselves.
//! fexit programs read the return value after the arguments.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::hooks;

#[fentry(function = "inet_bind")]
pub fn fentry_inet_bind(_ctx: FEntryContext) -> u32 {
    hooks::bind_enter();
    0
}

#[fexit(function = "inet_bind")]
pub fn fexit_inet_bind(_ctx: FExitContext) -> u32 {
    hooks::bind_exit();
    0
}

#[fentry(function = "inet6_bind")]
pub fn fentry_inet6_bind(_ctx: FEntryContext) -> u32 {
    hooks::bind_enter();
    0
}

#[fexit(function = "inet6_bind")]
pub fn fexit_inet6_bind(_ctx: FExitContext) -> u32 {
    hooks::bind_exit();
    0
}

#[fentry(function = "inet_csk_get_port")]
pub fn fentry_inet_csk_get_port(_ctx: FEntryContext) -> u32 {
    hooks::get_port_enter();
    0
}

/// int inet_csk_get_port(struct sock *sk, unsigned short snum)
#[fexit(function = "inet_csk_get_port")]
pub fn fexit_inet_csk_get_port(ctx: FExitContext) -> u32 {
    let (sk, snum, ret): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    hooks::tcp_get_port_exit(sk, snum as u16, ret as i32, hooks::get_port_started());
    0
}

#[fentry(function = "udp_lib_get_port")]
pub fn fentry_udp_lib_get_port(_ctx: FEntryContext) -> u32 {
    hooks::get_port_enter();
    0
}

/// int udp_lib_get_port(struct sock *sk, unsigned short snum, unsigned int hash2_nulladdr)
#[fexit(function = "udp_lib_get_port")]
pub fn fexit_udp_lib_get_port(ctx: FExitContext) -> u32 {
    let (sk, snum, ret): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(3));
    hooks::udp_get_port_exit(sk, snum as u16, ret as i32, hooks::get_port_started());
    0
}

/// int inet_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)
#[fentry(function = "inet_hash_connect")]
pub fn fentry_inet_hash_connect(ctx: FEntryContext) -> u32 {
    hooks::hash_connect_enter(ctx.arg(1));
    0
}

#[fexit(function = "inet_hash_connect")]
pub fn fexit_inet_hash_connect(ctx: FExitContext) -> u32 {
    let (sk, ret): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    hooks::hash_connect_exit(sk, ret as i32);
    0
}

/// int inet6_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)
#[fentry(function = "inet6_hash_connect")]
pub fn fentry_inet6_hash_connect(ctx: FEntryContext) -> u32 {
    hooks::hash_connect_enter(ctx.arg(1));
    0
}

#[fexit(function = "inet6_hash_connect")]
pub fn fexit_inet6_hash_connect(ctx: FExitContext) -> u32 {
    let (sk, ret): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    hooks::hash_connect_exit(sk, ret as i32);
    0
}

/// int __inet_inherit_port(const struct sock *sk, struct sock *child)
#[fexit(function = "__inet_inherit_port")]
pub fn fexit_inet_inherit_port(ctx: FExitContext) -> u32 {
    let (child, ret): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    hooks::inherit_port_exit(child, ret as i32);
    0
}

/// void inet_put_port(struct sock *sk)
#[fentry(function = "inet_put_port")]
pub fn fentry_inet_put_port(ctx: FEntryContext) -> u32 {
    hooks::put_port(ctx.arg(0));
    0
}

/// void udp_lib_unhash(struct sock *sk)
#[fentry(function = "udp_lib_unhash")]
pub fn fentry_udp_lib_unhash(ctx: FEntryContext) -> u32 {
    hooks::udp_unhash(ctx.arg(0));
    0
}

/// void inet_twsk_hashdance_schedule(struct inet_timewait_sock *tw, ...) (6.11+), or
/// inet_twsk_hashdance(tw, ...) before: userspace attaches this to whichever exists.
#[fentry(function = "inet_twsk_hashdance_schedule")]
pub fn fentry_inet_twsk_hashdance(ctx: FEntryContext) -> u32 {
    hooks::time_wait_enter(ctx.arg(0), ctx.arg(1));
    0
}

/// static void inet_twsk_kill(struct inet_timewait_sock *tw)
#[fentry(function = "inet_twsk_kill")]
pub fn fentry_inet_twsk_kill(ctx: FEntryContext) -> u32 {
    hooks::time_wait_kill(ctx.arg(0));
    0
}
