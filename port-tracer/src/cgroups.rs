//! Who a cgroup is, in the names operators use: a lifetime's owner carries the kernel's
//! cgroup id (the cgroup v2 directory's inode number), which this turns into the cgroup's
//! path and, following each container runtime's and systemd's naming, the container, pod
//! and unit it belongs to.
//!
//! [`naming`] is pure (the path in, the names out). [`Cgroups`] is the id -> path table
//! every printer reads: filled on the traced host by walking the cgroup v2 hierarchy
//! ([`host`]), or from the table a recorded trace carries. Every assignment's and
//! failure's id is noted ([`Cgroups::note`]) before its event enters the engine, so its
//! outputs find it resolved, or counted as unresolved.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

pub mod host;
pub mod runtime;

pub use runtime::RuntimeNames;

/// What a cgroup's path names, each from the nearest ancestor (the cgroup itself first)
/// that names one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Naming {
    /// The container's full id (docker, containerd, cri-o, podman).
    pub container_id: Option<String>,
    /// The Kubernetes pod's uid, with dashes.
    pub pod_uid: Option<String>,
    /// The systemd service or scope of a host process (none inside a container).
    pub unit: Option<String>,
}

/// Systemd scopes of containers, by runtime: `<prefix><id>.scope`. cri-o's and podman's
/// monitors (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) are not the container.
const SCOPE_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];
/// The runtimes that name a container `...slice:<runtime>:<id>` (kubelet with the systemd
/// driver and a runtime using cgroupfs paths).
const COLON_RUNTIMES: [&str; 3] = ["cri-containerd", "crio", "docker"];

/// A container id: lowercase hex, as runtimes write them (64 digits; 12 at least).
fn is_container_id(s: &str) -> bool {
    (12..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod uid: a UUID, with dashes or (in systemd slice names) underscores; with dashes.
fn pod_uid(s: &str) -> Option<String> {
    let uid = s.replace('_', "-");
    let b = uid.as_bytes();
    let shaped = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    shaped.then_some(uid)
}

/// The container id one path component names, given its parent's name.
fn container_of(component: &str, parent: Option<&str>) -> Option<String> {
    if let Some(s) = component.strip_suffix(".scope") {
        if s.starts_with("crio-conmon-") || s.starts_with("libpod-conmon-") {
            return None;
        }
        return SCOPE_PREFIXES
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .filter(|id| is_container_id(id))
            .map(str::to_string);
    }
    // podman with cgroupfs (no systemd): `/libpod_parent/libpod-<id>`, or under its pod's
    // cgroup; its monitor is `/libpod_parent/conmon` (`libpod-conmon-...` is not hex).
    if let Some(id) = component.strip_prefix("libpod-") {
        return is_container_id(id).then(|| id.into());
    }
    // `kubepods-...-pod<uid>.slice:cri-containerd:<id>`
    let mut parts = component.rsplitn(3, ':');
    if let (Some(id), Some(runtime), Some(_)) = (parts.next(), parts.next(), parts.next()) {
        return (COLON_RUNTIMES.contains(&runtime) && is_container_id(id)).then(|| id.into());
    }
    // cgroupfs: `/docker/<id>`, `kubepods/<qos>/pod<uid>/<id>`.
    let parent = parent?;
    let under_runtime = parent == "docker" || parent.starts_with("pod");
    (under_runtime && component.len() == 64 && is_container_id(component)).then(|| component.into())
}

/// The pod uid one path component names (under a `kubepods` ancestor).
fn pod_of(component: &str) -> Option<String> {
    // systemd: `kubepods-pod<uid>.slice` (guaranteed), `kubepods-<qos>-pod<uid>.slice`,
    // also before `:<runtime>:<id>`.
    let slice = component.split(':').next()?;
    if let Some(s) = slice.strip_suffix(".slice") {
        if !s.starts_with("kubepods") {
            return None;
        }
        let at = s.rfind("-pod")?;
        return pod_uid(&s[at + 4..]);
    }
    // cgroupfs: `pod<uid>`.
    pod_uid(component.strip_prefix("pod")?)
}

/// The names cgroup `path` (as under the cgroup v2 mount, `/` first) gives.
pub fn naming(path: &str) -> Naming {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let in_kubepods = parts.iter().any(|c| c.starts_with("kubepods"));
    let mut n = Naming::default();
    for (i, c) in parts.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        if n.container_id.is_none() {
            n.container_id = container_of(c, parent);
        }
        if n.pod_uid.is_none() && in_kubepods {
            // The colon form's pod is its slice part.
            n.pod_uid = pod_of(c);
        }
        if n.unit.is_none() && (c.ends_with(".service") || c.ends_with(".scope")) {
            n.unit = Some(c.to_string());
        }
    }
    if n.container_id.is_some() {
        n.unit = None;
    }
    n
}

/// A cgroup: its path under the cgroup v2 mount and what that names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: String,
    pub naming: Naming,
    /// Its container's and pod's names, where the runtime's state gave them.
    pub runtime: RuntimeNames,
}

