//! The fentry tier: fentry/fexit programs on the hooks' kernel functions.

use anyhow::{Context, Result};
use aya::{
    programs::{FEntry, FExit},
    Btf, Ebpf,
};

use super::hooks::{resolve, HOOKS};

pub fn attach(ebpf: &mut Ebpf, btf_rs: &btf_rs::Btf, btf: &Btf) -> Result<()> {
    for hook in HOOKS {
        let Some(func) = resolve(btf_rs, hook)? else {
            continue;
        };
        if let Some(p) = hook.entry.filter(|p| !p.fentry.is_empty()) {
            let prog: &mut FEntry = ebpf.program_mut(p.fentry).context(p.fentry)?.try_into()?;
            prog.load(func, btf)
                .with_context(|| format!("loading fentry program for {func}"))?;
            prog.attach()
                .with_context(|| format!("attaching fentry to {func}"))?;
        }
        if let Some(p) = hook.exit {
            let prog: &mut FExit = ebpf.program_mut(p.fentry).context(p.fentry)?.try_into()?;
            prog.load(func, btf)
                .with_context(|| format!("loading fexit program for {func}"))?;
            prog.attach()
                .with_context(|| format!("attaching fexit to {func}"))?;
        }
    }
    Ok(())
}
