//! Log-linear latency histogram, filled in the kernel and read by the daemon.
//!
//! BCC's log2 slots are too coarse for percentiles (a slot spans a factor of
//! two), so each power of two is split into [`SUB_BUCKETS`] equal parts: the
//! relative width of a bucket is at most 25%.
//!
//! Buckets are *inclusive* at their upper bound, like Prometheus' `le`: a
//! value `v` lands in the first bucket whose upper bound is `>= v`.
//!
//! | index | holds values (ns) |
//! |---|---|
//! | 0 | `0 ..= 2^MIN_EXP` (128 ns) |
//! | 1 + 4(e - MIN_EXP) + s | `(2^e + s·2^(e-2)) ..= 2^e + (s+1)·2^(e-2)` for `MIN_EXP <= e < MAX_EXP` |
//! | [`OVERFLOW_BUCKET`] | above `2^MAX_EXP` (34.4 s) |
//!
//! The histogram also keeps the exact sum and count, so the mean is exact
//! whatever the bucket resolution.

/// log2 of the number of sub-buckets per power of two.
pub const SUB_BUCKET_BITS: u32 = 2;
/// Sub-buckets per power of two.
pub const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Values up to `2^MIN_EXP` ns (128 ns) share the first bucket.
pub const MIN_EXP: u32 = 7;
/// The last finite bucket ends at `2^MAX_EXP` ns (about 34.4 s).
pub const MAX_EXP: u32 = 35;
/// Buckets with a finite upper bound.
pub const FINITE_BUCKETS: usize = 1 + (MAX_EXP - MIN_EXP) as usize * SUB_BUCKETS;
/// Index of the bucket for values above `2^MAX_EXP` ns.
pub const OVERFLOW_BUCKET: usize = FINITE_BUCKETS;
/// All buckets, the overflow bucket included.
pub const BUCKETS: usize = FINITE_BUCKETS + 1;

/// A latency histogram in nanoseconds, as stored in one map slot.
///
/// In the kernel it lives in a per-CPU map, so updates need no atomics; the
/// daemon adds up the per-CPU copies with [`Histogram::merge`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts, indexed by [`bucket_index`].
    pub buckets: [u64; BUCKETS],
    /// Exact sum of all recorded values, in nanoseconds.
    pub sum_ns: u64,
    /// Exact number of recorded values.
    pub count: u64,
}

#[cfg(feature = "user")]
// SAFETY: `Histogram` is `repr(C)`, made only of `u64`s (no padding), and any
// bit pattern is a valid value.
unsafe impl aya::Pod for Histogram {}

impl Histogram {
    /// An empty histogram.
    pub const ZERO: Histogram = Histogram {
        buckets: [0; BUCKETS],
        sum_ns: 0,
        count: 0,
    };

    /// Records one value. Wrapping arithmetic: a counter never traps in the
    /// kernel, and a u64 of nanoseconds takes centuries to wrap.
    #[inline(always)]
    pub fn record(&mut self, value_ns: u64) {
        self.record_in_bucket(bucket_index(value_ns), value_ns);
    }

    /// Records `value_ns` into bucket `index` (normally [`bucket_index`] of
    /// it). Split out so that eBPF code can hide `index` from LLVM: otherwise
    /// LLVM proves it in range and drops the bounds check the verifier needs.
    #[inline(always)]
    pub fn record_in_bucket(&mut self, index: usize, value_ns: u64) {
        if let Some(bucket) = self.buckets.get_mut(index) {
            *bucket = bucket.wrapping_add(1);
        }
        self.sum_ns = self.sum_ns.wrapping_add(value_ns);
        self.count = self.count.wrapping_add(1);
    }

    /// Adds `other` into `self` (used to fold per-CPU copies together).
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
        self.count = self.count.wrapping_add(other.count);
    }

    /// The sum of `parts`, such as the per-CPU copies of one map slot.
    pub fn total<'a>(parts: impl IntoIterator<Item = &'a Histogram>) -> Histogram {
        let mut total = Histogram::ZERO;
        for part in parts {
            total.merge(part);
        }
        total
    }

    /// What was recorded since `earlier`, a previous reading of the same
    /// monotonically growing histogram.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut delta = Histogram::ZERO;
        for ((d, now), then) in delta
            .buckets
            .iter_mut()
            .zip(self.buckets.iter())
            .zip(earlier.buckets.iter())
        {
            *d = now.wrapping_sub(*then);
        }
        delta.sum_ns = self.sum_ns.wrapping_sub(earlier.sum_ns);
        delta.count = self.count.wrapping_sub(earlier.count);
        delta
    }
}