impl Cgroup {
    pub fn new(path: String) -> Cgroup {
        Cgroup {
            naming: naming(&path),
            path,
            runtime: RuntimeNames::default(),
        }
    }

    /// The container (12 digits) or unit it names, "" for neither: the metrics' label.
    pub fn short_label(&self) -> String {
        match (&self.naming.container_id, &self.naming.unit) {
            (Some(_), _) | (None, Some(_)) => self.short().to_string(),
            (None, None) => String::new(),
        }
    }

    /// Whether it is in pod `want`: its uid, its name, or `namespace/name`.
    pub fn in_pod(&self, want: &str) -> bool {
        let r = &self.runtime;
        self.naming.pod_uid.as_deref() == Some(want)
            || r.pod_name.as_deref() == Some(want)
            || matches!((&r.pod_namespace, &r.pod_name), (Some(ns), Some(name))
                if want.strip_prefix(ns.as_str()).and_then(|w| w.strip_prefix('/')) == Some(name))
    }

    /// What text output shows where it fits: the short container id (12 characters, as
    /// `docker ps` prints it), else the unit, else the path.
    pub fn short(&self) -> &str {
        match (&self.naming.container_id, &self.naming.unit) {
            (Some(id), _) => &id[..12],
            (None, Some(unit)) => unit,
            (None, None) => &self.path,
        }
    }
}

/// One entry of the table a trace carries (`CGROUPS` blocks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    pub path: String,
    /// Absent in a table written without them.
    #[serde(flatten)]
    pub runtime: RuntimeNames,
}

/// Paths longer than this are cut (the cut marked with `...`): a hostile hierarchy must
/// not make every record huge. Real ones stay far below.
pub const MAX_PATH: usize = 1024;

/// Cuts `path` to [`MAX_PATH`] bytes at a character boundary, marking the cut.
pub fn bounded(mut path: String) -> String {
    if path.len() > MAX_PATH {
        let mut at = MAX_PATH - 3;
        while !path.is_char_boundary(at) {
            at -= 1;
        }
        path.truncate(at);
        path.push_str("...");
    }
    path
}

/// How cgroup ids fared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CgroupCounts {
    /// Distinct cgroups of owners seen, with a path.
    pub resolved: u64,
    /// Distinct cgroup ids of owners seen without one: removed before they could be
    /// resolved, or absent from the recording's table.
    pub unresolved: u64,
}

#[derive(Default)]
struct Table {
    /// Every id noted: its cgroup, or None if it could not be resolved.
    by_id: HashMap<u64, Option<Arc<Cgroup>>>,
    /// A recording's table.
    recorded: HashMap<u64, Arc<Cgroup>>,
    /// Where unknown ids are looked up (the traced host); None: a recorded table.
    host: Option<host::Hierarchy>,
    /// Where containers' names are looked up on the host.
    runtime: runtime::RuntimeState,
    /// Entries resolved since the last [`Cgroups::take_new`] (for a recording).
    new: Vec<Entry>,
    counts: CgroupCounts,
}

/// The id -> cgroup table: one per run, shared by the thread that notes ids and the
/// printers that show them.
#[derive(Clone, Default)]
pub struct Cgroups(Arc<Mutex<Table>>);

impl std::fmt::Debug for Cgroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cgroups")
    }
}

impl Cgroups {
    /// A table of the traced host: ids unknown when noted are looked up in its hierarchy,
    /// containers' names in the runtimes' `state`.
    pub fn on_host(host: host::Hierarchy, state: runtime::RuntimeState) -> Cgroups {
        let t = Table {
            host: Some(host),
            runtime: state,
            ..Default::default()
        };
        Cgroups(Arc::new(Mutex::new(t)))
    }

