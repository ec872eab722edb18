//! Statically linked builds of the tracer and of the test suites: the guests' initramfs
//! has no C library.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The host triple, given explicitly so that `crt-static` applies to the tests and the
/// tracer but not to build scripts.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

pub struct Binaries {
    /// The tracer, at the absolute path compiled into the test binaries
    /// (`CARGO_BIN_EXE_port-tracer`): the initramfs puts it at the same place.
    pub tracer: PathBuf,
    /// Unit tests of the library (BTF offsets, hook signatures, verifier checks, sock_diag).
    pub lib_test: PathBuf,
    /// The integration scenarios (`tests/kernel.rs`).
    pub kernel_test: PathBuf,
    /// Tier equivalence (`tests/tiers.rs`).
    pub tiers_test: PathBuf,
    /// BPF time per operation by tier (`tests/cost.rs`).
    pub cost_test: PathBuf,
}

/// Makes `cargo test` build for [`TARGET`], statically linked. The host's own test run
/// builds the same way, so the guests' build that follows it compiles nothing again.
pub fn statically_linked(cargo: &mut Command) -> &mut Command {
    cargo.args(["--target", TARGET]).env(
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "-C target-feature=+crt-static",
    )
}

pub fn build() -> Result<Binaries> {
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--release", "-p", "port-tracer"]);
    statically_linked(&mut cmd)
        .args([
            "--lib", "--test", "kernel", "--test", "tiers", "--test", "cost",
        ])
        .arg("--no-run")
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("xtask: building static binaries for the guests: {cmd:?}");
    let mut child = cmd.spawn().context("starting cargo")?;
    let (mut tracer, mut lib_test, mut kernel_test, mut tiers_test, mut cost_test) =
        (None, None, None, None, None);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        let Some(exe) = msg["executable"].as_str().map(PathBuf::from) else {
            continue;
        };
        let target = &msg["target"];
        let is_test = msg["profile"]["test"] == true;
        let kind_is = |k: &str| {
            target["kind"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|x| x == k))
        };
        match target["name"].as_str().unwrap_or_default() {
            "port-tracer" if kind_is("bin") && !is_test => tracer = Some(exe),
            "port_tracer" if kind_is("lib") && is_test => lib_test = Some(exe),
            "kernel" if is_test => kernel_test = Some(exe),
            "tiers" if is_test => tiers_test = Some(exe),
            "cost" if is_test => cost_test = Some(exe),
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the guest binaries failed: {status}");
    }
    let bins = Binaries {
        tracer: tracer.context("cargo built no port-tracer binary")?,
        lib_test: lib_test.context("cargo built no library test binary")?,
        kernel_test: kernel_test.context("cargo built no kernel test binary")?,
        tiers_test: tiers_test.context("cargo built no tiers test binary")?,
        cost_test: cost_test.context("cargo built no cost test binary")?,
    };
    for b in [
        &bins.tracer,
        &bins.lib_test,
        &bins.kernel_test,
        &bins.tiers_test,
        &bins.cost_test,
    ] {
        ensure_static(b)?;
    }
    Ok(bins)
}

/// Fails unless `path` is an ELF file without a program interpreter (statically linked):
/// a dynamic one would only show up as "not found" on the guest's console.
fn ensure_static(path: &Path) -> Result<()> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
        if p_type == PT_INTERP {
            bail!(
                "{} is dynamically linked; the guests need static binaries",
                path.display()
            );
        }
    }
    Ok(())
}
