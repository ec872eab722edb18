//! A level over time, kept as its maximum per time bucket in bounded memory: when the
//! buckets would exceed [`MAX_BUCKETS`], they double in width.

use serde::Serialize;

/// Most buckets a timeline keeps.
pub const MAX_BUCKETS: usize = 1024;

#[derive(Clone, Debug)]
pub struct Timeline {
    width_ns: u64,
    /// Index (time / width) of the first bucket.
    start: u64,
    max: Vec<u32>,
    level: u32,
}

/// A timeline as reported: the maximum level in each bucket, buckets back to back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Series {
    /// Start of the first bucket, monotonic ns.
    pub start_ns: u64,
    pub bucket_ns: u64,
    pub max: Vec<u32>,
}

impl Timeline {
    pub fn new(width_ns: u64) -> Self {
        Timeline {
            width_ns: width_ns.max(1),
            start: 0,
            max: Vec::new(),
            level: 0,
        }
    }

    /// The level becomes `level` at `ts_ns` (times never go backwards by more than a
    /// bucket; an older time counts in the first bucket).
    pub fn set(&mut self, ts_ns: u64, level: u32) {
        let mut b = ts_ns / self.width_ns;
        if self.max.is_empty() {
            self.start = b;
            self.max.push(self.level.max(level));
            self.level = level;
            return;
        }
        while b.saturating_sub(self.start) >= MAX_BUCKETS as u64 {
            self.coarsen();
            b = ts_ns / self.width_ns;
        }
        let i = b.saturating_sub(self.start) as usize;
        // Buckets without a change held the level from before it.
        while self.max.len() <= i {
            self.max.push(self.level);
        }
        self.max[i] = self.max[i].max(level);
        self.level = level;
    }

    fn coarsen(&mut self) {
        let start = self.start / 2;
        let mut max =
            vec![0u32; (self.start + self.max.len() as u64).div_ceil(2) as usize - start as usize];
        for (j, &m) in self.max.iter().enumerate() {
            let k = ((self.start + j as u64) / 2 - start) as usize;
            max[k] = max[k].max(m);
        }
        // Saturating: a damaged trace's times can be anything.
        self.width_ns = self.width_ns.saturating_mul(2);
        self.start = start;
        self.max = max;
    }

    /// The series up to `end_ns`, the current level carried to the end.
    pub fn series(&self, end_ns: u64) -> Series {
        let mut t = self.clone();
        if !t.max.is_empty() {
            t.set(end_ns.max(t.start * t.width_ns), t.level);
        }
        Series {
            start_ns: t.start * t.width_ns,
            bucket_ns: t.width_ns,
            max: t.max,
        }
    }
}

impl Series {
    /// At most `n` values: neighbouring buckets merged by their maximum.
    pub fn resampled(&self, n: usize) -> Vec<u32> {
        let per = self.max.len().div_ceil(n.max(1)).max(1);
        self.max
            .chunks(per)
            .map(|c| c.iter().copied().max().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_maximum_per_bucket_and_carries_levels_over_gaps() {
        let mut t = Timeline::new(10);
        t.set(5, 3);
        t.set(7, 1);
        t.set(42, 2);
        let s = t.series(60);
        assert_eq!((s.start_ns, s.bucket_ns), (0, 10));
        assert_eq!(s.max, vec![3, 1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn doubles_its_buckets_instead_of_growing_past_the_bound() {
        let mut t = Timeline::new(1);
        for i in 0..10 * MAX_BUCKETS as u64 {
            t.set(i, (i % 7) as u32);
        }
        t.set(5_000, 100);
        let s = t.series(10 * MAX_BUCKETS as u64);
        assert!(s.max.len() <= MAX_BUCKETS, "{}", s.max.len());
        assert_eq!(s.bucket_ns, 16);
        assert_eq!(s.max.iter().copied().max(), Some(100));
        assert_eq!(s.max[5_000 / 16], 100);
        assert_eq!(s.max[0], 6);
    }

    #[test]
    fn resamples_by_maximum() {
        let s = Series {
            start_ns: 0,
            bucket_ns: 1,
            max: vec![1, 5, 2, 2, 9],
        };
        assert_eq!(s.resampled(3), vec![5, 2, 9]);
        assert_eq!(s.resampled(10), vec![1, 5, 2, 2, 9]);
    }
}
