//! The kprobe tier: kprobes and kretprobes on the hooks' kernel functions. One program may
//! serve several functions (inet_bind and inet6_bind): it is loaded once, attached to each.

use anyhow::{Context, Result};
use aya::{programs::KProbe, Ebpf};

use super::hooks::{resolve, HOOKS};

fn attach_one(ebpf: &mut Ebpf, prog: &str, func: &str) -> Result<()> {
    let p: &mut KProbe = ebpf
        .program_mut(prog)
        .context(prog.to_string())?
        .try_into()?;
    if p.fd().is_err() {
        p.load().with_context(|| format!("loading {prog}"))?;
    }
    p.attach(func, 0)
        .with_context(|| format!("attaching {prog} to {func}"))?;
    Ok(())
}

pub fn attach(ebpf: &mut Ebpf, btf_rs: &btf_rs::Btf) -> Result<()> {
    for hook in HOOKS {
        let Some(func) = resolve(btf_rs, hook)? else {
            continue;
        };
        if let Some(p) = hook.entry {
            attach_one(ebpf, p.kprobe, func)?;
        }
        if let Some(p) = hook.exit {
            attach_one(ebpf, p.kprobe, func)?;
        }
    }
    Ok(())
}
