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
    /// Tests that said they could not run here (counted in `passed` by libtest, not
    /// here), each with why.
    pub skipped: Vec<(String, String)>,
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

#[derive(Default)]
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
    /// The first line of a crash of the guest's kernel (an oops or a panic), if any.
    pub crash: Option<String>,
    /// The console lines after the crash's first (its registers and call trace).
    pub crash_trace: Vec<String>,
    /// Crashes this outcome went on from (see [`Outcome::continue_with`]), each with its
    /// trace.
    pub crashes: Vec<String>,
    /// What the guest's hang watch printed (`@@pt hang` ... `@@pt hang end`: each user
    /// thread's state and kernel stack, each CPU's backtrace), if the console fell silent.
    pub hang_dump: Vec<String>,
    in_hang_dump: bool,
    /// The hang watch's dump ended: the guest is hung, nothing more will come.
    hung: bool,
    /// When the last test or section mark arrived: each progress line says how long its
    /// test took (tests run one at a time), so that CI's time can be accounted for.
    last_mark: Option<Instant>,
    /// When the current section began.
    section_start: Option<Instant>,
}

pub struct Limits {
    /// The whole guest run.
    pub total: Duration,
    /// Console silence after which the guest is taken for hung (the longest test, a
    /// 10,000-connection burst under emulation, prints within well under a minute).
    pub silence: Duration,
}

const TAIL_LINES: usize = 40;
/// Lines kept after a crash's first, and of a hang's dump.
const CRASH_TRACE_LINES: usize = 60;
const HANG_DUMP_LINES: usize = 400;

/// Boots `kernel` with `initramfs` (software emulation: KVM guests hang on this machine
/// kind), streaming the console to `log` and progress lines to stdout.
pub fn boot(kernel: &Kernel, initramfs: &Path, log: &Path, limits: &Limits) -> Result<Outcome> {
    // One host thread runs both vCPUs (`thread=single`): with a thread per vCPU, live code
    // patching (a static key switched as programs attach and detach) raced the other
    // vCPU's translated code, which then hit the patch's int3 (`Oops: int3` in timer
    // code, three boots in a row on 6.12.118's cgroup suite). The guest stays SMP.
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=single", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1 softlockup_panic=1"])
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
    let mut out = Outcome::default();
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
        if out.hung {
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    Ok(out)
}

impl Outcome {
    /// This outcome, cut short by `crash`, carried on by `again`, a boot for the sections
    /// this one never ended.
    pub fn continue_with(&mut self, again: Outcome, crash: String) {
        self.sections.retain(|s| s.rc.is_some());
        self.sections.extend(again.sections);
        self.booted = self.booted.take().or(again.booted);
        (self.done, self.cut, self.tail, self.crash, self.crash_trace) = (
            again.done,
            again.cut,
            again.tail,
            again.crash,
            again.crash_trace,
        );
        self.hang_dump = again.hang_dump;
        self.crashes.push(crash);
        self.crashes.extend(again.crashes);
    }
}

