//! The tracepoint tier: classic syscall tracepoints, raw tracepoints for TCP state and
//! TIME_WAIT timers, and a cgroup v2 `sock_release` hook for UDP.

use anyhow::{Context, Result};
use aya::{
    programs::{CgroupAttachMode, CgroupSock, RawTracePoint, TracePoint},
    Ebpf,
};

use super::{cgroup2_root, ensure_tracefs};

const SYSCALLS: &[&str] = &[
    "sys_enter_bind",
    "sys_exit_bind",
    "sys_enter_listen",
    "sys_exit_listen",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_sendmmsg",
    "sys_exit_sendmmsg",
];

/// (program, raw tracepoint)
const RAW: &[(&str, &str)] = &[
    ("inet_sock_set_state", "inet_sock_set_state"),
    ("tcp_destroy_sock", "tcp_destroy_sock"),
    ("timer_start", "timer_start"),
    ("timer_cancel", "timer_cancel"),
    ("timer_expire_entry", "timer_expire_entry"),
];

pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    ensure_tracefs()?;
    for &name in SYSCALLS {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach("syscalls", name)
            .with_context(|| format!("attaching syscalls:{name}"))?;
    }
    for &(name, tp) in RAW {
        let prog: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(tp)
            .with_context(|| format!("attaching raw tracepoint {tp}"))?;
    }
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
    let prog: &mut CgroupSock = ebpf
        .program_mut("udp_sock_release")
        .context("program udp_sock_release missing")?
        .try_into()?;
    prog.load().context("loading udp_sock_release")?;
    // Attached as a BPF link, which always coexists with other programs: links take no
    // attach flags (the kernel refuses BPF_F_ALLOW_MULTI there).
    prog.attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching cgroup sock_release at {}", root.display()))?;
    Ok(())
}
