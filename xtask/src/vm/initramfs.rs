//! The guests' initramfs: busybox, the `/init` script, the static binaries, the kernel's
//! sock_diag modules and `/pt.conf` saying what to run.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::{binaries::Binaries, kernels::Kernel, Plan};
use crate::run_quiet;

const INIT: &str = include_str!("init.sh");
/// busybox-static's binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Writes `dir/initramfs-<kernel>.cpio` (uncompressed: the kernel unpacks it faster than
/// we would compress it) and returns its path.
pub fn pack(kernel: &Kernel, bins: &Binaries, plan: &Plan, dir: &Path) -> Result<PathBuf> {
    let root = dir.join(format!("root-{}", kernel.name));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin"))?;
    fs::create_dir_all(root.join("mods"))?;

    copy(Path::new(BUSYBOX), &root.join("bin/busybox"))?;
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("pt.conf"), plan.conf())?;

    let tracer_at = root.join(
        bins.tracer
            .strip_prefix("/")
            .context("absolute tracer path")?,
    );
    fs::create_dir_all(tracer_at.parent().unwrap())?;
    copy(&bins.tracer, &tracer_at)?;
    copy(&bins.lib_test, &root.join("lib_test"))?;
    copy(&bins.kernel_test, &root.join("kernel_test"))?;
    copy(&bins.tiers_test, &root.join("tiers_test"))?;
    copy(&bins.cost_test, &root.join("cost_test"))?;

    // busybox insmod takes plain .ko files only.
    for (i, m) in kernel.diag_modules.iter().enumerate() {
        let name = m.file_name().unwrap().to_string_lossy();
        let plain = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        let out = root.join("mods").join(format!("{i}-{plain}"));
        if name.ends_with(".xz") {
            decompress("xz", m, &out)?;
        } else if name.ends_with(".zst") {
            decompress("zstd", m, &out)?;
        } else {
            copy(m, &out)?;
        }
    }

    let cpio = dir.join(format!("initramfs-{}.cpio", kernel.name));
    let script = format!(
        "cd '{}' && find . | cpio --quiet -o -H newc > '{}'",
        root.display(),
        cpio.display()
    );
    run_quiet(Command::new("sh").arg("-c").arg(script)).context("packing the initramfs")?;
    fs::remove_dir_all(&root)?;
    Ok(cpio)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn decompress(tool: &str, from: &Path, to: &Path) -> Result<()> {
    let out = Command::new(tool)
        .arg("-dc")
        .arg(from)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {} failed: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(to, out.stdout)?;
    Ok(())
}
