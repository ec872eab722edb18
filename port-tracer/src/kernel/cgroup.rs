//! The cgroup tier: cgroup socket hooks and a sockops program at the cgroup v2 root, with
//! the raw tracepoints of the tracepoint tier, and no syscall tracepoint (which would put
//! every syscall of every task on the slow path while attached).

use anyhow::{Context, Result};
use aya::{
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps},
    Ebpf,
};
use port_tracer_common::programs as P;

use super::{
    cgroup2_root, privileges,
    tracepoint::{attach_cgroup_sock, attach_raw_tracepoints},
};

/// cgroup sock programs (`post_bind4/6`, `sock_release`).
const SOCK: [&str; 3] = [P::POST_BIND4, P::POST_BIND6, P::UDP_SOCK_RELEASE];
/// cgroup sock_addr programs (`bind4/6`, `sendmsg4/6`, `connect4/6`).
const SOCK_ADDR: [&str; 6] = [
    P::BIND4_REQUEST,
    P::BIND6_REQUEST,
    P::UDP_SENDMSG4,
    P::UDP_SENDMSG6,
    P::UDP_CONNECT4,
    P::UDP_CONNECT6,
];

pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    privileges::require(
        caps::Capability::CAP_NET_ADMIN,
        "by the cgroup tier to attach its socket hooks at the cgroup v2 root",
    )?;
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
    for name in SOCK {
        attach_cgroup_sock(ebpf, name, &cgroup, &root)?;
    }
    for name in SOCK_ADDR {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching cgroup program {name} at {}", root.display()))?;
    }
    let prog: &mut SockOps = ebpf
        .program_mut(P::TCP_SOCK_OPS)
        .context("program tcp_sock_ops missing")?
        .try_into()?;
    prog.load().context("loading tcp_sock_ops")?;
    prog.attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching sockops program at {}", root.display()))?;
    attach_raw_tracepoints(ebpf)
}
