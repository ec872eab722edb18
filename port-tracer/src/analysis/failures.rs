//! Allocation failures (EADDRNOTAVAIL, EADDRINUSE, EAGAIN): when, who, towards where,
//! and why, as things stood at the first failure of each kind: who held the refused port
//! (EADDRINUSE), how much headroom connect() had towards the destination (EADDRNOTAVAIL).

use std::net::IpAddr;

use foldhash::HashMap;
use port_tracer_common::tiers::TierInfo;
use serde::Serialize;

use port_tracer_common::errno::{EADDRINUSE, EADDRNOTAVAIL};

use super::{
    containers::{self, ContainerFailures},
    headroom::{Headroom, HeadroomNow},
    holders::{Holder, PortHolders},
};
use crate::{
    cgroups::Lookup,
    event::{errno_name, Comm, Event, Proto},
};

/// Distinct (process, destination, errno) kept; failures beyond are counted in `other`.
const MAX_KINDS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Kind {
    pid: u32,
    comm: Comm,
    /// The failing task's cgroup id, for the failures by container.
    cgroup: u64,
    netns: u32,
    proto: Proto,
    errno: i32,
    laddr: IpAddr,
    lport: u16,
    raddr: IpAddr,
    rport: u16,
}

#[derive(Clone, Debug)]
struct Seen {
    count: u64,
    first_ns: u64,
    last_ns: u64,
    why: Why,
}

/// Why a failure happened, as things stood then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Why {
    /// EADDRINUSE: the sockets holding the refused port.
    pub holders: Option<Vec<Holder>>,
    /// EADDRNOTAVAIL of a TCP connect(): the headroom towards its destination.
    pub headroom: Option<HeadroomNow>,
}

