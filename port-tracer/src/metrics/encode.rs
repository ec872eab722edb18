//! The Prometheus text exposition of a [`Snapshot`], through the `prometheus-client`
//! crate: a [`Collector`] that encodes the latest snapshot at scrape time.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use super::counts::Snapshot;
use crate::event::{Origin, Proto};

/// The latest snapshot, replaced at every drain tick and read at every scrape.
pub type Shared = Arc<Mutex<Snapshot>>;

/// Encodes whatever snapshot is current when scraped.
#[derive(Debug)]
struct SnapshotCollector(Shared);

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A panic elsewhere while holding the lock leaves valid data: show it anyway.
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let by_origin = |rows: &[(Proto, Origin, u64)]| -> Vec<_> {
            rows.iter()
                .map(|&(p, o, n)| ([("proto", p.as_str()), ("origin", o.as_str())], n))
                .collect()
        };
        const ALLOCATIONS: &str = "port_tracer_allocations";
        const ALLOCATIONS_HELP: &str = "Ports the kernel handed out (accepted sockets share their listener's port and are not counted)";
        if s.allocations_by_container.is_empty() {
            counters(
                &mut enc,
                ALLOCATIONS,
                ALLOCATIONS_HELP,
                by_origin(&s.allocations),
            )?;
        } else {
            // --metrics-labels container: the same counts, split by the owner's container.
            counters(
                &mut enc,
                ALLOCATIONS,
                ALLOCATIONS_HELP,
                s.allocations_by_container.iter().map(|(p, o, c, n)| {
                    (
                        [
                            ("proto", p.as_str()),
                            ("origin", o.as_str()),
                            ("container", c.as_str()),
                        ],
                        *n,
                    )
                }),
            )?;
        }
        counters(
            &mut enc,
            "port_tracer_releases",
            "Lifetimes that ended: a socket gave its port back (after TIME_WAIT, if any)",
            by_origin(&s.releases),
        )?;
        counters(
            &mut enc,
            "port_tracer_allocation_failures",
            "Port allocations the kernel refused, by errno",
            s.failures
                .iter()
                .map(|&(p, errno, n)| ([("proto", p.as_str()), ("errno", errno)], n)),
        )?;
        gauges(
            &mut enc,
            "port_tracer_live_ports",
            "Sockets holding a local port whose assignment was traced (TIME_WAIT included)",
            s.live_ports
                .iter()
                .map(|&(p, netns, n)| (([("proto", p.as_str())], [("netns", netns)]), n)),
        )?;
        counters(
            &mut enc,
            "port_tracer_lost_events",
            "Events lost before userspace could use them, by reason",
            s.lost.iter().map(|&(reason, n)| ([("reason", reason)], n)),
        )?;

        let h = &s.lifetimes;
        enc.encode_descriptor(
            "port_tracer_lifetime",
            "How long ended lifetimes held their port, TIME_WAIT included",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;

        if !s.allocator.is_empty() {
            let mut m = enc.encode_descriptor(
                "port_tracer_allocator",
                "Time inside the kernel's port allocator per allocation (inet_csk_get_port, udp_lib_get_port, connect()'s port search; fentry and kprobe tiers only): long when the range is nearly full",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (proto, origin, h) in &s.allocator {
                m.encode_family(&[("proto", proto.as_str()), ("origin", origin.as_str())])?
                    .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
            }
        }

        gauges(
            &mut enc,
            "port_tracer_range_occupancy_ratio",
            "Distinct ports of the ephemeral range (ip_local_port_range minus reserved ports) held, over its size, per local address (\"*\": all)",
            s.occupancy.iter().map(|o| {
                (
                    (
                        [("netns", o.netns)],
                        [("proto", o.proto.as_str()), ("laddr", o.laddr.as_str())],
                    ),
                    o.ratio,
                )
            }),
        )?;

        gauges(
            &mut enc,
            "port_tracer_connect_headroom",
            "Ports a new TCP connect() from laddr to raddr:rport could still get (the range, less bind-held ports, less ports connected to it from laddr), for the 20 destinations with the fewest",
            s.headroom.iter().map(|h| {
                (
                    (
                        [("netns", h.netns), ("rport", u32::from(h.rport))],
                        [("laddr", h.laddr.to_string()), ("raddr", h.raddr.to_string())],
                    ),
                    i64::from(h.ports),
                )
            }),
        )
    }
}

/// A counter family: one counter per label set.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, n) in rows {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}

/// A gauge family: one gauge per label set.
fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// A registry whose only collector encodes `shared`.
pub fn registry(shared: Shared) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(shared)));
    registry
}

/// The Prometheus text exposition (format 0.0.4) of `registry`.
pub fn text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// The `Content-Type` of [`text`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
