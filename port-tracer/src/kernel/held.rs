//! Sockets that hold ports when tracing starts, read from the kernel with sock_diag netlink
//! in every network namespace, after the programs are attached: a socket released later
//! is then known to have been held before, not missed.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::PathBuf,
};

use anyhow::{Context, Result};

use crate::{
    event::{Comm, Endpoints, Family, Proto, Task},
    lifetime::HeldAtStart,
};

/// The inode number of the tracer's network namespace.
pub fn own_netns() -> Result<u32> {
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .ino() as u32)
}

/// Every network namespace in use: those of running threads and those named in
/// /run/netns. Inode number -> a path that opens it.
pub fn namespaces() -> BTreeMap<u32, PathBuf> {
    let mut out = BTreeMap::new();
    let dir = |p: PathBuf| std::fs::read_dir(p).into_iter().flatten().flatten();
    let is_id = |e: &std::fs::DirEntry| {
        e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
    };
    // A thread can be in a namespace of its own (unshare/setns affect one thread).
    let threads = dir("/proc".into())
        .filter(is_id)
        .flat_map(move |p| dir(p.path().join("task")).filter(is_id))
        .map(|t| t.path().join("ns/net"));
    let paths = threads.chain(dir("/run/netns".into()).map(|e| e.path()));
    for path in paths {
        // Processes come and go while we look: skip what vanished.
        if let Ok(meta) = std::fs::metadata(&path) {
            out.entry(meta.ino() as u32).or_insert(path);
        }
    }
    out
}

/// A socket found by sock_diag, before its owner is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub ends: Endpoints,
    /// TCP state (for a TIME_WAIT socket its substate: TIME_WAIT, or FIN_WAIT2 for an
    /// orphan waiting for its peer's FIN, which `ss` shows as FIN-WAIT-2).
    pub state: u8,
    /// A TIME_WAIT socket (`inet_timewait_sock`: sock_diag reports its timer as 3).
    pub time_wait: bool,
    pub uid: u32,
    /// Socket inode (0 for TIME_WAIT sockets, which have no file).
    pub inode: u32,
}

const TCP_LISTEN: u8 = 10;

/// Sockets holding ports in every network namespace, with a process that has each open.
/// Namespaces and processes that vanish while being read are skipped.
pub fn snapshot() -> Result<Vec<HeldAtStart>> {
    let seen_ns = crate::clock::monotonic_ns();
    let sockets = diag_snapshot()?;
    let owners = socket_owners();
    Ok(sockets
        .into_iter()
        .map(|s| {
            let mut owner = owners.get(&s.inode).copied().unwrap_or_default();
            if owner.is_known() {
                owner.uid = s.uid;
            }
            HeldAtStart {
                listening: s.ends.proto == Proto::Tcp && s.state == TCP_LISTEN,
                ends: s.ends,
                owner,
                time_wait: s.time_wait,
                seen_ns,
            }
        })
        .collect())
}

/// Socket inode -> a process holding it, from /proc/PID/fd (as `ss -p` does).
pub fn socket_owners() -> std::collections::HashMap<u32, Task> {
    let mut out = std::collections::HashMap::new();
    let cgroup2 = super::cgroup2_root().ok();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for p in procs {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let mut comm = None;
        let mut ppid = None;
        let mut cgroup_id = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) else {
                continue;
            };
            let Ok(inode) = inode.parse::<u32>() else {
                continue;
            };
            let comm = *comm.get_or_insert_with(|| {
                let c = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                Comm::new(c.trim_end())
            });
            let ppid = *ppid.get_or_insert_with(|| {
                let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
                parent_of_stat(&stat)
            });
            let cgroup_id = *cgroup_id.get_or_insert_with(|| {
                let cgroups = std::fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
                cgroup2
                    .as_deref()
                    .map_or(0, |root| cgroup_id_of(root, &cgroups))
            });
            out.entry(inode).or_insert(Task {
                pid,
                tid: pid,
                uid: 0,
                ppid,
                cgroup_id,
                comm,
                thread: Comm::default(),
            });
        }
    }
    out
}

/// The cgroup v2 id (its directory's inode number) of the cgroup a /proc/PID/cgroup text
/// names, under the cgroup v2 mount `root`; 0 if none (gone, or a path that leaves it).
fn cgroup_id_of(root: &std::path::Path, proc_cgroup: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return 0;
    };
    let rel = std::path::Path::new(path.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return 0;
    }
    std::fs::metadata(root.join(rel)).map_or(0, |m| m.ino())
}

