//! The tracepoint tier: classic syscall tracepoints, raw tracepoints for TCP state and
//! TIME_WAIT timers, and a cgroup v2 `sock_release` hook for UDP.

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{CgroupAttachMode, CgroupSock, RawTracePoint, TracePoint},
    Ebpf,
};

use port_tracer_common::programs::{RAW_TRACEPOINTS, SYSCALLS, UDP_SOCK_RELEASE};

use super::{cgroup2_root, privileges};

pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    privileges::require(
        caps::Capability::CAP_NET_ADMIN,
        "by the tracepoint tier to see UDP sockets close (a cgroup sock_release program)",
    )?;
    ensure_tracefs()?;
    for name in SYSCALLS {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach("syscalls", name)
            .with_context(|| format!("attaching syscalls:{name}"))?;
    }
    attach_raw_tracepoints(ebpf)?;
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
    attach_cgroup_sock(ebpf, UDP_SOCK_RELEASE, &cgroup, &root)
}

/// Attaches the raw tracepoints both the tracepoint and the cgroup tier use: TCP state
/// changes and destruction, TIME_WAIT timers. Each program is named as its tracepoint.
pub fn attach_raw_tracepoints(ebpf: &mut Ebpf) -> Result<()> {
    for name in RAW_TRACEPOINTS {
        let prog: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(name)
            .with_context(|| format!("attaching raw tracepoint {name}"))?;
    }
    Ok(())
}

/// Loads cgroup sock program `name` and attaches it at the cgroup v2 root `cgroup`.
pub fn attach_cgroup_sock(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &std::fs::File,
    root: &std::path::Path,
) -> Result<()> {
    let prog: &mut CgroupSock = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing"))?
        .try_into()?;
    prog.load().with_context(|| format!("loading {name}"))?;
    // Attached as a BPF link, which always coexists with other programs: links take no
    // attach flags (the kernel refuses BPF_F_ALLOW_MULTI there).
    prog.attach(cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching cgroup program {name} at {}", root.display()))?;
    Ok(())
}

/// Where the kernel expects tracefs, and where debugfs shows it on older setups.
const TRACEFS_EVENTS: [&str; 2] = [
    "/sys/kernel/tracing/events",
    "/sys/kernel/debug/tracing/events",
];

/// Makes sure the tracepoints' ids can be read from tracefs. Where it is not mounted, it
/// is mounted in a mount namespace of the tracer's own, so that the host's mounts never
/// change: nothing to undo at exit, nothing left behind by a killed tracer, no other
/// tracer's tracefs taken away.
fn ensure_tracefs() -> Result<()> {
    if tracefs_found()? {
        return Ok(());
    }
    privileges::require(
        caps::Capability::CAP_SYS_ADMIN,
        "to mount tracefs, which is not mounted (or mount it first: \
         `mount -t tracefs nodev /sys/kernel/tracing`)",
    )?;
    let os_error = |what: &str| {
        let err = std::io::Error::last_os_error();
        anyhow!(
            "tracefs is not mounted and {what} failed ({err}); mount it with \
             `mount -t tracefs nodev /sys/kernel/tracing` and try again"
        )
    };
    // SAFETY: plain syscalls on constant strings. unshare() moves the calling thread
    // alone into a copy of the mount namespace: the thread that attaches (and any it
    // starts later). Marking every mount a slave keeps what is mounted here from
    // propagating back, while the host's later mounts (a new /run/netns name) still come.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os_error("entering a mount namespace of its own"));
        }
        let none = std::ptr::null();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_SLAVE,
            none.cast(),
        ) != 0
        {
            return Err(os_error("making its mount namespace private"));
        }
        if libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            none.cast(),
        ) != 0
        {
            return Err(os_error("mounting it"));
        }
    }
    // Mounted, but perhaps not readable by this user.
    tracefs_found()?;
    eprintln!(
        "port-tracer: tracefs was not mounted: mounted it at /sys/kernel/tracing in a mount \
         namespace of port-tracer's own (the host's mounts do not change)"
    );
    Ok(())
}

/// Whether tracefs is mounted; an error if it is but this user cannot read it.
fn tracefs_found() -> Result<bool> {
    for dir in TRACEFS_EVENTS {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => return Ok(true),
            // Root's only (mode 0700 since Linux 6.6, say).
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "cannot read tracefs at {dir} ({e}); not as root, the tracepoint tier needs \
                 CAP_DAC_READ_SEARCH to read the tracepoints' ids there"
            ),
            _ => {}
        }
    }
    Ok(false)
}
