//! Live Prometheus metrics (`--metrics ADDR`): [`counts`] takes a [`Snapshot`] of the
//! summary's tally, [`encode`] turns a [`Snapshot`] into the text exposition, [`server`] answers
//! `GET /metrics`. The collector publishes a snapshot at every drain tick, so scrapes
//! never touch the hot path and see state at most one tick old.

pub mod counts;
pub mod encode;
pub mod server;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;

pub use counts::{by_container, Occupancy, Snapshot, HEADROOM_DESTINATIONS};

/// Binds `addr` for the metrics endpoint, warning when it is reachable from elsewhere.
pub async fn bind(addr: SocketAddr) -> Result<server::Listener> {
    let listener = server::Listener::bind(addr).await?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "port-tracer: warning: the metrics endpoint at {} has no authentication: keep it \
             on loopback or behind a firewall",
            listener.local_addr()
        );
    }
    Ok(listener)
}

/// Where the collector puts each tick's snapshot for the server to encode.
pub struct Publisher {
    shared: encode::Shared,
}

impl Publisher {
    /// Starts serving on `listener`, showing `first` until the first [`Publisher::publish`],
    /// and says where.
    pub fn serve(listener: server::Listener, first: Snapshot) -> Publisher {
        let shared = Arc::new(Mutex::new(first));
        eprintln!(
            "port-tracer: serving metrics at http://{}/metrics",
            listener.local_addr()
        );
        listener.serve(encode::registry(shared.clone()));
        Publisher { shared }
    }

    /// Replaces what scrapes see.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

#[cfg(test)]
mod tests;
