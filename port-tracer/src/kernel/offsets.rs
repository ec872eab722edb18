//! Kernel struct layout, resolved from the running kernel's BTF (`/sys/kernel/btf/vmlinux`)
//! and symbol addresses from `/proc/kallsyms`. The programs read fields at these offsets, so
//! nothing depends on a layout compiled in.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use port_tracer_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offset of `path` (dot-separated members, looking through anonymous structs and
/// unions) inside `struct strukt`.
pub fn member_offset(btf: &Btf, strukt: &str, path: &str) -> Result<u32> {
    let ty = btf
        .resolve_types_by_name(strukt)
        .with_context(|| format!("struct {strukt} not in BTF"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| anyhow!("struct {strukt} not in BTF"))?;
    let mut bits = 0u32;
    let mut cur = ty;
    for name in path.split('.') {
        let (off, next) = find_member(btf, &cur, name)?
            .ok_or_else(|| anyhow!("no member {name} in struct {strukt} (looking for {path})"))?;
        bits += off;
        cur = next;
    }
    if !bits.is_multiple_of(8) {
        bail!("{strukt}.{path} is a bit-field");
    }
    Ok(bits / 8)
}

/// Skips typedefs and qualifiers.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) => btf.resolve_chained_type(t)?,
            Type::Restrict(t) => btf.resolve_chained_type(t)?,
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

/// Finds member `name` of a struct or union type, descending into anonymous members.
/// Returns its bit offset and its type.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        let mty = strip(btf, btf.resolve_chained_type(m)?)?;
        if mname == name {
            return Ok(Some((m.bit_offset(), mty)));
        }
        if mname.is_empty() {
            if let Some((off, t)) = find_member(btf, &mty, name)? {
                return Ok(Some((m.bit_offset() + off, t)));
            }
        }
    }
    Ok(None)
}

/// Address of a kernel symbol, from /proc/kallsyms (0 when hidden by kptr_restrict).
pub fn kallsyms_address(name: &str) -> Result<Option<u64>> {
    let text = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(addr), Some(_), Some(sym)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if sym == name {
            let addr = u64::from_str_radix(addr, 16).context("bad address in /proc/kallsyms")?;
            return Ok((addr != 0).then_some(addr));
        }
    }
    Ok(None)
}

/// Loads the running kernel's BTF, with a clear error when it has none.
pub fn load_vmlinux_btf() -> Result<Btf> {
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "missing BTF: {VMLINUX_BTF} does not exist; port-tracer needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2020)"
        );
    }
    // Read whole, then parsed: parsing from the file makes some 130,000 small reads and
    // seeks (0.3 s here, seconds under emulation).
    let bytes = std::fs::read(VMLINUX_BTF)
        .with_context(|| format!("reading kernel BTF from {VMLINUX_BTF}"))?;
    Btf::from_bytes(&bytes).with_context(|| format!("parsing kernel BTF from {VMLINUX_BTF}"))
}

/// Resolves every offset the programs use.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets> {
    let sc = |f: &str| member_offset(btf, "sock_common", f);
    let net_ns = member_offset(btf, "net", "ns")?;
    let ns_inum = member_offset(btf, "ns_common", "inum")?;
    check_sock_head(
        sc("skc_daddr")?,
        sc("skc_rcv_saddr")?,
        sc("skc_dport")?,
        sc("skc_num")?,
        sc("skc_family")?,
    )?;
    let (daddr, net) = (sc("skc_daddr")?, sc("skc_net")?);
    if net.checked_sub(daddr) != Some(port_tracer_common::SOCK_HEAD_NET as u32) {
        bail!(
            "unsupported kernel: struct sock_common's skc_net sits at {net}, not {} bytes \
             after skc_daddr ({daddr}) where port-tracer reads it",
            port_tracer_common::SOCK_HEAD_NET
        );
    }
    Ok(KernelOffsets {
        skc_daddr: sc("skc_daddr")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_dport: sc("skc_dport")?,
        skc_num: sc("skc_num")?,
        skc_family: sc("skc_family")?,
        skc_net: sc("skc_net")?,
        skc_v6_daddr: sc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        sk_protocol: member_offset(btf, "sock", "sk_protocol")?,
        sk_type: member_offset(btf, "sock", "sk_type")?,
        inet_sport: member_offset(btf, "inet_sock", "inet_sport")?,
        icsk_bind_hash: member_offset(btf, "inet_connection_sock", "icsk_bind_hash")?,
        net_inum: net_ns + ns_inum,
        task_files: member_offset(btf, "task_struct", "files")?,
        files_fdt: member_offset(btf, "files_struct", "fdt")?,
        fdt_max_fds: member_offset(btf, "fdtable", "max_fds")?,
        fdt_fd: member_offset(btf, "fdtable", "fd")?,
        file_private_data: member_offset(btf, "file", "private_data")?,
        socket_sk: member_offset(btf, "socket", "sk")?,
        timer_function: member_offset(btf, "timer_list", "function")?,
        tw_timer: member_offset(btf, "inet_timewait_sock", "tw_timer")?,
        skc_state: sc("skc_state")?,
        task_group_leader: member_offset(btf, "task_struct", "group_leader")?,
        task_comm: member_offset(btf, "task_struct", "comm")?,
        // 6.3+; the field is `struct { u16 lo, hi; }` until 6.7, `u32 lo | hi << 16` since:
        // the same four bytes.
        inet_local_port_range: member_offset(btf, "inet_sock", "local_port_range").unwrap_or(0),
        task_real_parent: member_offset(btf, "task_struct", "real_parent")?,
        task_tgid: member_offset(btf, "task_struct", "tgid")?,
        _pad: 0,
        // Only the tracepoint tier needs it: read then (kallsyms is slow to read).
        tw_timer_handler: 0,
    })
}

/// The programs read `sock_common`'s addresses, ports and family as one 20-byte block
/// starting at `skc_daddr` (emit.rs `SockHead`): refuse a kernel laid out otherwise.
fn check_sock_head(daddr: u32, rcv_saddr: u32, dport: u32, num: u32, family: u32) -> Result<()> {
    let want = [daddr + 4, daddr + 12, daddr + 14, daddr + 16];
    if [rcv_saddr, dport, num, family] != want {
        bail!(
            "unsupported kernel: struct sock_common's skc_daddr/skc_rcv_saddr/skc_dport/skc_num/\
             skc_family sit at {daddr}/{rcv_saddr}/{dport}/{num}/{family}, not at the consecutive \
             offsets port-tracer reads them from"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_this_kernels_layout() {
        if !Path::new(VMLINUX_BTF).exists() {
            crate::test_support::skip(&format!("no {VMLINUX_BTF}"));
            return;
        }
        let btf = load_vmlinux_btf().unwrap();
        let o = resolve(&btf).unwrap();
        // struct sock starts with sock_common; these sit in its first cache line.
        assert!(o.skc_num < 64 && o.skc_family < 64, "{o:?}");
        assert_eq!(o.skc_rcv_saddr, o.skc_daddr + 4);
        assert_ne!(o.sk_protocol, 0);
        assert!(o.inet_sport > o.sk_protocol);
        assert!(member_offset(&btf, "sock", "no_such_field").is_err());
    }

    #[test]
    fn sock_head_layout_is_checked() {
        assert!(check_sock_head(0, 4, 12, 14, 16).is_ok());
        let e = check_sock_head(0, 4, 12, 14, 18).unwrap_err().to_string();
        assert!(
            e.starts_with("unsupported kernel") && e.contains("0/4/12/14/18"),
            "{e}"
        );
    }
}
