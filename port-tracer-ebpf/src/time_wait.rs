//! TIME_WAIT (raw tracepoints `timer_start`, `timer_cancel`, `timer_expire_entry`).
//!
//! No tracepoint marks a TIME_WAIT socket's birth or death, but each one arms a timer whose
//! callback is `tw_timer_handler`: arming is the hand-over of the port, expiry or
//! cancellation is its release.
//!
//! The kernel also re-arms a TIME_WAIT socket's timer (FIN_WAIT2 -> TIME_WAIT, a
//! retransmitted FIN): `mod_timer` cancels and starts it within one critical section (timer
//! base locked, interrupts off), so nothing else touches a timer on that CPU in between. A
//! start whose CPU's previous timer event was the cancel of the same timer is a re-arm;
//! any other start is a new TIME_WAIT socket's first arm, even at the address of one killed
//! a moment before (the kernel recycles their memory at once).
//!
//! The socket that enters TIME_WAIT gives its port back to the kernel just after (in the
//! same `tcp_time_wait`, on the same CPU), though the TIME_WAIT socket holds it on: that
//! release is not reported ([`Handoff`]), one event fewer per such connection.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use port_tracer_common::{flags, EventKind, Origin, IPPROTO_TCP};

use crate::{
    emit::{count_lost, Meta},
    emit::{emit_plain, emit_plain_sock, read_sock, Sock},
    kernel::{off, read},
    OFFSETS, TW_CANCELLED, TW_HANDOFF,
};

/// Per CPU, the socket that last handed its port to a new TIME_WAIT socket: by address
/// (fentry, kprobe: `inet_twsk_hashdance(_schedule)` names both) or by what the TIME_WAIT
/// socket copied from it (the timer tiers: namespace, addresses and ports). Its release,
/// which comes next on this CPU (`tcp_done` right after the hand-over), is skipped.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    pub sk: u64,
    pub net: u64,
    pub addrs: [u8; 8],
    /// `dport | port << 16`; 0: no hand-over pending.
    pub ports: u32,
    pub _pad: u32,
}

/// Notes that socket `sk` (0: not known) handed its port to TIME_WAIT socket `tw` (read
/// as `s`).
#[inline(always)]
pub fn note_handoff(sk: u64, s: &Sock) {
    let Some(h) = TW_HANDOFF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the hand-over and the release it names run in one call.
    unsafe {
        (*h).sk = sk;
        (*h).net = s.head.net;
        (*h).addrs = addrs(s);
        (*h).ports = u32::from(s.head.dport) | u32::from(s.head.num) << 16;
    }
}

fn addrs(s: &Sock) -> [u8; 8] {
    let (d, r) = (s.head.daddr, s.head.rcv_saddr);
    [d[0], d[1], d[2], d[3], r[0], r[1], r[2], r[3]]
}

/// Whether the release of `s` holding `port` is the one a hand-over to TIME_WAIT noted
/// (then the note is used up).
#[inline(always)]
pub fn handed_over(s: &Sock, port: u16) -> bool {
    let Some(h) = TW_HANDOFF.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot.
    unsafe {
        let ports = u32::from(s.head.dport) | u32::from(port) << 16;
        let same = (*h).sk == s.sk
            || ((*h).ports == ports && (*h).net == s.head.net && (*h).addrs == addrs(s));
        if (*h).ports != 0 && same {
            (*h).ports = 0;
            (*h).sk = 0;
            return true;
        }
    }
    false
}

/// The TIME_WAIT socket owning `timer`, if `timer` is a TIME_WAIT timer.
#[inline(always)]
fn tw_of(timer: u64) -> Option<u64> {
    let handler = unsafe { core::ptr::read_volatile(&OFFSETS.tw_timer_handler) };
    if handler == 0 {
        return None;
    }
    let function: u64 = read(timer, off!(timer_function)).ok()?;
    (function == handler).then(|| timer - off!(tw_timer) as u64)
}

/// Reports an event about TIME_WAIT socket `tw` (also used by the fentry and kprobe tiers).
#[inline(always)]
pub fn report_sock(tw: u64, kind: EventKind, extra_flags: u8) {
    emit_plain(tw, tw_meta(kind, extra_flags));
}

fn tw_meta(kind: EventKind, extra_flags: u8) -> Meta {
    let meta = Meta::now(kind, Origin::Unknown, IPPROTO_TCP);
    meta.flags(flags::TIME_WAIT_SOCK | extra_flags)
}

/// A new TIME_WAIT socket `tw`, which `sk` (0: not known) handed its port to.
#[inline(always)]
pub fn entered(tw: u64, sk: u64, arm_flags: u8) {
    let Ok(s) = read_sock(tw) else {
        return count_lost(port_tracer_common::lost::READ_ERROR);
    };
    note_handoff(sk, &s);
    emit_plain_sock(&s, tw_meta(EventKind::TimeWait, arm_flags));
}

/// Notes this CPU's timer event: `cancelled_tw` is the TIME_WAIT timer it cancelled, or 0
/// for any other event. Returns the TIME_WAIT timer the previous event cancelled (0: none),
/// or None if the per-CPU slot is unavailable.
#[inline(always)]
fn swap_cancelled(cancelled_tw: u64) -> Option<u64> {
    let slot = TW_CANCELLED.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; programs on one CPU do not nest inside a timer operation.
    unsafe {
        let prev = *slot;
        if prev != cancelled_tw {
            *slot = cancelled_tw;
        }
        Some(prev)
    }
}

#[raw_tracepoint(tracepoint = "timer_start")]
pub fn timer_start(ctx: RawTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    let prev = swap_cancelled(0);
    if let Some(tw) = tw_of(timer) {
        match prev {
            Some(prev) if prev == timer => report_sock(
                tw,
                EventKind::TimeWait,
                flags::TW_ARM_KNOWN | flags::TW_REARM,
            ),
            Some(_) => entered(tw, 0, flags::TW_ARM_KNOWN),
            None => report_sock(tw, EventKind::TimeWait, 0),
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "timer_cancel")]
pub fn timer_cancel(ctx: RawTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    match tw_of(timer) {
        Some(tw) => {
            swap_cancelled(timer);
            report_sock(tw, EventKind::Release, flags::TW_CANCEL);
        }
        None => {
            swap_cancelled(0);
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: RawTracePointContext) -> i32 {
    // The expiry's own cancel came just before: a later start is no re-arm.
    swap_cancelled(0);
    if let Some(tw) = tw_of(ctx.arg(0)) {
        report_sock(tw, EventKind::Release, 0);
    }
    0
}
