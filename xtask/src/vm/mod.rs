//! `cargo xtask vm-test`: the integration scenarios on distribution kernels under qemu,
//! once per attach tier, plus the library's kernel checks and the tier-equivalence test.
//!
//! Per kernel, one boot: the guest's `/init` runs the library tests, then the scenario
//! suite once for each tier (forced with `--attach`), then tier equivalence, marking each
//! on the console. The host reads the marks into a kernel x suite matrix.

pub mod binaries;
mod guest;
mod initramfs;
mod kernels;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use port_tracer_common::tiers;

use crate::{ensure_apt_packages, workspace_root};

/// The attach tiers, as `--attach` spells them, best first: the registry's
/// (`port_tracer_common::tiers::ALL`), whatever it holds.
pub const TIERS: [&str; tiers::ALL.len()] = {
    let mut names = [""; tiers::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = tiers::ALL[i].name;
        i += 1;
    }
    names
};

/// Boots a kernel gets at most when its guest's kernel crashes (see [`guest::Outcome::crash`]).
const BOOTS_AFTER_CRASHES: u32 = 3;

/// Host tools the matrix needs, by Debian package.
const HOST_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", initramfs::BUSYBOX),
    ("cpio", "/usr/bin/cpio"),
    ("xz-utils", "/usr/bin/xz"),
    ("zstd", "/usr/bin/zstd"),
];

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Only this kernel (repeatable): debian-5.10, debian-6.1, debian-6.12.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Only this tier (repeatable): fentry, kprobe, cgroup, tracepoint. Tier equivalence runs when
    /// two or more tiers do.
    #[arg(long = "tier", value_name = "TIER", value_parser = clap::builder::PossibleValuesParser::new(TIERS))]
    pub tiers: Vec<String>,
    /// Skip the library's unit tests in the guests.
    #[arg(long)]
    pub no_lib: bool,
    /// Give up on a guest after this many seconds.
    #[arg(long, default_value_t = 2400, value_name = "SECS")]
    pub timeout: u64,
    /// Guests to run at once (default: the host's CPU count; 1 with --bpf-cost). Each keeps
    /// about one core busy.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Instead of the tests: each tier's BPF time per TCP connection and UDP socket
    /// (`tests/cost.rs`), printed after the matrix. Under emulation the ratio between
    /// tiers means something, the nanoseconds do not.
    #[arg(long)]
    pub bpf_cost: bool,
    /// Only tests whose name contains this (libtest filter).
    pub filter: Option<String>,
}

/// What a guest runs; written to its `/pt.conf`.
pub struct Plan {
    lib: bool,
    tiers: Vec<String>,
    /// Tiers compared by the equivalence test (none: it does not run).
    equivalence: Vec<String>,
    /// Tiers whose BPF time per operation is measured (none: not measured).
    cost: Vec<String>,
    filter: String,
}

impl Plan {
    /// Library tests, the scenario suite on each of `tiers`, and the equivalence of
    /// `compared` when there are two or more.
    fn new(lib: bool, tiers: Vec<String>, compared: Vec<String>, filter: String) -> Plan {
        let equivalence = if compared.len() >= 2 {
            compared
        } else {
            Vec::new()
        };
        Plan {
            lib,
            tiers,
            equivalence,
            cost: Vec::new(),
            filter,
        }
    }

    /// Only the BPF time per operation of each of `tiers`.
    fn cost(tiers: Vec<String>) -> Plan {
        Plan {
            lib: false,
            tiers: Vec::new(),
            equivalence: Vec::new(),
            cost: tiers,
            filter: String::new(),
        }
    }

    fn conf(&self) -> String {
        format!(
            "PT_LIB={}\nPT_TIERS='{}'\nPT_EQUIVALENCE='{}'\nPT_COST='{}'\nPT_FILTER='{}'\n",
            u8::from(self.lib),
            self.tiers.join(" "),
            self.equivalence.join(","),
            self.cost.join(","),
            self.filter
        )
    }

