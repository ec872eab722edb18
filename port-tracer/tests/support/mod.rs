//! Running the real tracer against real sockets, and reading what it wrote.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod privileges;

pub use port_tracer::test_support::skip;
pub use port_tracer_common::tiers::{self, TierInfo};

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test, saying so, unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !support::is_root() {
            support::skip("not root (these tests load eBPF programs)");
            return;
        }
    };
}

/// Skips the calling test in the VM matrix's guests: for tests of what userspace does with
/// the events (output, namespaces' ranges), which no tier changes; the host runs them.
#[macro_export]
macro_rules! host_only {
    () => {
        if std::env::var_os("PORT_TRACER_IN_VM").is_some() {
            support::skip("userspace only: the host runs it");
            return;
        }
    };
}

/// The tier the environment forces (PORT_TRACER_TEST_ATTACH, as the VM matrix sets it);
/// None: auto. The one place the tests look a tier up by its name.
pub fn attach_tier() -> Option<&'static TierInfo> {
    let name = std::env::var("PORT_TRACER_TEST_ATTACH").ok()?;
    Some(tiers::by_name(&name).unwrap_or_else(|| panic!("unknown tier {name}")))
}

/// A running `port-tracer --format jsonl` writing to a temporary file.
pub struct Tracer {
    child: Child,
    out: PathBuf,
    /// What it wrote to stderr up to saying that it traces.
    pub startup: Vec<String>,
    /// What it wrote to stderr after that.
    later: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Records written by a tracer run.
pub struct Trace {
    pub records: Vec<Value>,
    /// Its stderr after it said it traces.
    pub stderr: Vec<String>,
}

impl Tracer {
    /// Starts the tracer showing only this process, and waits until it traces.
    pub fn start() -> Tracer {
        Self::start_with(&["--pid", &std::process::id().to_string()])
    }

    /// Starts the tracer with `args`. The tier is the default (auto) unless the
    /// environment sets PORT_TRACER_TEST_ATTACH (how the VM matrix drives each tier).
    pub fn start_with(args: &[&str]) -> Tracer {
        let tier = std::env::var("PORT_TRACER_TEST_ATTACH").ok();
        Self::start_tier(tier.as_deref(), args)
    }

    /// Starts the tracer forced to `tier` (None: auto) with `args`, and waits until it
    /// traces. Several may run at once.
    pub fn start_tier(tier: Option<&str>, args: &[&str]) -> Tracer {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let out = std::env::temp_dir().join(format!(
            "port-tracer-test-{}-{}-{}.jsonl",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-"),
            STARTED.fetch_add(1, Ordering::Relaxed),
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_port-tracer"));
        cmd.args(["--format", "jsonl", "--force", "--output"])
            .arg(&out)
            .args(args);
        if let Some(tier) = tier {
            cmd.args(["--attach", tier]);
        }
        let child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .expect("start port-tracer");
        let mut tracer = Tracer {
            child,
            out,
            startup: Vec::new(),
            later: Default::default(),
        };
        let (startup, later) = wait_until_tracing_keeping(&mut tracer.child);
        (tracer.startup, tracer.later) = (startup, later);
        tracer
    }

    /// The tier tracing, as its start message names it.
    pub fn tier(&self) -> &'static port_tracer_common::tiers::TierInfo {
        port_tracer_common::tiers::ALL
            .iter()
            .find(|t| {
                let said = format!("tracing with the {} tier", t.name);
                self.startup.iter().any(|l| l.contains(&said))
            })
            .unwrap_or_else(|| panic!("no tier named at start: {:#?}", self.startup))
    }

    /// Starts the tracer showing only this process, on a tier that sees bind() fail: the
    /// tier under test if it does, else the tracepoint tier.
    pub fn start_seeing_bind_failures() -> Tracer {
        let tier = attach_tier()
            .filter(|t| t.sees_bind_failures)
            .unwrap_or(&tiers::TRACEPOINT);
        Self::start_tier(Some(tier.name), &["--pid", &std::process::id().to_string()])
    }

    /// Waits (up to `limit`) until the tracer has written a record matching `f`; the tracer
    /// flushes its output every few tens of milliseconds.
    pub fn wait_for_record(&self, limit: Duration, f: impl Fn(&Value) -> bool) -> bool {
        wait_for(limit, || {
            std::fs::read_to_string(&self.out)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|r| f(&r))
        })
    }