    /// A table from a recording (filled with [`Cgroups::insert`]): nothing is looked up on
    /// this host.
    pub fn recorded() -> Cgroups {
        Cgroups::default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A printer that panicked holding it left a table that is still whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An entry of a recording's table; ids its events name count as resolved when
    /// noted.
    pub fn insert(&self, e: Entry) {
        let cg = Arc::new(Cgroup {
            runtime: e.runtime,
            ..Cgroup::new(bounded(e.path))
        });
        let mut t = self.lock();
        t.recorded.insert(e.id, cg);
    }

    /// An owner's cgroup `id` was seen: resolved now if it is new (0: no owner known). On
    /// the host, a cgroup removed before this is unresolved; in a recording, one its
    /// table lacks. Whether the host's hierarchy resolved a new one (see `take_new`).
    pub fn note(&self, id: u64) -> bool {
        self.note_of(id, 0)
    }

    /// [`Cgroups::note`] of the cgroup of thread `tid` (0: unknown), which is looked at
    /// first for a new one (see [`host::Hierarchy::resolve_from`]).
    pub fn note_of(&self, id: u64, tid: u32) -> bool {
        if id == 0 {
            return false;
        }
        let mut t = self.lock();
        let t = &mut *t;
        if t.by_id.contains_key(&id) {
            return false;
        }
        let proc_cgroup = || {
            (tid != 0)
                .then(|| std::fs::read_to_string(format!("/proc/{tid}/cgroup")).ok())
                .flatten()
        };
        let found = match t.host.as_mut() {
            Some(host) => host.resolve_from(id, proc_cgroup).map(|path| {
                let mut cg = Cgroup::new(bounded(path));
                if let Some(id) = &cg.naming.container_id {
                    cg.runtime = t.runtime.names(id);
                }
                t.new.push(Entry {
                    id,
                    path: cg.path.clone(),
                    runtime: cg.runtime.clone(),
                });
                Arc::new(cg)
            }),
            None => t.recorded.get(&id).cloned(),
        };
        if found.is_some() {
            t.counts.resolved += 1;
        } else {
            t.counts.unresolved += 1;
        }
        t.by_id.insert(id, found);
        !t.new.is_empty()
    }

    /// The cgroup of `id`, if resolved.
    pub fn get(&self, id: u64) -> Option<Arc<Cgroup>> {
        if id == 0 {
            return None;
        }
        self.lock().by_id.get(&id).cloned().flatten()
    }

    /// Entries resolved since the last call, for a recording's table.
    pub fn take_new(&self) -> Vec<Entry> {
        std::mem::take(&mut self.lock().new)
    }

    pub fn counts(&self) -> CgroupCounts {
        self.lock().counts
    }
}

/// The drain side's view of [`Cgroups`]: an id is noted once per run of records that
/// repeat it (a storm's records mostly do), without taking the table's lock.
pub struct Noter {
    pub table: Cgroups,
    last: u64,
}

impl Noter {
    pub fn new(table: Cgroups) -> Noter {
        Noter { table, last: 0 }
    }

    /// Notes `id`, the cgroup of thread `tid` (see [`Cgroups::note_of`]); whether new
    /// entries wait in `take_new`.
    #[inline]
    pub fn note(&mut self, id: u64, tid: u32) -> bool {
        if id == self.last {
            return false;
        }
        self.last = id;
        self.table.note_of(id, tid)
    }
}

/// A printer's view of [`Cgroups`]: the last id looked up kept, since consecutive records
/// mostly share their owner.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    table: Cgroups,
    last: Option<(u64, Option<Arc<Cgroup>>)>,
}

impl Lookup {
    pub fn new(table: Cgroups) -> Lookup {
        Lookup { table, last: None }
    }

    pub fn get(&mut self, id: u64) -> Option<Arc<Cgroup>> {
        match &self.last {
            Some((last, cg)) if *last == id => cg.clone(),
            _ => {
                let cg = self.table.get(id);
                self.last = Some((id, cg.clone()));
                cg
            }
        }
    }
}

#[cfg(test)]
mod tests;