/// The bucket that holds `value_ns`. Every u64 maps to an index below
/// [`BUCKETS`]. Branch-light so that it verifies and runs cheaply in eBPF.
#[inline(always)]
pub const fn bucket_index(value_ns: u64) -> usize {
    if value_ns <= 1 << MIN_EXP {
        return 0;
    }
    // Buckets are inclusive at the top, so classify v - 1 into half-open
    // ranges [2^e + s*2^(e-2), 2^e + (s+1)*2^(e-2)).
    let below = value_ns - 1;
    let exp = 63 - below.leading_zeros();
    if exp >= MAX_EXP {
        return OVERFLOW_BUCKET;
    }
    let sub = (below >> (exp - SUB_BUCKET_BITS)) as usize & (SUB_BUCKETS - 1);
    1 + (exp - MIN_EXP) as usize * SUB_BUCKETS + sub
}

/// The inclusive upper bound of bucket `index` in nanoseconds, or `None` for
/// the overflow bucket (and any index past it): Prometheus' `+Inf`.
pub const fn bucket_upper_bound_ns(index: usize) -> Option<u64> {
    if index == 0 {
        return Some(1 << MIN_EXP);
    }
    if index >= FINITE_BUCKETS {
        return None;
    }
    let exp = MIN_EXP + ((index - 1) / SUB_BUCKETS) as u32;
    let sub = ((index - 1) % SUB_BUCKETS) as u64;
    Some((1 << exp) + ((sub + 1) << (exp - SUB_BUCKET_BITS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values worth checking: every bucket's bounds and their neighbours,
    /// powers of two and their neighbours, and the extremes of u64.
    fn interesting_values() -> impl Iterator<Item = u64> {
        let bounds = (0..FINITE_BUCKETS).filter_map(bucket_upper_bound_ns);
        let powers = (0..64).map(|e| 1u64 << e);
        bounds
            .chain(powers)
            .flat_map(|v| [v.saturating_sub(1), v, v.saturating_add(1)])
            .chain([0, 1, 2, u64::MAX - 1, u64::MAX])
    }

    #[test]
    fn upper_bounds_strictly_increase() {
        let bounds: [Option<u64>; BUCKETS] = core::array::from_fn(bucket_upper_bound_ns);
        for pair in bounds[..FINITE_BUCKETS].windows(2) {
            let (Some(lower), Some(upper)) = (pair[0], pair[1]) else {
                panic!("finite bucket without a bound: {pair:?}");
            };
            assert!(lower < upper, "{lower} !< {upper}");
        }
        assert_eq!(bounds[OVERFLOW_BUCKET], None);
        assert_eq!(bounds[0], Some(128));
        assert_eq!(bounds[FINITE_BUCKETS - 1], Some(1 << MAX_EXP));
    }

    #[test]
    fn every_value_lands_in_the_first_bucket_that_can_hold_it() {
        for v in interesting_values() {
            let i = bucket_index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            if let Some(upper) = bucket_upper_bound_ns(i) {
                assert!(v <= upper, "{v} above its bucket's bound {upper}");
            } else {
                assert!(v > 1 << MAX_EXP, "{v} in overflow but fits a finite bucket");
            }
            if i > 0 {
                let below = bucket_upper_bound_ns(i - 1).unwrap_or(u64::MAX);
                assert!(v > below, "{v} fits the previous bucket (<= {below})");
            }
        }
    }

    #[test]
    fn bucket_index_is_monotonic() {
        let mut sorted: std::vec::Vec<u64> = interesting_values().collect();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            assert!(bucket_index(pair[0]) <= bucket_index(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn buckets_resolve_a_quarter_of_each_power_of_two() {
        for i in 2..FINITE_BUCKETS {
            let (Some(lo), Some(hi)) = (bucket_upper_bound_ns(i - 1), bucket_upper_bound_ns(i))
            else {
                panic!("finite bucket {i} without a bound");
            };
            // Width over lower edge: at most 1/4 (exactly 1/4 at each power of two).
            assert!(
                (hi - lo) * 4 <= lo,
                "bucket {i}: ({lo}, {hi}] wider than 25%"
            );
        }
    }

    #[test]
    fn sum_and_count_are_exact() {
        let mut h = Histogram::ZERO;
        let mut expected_sum = 0u64;
        let mut n = 0u64;
        for v in interesting_values().filter(|v| *v < 1 << 50) {
            h.record(v);
            expected_sum += v;
            n += 1;
        }
        assert_eq!(h.count, n);
        assert_eq!(h.sum_ns, expected_sum);
        assert_eq!(h.buckets.iter().sum::<u64>(), n);
    }

    #[test]
    fn merge_and_since_are_inverse() {
        let mut a = Histogram::ZERO;
        let mut b = Histogram::ZERO;
        for v in interesting_values() {
            a.record(v);
            b.record(v / 3);
        }
        let total = Histogram::total([&a, &b]);
        assert_eq!(total.since(&a), b);
        assert_eq!(total.count, a.count + b.count);
    }
}
