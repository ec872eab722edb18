//! The traced host's cgroup v2 hierarchy: directory inode numbers (the kernel's cgroup
//! ids on 64-bit kernels since 5.5) to paths. Walked once at start. A cgroup made since
//! is found from the thread whose record named it (`/proc/TID/cgroup`, one small read, the
//! path checked by its inode), else by walking again (the thread is gone or has moved:
//! a walk reads every cgroup directory, tens of milliseconds on a node with thousands);
//! an id no walk finds was removed first.
//!
//! Directory names are the host's and may be anything a cgroup's creator chose: names
//! that are not UTF-8 are kept lossily, and the walk is bounded in depth and size.

use std::{
    collections::HashMap,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
};

/// Deeper directories are not walked (systemd and runtimes nest a handful of levels).
const MAX_DEPTH: usize = 32;
/// At most this many cgroups are read per walk.
const MAX_CGROUPS: usize = 1 << 20;

pub struct Hierarchy {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    /// Walks made (the first at start).
    pub walks: u64,
}

impl Hierarchy {
    /// The hierarchy mounted at `root`, walked now.
    pub fn walk(root: PathBuf) -> Hierarchy {
        let mut h = Hierarchy {
            root,
            by_id: HashMap::new(),
            walks: 0,
        };
        h.rewalk();
        h
    }

    /// The path of cgroup `id` (`/` for the root), walking again if the last walk did not
    /// see it; None if it is gone (or was never a cgroup here).
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        self.resolve_from(id, || None)
    }

    /// [`Hierarchy::resolve`], first asking `proc_cgroup` for the `/proc/TID/cgroup` of a
    /// thread that was in cgroup `id`: its path is taken if its directory is still that
    /// cgroup (the thread may have moved, and the file is what its namespace shows).
    pub fn resolve_from(
        &mut self,
        id: u64,
        proc_cgroup: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if let Some(path) = proc_cgroup().and_then(|c| self.checked(&c, id)) {
            self.by_id.insert(id, path.clone());
            return Some(path);
        }
        self.rewalk();
        self.by_id.get(&id).cloned()
    }

    /// The cgroup v2 path a `/proc/TID/cgroup` text gives, if it is a directory under the
    /// mount (no `..`) whose inode is `id`.
    fn checked(&self, proc_cgroup: &str, id: u64) -> Option<String> {
        let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
        let rel = Path::new(path.trim_start_matches('/'));
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let dir = std::fs::symlink_metadata(self.root.join(rel)).ok()?;
        (plain && dir.is_dir() && dir.ino() == id).then(|| match path {
            "" | "/" => "/".to_string(),
            p => format!("/{}", p.trim_start_matches('/')),
        })
    }

    fn rewalk(&mut self) {
        self.walks += 1;
        self.by_id = walk(&self.root);
    }
}

/// Every cgroup under `root`, by inode number.
fn walk(root: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    if let Ok(m) = std::fs::metadata(root) {
        out.insert(m.ino(), "/".to_string());
    }
    let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, rel, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue; // removed meanwhile
        };
        for e in entries.flatten() {
            // `file_type` does not follow links: cgroupfs has none, and none is followed.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = format!("{rel}/{}", e.file_name().to_string_lossy());
            out.insert(e.ino(), path.clone());
            if out.len() >= MAX_CGROUPS {
                return out;
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((e.path(), path, depth + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_gives_every_directory_by_inode_and_a_new_one_after_a_rewalk() {
        let dir = std::env::temp_dir().join(format!("cgroups-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("system.slice/docker-ab.scope")).unwrap();
        std::fs::write(dir.join("system.slice/cgroup.procs"), "").unwrap();
        let ino = |p: &str| std::fs::metadata(dir.join(p)).unwrap().ino();
        let mut h = Hierarchy::walk(dir.clone());
        assert_eq!(h.resolve(ino("")), Some("/".into()));
        assert_eq!(
            h.resolve(ino("system.slice/docker-ab.scope")),
            Some("/system.slice/docker-ab.scope".into())
        );
        assert_eq!(h.walks, 1);
        std::fs::create_dir(dir.join("later")).unwrap();
        assert_eq!(h.resolve(ino("later")), Some("/later".into()));
        assert_eq!(h.walks, 2);
        // Files are not cgroups.
        assert_eq!(h.resolve(ino("system.slice/cgroup.procs")), None);
        assert_eq!(h.walks, 3);
        // A new one named by a thread's /proc/TID/cgroup: no walk.
        std::fs::create_dir_all(dir.join("kubepods.slice/new.scope")).unwrap();
        let proc = || Some("0::/kubepods.slice/new.scope\n".to_string());
        assert_eq!(
            h.resolve_from(ino("kubepods.slice/new.scope"), proc),
            Some("/kubepods.slice/new.scope".into())
        );
        assert_eq!(h.walks, 3);
        // The thread moved (its file names another cgroup), or names a path leaving the
        // mount: a walk finds it.
        std::fs::create_dir(dir.join("moved")).unwrap();
        let elsewhere = || Some("0::/system.slice\n".to_string());
        assert_eq!(
            h.resolve_from(ino("moved"), elsewhere),
            Some("/moved".into())
        );
        assert_eq!(h.walks, 4);
        std::fs::create_dir(dir.join("up")).unwrap();
        let leaving = || Some("0::/../up\n".to_string());
        assert_eq!(h.resolve_from(ino("up"), leaving), Some("/up".into()));
        assert_eq!(h.walks, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
