//! A destination of connect(): its sockets, how many ports counted against its headroom
//! at worst, and who held them then.

use std::net::IpAddr;

use foldhash::HashMap;

use super::{space::Space, Who};

/// A destination of TCP connections from one local address in one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct DestKey {
    pub(super) netns: u32,
    pub(super) laddr: IpAddr,
    pub(super) raddr: IpAddr,
    pub(super) rport: u16,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Dest {
    /// Its namespace's space (an index of `Headroom::spaces`).
    pub(super) space: u32,
    /// Sockets towards it. The kernel lets one socket at a time hold a 4-tuple, so they
    /// hold as many ports (a TIME_WAIT socket killed by a new connection reusing its
    /// 4-tuple ends a moment after that one begins: the two count for an instant).
    pub(super) sockets: u32,
    /// Those whose port is in the range.
    pub(super) level: u32,
    pub(super) peak_in_use: u32,
    /// Its sockets now, by process, and how many are in TIME_WAIT.
    pub(super) by: HashMap<Who, u32>,
    pub(super) time_wait: u32,
    /// The space's `seq` when last settled. Between settles its sockets do not change.
    pub(super) since: u64,
    /// The most ports that counted against its headroom at once, and when.
    pub(super) worst: Option<Worst>,
    /// Its sockets spanning the worst moment, counted as they end (a new worst starts
    /// over: every socket spanning it ends after it, as with the occupancy's peak).
    pub(super) at_worst: AtWorst,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Worst {
    pub(super) used: u32,
    pub(super) ts: u64,
    pub(super) level: u32,
}

#[derive(Clone, Debug, Default)]
pub(super) struct AtWorst {
    pub(super) sockets: u32,
    pub(super) time_wait: u32,
    pub(super) by: HashMap<Who, u32>,
}

impl Dest {
    /// A worse moment than the worst so far, since the last settle or now, if any.
    pub(super) fn worse(&self, space: &Space, now: u64) -> Option<Worst> {
        let mut worse: Option<Worst> = None;
        let candidates = space
            .history
            .after(self.since)
            .into_iter()
            .chain([(now, space.bound_ports)]);
        for (ts, bound) in candidates {
            let used = bound + self.level;
            let best = worse.or(self.worst);
            if best.is_none_or(|w| used > w.used) {
                worse = Some(Worst {
                    used,
                    ts,
                    level: self.level,
                });
            }
        }
        worse
    }

    /// Takes in the bind-held high-water marks since the last settle, then now: before
    /// and after each change of its own sockets.
    pub(super) fn settle(&mut self, space: &Space, now: u64) {
        if let Some(w) = self.worse(space, now) {
            self.worst = Some(w);
            self.at_worst.sockets = 0;
            self.at_worst.time_wait = 0;
            self.at_worst.by.clear();
        }
        self.since = space.seq;
    }
}
