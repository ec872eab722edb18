//! Port reuse interval: from a port's release to its next assignment in the same
//! namespace and protocol. Short intervals mean the range is cycling fast.

use super::ports::PortTables;
use crate::{event::Event, histogram::Log2Histogram, lifetime::Lifetime};

#[derive(Clone, Debug, Default)]
pub struct Reuse {
    /// Last release of each (netns, proto, port); 0: none since its last allocation.
    released: PortTables<u64>,
    pub intervals: Log2Histogram,
}

impl Reuse {
    pub fn released(&mut self, lt: &Lifetime) {
        if let Some(r) = lt.released_ns() {
            let e = &lt.ends;
            // A release at 0 (never on a running host) is kept as 1, as a `Time` is.
            self.released
                .get_mut(e.netns, e.proto)
                .set(e.lport, r.max(1));
        }
    }

    /// An allocation: measures the time since the port's last release, if any.
    pub fn allocated(&mut self, ev: &Event) {
        let e = &ev.ends;
        let Some(ports) = self.released.get(e.netns, e.proto) else {
            return;
        };
        if ports.get(e.lport) == 0 {
            return;
        }
        let r = self.released.get_mut(e.netns, e.proto).set(e.lport, 0);
        self.intervals.add(ev.ts_ns.saturating_sub(r));
    }
}
