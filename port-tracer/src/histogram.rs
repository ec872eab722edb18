//! Distributions in power-of-two buckets: lifetimes, TIME_WAIT, port reuse intervals.

use serde::Serialize;

/// Counts by power-of-two buckets: bucket i holds values in [2^(i-1), 2^i).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Histogram(pub [u64; 64]);

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram([0; 64])
    }
}

impl Log2Histogram {
    pub fn add(&mut self, v: u64) {
        self.0[(64 - v.leading_zeros() as usize).min(63)] += 1;
    }

    /// Non-empty buckets.
    pub fn buckets(&self) -> Vec<Bucket> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &count)| Bucket {
                lt_ns: 1u64.checked_shl(i as u32).unwrap_or(u64::MAX),
                count,
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Bucket {
    /// Upper bound of the bucket (exclusive), in ns: a power of two.
    pub lt_ns: u64,
    pub count: u64,
}

/// Smallest and largest bounds of lifetimes: 2^-20 s (about 1 µs) to 2^14 s (about 4.5 h).
const LIFETIME_BOUNDS_LOG2: (i32, i32) = (-20, 14);
/// Of time inside the port allocator: 2^-27 s (about 7.5 ns) to 2^-3 s (125 ms).
const ALLOCATOR_BOUNDS_LOG2: (i32, i32) = (-27, -3);

/// Durations in power-of-two buckets of seconds (`le` = 2^k s, inclusive, as Prometheus
/// defines buckets), plus the overflow bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct DurationHistogram {
    lowest_log2: i32,
    /// Each bound in whole nanoseconds, rounded down: a duration `d` (ns) is within
    /// bound `2^k s` exactly when `d <= bound_ns`.
    bounds_ns: Vec<u64>,
    counts: Vec<u64>,
    sum_ns: u128,
}

/// Lifetimes' buckets.
impl Default for DurationHistogram {
    fn default() -> Self {
        Self::with_bounds(LIFETIME_BOUNDS_LOG2)
    }
}

impl DurationHistogram {
    /// Buckets for time inside the port allocator (nanoseconds to a tenth of a second).
    pub fn allocator() -> Self {
        Self::with_bounds(ALLOCATOR_BOUNDS_LOG2)
    }

    fn with_bounds((lowest_log2, highest_log2): (i32, i32)) -> Self {
        let n = (highest_log2 - lowest_log2 + 1) as usize;
        DurationHistogram {
            lowest_log2,
            bounds_ns: (0..n)
                .map(|i| (2f64.powi(lowest_log2 + i as i32) * 1e9).floor() as u64)
                .collect(),
            counts: vec![0; n + 1],
            sum_ns: 0,
        }
    }

    /// The upper bound of bucket `i`, in seconds.
    fn bound_seconds(&self, i: usize) -> f64 {
        2f64.powi(self.lowest_log2 + i as i32)
    }

    pub fn add(&mut self, duration_ns: u64) {
        let bucket = self.bounds_ns.partition_point(|&b| b < duration_ns);
        self.counts[bucket] += 1;
        self.sum_ns += u128::from(duration_ns);
    }

    /// What Prometheus shows: per-bucket (not cumulative) counts by upper bound in
    /// seconds, the last bound infinite.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let n = self.bounds_ns.len();
        HistogramSnapshot {
            sum_seconds: self.sum_ns as f64 / 1e9,
            count: self.counts.iter().sum(),
            buckets: (0..=n)
                .map(|i| {
                    let le = if i < n {
                        self.bound_seconds(i)
                    } else {
                        f64::INFINITY
                    };
                    (le, self.counts[i])
                })
                .collect(),
        }
    }
}

/// A histogram as the exposition needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, count in this bucket only); the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}
