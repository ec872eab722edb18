//! One namespace's TCP ports as connect() sees them: the range, the ports bind() and
//! listen() hold (which no connect() may share), and how many were held when.

use foldhash::{HashMap, HashMapExt};

use super::{HeadroomNow, HolderCount, Ports, Who};
use crate::{
    analysis::{holders::PortHolders, ports::PortMap},
    event::Endpoints,
    port_range::PortRange,
};

/// The highest value set after a point in a sequence of changes, in memory bounded by the
/// number of distinct values: entries hold strictly decreasing values.
#[derive(Clone, Debug, Default)]
pub(super) struct MaxSince {
    /// (sequence number, time, value).
    entries: Vec<(u64, u64, u32)>,
}

impl MaxSince {
    pub(super) fn push(&mut self, seq: u64, ts: u64, value: u32) {
        while self.entries.last().is_some_and(|e| e.2 <= value) {
            self.entries.pop();
        }
        self.entries.push((seq, ts, value));
    }

    /// The highest value set after change `seq`, and when it was set.
    pub(super) fn after(&self, seq: u64) -> Option<(u64, u32)> {
        let i = self.entries.partition_point(|e| e.0 <= seq);
        self.entries.get(i).map(|e| (e.1, e.2))
    }
}

/// A bind-held socket's time on its port.
#[derive(Clone, Copy, Debug)]
pub(super) struct BoundSpan {
    pub(super) from_ns: u64,
    /// None: still held at the end.
    pub(super) to_ns: Option<u64>,
    pub(super) time_wait_from_ns: Option<u64>,
    pub(super) who: Who,
}

impl BoundSpan {
    fn spans(&self, t: u64) -> bool {
        self.from_ns <= t && self.to_ns.is_none_or(|e| e > t)
    }
}

/// One namespace's TCP ports, as connect() sees them.
#[derive(Clone, Debug)]
pub(super) struct Space {
    pub(super) range: PortRange,
    pub(super) size: u32,
    /// Ports connect() hands out (the range minus reserved ports), from `range.low`.
    pub(super) automatic: Vec<bool>,
    /// Bind-held sockets per port.
    pub(super) bound: PortMap<u32>,
    /// Distinct bind-held ports connect() would otherwise hand out.
    pub(super) bound_ports: u32,
    /// Bind-held sockets now, by process.
    pub(super) bound_by: HashMap<Who, u32>,
    /// Changes of `bound_ports` so far.
    pub(super) seq: u64,
    pub(super) history: MaxSince,
    pub(super) spans: Vec<BoundSpan>,
    pub(super) spans_not_kept: u64,
}

impl Space {
    pub(super) fn new(range: PortRange) -> Self {
        let mut automatic = vec![true; usize::from(range.high.saturating_sub(range.low)) + 1];
        for (lo, hi) in range.reserved_intervals() {
            for p in lo.max(range.low)..=hi.min(range.high) {
                automatic[usize::from(p - range.low)] = false;
            }
        }
        Space {
            size: range.size(),
            range,
            automatic,
            bound: PortMap::default(),
            bound_ports: 0,
            bound_by: HashMap::new(),
            seq: 0,
            history: MaxSince::default(),
            spans: Vec::new(),
            spans_not_kept: 0,
        }
    }

    /// The headroom of a connect() to `e` by a socket with its own range `low..=high`
    /// (`IP_LOCAL_PORT_RANGE`): the kernel searches only that range, each bound taken where
    /// it lies inside the namespace's (`inet_sk_get_local_port_range`), so the ports
    /// counted are those in it (`holders` tells which are connected to `e`).
    pub(super) fn within(
        &self,
        low: u16,
        high: u16,
        e: &Endpoints,
        holders: &PortHolders,
        top_holders: Vec<HolderCount>,
    ) -> HeadroomNow {
        let inside = |p: u16| (self.range.low..=self.range.high).contains(&p);
        let lo = if inside(low) { low } else { self.range.low };
        let hi = if inside(high) { high } else { self.range.high };
        let (mut size, mut bind_held, mut in_use) = (0u32, 0u32, 0u32);
        for port in (lo..=hi).filter(|&p| self.counts(p)) {
            size += 1;
            if self.bound.get(port) > 0 {
                bind_held += 1;
            } else if holders.towards(e, port) {
                in_use += 1;
            }
        }
        HeadroomNow {
            own_range: Some(Ports { low: lo, high: hi }),
            headroom: size - bind_held - in_use,
            range_size: size,
            in_use,
            bind_held,
            top_holders,
        }
    }

