//! Counts kept per cgroup id on the hot path, grouped at the end of a run by the container
//! (with its pod) or the host unit each cgroup names: the naming is string work, done once
//! per distinct cgroup through the run's cgroup table, never per event.

use foldhash::HashMap;
use serde::Serialize;

use crate::cgroups::{Lookup, RuntimeNames};

/// A container (with its pod), or a host unit: what per-cgroup counts are grouped by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub unit: Option<String>,
    /// The names the runtime's state gave, if any.
    #[serde(flatten)]
    pub names: RuntimeNames,
}

/// A container's or unit's sockets (at a range's peak, at a destination's fewest ports
/// left).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerSockets {
    #[serde(flatten)]
    pub workload: Workload,
    pub sockets: u32,
}

/// A container's or unit's allocation failures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerFailures {
    #[serde(flatten)]
    pub workload: Workload,
    pub count: u64,
}

/// Sums `per_cgroup` (cgroup id, count) by the container or unit each id names in
/// `names`, most first (ties by container, unit, pod), at most `top`. Cgroups that name
/// neither, or were not resolved, are left out.
pub fn grouped(
    names: &mut Lookup,
    per_cgroup: impl IntoIterator<Item = (u64, u64)>,
    top: usize,
) -> Vec<(Workload, u64)> {
    type Key = (Option<String>, Option<String>, Option<String>);
    let mut by: HashMap<Key, (u64, RuntimeNames)> = HashMap::default();
    for (id, n) in per_cgroup {
        let Some(cg) = names.get(id) else { continue };
        let k = &cg.naming;
        if k.container_id.is_none() && k.unit.is_none() {
            continue;
        }
        let key = (k.container_id.clone(), k.pod_uid.clone(), k.unit.clone());
        by.entry(key).or_insert_with(|| (0, cg.runtime.clone())).0 += n;
    }
    let mut v: Vec<(Workload, u64)> = by
        .into_iter()
        .map(|((container_id, pod_uid, unit), (n, names))| {
            let w = Workload {
                container_id,
                pod_uid,
                unit,
                names,
            };
            (w, n)
        })
        .collect();
    v.sort_by(|(a, an), (b, bn)| {
        bn.cmp(an).then_with(|| {
            (&a.container_id, &a.unit, &a.pod_uid).cmp(&(&b.container_id, &b.unit, &b.pod_uid))
        })
    });
    v.truncate(top);
    v
}

/// The container id and unit cgroup `id` names in `names` (each None where it names none,
/// or the cgroup was not resolved).
pub fn container_and_unit(names: &mut Lookup, id: u64) -> (Option<String>, Option<String>) {
    match names.get(id) {
        Some(cg) => (cg.naming.container_id.clone(), cg.naming.unit.clone()),
        None => (None, None),
    }
}

/// `per` (a cgroup id, a count) summed per cgroup id, in id order.
pub fn per_cgroup(per: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut by: HashMap<u64, u64> = HashMap::default();
    for (id, n) in per {
        *by.entry(id).or_default() += n;
    }
    let mut v: Vec<(u64, u64)> = by.into_iter().collect();
    v.sort_unstable();
    v
}

/// The cgroup most of a process's sockets were in (ties: the lowest id), from its
/// (cgroup id, sockets) entries: a process moved between cgroups is named by one.
#[derive(Clone, Copy, Debug, Default)]
pub struct MostOf {
    pub total: u32,
    best: (u32, u64),
}

impl MostOf {
    pub fn add(&mut self, cgroup: u64, n: u32) {
        self.total += n;
        let (bn, bid) = self.best;
        if n > bn || (n == bn && cgroup < bid) {
            self.best = (n, cgroup);
        }
    }

    pub fn cgroup(&self) -> u64 {
        self.best.1
    }
}
