//! The Debian package as an administrator meets it: `cargo xtask package` builds it, `dpkg
//! -i` installs it on this machine, the installed program runs and traces, its manual page
//! renders, its completions load, systemd accepts its unit; `dpkg -r` and `dpkg -P` then
//! take it all away, leaving the machine as it was.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const PKG: &str = "port-tracer";
const UNIT: &str = "/lib/systemd/system/port-tracer.service";
const STATE: &str = "/var/lib/port-tracer";
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/port-tracer.service";

/// Says that the calling test is skipped, and why, in the file `cargo xtask test` counts
/// skips from (as `port_tracer::test_support::skip` does; xtask does not link the tracer).
fn skip(why: &str) {
    let name = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    eprintln!("skipped: {why}");
    if let Some(path) = std::env::var_os("PORT_TRACER_SKIPS") {
        let line = format!("{name}\t{}\n", why.replace(['\t', '\n'], " "));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("{name} skipped ({why}), but {path:?}: {e}"));
    }
}

fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// Runs `cmd`, which must succeed; its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's status of the package (`install ok installed`, `deinstall ok config-files`), or
/// None when dpkg knows nothing of it.
fn dpkg_status() -> Option<String> {
    let out = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", PKG]));
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !status.is_empty() && !status.ends_with("not-installed"))
        .then_some(status)
}

/// Runs dpkg with `args`, waiting for its lock while another installation holds it.
fn dpkg(args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = output(Command::new("dpkg").args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned() + &stderr;
        }
        if stderr.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        panic!("dpkg {args:?}: {}\n{stderr}", out.status);
    }
}

/// One entry of `dpkg-deb -c`: mode string, owner, path (absolute).
struct Entry {
    mode: String,
    owner: String,
    path: String,
}

fn contents(deb: &Path) -> Vec<Entry> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let path = fields.last().expect("a path").trim_start_matches('.');
            Entry {
                mode: fields[0].to_string(),
                owner: fields[1].to_string(),
                path: path.trim_end_matches('/').to_string(),
            }
        })
        .filter(|e| !e.path.is_empty())
        .collect()
}

/// What the package may change, read before and after: whether each path it holds (and
/// each directory above one) exists, the state directory, and the systemd configuration
/// under /etc (where enabling links go).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    exists: BTreeMap<String, bool>,
    etc_systemd: Vec<String>,
}

impl Snapshot {
    fn take(paths: &[String]) -> Snapshot {
        let mut exists = BTreeMap::new();
        for p in paths.iter().map(String::as_str).chain([STATE]) {
            for above in Path::new(p).ancestors() {
                exists.insert(
                    above.display().to_string(),
                    above.symlink_metadata().is_ok(),
                );
            }
        }
        let mut etc_systemd = Vec::new();
        list(Path::new("/etc/systemd/system"), &mut etc_systemd);
        etc_systemd.sort();
        Snapshot {
            exists,
            etc_systemd,
        }
    }
}

fn list(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let target = std::fs::read_link(&path)
            .map(|t| format!(" -> {}", t.display()))
            .unwrap_or_default();
        out.push(format!("{}{target}", path.display()));
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            list(&path, out);
        }
    }
}

/// Purges the package if the test ends (or panics) with it still installed.
struct Purge {
    armed: bool,
}

impl Drop for Purge {
    fn drop(&mut self) {
        if self.armed {
            let _ = Command::new("dpkg").args(["-P", PKG]).status();
        }
    }
}

/// `cargo xtask package --out DIR`; the package's path, which it prints last.
fn build_package(dir: &Path) -> PathBuf {
    let out = ok(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["package", "--out"])
        .arg(dir)
        .stderr(Stdio::inherit()));
    let deb = PathBuf::from(out.lines().last().expect("the package's path").trim());
    assert!(deb.starts_with(dir) && deb.exists(), "{}", deb.display());
    deb
}

/// port-tracer's version, from its manifest.
fn tracer_version() -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../port-tracer/Cargo.toml");
    std::fs::read_to_string(manifest)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version line")
        .to_string()
}

/// Whether dpkg is told not to install manual pages (minimal and container images say so
/// in /etc/dpkg/dpkg.cfg.d/): the `path-exclude` lines that cover them.
fn man_pages_excluded() -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir("/etc/dpkg/dpkg.cfg.d")
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| l.starts_with("path-exclude") && l.contains("/usr/share/man"))
                .map(|l| format!("{}: {l}", entry.path().display())),
        );
    }
    lines
}

