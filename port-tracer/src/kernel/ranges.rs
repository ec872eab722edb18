//! Each network namespace's ephemeral port range, read from inside it: the sysctls under
//! /proc/sys/net are those of the reading thread's namespace.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::AsRawFd,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::port_range::PortRange;

use super::{held, privileges};

/// How long a namespace whose range could not be read waits before the next try.
const RETRY: Duration = Duration::from_secs(1);

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

/// The range of the namespace `path` opens, if it is `netns`. The calling thread (the
/// range reader) enters it, and stays there until the next look.
fn read_in(netns: u32, path: PathBuf) -> Result<PortRange, Miss> {
    let file = std::fs::File::open(&path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH | libc::ENOTDIR) => Miss::NotThere,
        _ => Miss::Failed(e),
    })?;
    let inode = file.metadata().map_err(Miss::Failed)?.ino() as u32;
    if inode != netns {
        return Err(Miss::NotThere);
    }
    // SAFETY: a valid namespace fd; setns() moves the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err(Miss::Failed(io::Error::other(format!(
                "{e}: entering a network namespace needs CAP_SYS_ADMIN"
            ))));
        }
        return Err(Miss::Failed(e));
    }
    read_here(netns).map_err(Miss::Failed)
}

/// What the range reader is asked: `netns`, where thread `pid`/`tid` was (0: unknown),
/// through every thread of the host too if `scan`.
#[derive(Debug)]
struct Look {
    netns: u32,
    pid: u32,
    tid: u32,
    scan: bool,
}

/// The one thread that opens and enters other network namespaces. It keeps the
/// capabilities for that ([`privileges::RANGE_READER_KEEPS`]) when the collector drops
/// them, and it is the only thread that moves between namespaces.
#[derive(Debug)]
struct Reader {
    ask: mpsc::Sender<Look>,
    answers: mpsc::Receiver<Result<PortRange, Miss>>,
}

impl Reader {
    fn start() -> Result<Reader> {
        let (ask, asked) = mpsc::channel::<Look>();
        let (answer, answers) = mpsc::channel();
        let (ready, started) = mpsc::channel();
        std::thread::Builder::new()
            .name("netns-range".into())
            .spawn(move || {
                // Its own namespace, to come back to after each look: a thread left in a
                // namespace would keep it alive after its last process left.
                let home = std::fs::File::open("/proc/thread-self/ns/net")
                    .context("opening the tracer's own network namespace");
                let kept = privileges::keep_only(&privileges::RANGE_READER_KEEPS);
                let (home, started) = match (home, kept) {
                    (Ok(home), Ok(())) => (Some(home), Ok(())),
                    (Err(e), _) | (_, Err(e)) => (None, Err(e)),
                };
                if ready.send(started).is_err() {
                    return;
                }
                let Some(home) = home else { return };
                for l in asked {
                    let found = look(l);
                    // SAFETY: a valid namespace fd; moves this thread only.
                    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let e = io::Error::last_os_error();
                        let _ = answer.send(Err(Miss::Failed(io::Error::other(format!(
                            "returning to the tracer's own network namespace: {e}"
                        )))));
                        break;
                    }
                    if answer.send(found).is_err() {
                        break;
                    }
                }
            })
            .context("starting the namespace range reader thread")?;
        started
            .recv()
            .context("the namespace range reader thread ended")??;
        Ok(Reader { ask, answers })
    }

    fn look(&self, l: Look) -> Result<PortRange, Miss> {
        let gone = || Miss::Failed(io::Error::other("the namespace range reader ended"));
        self.ask.send(l).map_err(|_| gone())?;
        self.answers.recv().map_err(|_| gone())?
    }
}

/// Tries every path to `l.netns`: the first range read wins; else a failure, if any
/// path failed, or `NotThere`. Runs in the range reader.
fn look(l: Look) -> Result<PortRange, Miss> {
    let Look {
        netns,
        pid,
        tid,
        scan,
    } = l;
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
    /// None only in unit tests: every other namespace is then not found.
    reader: Option<Reader>,
}

impl RangeFinder {
    /// Starts the range reader thread: before the collector drops its capabilities.
    pub fn new() -> Result<Self> {
        Ok(RangeFinder {
            own: held::own_netns().ok(),
            reader: Some(Reader::start()?),
            ..Default::default()
        })
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
            let l = Look {
                netns,
                pid,
                tid,
                scan,
            };
            self.reader
                .as_ref()
                .map_or(Err(Miss::NotThere), |r| r.look(l))
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
