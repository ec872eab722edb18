//! `cargo xtask package`: a Debian package of the tracer, made with dpkg's own tools
//! (`dpkg-shlibdeps` for the dependencies, `dpkg-deb` for the archive) from a staged tree:
//! the program, its manual pages, bash, zsh and fish completions, the systemd unit
//! (`contrib/systemd/port-tracer.service`), the Prometheus rules as examples, the
//! copyright file, and maintainer scripts that never enable or start the service.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{dpkg_installed, ensure_apt_packages, output_of, run, workspace_root};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Write the package into DIR (default: target/package).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// The package's name, the program's and the unit's.
pub const NAME: &str = "port-tracer";

/// Debian packages the packaging runs: dpkg-shlibdeps (dpkg-dev), strip (binutils).
const TOOLS: &[&str] = &["dpkg-dev", "binutils"];

/// Who the package names as its maintainer when Debian's DEBFULLNAME and DEBEMAIL do not
/// say: the workspace names no authors, and the `.invalid` domain says that nobody is
/// reached there.
const DEFAULT_MAINTAINER: &str = "port-tracer developers <port-tracer@maintainer.invalid>";

/// Every file the package installs (its directories aside), with its mode; the staged
/// tree holds exactly these, which the test holds the archive to.
pub fn files() -> Vec<(&'static str, u32)> {
    let mut files = vec![
        ("usr/bin/port-tracer", 0o755),
        ("lib/systemd/system/port-tracer.service", 0o644),
        ("usr/share/bash-completion/completions/port-tracer", 0o644),
        ("usr/share/zsh/vendor-completions/_port-tracer", 0o644),
        (
            "usr/share/fish/vendor_completions.d/port-tracer.fish",
            0o644,
        ),
        ("usr/share/doc/port-tracer/copyright", 0o644),
        ("usr/share/doc/port-tracer/README.md.gz", 0o644),
        (
            "usr/share/doc/port-tracer/examples/port-tracer.rules.yml",
            0o644,
        ),
        (
            "usr/share/doc/port-tracer/examples/port-tracer.rules.test.yml",
            0o644,
        ),
    ];
    files.extend(MAN_PAGES.iter().map(|p| (*p, 0o644)));
    files
}

/// The manual pages, gzipped: the program's and one per command (`port-tracer man-pages`
/// writes them; the package holds it to this list, so that a new command is noticed).
const MAN_PAGES: &[&str] = &[
    "usr/share/man/man1/port-tracer.1.gz",
    "usr/share/man/man1/port-tracer-record.1.gz",
    "usr/share/man/man1/port-tracer-report.1.gz",
    "usr/share/man/man1/port-tracer-export.1.gz",
    "usr/share/man/man1/port-tracer-top.1.gz",
    "usr/share/man/man1/port-tracer-completions.1.gz",
];

