//! The kernel edge: checks, loading and attaching the programs, reading their maps.

mod attach_fentry;
mod attach_kprobe;
mod cgroup;
pub mod held;
pub mod hooks;
pub mod offsets;
pub mod privileges;
pub mod ranges;
#[cfg(test)]
mod stack_check;
mod tracepoint;

use std::fmt;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::Program,
    Ebpf, EbpfLoader,
};
use btf_rs::Btf;
use port_tracer_common::{
    lost,
    tiers::{self, TierInfo},
    KernelOffsets, ProgramConfig,
};

/// The compiled kernel programs, embedded in the binary.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-tracer"));

/// A way of hooking the kernel. Each produces the same events; names and descriptions are
/// `port_tracer_common::tiers`, the attach function of each is `Tier::attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Fentry,
    Kprobe,
    Cgroup,
    Tracepoint,
}

impl Tier {
    /// Best first.
    pub const ALL: [Tier; 4] = [Tier::Fentry, Tier::Kprobe, Tier::Cgroup, Tier::Tracepoint];

    pub fn info(self) -> &'static TierInfo {
        match self {
            Tier::Fentry => &tiers::FENTRY,
            Tier::Kprobe => &tiers::KPROBE,
            Tier::Cgroup => &tiers::CGROUP,
            Tier::Tracepoint => &tiers::TRACEPOINT,
        }
    }

    /// Loads and attaches this tier's programs of `ebpf`.
    fn attach(self, ebpf: &mut Ebpf, btf: &Btf, fentry_btf: &mut FentryBtf) -> Result<()> {
        match self {
            Tier::Fentry => {
                let aya_btf = fentry_btf.take().context("reading kernel BTF")?;
                attach_fentry::attach(ebpf, btf, &aya_btf)
            }
            Tier::Kprobe => attach_kprobe::attach(ebpf, btf),
            Tier::Cgroup => cgroup::attach(ebpf),
            Tier::Tracepoint => tracepoint::attach(ebpf),
        }
        .map_err(privileges::explain_perf_refusal)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().name)
    }
}

/// Which tier to use: the best one that loads and attaches, or one forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierChoice {
    Auto,
    Only(Tier),
}

impl TierChoice {
    /// `auto`, then each tier.
    pub fn all() -> impl Iterator<Item = TierChoice> {
        std::iter::once(TierChoice::Auto).chain(Tier::ALL.map(TierChoice::Only))
    }

    pub fn name(self) -> &'static str {
        match self {
            TierChoice::Auto => "auto",
            TierChoice::Only(t) => t.info().name,
        }
    }

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            TierChoice::Auto => {
                "The best tier that loads and attaches: fentry, then kprobe, then cgroup, then \
                 tracepoint"
            }
            TierChoice::Only(t) => t.info().about,
        }
    }

    pub fn from_name(name: &str) -> Option<TierChoice> {
        TierChoice::all().find(|t| t.name() == name)
    }

    /// The tiers to try, best first.
    fn candidates(self) -> Vec<Tier> {
        match self {
            TierChoice::Auto => Tier::ALL.to_vec(),
            TierChoice::Only(t) => vec![t],
        }
    }
}

/// The kernel's BTF parsed by aya for fentry programs: parsed beside the rest at start when
/// fentry may be tried, else when first needed.
struct FentryBtf(Option<Result<aya::Btf, aya::BtfError>>);

