//! The ephemeral port range of a network namespace: where connect(), bind(0) and UDP
//! autobind draw ports from. Pure; reading it from a namespace is
//! [`crate::kernel::ranges`]'s job.

use serde::{Deserialize, Serialize};

/// `net.ipv4.ip_local_port_range` and `ip_local_reserved_ports` of one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub netns: u32,
    pub low: u16,
    pub high: u16,
    /// As the sysctl writes it, e.g. "8080,9000-9010" (empty: none).
    pub reserved: String,
}

impl PortRange {
    /// Parses the two sysctls' text; None when the range is not two ports, low first.
    pub fn parse(netns: u32, range: &str, reserved: &str) -> Option<PortRange> {
        let mut it = range.split_whitespace().map(|p| p.parse::<u16>());
        let (Some(Ok(low)), Some(Ok(high)), None) = (it.next(), it.next(), it.next()) else {
            return None;
        };
        (low <= high).then(|| PortRange {
            netns,
            low,
            high,
            reserved: reserved.trim().to_string(),
        })
    }

    /// Reserved port intervals; malformed parts are ignored (they come from the kernel).
    pub(crate) fn reserved_intervals(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.reserved.split(',').filter_map(|part| {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi) = (lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?);
            (lo <= hi).then_some((lo, hi))
        })
    }

    /// Whether `port` is in the range (reserved ports too: an explicit bind takes them).
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }

    /// Ports the kernel can hand out automatically: the range minus its reserved ports.
    pub fn size(&self) -> u32 {
        if self.high < self.low {
            return 0;
        }
        let mut reserved = vec![false; usize::from(self.high - self.low) + 1];
        for (lo, hi) in self.reserved_intervals() {
            for p in lo.max(self.low)..=hi.min(self.high) {
                reserved[usize::from(p - self.low)] = true;
            }
        }
        reserved.iter().filter(|r| !**r).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sysctls() {
        let r = PortRange::parse(7, "32768\t60999\n", "").unwrap();
        assert_eq!((r.low, r.high, r.size()), (32768, 60999, 28232));
        assert!(r.contains(32768) && r.contains(60999) && !r.contains(61000));
        assert!(PortRange::parse(7, "5 4", "").is_none());
        assert!(PortRange::parse(7, "5", "").is_none());
        assert!(PortRange::parse(7, "5 6 7", "").is_none());
    }

    #[test]
    fn reserved_ports_shrink_the_range() {
        let r = PortRange::parse(7, "40000 40009", "80,40002,40005-40007,40008-50000\n").unwrap();
        // 40002, 40005..=40009 reserved: 40000, 40001, 40003, 40004 left.
        assert_eq!(r.size(), 4);
    }
}
