//! Port reuse interval: from a port's release to its next assignment in the same
//! namespace and protocol. Short intervals mean the range is cycling fast.

use foldhash::HashMap;

use crate::{
    event::{Event, Proto},
    histogram::Log2Histogram,
    lifetime::Lifetime,
};

#[derive(Clone, Debug, Default)]
pub struct Reuse {
    /// Last release of each (netns, proto, port).
    released: HashMap<(u32, Proto, u16), u64>,
    pub intervals: Log2Histogram,
}

impl Reuse {
    pub fn released(&mut self, lt: &Lifetime) {
        if let Some(r) = lt.released_ns() {
            let e = &lt.ends;
            self.released.insert((e.netns, e.proto, e.lport), r);
        }
    }

    /// An allocation: measures the time since the port's last release, if any.
    pub fn allocated(&mut self, ev: &Event) {
        let e = &ev.ends;
        if let Some(r) = self.released.remove(&(e.netns, e.proto, e.lport)) {
            self.intervals.add(ev.ts_ns.saturating_sub(r));
        }
    }
}
