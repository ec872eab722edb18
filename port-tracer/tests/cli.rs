//! The command line as a user meets it: bad input gives one clear line and a non-zero
//! exit, never a panic.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

fn tracer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_port-tracer"))
}

fn assert_clean_error(out: &std::process::Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_explains_the_tool() {
    let out = tracer().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in [
        "--format",
        "--duration",
        "--port",
        "--attach",
        "TIME_WAIT",
        "jsonl",
        "record",
        "report",
    ] {
        assert!(text.contains(word), "--help lacks {word}");
    }
}

#[test]
fn unknown_flag_values_are_refused() {
    let out = tracer().args(["--proto", "sctp"]).output().unwrap();
    assert_clean_error(&out, 2, "sctp");
    let out = tracer().args(["--duration", "soon"]).output().unwrap();
    assert_clean_error(&out, 2, "invalid duration");
    let out = tracer().args(["--port", "9-1"]).output().unwrap();
    assert_clean_error(&out, 2, "invalid port range");
}

#[test]
fn not_root_is_refused_with_a_clear_message() {
    let mut cmd = if support::is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_port-tracer"));
        c
    } else {
        tracer()
    };
    let out = cmd.args(["--duration", "1"]).output().unwrap();
    assert_clean_error(&out, 1, "missing capability CAP_BPF and CAP_PERFMON");
    assert_clean_error(&out, 1, "Run it as root (sudo)");
}

