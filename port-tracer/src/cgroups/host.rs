//! The traced host's cgroup v2 hierarchy: directory inode numbers (the kernel's cgroup
//! ids on 64-bit kernels since 5.5) to paths. Walked once at start, and again when an id
//! not seen in the last walk turns up (a cgroup made since); an id no walk finds was
//! removed first.
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
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        self.rewalk();
        self.by_id.get(&id).cloned()
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