impl FentryBtf {
    fn take(&mut self) -> Result<aya::Btf, aya::BtfError> {
        self.0.take().unwrap_or_else(aya::Btf::from_sys_fs)
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub tier: TierChoice,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Wake the reader once this many bytes wait.
    pub wakeup_bytes: u64,
}

/// Loaded and attached programs.
pub struct Kernel {
    ebpf: Ebpf,
    pub tier: Tier,
    /// Why TIME_WAIT is not traced, if it is not (the tracepoint tier needs the address of
    /// `tw_timer_handler`).
    pub time_wait_untraced: Option<&'static str>,
    /// Better tiers that did not work here, and why.
    pub passed_over: Vec<(Tier, String)>,
}

/// Kernel release, e.g. "6.1.0-26-amd64".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Kernel {
    /// Loads the programs and attaches the chosen tier.
    pub fn load(opts: &LoadOptions) -> Result<Kernel> {
        privileges::check_load()?;
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            bail!("--ring-size must be a power of two of at least 4096 bytes");
        }
        let candidates = opts.tier.candidates();
        // The kernel's BTF is parsed for our offsets and hooks, by each aya loader, and for
        // fentry programs: most of the start (0.4 s here, seconds under emulation), so the
        // three parses run side by side.
        let (parsed, loader, fentry_btf) = std::thread::scope(|s| {
            let loader = s.spawn(EbpfLoader::new);
            let fentry_btf = candidates
                .contains(&Tier::Fentry)
                .then(|| s.spawn(aya::Btf::from_sys_fs));
            let parsed = offsets::load_vmlinux_btf().and_then(|btf| {
                let offs = offsets::resolve(&btf).context(
                    "unsupported kernel: a structure port-tracer reads is missing from its BTF",
                )?;
                Ok((btf, offs))
            });
            (
                parsed,
                loader.join().expect("BTF parsing thread"),
                fentry_btf.map(|t| t.join().expect("BTF parsing thread")),
            )
        });
        let (btf, mut offs) = parsed?;
        let (mut loader, mut fentry_btf) = (Some(loader), FentryBtf(fentry_btf));
        let mut config = ProgramConfig {
            wakeup_bytes: opts.wakeup_bytes,
            ..Default::default()
        };
        raise_memlock_limit();
        let mut passed_over = Vec::new();
        for &tier in &candidates {
            config.cgroup_tier = (tier == Tier::Cgroup) as u32;
            if matches!(tier, Tier::Tracepoint | Tier::Cgroup) {
                // Tells the TIME_WAIT timer from the others (0 if hidden: not traced).
                offs.tw_timer_handler = offsets::kallsyms_address("tw_timer_handler")?.unwrap_or(0);
            }
            // A fresh object per try: a tier that failed halfway leaves nothing attached.
            let loader = loader.take().unwrap_or_default();
            let mut ebpf = load_object(loader, &offs, &config, opts.ring_bytes)?;
            match tier.attach(&mut ebpf, &btf, &mut fentry_btf) {
                Ok(()) => {
                    let time_wait_untraced = (matches!(tier, Tier::Tracepoint | Tier::Cgroup)
                        && offs.tw_timer_handler == 0)
                        .then(|| {
                            if privileges::has(caps::Capability::CAP_SYSLOG) {
                                "tw_timer_handler not in /proc/kallsyms"
                            } else {
                                "/proc/kallsyms hides kernel addresses without CAP_SYSLOG"
                            }
                        });
                    return Ok(Kernel {
                        ebpf,
                        tier,
                        time_wait_untraced,
                        passed_over,
                    });
                }
                Err(e) => passed_over.push((tier, format!("{e:#}"))),
            }
        }
        let why: Vec<String> = passed_over
            .iter()
            .map(|(t, e)| format!("{t}: {e}"))
            .collect();
        if opts.tier == TierChoice::Auto {
            bail!("no attach tier works here ({})", why.join("; "));
        }
        bail!(
            "the {} tier cannot run here: {}",
            candidates[0],
            passed_over[0].1
        )
    }

    /// The ring buffer the programs write to. Can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("EVENTS map already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Detaches and unloads every program, one at a time. Each detach waits for an RCU
    /// grace period (60-70 ms here per tracepoint): ~0.8 s in all. Detaching them all at
    /// once from as many threads took 0.08 s, but a 5.10 guest once locked up in it (soft
    /// lockup in the tracer's detaching threads, others blocked behind them): not worth
    /// 0.7 s at exit.
    pub fn detach(mut self) {
        for (_, program) in self.ebpf.programs_mut() {
            unload(program);
        }
    }

    /// The per-CPU dropped-event counters. Can be taken once.
    pub fn take_lost(&mut self) -> Result<LostCounters> {
        let map = self
            .ebpf
            .take_map("LOST")
            .context("LOST map already taken")?;
        LostCounters::new(PerCpuArray::try_from(map)?)
    }
}

/// Detaches and unloads `program` if it is of a kind the tiers use (the rest go when the
/// object drops). Errors are of programs never loaded: nothing to undo.
fn unload(program: &mut Program) {
    let _ = match program {
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::CgroupSock(p) => p.unload(),
        Program::CgroupSockAddr(p) => p.unload(),
        Program::SockOps(p) => p.unload(),
        _ => Ok(()),
    };
}

