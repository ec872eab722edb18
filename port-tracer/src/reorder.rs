//! Puts events from all CPUs back into timestamp order.
//!
//! One ring buffer serves every CPU; records appear in reservation order, which can differ
//! from timestamp order by the few microseconds between a program reading the clock and
//! reserving its record. Events are held until they are `delay_ns` old, then released
//! sorted. Pure: the caller says what time it is.
//!
//! Cost: records arrive nearly in order, so each is inserted where it belongs, scanning
//! back from the newest held event a few places at most; releasing pops from the front.

use std::collections::VecDeque;

use crate::event::Event;

pub struct Reorderer {
    /// Events held, in timestamp order (ties in arrival order).
    held: VecDeque<Event>,
    delay_ns: u64,
    /// The newest timestamp handed on: an event older than it came too late for its place.
    released_ts: u64,
}

impl Reorderer {
    pub fn new(delay_ns: u64) -> Self {
        Reorderer {
            held: VecDeque::new(),
            delay_ns,
            released_ts: 0,
        }
    }

    /// Holds `ev` in its place; false if it came too late for it: a newer event already
    /// went (its CPU was held up for longer than the window, e.g. a vCPU the host
    /// descheduled), so it goes next, out of order.
    pub fn push(&mut self, ev: Event) -> bool {
        let in_time = ev.ts_ns >= self.released_ts;
        // After every held event with a timestamp not above its own: a tie keeps arrival
        // order. Usually that is the end, or a few places before it.
        const SCAN: usize = 16;
        let n = self.held.len();
        let mut pos = n;
        while pos > 0 && n - pos < SCAN && self.held[pos - 1].ts_ns > ev.ts_ns {
            pos -= 1;
        }
        if n - pos == SCAN {
            pos = self.held.partition_point(|e| e.ts_ns <= ev.ts_ns);
        }
        self.held.insert(pos, ev);
        in_time
    }

    pub fn delay_ns(&self) -> u64 {
        self.delay_ns
    }

    /// Events held, waiting for their turn.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes the buffers take (what the reorder window costs, apart from the tables).
    pub fn heap_bytes(&self) -> usize {
        self.held.capacity() * std::mem::size_of::<Event>()
    }

    /// Hands `f` every event older than `now_ns - delay`, in timestamp order (ties keep
    /// arrival order); each is `f`'s to change, as it leaves the window (not copied out).
    pub fn release(&mut self, now_ns: u64, f: impl FnMut(&mut Event)) {
        self.release_until(now_ns.saturating_sub(self.delay_ns), f);
    }

    /// Hands `f` the oldest events until at most `max` are held; returns how many went.
    /// Bounds the window's memory when events arrive faster than it was sized for.
    pub fn release_excess(&mut self, max: usize, mut f: impl FnMut(&mut Event)) -> u64 {
        let mut n = 0;
        while self.held.len() > max {
            let ev = self.held.front_mut().expect("more than max held");
            self.released_ts = self.released_ts.max(ev.ts_ns);
            f(ev);
            self.held.pop_front();
            n += 1;
        }
        n
    }

    /// Hands `f` every event held.
    pub fn release_all(&mut self, f: impl FnMut(&mut Event)) {
        self.release_until(u64::MAX, f);
    }

    fn release_until(&mut self, watermark: u64, mut f: impl FnMut(&mut Event)) {
        while let Some(ev) = self.held.front_mut() {
            if ev.ts_ns > watermark {
                break;
            }
            self.released_ts = self.released_ts.max(ev.ts_ns);
            f(ev);
            self.held.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    fn ev(ts: u64, sock: u64) -> Event {
        crate::testing::event(Kind::Assign, ts, sock, 1000)
    }

    fn released(r: &mut Reorderer, now: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        r.release(now, |e| out.push((e.ts_ns, e.sock_id)));
        out
    }

    #[test]
    fn releases_in_timestamp_order_only_what_is_old_enough() {
        let mut r = Reorderer::new(10);
        for (ts, s) in [(5, 1), (3, 2), (8, 3)] {
            r.push(ev(ts, s));
        }
        assert_eq!(released(&mut r, 16), [(3, 2), (5, 1)]);
        assert_eq!(r.len(), 1);
        // A late arrival older than what is held goes before it; ties keep arrival order.
        for (ts, s) in [(7, 4), (8, 5), (20, 6)] {
            r.push(ev(ts, s));
        }
        assert_eq!(released(&mut r, 18), [(7, 4), (8, 3), (8, 5)]);
        let mut rest = Vec::new();
        r.release_all(|e| rest.push(e.ts_ns));
        assert_eq!(rest, [20]);
        assert!(r.is_empty());
    }

    #[test]
    fn an_event_older_than_one_already_released_is_late() {
        let mut r = Reorderer::new(10);
        assert!(r.push(ev(5, 1)));
        assert!(r.push(ev(8, 2)));
        assert_eq!(released(&mut r, 16), [(5, 1)]);
        // Equal to what went: in time (ties keep arrival order anyway).
        assert!(r.push(ev(5, 3)));
        assert!(!r.push(ev(4, 4)), "older than an event already handed on");
        // It goes next, ahead of what is held: out of order, but not lost.
        assert_eq!(released(&mut r, 100), [(4, 4), (5, 3), (8, 2)]);
    }

    #[test]
    fn a_full_window_lets_the_oldest_go_early() {
        let mut r = Reorderer::new(1_000_000);
        for (ts, s) in [(5, 1), (3, 2), (9, 3), (7, 4)] {
            r.push(ev(ts, s));
        }
        let mut out = Vec::new();
        assert_eq!(r.release_excess(2, |e| out.push(e.ts_ns)), 2);
        assert_eq!(out, [3, 5]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.release_excess(2, |e| out.push(e.ts_ns)), 0);
    }

    #[test]
    fn matches_a_full_stable_sort_on_shuffled_batches() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut all = Vec::new();
        let mut r = Reorderer::new(1_000);
        let mut out = Vec::new();
        for batch in 0..200u64 {
            for k in 0..50u64 {
                // Timestamps jitter by up to 300 around a rising clock.
                let ts = batch * 500 + k * 10 + next() % 300;
                let e = ev(ts, batch * 50 + k);
                all.push((e.ts_ns, e.sock_id));
                r.push(e);
            }
            r.release(batch * 500 + 500, |e| out.push((e.ts_ns, e.sock_id)));
        }
        r.release_all(|e| out.push((e.ts_ns, e.sock_id)));
        all.sort_by_key(|&(ts, _)| ts);
        assert_eq!(out, all);
    }
}