    pub(super) fn counts(&self, port: u16) -> bool {
        port >= self.range.low
            && self
                .automatic
                .get(usize::from(port - self.range.low))
                .copied()
                .unwrap_or(false)
    }

    pub(super) fn bind(&mut self, port: u16, who: Who, ts: u64) {
        if self.counts(port) {
            *self.bound_by.entry(who).or_default() += 1;
        }
        if self.bound.update(port, |n| n + 1) == 1 && self.counts(port) {
            self.bound_ports += 1;
            self.seq += 1;
            self.history.push(self.seq, ts, self.bound_ports);
        }
    }

    pub(super) fn unbind(&mut self, port: u16, who: Who, ts: u64) {
        let counted = self.counts(port);
        if let Some(n) = self.bound_by.get_mut(&who).filter(|_| counted) {
            *n -= 1;
            if *n == 0 {
                self.bound_by.remove(&who);
            }
        }
        if self.bound.get(port) == 0 {
            return;
        }
        if self.bound.update(port, |n| n - 1) == 0 && self.counts(port) {
            self.bound_ports -= 1;
            self.seq += 1;
            self.history.push(self.seq, ts, self.bound_ports);
        }
    }

    /// Bind-held sockets at `t`, by process, with how many of them were in TIME_WAIT.
    pub(super) fn bound_at(&self, t: u64) -> (HashMap<Who, u32>, u32) {
        let mut by = HashMap::new();
        let mut time_wait = 0;
        for s in self.spans.iter().filter(|s| s.spans(t)) {
            *by.entry(s.who).or_default() += 1;
            time_wait += u32::from(s.time_wait_from_ns.is_some_and(|tw| tw <= t));
        }
        (by, time_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::headroom::Ports,
        event::{Comm, Event, Origin, Proto},
    };

    #[test]
    fn the_highest_value_since_a_change_is_found_in_bounded_memory() {
        let mut m = MaxSince::default();
        for (seq, v) in [(1, 5), (2, 3), (3, 4), (4, 1), (5, 2)] {
            m.push(seq, seq * 10, v);
        }
        // Strictly decreasing: 5 (1), 4 (3), 2 (5).
        assert_eq!(m.entries.len(), 3);
        assert_eq!(m.after(0), Some((10, 5)));
        assert_eq!(m.after(1), Some((30, 4)));
        assert_eq!(m.after(3), Some((50, 2)));
        assert_eq!(m.after(5), None);
    }

    #[test]
    fn a_sockets_own_range_counts_only_its_ports_with_bounds_outside_the_namespaces_ignored() {
        let mut space = Space::new(PortRange {
            netns: 1,
            low: 40000,
            high: 40019,
            reserved: "40001".into(),
        });
        space.bind(40002, (9, Comm::new("srv"), 0), 1);
        let ends = Endpoints {
            proto: Proto::Tcp,
            family: crate::event::Family::Ipv4,
            netns: 1,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 0,
            raddr: "127.0.0.2".parse().unwrap(),
            rport: 80,
        };
        let mut holders = PortHolders::default();
        let connected = Event {
            ends: Endpoints {
                lport: 40003,
                ..ends
            },
            origin: Origin::Connect,
            ..crate::testing::event(crate::event::Kind::Assign, 2, 5, 40003)
        };
        holders.assigned(&connected, None);
        // The low bound lies outside the namespace's range: the kernel keeps the range's.
        let h = space.within(39000, 40004, &ends, &holders, Vec::new());
        assert_eq!(
            h.own_range,
            Some(Ports {
                low: 40000,
                high: 40004
            })
        );
        // 40000..=40004 less reserved 40001: 4 ports, 40002 bind-held, 40003 connected.
        assert_eq!(
            (h.range_size, h.bind_held, h.in_use, h.headroom),
            (4, 1, 1, 2)
        );
        // Towards another destination, 40003 is free.
        let other = Endpoints { rport: 81, ..ends };
        assert_eq!(
            space
                .within(39000, 40004, &other, &holders, Vec::new())
                .headroom,
            3
        );
    }
}