    /// Section names in the order the guest runs them.
    fn sections(&self) -> Vec<String> {
        let mut s = Vec::new();
        if self.lib {
            s.push("lib".to_string());
        }
        s.extend(self.tiers.iter().cloned());
        if !self.equivalence.is_empty() {
            s.push("equivalence".to_string());
        }
        if !self.cost.is_empty() {
            s.push("cost".to_string());
        }
        s
    }

    /// What is left of this plan after `done`: the sections that never ended.
    fn rest(&self, done: &guest::Outcome) -> Plan {
        let ended = |name: &str| {
            done.sections
                .iter()
                .any(|s| s.name == name && s.rc.is_some())
        };
        Plan {
            lib: self.lib && !ended("lib"),
            tiers: self.tiers.iter().filter(|t| !ended(t)).cloned().collect(),
            equivalence: if ended("equivalence") {
                Vec::new()
            } else {
                self.equivalence.clone()
            },
            cost: if ended("cost") {
                Vec::new()
            } else {
                self.cost.clone()
            },
            filter: self.filter.clone(),
        }
    }
}

/// Scenario counts over the whole matrix.
#[derive(Default)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    /// Tests that said they could not run in a guest, and why.
    pub skipped: Vec<crate::Skipped>,
}

pub fn run(opts: &Options) -> Result<Totals> {
    let specs: Vec<&kernels::Spec> = if opts.kernels.is_empty() {
        kernels::SPECS.iter().collect()
    } else {
        opts.kernels
            .iter()
            .map(|k| {
                kernels::SPECS.iter().find(|s| s.name == k).ok_or_else(|| {
                    let known: Vec<&str> = kernels::SPECS.iter().map(|s| s.name).collect();
                    anyhow::anyhow!("unknown kernel {k:?}; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let filter = opts.filter.clone().unwrap_or_default();
    if !filter
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bail!("a test filter is a test name or part of one (letters, digits, _ and :)");
    }
    let all: Vec<String> = TIERS.iter().map(|t| t.to_string()).collect();
    let plan = if opts.bpf_cost {
        Plan::cost(if opts.tiers.is_empty() {
            all
        } else {
            opts.tiers.clone()
        })
    } else if opts.tiers.is_empty() {
        // The tracepoint tier's suite runs on the host, whose kernel allows it (cargo
        // xtask test); here it is in the equivalence test, with every other tier.
        let suites = all
            .iter()
            .filter(|t| *t != tiers::TRACEPOINT.name)
            .cloned()
            .collect();
        Plan::new(!opts.no_lib, suites, all, filter)
    } else {
        Plan::new(!opts.no_lib, opts.tiers.clone(), opts.tiers.clone(), filter)
    };

    ensure_apt_packages(
        &HOST_PACKAGES
            .iter()
            .filter(|(_, file)| !std::path::Path::new(file).exists())
            .map(|(pkg, _)| *pkg)
            .collect::<Vec<_>>(),
    )?;
    let cache = cache_dir();
    let work = workspace_root().join("target/vm");
    std::fs::create_dir_all(&work)?;
    let kernels: Vec<kernels::Kernel> = specs
        .iter()
        .map(|s| kernels::fetch(s, &cache))
        .collect::<Result<_>>()?;
    let bins = binaries::build()?;

    let limits = guest::Limits {
        total: Duration::from_secs(opts.timeout),
        silence: Duration::from_secs(240),
    };
    // Measurements run one guest at a time: a second guest would be noise in the first.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = opts
        .jobs
        .unwrap_or(if opts.bpf_cost { 1 } else { cpus })
        .clamp(1, kernels.len().max(1));
    if jobs > 1 {
        println!("{jobs} guests at once (--jobs)");
    }
    // Each guest keeps about one core busy (emulation: 190 CPU s per 177 s of a suite on
    // 5.10), so on two cores two guests take about half the time of one after the other.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<Option<Result<(guest::Outcome, PathBuf)>>>> =
        std::sync::Mutex::new(kernels.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(k) = kernels.get(i) else { break };
                let r = run_guest(k, &bins, &plan, &work, &limits);
                done.lock().unwrap()[i] = Some(r);
            });
        }
    });
    let mut rows = Vec::new();
    for (k, r) in kernels.iter().zip(done.into_inner().unwrap()) {
        let (outcome, log) = r.expect("every kernel was taken by a worker")?;
        rows.push((k, outcome, log));
    }

    // The matrix, then what went wrong, then the count.
    let columns = plan.sections();
    let mut totals = Totals::default();
    let width = kernels
        .iter()
        .map(|k| k.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!();
    print!("{:width$}", "kernel");
    for c in &columns {
        print!("  {c:>12}");
    }
    println!("  release");
    let mut reports = Vec::new();
    for (k, o, log) in &rows {
        print!("{:width$}", k.name);
        for c in &columns {
            let cell = match o.sections.iter().find(|s| &s.name == c) {
                Some(s) => {
                    totals.passed += s.passed;
                    totals.failed += s.failed;
                    totals
                        .skipped
                        .extend(s.skipped.iter().map(|(test, why)| crate::Skipped {
                            where_: format!("{} {}", k.name, s.name),
                            test: test.clone(),
                            why: why.clone(),
                        }));
                    if s.rc.is_none() || (s.rc != Some(0) && s.failed == 0) {
                        // Crashed, hung or failed outside a test: one failure.
                        totals.failed += 1;
                    }
                    let mark = match s.rc {
                        None => " cut",
                        Some(_) if !s.ok() => " FAIL",
                        Some(_) => "",
                    };
                    let skipped = match s.skipped.len() {
                        0 => String::new(),
                        n => format!("+{n}s"),
                    };
                    format!("{}/{}{skipped}{mark}", s.passed, s.passed + s.failed)
                }
                None => {
                    totals.failed += 1;
                    "not run".to_string()
                }
            };
            print!("  {cell:>12}");
        }
        println!("  {}", o.booted.as_deref().unwrap_or("did not boot"));

        let bad: Vec<&guest::Section> = o.sections.iter().filter(|s| !s.ok()).collect();
        for crash in &o.crashes {
            reports.push(format!(
                "== {}: the guest crashed or hung, the sections left ran in another boot: \
                 {crash}",
                k.name
            ));
        }
        if bad.is_empty() && o.done && o.cut.is_none() {
            continue;
        }
        let mut r = format!(
            "== {} ({}), console log {}",
            k.name,
            k.package,
            log.display()
        );
        if let Some(why) = &o.cut {
            r += &format!("\nguest stopped: {why}");
        } else if !o.done {
            r += "\nguest ended before finishing its plan";
        }
        for s in &bad {
            r += &match s.rc {
                None => format!("\n-- {}: did not finish", s.name),
                Some(rc) => format!("\n-- {}: exit {rc}, failed: {:?}", s.name, s.failures),
            };
            if let Some(i) = s.output.iter().position(|l| l == "failures:") {
                for l in s.output[i..].iter().take(80) {
                    r += &format!("\n   {l}");
                }
            }
        }
        if o.crash.is_some() {
            r += "\n-- the crash:";
            for l in o.crash.iter().chain(&o.crash_trace) {
                r += &format!("\n   {l}");
            }
        }
        if !o.hang_dump.is_empty() {
            r += "\n-- what the guest's hang watch saw:";
            for l in &o.hang_dump {
                r += &format!("\n   {l}");
            }
        }
        if o.cut.is_some() || !o.done || bad.iter().any(|s| s.rc.is_none()) {
            r += "\n-- console tail:";
            for l in &o.tail {
                r += &format!("\n   {l}");
            }
        }
        reports.push(r);
    }
    for r in &reports {
        println!("\n{r}");
    }
    for (k, o, _) in &rows {
        if let Some(s) = o.sections.iter().find(|s| s.name == "cost") {
            println!("\n== {}: BPF time per operation ({})", k.name, k.release);
            for l in cost_tables(&s.output) {
                println!("{l}");
            }
        }
    }
    if !totals.skipped.is_empty() {
        println!("\n(+Ns: N tests skipped there, listed with why)");
        crate::print_skipped(&totals.skipped);
    }
    println!(
        "\n{} passed, {} failed, {} skipped",
        totals.passed,
        totals.failed,
        totals.skipped.len()
    );
    Ok(totals)
}

/// One kernel's guest: its plan, then more boots for what a crash or hang left.
fn run_guest(
    k: &kernels::Kernel,
    bins: &binaries::Binaries,
    plan: &Plan,
    work: &std::path::Path,
    limits: &guest::Limits,
) -> Result<(guest::Outcome, PathBuf)> {
    println!("[{}] booting {} ({})", k.name, k.release, k.package);
    let initrd = initramfs::pack(k, bins, plan, work)?;
    let log = work.join(format!("console-{}.log", k.name));
    let started = std::time::Instant::now();
    let mut outcome = guest::boot(k, &initrd, &log, limits)?;
    println!(
        "[{}] powered off after {:.0} s",
        k.name,
        started.elapsed().as_secs_f64()
    );
    // The guest's kernel itself may crash under emulation (an int3 left by live code
    // patching, hit on a hot path while a tracepoint is switched on or off: seen on
    // 6.12's tracepoint suite; a soft lockup while programs detached, once on 5.10,
    // made a panic by softlockup_panic=1 rather than a 900 s hang), or hang (a test
    // printing nothing for 120 s, after the guest's hang watch showed every thread's
    // stack: once after the tracefs test on 5.10 and 6.1): more boots for what was
    // left, said in the report with the crash's trace or the hang's dump.
    let mut log = log;
    for boot in 2..=BOOTS_AFTER_CRASHES {
        let (false, Some(crash)) = (outcome.done, outcome.crash.clone()) else {
            break;
        };
        let rest = plan.rest(&outcome);
        println!(
            "[{}] the guest crashed or hung: {crash}; booting again for {}",
            k.name,
            rest.sections().join(", ")
        );
        let initrd = initramfs::pack(k, bins, &rest, work)?;
        let again_log = work.join(format!("console-{}-boot{boot}.log", k.name));
        let again = guest::boot(k, &initrd, &again_log, limits)?;
        // A hang's crash trace is the watch's dump.
        let trace: String = std::mem::take(&mut outcome.hang_dump)
            .iter()
            .chain(&outcome.crash_trace)
            .map(|l| format!("\n   {l}"))
            .collect();
        outcome.continue_with(
            again,
            format!("{crash} (console log {}){trace}", log.display()),
        );
        log = again_log;
    }
    Ok((outcome, log))
}

/// The tables and their titles in the cost section's output (`tests/cost.rs`), without
/// libtest's lines.
fn cost_tables(output: &[String]) -> impl Iterator<Item = &str> {
    output
        .iter()
        .map(|l| l.trim_end())
        .filter(|l| l.starts_with('|') || l.contains(" tier, per "))
}

/// Downloaded packages, apt state and unpacked kernels, kept between runs.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PORT_TRACER_VM_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("port-tracer-vm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_plan_measures_only_and_its_tables_are_kept() {
        let p = Plan::cost(vec!["cgroup".into(), "tracepoint".into()]);
        assert_eq!(p.sections(), ["cost"]);
        assert!(p.conf().contains("PT_COST='cgroup,tracepoint'"));
        assert!(p.conf().contains("PT_TIERS=''"));
        let out: Vec<String> = [
            "running 1 test",
            "",
            "cgroup tier, per tcp connection (2000 of them):",
            "| program | runs per op | ns per run | ns per op |",
            "| **total** | | | **2403** |",
            "test bpf_time_per_operation_by_tier ... ok",
        ]
        .map(String::from)
        .to_vec();
        let kept: Vec<&str> = cost_tables(&out).collect();
        assert_eq!(kept.len(), 3, "{kept:?}");
    }

    #[test]
    fn plan_runs_equivalence_only_with_two_tiers() {
        let two = vec!["fentry".to_string(), "kprobe".to_string()];
        let p = Plan::new(true, two.clone(), two, String::new());
        assert_eq!(p.sections(), ["lib", "fentry", "kprobe", "equivalence"]);
        assert!(p.conf().contains("PT_EQUIVALENCE='fentry,kprobe'"));
        let one = vec!["fentry".to_string()];
        let p = Plan::new(true, one.clone(), one, String::new());
        assert_eq!(p.sections(), ["lib", "fentry"]);
        assert!(p.conf().contains("PT_EQUIVALENCE=''"));
    }

    #[test]
    fn after_a_crash_the_rest_is_what_never_ended() {
        let tiers: Vec<String> = TIERS.iter().map(|t| t.to_string()).collect();
        let p = Plan::new(true, tiers.clone(), tiers, "x".into());
        let mut o = guest::Outcome::default();
        for l in [
            "@@pt begin lib",
            "@@pt end lib rc=0",
            "@@pt begin fentry",
            "test a ... FAILED",
            "@@pt end fentry rc=101",
            "@@pt begin kprobe",
            "test a ... ok",
            "[  437.8] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[  437.9] Kernel panic - not syncing: Fatal exception in interrupt",
        ] {
            guest::read_line("k", l, &mut o);
        }
        assert!(o.crash.as_deref().unwrap().contains("Oops: int3"));
        let rest = p.rest(&o);
        // The failed section stays failed; the cut one runs again, the rest still to come.
        assert_eq!(
            rest.sections(),
            ["kprobe", "cgroup", "tracepoint", "equivalence"]
        );
        assert!(rest
            .conf()
            .contains("PT_EQUIVALENCE='fentry,kprobe,cgroup,tracepoint'"));
        assert!(rest.conf().contains("PT_FILTER='x'"));

        let mut again = guest::Outcome::default();
        for l in [
            "@@pt begin kprobe",
            "test a ... ok",
            "@@pt end kprobe rc=0",
            "@@pt done",
        ] {
            guest::read_line("k", l, &mut again);
        }
        o.continue_with(again, "crash".into());
        let names: Vec<&str> = o.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["lib", "fentry", "kprobe"]);
        assert!(o.sections[2].ok() && o.done);
        assert_eq!(o.crashes, ["crash"]);
    }

    #[test]
    fn a_soft_lockup_is_a_crash() {
        // With softlockup_panic=1 the guest panics next; its first line names the lockup.
        let mut o = guest::Outcome::default();
        for l in [
            "@@pt begin equivalence",
            "[  572.6] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [port-tracer:4203]",
            "[  572.7] Kernel panic - not syncing: softlockup: hung tasks",
        ] {
            guest::read_line("k", l, &mut o);
        }
        assert!(o.crash.as_deref().unwrap().contains("soft lockup"));
        assert_eq!(
            o.crash_trace[0],
            "[  572.7] Kernel panic - not syncing: softlockup: hung tasks"
        );
    }

    #[test]
    fn a_hang_watchs_dump_is_kept_for_the_report_and_the_guest_taken_for_hung() {
        let mut o = guest::Outcome::default();
        for l in [
            "@@pt begin tracepoint",
            "test a ... ok",
            "@@pt hang: nothing printed for 150 s; the user threads:",
            "-- kernel_test 90/task/91 S wchan=futex_wait_queue_me",
            "   [<0>] futex_wait_queue_me+0xd2/0x120",
            "@@pt hang end",
            "[  900.1] unrelated",
        ] {
            guest::read_line("k", l, &mut o);
        }
        assert_eq!(o.hang_dump.len(), 4, "through its end mark");
        assert!(o.hang_dump[1].contains("futex_wait_queue_me"));
        assert_eq!(o.sections[0].passed, 1);
        let crash = o.crash.as_deref().unwrap();
        assert!(
            crash.contains("hung") && crash.contains("tracepoint after 1 tests"),
            "{crash}"
        );
    }
}