/// `man` on a page, rendered to text in lines long enough not to hyphenate; the page's
/// words, one space apart, and its stderr.
fn man(args: &[&str]) -> (String, String) {
    let out = output(
        Command::new("man")
            .args(["-P", "cat"])
            .args(args)
            .env("MANWIDTH", "250")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("MANPAGER")
            .env_remove("PAGER"),
    );
    assert!(out.status.success(), "man {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    (
        text.split_whitespace().collect::<Vec<_>>().join(" "),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts what `man port-tracer` (and `man port-tracer-record`) show.
fn assert_man_pages_render(main: &str, record: &str) {
    for needle in [
        "NAME",
        "port-tracer - Trace every local port",
        "SYNOPSIS",
        "--metrics",
        "port-tracer-record(1)",
        "port-tracer-report(1)",
        "/var/lib/port-tracer/flight",
    ] {
        assert!(
            main.contains(needle),
            "man port-tracer lacks {needle}:\n{main}"
        );
    }
    assert!(
        record.contains("port-tracer-record - Record the raw events")
            && record.contains("--output"),
        "{record}"
    );
}

/// A short trace by the installed program: it starts, sees this process's listener and
/// connection on loopback, and stops cleanly at --duration.
fn trace_briefly() {
    let mut tracer = Command::new("/usr/bin/port-tracer")
        .args(["-d", "3", "--format", "jsonl", "--pid"])
        .arg(std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting /usr/bin/port-tracer");
    let mut stderr = BufReader::new(tracer.stderr.take().unwrap());
    let mut said = Vec::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let out = tracer.wait_with_output().unwrap();
            panic!(
                "the installed tracer ended before tracing ({}): {said:?}",
                out.status
            );
        }
        said.push(line.trim().to_string());
        if line.contains("tracing with") {
            break;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop((client, server, listener));
    let out = tracer.wait_with_output().unwrap();
    let rest = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {said:?} {rest}", out.status);
    assert!(!rest.contains("panicked"), "{rest}");
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let assigned = |origin: &str| {
        records
            .iter()
            .any(|r| r["type"] == "assign" && r["origin"] == origin && r["lport"] == port)
    };
    assert!(
        assigned("bind_ephemeral"),
        "no assign of port {port}: {records:?}"
    );
    assert_eq!(
        records.last().map(|r| r["type"].clone()),
        Some("summary".into())
    );
}

/// The unit's own command line, run by the installed program for a few seconds: its
/// flags parse, it serves metrics, and the flight recorder's ring reads back as a trace
/// with this process's connection in it (the state directory and the metrics port are
/// swapped for a temporary directory and a free port).
fn run_the_units_command(unit: &str) {
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart= line");
    let mut words: Vec<String> = exec.split_whitespace().map(String::from).collect();
    assert_eq!(words[0], "/usr/bin/port-tracer", "{exec}");
    let ring = std::env::temp_dir().join(format!("port-tracer-unit-ring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ring);
    for (flag, value) in [
        ("--record", ring.to_str().unwrap()),
        ("--metrics", "127.0.0.1:0"),
    ] {
        let at = words
            .iter()
            .position(|w| w == flag)
            .unwrap_or_else(|| panic!("no {flag} in {exec}"));
        words[at + 1] = value.to_string();
    }
    let mut tracer = Command::new(&words[0])
        .args(&words[1..])
        .args(["-d", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the unit's command");
    let mut stderr = BufReader::new(tracer.stderr.take().unwrap());
    let mut said = Vec::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let status = tracer.wait().unwrap();
            panic!("the unit's command ended before tracing ({status}): {said:?}");
        }
        said.push(line.trim().to_string());
        if line.contains("tracing with") {
            break;
        }
    }
    assert!(
        said.iter().any(|l| l.contains("serving metrics at")),
        "{said:?}"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    drop(listener);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = tracer.wait().unwrap();
    assert!(status.success(), "{status}: {said:?} {rest}");
    assert!(rest.contains("recorded"), "{rest}");
    let files: Vec<PathBuf> = std::fs::read_dir(&ring)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        !files.is_empty()
            && files
                .iter()
                .all(|f| f.extension().is_some_and(|x| x == "ptrace")),
        "{files:?}"
    );
    let report = ok(Command::new("/usr/bin/port-tracer")
        .arg("report")
        .arg(&ring)
        .args(["--format", "jsonl", "--pid"])
        .arg(std::process::id().to_string()));
    assert!(
        report.lines().any(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["type"] == "lifetime" && r["lport"] == port && r["origin"] == "bind_ephemeral"
        }),
        "port {port} not in the ring's report"
    );
    std::fs::remove_dir_all(&ring).unwrap();
}

#[test]
fn the_package_installs_runs_and_purges_leaving_the_machine_as_it_was() {
    if !is_root() {
        skip("not root (installs a Debian package with dpkg)");
        return;
    }
    if !found("dpkg") || !found("dpkg-deb") {
        skip("not a Debian system: no dpkg");
        return;
    }
    if let Some(status) = dpkg_status() {
        skip(&format!(
            "a port-tracer package is already on this machine ({status}): the test installs \
             and purges its own, so it leaves that one alone; `dpkg -P port-tracer` lets it run"
        ));
        return;
    }
    for (program, package) in [("man", "man-db"), ("systemd-analyze", "systemd")] {
        assert!(
            found(program),
            "no {program}: `cargo xtask setup` installs {package}"
        );
    }
    let version = tracer_version();
    let dir = std::env::temp_dir().join(format!("port-tracer-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let deb = build_package(&dir);

    // The archive: root's files, programs 0755, the rest 0644, directories 0755.
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("port-tracer_{version}_{}.deb", arch.trim())
    );
    let entries = contents(&deb);
    let files: Vec<String> = entries
        .iter()
        .filter(|e| !e.mode.starts_with('d'))
        .map(|e| e.path.clone())
        .collect();
    for e in &entries {
        assert_eq!(e.owner, "root/root", "{}", e.path);
        let want = if e.mode.starts_with('d') || e.path == "/usr/bin/port-tracer" {
            "rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert!(e.mode.ends_with(want), "{} is {}", e.path, e.mode);
        assert!(!e.mode.starts_with('l'), "{} is a link", e.path);
    }
    for want in [
        "/usr/bin/port-tracer",
        "/usr/share/man/man1/port-tracer.1.gz",
        "/usr/share/man/man1/port-tracer-record.1.gz",
        "/usr/share/bash-completion/completions/port-tracer",
        "/usr/share/zsh/vendor-completions/_port-tracer",
        "/usr/share/fish/vendor_completions.d/port-tracer.fish",
        UNIT,
        "/usr/share/doc/port-tracer/copyright",
    ] {
        assert!(files.iter().any(|f| f == want), "the package lacks {want}");
    }
    let field = |name: &str| {
        ok(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), PKG);
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), arch.trim());
    assert!(
        field("Depends").starts_with("libc6 (>= 2."),
        "{}",
        field("Depends")
    );
    for name in [
        "Maintainer",
        "Section",
        "Priority",
        "Description",
        "Installed-Size",
    ] {
        assert!(!field(name).is_empty(), "no {name}");
    }
    let copyright = ok(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - ./usr/share/doc/port-tracer/copyright",
        deb.display()
    )));
    assert!(
        copyright.contains("License: MIT or Apache-2.0"),
        "{copyright}"
    );

    // Nothing of it may be here already: dpkg would overwrite a file no package owns, and
    // the purge would then take away what was not the test's.
    if let Some(there) = files
        .iter()
        .map(String::as_str)
        .chain([STATE])
        .find(|p| Path::new(p).symlink_metadata().is_ok())
    {
        skip(&format!(
            "{there} exists and belongs to no port-tracer package: installing would overwrite \
             it, purging remove it"
        ));
        return;
    }
    let before = Snapshot::take(&files);
    let mut purge = Purge { armed: true };

    // Installed: the files at their places, the service neither enabled nor started.
    dpkg(&["-i", &deb.to_string_lossy()]);
    assert_eq!(dpkg_status().as_deref(), Some("install ok installed"));
    for f in &files {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    let mode = std::fs::metadata("/usr/bin/port-tracer")
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert!(
        !Path::new(ENABLED_LINK).exists(),
        "installing enabled the service"
    );
    assert!(!Path::new(STATE).exists(), "installing made {STATE}");

    // The installed program.
    let shown = ok(Command::new("/usr/bin/port-tracer").arg("--version"));
    assert_eq!(shown.trim(), format!("port-tracer {version}"));
    let help = ok(Command::new("/usr/bin/port-tracer").arg("--help"));
    assert!(
        help.contains("completions") && help.contains("--metrics"),
        "{help}"
    );
    for (shell, path) in [
        ("bash", "/usr/share/bash-completion/completions/port-tracer"),
        ("zsh", "/usr/share/zsh/vendor-completions/_port-tracer"),
        (
            "fish",
            "/usr/share/fish/vendor_completions.d/port-tracer.fish",
        ),
    ] {
        let script = ok(Command::new("/usr/bin/port-tracer").args(["completions", shell]));
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            script,
            "{path} is not what `port-tracer completions {shell}` prints"
        );
    }
    trace_briefly();
    run_the_units_command(
        &std::fs::read_to_string("/lib/systemd/system/port-tracer.service")
            .expect("the installed unit"),
    );

    // `man port-tracer`, where dpkg installs manual pages; else the page in the package.
    let excluded = man_pages_excluded();
    if Path::new("/usr/share/man/man1/port-tracer.1.gz").exists() {
        let where_ = ok(Command::new("man").args(["-w", "port-tracer"]));
        assert_eq!(where_.trim(), "/usr/share/man/man1/port-tracer.1.gz");
        let (main, warnings) = man(&["port-tracer"]);
        assert!(warnings.is_empty(), "man port-tracer warns: {warnings}");
        let (record, warnings) = man(&["port-tracer-record"]);
        assert!(
            warnings.is_empty(),
            "man port-tracer-record warns: {warnings}"
        );
        assert_man_pages_render(&main, &record);
    } else {
        assert!(
            !excluded.is_empty(),
            "dpkg installed no manual page and nothing in /etc/dpkg/dpkg.cfg.d excludes them"
        );
        eprintln!(
            "dpkg does not install manual pages here ({excluded:?}): rendering those in the \
             package with man -l"
        );
        let unpacked = dir.join("unpacked");
        ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
        let page = |name: &str| {
            let path = unpacked.join(format!("usr/share/man/man1/{name}.1.gz"));
            man(&["-l", &path.to_string_lossy()])
        };
        let (main, warnings) = page("port-tracer");
        assert!(warnings.is_empty(), "{warnings}");
        assert_man_pages_render(&main, &page("port-tracer-record").0);
    }

    // bash loads the completion and completes a command with it (zsh's and fish's are
    // checked by tests/cli.rs of port-tracer, where those shells are installed).
    let completed = ok(Command::new("bash").args([
        "--norc",
        "--noprofile",
        "-c",
        "source /usr/share/bash-completion/completions/port-tracer && complete -p port-tracer \
         && COMP_WORDS=(port-tracer rep) && COMP_CWORD=1 && COMP_LINE='port-tracer rep' \
         && COMP_POINT=15 && _port__tracer port-tracer rep port-tracer \
         && printf '%s\\n' \"${COMPREPLY[@]}\"",
    ]));
    assert!(completed.contains("-F _port__tracer"), "{completed}");
    assert!(completed.lines().any(|l| l == "report"), "{completed}");

    // systemd accepts the unit, with no word about it.
    {
        let out = output(Command::new("systemd-analyze").args(["verify", UNIT]));
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        // Where dpkg keeps manual pages out, Documentation=man:port-tracer(1) is not found
        // (and verify fails for that alone).
        let no_page = |l: &str| !excluded.is_empty() && l.contains("Command 'man port-tracer");
        let about_ours: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("port-tracer") && !no_page(l))
            .collect();
        assert!(
            about_ours.is_empty(),
            "systemd-analyze verify: {about_ours:?}"
        );
        let only_no_page = said.lines().all(|l| l.trim().is_empty() || no_page(l));
        assert!(
            out.status.success() || only_no_page,
            "systemd-analyze verify: {}: {said}",
            out.status
        );
    }

    // What using it leaves: the admin enables it, the service records.
    if found("systemctl") {
        ok(Command::new("systemctl").args(["enable", PKG]));
    } else {
        std::os::unix::fs::symlink(UNIT, ENABLED_LINK).unwrap();
    }
    assert!(Path::new(ENABLED_LINK).symlink_metadata().is_ok());
    std::fs::create_dir_all(format!("{STATE}/flight")).unwrap();
    std::fs::write(format!("{STATE}/flight/trace-1.ptrace"), b"recorded").unwrap();

    // Removed: the files go, the recordings stay; purged: they go too, and the link.
    dpkg(&["-r", PKG]);
    assert_eq!(dpkg_status().as_deref(), Some("deinstall ok config-files"));
    for f in &files {
        assert!(!Path::new(f).exists(), "{f} left after dpkg -r");
    }
    assert!(Path::new(STATE).join("flight/trace-1.ptrace").exists());
    dpkg(&["-P", PKG]);
    purge.armed = false;
    assert_eq!(dpkg_status(), None);
    assert_eq!(Snapshot::take(&files), before, "the machine changed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The unit, as shipped: the hardening README describes, and systemd's own exposure score
/// for it (offline: nothing is installed or started). A change that loosens it fails here.
#[test]
fn the_unit_is_hardened() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/port-tracer.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let settings: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for want in [
        "ExecStart=/usr/bin/port-tracer --metrics 127.0.0.1:9464 --record \
         /var/lib/port-tracer/flight --rotate 64M --keep 16 --output /dev/null",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE \
         CAP_DAC_READ_SEARCH CAP_SYSLOG",
        "StateDirectory=port-tracer port-tracer/flight",
        "StateDirectoryMode=0700",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_NETLINK AF_INET AF_INET6",
        "RestrictNamespaces=net mnt",
        "SystemCallArchitectures=native",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
    ] {
        assert!(settings.contains(&want), "the unit lacks {want}");
    }
    // Not enabled by anything but the administrator: no Also=, no Alias=.
    assert!(settings.contains(&"WantedBy=multi-user.target"));
    if !found("systemd-analyze") {
        skip("no systemd-analyze (Debian's systemd package)");
        return;
    }
    let out = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for port-tracer.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(score <= 4.0, "exposure {score} (was 3.7):\n{text}");
}
