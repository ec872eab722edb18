//! Names a container runtime keeps on the host, read without its API socket: the
//! container's name, and its pod's name and namespace, from the state each runtime writes.
//!
//! - containerd: the OCI bundle's `config.json`
//!   (`/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/`), whose CRI
//!   annotations `io.kubernetes.cri.container-name`, `...sandbox-name`,
//!   `...sandbox-namespace` name it (for Kubernetes pods);
//! - cri-o: `/run/containers/storage/overlay-containers/<id>/userdata/config.json`,
//!   annotations `io.kubernetes.container.name`, `io.kubernetes.pod.name`,
//!   `io.kubernetes.pod.namespace`;
//! - docker: `/var/lib/docker/containers/<id>/config.v2.json`, its `Name` (`/web-1`);
//! - podman (rootful): the container list of its storage (containers/storage),
//!   `/var/lib/containers/storage/<driver>-containers/containers.json` (and
//!   `volatile-containers.json` beside it or under `/run/containers/storage`, where newer
//!   versions keep `--rm` containers), the entry whose `id` is the container's: its first
//!   `names`. Its OCI bundle's annotations do not carry the name. Podman has no pods in
//!   this sense: those names stay unknown.
//!
//! Without that state (another runtime, a rootless one, a machine where it lives
//! elsewhere) the names are unknown, and nothing else changes. The id is a checked hex
//! string, so the paths are made of fixed parts and it alone; files are read up to a bound.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// State files larger than this are not read (real ones are tens of kilobytes; a
/// storage's container list, some 400 bytes a container, stays far below too).
const MAX_STATE_BYTES: u64 = 8 << 20;

/// Where containers/storage (podman's, rootful) keeps its container lists: graph root and
/// run root, the storage drivers podman picks by default, the lists' names.
const STORAGE_ROOTS: [&str; 2] = ["var/lib/containers/storage", "run/containers/storage"];
const STORAGE_DRIVERS: [&str; 2] = ["overlay", "vfs"];
const STORAGE_LISTS: [&str; 2] = ["containers.json", "volatile-containers.json"];

/// What the runtime's state names; each None where it does not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeNames {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
}

impl RuntimeNames {
    pub fn is_empty(&self) -> bool {
        *self == RuntimeNames::default()
    }
}

/// Where runtimes keep their state: `/` on the host (another root in tests).
#[derive(Clone, Debug)]
pub struct RuntimeState {
    root: PathBuf,
}

impl Default for RuntimeState {
    fn default() -> Self {
        RuntimeState { root: "/".into() }
    }
}