impl Why {
    /// Why `ev` failed, from who holds what now.
    pub fn of(ev: &Event, holders: &PortHolders, headroom: &Headroom) -> Why {
        match ev.errno {
            EADDRINUSE if ev.ends.lport != 0 => Why {
                holders: Some(holders.of(&ev.ends)),
                headroom: None,
            },
            EADDRNOTAVAIL if ev.ends.proto == Proto::Tcp => Why {
                holders: None,
                headroom: headroom.now(ev, holders),
            },
            _ => Why::default(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Failures {
    total: u64,
    kinds: HashMap<Kind, Seen>,
    /// Failures of kinds past [`MAX_KINDS`].
    other: u64,
}

/// Failures of one process towards one destination with one error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    pub pid: u32,
    pub comm: String,
    pub netns: u32,
    pub proto: &'static str,
    pub errno: i32,
    pub error: &'static str,
    pub laddr: IpAddr,
    /// The port asked for (0: any, as connect() and bind(0) ask).
    pub lport: u16,
    /// Destination (`0.0.0.0`/`::` and 0 for bind and autobind failures).
    pub raddr: IpAddr,
    pub rport: u16,
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// EADDRINUSE: who held the port at the first failure (null for other errors).
    pub holders: Option<Vec<Holder>>,
    /// EADDRNOTAVAIL of a TCP connect(): connect()'s headroom towards the destination at
    /// the first failure (0 when the kernel's rule is all there is to it; null for other
    /// errors, or where the namespace's range is unknown).
    pub headroom: Option<HeadroomNow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailureReport {
    pub total: u64,
    /// Most frequent first.
    pub groups: Vec<FailureGroup>,
    /// Failures per container (with its pod) or host unit of the failing process, most
    /// first (see [`FailureReport::group_by_container`]; empty until then). Those past the
    /// limit of distinct kinds kept are not among them.
    pub by_container: Vec<ContainerFailures>,
    /// Failures per cgroup id of the failing process, all kinds kept: what `by_container`
    /// is grouped from.
    #[serde(skip)]
    pub per_cgroup: Vec<(u64, u64)>,
    /// Failures not in `groups` (past the limit of distinct kinds kept or shown).
    pub not_shown: u64,
    /// Sockets not kept to be named as holders (past a million open at once).
    pub holders_not_kept: u64,
    /// Why failed bind() and listen() calls are not among them, when the tier cannot see
    /// them (see [`bind_failures_unseen`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_failures_unseen: Option<String>,
}

/// Why a trace made with `tier` holds no failed bind() or listen() (EADDRINUSE), if it
/// cannot: the cgroup tier's hooks run only after a bind succeeded.
pub fn bind_failures_unseen(tier: Option<&'static TierInfo>) -> Option<String> {
    let info = tier?;
    (!info.sees_bind_failures).then(|| {
        format!(
            "the {} tier does not see bind() fail (its hooks run only after a bind \
             succeeded); --attach tracepoint does, at the cost of syscall tracepoints",
            info.name
        )
    })
}

impl FailureReport {
    /// Groups the failures by the container (or, on the host, the systemd unit) each
    /// failing process's cgroup id names in `names`, the `top` most; cgroups that name
    /// neither are left out. Names the holders of refused ports' containers too.
    pub fn group_by_container(&mut self, names: &mut Lookup, top: usize) {
        self.by_container = containers::grouped(names, self.per_cgroup.iter().copied(), top)
            .into_iter()
            .map(|(workload, count)| ContainerFailures { workload, count })
            .collect();
        for g in &mut self.groups {
            for h in g.holders.iter_mut().flatten() {
                h.name_container(names);
            }
        }
    }
}

impl Failures {
    /// A failure; `why` is asked for the first of its kind only.
    pub fn failed(&mut self, ev: &Event, why: impl FnOnce() -> Why) {
        self.total += 1;
        let kind = Kind {
            pid: ev.task.pid,
            comm: ev.task.comm,
            cgroup: ev.task.cgroup_id,
            netns: ev.ends.netns,
            proto: ev.ends.proto,
            errno: ev.errno,
            laddr: ev.ends.laddr,
            lport: ev.ends.lport,
            raddr: ev.ends.raddr,
            rport: ev.ends.rport,
        };
        if let Some(seen) = self.kinds.get_mut(&kind) {
            seen.count += 1;
            seen.last_ns = ev.ts_ns;
        } else if self.kinds.len() < MAX_KINDS {
            self.kinds.insert(
                kind,
                Seen {
                    count: 1,
                    first_ns: ev.ts_ns,
                    last_ns: ev.ts_ns,
                    why: why(),
                },
            );
        } else {
            self.other += 1;
        }
    }

    /// The `n` kinds that failed last, the latest first.
    pub fn latest(&self, n: usize) -> Vec<FailureGroup> {
        let mut last: Vec<(&Kind, &Seen)> = self.kinds.iter().collect();
        let order = |a: &(&Kind, &Seen), b: &(&Kind, &Seen)| {
            (b.1.last_ns, b.1.count, b.1.first_ns).cmp(&(a.1.last_ns, a.1.count, a.1.first_ns))
        };
        if last.len() > n {
            last.select_nth_unstable_by(n, order);
            last.truncate(n);
        }
        last.sort_by(order);
        last.into_iter().map(|(k, s)| group(k, s)).collect()
    }

    /// The `top` most frequent kinds.
    pub fn report(&self, top: usize, holders_not_kept: u64) -> FailureReport {
        let mut groups: Vec<FailureGroup> = self.kinds.iter().map(|(k, s)| group(k, s)).collect();
        // Ties in a total order: the map iterates in a random one.
        groups.sort_by(|a, b| {
            let rest = |g: &FailureGroup| {
                let ends = (g.netns, g.proto, g.laddr, g.lport, g.raddr, g.rport);
                (g.pid, g.comm.clone(), g.errno, ends, g.last_ns)
            };
            b.count
                .cmp(&a.count)
                .then(a.first_ns.cmp(&b.first_ns))
                .then_with(|| rest(a).cmp(&rest(b)))
        });
        groups.truncate(top);
        let shown: u64 = groups.iter().map(|g| g.count).sum();
        FailureReport {
            by_container: Vec::new(),
            per_cgroup: containers::per_cgroup(self.kinds.iter().map(|(k, s)| (k.cgroup, s.count))),
            bind_failures_unseen: None,
            holders_not_kept,
            total: self.total,
            not_shown: self.total - shown,
            groups,
        }
    }
}

/// One kind of failure, as reported.
fn group(k: &Kind, s: &Seen) -> FailureGroup {
    FailureGroup {
        pid: k.pid,
        comm: k.comm.as_str().into_owned(),
        netns: k.netns,
        proto: k.proto.as_str(),
        errno: k.errno,
        error: errno_name(k.errno),
        laddr: k.laddr,
        lport: k.lport,
        raddr: k.raddr,
        rport: k.rport,
        count: s.count,
        first_ns: s.first_ns,
        last_ns: s.last_ns,
        holders: s.why.holders.clone(),
        headroom: s.why.headroom.clone(),
    }
}
