//! Each network namespace's ephemeral port range, read from inside it: the sysctls under
//! /proc/sys/net are those of the reading thread's namespace.

use std::{collections::HashSet, os::fd::AsRawFd, os::unix::fs::MetadataExt, path::PathBuf};

use crate::port_range::PortRange;

use super::held;

/// A small /proc or /sys file, trimmed; empty when unreadable.
pub(crate) fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The range of the calling thread's namespace `netns`.
fn read_here(netns: u32) -> Option<PortRange> {
    PortRange::parse(
        netns,
        &read_trimmed("/proc/sys/net/ipv4/ip_local_port_range"),
        &read_trimmed("/proc/sys/net/ipv4/ip_local_reserved_ports"),
    )
}

/// The range of the tracer's own namespace.
pub fn own() -> Option<PortRange> {
    read_here(held::own_netns().ok()?)
}

/// The range of the namespace `path` opens, if it is `netns`.
fn read_in(netns: u32, path: PathBuf) -> Option<PortRange> {
    let file = std::fs::File::open(&path).ok()?;
    if file.metadata().ok()?.ino() as u32 != netns {
        return None;
    }
    // setns() changes only the calling thread: do it in a thread of its own.
    std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; only this short-lived thread moves.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        read_here(netns)
    })
    .join()
    .ok()?
}

/// Finds namespaces' ranges, each looked for once: through the thread an event came
/// from, else through any thread or /run/netns name in that namespace.
#[derive(Debug, Default)]
pub struct RangeFinder {
    tried: HashSet<u32>,
    own: Option<u32>,
}

impl RangeFinder {
    pub fn new() -> Self {
        RangeFinder {
            tried: HashSet::new(),
            own: held::own_netns().ok(),
        }
    }

    /// Whether `netns` was looked for already.
    pub fn tried(&self, netns: u32) -> bool {
        self.tried.contains(&netns)
    }

    /// The range of `netns`, where thread `pid`/`tid` was when it made an event; None when
    /// already looked for, or not found (the thread left or ended, and no /run/netns name
    /// opens it). Cheap enough for the collector's loop: no scan of every process.
    pub fn find(&mut self, netns: u32, pid: u32, tid: u32) -> Option<PortRange> {
        self.find_in(netns, pid, tid, false)
    }

    /// [`RangeFinder::find`], falling back to a scan of every thread (at start only: it
    /// reads all of /proc).
    pub fn find_anywhere(&mut self, netns: u32, pid: u32, tid: u32) -> Option<PortRange> {
        self.find_in(netns, pid, tid, true)
    }

    fn find_in(&mut self, netns: u32, pid: u32, tid: u32, scan: bool) -> Option<PortRange> {
        if !self.tried.insert(netns) {
            return None;
        }
        if Some(netns) == self.own {
            return own();
        }
        let mut paths = Vec::new();
        if pid != 0 {
            paths.push(PathBuf::from(format!("/proc/{pid}/task/{tid}/ns/net")));
            paths.push(PathBuf::from(format!("/proc/{pid}/ns/net")));
        }
        let named = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten();
        paths.extend(named.map(|e| e.path()));
        for path in paths {
            if let Some(r) = read_in(netns, path) {
                return Some(r);
            }
        }
        let path = scan.then(|| held::namespaces().remove(&netns)).flatten()?;
        read_in(netns, path)
    }
}