    /// The tracer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the tracer (SIGINT) and reads its output.
    pub fn stop(mut self) -> Trace {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for tracer");
        if !status.success() {
            std::thread::sleep(Duration::from_millis(50));
            panic!(
                "tracer exited with {status}; its stderr:\n{}",
                self.later.lock().unwrap().join("\n")
            );
        }
        let text = std::fs::read_to_string(&self.out).expect("read trace");
        let _ = std::fs::remove_file(&self.out);
        let records = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect();
        // The stderr reader ends with the process; give it a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let stderr = self.later.lock().unwrap().clone();
        Trace { records, stderr }
    }
}

/// Reads the tracer's stderr until it says it traces; keeps draining it afterwards.
pub fn wait_until_tracing(child: &mut Child) -> Vec<String> {
    wait_until_tracing_keeping(child).0
}

/// [`wait_until_tracing`], keeping what it writes later.
pub fn wait_until_tracing_keeping(
    child: &mut Child,
) -> (Vec<String>, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                let done = line.contains("tracing with");
                seen.push(line);
                if done {
                    break;
                }
            }
            _ => panic!("tracer failed to start: {}", seen.join("\n")),
        }
    }
    let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = later.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            keep.lock().unwrap().push(line);
        }
    });
    (seen, later)
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_file(&self.out);
    }
}

impl Trace {
    pub fn of_type<'a>(&'a self, ty: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let ty = ty.to_string();
        self.records
            .iter()
            .filter(move |r| r["type"] == ty.as_str())
    }

    /// Lifetimes of local port `port` and protocol `proto`.
    pub fn lifetimes(&self, proto: &str, port: u16) -> Vec<&Value> {
        self.of_type("lifetime")
            .filter(|r| r["proto"] == proto && r["lport"] == port)
            .collect()
    }

    /// The one lifetime of `port`, failing with the trace when there is not exactly one.
    pub fn lifetime(&self, proto: &str, port: u16) -> &Value {
        let l = self.lifetimes(proto, port);
        assert_eq!(
            l.len(),
            1,
            "expected one {proto} lifetime of port {port}, got {l:#?}"
        );
        l[0]
    }

    pub fn events(&self, ty: &str, proto: &str, port: u16) -> Vec<&Value> {
        self.of_type(ty)
            .filter(|r| r["proto"] == proto && r["lport"] == port)
            .collect()
    }

    /// The summary's occupancy of `proto` ports in namespace `netns` (all local addresses).
    pub fn occupancy(&self, netns: u64, proto: &str) -> &Value {
        let summary = self.summary();
        summary["occupancy"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["netns"] == netns && g["proto"] == proto)
            .unwrap_or_else(|| panic!("no {proto} occupancy in {netns}: {summary:#}"))
    }

    /// What an unmatched count points at, for a failing assertion: each lifetime without
    /// an origin (a socket seen only at its end) and every record of its local port.
    pub fn unmatched_context(&self) -> String {
        // The tracker counts over every namespace; a trace filtered by --netns shows one.
        let mut out = String::from(
            "\n(lifetimes without an origin in this trace follow; none: the unmatched \
             event was outside its filter, or updated a socket never seen)",
        );
        for lt in self
            .of_type("lifetime")
            .filter(|l| l["origin"] == "unknown")
        {
            out += &format!("\nunmatched: {lt}");
            for r in self
                .records
                .iter()
                .filter(|r| r["lport"] == lt["lport"] && r["proto"] == lt["proto"])
                .take(40)
            {
                out += &format!("\n  {r}");
            }
        }
        out
    }

    pub fn summary(&self) -> &Value {
        let last = self.records.last().expect("trace has records");
        assert_eq!(last["type"], "summary", "the last record is the summary");
        last
    }
}

/// This thread's task name, as the kernel reports it.
pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap()
        .trim_end()
        .to_string()
}

/// This process's name, as `ps` and /proc/PID/comm show it (the test threads have their
/// own names, the test's: so every test checks that the two are told apart).
pub fn process_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_string()
}