/// Updates `out` with one console line.
pub fn read_line(kernel: &str, line: &str, out: &mut Outcome) {
    if out.crash.is_some() && out.crash_trace.len() < CRASH_TRACE_LINES {
        out.crash_trace.push(line.trim_end().to_string());
    }
    if out.in_hang_dump && out.hang_dump.len() < HANG_DUMP_LINES {
        out.hang_dump.push(line.trim_end().to_string());
    }
    if out.crash.is_none()
        && [
            "Oops:",
            "Kernel panic",
            "BUG: unable to handle",
            "BUG: soft lockup",
        ]
        .iter()
        .any(|m| line.contains(m))
    {
        out.crash = Some(line.trim().to_string());
    }
    // The first line after boot may carry the console's reset sequences before the mark.
    if let Some(marker) = line.find("@@pt ").map(|i| &line[i + 5..]) {
        let mut words = marker.split_whitespace();
        match words.next() {
            Some("kernel") => out.booted = words.next().map(String::from),
            Some("begin") => {
                let name = words.next().unwrap_or("?").to_string();
                println!("[{kernel}] {name}: running");
                out.section_start = Some(Instant::now());
                out.last_mark = out.section_start;
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
                        "[{kernel}] {}: {} passed, {} failed, {} skipped, exit {}{}",
                        s.name,
                        s.passed,
                        s.failed,
                        s.skipped.len(),
                        s.rc.map_or("?".into(), |r| r.to_string()),
                        took(out.section_start)
                    );
                }
            }
            Some("done") => out.done = true,
            Some("skip") => {
                if let Some(s) = out.sections.last_mut() {
                    let test = words.next().unwrap_or("?").to_string();
                    let why: Vec<&str> = words.collect();
                    s.skipped.push((test, why.join(" ")));
                    s.passed = s.passed.saturating_sub(1);
                }
            }
            Some("hang:") => {
                println!("[{kernel}] {line}");
                out.in_hang_dump = true;
                out.hang_dump.push(line.to_string());
            }
            Some("hang") => {
                // Hung like a crashed kernel: the sections left go to another boot.
                out.in_hang_dump = false;
                out.hung = true;
                if out.crash.is_none() {
                    let test = out.sections.last().map_or("?".into(), |s| {
                        format!("{} after {} tests", s.name, s.passed + s.failed)
                    });
                    out.crash = Some(format!("hung: a test printed nothing for 120 s ({test})"));
                }
            }
            _ => println!("[{kernel}] {line}"),
        }
        return;
    }
    let Some(s) = out.sections.last_mut().filter(|s| s.rc.is_none()) else {
        return;
    };
    let mut test_took = || {
        let t = took(out.last_mark);
        out.last_mark = Some(Instant::now());
        t
    };
    s.output.push(line.to_string());
    if let Some(name) = line
        .strip_prefix("test ")
        .and_then(|l| l.strip_suffix(" ... ok"))
    {
        s.passed += 1;
        println!("[{kernel}] {}: {name} ok{}", s.name, test_took());
    } else if let Some(name) = line
        .strip_prefix("test ")
        .and_then(|l| l.strip_suffix(" ... FAILED"))
    {
        s.failed += 1;
        s.failures.push(name.to_string());
        println!("[{kernel}] {}: {name} FAILED{}", s.name, test_took());
    } else if let Some(counts) = line.strip_prefix("test result: ") {
        // A test that prints (`--nocapture`, as the cost section runs) splits its
        // "test NAME ... ok" line: libtest's own totals count it.
        let count = |what: &str| -> u64 {
            counts
                .split(['.', ';'])
                .find_map(|part| part.trim().strip_suffix(what)?.trim().parse().ok())
                .unwrap_or(0)
        };
        s.passed = s.passed.max(count(" passed"));
        s.failed = s.failed.max(count(" failed"));
    }
}

/// " (N s)" since `mark`, or nothing without one.
fn took(mark: Option<Instant>) -> String {
    mark.map_or(String::new(), |m| {
        format!(" ({:.1} s)", m.elapsed().as_secs_f64())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome::default()
    }

    #[test]
    fn counts_a_test_whose_own_output_split_its_result_line() {
        let mut o = outcome();
        for l in [
            "@@pt begin cost",
            "running 1 test",
            "test cost_per_operation has been running for over 60 seconds",
            "test cost_per_operation ... | tier | tcp ns |",
            "| cgroup | 3119 |",
            "ok",
            "",
            "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 70.2s",
            "@@pt end cost rc=0",
        ] {
            read_line("k", l, &mut o);
        }
        let s = &o.sections[0];
        assert_eq!((s.passed, s.failed, s.rc), (1, 0, Some(0)));
        assert!(s.ok());
    }

    #[test]
    fn a_test_that_said_it_skipped_is_not_a_pass() {
        let mut o = outcome();
        for l in [
            "@@pt begin lib",
            "test a ... ok",
            "test b ... ok",
            "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "@@pt skip b userspace only: the host runs it",
            "@@pt end lib rc=0",
        ] {
            read_line("k", l, &mut o);
        }
        let s = &o.sections[0];
        assert_eq!((s.passed, s.failed), (1, 0));
        assert_eq!(
            s.skipped,
            [(
                "b".to_string(),
                "userspace only: the host runs it".to_string()
            )]
        );
        assert!(s.ok());
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
