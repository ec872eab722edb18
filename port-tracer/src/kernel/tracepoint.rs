//! The tracepoint tier: classic syscall tracepoints, raw tracepoints for TCP state and
//! TIME_WAIT timers, and a cgroup v2 `sock_release` hook for UDP.

use anyhow::{Context, Result};
use aya::{
    programs::{CgroupAttachMode, CgroupSock, RawTracePoint, TracePoint},
    Ebpf,
};

use port_tracer_common::programs::{RAW_TRACEPOINTS, SYSCALLS, UDP_SOCK_RELEASE};

use super::{cgroup2_root, ensure_tracefs};

pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
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
    // Each program is named as its raw tracepoint.
    for name in RAW_TRACEPOINTS {
        let prog: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(name)
            .with_context(|| format!("attaching raw tracepoint {name}"))?;
    }
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
    let prog: &mut CgroupSock = ebpf
        .program_mut(UDP_SOCK_RELEASE)
        .context("program udp_sock_release missing")?
        .try_into()?;
    prog.load().context("loading udp_sock_release")?;
    // Attached as a BPF link, which always coexists with other programs: links take no
    // attach flags (the kernel refuses BPF_F_ALLOW_MULTI there).
    prog.attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching cgroup sock_release at {}", root.display()))?;
    Ok(())
}
