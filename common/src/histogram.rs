//! Latency histogram on Prometheus' native-histogram schema 2, filled in
//! the kernel and read by the daemon.
//!
//! Bucket boundaries are 2^(i/4) **seconds**: four buckets per power of
//! two, each at most 19% wider than the one below, and exactly the buckets
//! of a native histogram with schema 2. So the daemon can export the
//! kernel's counts as a native histogram without re-bucketing (which would
//! smear counts across boundaries), and as classic `le` buckets at the same
//! boundaries. In nanoseconds the boundaries are not powers of two (1e9 is
//! not), so a value's bucket is looked up in [`THRESHOLDS_NS`]: by binary
//! search (seven comparisons, [`bucket_index`]), or in the kernel by a
//! guess from the value's power of two and its next three bits, then one
//! comparison ([`bucket_index_guessed`]).
//!
//! Buckets are *inclusive* at their upper bound, like Prometheus' `le` and
//! native buckets: a value `v` lands in the first bucket whose upper bound
//! is `>= v`. For integer nanoseconds, `v <= 1e9 * 2^(i/4)` exactly when
//! `v <= floor(1e9 * 2^(i/4))`, so the floored table is exact.
//!
//! | index | holds values | native histogram |
//! |---|---|---|
//! | 0 | `0 ..= 119 ns` (2^-23 s) | the zero bucket, threshold 2^-23 s |
//! | k, 1 <= k < [`FINITE_BUCKETS`] | `(2^((i-1)/4), 2^(i/4)]` s, `i = MIN_INDEX + k` | bucket `i` |
//! | [`OVERFLOW_BUCKET`] | above 128 s (2^7 s) | bucket `MAX_INDEX + 1` (see [`MAX_INDEX`]) |
//!
//! The histogram also keeps the exact sum and count, so the mean is exact
//! whatever the bucket resolution.

/// The native-histogram schema of the buckets: 2^(2^-SCHEMA) = 2^(1/4)
/// between boundaries.
pub const SCHEMA: i32 = 2;
/// The native bucket index of bucket 0's upper bound, 2^(-92/4) s = 2^-23 s
/// (119.2 ns): the zero bucket's threshold.
pub const MIN_INDEX: i32 = -92;
/// The native bucket index of the last finite bucket, 2^(28/4) s = 128 s.
/// Longer waits (a TCP connect retrying SYNs for minutes) share the
/// overflow bucket, exported as native bucket `MAX_INDEX + 1`.
pub const MAX_INDEX: i32 = 28;
/// Buckets with a finite upper bound.
pub const FINITE_BUCKETS: usize = (MAX_INDEX - MIN_INDEX + 1) as usize;
/// Index of the bucket for values above 128 s.
pub const OVERFLOW_BUCKET: usize = FINITE_BUCKETS;
/// All buckets, the overflow bucket included.
pub const BUCKETS: usize = FINITE_BUCKETS + 1;

/// `floor(1e9 * 2^(i/4))` for `i` from [`MIN_INDEX`] to [`MAX_INDEX`]: the
/// upper bound of each finite bucket in nanoseconds, then `u64::MAX` up to
/// a power of two of entries, so that the search needs no bounds test.
/// (Checked against an independent computation by the tests.)
pub const THRESHOLDS_NS: [u64; SEARCH_SPAN] = {
    let finite: [u64; FINITE_BUCKETS] = [
        119,
        141,
        168,
        200,
        238,
        283,
        337,
        400,
        476,
        567,
        674,
        801,
        953,
        1_134,
        1_348,
        1_603,
        1_907,
        2_268,
        2_697,
        3_207,
        3_814,
        4_536,
        5_394,
        6_415,
        7_629,
        9_072,
        10_789,
        12_831,
        15_258,
        18_145,
        21_579,
        25_662,
        30_517,
        36_291,
        43_158,
        51_324,
        61_035,
        72_583,
        86_316,
        102_648,
        122_070,
        145_166,
        172_633,
        205_296,
        244_140,
        290_333,
        345_266,
        410_593,
        488_281,
        580_667,
        690_533,
        821_187,
        976_562,
        1_161_335,
        1_381_067,
        1_642_375,
        1_953_125,
        2_322_670,
        2_762_135,
        3_284_751,
        3_906_250,
        4_645_340,
        5_524_271,
        6_569_503,
        7_812_500,
        9_290_680,
        11_048_543,
        13_139_006,
        15_625_000,
        18_581_361,
        22_097_086,
        26_278_012,
        31_250_000,
        37_162_722,
        44_194_173,
        52_556_025,
        62_500_000,
        74_325_444,
        88_388_347,
        105_112_051,
        125_000_000,
        148_650_889,
        176_776_695,
        210_224_103,
        250_000_000,
        297_301_778,
        353_553_390,
        420_448_207,
        500_000_000,
        594_603_557,
        707_106_781,
        840_896_415,
        1_000_000_000,
        1_189_207_115,
        1_414_213_562,
        1_681_792_830,
        2_000_000_000,
        2_378_414_230,
        2_828_427_124,
        3_363_585_661,
        4_000_000_000,
        4_756_828_460,
        5_656_854_249,
        6_727_171_322,
        8_000_000_000,
        9_513_656_920,
        11_313_708_498,
        13_454_342_644,
        16_000_000_000,
        19_027_313_840,
        22_627_416_997,
        26_908_685_288,
        32_000_000_000,
        38_054_627_680,
        45_254_833_995,
        53_817_370_576,
        64_000_000_000,
        76_109_255_360,
        90_509_667_991,
        107_634_741_152,
        128_000_000_000,
    ];
    let mut padded = [u64::MAX; SEARCH_SPAN];
    let mut i = 0;
    while i < FINITE_BUCKETS {
        padded[i] = finite[i];
        i += 1;
    }
    padded
};
/// Entries searched: the power of two at or above [`BUCKETS`].
pub const SEARCH_SPAN: usize = 128;
const _: () = assert!(SEARCH_SPAN >= BUCKETS && SEARCH_SPAN.is_power_of_two());

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

