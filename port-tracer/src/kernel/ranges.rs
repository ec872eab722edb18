//! Each network namespace's ephemeral port range, read from inside it: the sysctls under
//! /proc/sys/net are those of the reading thread's namespace.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::AsRawFd,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::port_range::PortRange;

use super::held;

/// How long a namespace whose range could not be read waits before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// A small /proc or /sys file, trimmed; empty when unreadable.
pub(crate) fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Why a range was not read through one path.
#[derive(Debug)]
enum Miss {
    /// The path is gone or opens another namespace: try elsewhere.
    NotThere,
    /// Reading failed (out of file handles, threads, ...): try again later.
    Failed(io::Error),
}

/// The range of the calling thread's namespace `netns`.
fn read_here(netns: u32) -> io::Result<PortRange> {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
    let range = read("/proc/sys/net/ipv4/ip_local_port_range")?;
    let reserved = read("/proc/sys/net/ipv4/ip_local_reserved_ports")?;
    PortRange::parse(netns, &range, &reserved).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable ip_local_port_range {range:?}"),
        )
    })
}

/// The range of the tracer's own namespace.
pub fn own() -> Option<PortRange> {
    read_here(held::own_netns().ok()?).ok()
}

/// The range of the namespace `path` opens, if it is `netns`.
fn read_in(netns: u32, path: PathBuf) -> Result<PortRange, Miss> {
    let file = std::fs::File::open(&path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH | libc::ENOTDIR) => Miss::NotThere,
        _ => Miss::Failed(e),
    })?;
    let inode = file.metadata().map_err(Miss::Failed)?.ino() as u32;
    if inode != netns {
        return Err(Miss::NotThere);
    }
    // setns() changes only the calling thread: do it in a thread of its own.
    std::thread::Builder::new()
        .name("netns-range".into())
        .spawn(move || {
            // SAFETY: a valid namespace fd; only this short-lived thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            read_here(netns)
        })
        .map_err(Miss::Failed)?
        .join()
        .map_err(|_| Miss::Failed(io::Error::other("the range reader panicked")))?
        .map_err(Miss::Failed)
}

/// Finds namespaces' ranges: through the thread an event came from, else through any
/// thread or /run/netns name in that namespace. A namespace is looked for once when it is
/// found or gone; one whose range could not be read (the tracer out of file handles, say)
/// is tried again a second later, and said once on stderr.
#[derive(Debug, Default)]
pub struct RangeFinder {
    /// Found, or nowhere to be found.
    settled: HashSet<u32>,
    /// Could not be read: when to try again, and why not.
    failing: HashMap<u32, (Instant, String)>,
    own: Option<u32>,
}

impl RangeFinder {
    pub fn new() -> Self {
        RangeFinder {
            own: held::own_netns().ok(),
            ..Default::default()
        }
    }

    /// Whether `netns` needs no look now: found or gone, or waiting to be tried again.
    pub fn tried(&self, netns: u32) -> bool {
        self.settled.contains(&netns)
            || self
                .failing
                .get(&netns)
                .is_some_and(|(next, _)| Instant::now() < *next)
    }

    /// Namespaces whose range could not be read (yet), and why.
    pub fn unreadable(&self) -> impl Iterator<Item = (u32, &str)> {
        self.failing.iter().map(|(n, (_, why))| (*n, why.as_str()))
    }

    /// The range of `netns`, where thread `pid`/`tid` was when it made an event; None when
    /// looked for already, or not found (the thread left or ended, and no /run/netns name
    /// opens it), or not readable now. Cheap enough for the collector's loop: no scan of
    /// every process.
    pub fn find(&mut self, netns: u32, pid: u32, tid: u32) -> Option<PortRange> {
        self.find_in(netns, pid, tid, false)
    }

    /// [`RangeFinder::find`], falling back to a scan of every thread (at start only: it
    /// reads all of /proc).
    pub fn find_anywhere(&mut self, netns: u32, pid: u32, tid: u32) -> Option<PortRange> {
        self.find_in(netns, pid, tid, true)
    }

    fn find_in(&mut self, netns: u32, pid: u32, tid: u32, scan: bool) -> Option<PortRange> {
        if self.tried(netns) {
            return None;
        }
        let result = if Some(netns) == self.own {
            read_here(netns).map_err(Miss::Failed)
        } else {
            self.look(netns, pid, tid, scan)
        };
        match result {
            Ok(range) => {
                self.settled.insert(netns);
                self.failing.remove(&netns);
                Some(range)
            }
            Err(Miss::NotThere) => {
                self.settled.insert(netns);
                self.failing.remove(&netns);
                None
            }
            Err(Miss::Failed(e)) => {
                let why = e.to_string();
                if !self.failing.contains_key(&netns) {
                    eprintln!(
                        "port-tracer: cannot read the port range of network namespace {netns} \
                         ({why}); trying again as its events come"
                    );
                }
                self.failing.insert(netns, (Instant::now() + RETRY, why));
                None
            }
        }
    }

    /// Tries every path to `netns`: the first range read wins; else a failure, if any
    /// path failed, or `NotThere`.
    fn look(&self, netns: u32, pid: u32, tid: u32, scan: bool) -> Result<PortRange, Miss> {
        let mut paths = Vec::new();
        if pid != 0 {
            paths.push(PathBuf::from(format!("/proc/{pid}/task/{tid}/ns/net")));
            paths.push(PathBuf::from(format!("/proc/{pid}/ns/net")));
        }
        match std::fs::read_dir("/run/netns") {
            Ok(named) => paths.extend(named.flatten().map(|e| e.path())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Miss::Failed(e)),
        }
        let mut failure = None;
        for path in paths {
            match read_in(netns, path) {
                Ok(r) => return Ok(r),
                Err(Miss::NotThere) => {}
                Err(failed) => failure = Some(failed),
            }
        }
        if let Some(path) = scan.then(|| held::namespaces().remove(&netns)).flatten() {
            match read_in(netns, path) {
                Ok(r) => return Ok(r),
                Err(Miss::NotThere) => {}
                Err(failed) => failure = Some(failed),
            }
        }
        Err(failure.unwrap_or(Miss::NotThere))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_that_failed_is_tried_again_later_and_a_found_one_never() {
        let mut f = RangeFinder::default();
        f.failing
            .insert(7, (Instant::now() + RETRY, "Too many open files".into()));
        assert!(f.tried(7), "waiting for its next try");
        f.failing
            .insert(7, (Instant::now() - RETRY, "Too many open files".into()));
        assert!(!f.tried(7), "due again");
        assert_eq!(
            f.unreadable().collect::<Vec<_>>(),
            [(7, "Too many open files")]
        );
        f.settled.insert(8);
        assert!(f.tried(8));
        assert!(!f.tried(9));
    }
}
