//! Distribution kernels for the VM matrix: resolved to the current package through apt,
//! downloaded once and unpacked into the cache.
//!
//! Each distribution gets an apt state of its own under the cache (sources, lists, no
//! installed packages), so the host's apt configuration is neither needed nor touched, and
//! any Debian release reachable from the package mirror can be used. Signatures are checked
//! against the Debian archive keyring the host already has.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};

use crate::{output_of, run_quiet};

/// A Debian release and where its packages come from.
pub struct Dist {
    pub name: &'static str,
    /// (mirror, suite) pairs.
    pub sources: &'static [(&'static str, &'static str)],
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub const BOOKWORM: Dist = Dist {
    name: "bookworm",
    sources: &[
        (DEBIAN, "bookworm"),
        (DEBIAN, "bookworm-updates"),
        (SECURITY, "bookworm-security"),
    ],
};
pub const BULLSEYE: Dist = Dist {
    name: "bullseye",
    sources: &[
        (DEBIAN, "bullseye"),
        (DEBIAN, "bullseye-updates"),
        (SECURITY, "bullseye-security"),
    ],
};

/// A kernel line of the matrix, named by the meta-package that always depends on its
/// current image (so security updates, which move the ABI number, are followed).
pub struct Spec {
    /// What the matrix and `--kernel` call it.
    pub name: &'static str,
    pub dist: &'static Dist,
    pub meta: &'static str,
}

/// The kernels `vm-test` runs by default. Cloud flavours: smaller downloads, same BPF and
/// networking configuration as the generic ones.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "debian-5.10",
        dist: &BULLSEYE,
        meta: "linux-image-cloud-amd64",
    },
    Spec {
        name: "debian-6.1",
        dist: &BOOKWORM,
        meta: "linux-image-cloud-amd64",
    },
    Spec {
        name: "debian-6.12",
        dist: &BOOKWORM,
        meta: "linux-image-6.12-cloud-amd64",
    },
];

/// An unpacked kernel package.
pub struct Kernel {
    pub name: &'static str,
    /// The image package, e.g. linux-image-6.1.0-56-cloud-amd64 6.1.192-2.
    pub package: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The sock_diag modules (uncompressed or not), in load order; empty where built in.
    pub diag_modules: Vec<PathBuf>,
}

/// The sock_diag modules the tracer's dump of held sockets needs, in load order.
const DIAG_MODULES: &[&str] = &["inet_diag", "tcp_diag", "udp_diag"];

/// Lists older than this are refreshed, so that "current" means current.
const LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// A private apt state for one distribution.
struct Apt {
    root: PathBuf,
}

impl Apt {
    fn new(cache: &Path, dist: &Dist) -> Result<Apt> {
        let root = cache.join("apt").join(dist.name);
        for d in ["lists/partial", "cache/archives/partial", "parts", "prefs"] {
            fs::create_dir_all(root.join(d))?;
        }
        let sources: String = dist
            .sources
            .iter()
            .map(|(mirror, suite)| format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n"))
            .collect();
        fs::write(root.join("sources.list"), sources)?;
        fs::write(root.join("status"), "")?;
        Ok(Apt { root })
    }

    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        [
            format!("Dir::Etc::SourceList={r}/sources.list"),
            format!("Dir::Etc::SourceParts={r}/parts"),
            format!("Dir::Etc::Preferences={r}/prefs/none"),
            format!("Dir::Etc::PreferencesParts={r}/prefs"),
            format!("Dir::State::Lists={r}/lists"),
            format!("Dir::State::Status={r}/status"),
            format!("Dir::Cache={r}/cache"),
            "APT::Architecture=amd64".into(),
            "APT::Architectures=amd64".into(),
            "Acquire::Languages=none".into(),
            // Downloads land in the cache, which the _apt user may not be able to write.
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(self.options());
        c
    }

    /// Refreshes the package lists when missing or stale; with stale lists and no mirror,
    /// goes on with what it has.
    fn update(&self) -> Result<()> {
        let stamp = self.root.join("lists/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() < LISTS_MAX_AGE)
            .unwrap_or(false);
        if fresh {
            return Ok(());
        }
        match run_quiet(self.command("apt-get").args(["-q", "update"])) {
            Ok(()) => Ok(fs::write(&stamp, "")?),
            Err(e) if stamp.exists() => {
                eprintln!("xtask: refreshing package lists failed, using cached ones: {e:#}");
                Ok(())
            }
            Err(e) => Err(e.context("fetching the package lists of the Debian mirror")),
        }
    }

    /// The image package a meta-package currently points at, and its version.
    fn resolve(&self, meta: &str) -> Result<(String, String)> {
        let deps = output_of(self.command("apt-cache").args(["depends", meta]))?;
        let image = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .with_context(|| format!("{meta} depends on no linux-image package:\n{deps}"))?
            .to_string();
        let policy = output_of(self.command("apt-cache").args(["policy", &image]))?;
        let version = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .with_context(|| format!("no candidate version of {image}"))?
            .to_string();
        Ok((image, version))
    }
}

/// Resolves `spec` to its current kernel, downloading and unpacking it unless cached.
pub fn fetch(spec: &Spec, cache: &Path) -> Result<Kernel> {
    let apt = Apt::new(cache, spec.dist)?;
    apt.update()?;
    let (package, version) = apt.resolve(spec.meta)?;
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let deb = debs.join(format!(
        "{package}_{}_amd64.deb",
        version.replace(':', "%3a")
    ));
    if !deb.exists() {
        eprintln!("xtask: downloading {package} {version}");
        run_quiet(
            apt.command("apt-get")
                .args(["-q", "download", &format!("{package}={version}")])
                .current_dir(&debs),
        )?;
        if !deb.exists() {
            bail!("apt-get download did not produce {}", deb.display());
        }
    }
    let tree = cache.join("kernels").join(format!("{package}_{version}"));
    if !tree.exists() {
        let partial = tree.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &tree)?;
    }
    let vmlinuz = fs::read_dir(tree.join("boot"))
        .context("the kernel package has no /boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no vmlinuz")?;
    let release = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules_dir = tree.join("lib/modules").join(&release);
    let diag_modules = DIAG_MODULES
        .iter()
        .filter_map(|m| find_module(&modules_dir, m))
        .collect();
    Ok(Kernel {
        name: spec.name,
        package: format!("{package} {version}"),
        release,
        vmlinuz,
        diag_modules,
    })
}

/// `name.ko`, `name.ko.xz` or `name.ko.zst` anywhere under `dir`.
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find_module(&p, name) {
                return Some(found);
            }
        } else if let Some(f) = p.file_name().map(|f| f.to_string_lossy().into_owned()) {
            if [".ko", ".ko.xz", ".ko.zst"]
                .iter()
                .any(|ext| f == format!("{name}{ext}"))
            {
                return Some(p);
            }
        }
    }
    None
}
