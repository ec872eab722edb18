//! TIME_WAIT (raw tracepoints `timer_start`, `timer_cancel`, `timer_expire_entry`).
//!
//! No tracepoint marks a TIME_WAIT socket's birth or death, but each one arms a timer whose
//! callback is `tw_timer_handler`: arming is the hand-over of the port, expiry or
//! cancellation is its release.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use port_tracer_common::{flags, EventKind, Origin, IPPROTO_TCP};

use crate::{
    emit::emit,
    kernel::{fill_event, off, read},
    OFFSETS,
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
    emit(|ev| {
        fill_event(ev, tw, kind, Origin::Unknown, IPPROTO_TCP)?;
        ev.flags = flags::TIME_WAIT_SOCK | extra_flags;
        Ok(())
    });
}

#[inline(always)]
fn report(timer: u64, kind: EventKind, extra_flags: u8) {
    if let Some(tw) = tw_of(timer) {
        report_sock(tw, kind, extra_flags);
    }
}

#[raw_tracepoint(tracepoint = "timer_start")]
pub fn timer_start(ctx: RawTracePointContext) -> i32 {
    report(ctx.arg(0), EventKind::TimeWait, 0);
    0
}

#[raw_tracepoint(tracepoint = "timer_cancel")]
pub fn timer_cancel(ctx: RawTracePointContext) -> i32 {
    report(ctx.arg(0), EventKind::Release, flags::TW_CANCEL);
    0
}

#[raw_tracepoint(tracepoint = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: RawTracePointContext) -> i32 {
    report(ctx.arg(0), EventKind::Release, 0);
    0
}
