//! The kernel functions the fentry and kprobe tiers hook, shared by both, with the
//! parameter counts the programs assume (checked against BTF before attaching).

use anyhow::{bail, Result};
use btf_rs::{Btf, Type};
use port_tracer_common::programs as P;

/// One hooked kernel function.
pub struct Hook {
    /// Names it has had, newest first: the first that exists is used.
    pub names: &'static [&'static str],
    /// Parameters the function takes. An fexit program finds the return value after them,
    /// so for hooks with an exit program a kernel where the count differs is refused
    /// rather than misread; entry programs need at least this many.
    pub params: usize,
    /// Program run at entry (fentry / kprobe), if any.
    pub entry: Option<Progs>,
    /// Program run at return (fexit / kretprobe), if any.
    pub exit: Option<Progs>,
    /// A kernel without it (e.g. no IPv6) just loses what it reports.
    pub optional: bool,
}

/// Program names per tier.
#[derive(Clone, Copy)]
pub struct Progs {
    pub fentry: &'static str,
    pub kprobe: &'static str,
}

const fn progs(fentry: &'static str, kprobe: &'static str) -> Option<Progs> {
    Some(Progs { fentry, kprobe })
}

pub const HOOKS: &[Hook] = &[
    Hook {
        names: &["inet_bind"],
        params: 3,
        entry: progs(P::FENTRY_INET_BIND, P::KPROBE_INET_BIND),
        exit: progs(P::FEXIT_INET_BIND, P::KRETPROBE_INET_BIND),
        optional: false,
    },
    Hook {
        names: &["inet6_bind"],
        params: 3,
        entry: progs(P::FENTRY_INET6_BIND, P::KPROBE_INET_BIND),
        exit: progs(P::FEXIT_INET6_BIND, P::KRETPROBE_INET_BIND),
        optional: true,
    },
    Hook {
        names: &["inet_csk_get_port"],
        params: 2,
        entry: progs(P::FENTRY_INET_CSK_GET_PORT, P::KPROBE_INET_CSK_GET_PORT),
        exit: progs(P::FEXIT_INET_CSK_GET_PORT, P::KRETPROBE_INET_CSK_GET_PORT),
        optional: false,
    },
    Hook {
        names: &["udp_lib_get_port"],
        params: 3,
        entry: progs(P::FENTRY_UDP_LIB_GET_PORT, P::KPROBE_UDP_LIB_GET_PORT),
        exit: progs(P::FEXIT_UDP_LIB_GET_PORT, P::KRETPROBE_UDP_LIB_GET_PORT),
        optional: false,
    },
    Hook {
        names: &["inet_hash_connect"],
        params: 2,
        entry: progs(P::FENTRY_INET_HASH_CONNECT, P::KPROBE_HASH_CONNECT),
        exit: progs(P::FEXIT_INET_HASH_CONNECT, P::KRETPROBE_HASH_CONNECT),
        optional: false,
    },
    Hook {
        names: &["inet6_hash_connect"],
        params: 2,
        entry: progs(P::FENTRY_INET6_HASH_CONNECT, P::KPROBE_HASH_CONNECT),
        exit: progs(P::FEXIT_INET6_HASH_CONNECT, P::KRETPROBE_HASH_CONNECT),
        optional: true,
    },
    Hook {
        names: &["__inet_inherit_port"],
        params: 2,
        entry: progs("", P::KPROBE_INET_INHERIT_PORT),
        exit: progs(P::FEXIT_INET_INHERIT_PORT, P::KRETPROBE_INET_INHERIT_PORT),
        optional: false,
    },
    Hook {
        names: &["inet_put_port"],
        params: 1,
        entry: progs(P::FENTRY_INET_PUT_PORT, P::KPROBE_INET_PUT_PORT),
        exit: None,
        optional: false,
    },
    Hook {
        names: &["udp_lib_unhash"],
        params: 1,
        entry: progs(P::FENTRY_UDP_LIB_UNHASH, P::KPROBE_UDP_LIB_UNHASH),
        exit: None,
        optional: false,
    },
    Hook {
        // Renamed in 6.11.
        names: &["inet_twsk_hashdance_schedule", "inet_twsk_hashdance"],
        params: 1,
        entry: progs(P::FENTRY_INET_TWSK_HASHDANCE, P::KPROBE_INET_TWSK_HASHDANCE),
        exit: None,
        optional: false,
    },
    Hook {
        names: &["inet_twsk_kill"],
        params: 1,
        entry: progs(P::FENTRY_INET_TWSK_KILL, P::KPROBE_INET_TWSK_KILL),
        exit: None,
        optional: false,
    },
];

