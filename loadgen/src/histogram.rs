//! A latency histogram with log-spaced buckets: 32 per power of two, so any value reads
//! back within about 3% (exact below 64), in a fixed 15 KiB whatever the range.

use std::time::Duration;

/// Bits of mantissa kept per power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this get a bucket each.
const EXACT: u64 = 2 * SUB;
/// Enough buckets for every u64.
const BUCKETS: usize = (EXACT + (63 - SUB_BITS as u64) * SUB) as usize;

/// Counts of values (microseconds here) in log-spaced buckets, with the exact maximum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = (value >> shift) - SUB;
    (EXACT + u64::from(exponent - SUB_BITS - 1) * SUB + mantissa) as usize
}

/// The largest value that lands in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let offset = index - EXACT;
    let shift = offset / SUB + 1;
    let mantissa = offset % SUB + SUB;
    // u128: the last bucket's bound is 2^64 - 1.
    let bound = (u128::from(mantissa + 1) << shift) - 1;
    u64::try_from(bound).unwrap_or(u64::MAX)
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Records a latency in whole microseconds.
    pub fn record_duration(&mut self, latency: Duration) {
        self.record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at or below which a fraction `q` (0..=1) of the recorded values lie,
    /// rounded up to its bucket's upper bound (never above the maximum); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        // Ranks are 1-based: the median of 1..=100 is the 50th value.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return highest_in(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_bounds_it_closely() {
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend((0..64).map(|shift| 1u64 << shift));
        values.extend((1..64).map(|shift| (1u64 << shift) - 1));
        values.extend([u64::MAX, 1_234_567_890_123]);
        for value in values {
            let i = index(value);
            assert!(i < BUCKETS, "{value} -> bucket {i}");
            let high = highest_in(i);
            assert!(high >= value, "{value} above its bucket bound {high}");
            assert!(
                (high - value) as f64 <= value as f64 / SUB as f64,
                "{value}: bound {high} is more than 1/{SUB} away"
            );
            if i > 0 {
                assert!(
                    highest_in(i - 1) < value,
                    "{value} also fits bucket {}",
                    i - 1
                );
            }
        }
    }

    #[test]
    fn percentiles_of_a_uniform_spread_are_within_a_few_percent() {
        let mut h = Histogram::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        assert_eq!(h.count(), 10_000);
        for (q, want) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                got >= want && got <= want * 1.035,
                "p{}: got {got}, want about {want}",
                q * 100.0
            );
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.max(), 10_000);
    }

    #[test]
    fn small_values_are_exact_and_empty_is_zero() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for us in [3, 3, 3, 7, 60] {
            h.record(us);
        }
        assert_eq!(h.quantile(0.0), 3);
        assert_eq!(h.quantile(0.6), 3);
        assert_eq!(h.quantile(0.8), 7);
        assert_eq!(h.quantile(0.99), 60);
    }

    #[test]
    fn a_slow_tail_shows_in_p99_not_p50() {
        let mut fast = Histogram::default();
        for _ in 0..980 {
            fast.record_duration(Duration::from_micros(900));
        }
        let mut slow = Histogram::default();
        for _ in 0..20 {
            slow.record_duration(Duration::from_millis(250));
        }
        fast.merge(&slow);
        assert_eq!(fast.count(), 1000);
        assert!(fast.quantile(0.5) < 1_000);
        assert!(fast.quantile(0.99) >= 250_000);
        assert_eq!(fast.max(), 250_000);
    }
}
