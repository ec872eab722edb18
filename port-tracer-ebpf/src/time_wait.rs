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

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use port_tracer_common::{flags, EventKind, Origin, IPPROTO_TCP};

use crate::{
    emit::{emit_plain, Meta},
    kernel::{off, read},
    OFFSETS, TW_CANCELLED,
};

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
    let meta = Meta::now(kind, Origin::Unknown, IPPROTO_TCP);
    emit_plain(tw, meta.flags(flags::TIME_WAIT_SOCK | extra_flags));
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
        let arm = match prev {
            Some(prev) if prev == timer => flags::TW_ARM_KNOWN | flags::TW_REARM,
            Some(_) => flags::TW_ARM_KNOWN,
            None => 0,
        };
        report_sock(tw, EventKind::TimeWait, arm);
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
