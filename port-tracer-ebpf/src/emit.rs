//! Writing events to the ring buffer, and counting what could not be written.
//!
//! Events are built in place in reserved ring buffer memory, not on the stack: the BPF
//! stack is 512 bytes for a whole call chain, and older verifiers count it strictly.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use port_tracer_common::{lost, PortEvent};

use crate::{CONFIG, EVENTS, LOST};

/// Counts one dropped event under `reason` (an index of `port_tracer_common::lost`).
#[inline(always)]
pub fn count_lost(reason: u32) {
    if let Some(p) = LOST.get_ptr_mut(reason) {
        // Per-CPU slot: no other writer.
        unsafe { *p += 1 };
    }
}

/// Reserves a zeroed event, lets `fill` write it and submits it; when `fill` fails (a
/// kernel read failed) the event is discarded and counted. Wakes the reader only once
/// enough data waits (batched wakeups).
#[inline(always)]
pub fn emit(fill: impl FnOnce(&mut PortEvent) -> Result<(), i32>) {
    let Some(mut entry) = EVENTS.reserve::<PortEvent>(0) else {
        count_lost(lost::RINGBUF_FULL);
        return;
    };
    // SAFETY: reserved memory of the right size, zeroed before use.
    let ev = unsafe {
        let p = entry.as_mut_ptr();
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    if fill(ev).is_err() {
        entry.discard(0);
        count_lost(lost::READ_ERROR);
        return;
    }
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&CONFIG.wakeup_bytes) };
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// What a cgroup socket program returns after `r`: always 1 ("allow": a program that
/// returns 0 refuses the call, or for `sock_release` stops the hook), counting a failed
/// kernel read.
#[inline(always)]
pub fn allow(r: Result<(), i32>) -> i32 {
    if r.is_err() {
        count_lost(lost::READ_ERROR);
    }
    1
}