/// Builds the release binary and the package; returns the package's path.
pub fn run_package(opts: &Options) -> Result<PathBuf> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    ensure_apt_packages(&missing)?;
    let root = workspace_root();
    let meta = metadata()?;
    let binary = build_release()?;
    let arch = output_of(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();

    // dpkg-shlibdeps wants a source tree: debian/control, and the package's files under
    // debian/<package>/.
    let work = root.join("target/package/work");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let tree = work.join("debian").join(NAME);
    fs::create_dir_all(tree.join("DEBIAN"))?;
    fs::write(
        work.join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )?;

    // The program, without its debug information (10 MB instead of 58; symbols are kept,
    // so that a panic's backtrace still names functions).
    let bin = tree.join("usr/bin/port-tracer");
    fs::create_dir_all(bin.parent().expect("a directory"))?;
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&bin)
        .arg(&binary))?;

    // Manual pages and completions, from the program itself.
    let man_dir = work.join("man");
    fs::create_dir_all(&man_dir)?;
    output_of(Command::new(&bin).arg("man-pages").arg(&man_dir))?;
    let man1 = tree.join("usr/share/man/man1");
    fs::create_dir_all(&man1)?;
    for page in MAN_PAGES {
        let name = Path::new(page)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".gz"))
            .expect("NAME.1.gz");
        let source = man_dir.join(name);
        if !source.exists() {
            bail!("`port-tracer man-pages` wrote no {name}");
        }
        gzip(&source, &tree.join(page))?;
    }
    let written = fs::read_dir(&man_dir)?.count();
    if written != MAN_PAGES.len() {
        bail!(
            "`port-tracer man-pages` wrote {written} pages, the package lists {}: add the \
             new one to MAN_PAGES in xtask/src/package.rs",
            MAN_PAGES.len()
        );
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/port-tracer"),
        ("zsh", "usr/share/zsh/vendor-completions/_port-tracer"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/port-tracer.fish",
        ),
    ] {
        let script = output_of(Command::new(&bin).args(["completions", shell]))?;
        write(&tree.join(path), script.as_bytes())?;
    }

    // The unit, the rules, the documentation.
    let copy = |from: &str, to: &str| -> Result<()> {
        let text = fs::read(root.join(from)).with_context(|| format!("reading {from}"))?;
        write(&tree.join(to), &text)
    };
    copy(
        "contrib/systemd/port-tracer.service",
        "lib/systemd/system/port-tracer.service",
    )?;
    for rules in ["port-tracer.rules.yml", "port-tracer.rules.test.yml"] {
        copy(
            &format!("contrib/prometheus/{rules}"),
            &format!("usr/share/doc/port-tracer/examples/{rules}"),
        )?;
    }
    gzip(
        &root.join("README.md"),
        &tree.join("usr/share/doc/port-tracer/README.md.gz"),
    )?;
    write(
        &tree.join("usr/share/doc/port-tracer/copyright"),
        copyright(&meta.license)?.as_bytes(),
    )?;

    // The tree holds what files() lists, and nothing else.
    let mut staged = Vec::new();
    list_files(&tree, &tree, &mut staged)?;
    staged.retain(|p| !p.starts_with("DEBIAN/"));
    staged.sort();
    let mut listed: Vec<String> = files().iter().map(|(p, _)| p.to_string()).collect();
    listed.sort();
    if staged != listed {
        bail!("the staged tree holds {staged:?}, files() lists {listed:?}");
    }

    // Control data.
    for (script, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        write(&tree.join("DEBIAN").join(script), text.as_bytes())?;
    }
    let depends = shlib_depends(&work)?;
    let control = control(&meta, &arch, &depends, installed_size(&tree)?);
    write(&tree.join("DEBIAN/control"), control.as_bytes())?;
    let sums = output_of(
        Command::new("md5sum")
            .args(listed.iter().map(String::as_str))
            .current_dir(&tree),
    )?;
    write(&tree.join("DEBIAN/md5sums"), sums.as_bytes())?;
    set_modes(&tree)?;

    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/package"));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let deb = out.join(format!("{NAME}_{}_{arch}.deb", meta.version));
    let mut build = Command::new("dpkg-deb");
    build
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb)
        .stdout(Stdio::null());
    // The archive's times: the last commit's, unless the caller sets them (dpkg-deb clamps
    // the files' times to it), so that a rebuild of one commit makes the same archive.
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        if let Ok(time) = output_of(Command::new("git").args(["log", "-1", "--format=%ct"])) {
            build.env("SOURCE_DATE_EPOCH", time.trim());
        }
    }
    run(&mut build)?;
    Ok(fs::canonicalize(&deb).unwrap_or(deb))
}

/// What the package takes from the crate's manifest.
struct Meta {
    version: String,
    license: String,
}

fn metadata() -> Result<Meta> {
    let text = output_of(Command::new("cargo").args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]))?;
    let all: Value = serde_json::from_str(&text).context("reading cargo metadata")?;
    let pkg = all["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == NAME))
        .context("cargo metadata lists no port-tracer package")?;
    let field = |name: &str| pkg[name].as_str().unwrap_or_default().to_string();
    Ok(Meta {
        version: field("version"),
        license: field("license"),
    })
}

/// `cargo build --release -p port-tracer`, as a user builds it: whatever flags a calling
/// test's environment holds (the host harness links statically) do not apply. The
/// binary's path.
fn build_release() -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release", "-p", NAME])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    eprintln!("xtask: running {cmd:?}");
    let out = cmd.spawn().context("starting cargo")?.wait_with_output()?;
    if !out.status.success() {
        bail!("building port-tracer failed: {}", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == NAME && m["profile"]["test"] == false)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .context("cargo built no port-tracer binary")
}

/// The shared libraries' packages the program needs, at the versions its symbols need
/// (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)` built on Debian 12), from dpkg-shlibdeps: the
/// `shlibs:Depends` a Debian source package would get.
fn shlib_depends(work: &Path) -> Result<String> {
    let out = output_of(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("debian/{NAME}/usr/bin/port-tracer"))
            .current_dir(work),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

fn control(meta: &Meta, arch: &str, depends: &str, installed_kib: u64) -> String {
    let maintainer = maintainer();
    let summary = "traces every local port the kernel hands out and takes back";
    let mut long = String::new();
    for paragraph in [
        "port-tracer follows each TCP and UDP port, IPv4 and IPv6, in every network \
         namespace, from its assignment (bind, bind to port 0, connect, autobind, accept) \
         to its release, TIME_WAIT included, with eBPF programs, and rebuilds each port's \
         lifetime: which process held it, how it got it, from when to when.",
        "It answers why connect() fails with EADDRNOTAVAIL and who held a port at a given \
         time: live, as Prometheus metrics, or from recorded traces (report, export to \
         JSON Lines, CSV, Parquet). The systemd unit it ships (not enabled on install) runs \
         it as a metrics exporter with a flight recorder.",
    ] {
        if !long.is_empty() {
            long.push_str(" .\n");
        }
        long.push_str(&wrap(paragraph, 78, " "));
    }
    format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Suggests: prometheus\n\
         Section: net\n\
         Priority: optional\n\
         Description: {summary}\n\
         {long}",
        version = meta.version,
    )
}

