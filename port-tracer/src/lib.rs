//! port-tracer: trace the kernel's local port assignments and releases and rebuild each
//! port's lifetime.
//!
//! The core is pure: [`event`] decodes kernel records, [`reorder`] restores timestamp order,
//! [`lifetime`] turns events into lifetimes, [`filter`] selects, [`summary`] counts and
//! [`analysis`] finds churn, range occupancy, failures and anti-patterns; [`rebuild`] is
//! that chain as one engine, configured by a plain [`rebuild::RebuildConfig`]. Around it sit
//! the edges: [`kernel`] (load, attach, maps), [`live`] (the live loop, and
//! [`live::record`] to a trace file), [`output`] (one printer per format: text, JSONL, CSV,
//! Parquet, Chrome trace), [`trace_file`] (recorded traces), [`replay`] (a trace file through
//! the engine: `report` and `export`; [`trace_check`] runs it on any bytes, for the fuzzers
//! and their regression test); [`metrics`] serves live counts to Prometheus. The offline
//! path (`replay`, `trace_check`) uses neither `kernel` nor `live`.

pub mod analysis;
pub mod cgroups;
pub mod clock;
pub mod event;
pub mod filter;
pub mod histogram;
pub mod kernel;
pub mod lifetime;
pub mod live;
pub mod metrics;
pub mod output;
pub mod port_range;
pub mod rebuild;
pub mod reorder;
pub mod replay;
pub mod summary;
pub mod tally;
pub mod top;
pub mod trace_check;
pub mod trace_file;

/// For the tests (unit and integration): a test that cannot run here (no root, no BTF, a
/// kernel without what it checks) is skipped, not passed.
#[doc(hidden)]
pub mod test_support {
    use std::io::Write;

    /// The environment variable naming the file where skips are listed, one per line
    /// (`TEST<TAB>WHY`); `cargo xtask test` and the VM matrix set it, then count each
    /// listed test as skipped, not passed.
    pub const SKIPS_FILE: &str = "PORT_TRACER_SKIPS";

    /// Says that the calling test is skipped, and why; the caller then returns. libtest
    /// runs each test in a thread named after it.
    pub fn skip(why: &str) {
        let name = std::thread::current()
            .name()
            .unwrap_or("unknown test")
            .to_string();
        eprintln!("skipped: {why}");
        if let Some(path) = std::env::var_os(SKIPS_FILE) {
            let line = format!("{name}\t{}\n", why.replace(['\t', '\n'], " "));
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                // A skip nobody can count would pass as a pass.
                panic!(
                    "{name} skipped ({why}), but {}: {e}",
                    path.to_string_lossy()
                );
            }
        }
    }
}

/// Values the unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{
        event::{Comm, Endpoints, Event, Family, Kind, Origin, Proto, Task},
        lifetime::{time, Lifetime},
    };

    /// An event of `kind` at `ts` for socket `sock` with endpoints `ends(lport)`, origin
    /// bind, no task: set what a test needs on top.
    pub fn event(kind: Kind, ts: u64, sock: u64, lport: u16) -> Event {
        Event {
            origin: Origin::Bind,
            ..Event::new(kind, ts, sock, ends(lport))
        }
    }

    /// TCP 127.0.0.1:`lport` -> 127.0.0.1:80 in netns 7.
    pub fn ends(lport: u16) -> Endpoints {
        Endpoints {
            proto: Proto::Tcp,
            family: Family::Ipv4,
            netns: 7,
            laddr: "127.0.0.1".parse().unwrap(),
            lport,
            raddr: "127.0.0.1".parse().unwrap(),
            rport: 80,
        }
    }

    /// A connect lifetime of `ends(40000)`: assigned at 1,000 ns, TIME_WAIT from 3,000,
    /// released at 5,000, 1,500 ns inside the allocator; a process name that CSV must quote
    /// and a thread name.
    pub fn lifetime() -> Lifetime {
        Lifetime {
            ends: ends(40000),
            owner: Task {
                pid: 9,
                tid: 10,
                ppid: Some(8),
                comm: Comm::new("a,\"b"),
                thread: Comm::new("w 1"),
                ..Default::default()
            },
            origin: Origin::Connect,
            sock_id: 0x10,
            assigned: time(1_000),
            released: time(5_000),
            time_wait_start: time(3_000),
            lossy: false,
            laddr_learnt: false,
            seen_at_close: false,
            ended_at_close: false,
            alloc_ns: Some(1500),
        }
    }
}