/// Number of parameters of kernel function `name`, or None if BTF does not have it.
pub fn param_count(btf: &Btf, name: &str) -> Result<Option<usize>> {
    let Ok(types) = btf.resolve_types_by_name(name) else {
        return Ok(None);
    };
    for t in types {
        if let Type::Func(f) = t {
            if let Type::FuncProto(p) = btf.resolve_chained_type(&f)? {
                return Ok(Some(p.parameters.len()));
            }
        }
    }
    Ok(None)
}

/// The name `hook` has on this kernel, checked: it exists and takes the parameters the
/// programs read. None for an optional hook the kernel lacks.
pub fn resolve(btf: &Btf, hook: &Hook) -> Result<Option<&'static str>> {
    for &name in hook.names {
        match param_count(btf, name)? {
            Some(n) if n == hook.params || (hook.exit.is_none() && n > hook.params) => {
                return Ok(Some(name))
            }
            Some(n) => bail!(
                "unsupported kernel: {name}() takes {n} parameters, port-tracer expects {}",
                hook.params
            ),
            None => {}
        }
    }
    if hook.optional {
        return Ok(None);
    }
    bail!(
        "unsupported kernel: none of {:?} is in the kernel's BTF",
        hook.names
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::offsets::{load_vmlinux_btf, VMLINUX_BTF};

    #[test]
    fn every_hook_exists_with_its_parameters_on_this_kernel() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            crate::test_support::skip(&format!("no {VMLINUX_BTF}"));
            return;
        }
        let btf = load_vmlinux_btf().unwrap();
        for h in HOOKS {
            let name = resolve(&btf, h).unwrap();
            assert!(name.is_some() || h.optional, "{:?}", h.names);
        }
        assert_eq!(param_count(&btf, "no_such_function_here").unwrap(), None);
    }

    /// How the tiers survive kernels that renamed, dropped or changed a hooked function.
    #[test]
    fn renamed_missing_and_changed_functions() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            crate::test_support::skip(&format!("no {VMLINUX_BTF}"));
            return;
        }
        let btf = load_vmlinux_btf().unwrap();
        let hook = |names, params, exit, optional| Hook {
            names,
            params,
            entry: progs("fentry_x", "kprobe_x"),
            exit: if exit {
                progs("fexit_x", "kretprobe_x")
            } else {
                None
            },
            optional,
        };
        // A newer name this kernel lacks: the older one is used (inet_twsk_hashdance in 6.11).
        let renamed = hook(
            &["no_such_function_new_name", "inet_put_port"],
            1,
            false,
            false,
        );
        assert_eq!(resolve(&btf, &renamed).unwrap(), Some("inet_put_port"));
        // Missing and optional: the hook is left out.
        let optional = hook(&["no_such_function_here"], 1, false, true);
        assert_eq!(resolve(&btf, &optional).unwrap(), None);
        // Missing and needed: the tier fails, naming the function.
        let needed = hook(&["no_such_function_here"], 1, false, false);
        let e = resolve(&btf, &needed).unwrap_err().to_string();
        assert!(e.contains("no_such_function_here"), "{e}");
        // A changed parameter list would make an exit program misread the return value.
        let changed = hook(&["inet_put_port"], 2, true, false);
        let e = resolve(&btf, &changed).unwrap_err().to_string();
        assert!(e.contains("inet_put_port() takes 1 parameters"), "{e}");
        // Extra parameters do not move what an entry program reads.
        let entry_only = hook(&["inet_csk_get_port"], 1, false, false);
        assert_eq!(
            resolve(&btf, &entry_only).unwrap(),
            Some("inet_csk_get_port")
        );
    }
}