/// The Maintainer field: from DEBFULLNAME and DEBEMAIL, as Debian's own tools take it, or
/// [`DEFAULT_MAINTAINER`].
fn maintainer() -> String {
    match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(email)) if !name.trim().is_empty() && email.contains('@') => {
            format!("{} <{}>", name.trim(), email.trim())
        }
        _ => DEFAULT_MAINTAINER.to_string(),
    }
}

/// `text` in lines of at most `width` characters, each starting with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The copyright file (Debian's machine-readable format) for the workspace's license
/// expression (`MIT OR Apache-2.0`): Apache-2.0 refers to Debian's copy in
/// /usr/share/common-licenses, MIT, which Debian does not keep there, is written out.
fn copyright(license: &str) -> Result<String> {
    let ids: Vec<&str> = license
        .split(" OR ")
        .map(|id| id.trim_matches(|c| c == '(' || c == ')' || c == ' '))
        .collect();
    let mut text = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {NAME}\n\
         Comment: The program statically links Rust crates from crates.io, each under its\n \
         own license (`cargo metadata` lists them; mostly MIT or Apache-2.0).\n\
         \n\
         Files: *\n\
         Copyright: the port-tracer authors\n\
         License: {}\n",
        ids.join(" or ")
    );
    for id in ids {
        let body = match id {
            "MIT" => MIT,
            "Apache-2.0" => {
                "On Debian systems, the full text of the Apache License, Version 2.0 is in\n\
                 /usr/share/common-licenses/Apache-2.0."
            }
            other => bail!(
                "no license text for `{other}` (from the workspace's Cargo.toml): add it to \
                 xtask/src/package.rs"
            ),
        };
        text.push_str(&format!("\nLicense: {id}\n"));
        for line in body.lines() {
            text.push_str(if line.is_empty() { " ." } else { " " });
            text.push_str(line);
            text.push('\n');
        }
    }
    Ok(text)
}

const MIT: &str = "Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the \"Software\"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.";

/// After unpacking: systemd rereads its units (when it runs). The service is neither
/// enabled nor started: a tracer costs CPU on every port the host hands out, so the
/// administrator turns it on. An upgrade restarts it if it was running.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n "$2" ]; then
        systemctl --system try-restart port-tracer.service >/dev/null || true
    fi
fi
exit 0
"#;

/// Before removal: the service stops (an upgrade restarts it in postinst instead).
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl --system stop port-tracer.service >/dev/null || true
fi
exit 0
"#;

/// After removal: systemd forgets the unit. On purge, the recordings
/// (/var/lib/port-tracer) and the links `systemctl enable` made go too.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/port-tracer
    for link in /etc/systemd/system/*.wants/port-tracer.service \
                /etc/systemd/system/*.requires/port-tracer.service; do
        if [ -L "$link" ]; then
            rm -f "$link"
        fi
    done
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
"#;

/// Writes `bytes` to `path`, making its directory.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(path.parent().expect("a directory"))?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// `gzip -9n`: no name, no time stamp, so that the same input makes the same bytes.
fn gzip(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(from)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip {}: {}", from.display(), out.status);
    }
    write(to, &out.stdout)
}

/// Paths of the regular files under `dir`, relative to `base`.
fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            list_files(base, &path, out)?;
        } else {
            let rel = path.strip_prefix(base).expect("under base");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// dpkg's Installed-Size (as dpkg-gencontrol counts it): KiB, each file rounded up, any
/// other entry (a directory) one.
fn installed_size(tree: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                *total += 1;
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(tree, &mut total)?;
    Ok(total)
}

/// Directories and programs 0755, everything else 0644, whatever the umask was.
fn set_modes(tree: &Path) -> Result<()> {
    let modes: std::collections::HashMap<String, u32> = files()
        .into_iter()
        .map(|(p, m)| (p.to_string(), m))
        .collect();
    fn walk(base: &Path, dir: &Path, modes: &std::collections::HashMap<String, u32>) -> Result<()> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, modes)?;
                continue;
            }
            let rel = path
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy();
            let mode = match modes.get(rel.as_ref()) {
                Some(m) => *m,
                None if rel.starts_with("DEBIAN/post") || rel.starts_with("DEBIAN/pre") => 0o755,
                None => 0o644,
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
    walk(tree, tree, &modes)
}
