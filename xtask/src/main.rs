//! Developer workflow: `cargo xtask setup | build | run | test | vm-test | bench | fuzz`.
//!
//! `setup` installs what building the kernel programs needs on a fresh Debian machine and is
//! fast when everything is present; every other command runs it first.

mod bench;
mod fuzz;
mod package;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "port-tracer developer workflow")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces the eBPF build needs (idempotent).
    Setup,
    /// Set up, then build the release binary (target/release/port-tracer).
    Build,
    /// Set up, build, then run the tracer as root with ARGS.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit tests and the root integration tests against this
    /// machine's kernel, then the VM matrix (`vm-test`) on Debian's kernels.
    Test {
        /// Only this machine's kernel: skip the VM matrix.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the test harness (e.g. a test name filter, which the VM
        /// matrix applies too).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then boot Debian's kernels under qemu and run the integration scenarios in
    /// each, once per attach tier, plus tier equivalence; prints a kernel x tier matrix.
    VmTest(vm::Options),
    /// Set up, then the end-to-end benchmark (root): a loopback TCP storm and a UDP flood,
    /// untraced, under port-tracer (each tier that runs here), tcpstates and bpftrace, in
    /// alternating rounds; prints a table (also in target/bench/). `--soak SECONDS`: port-tracer's
    /// memory through a long TIME_WAIT storm instead.
    Bench(bench::Options),
    /// Set up, build the release binary and make a Debian package of it
    /// (target/package/port-tracer_VERSION_ARCH.deb): the program, its manual pages, bash,
    /// zsh and fish completions and the systemd unit (not enabled on install). Prints its
    /// path.
    Package(package::Options),
    /// Set up, then fuzz the trace decoder and the reconstruction behind it (cargo-fuzz on
    /// the nightly toolchain, installed if missing; one job, bounded time per target).
    Fuzz(fuzz::Options),
}

/// Debian packages bpf-linker builds against.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// The nightly toolchain builds the eBPF crate (it needs `-Z build-std=core`).
const NIGHTLY: &str = "nightly";

