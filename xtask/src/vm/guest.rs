//! Booting one kernel under qemu and reading what its `/init` reports on the console.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::kernels::Kernel;

/// One suite run inside the guest (`lib`, a tier, `equivalence`).
#[derive(Debug, Default)]
pub struct Section {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    /// Names of the failed tests.
    pub failures: Vec<String>,
    /// The exit status, once the section ended.
    pub rc: Option<i32>,
    /// Its console output, for the failure report.
    pub output: Vec<String>,
}

impl Section {
    pub fn ok(&self) -> bool {
        self.rc == Some(0) && self.failed == 0
    }
}

pub struct Outcome {
    /// `uname -r` as the guest reported it (None: it never got that far).
    pub booted: Option<String>,
    pub sections: Vec<Section>,
    /// The guest ran its whole plan and powered off.
    pub done: bool,
    /// Why the run was cut short, if it was.
    pub cut: Option<String>,
    /// The last console lines.
    pub tail: Vec<String>,
}

pub struct Limits {
    /// The whole guest run.
    pub total: Duration,
    /// Console silence after which the guest is taken for hung (the longest test, a
    /// 10,000-connection burst under emulation, prints within well under a minute).
    pub silence: Duration,
}

const TAIL_LINES: usize = 40;

/// Boots `kernel` with `initramfs` (software emulation: KVM guests hang on this machine
/// kind), streaming the console to `log` and progress lines to stdout.
pub fn boot(kernel: &Kernel, initramfs: &Path, log: &Path, limits: &Limits) -> Result<Outcome> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(["-nographic", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(text).is_err() {
                break;
            }
        }
    });

    let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut out = Outcome {
        booted: None,
        sections: Vec::new(),
        done: false,
        cut: None,
        tail: Vec::new(),
    };
    let start = Instant::now();
    loop {
        let left = limits.total.saturating_sub(start.elapsed());
        let line = match rx.recv_timeout(left.min(limits.silence)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                out.cut = Some(if left <= limits.silence {
                    format!("still running after {} s", limits.total.as_secs())
                } else {
                    format!("console silent for {} s", limits.silence.as_secs())
                });
                let _ = child.kill();
                break;
            }
        };
        writeln!(log, "{line}")?;
        out.tail.push(line.clone());
        if out.tail.len() > TAIL_LINES {
            out.tail.remove(0);
        }
        read_line(kernel.name, &line, &mut out);
    }
    let _ = child.wait();
    Ok(out)
}

/// Updates `out` with one console line.
fn read_line(kernel: &str, line: &str, out: &mut Outcome) {
    // The first line after boot may carry the console's reset sequences before the mark.
    if let Some(marker) = line.find("@@pt ").map(|i| &line[i + 5..]) {
        let mut words = marker.split_whitespace();
        match words.next() {
            Some("kernel") => out.booted = words.next().map(String::from),
            Some("begin") => {
                let name = words.next().unwrap_or("?").to_string();
                println!("[{kernel}] {name}: running");
                out.sections.push(Section {
                    name,
                    ..Section::default()
                });
            }
            Some("end") => {
                if let Some(s) = out.sections.last_mut() {
                    s.rc = words
                        .find_map(|w| w.strip_prefix("rc="))
                        .and_then(|rc| rc.parse().ok());
                    println!(
                        "[{kernel}] {}: {} passed, {} failed, exit {}",
                        s.name,
                        s.passed,
                        s.failed,
                        s.rc.map_or("?".into(), |r| r.to_string())
                    );
                }
            }
            Some("done") => out.done = true,
            _ => println!("[{kernel}] {line}"),
        }
        return;
    }
    let Some(s) = out.sections.last_mut().filter(|s| s.rc.is_none()) else {
        return;
    };
    s.output.push(line.to_string());
    if let Some(name) = line
        .strip_prefix("test ")
        .and_then(|l| l.strip_suffix(" ... ok"))
    {
        s.passed += 1;
        println!("[{kernel}] {}: {name} ok", s.name);
    } else if let Some(name) = line
        .strip_prefix("test ")
        .and_then(|l| l.strip_suffix(" ... FAILED"))
    {
        s.failed += 1;
        s.failures.push(name.to_string());
        println!("[{kernel}] {}: {name} FAILED", s.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            booted: None,
            sections: Vec::new(),
            done: false,
            cut: None,
            tail: Vec::new(),
        }
    }

    #[test]
    fn reads_sections_results_and_failures() {
        let mut o = outcome();
        for l in [
            "[    0.5] random kernel line",
            "\x1bc\x1b[?7l\x1b[2J@@pt kernel 6.1.0-56-cloud-amd64",
            "@@pt begin fentry",
            "running 3 tests",
            "test a ... ok",
            "test b ... FAILED",
            "test c ... ignored",
            "@@pt end fentry rc=101",
            "@@pt begin kprobe",
            "test a ... ok",
        ] {
            read_line("k", l, &mut o);
        }
        assert_eq!(o.booted.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(o.sections.len(), 2);
        let f = &o.sections[0];
        assert_eq!((f.passed, f.failed, f.rc), (1, 1, Some(101)));
        assert_eq!(f.failures, ["b"]);
        assert!(!f.ok());
        let k = &o.sections[1];
        assert_eq!((k.passed, k.rc), (1, None));
        assert!(!k.ok(), "a section that never ended is not a pass");
        assert!(!o.done);
    }
}
