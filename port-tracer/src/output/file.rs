//! Output files, created as root on a shared host: one rule for every `--output`.
//!
//! - A new file is created with `O_EXCL` (never through a symbolic link, never into a file
//!   that appeared meanwhile) and mode 0600: traces name every process, address and port.
//! - An existing file is refused; `--force` removes it and creates a new one, so nothing is
//!   ever written into a file someone else owns (or could read).
//! - A symbolic link is refused: whoever could plant it (in /tmp, say) would choose what is
//!   overwritten. `/dev/stdout`, `/dev/stderr` and `/dev/fd/N` are the tracer's own.
//! - A character device or a FIFO that is named (`/dev/null`, `mkfifo`) is written as it
//!   is; a block device or a directory is refused.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// Opens `path` for writing under the rule above; `what` names it in errors ("output
/// file", "trace file").
pub fn create(path: &Path, force: bool, what: &str) -> Result<File> {
    let shown = path.display();
    let new_file = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let existing = match std::fs::symlink_metadata(path) {
        Ok(m) => m.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return new_file().with_context(|| format!("cannot create {what} {shown}"));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {what} {shown}")),
    };
    if existing.is_symlink() {
        if own_stream(path) {
            return OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot open {shown}"));
        }
        bail!("{shown} is a symbolic link: not followed (name the file itself)");
    }
    if existing.is_file() {
        if !force {
            bail!("{shown} exists: not overwritten (--force replaces it)");
        }
        std::fs::remove_file(path).with_context(|| format!("cannot replace {shown}"))?;
        return new_file().with_context(|| format!("cannot create {what} {shown}"));
    }
    if existing.is_char_device() || existing.is_fifo() || existing.is_socket() {
        return OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open {shown}"));
    }
    bail!("{shown} is not a file, a character device or a FIFO: not written")
}

/// A new regular file [`create`] made, removed again by a run that fails before writing
/// to it (no tier attaches, say): nothing is left for the next run to refuse.
#[derive(Debug)]
pub struct Created {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Created {
    /// `file`, just opened at `path` by [`create`], if it is an empty regular file.
    pub fn of(path: &Path, file: &File) -> Option<Created> {
        let m = file.metadata().ok()?;
        (m.is_file() && m.len() == 0 && !own_stream(path)).then(|| Created {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Removes the file if the path still names it and it is still empty.
    pub fn remove_if_empty(self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.is_file() && m.len() == 0 && (m.dev(), m.ino()) == (self.dev, self.ino) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The tracer's own standard output or error, or a descriptor it has open.
fn own_stream(path: &Path) -> bool {
    let Some(p) = path.to_str() else {
        return false;
    };
    matches!(p, "/dev/stdout" | "/dev/stderr")
        || ["/dev/fd/", "/proc/self/fd/"].iter().any(|dir| {
            p.strip_prefix(dir)
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_new_private_and_never_reached_through_a_link() {
        let dir = std::env::temp_dir().join(format!("port-tracer-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        drop(create(&out, false, "f").unwrap());
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");

        let e = create(&out, false, "f").unwrap_err().to_string();
        assert!(e.contains("exists") && e.contains("--force"), "{e}");
        std::fs::write(&out, "old").unwrap();
        drop(create(&out, true, "f").unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), b"");

        let target = dir.join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for force in [false, true] {
            let e = create(&link, force, "f").unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");

        drop(create(Path::new("/dev/null"), false, "f").unwrap());
        assert!(own_stream(Path::new("/dev/stdout")));
        assert!(!own_stream(Path::new("/dev/stdout2")));
        let e = create(&dir, true, "f").unwrap_err().to_string();
        assert!(e.contains("not written"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
