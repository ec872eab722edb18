//! Which sockets the user wants to see.

use crate::{
    cgroups::{Cgroup, Lookup},
    event::{Endpoints, Proto, Task},
    lifetime::OutputRef,
};

/// Every field left `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub ports: Option<(u16, u16)>,
    pub proto: Option<Proto>,
    pub netns: Option<u32>,
    /// The owner's container: a prefix of its id (lowercase hex, as `docker ps` prints it).
    pub container: Option<String>,
    /// The owner's pod: its uid (with dashes), its name or `namespace/name`.
    pub pod: Option<String>,
    /// The owner's cgroup: this path or one below it.
    pub cgroup: Option<String>,
}

impl Filter {
    /// Whether it selects by the owner's cgroup (then its name is needed to match).
    pub fn by_cgroup(&self) -> bool {
        self.container.is_some() || self.pod.is_some() || self.cgroup.is_some()
    }

    /// Whether a socket of `ends` owned by `task` is selected; by cgroup, only with its
    /// cgroup known (see [`Filter::matches_named`]).
    pub fn matches(&self, ends: &Endpoints, task: &Task) -> bool {
        self.matches_named(ends, task, None)
    }

    /// [`Filter::matches`], the owner's cgroup `cgroup` (None: not known).
    pub fn matches_named(&self, ends: &Endpoints, task: &Task, cgroup: Option<&Cgroup>) -> bool {
        self.matches_task(ends, task) && (!self.by_cgroup() || self.matches_cgroup(cgroup))
    }

    fn matches_cgroup(&self, cgroup: Option<&Cgroup>) -> bool {
        let Some(cg) = cgroup else {
            return false;
        };
        let n = &cg.naming;
        self.container.as_deref().is_none_or(|want| {
            n.container_id
                .as_deref()
                .is_some_and(|id| id.starts_with(want))
        }) && self.pod.as_deref().is_none_or(|want| cg.in_pod(want))
            && self.cgroup.as_deref().is_none_or(|want| {
                let want = want.trim_end_matches('/');
                want.is_empty()
                    || cg
                        .path
                        .strip_prefix(want)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }

    fn matches_task(&self, ends: &Endpoints, task: &Task) -> bool {
        self.pid.is_none_or(|p| p == task.pid)
            && self.comm.as_deref().is_none_or(|c| c == task.comm.as_str())
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&ends.lport))
            && self.proto.is_none_or(|p| p == ends.proto)
            && self.netns.is_none_or(|n| n == ends.netns)
    }

    /// Outputs are attributed to their socket's owner, so a filter by process also keeps
    /// the releases and TIME_WAITs the kernel reports from other contexts.
    /// Owners' cgroups are looked up in `names` when the filter selects by them.
    pub fn matches_output(&self, o: OutputRef<'_>, names: &mut Lookup) -> bool {
        let (ends, task) = match o {
            OutputRef::Event(ev) => (&ev.ends, &ev.task),
            OutputRef::Lifetime(lt) => (&lt.ends, &lt.owner),
        };
        if !self.by_cgroup() {
            return self.matches_task(ends, task);
        }
        let cg = names.get(task.cgroup_id);
        self.matches_named(ends, task, cg.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Comm, testing::ends};

    #[test]
    fn filters_match_what_they_name() {
        let task = Task {
            pid: 5,
            comm: Comm::new("curl"),
            ..Default::default()
        };
        let f = Filter {
            ports: Some((100, 200)),
            ..Default::default()
        };
        assert!(f.matches(&ends(150), &task));
        assert!(!f.matches(&ends(201), &task));
        let f = Filter {
            pid: Some(6),
            ..Default::default()
        };
        assert!(!f.matches(&ends(1), &task));
        let f = Filter {
            comm: Some("curl".into()),
            proto: Some(Proto::Tcp),
            netns: Some(7),
            ..Default::default()
        };
        assert!(f.matches(&ends(1), &task));
        let f = Filter {
            proto: Some(Proto::Udp),
            ..Default::default()
        };
        assert!(!f.matches(&ends(1), &task));
    }

    #[test]
    fn containers_pods_and_cgroups_select_by_the_owners_cgroup() {
        let id = "4f1c8d0e9b2a".repeat(5) + "abcd";
        let uid = "7d2e3f4a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
        let cg = Cgroup::new(format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ));
        let host = Cgroup::new("/system.slice/cron.service".into());
        let task = Task::default();
        let by = |f: Filter, cg: Option<&Cgroup>| f.matches_named(&ends(1), &task, cg);
        let container = |p: &str| Filter {
            container: Some(p.into()),
            ..Default::default()
        };
        assert!(by(container("4f1c8d0e9b2a"), Some(&cg)));
        assert!(by(container(&id), Some(&cg)));
        assert!(!by(container("4f1c8d0e9b2b"), Some(&cg)));
        assert!(!by(container("4f1c"), Some(&host)));
        assert!(
            !by(container("4f1c"), None),
            "a cgroup not known is not selected"
        );
        let pod = |p: &str| Filter {
            pod: Some(p.into()),
            ..Default::default()
        };
        assert!(by(pod(uid), Some(&cg)));
        assert!(!by(pod(&uid[..8]), Some(&cg)));
        // By name, where the runtime's state named it.
        assert!(!by(pod("web-0"), Some(&cg)));
        let named = Cgroup {
            runtime: crate::cgroups::RuntimeNames {
                container_name: Some("web".into()),
                pod_name: Some("web-0".into()),
                pod_namespace: Some("shop".into()),
            },
            ..cg.clone()
        };
        assert!(by(pod("web-0"), Some(&named)));
        assert!(by(pod("shop/web-0"), Some(&named)));
        assert!(!by(pod("other/web-0"), Some(&named)));
        assert!(!by(pod("shop/web"), Some(&named)));
        let path = |p: &str| Filter {
            cgroup: Some(p.into()),
            ..Default::default()
        };
        assert!(by(path("/kubepods.slice"), Some(&cg)));
        assert!(by(path("/kubepods.slice/"), Some(&cg)));
        assert!(
            !by(path("/kubepods"), Some(&cg)),
            "whole path components only"
        );
        assert!(by(path("/"), Some(&host)));
        assert!(by(path("/system.slice/cron.service"), Some(&host)));
        // Criteria without a cgroup still select as before.
        assert!(Filter::default().matches(&ends(1), &task));
    }
}