/// The parent pid in a /proc/PID/stat line: the field after the state, after the name in
/// parentheses (which may hold anything, parentheses and spaces included: the last `)`
/// ends it).
fn parent_of_stat(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Every socket with a local port in every network namespace in use.
pub fn diag_snapshot() -> Result<Vec<DiagSocket>> {
    let own = own_netns()?;
    let mut held = dump_all(own)?;
    for (netns, path) in namespaces() {
        if netns == own {
            continue;
        }
        // setns() changes only the calling thread: do it in a thread of its own.
        let result = std::thread::spawn(move || -> io::Result<Vec<DiagSocket>> {
            let file = std::fs::File::open(&path)?;
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            dump_all(netns).map_err(io::Error::other)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sock_diag thread panicked"))?;
        if let Ok(more) = result {
            held.extend(more);
        }
    }
    Ok(held)
}

/// TCP and UDP, IPv4 and IPv6, in the calling thread's namespace (whose inode is `netns`:
/// it labels what is found), as `ss -tuan` lists them.
pub fn dump_all(netns: u32) -> Result<Vec<DiagSocket>> {
    let sock = netlink_socket().context("opening a sock_diag netlink socket")?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for proto in [Proto::Tcp, Proto::Udp] {
            out.extend(
                dump(&sock, family, proto, netns)
                    .with_context(|| format!("sock_diag dump of {} sockets", proto.as_str()))?,
            );
        }
    }
    Ok(out)
}

fn netlink_socket() -> io::Result<OwnedFd> {
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
/// struct inet_diag_req_v2: family, protocol, ext, pad, states, then a 48-byte sockid.
const REQ_LEN: usize = 56;
/// struct inet_diag_msg: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const MSG_LEN: usize = 72;
/// TCP_NEW_SYN_RECV: request sockets share their listener's port, they hold none.
const TCP_NEW_SYN_RECV: u8 = 12;
/// `idiag_timer` of a TIME_WAIT socket.
const TIMER_TIME_WAIT: u8 = 3;

fn dump(sock: &OwnedFd, family: u8, proto: Proto, netns: u32) -> io::Result<Vec<DiagSocket>> {
    let mut req = [0u8; NLMSG_HDR + REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[NLMSG_HDR] = family;
    req[NLMSG_HDR + 1] = match proto {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    };
    req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&u32::MAX.to_ne_bytes()); // all states
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
            if len < NLMSG_HDR || len > msgs.len() {
                return Err(io::Error::other("truncated sock_diag message"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(msgs[16..20].try_into().unwrap_or([0; 4]));
                    // No IPv6 (or no UDP diag module): nothing to report for this pair.
                    if -errno == libc::ENOENT || -errno == libc::EAFNOSUPPORT {
                        return Ok(out);
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(h) = parse_diag_msg(&msgs[NLMSG_HDR..len], proto, netns) {
                        out.push(h);
                    }
                }
                _ => {}
            }
            msgs = &msgs[(len + 3) & !3..];
        }
    }
}

/// One struct inet_diag_msg.
fn parse_diag_msg(m: &[u8], proto: Proto, netns: u32) -> Option<DiagSocket> {
    if m.len() < MSG_LEN {
        return None;
    }
    let (family, state) = (m[0], m[1]);
    if proto == Proto::Tcp && state == TCP_NEW_SYN_RECV {
        return None;
    }
    let id = &m[4..52];
    let lport = u16::from_be_bytes([id[0], id[1]]);
    let rport = u16::from_be_bytes([id[2], id[3]]);
    let v4 = family == libc::AF_INET as u8;
    let addr = |b: &[u8]| -> IpAddr {
        if v4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap()))
        }
    };
    let word = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
    (lport != 0).then(|| DiagSocket {
        ends: Endpoints {
            proto,
            family: if v4 { Family::Ipv4 } else { Family::Ipv6 },
            netns,
            laddr: addr(&id[4..20]),
            lport,
            raddr: addr(&id[20..36]),
            rport,
        },
        state,
        time_wait: proto == Proto::Tcp && m[2] == TIMER_TIME_WAIT,
        uid: word(64),
        inode: word(68),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_path_is_its_directory_under_the_mount_and_never_outside() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("held-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(root.join("system.slice/a.service")).unwrap();
        let ino = std::fs::metadata(root.join("system.slice/a.service"))
            .unwrap()
            .ino();
        let text = "1:name=systemd:/\n0::/system.slice/a.service\n";
        assert_eq!(cgroup_id_of(&root, text), ino);
        let root_ino = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(cgroup_id_of(&root, "0::/\n"), root_ino);
        assert_eq!(cgroup_id_of(&root, "0::/gone\n"), 0);
        assert_eq!(cgroup_id_of(&root, "0::/../etc\n"), 0);
        assert_eq!(cgroup_id_of(&root, "1:cpu:/x\n"), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_parent_comes_after_a_name_of_any_shape() {
        assert_eq!(parent_of_stat("42 (curl) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of_stat("42 (a) b) 3 (c) R 99 1 1"), Some(99));
        assert_eq!(parent_of_stat("42 (x"), None);
        assert_eq!(parent_of_stat(""), None);
    }

    #[test]
    fn parses_a_diag_message() {
        let mut m = [0u8; 72];
        m[0] = libc::AF_INET as u8;
        m[1] = 10; // LISTEN
        m[4..6].copy_from_slice(&8080u16.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&777u32.to_ne_bytes());
        let h = parse_diag_msg(&m, Proto::Tcp, 5).unwrap();
        assert_eq!(h.ends.lport, 8080);
        assert_eq!(h.ends.laddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(h.ends.netns, 5);
        assert_eq!((h.state, h.uid, h.inode), (TCP_LISTEN, 1000, 777));
        m[1] = TCP_NEW_SYN_RECV;
        assert!(parse_diag_msg(&m, Proto::Tcp, 5).is_none());
        assert!(parse_diag_msg(&m[..60], Proto::Udp, 5).is_none());
    }

    #[test]
    fn snapshot_sees_a_listening_socket_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let netns = own_netns().unwrap();
        let held = dump_all(netns).unwrap();
        let mine = held
            .iter()
            .find(|h| h.ends.lport == port && h.ends.proto == Proto::Tcp && h.ends.netns == netns)
            .unwrap_or_else(|| panic!("port {port} not in {held:?}"));
        assert_eq!(mine.state, TCP_LISTEN);
        let owner = socket_owners()[&mine.inode];
        assert_eq!(owner.pid, std::process::id(), "this process holds it");
    }
}