/// The bucket that holds `value_ns`: how many thresholds lie below it.
/// Every u64 maps to an index below [`BUCKETS`]. Seven branch-free steps
/// of a binary search, each reading `THRESHOLDS_NS` at an index the
/// verifier can bound (at most `SEARCH_SPAN - 1`).
#[inline(always)]
pub fn bucket_index(value_ns: u64) -> usize {
    bucket_index_with(value_ns, |i| THRESHOLDS_NS[i & (SEARCH_SPAN - 1)])
}

/// [`bucket_index`] reading the thresholds through `threshold`, so that the
/// kernel side can hide the index from LLVM (see `ebpf/src/histogram.rs`).
#[inline(always)]
pub fn bucket_index_with(value_ns: u64, threshold: impl Fn(usize) -> u64) -> usize {
    let mut below = 0usize;
    let mut step = SEARCH_SPAN / 2;
    while step > 0 {
        if threshold(below + step - 1) < value_ns {
            below += step;
        }
        step /= 2;
    }
    below
}

/// Each power of two of nanoseconds is cut into 2^`GUESS_SLOTS_LOG2`
/// equal slots for [`BUCKET_GUESS`]: eight, so that no slot holds more
/// than one bucket boundary (boundaries are 2^(1/4) = 1.19 apart, further
/// than an eighth of a power of two; the tests check every slot).
pub const GUESS_SLOTS_LOG2: u32 = 3;
/// Entries of [`BUCKET_GUESS`]: 64 powers of two, eight slots each.
pub const GUESS_ENTRIES: usize = 64 << GUESS_SLOTS_LOG2;

/// For the slot of `v`, entry `8 * floor(log2(v)) + (the three bits of v
/// below its leading one)`: the bucket of the slot's smallest value (the
/// number of thresholds below it). A value's bucket is that, or the next
/// one when the slot's one boundary lies below the value. Slots below
/// 2^6 ns are never looked up (those values are in bucket 0).
pub const BUCKET_GUESS: [u8; GUESS_ENTRIES] = {
    let mut guess = [0u8; GUESS_ENTRIES];
    let mut exponent = GUESS_SLOTS_LOG2;
    while exponent < 64 {
        let mut slot = 0;
        while slot < 1 << GUESS_SLOTS_LOG2 {
            let start = (1u64 << exponent) + ((slot as u64) << (exponent - GUESS_SLOTS_LOG2));
            let mut below = 0;
            while below < FINITE_BUCKETS && THRESHOLDS_NS[below] < start {
                below += 1;
            }
            guess[((exponent as usize) << GUESS_SLOTS_LOG2) + slot] = below as u8;
            slot += 1;
        }
        exponent += 1;
    }
    guess
};
const _: () = assert!(BUCKETS <= u8::MAX as usize);

/// [`bucket_index`] in a few steps rather than seven: the slot's guess from
/// [`BUCKET_GUESS`] (through `guess`), then one comparison with the
/// threshold it names (through `threshold`). Both readers take an index
/// the caller may mask; it is below [`GUESS_ENTRIES`] and [`SEARCH_SPAN`].
/// The logarithm is six shifts and tests: eBPF has no count of leading
/// zeros, and LLVM's expansion of one is longer.
#[inline(always)]
pub fn bucket_index_guessed(
    value_ns: u64,
    guess: impl Fn(usize) -> usize,
    threshold: impl Fn(usize) -> u64,
) -> usize {
    if value_ns <= THRESHOLDS_NS[0] {
        return 0;
    }
    let mut rest = value_ns;
    let mut exponent = 0u32;
    for shift in [32, 16, 8, 4, 2, 1] {
        if rest >> shift != 0 {
            rest >>= shift;
            exponent += shift;
        }
    }
    // `value_ns` > 119, so `exponent` >= 6.
    let slot = (value_ns >> (exponent - GUESS_SLOTS_LOG2)) & ((1 << GUESS_SLOTS_LOG2) - 1);
    let index = guess(((exponent as usize) << GUESS_SLOTS_LOG2) | slot as usize);
    if threshold(index) < value_ns {
        index + 1
    } else {
        index
    }
}

