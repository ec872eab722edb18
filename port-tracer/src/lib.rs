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
pub mod trace_check;
pub mod trace_file;

/// Values the unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{
        event::{Comm, Endpoints, Family, Origin, Proto, Task},
        lifetime::{time, Lifetime},
    };

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
