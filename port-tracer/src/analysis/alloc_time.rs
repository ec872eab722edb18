//! Time inside the kernel's port allocator, per assignment (the fentry and kprobe tiers
//! time it from the allocator's entry to its exit), by protocol and origin, and by how
//! full the range was at that moment: a nearly full range makes the search walk many
//! ports before it finds one, which is where connect() latency goes when ports run out.
//!
//! How full, by the rule the allocator searches with: for connect(), the share of the range
//! it cannot use towards that destination (bind-held ports, ports already connected to it:
//! see [`super::headroom`]); for bind(0) and autobind, the share of distinct ports held in
//! the namespace (see [`super::occupancy`]).

use std::collections::BTreeMap;

use port_tracer_common::tiers::TierInfo;
use serde::Serialize;

use crate::{
    event::{Event, Origin, Proto},
    histogram::{Bucket, Log2Histogram},
};

/// Occupancy bands the report splits times by: lower bounds, as shares of the range.
pub const BANDS: [(f64, &str); 4] = [
    (0.0, "under 50%"),
    (0.5, "50-90%"),
    (0.9, "90-99%"),
    (0.99, "99% and over"),
];

/// Sub-buckets per power of two: quantiles within 1/16 of their value (the middle of a
/// bucket an eighth of an octave wide).
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
/// Values below `SUBS` one bucket each, then `SUBS` buckets per power of two up to 2^63.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUBS;

/// Counts of values in buckets an eighth of an octave wide: small, and precise enough for
/// medians and tails of times spanning nanoseconds to seconds.
#[derive(Clone, Debug)]
pub struct FineHistogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Default for FineHistogram {
    fn default() -> Self {
        FineHistogram {
            counts: vec![0; BUCKETS],
            n: 0,
            max: 0,
        }
    }
}

impl FineHistogram {
    fn index(v: u64) -> usize {
        if v < SUBS as u64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros();
        let sub = (v >> (e - SUB_BITS)) as usize & (SUBS - 1);
        (e - SUB_BITS + 1) as usize * SUBS + sub
    }

    /// The smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < SUBS {
            return i as u64;
        }
        let e = (i / SUBS) as u32 + SUB_BITS - 1;
        (1u64 << e) | ((i % SUBS) as u64) << (e - SUB_BITS)
    }

    pub fn add(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn max(&self) -> Option<u64> {
        (self.n > 0).then_some(self.max)
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket (never above the
    /// largest value seen), within 6.25% of the value.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let half = if i < SUBS {
                    0
                } else {
                    1u64 << ((i / SUBS) as u32 - 1) >> 1
                };
                return Some((Self::lower(i) + half).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[derive(Clone, Debug, Default)]
struct Group {
    all: FineHistogram,
    log2: Log2Histogram,
    /// By [`BANDS`]; the last: the range was not known.
    bands: [FineHistogram; BANDS.len() + 1],
}

/// Allocator times, fed assignments in order.
#[derive(Clone, Debug, Default)]
pub struct AllocTime {
    groups: BTreeMap<(Proto, Origin), Group>,
    /// Allocations without a time (a tier that does not measure it, older traces).
    untimed: u64,
}

/// Times of one occupancy band.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BandReport {
    /// The band, as shares of the range: `from` <= occupancy < `to`; both null: the
    /// range was not known.
    pub occupancy_from: Option<f64>,
    pub occupancy_to: Option<f64>,
    pub label: &'static str,
    pub count: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
}

/// Times of one protocol and origin.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupReport {
    pub proto: &'static str,
    pub origin: &'static str,
    pub count: u64,
    /// Quantiles to within 6.25% (the middle of a bucket an eighth of an octave wide).
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
    /// Power-of-two buckets of nanoseconds.
    pub histogram: Vec<Bucket>,
    /// Bands with at least one time, emptiest range first.
    pub by_occupancy: Vec<BandReport>,
}

/// What the report says about allocator time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AllocTimeReport {
    /// Allocations timed, by protocol and origin.
    pub groups: Vec<GroupReport>,
    /// Allocations without a time.
    pub untimed: u64,
    /// Why there are no times, when the source cannot give them (set by the caller, which
    /// knows the tier).
    pub not_measured: Option<String>,
}

