//! Running the tracer as another user holding chosen capabilities, reading a thread's
//! capabilities, and tracefs mounted or not for a test.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The unprivileged user the tests run the tracer as.
pub const NOBODY: u32 = 65534;

/// A mask of capabilities, as /proc/PID/status shows them.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1 << c)
}

/// Makes `cmd` run as user and group `NOBODY` holding exactly `caps`, as ambient
/// capabilities (what `setpriv --ambient-caps` does; the VM guests have no setpriv).
pub fn as_nobody_with(cmd: &mut Command, caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let m = mask(caps);
    let caps = caps.to_vec();
    let check = |rc: i64| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: only syscalls between fork and exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Kernels before 5.11 charge BPF maps to it, and nobody could not raise it.
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited);
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) as i64)?;
            check(libc::setgroups(0, std::ptr::null()) as i64)?;
            check(libc::setresgid(NOBODY, NOBODY, NOBODY) as i64)?;
            check(libc::setresuid(NOBODY, NOBODY, NOBODY) as i64)?;
            let word = |w: u32| {
                let bits = (m >> (32 * w)) as u32;
                Data {
                    effective: bits,
                    permitted: bits,
                    inheritable: bits,
                }
            };
            let header = Header {
                version: VERSION_3,
                pid: 0,
            };
            let data = [word(0), word(1)];
            check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))?;
            for &cap in &caps {
                check(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                ) as i64)?;
            }
            Ok(())
        });
    }
}

/// A directory `NOBODY` may write in, removed when dropped.
pub struct NobodysDir(pub PathBuf);

impl NobodysDir {
    pub fn new(name: &str) -> NobodysDir {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        NobodysDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for NobodysDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A field of /proc/PID/task/TID/status holding a capability mask ("CapEff", ...).
pub fn task_caps(task: &Path, field: &str) -> u64 {
    let status = std::fs::read_to_string(task.join("status")).unwrap();
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(":"))
        .unwrap_or_else(|| panic!("no {field} in {}", task.display()));
    u64::from_str_radix(value.trim(), 16).unwrap()
}

/// The tracefs mounts this process sees, as /proc/self/mountinfo lists them.
pub fn tracefs_mounts(pid: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - tracefs "))
        .map(String::from)
        .collect()
}

const TRACEFS: &std::ffi::CStr = c"/sys/kernel/tracing";

/// tracefs as a test needs it at /sys/kernel/tracing (mounted or not) while this lives;
/// as it was before, after.
pub struct TracefsAs {
    was_mounted: bool,
}

impl TracefsAs {
    pub fn mounted(mounted: bool) -> TracefsAs {
        let was_mounted = !tracefs_mounts("self").is_empty();
        set_tracefs(mounted);
        TracefsAs { was_mounted }
    }
}

impl Drop for TracefsAs {
    fn drop(&mut self) {
        set_tracefs(self.was_mounted);
    }
}

fn set_tracefs(mounted: bool) {
    let now = tracefs_mounts("self")
        .iter()
        .any(|l| l.contains(" /sys/kernel/tracing "));
    // SAFETY: constant strings.
    let rc = unsafe {
        match (now, mounted) {
            (false, true) => libc::mount(
                c"nodev".as_ptr(),
                TRACEFS.as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            ),
            (true, false) => libc::umount(TRACEFS.as_ptr()),
            _ => 0,
        }
    };
    assert_eq!(
        rc,
        0,
        "tracefs mounted: {mounted}: {}",
        std::io::Error::last_os_error()
    );
}

/// The name the tracer gives capability `cap`.
pub fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH",
        CAP_NET_ADMIN => "CAP_NET_ADMIN",
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => panic!("capability {cap} has no name here"),
    }
}