fn main() {
    // One line, without the backtrace anyhow would add under RUST_BACKTRACE.
    if let Err(e) = xtask(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn xtask(cli: Cli) -> Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Run { args } => {
            setup()?;
            build()?;
            let bin = root.join("target/release/port-tracer");
            let status = as_root(&bin, &args)
                .status()
                .context("running port-tracer")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { no_vm, args } => {
            setup()?;
            let host = test(&args)?;
            let guests = if no_vm {
                vm::Totals::default()
            } else {
                let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
                vm::run(&vm::Options {
                    kernels: Vec::new(),
                    tiers: Vec::new(),
                    no_lib: false,
                    timeout: 2400,
                    jobs: None,
                    bpf_cost: false,
                    filter,
                })?
            };
            // One closing line over the host's harnesses and the VM matrix.
            let (passed, failed) = (host.passed + guests.passed, host.failed + guests.failed);
            let skipped: Vec<Skipped> = host.skipped.into_iter().chain(guests.skipped).collect();
            println!();
            print_skipped(&skipped);
            println!(
                "tests: {passed} passed, {failed} failed, {} skipped",
                skipped.len()
            );
            if failed > 0 || !host.ok {
                bail!("tests failed");
            }
            Ok(())
        }
        Cmd::Bench(opts) => {
            setup()?;
            bench::run_bench(&opts)
        }
        Cmd::Package(opts) => {
            build_tools()?;
            let deb = package::run_package(&opts)?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Fuzz(opts) => {
            setup()?;
            fuzz::run_fuzz(&opts)
        }
        Cmd::VmTest(opts) => {
            setup()?;
            let t = vm::run(&opts)?;
            if t.failed > 0 {
                bail!("{} failed in the VM matrix", t.failed);
            }
            Ok(())
        }
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .into()
}

fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn as_root(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut c = Command::new(program);
        c.args(args);
        c
    } else {
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=PATH").arg(program).args(args);
        c
    }
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` with its output captured; on failure, the error carries its stderr.
pub(crate) fn run_quiet(cmd: &mut Command) -> Result<()> {
    output_of(cmd).map(drop)
}

/// Runs `cmd` and returns its stdout; on failure, the error carries its stderr.
pub(crate) fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the Debian packages `missing` (a no-op when empty; needs root otherwise).
pub(crate) fn ensure_apt_packages(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("installing {missing:?} needs root: run `sudo cargo xtask setup` or install them");
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cargo_bin() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// Installs, only where missing: what the build needs ([`build_tools`]), the Python
/// readers and the programs the tests use.
fn setup() -> Result<()> {
    build_tools()?;
    python_tools()?;
    // `top`'s end-to-end test drives it in a terminal multiplexer; the real-container test
    // runs podman, with runc: Debian's crun refuses this machine kind's hybrid cgroup
    // hierarchy (a controller on cgroup v2); the metrics are scraped by a real Prometheus
    // and the shipped rules checked by its promtool; the package test installs the Debian
    // package and reads its manual page with man (man-db) and checks its unit with
    // systemd-analyze (systemd; the package's tools are `cargo xtask package`'s); Spark
    // (pyspark) reads the fleet's partitions on a Java runtime.
    let test_tools: Vec<&str> = [
        "tmux",
        "podman",
        "runc",
        "prometheus",
        "man-db",
        "systemd",
        "openjdk-17-jre-headless",
    ]
    .into_iter()
    .filter(|p| !dpkg_installed(p))
    .collect();
    ensure_apt_packages(&test_tools)
}

/// Installs, only where missing: the Debian LLVM packages, the nightly toolchain with
/// rust-src, bpf-linker.
fn build_tools() -> Result<()> {
    // rustup's proxies and cargo-installed tools live here; a bare CI shell may lack it.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if !dirs.contains(&cargo_bin()) {
        dirs.insert(0, cargo_bin());
        // SAFETY: single-threaded at this point.
        unsafe { env::set_var("PATH", env::join_paths(&dirs)?) };
    }

    if !succeeds(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"])) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }

    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    ensure_apt_packages(&missing)?;
    let path = format!("{LLVM_BIN}:{}", env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", "0.13.0"])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path))?;
    Ok(())
}

/// Python packages the tests read our outputs back with: other tools' readers, not ours
/// (Parquet through pyarrow, DuckDB and Spark, metrics through the Prometheus text
/// parser). pyspark 3.5 runs on Debian 12's Java 17 (openjdk-17-jre-headless, below) in
/// local mode; it brings Spark's jars, about 350 MB installed.
const PYTHON_PACKAGES: &[&str] = &[
    "pyarrow==26.0.1",
    "duckdb==2.0.1",
    "prometheus-client==0.26.0",
    "pyspark==3.5.9",
];
const PYTHON_IMPORTS: &str = "import pyarrow.parquet, duckdb, prometheus_client.parser, pyspark";

/// The virtualenv holding [`PYTHON_PACKAGES`]; tests find it through `PORT_TRACER_PYTHON`.
pub(crate) fn python_tools_path() -> PathBuf {
    workspace_root().join("target/pytools/bin/python")
}

/// Creates the virtualenv of [`PYTHON_PACKAGES`] where it is missing or incomplete.
fn python_tools() -> Result<()> {
    let python = python_tools_path();
    if succeeds(Command::new(&python).args(["-c", PYTHON_IMPORTS])) {
        return Ok(());
    }
    if !succeeds(Command::new("python3").args(["-c", "import ensurepip, venv"])) {
        ensure_apt_packages(&["python3-venv"])?;
    }
    let venv = python
        .parent()
        .and_then(Path::parent)
        .expect("venv/bin/python");
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))
}

/// Whether Debian package `p` is installed (not merely known, or removed with its config).
pub(crate) fn dpkg_installed(p: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", p])
        .output()
        .map(|o| o.status.success() && o.stdout == b"install ok installed")
        .unwrap_or(false)
}

fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "port-tracer"]))
}

/// What the host's test harnesses reported.
#[derive(Default)]
struct HostTests {
    passed: u64,
    failed: u64,
    /// Tests that did not run here, each with why: those that said so (`skip`) and those
    /// marked `#[ignore]`. libtest counts the first kind as passed; they are not.
    skipped: Vec<Skipped>,
    /// cargo test itself succeeded (it fails on build errors too).
    ok: bool,
}

/// A test that did not run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub where_: String,
    pub test: String,
    pub why: String,
}

/// The skips a test run listed in its skips file (`TEST<TAB>WHY` lines), under `where_`.
pub(crate) fn read_skips(text: &str, where_: &str) -> Vec<Skipped> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(test, why)| Skipped {
            where_: where_.to_string(),
            test: test.to_string(),
            why: why.to_string(),
        })
        .collect()
}

/// The name and reason of a libtest "test NAME ... ignored[, REASON]" line.
fn ignored_test(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, tail) = rest.split_once(" ... ignored")?;
    Some((name, tail.strip_prefix(", ").unwrap_or("#[ignore]")))
}

