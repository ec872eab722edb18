//! Writing events to the ring buffer, and counting what could not be written.

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

/// Sends `ev` to userspace. Wakes the reader only when enough data waits (batched wakeups).
#[inline(always)]
pub fn submit(ev: &PortEvent) {
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&CONFIG.wakeup_bytes) };
    match EVENTS.reserve::<PortEvent>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags as u64);
        }
        None => count_lost(lost::RINGBUF_FULL),
    }
}
