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