/// A JSON document of at most [`MAX_STATE_BYTES`], if `path` is a readable file.
fn read_json(path: &Path) -> Option<serde_json::Value> {
    let f = std::fs::File::open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// The string at `key` of `map`, if one (bounded in length: names are short).
fn text(map: &serde_json::Value, key: &str) -> Option<String> {
    let s = map.get(key)?.as_str()?;
    (!s.is_empty()).then(|| s.chars().take(256).collect())
}

impl RuntimeState {
    /// State under `root` instead of `/`.
    pub fn at(root: PathBuf) -> RuntimeState {
        RuntimeState { root }
    }

    /// What the runtimes' state names container `id` (hex, as parsed from its cgroup).
    pub fn names(&self, id: &str) -> RuntimeNames {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return RuntimeNames::default();
        }
        self.containerd(id)
            .or_else(|| self.cri_o(id))
            .or_else(|| self.docker(id))
            .or_else(|| self.podman(id))
            .unwrap_or_default()
    }

    fn containerd(&self, id: &str) -> Option<RuntimeNames> {
        let tasks = self
            .root
            .join("run/containerd/io.containerd.runtime.v2.task");
        // Its namespaces (k8s.io, moby, default, ...): a handful of directories.
        let config = std::fs::read_dir(&tasks)
            .ok()?
            .flatten()
            .take(64)
            .find_map(|ns| read_json(&ns.path().join(id).join("config.json")))?;
        let a = config.get("annotations")?;
        Some(RuntimeNames {
            container_name: text(a, "io.kubernetes.cri.container-name"),
            pod_name: text(a, "io.kubernetes.cri.sandbox-name"),
            pod_namespace: text(a, "io.kubernetes.cri.sandbox-namespace"),
        })
    }

    fn cri_o(&self, id: &str) -> Option<RuntimeNames> {
        let config = read_json(
            &self
                .root
                .join("run/containers/storage/overlay-containers")
                .join(id)
                .join("userdata/config.json"),
        )?;
        let a = config.get("annotations")?;
        Some(RuntimeNames {
            container_name: text(a, "io.kubernetes.container.name"),
            pod_name: text(a, "io.kubernetes.pod.name"),
            pod_namespace: text(a, "io.kubernetes.pod.namespace"),
        })
    }

    fn docker(&self, id: &str) -> Option<RuntimeNames> {
        let config = read_json(
            &self
                .root
                .join("var/lib/docker/containers")
                .join(id)
                .join("config.v2.json"),
        )?;
        let labels = config.get("Config").and_then(|c| c.get("Labels"));
        Some(RuntimeNames {
            container_name: text(&config, "Name").map(|n| n.trim_start_matches('/').to_string()),
            pod_name: labels.and_then(|l| text(l, "io.kubernetes.pod.name")),
            pod_namespace: labels.and_then(|l| text(l, "io.kubernetes.pod.namespace")),
        })
    }

    /// The first name of the entry `id` of a containers/storage container list.
    fn podman(&self, id: &str) -> Option<RuntimeNames> {
        let lists = STORAGE_ROOTS.iter().flat_map(|root| {
            STORAGE_DRIVERS.iter().flat_map(move |driver| {
                STORAGE_LISTS
                    .iter()
                    .map(move |list| format!("{root}/{driver}-containers/{list}"))
            })
        });
        lists
            .filter_map(|list| read_json(&self.root.join(list)))
            .find_map(|list| {
                let entry = list
                    .as_array()?
                    .iter()
                    .find(|c| c.get("id").and_then(|i| i.as_str()) == Some(id))?;
                let name = entry.get("names")?.as_array()?.first()?.as_str()?;
                (!name.is_empty()).then(|| RuntimeNames {
                    container_name: Some(name.chars().take(256).collect()),
                    ..Default::default()
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c8d0e9b2a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";

    fn state(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runtime-state-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(root: &Path, path: &str, json: serde_json::Value) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, json.to_string()).unwrap();
    }

    fn names(c: Option<&str>, p: Option<&str>, ns: Option<&str>) -> RuntimeNames {
        RuntimeNames {
            container_name: c.map(String::from),
            pod_name: p.map(String::from),
            pod_namespace: ns.map(String::from),
        }
    }

    #[test]
    fn containerd_cri_o_and_docker_state_name_their_containers() {
        let root = state("all");
        write(
            &root,
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            serde_json::json!({"annotations": {
                "io.kubernetes.cri.container-name": "web",
                "io.kubernetes.cri.sandbox-name": "web-7d4b9c-x2x",
                "io.kubernetes.cri.sandbox-namespace": "shop",
            }}),
        );
        let s = RuntimeState::at(root.clone());
        assert_eq!(
            s.names(ID),
            names(Some("web"), Some("web-7d4b9c-x2x"), Some("shop"))
        );

        let crio = "ab".repeat(32);
        write(
            &root,
            &format!("run/containers/storage/overlay-containers/{crio}/userdata/config.json"),
            serde_json::json!({"annotations": {
                "io.kubernetes.container.name": "db",
                "io.kubernetes.pod.name": "db-0",
                "io.kubernetes.pod.namespace": "data",
            }}),
        );
        assert_eq!(
            s.names(&crio),
            names(Some("db"), Some("db-0"), Some("data"))
        );

        let docker = "cd".repeat(32);
        write(
            &root,
            &format!("var/lib/docker/containers/{docker}/config.v2.json"),
            serde_json::json!({"Name": "/cache-1", "Config": {"Labels": {}}}),
        );
        assert_eq!(s.names(&docker), names(Some("cache-1"), None, None));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn podmans_storage_lists_name_its_containers() {
        let root = state("podman");
        let s = RuntimeState::at(root.clone());
        let other = "ef".repeat(32);
        // As podman 4.3 wrote it (`podman run --rm --name pt-test-1 --rootfs DIR ...`).
        let entry = |id: &str, name: &str| {
            serde_json::json!({
                "id": id, "names": [name], "image": "", "layer": "70fd219c25e0",
                "metadata": format!("{{\"image-name\":\"\",\"name\":\"{name}\"}}"),
                "created": "2026-12-07T20:46:06.083548436Z",
                "flags": {"MountLabel": "", "ProcessLabel": "", "Volatile": true},
            })
        };
        write(
            &root,
            "var/lib/containers/storage/overlay-containers/containers.json",
            serde_json::json!([entry(&other, "db"), entry(ID, "pt-test-1")]),
        );
        assert_eq!(s.names(ID), names(Some("pt-test-1"), None, None));
        // `--rm` containers in the run root's volatile list (newer versions).
        let volatile = "12".repeat(32);
        write(
            &root,
            "run/containers/storage/overlay-containers/volatile-containers.json",
            serde_json::json!([entry(&volatile, "web")]),
        );
        assert_eq!(s.names(&volatile), names(Some("web"), None, None));
        // Not listed, listed without a name, or a list that is not one: nothing.
        assert!(s.names(&"34".repeat(32)).is_empty());
        let unnamed = "56".repeat(32);
        write(
            &root,
            "var/lib/containers/storage/vfs-containers/containers.json",
            serde_json::json!([{"id": unnamed, "names": []}, {"id": ID}]),
        );
        assert!(s.names(&unnamed).is_empty());
        write(
            &root,
            "var/lib/containers/storage/overlay-containers/containers.json",
            serde_json::json!({"id": ID, "names": ["x"]}),
        );
        assert!(s.names(ID).is_empty());
        // A name is cut to 256 characters.
        write(
            &root,
            "var/lib/containers/storage/overlay-containers/volatile-containers.json",
            serde_json::json!([entry(ID, &"n".repeat(1000))]),
        );
        assert_eq!(s.names(ID).container_name.unwrap().len(), 256);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn no_state_bad_state_or_a_bad_id_names_nothing() {
        let root = state("none");
        let s = RuntimeState::at(root.clone());
        assert!(s.names(ID).is_empty());
        write(
            &root,
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            serde_json::json!(["not", "an", "object"]),
        );
        assert!(s.names(ID).is_empty());
        std::fs::write(
            root.join(format!("var/lib/docker/containers/{ID}/config.v2.json")),
            "{not json",
        )
        .unwrap();
        assert!(s.names(ID).is_empty());
        // Not an id: never part of a path.
        assert!(s.names("../../etc").is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
