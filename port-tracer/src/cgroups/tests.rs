use super::*;

const ID: &str = "4f1c8d0e9b2a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
const UID: &str = "7d2e3f4a-1b2c-4d5e-8f90-a1b2c3d4e5f6";

fn names(path: &str) -> (Option<String>, Option<String>, Option<String>) {
    let n = naming(path);
    (n.container_id, n.pod_uid, n.unit)
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn docker_with_systemd_and_with_cgroupfs() {
    assert_eq!(
        names(&format!("/system.slice/docker-{ID}.scope")),
        (some(ID), None, None)
    );
    assert_eq!(names(&format!("/docker/{ID}")), (some(ID), None, None));
}

#[test]
fn containerd_scope_and_colon_forms_with_their_pods() {
    let uid_ = UID.replace('-', "_");
    let scope = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
    );
    assert_eq!(names(&scope), (some(ID), some(UID), None));
    let colon = format!(
        "/system.slice/containerd.service/kubepods-burstable-pod{uid_}.slice:cri-containerd:{ID}"
    );
    assert_eq!(names(&colon), (some(ID), some(UID), None));
}

#[test]
fn cri_o_skips_its_monitor() {
    let uid_ = UID.replace('-', "_");
    let pod =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
    assert_eq!(
        names(&format!("{pod}/crio-{ID}.scope")),
        (some(ID), some(UID), None)
    );
    // conmon watches the container from outside it.
    assert_eq!(
        names(&format!("{pod}/crio-conmon-{ID}.scope")),
        (None, some(UID), some(&format!("crio-conmon-{ID}.scope")))
    );
}

#[test]
fn podman_scope_and_its_container_subgroup() {
    let scope = format!("/machine.slice/libpod-{ID}.scope");
    assert_eq!(names(&scope), (some(ID), None, None));
    assert_eq!(names(&format!("{scope}/container")), (some(ID), None, None));
    assert_eq!(
        names(&format!("/machine.slice/libpod-conmon-{ID}.scope")).0,
        None
    );
}

#[test]
fn podman_with_cgroupfs_names_its_container_but_not_its_monitor() {
    // As podman 4.3 with runc gave it on a host without systemd (cgroup v2 path).
    assert_eq!(
        names(&format!("/libpod_parent/libpod-{ID}")),
        (some(ID), None, None)
    );
    // In a pod: under the pod's cgroup.
    let pod = "ab".repeat(32);
    assert_eq!(
        names(&format!("/libpod_parent/{pod}/libpod-{ID}")),
        (some(ID), None, None)
    );
    assert_eq!(names("/libpod_parent/conmon"), (None, None, None));
    assert_eq!(names(&format!("/libpod_parent/libpod-conmon-{ID}")).0, None);
    // Not an id.
    assert_eq!(names("/libpod_parent/libpod-xyz").0, None);
    assert_eq!(names("/libpod_parent/libpod-").0, None);
}

#[test]
fn guaranteed_pods_have_no_qos_level_and_cgroupfs_pods_keep_their_dashes() {
    let uid_ = UID.replace('-', "_");
    assert_eq!(
        names(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"
        )),
        (some(ID), some(UID), None)
    );
    assert_eq!(
        names(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
        (some(ID), some(UID), None)
    );
    assert_eq!(
        names(&format!("/kubepods/pod{UID}/{ID}")),
        (some(ID), some(UID), None)
    );
    // The pod's own cgroup: a pod, no container yet.
    assert_eq!(
        names(&format!("/kubepods/burstable/pod{UID}")),
        (None, some(UID), None)
    );
}

#[test]
fn a_nested_cgroup_takes_the_nearest_ancestor_that_names_one() {
    assert_eq!(
        names(&format!("/system.slice/docker-{ID}.scope/app/worker")),
        (some(ID), None, None)
    );
    let inner = "0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef";
    assert_eq!(
        names(&format!("/system.slice/docker-{ID}.scope/docker/{inner}")).0,
        some(inner)
    );
}

#[test]
fn host_services_and_sessions_are_units() {
    assert_eq!(
        names("/system.slice/nginx.service"),
        (None, None, some("nginx.service"))
    );
    assert_eq!(
        names("/user.slice/user-1000.slice/session-3.scope"),
        (None, None, some("session-3.scope"))
    );
    assert_eq!(
        names("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
        (None, None, some("foo.service"))
    );
    assert_eq!(names("/"), (None, None, None));
    assert_eq!(names("/init.scope"), (None, None, some("init.scope")));
}

#[test]
fn lookalikes_name_nothing() {
    // Not hex, too short, a uid of the wrong shape, a pod outside kubepods.
    assert_eq!(names("/system.slice/docker-notanid.scope").0, None);
    assert_eq!(names("/system.slice/docker-abc.scope").0, None);
    assert_eq!(names("/docker/abc").0, None);
    assert_eq!(names("/kubepods/besteffort/pod1234").1, None);
    assert_eq!(names(&format!("/other/pod{UID}")).1, None);
    assert_eq!(names(&format!("/x.slice:unknown-runtime:{ID}")).0, None);
}

#[test]
fn short_names_are_twelve_hex_digits_or_the_unit_or_the_path() {
    let c = Cgroup::new(format!("/system.slice/docker-{ID}.scope"));
    assert_eq!(c.short(), &ID[..12]);
    assert_eq!(
        Cgroup::new("/system.slice/cron.service".into()).short(),
        "cron.service"
    );
    assert_eq!(Cgroup::new("/mine/own".into()).short(), "/mine/own");
}

#[test]
fn long_paths_are_cut_and_the_cut_marked() {
    let long = format!("/{}", "é".repeat(MAX_PATH));
    let cut = bounded(long);
    assert!(
        cut.len() <= MAX_PATH && cut.ends_with("..."),
        "{}",
        cut.len()
    );
    assert_eq!(bounded("/a".into()), "/a");
}

#[test]
fn ids_are_resolved_once_and_the_unknown_counted() {
    let t = Cgroups::recorded();
    t.insert(Entry {
        id: 7,
        path: format!("/docker/{ID}"),
        runtime: Default::default(),
    });
    for id in [7, 7, 8, 0, 8] {
        t.note(id);
    }
    assert_eq!(
        t.counts(),
        CgroupCounts {
            resolved: 1,
            unresolved: 1
        }
    );
    assert_eq!(t.get(7).unwrap().naming.container_id.as_deref(), Some(ID));
    assert!(t.get(8).is_none() && t.get(0).is_none());
    // A recorded table is not recorded again.
    assert!(t.take_new().is_empty());
    let mut l = Lookup::new(t.clone());
    assert_eq!(l.get(7), t.get(7));
    assert_eq!(l.get(7), t.get(7));
}
