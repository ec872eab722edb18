//! Puts events from all CPUs back into timestamp order.
//!
//! One ring buffer serves every CPU; records appear in reservation order, which can differ
//! from timestamp order by the few microseconds between a program reading the clock and
//! reserving its record. Events are held until they are `delay_ns` old, then released
//! sorted. Pure: the caller says what time it is.

use crate::event::Event;

pub struct Reorderer {
    buf: Vec<Event>,
    delay_ns: u64,
}

impl Reorderer {
    pub fn new(delay_ns: u64) -> Self {
        Reorderer {
            buf: Vec::new(),
            delay_ns,
        }
    }

    pub fn push(&mut self, ev: Event) {
        self.buf.push(ev);
    }

    pub fn delay_ns(&self) -> u64 {
        self.delay_ns
    }

    /// Hands `f` every event older than `now_ns - delay`, in timestamp order (ties keep
    /// arrival order).
    pub fn release(&mut self, now_ns: u64, f: impl FnMut(&Event)) {
        self.release_until(now_ns.saturating_sub(self.delay_ns), f);
    }

    /// Hands `f` every event held.
    pub fn release_all(&mut self, f: impl FnMut(&Event)) {
        self.release_until(u64::MAX, f);
    }

    fn release_until(&mut self, watermark: u64, mut f: impl FnMut(&Event)) {
        if self.buf.is_empty() {
            return;
        }
        // Stable sort: the buffer is nearly sorted already, which the merge sort exploits.
        self.buf.sort_by_key(|e| e.ts_ns);
        let n = self.buf.partition_point(|e| e.ts_ns <= watermark);
        for ev in self.buf.drain(..n) {
            f(&ev);
        }
    }
}