/// Why a run's events carry no allocator time, if they cannot: the tier that traced it
/// does not hook the allocators, or the trace (format `version`) predates the field.
pub fn unmeasured_reason(
    tier: Option<&'static TierInfo>,
    trace_version: Option<u16>,
) -> Option<String> {
    if let Some(v) = trace_version.filter(|&v| v < 3) {
        return Some(format!(
            "this trace (format version {v}) was recorded before port-tracer timed the allocator"
        ));
    }
    let info = tier?;
    (!info.times_allocator).then(|| {
        format!(
            "the {} tier hooks the calls around the allocator (syscalls or socket \
             hooks, and state changes), not the allocator functions, so it cannot time them \
             (the fentry and kprobe tiers do)",
            info.name
        )
    })
}

fn band_of(share: Option<f64>) -> usize {
    match share {
        None => BANDS.len(),
        Some(s) => BANDS.iter().rposition(|&(from, _)| s >= from).unwrap_or(0),
    }
}

impl AllocTime {
    /// An assignment that took a port, with the share of the range unusable to it just
    /// before (None: the range is not known).
    pub fn assigned(&mut self, ev: &Event, occupancy: Option<f64>) {
        let Some(ns) = ev.alloc_ns else {
            self.untimed += 1;
            return;
        };
        let g = self.groups.entry((ev.ends.proto, ev.origin)).or_default();
        let ns = u64::from(ns);
        g.all.add(ns);
        g.log2.add(ns);
        g.bands[band_of(occupancy)].add(ns);
    }

    pub fn report(&self) -> AllocTimeReport {
        let groups = self
            .groups
            .iter()
            .map(|(&(proto, origin), g)| GroupReport {
                proto: proto.as_str(),
                origin: origin.as_str(),
                count: g.all.count(),
                p50_ns: g.all.quantile(0.5),
                p99_ns: g.all.quantile(0.99),
                max_ns: g.all.max(),
                histogram: g.log2.buckets(),
                by_occupancy: g
                    .bands
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.count() > 0)
                    .map(|(i, h)| {
                        let (from, to, label) = match BANDS.get(i) {
                            Some(&(from, label)) => (
                                Some(from),
                                Some(BANDS.get(i + 1).map_or(1.0, |b| b.0)),
                                label,
                            ),
                            None => (None, None, "range unknown"),
                        };
                        BandReport {
                            occupancy_from: from,
                            occupancy_to: to,
                            label,
                            count: h.count(),
                            p50_ns: h.quantile(0.5),
                            p99_ns: h.quantile(0.99),
                            max_ns: h.max(),
                        }
                    })
                    .collect(),
            })
            .collect();
        AllocTimeReport {
            groups,
            untimed: self.untimed,
            not_measured: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_buckets_are_within_an_eighth_of_an_octave() {
        for v in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            100,
            1000,
            12345,
            1 << 40,
            u64::MAX,
        ] {
            let i = FineHistogram::index(v);
            let lo = FineHistogram::lower(i);
            assert!(lo <= v, "{v}: bucket starts at {lo}");
            assert!(v - lo <= v / 8, "{v}: bucket starts at {lo}");
            if i + 1 < BUCKETS {
                assert!(FineHistogram::lower(i + 1) > v, "{v}");
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = FineHistogram::default();
        for v in 1..=1000u64 {
            h.add(v * 100);
        }
        let p50 = h.quantile(0.5).unwrap();
        // True values 50,000 and 99,000: within 6.25%.
        assert!((46_875..=53_125).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((92_812..=100_000).contains(&p99), "{p99}");
        assert_eq!(h.max(), Some(100_000));
        assert_eq!(FineHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn the_reason_times_are_missing_names_the_tier_or_the_format() {
        use port_tracer_common::tiers;
        assert_eq!(unmeasured_reason(Some(&tiers::FENTRY), None), None);
        assert_eq!(unmeasured_reason(Some(&tiers::KPROBE), Some(3)), None);
        assert!(unmeasured_reason(Some(&tiers::TRACEPOINT), Some(3))
            .unwrap()
            .contains("the tracepoint tier"));
        assert!(unmeasured_reason(Some(&tiers::FENTRY), Some(2))
            .unwrap()
            .contains("format version 2"));
    }

    #[test]
    fn bands_split_at_their_lower_bounds() {
        assert_eq!(band_of(Some(0.0)), 0);
        assert_eq!(band_of(Some(0.49)), 0);
        assert_eq!(band_of(Some(0.5)), 1);
        assert_eq!(band_of(Some(0.95)), 2);
        assert_eq!(band_of(Some(0.99)), 3);
        assert_eq!(band_of(Some(1.0)), 3);
        assert_eq!(band_of(None), BANDS.len());
    }
}