pub fn netns_of(path: &str) -> u64 {
    let link = std::fs::read_link(path).unwrap();
    let s = link.to_string_lossy();
    s.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

/// Asserts the lifetime belongs to this process and thread: `comm` the process's name,
/// `thread` the thread's, `ppid` this process's parent.
pub fn assert_owned_by_me(lt: &Value) {
    assert_eq!(lt["pid"], std::process::id(), "pid of {lt}");
    assert_eq!(lt["ppid"], unsafe { libc::getppid() }, "ppid of {lt}");
    assert_eq!(lt["comm"], process_comm(), "comm of {lt}");
    assert_eq!(lt["thread"], thread_comm(), "thread of {lt}");
}

/// The local port of IPv4 socket `fd`, from getsockname.
pub fn local_port(fd: i32) -> u16 {
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(
            libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len),
            0
        );
        u16::from_be(sa.sin_port)
    }
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> libc::sockaddr_in {
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    sa
}

/// Sends one datagram to 127.0.0.1:`to` from a UDP socket that was never bound (the
/// kernel autobinds it), closes it, and returns the port it had.
pub fn udp_sendto_autobind(to: u16) -> u16 {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let sa = loopback(to);
        let n = libc::sendto(
            fd,
            b"x".as_ptr().cast(),
            1,
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            16,
        );
        assert_eq!(n, 1);
        let port = local_port(fd);
        libc::close(fd);
        port
    }
}

pub fn port_of(addr: SocketAddr) -> u16 {
    addr.port()
}

/// A free TCP port on 127.0.0.1 (bound then closed, so nothing holds it).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Closes with an RST instead of a FIN (SO_LINGER 0): no TIME_WAIT.
pub fn reset_close(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
    drop(s);
}

/// Moves the calling thread into a new network namespace with loopback up; returns its inode.
pub fn enter_new_netns() -> u64 {
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET)"
    );
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req),
            0,
            "bring lo up"
        );
        libc::close(fd);
    }
    netns_of("/proc/thread-self/ns/net")
}

/// Waits until `f` holds, up to `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A TCP listener on an ephemeral port (bind 0 + listen), a client connected to it and
/// accepted (the client reset, so no TIME_WAIT), and a UDP socket bound to port 0, all
/// closed again; their ports (listener, client, udp) from getsockname.
pub fn listener_client_udp() -> (u16, u16, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener = port_of(l.local_addr().unwrap());
    let c = TcpStream::connect(("127.0.0.1", listener)).unwrap();
    let client = port_of(c.local_addr().unwrap());
    let (a, _) = l.accept().unwrap();
    reset_close(c);
    drop((a, l));
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = port_of(u.local_addr().unwrap());
    drop(u);
    (listener, client, udp)
}

/// Runs `port-tracer record` to `path` (tier from PORT_TRACER_TEST_ATTACH, as the VM
/// matrix sets it) until `workload` returns, then stops it with SIGINT.
pub fn record_while<T>(path: &Path, workload: impl FnOnce() -> T) -> T {
    record_with(path, &[], workload)
}

/// [`record_while`] with more arguments for `record`.
pub fn record_with<T>(path: &Path, args: &[&str], workload: impl FnOnce() -> T) -> T {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_port-tracer"));
    cmd.arg("record")
        .arg("--force")
        .arg("--output")
        .arg(path)
        .args(args);
    if let Ok(tier) = std::env::var("PORT_TRACER_TEST_ATTACH") {
        cmd.args(["--attach", &tier]);
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .expect("start port-tracer record");
    wait_until_tracing(&mut child);
    let out = workload();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    out
}

/// Runs `port-tracer export TRACE --format FORMAT --output OUT`, failing the test with its
/// stderr when it fails.
pub fn export(trace: &Path, format: &str, out: &Path) {
    let run = Command::new(env!("CARGO_BIN_EXE_port-tracer"))
        .arg("export")
        .arg(trace)
        .args(["--format", format, "--force", "--output"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Runs a Python script with the readers `cargo xtask setup` installs (pyarrow, DuckDB,
/// prometheus_client) and returns its stdout; fails the test, saying how to get them, when
/// they are missing. Host only: the VM guests have no Python.
pub fn python(script: &str, args: &[&str]) -> String {
    let python = std::env::var_os("PORT_TRACER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pytools/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the Python readers the tests use)",
        python.display()
    );
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}
