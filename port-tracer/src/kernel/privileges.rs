//! Who may trace: the capabilities each step needs, checked before the step so that a
//! refusal names the one missing, root or not; and, once the programs are attached and the
//! files open, every capability the run no longer needs dropped (tcpdump's `-Z`).
//!
//! Capabilities belong to threads (capset(2) changes the caller only, and a thread starts
//! with its creator's): the collector's thread drops to [`collector_keeps`] before it
//! starts any other, the namespace-range reader to [`RANGE_READER_KEEPS`].

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

use Capability::{CAP_BPF, CAP_PERFMON, CAP_SETPCAP, CAP_SYS_ADMIN, CAP_SYS_PTRACE};

/// What loading any tier needs, and why. CAP_SYS_ADMIN stands in for both, as the kernel
/// allows.
const LOAD: [(Capability, &str); 2] = [
    (CAP_BPF, "creates BPF maps and loads programs"),
    (
        CAP_PERFMON,
        "loads tracing programs that read kernel memory",
    ),
];

/// Kept by the thread that reads namespaces' port ranges: opening another process's
/// `ns/net` (a ptrace-mode check) and entering it (setns).
pub const RANGE_READER_KEEPS: [Capability; 2] = [CAP_SYS_ADMIN, CAP_SYS_PTRACE];

/// Kept by the collector: reading the lost-event counters is a bpf() call, which kernels
/// before 6.x refuse without CAP_BPF (or CAP_SYS_ADMIN) while unprivileged BPF is disabled
/// (Debian's default). The ring buffer is mapped memory, detaching is closing files: they
/// need nothing.
pub fn collector_keeps() -> [Capability; 1] {
    if has(CAP_BPF) {
        [CAP_BPF]
    } else {
        [CAP_SYS_ADMIN]
    }
}

/// Whether the calling thread holds `cap` (in its effective set).
pub fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// Fails naming every capability missing to load the programs (not whether the user is
/// root: root in a container may lack them, a plain user may hold them).
pub fn check_load() -> Result<()> {
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<_> = LOAD.iter().filter(|(cap, _)| !has(*cap)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(|(cap, _)| cap.to_string()).collect();
    let whys: Vec<String> = missing
        .iter()
        .map(|(cap, why)| format!("with {cap} it {why}"))
        .collect();
    bail!(
        "missing capability {}: port-tracer loads eBPF programs ({}). Run it as root (sudo), \
         or with CAP_BPF and CAP_PERFMON (the cgroup and tracepoint tiers also need \
         CAP_NET_ADMIN, the tracepoint tier, not as root, CAP_DAC_READ_SEARCH); README, \
         \"Privileges\", lists what each is for",
        names.join(" and "),
        whys.join("; ")
    )
}

/// Fails naming `cap` unless the calling thread holds it; `needed` says what for.
pub fn require(cap: Capability, needed: &str) -> Result<()> {
    if has(cap) {
        return Ok(());
    }
    bail!("missing capability {cap}, needed {needed}")
}

/// A perf_event_open() the kernel refused to a process holding CAP_PERFMON but not
/// CAP_SYS_ADMIN: Debian's kernels (5.10, 6.1, at their default `perf_event_paranoid`
/// level 3) want CAP_SYS_ADMIN for kprobe and tracepoint events. Says so.
pub fn explain_perf_refusal(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    let refused = text.contains("perf_event_open")
        && (text.contains("Permission denied") || text.contains("Operation not permitted"));
    if !refused || has(CAP_SYS_ADMIN) {
        return e;
    }
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    e.context(format!(
        "missing capability CAP_SYS_ADMIN: this kernel opens kprobe and tracepoint events \
         only for it, CAP_PERFMON is not enough (kernel.perf_event_paranoid = {paranoid}; \
         Debian's kernels at their default, 3, are so); the fentry tier needs no perf events"
    ))
}

/// Keeps only `keep` (those of it the thread holds) in the calling thread's capability
/// sets: the bounding set first (while CAP_SETPCAP allows it: nothing regained by exec),
/// then the inheritable, ambient, effective and permitted sets.
pub fn keep_only(keep: &[Capability]) -> Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    if has(CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).context("reading capabilities")?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    // Ambient capabilities exist since 4.3; lowering the permitted set clears them anyway.
    let _ = caps::clear(None, CapSet::Ambient);
    let dropping = "dropping capabilities";
    caps::clear(None, CapSet::Inheritable).context(dropping)?;
    caps::set(None, CapSet::Effective, &keep).context(dropping)?;
    caps::set(None, CapSet::Permitted, &keep).context(dropping)?;
    Ok(())
}

/// Names of the calling thread's effective capabilities, sorted.
pub fn effective_names() -> Vec<String> {
    let mut names: Vec<String> = caps::read(None, CapSet::Effective)
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_string())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a thread of its own: what it drops stays there.
    #[test]
    fn a_thread_keeps_only_what_it_names_and_the_others_keep_theirs() {
        if !has(CAP_SYS_ADMIN) {
            crate::test_support::skip("not root");
            return;
        }
        let before = caps::read(None, CapSet::Effective).unwrap();
        let (eff, prm, bnd, inh) = std::thread::spawn(|| {
            keep_only(&[CAP_BPF, CAP_SYS_PTRACE]).unwrap();
            (
                caps::read(None, CapSet::Effective).unwrap(),
                caps::read(None, CapSet::Permitted).unwrap(),
                caps::read(None, CapSet::Bounding).unwrap(),
                caps::read(None, CapSet::Inheritable).unwrap(),
            )
        })
        .join()
        .unwrap();
        let want: CapsHashSet = [CAP_BPF, CAP_SYS_PTRACE].into_iter().collect();
        assert_eq!(eff, want);
        assert_eq!(prm, want);
        assert_eq!(bnd, want);
        assert!(inh.is_empty(), "{inh:?}");
        assert_eq!(caps::read(None, CapSet::Effective).unwrap(), before);
        assert!(check_load().is_ok());
        let refused = std::thread::spawn(|| {
            keep_only(&[CAP_BPF]).unwrap();
            format!("{:#}", check_load().unwrap_err())
        })
        .join()
        .unwrap();
        assert!(
            refused.starts_with("missing capability CAP_PERFMON:"),
            "{refused}"
        );
    }
}
