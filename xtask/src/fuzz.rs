//! `cargo xtask fuzz`: the trace decoder's fuzz targets (`port-tracer/fuzz`) under
//! cargo-fuzz and libFuzzer, on the nightly toolchain, one job, for a bounded time.
//!
//! The committed corpus (`port-tracer/fuzz/corpus/TARGET`) seeds each run; what a run
//! finds goes to a working corpus under `target/fuzz/`, so fuzzing does not grow the
//! repository. `--merge` adds to the committed corpus only the inputs that bring new
//! coverage.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

use crate::{output_of, run, workspace_root, NIGHTLY};

#[derive(clap::Args)]
pub(crate) struct Options {
    /// Only this target (default: each in turn): trace_reader or trace_replay.
    #[arg(long)]
    target: Option<String>,
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Instead of fuzzing: add the working corpus's inputs that bring new coverage to the
    /// committed corpus (libFuzzer's merge).
    #[arg(long)]
    merge: bool,
}

/// The cargo-fuzz release this project uses (builds with stable 1.95).
const CARGO_FUZZ_VERSION: &str = "0.13.1";
const TARGETS: &[&str] = &["trace_reader", "trace_replay"];

pub(crate) fn run_fuzz(opts: &Options) -> Result<()> {
    let targets = match opts.target.as_deref() {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t}: the targets are {}", TARGETS.join(", ")),
    };
    install_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz_dir = root.join("port-tracer/fuzz");
    for target in targets {
        let committed = fuzz_dir.join("corpus").join(target);
        let working = root.join("target/fuzz/corpus").join(target);
        std::fs::create_dir_all(&working)?;
        let mut cmd = cargo_fuzz(&root, &fuzz_dir, target);
        if opts.merge {
            // Into the first directory, from the others: only what adds coverage.
            cmd.arg(&committed).arg(&working).arg("--").arg("-merge=1");
            run(&mut cmd)?;
            eprintln!("xtask: merged new coverage into {}", committed.display());
            continue;
        }
        // New inputs go to the first directory; the committed corpus only seeds.
        cmd.arg(&working).arg(&committed).arg("--").args([
            format!("-max_total_time={}", opts.seconds),
            "-timeout=10".into(),
            "-print_final_stats=1".into(),
        ]);
        let result = run(&mut cmd);
        eprintln!(
            "xtask: {target}: working corpus {}, seeds {}, crash artifacts in {}",
            working.display(),
            committed.display(),
            fuzz_dir.join("artifacts").join(target).display()
        );
        result?;
    }
    Ok(())
}

/// `cargo fuzz run TARGET` on the nightly toolchain, one job, building under `target/fuzz`.
/// No sanitizer: the code under test is safe Rust but for one length-checked
/// `read_unaligned`, and AddressSanitizer would halve the executions for nothing it can see
/// (panics, overflow and debug assertions are caught without it).
fn cargo_fuzz(root: &Path, fuzz_dir: &Path, target: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{NIGHTLY}"))
        .args([
            "fuzz",
            "run",
            "--jobs",
            "1",
            "--sanitizer",
            "none",
            "--fuzz-dir",
        ])
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(root.join("target/fuzz/build"))
        .arg(target);
    cmd
}

/// Installs the pinned cargo-fuzz where it (that version) is missing.
fn install_cargo_fuzz() -> Result<()> {
    let have = output_of(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if have.contains(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}