#[test]
fn a_network_namespace_that_does_not_exist_is_refused_or_warned_about() {
    // No namespace has inode 0: refused before anything runs.
    let out = tracer().args(["--netns", "0"]).output().unwrap();
    assert_clean_error(&out, 2, "--netns");
    let out = tracer()
        .args(["report", "x", "--netns", "0"])
        .output()
        .unwrap();
    assert_clean_error(&out, 2, "--netns");
    // One nobody uses now may appear later: traced, with a warning.
    require_root!();
    let out = tracer()
        .args([
            "--netns",
            "4294967295",
            "--duration",
            "1",
            "--output",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: no network namespace 4294967295 exists now"),
        "{stderr}"
    );
}

#[test]
fn unwritable_output_file_is_refused() {
    let out = tracer()
        .args(["--output", "/nonexistent-dir/trace.jsonl"])
        .output()
        .unwrap();
    assert_clean_error(
        &out,
        1,
        "cannot create output file /nonexistent-dir/trace.jsonl",
    );
}

#[test]
fn full_disk_is_reported() {
    require_root!();
    let out = tracer()
        .args([
            "--format",
            "jsonl",
            "--duration",
            "1",
            "--output",
            "/dev/full",
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, 1, "No space left on device");
}

#[test]
fn a_closed_pipe_ends_quietly() {
    require_root!();
    let mut child = tracer()
        .args(["--format", "jsonl", "--duration", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_until_tracing(&mut child);
    // Read one record, then hang up, as `| head -1` does.
    let out = child.stdout.take().unwrap();
    let mut out = BufReader::new(out);
    let mut first = String::new();
    for _ in 0..50 {
        let _ = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    }
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    drop(out);
    for _ in 0..50 {
        let _ = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}");
}

#[test]
fn bad_trace_files_are_refused_clearly() {
    let dir = std::env::temp_dir().join(format!("port-tracer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = |path: &std::path::Path| tracer().arg("report").arg(path).output().unwrap();

    let out = report(&dir.join("missing.ptrace"));
    assert_clean_error(&out, 1, "cannot open trace");

    let foreign = dir.join("foreign.ptrace");
    std::fs::write(&foreign, "{\"type\":\"assign\"}\n").unwrap();
    assert_clean_error(&report(&foreign), 1, "not a port-tracer trace");

    let newer = dir.join("newer.ptrace");
    let mut bytes = port_tracer::trace_file::MAGIC.to_vec();
    bytes.extend_from_slice(&99u16.to_le_bytes());
    bytes.extend_from_slice(&[0; 32]);
    std::fs::write(&newer, bytes).unwrap();
    assert_clean_error(&report(&newer), 1, "version 99 is newer");

    let out = tracer().args(["record"]).output().unwrap();
    assert_clean_error(&out, 2, "--output");
    let out = tracer()
        .args([
            "record",
            "--output",
            "/nonexistent-dir/t.ptrace",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create trace file") || stderr.contains("missing capability"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A trace of no events in which one TCP listener held port 8443 from the start: what
/// `export` turns into one lifetime, without root.
fn trace_holding_one_listener(path: &std::path::Path) {
    trace_holding_one_listener_ending(path, true);
}

/// [`trace_holding_one_listener`], with its end mark or without (a recorder killed).
fn trace_holding_one_listener_ending(path: &std::path::Path, end_mark: bool) {
    trace_holding_one_listener_on(path, end_mark, "h");
}

/// [`trace_holding_one_listener_ending`] recorded on a host of name `host`, tracing started
/// at 2026-12-31 23:59:59 UTC.
fn trace_holding_one_listener_on(path: &std::path::Path, end_mark: bool, host: &str) {
    use port_tracer::{
        event::{Comm, Endpoints, Family, Proto, Task},
        lifetime::HeldAtStart,
        trace_file::{Metadata, TraceWriter, RECORD_SIZE_VARIABLE},
    };
    let meta = Metadata {
        boot_id: None,
        part: None,
        recorded_only: None,
        host: host.into(),
        kernel_release: "6.18.0".into(),
        tier: "tracepoint".into(),
        port_tracer_version: env!("CARGO_PKG_VERSION").into(),
        record_size: RECORD_SIZE_VARIABLE,
        lost_reasons: Vec::new(),
        realtime_offset_ns: 1_798_761_598_000_000_000,
        started_ns: 1_000_000_000,
        port_ranges: Vec::new(),
    };
    let mut w = TraceWriter::new(std::fs::File::create(path).unwrap(), &meta).unwrap();
    let held = HeldAtStart {
        ends: Endpoints {
            proto: Proto::Tcp,
            family: Family::Ipv6,
            netns: 1,
            laddr: "::".parse().unwrap(),
            lport: 8443,
            raddr: "::".parse().unwrap(),
            rport: 0,
        },
        owner: Task {
            pid: 42,
            comm: Comm::new("nginx"),
            ..Default::default()
        },
        listening: true,
        time_wait: false,
        seen_ns: 0,
    };
    w.write_held(&[held]).unwrap();
    if end_mark {
        w.finish(0).unwrap();
    } else {
        w.flush().unwrap();
    }
}

#[test]
fn a_trace_without_its_end_mark_is_reported_whole_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("port-tracer-cli-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("killed.ptrace");
    trace_holding_one_listener_ending(&trace, false);
    let out = tracer()
        .args(["report", trace.to_str().unwrap(), "--format", "jsonl"])
        .output()
        .unwrap();
    assert_clean_error(&out, 1, "no end mark: the recording did not stop cleanly");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"lport\":8443"),
        "reported whole: {stdout}"
    );
    assert!(stdout
        .lines()
        .last()
        .unwrap()
        .contains("\"type\":\"summary\""));
    let csv = dir.join("killed.csv");
    let out = tracer()
        .args([
            "export",
            trace.to_str().unwrap(),
            "--format",
            "csv",
            "--output",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    assert_clean_error(&out, 1, "no end mark");
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap().lines().count(),
        2,
        "header and row"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parquet_is_written_to_a_file_only() {
    let dir = std::env::temp_dir().join(format!("port-tracer-cli-pq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("held.ptrace");
    trace_holding_one_listener(&trace);
    let needs_file = "--format parquet writes a binary file: name it with --output FILE";

    // Refused before anything is traced or read, in one line.
    for args in [
        vec!["--format", "parquet", "--duration", "1"],
        vec!["report", trace.to_str().unwrap(), "--format", "parquet"],
    ] {
        let out = tracer().args(&args).output().unwrap();
        assert_clean_error(&out, 1, needs_file);
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
        assert!(out.stdout.is_empty());
    }
    let out = tracer()
        .args(["export", trace.to_str().unwrap(), "--format", "parquet"])
        .output()
        .unwrap();
    assert_clean_error(&out, 2, "--output");

    let export = |to: &str| {
        tracer()
            .args(["export", trace.to_str().unwrap(), "--format", "parquet"])
            .args(["--output", to])
            .output()
            .unwrap()
    };
    let out = export("/dev/full");
    assert_clean_error(&out, 1, "writing to /dev/full: No space left on device");

    let file = dir.join("held.parquet");
    let out = export(file.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let rows: Vec<String> = reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| r.unwrap().to_string())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    for field in [
        "laddr: \"::\"",
        "lport: 8443",
        "pid: 42",
        "comm: \"nginx\"",
        "origin: \"preexisting\"",
        "assigned_ns: null",
        "released_ns: null",
    ] {
        assert!(rows[0].contains(field), "{field} in {}", rows[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every `--output`: a symbolic link planted by another user in a world-writable directory
/// is refused and its target untouched; an existing file is refused, and replaced with
/// --force; what is written is the owner's only (mode 0600), whatever the umask.
#[test]
fn output_files_are_created_private_never_through_a_link_never_over_a_file() {
    require_root!();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("port-tracer-cli-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let trace = dir.join("held.ptrace");
    trace_holding_one_listener(&trace);
    let victim = dir.join("victim");
    std::fs::write(&victim, "root's own\n").unwrap();
    let before = std::fs::metadata(&victim).unwrap();

    let t = trace.to_str().unwrap().to_string();
    type ArgsFor = Box<dyn Fn(&str) -> Vec<String>>;
    let runs: Vec<(&str, ArgsFor)> = vec![
        (
            "live",
            Box::new(|o: &str| s(&["--duration", "1", "--output", o])),
        ),
        (
            "record",
            Box::new(|o: &str| s(&["record", "--duration", "1", "--output", o])),
        ),
        (
            "report",
            Box::new(move |o: &str| s(&["report", &t, "--output", o])),
        ),
        (
            "export",
            Box::new({
                let t = trace.to_str().unwrap().to_string();
                move |o: &str| s(&["export", &t, "--format", "csv", "--output", o])
            }),
        ),
    ];
    for (name, args) in &runs {
        // A link planted by nobody.
        let link = dir.join(format!("{name}.link"));
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        for force in [false, true] {
            let mut a = args(link.to_str().unwrap());
            if force {
                a.push("--force".into());
            }
            let out = tracer().args(&a).output().unwrap();
            assert_clean_error(&out, 1, "is a symbolic link");
        }
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"root's own\n", "{name}");
        assert_eq!(after.mtime_nsec(), before.mtime_nsec(), "{name}");

        // A new file: the owner's only, even under a permissive umask.
        let file = dir.join(format!("{name}.out"));
        let mut cmd = tracer();
        cmd.args(args(file.to_str().unwrap()));
        // SAFETY: umask is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::umask(0);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("no end mark"),
            "{name}: {stderr}"
        );
        let m = std::fs::metadata(&file).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{name}");

        // An existing file, here someone else's: refused, then replaced (a new file).
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        let out = tracer()
            .args(args(file.to_str().unwrap()))
            .output()
            .unwrap();
        assert_clean_error(&out, 1, "exists: not overwritten (--force replaces it)");
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), 65534, "{name}");
        let mut a = args(file.to_str().unwrap());
        a.push("--force".into());
        let out = tracer().args(&a).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("no end mark"),
            "{name}: {stderr}"
        );
        let m = std::fs::metadata(&file).unwrap();
        assert_eq!(
            (m.uid(), m.permissions().mode() & 0o777),
            (0, 0o600),
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn report_names_the_host_recorded_or_the_one_given() {
    let trace =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup.ptrace");
    let lifetimes = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = tracer()
            .args(["report", "--format", "jsonl"])
            .arg(&trace)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "lifetime")
            .collect()
    };
    let file = std::fs::File::open(&trace).unwrap();
    let recorded = port_tracer::trace_file::TraceReader::new(std::io::BufReader::new(file))
        .unwrap()
        .meta
        .host;
    let as_recorded = lifetimes(&[]);
    assert!(!as_recorded.is_empty());
    for lt in &as_recorded {
        assert_eq!(lt["host"], recorded.as_str());
        // Recorded before boot ids were: unknown.
        assert_eq!(lt["boot_id"], serde_json::Value::Null);
    }
    for lt in lifetimes(&["--host", "db-7.example"]) {
        assert_eq!(lt["host"], "db-7.example");
    }
    let out = tracer()
        .args(["report", "--host", "a/../b"])
        .arg(&trace)
        .output()
        .unwrap();
    assert_clean_error(&out, 2, "is not a host name");
}

/// Files under `dir`, relative to it, sorted.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-mindepth", "1", "-type", "f", "-printf", "%P\\n"])
        .output()
        .unwrap();
    let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    files.sort();
    files
}

#[test]
fn output_dir_takes_parquet_only_and_keeps_a_recorded_host_under_it() {
    let dir = std::env::temp_dir().join(format!("port-tracer-cli-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("hostile.ptrace");
    // Whatever the traced host called itself (sethostname takes any bytes but NUL).
    trace_holding_one_listener_on(&trace, true, "../../x=y/z\n");
    let fleet = dir.join("fleet");
    let export = |args: &[&str]| {
        tracer()
            .arg("export")
            .arg(&trace)
            .args(args)
            .args(["--output-dir", fleet.to_str().unwrap()])
            .output()
            .unwrap()
    };

    // Other formats: one line, before anything is made.
    for format in ["jsonl", "csv", "chrome-trace"] {
        let out = export(&["--format", format]);
        assert_clean_error(
            &out,
            1,
            &format!(
                "--output-dir writes Parquet partitions: use --format parquet with it, or \
                 --output FILE for --format {format}"
            ),
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
        assert!(!fleet.exists());
    }
    let out = export(&["--format", "parquet", "--output", "x.parquet"]);
    assert_clean_error(&out, 2, "cannot be used with");

    // The recorded name escaped, under DIR; the held listener dated by the start.
    let out = export(&["--format", "parquet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        files_under(&fleet),
        ["host=..%2F..%2Fx%3Dy%2Fz%0A/date=2026-12-31/part-0.parquet"]
    );
    assert_eq!(files_under(&dir.join("x=y")), Vec::<String>::new());
    // Named instead: the name given.
    let out = export(&["--format", "parquet", "--host", "db-7.example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fleet
        .join("host=db-7.example/date=2026-12-31/part-0.parquet")
        .is_file());

    // --help says the layout.
    let help = tracer().args(["export", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--output-dir <DIR>",
        "--max-file-size <SIZE>",
        "DIR/host=HOST/date=YYYY-MM-DD/part-N.parquet",
        "__HIVE_DEFAULT_PARTITION__",
        "hive_partitioning = true",
        "basePath",
    ] {
        assert!(help.contains(needle), "no `{needle}` in:\n{help}");
    }

    // DIR: a symbolic link is refused.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&fleet, &link).unwrap();
    let out = tracer()
        .arg("export")
        .arg(&trace)
        .args([
            "--format",
            "parquet",
            "--output-dir",
            link.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, 1, "link is a symbolic link: not followed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_partitioned_export_that_fails_leaves_no_part() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("port-tracer-cli-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let trace =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup.ptrace");
    // A file system of 32K, mounted in a mount namespace of its own: parts of about 4K
    // fill it after a few closed ones; and one mounted read-only.
    let run = |options: &str| {
        let script = format!(
            "mount -t tmpfs -o {options} fleet-test \"$1\" && \"$2\" export \"$3\" --format \
             parquet --output-dir \"$1\" --max-file-size 4K; echo \"exit $?\" >&2; \
             find \"$1\" -mindepth 1 -type f -printf 'left %P\\n' >&2"
        );
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .arg(&dir)
            .arg(env!("CARGO_BIN_EXE_port-tracer"))
            .arg(&trace)
            .output()
            .unwrap()
    };
    let out = run("size=32k");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit 1"), "{stderr}");
    let error = format!(
        "port-tracer: writing Parquet partitions under {}: ",
        dir.display()
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&error))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(".parquet.tmp: No space left on device"),
        "names the part: {line}"
    );
    // Parts closed before the disk filled, then taken back with the one that failed.
    assert!(!line.contains("/.part-0.parquet.tmp"), "{line}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("left ")),
        "nothing left: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = run("ro");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "port-tracer: cannot write in output directory {}: Read-only file system",
            dir.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("exit 1"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `completions SHELL` prints a script for each shell the package ships one for; the
/// hidden `man-pages DIR` writes one page per command, which --help does not list.
#[test]
fn completions_and_manual_pages_come_from_the_binary() {
    for (shell, first) in [
        ("bash", "_port__tracer() {"),
        ("zsh", "#compdef port-tracer"),
        ("fish", "# Print an optspec for argparse"),
    ] {
        let out = tracer().args(["completions", shell]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(text.contains(first), "{shell}: {text}");
        assert!(
            text.contains("record") && text.contains("report"),
            "{shell}"
        );
    }
    // A closed pipe (`| head`) ends it quietly.
    let mut child = tracer()
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tracer().args(["completions", "tcsh"]).output().unwrap();
    assert_clean_error(&out, 2, "tcsh");

    let dir = std::env::temp_dir().join(format!("port-tracer-cli-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let out = tracer().arg("man-pages").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "port-tracer-completions.1",
            "port-tracer-export.1",
            "port-tracer-record.1",
            "port-tracer-report.1",
            "port-tracer-top.1",
            "port-tracer.1",
        ]
    );
    // Its stdout names them, one a line.
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
    let page = std::fs::read_to_string(dir.join("port-tracer.1")).unwrap();
    assert!(page.contains("\n.TH port-tracer 1 "), "{page}");
    std::fs::remove_dir_all(&dir).unwrap();
    // A directory that does not exist: one line, status 1.
    let out = tracer()
        .args(["man-pages", "/nonexistent/port-tracer-man"])
        .output()
        .unwrap();
    assert_clean_error(&out, 1, "/nonexistent/port-tracer-man");

    let help = tracer().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("completions"), "{help}");
    assert!(!help.contains("man-pages"), "{help}");
}

/// The completion script of `shell`, in a file of its own (named as zsh wants it) in a
/// fresh directory.
fn completion_file(shell: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("port-tracer-cli-{shell}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let out = tracer().args(["completions", shell]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).unwrap();
    path
}

fn shell_found(shell: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {shell}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// bash, with the script loaded, completes a command and a flag.
#[test]
fn bash_completes_commands_and_flags() {
    let file = completion_file("bash", "port-tracer");
    let complete = |words: &str| {
        let script = format!(
            "source {} && COMP_WORDS=({words}) && COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)) \
             && _port__tracer port-tracer \"${{COMP_WORDS[COMP_CWORD]}}\" \
             \"${{COMP_WORDS[COMP_CWORD-1]}}\" && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(complete("port-tracer rep").trim(), "report");
    let flags = complete("port-tracer --fo");
    assert!(flags.lines().any(|l| l == "--format"), "{flags}");
    assert!(flags.lines().any(|l| l == "--force"), "{flags}");
    let values = complete("port-tracer --format j");
    assert_eq!(values.trim(), "jsonl");
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// zsh parses the script, and its completion system takes it for port-tracer. Skipped
/// where zsh is not installed.
#[test]
fn zsh_takes_the_completion_for_port_tracer() {
    if !shell_found("zsh") {
        support::skip("zsh is not installed");
        return;
    }
    let file = completion_file("zsh", "_port-tracer");
    let dir = file.parent().unwrap();
    let out = Command::new("zsh").arg("-n").arg(&file).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let script = format!(
        "fpath=({} $fpath); autoload -Uz compinit && compinit -u -d {}/zcompdump; \
         print -r -- $_comps[port-tracer]",
        dir.display(),
        dir.display()
    );
    let out = Command::new("zsh")
        .args(["-f", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "_port-tracer");
    std::fs::remove_dir_all(dir).unwrap();
}

/// fish, with the script loaded, completes a command and a flag. Skipped where fish is
/// not installed.
#[test]
fn fish_completes_commands_and_flags() {
    if !shell_found("fish") {
        support::skip("fish is not installed");
        return;
    }
    let file = completion_file("fish", "port-tracer.fish");
    let script = format!(
        "source {}; complete -C 'port-tracer rep'; complete -C 'port-tracer --form'",
        file.display()
    );
    let out = Command::new("fish")
        .args(["--no-config", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("report\t")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("--format\t")), "{text}");
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}