/// Prints the tests that did not run, grouped by why.
pub(crate) fn print_skipped(skipped: &[Skipped]) {
    if skipped.is_empty() {
        return;
    }
    let mut by_why: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for s in skipped {
        by_why
            .entry(&s.why)
            .or_default()
            .push(format!("{} ({})", s.test, s.where_));
    }
    println!("skipped ({}), by why:", skipped.len());
    for (why, tests) in by_why {
        println!("  {why}: {}", tests.len());
        for t in tests {
            println!("    {t}");
        }
    }
}

fn test(args: &[String]) -> Result<HostTests> {
    // Unit tests and the integration tests that drive the real programs, on the tier
    // `auto` picks here (cgroup); then the scenarios again on the tracepoint tier, and the
    // two compared, which this kernel also runs (the VM matrix runs the rest). The
    // integration tests each start a tracer, so they run one at a time.
    if !is_root() {
        eprintln!("xtask: not root: the kernel integration tests will be skipped (run as root)");
    }
    // Tier equivalence runs in the second harness, where the tiers to compare are named.
    let mut first_args = args.to_vec();
    first_args.extend([
        "--skip".into(),
        "every_tier_reports_the_same_lifetimes".into(),
    ]);
    let all = host_harness(
        "host",
        &["-p", "port-tracer", "-p", "xtask", "--lib", "--tests"],
        &[],
        &first_args,
    )?;
    // The tiers this kernel runs (the VM matrix runs the others).
    use port_tracer_common::tiers::{CGROUP, TRACEPOINT};
    let compared = format!("{},{}", CGROUP.name, TRACEPOINT.name);
    let tracepoint = host_harness(
        "host, tracepoint tier",
        &["-p", "port-tracer", "--test", "kernel", "--test", "tiers"],
        &[
            ("PORT_TRACER_TEST_ATTACH", TRACEPOINT.name),
            ("PORT_TRACER_TEST_TIERS", &compared),
        ],
        args,
    )?;
    let (passed, failed) = (
        all.passed + tracepoint.passed,
        all.failed + tracepoint.failed,
    );
    let skipped: Vec<Skipped> = all.skipped.into_iter().chain(tracepoint.skipped).collect();
    println!(
        "host: {passed} passed, {failed} failed, {} skipped",
        skipped.len()
    );
    Ok(HostTests {
        passed,
        failed,
        skipped,
        ok: all.ok && tracepoint.ok,
    })
}

/// One `cargo test` over `targets` with `env`, libtest arguments `args`; its counts, its
/// skips named `where_`.
fn host_harness(
    where_: &str,
    targets: &[&str],
    env: &[(&str, &str)],
    args: &[String],
) -> Result<HostTests> {
    let skips_file = workspace_root().join(format!(
        "target/test-skips-{}.txt",
        where_.replace([' ', ','], "-")
    ));
    let _ = std::fs::remove_file(&skips_file);
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--release"]);
    vm::binaries::statically_linked(&mut cmd)
        .args(targets)
        .arg("--")
        .arg("--test-threads=1")
        .args(args)
        .env("PORT_TRACER_PYTHON", python_tools_path())
        .env("PORT_TRACER_SKIPS", &skips_file)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped());
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    let mut out = HostTests::default();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            out.passed += p;
            out.failed += f;
        }
        if let Some((test, why)) = ignored_test(&line) {
            out.skipped.push(Skipped {
                where_: where_.to_string(),
                test: test.to_string(),
                why: format!("ignored: {why}"),
            });
        }
    }
    let status = child.wait()?;
    let said = read_skips(
        &std::fs::read_to_string(&skips_file).unwrap_or_default(),
        where_,
    );
    // libtest counted these as passed.
    out.passed = out.passed.saturating_sub(said.len() as u64);
    out.skipped.extend(said);
    out.ok = status.success();
    Ok(out)
}

/// Reads "test result: ok. 28 passed; 0 failed; ..." lines.
pub(crate) fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .strip_suffix(word)
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_and_ignored_tests_are_read_with_why() {
        let s = read_skips("a::b\tnot root\nbroken line\nc\tno BTF\n", "host");
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].test.as_str(), s[0].why.as_str()),
            ("a::b", "not root")
        );
        assert_eq!(s[1].where_, "host");
        assert_eq!(
            ignored_test("test cost_per_operation ... ignored, a measurement"),
            Some(("cost_per_operation", "a measurement"))
        );
        assert_eq!(ignored_test("test x ... ignored"), Some(("x", "#[ignore]")));
        assert_eq!(ignored_test("test x ... ok"), None);
        assert_eq!(
            parse_test_result("test result: ok. 28 passed; 1 failed; 2 ignored"),
            Some((28, 1))
        );
    }
}