/// The inclusive upper bound of bucket `index` in nanoseconds (floored),
/// or `None` for the overflow bucket (and any index past it): `+Inf`.
pub const fn bucket_upper_bound_ns(index: usize) -> Option<u64> {
    if index >= FINITE_BUCKETS {
        return None;
    }
    Some(THRESHOLDS_NS[index])
}

/// The native-histogram bucket index of bucket `index` (> 0): its upper
/// bound is 2^(native/4) s. Bucket 0 is the zero bucket instead.
pub const fn native_index(index: usize) -> i32 {
    MIN_INDEX + index as i32
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
    fn thresholds_are_floored_quarter_powers_of_two_of_a_second() {
        for (k, threshold) in THRESHOLDS_NS.iter().enumerate() {
            if k >= FINITE_BUCKETS {
                assert_eq!(*threshold, u64::MAX, "padding at {k}");
                continue;
            }
            let exact = 1e9 * f64::powf(2.0, f64::from(native_index(k)) / 4.0);
            assert_eq!(*threshold, exact.floor() as u64, "threshold {k}");
        }
        assert_eq!(bucket_upper_bound_ns(0), Some(119));
        assert_eq!(
            bucket_upper_bound_ns(FINITE_BUCKETS - 1),
            Some(128_000_000_000)
        );
        // 1 s is bucket index 0 of the native schema.
        assert_eq!(THRESHOLDS_NS[(-MIN_INDEX) as usize], 1_000_000_000);
        assert_eq!(bucket_upper_bound_ns(OVERFLOW_BUCKET), None);
    }

    #[test]
    fn at_below_and_above_each_threshold() {
        for k in 0..FINITE_BUCKETS {
            let Some(t) = bucket_upper_bound_ns(k) else {
                panic!("finite bucket {k} without a bound");
            };
            assert_eq!(bucket_index(t), k, "at {t}");
            assert_eq!(bucket_index(t + 1), k + 1, "just above {t}");
            if k > 0 {
                assert_eq!(bucket_index(t - 1), k, "just below {t}");
            }
        }
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(u64::MAX), OVERFLOW_BUCKET);
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
    }

    #[test]
    fn every_value_lands_in_the_first_bucket_that_can_hold_it() {
        for v in interesting_values() {
            let i = bucket_index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            if let Some(upper) = bucket_upper_bound_ns(i) {
                assert!(v <= upper, "{v} above its bucket's bound {upper}");
            } else {
                assert!(
                    v > 128_000_000_000,
                    "{v} in overflow but fits a finite bucket"
                );
            }
            if i > 0 {
                let below = bucket_upper_bound_ns(i - 1).unwrap_or(u64::MAX);
                assert!(v > below, "{v} fits the previous bucket (<= {below})");
            }
        }
    }

    /// The guess table's premise: no slot holds two bucket boundaries.
    #[test]
    fn no_guess_slot_holds_two_boundaries() {
        for exponent in 6..64u32 {
            for slot in 0..1u64 << GUESS_SLOTS_LOG2 {
                let width = 1u64 << (exponent - GUESS_SLOTS_LOG2);
                let start = (1u64 << exponent) + slot * width;
                let end = start.saturating_add(width);
                let inside = THRESHOLDS_NS[..FINITE_BUCKETS]
                    .iter()
                    .filter(|t| (start..end).contains(t))
                    .count();
                assert!(
                    inside <= 1,
                    "slot [{start}, {end}) holds {inside} boundaries"
                );
            }
        }
    }

    /// The guessed index is the searched one: at every interesting value,
    /// and at a million spread over the whole range.
    #[test]
    fn guessed_bucket_index_equals_the_search() {
        let guessed =
            |v| bucket_index_guessed(v, |i| usize::from(BUCKET_GUESS[i]), |i| THRESHOLDS_NS[i]);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let spread = (0..1_000_000).map(|_| {
            // xorshift, then a random exponent so every scale is covered.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state >> (state % 64)
        });
        for v in interesting_values().chain(spread) {
            assert_eq!(guessed(v), bucket_index(v), "at {v} ns");
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
    fn buckets_grow_by_the_fourth_root_of_two() {
        for i in 2..FINITE_BUCKETS {
            let (Some(lo), Some(hi)) = (bucket_upper_bound_ns(i - 1), bucket_upper_bound_ns(i))
            else {
                panic!("finite bucket {i} without a bound");
            };
            let ratio = hi as f64 / lo as f64;
            // 2^(1/4) = 1.1892, give or take the flooring of small bounds.
            assert!(
                (ratio - 1.189_207).abs() < 0.01,
                "bucket {i}: ({lo}, {hi}] grows by {ratio}"
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