/// Creates the maps of the embedded object, with offsets and settings filled in; loads no
/// program yet.
fn load_object<'a>(
    mut loader: EbpfLoader<'a>,
    offs: &'a KernelOffsets,
    config: &'a ProgramConfig,
    ring_bytes: u32,
) -> Result<Ebpf> {
    loader
        .override_global("OFFSETS", offs, true)
        .override_global("CONFIG", config, true)
        .map_max_entries("EVENTS", ring_bytes)
        .load(PROGRAMS)
        .map_err(|e| explain_load_error(e.into()))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default is far below a
/// ring buffer. Later kernels use memory cgroups instead, and a host may forbid raising the
/// limit (no CAP_SYS_RESOURCE), so a failure here is not an error: map creation says so if
/// it mattered.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Per-CPU counts of events the programs could not deliver.
pub struct LostCounters {
    map: PerCpuArray<MapData, u64>,
    /// The last totals read, for when a read fails.
    last: [u64; lost::COUNT as usize],
    warned: bool,
}

impl LostCounters {
    fn new(map: PerCpuArray<MapData, u64>) -> Result<Self> {
        let mut c = LostCounters {
            map,
            last: [0; lost::COUNT as usize],
            warned: false,
        };
        // The first read opens a /sys file (the number of CPUs), then remembers it: done
        // now, so that a tracer later out of file handles still reads its counters.
        c.last = c.try_read()?;
        Ok(c)
    }

    fn try_read(&self) -> Result<[u64; lost::COUNT as usize]> {
        let mut out = [0u64; lost::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Totals over all CPUs, indexed by `port_tracer_common::lost`. A read that fails (it
    /// should not) gives the last totals, and says so once: tracing goes on.
    pub fn read(&mut self) -> [u64; lost::COUNT as usize] {
        match self.try_read() {
            Ok(now) => self.last = now,
            Err(e) if !self.warned => {
                self.warned = true;
                eprintln!(
                    "port-tracer: cannot read the kernel's lost-event counters ({e:#}); \
                     the summary gives the last ones read"
                );
            }
            Err(_) => {}
        }
        self.last
    }
}

fn explain_load_error(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") {
        return e.context(
            "the kernel refused to create BPF maps or programs (missing CAP_BPF/CAP_SYS_ADMIN, \
             locked down, or, before Linux 5.11, RLIMIT_MEMLOCK too low: try `ulimit -l \
             unlimited`)",
        );
    }
    if text.contains("RINGBUF") || text.contains("Invalid argument") {
        return e.context(
            "unsupported kernel: loading the BPF maps failed; port-tracer needs BPF ring \
             buffers (Linux 5.8 or later)",
        );
    }
    e.context("loading the BPF programs failed")
}

/// The mount point of the cgroup v2 hierarchy.
pub fn cgroup2_root() -> Result<std::path::PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .min_by_key(|p| p.as_os_str().len())
        .context(
            "no cgroup v2 mount: port-tracer sees UDP sockets close through a cgroup v2 hook; \
             mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kprobe programs cannot attach on a kernel without CONFIG_KPROBES, but the
    /// verifier checks them all the same: every one of them must load.
    #[test]
    fn kprobe_programs_pass_this_kernels_verifier() {
        if privileges::check_load().is_err() {
            crate::test_support::skip("not root");
            return;
        }
        let btf = offsets::load_vmlinux_btf().unwrap();
        let offs = offsets::resolve(&btf).unwrap();
        let mut ebpf =
            load_object(EbpfLoader::new(), &offs, &ProgramConfig::default(), 1 << 16).unwrap();
        let mut loaded = 0;
        for hook in hooks::HOOKS {
            for p in [hook.entry, hook.exit].into_iter().flatten() {
                let prog: &mut aya::programs::KProbe =
                    ebpf.program_mut(p.kprobe).unwrap().try_into().unwrap();
                if prog.fd().is_err() {
                    prog.load()
                        .unwrap_or_else(|e| panic!("{}: {e:#}", p.kprobe));
                    loaded += 1;
                }
            }
        }
        assert!(loaded >= 10, "{loaded}");
    }
}
