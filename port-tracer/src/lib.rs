//! port-tracer: trace the kernel's local port assignments and releases and rebuild each
//! port's lifetime.
//!
//! The core is pure: [`event`] decodes kernel records, [`reorder`] restores timestamp order,
//! [`lifetime`] turns events into lifetimes, [`filter`] selects, [`summary`] counts and
//! [`analysis`] finds churn, range occupancy, failures and anti-patterns. Around it sit the
//! edges: [`kernel`] (load, attach, maps), [`output`] (text, JSONL, CSV, Parquet, Chrome
//! trace), [`trace_file`] (recorded traces; [`trace_check`] reads any bytes as one, for the
//! fuzzers and their regression test), [`collector`] (the live loop), [`record`] (live to a
//! trace file) and [`replay`] (a trace file through the same pipeline); [`metrics`] serves
//! live counts to Prometheus.

pub mod analysis;
pub mod cli;
pub mod clock;
pub mod collector;
pub mod event;
pub mod filter;
pub mod kernel;
pub mod lifetime;
pub mod metrics;
pub mod output;
pub mod port_range;
pub mod record;
pub mod reorder;
pub mod replay;
pub mod summary;
pub mod trace_check;
pub mod trace_file;

/// Values the unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::event::{Endpoints, Family, Proto};

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
}
