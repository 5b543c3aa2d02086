//! Histograms as text for a terminal (runqlat-style) or as JSON for scripts.

use std::fmt::Write as _;

use hostscope_common::histogram::{Histogram, bucket_upper_bound_ns};
use serde::Serialize;

const BAR_WIDTH: u64 = 40;

/// `1.5 us`, `12 ms`, `3.20 s`: a nanosecond count in the unit that reads best.
pub fn duration(ns: u64) -> String {
    let (value, unit) = match ns {
        0..1_000 => return format!("{ns} ns"),
        1_000..1_000_000 => (ns as f64 / 1e3, "us"),
        1_000_000..1_000_000_000 => (ns as f64 / 1e6, "ms"),
        _ => (ns as f64 / 1e9, "s"),
    };
    let precision = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.precision$} {unit}")
}

/// The upper bound of the bucket holding the `quantile` (0..=1) of the
/// values, or `None` if the histogram is empty or it lies in the overflow bucket.
pub fn quantile_upper_bound_ns(histogram: &Histogram, quantile: f64) -> Option<u64> {
    if histogram.count == 0 {
        return None;
    }
    let rank = (quantile * histogram.count as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in histogram.buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_bound_ns(index);
        }
    }
    None
}

/// A runqlat-style table of the non-empty range of buckets, under a summary line.
pub fn text(title: &str, histogram: &Histogram, interval_seconds: f64) -> String {
    let mut out = String::new();
    let mean = histogram.sum_ns.checked_div(histogram.count).unwrap_or(0);
    let quantile = |q| quantile_upper_bound_ns(histogram, q).map_or("overflow".into(), duration);
    let _ = writeln!(
        out,
        "{title} over {interval_seconds:.2} s: count {} sum_ns {} mean {} p50 <= {} p99 <= {}",
        histogram.count,
        histogram.sum_ns,
        duration(mean),
        quantile(0.5),
        quantile(0.99),
    );
    let first_used = histogram.buckets.iter().position(|c| *c > 0);
    let last_used = histogram.buckets.iter().rposition(|c| *c > 0);
    let (Some(first), Some(last)) = (first_used, last_used) else {
        let _ = writeln!(out, "    (no events)");
        return out;
    };
    let max = histogram.buckets.iter().copied().max().unwrap_or(1).max(1);
    let _ = writeln!(out, "{:>14} {:>10}  distribution", "latency <=", "count");
    for index in first..=last {
        let count = histogram.buckets[index];
        let bound = bucket_upper_bound_ns(index).map_or("+Inf".into(), duration);
        let stars = (count * BAR_WIDTH).div_ceil(max) as usize;
        let _ = writeln!(
            out,
            "{bound:>14} {count:>10}  |{:<width$}|",
            "*".repeat(stars),
            width = BAR_WIDTH as usize
        );
    }
    out
}

/// One series over one interval, as a JSON object (one per line).
#[derive(Debug, Serialize)]
pub struct JsonInterval<'a> {
    /// Which collector.
    pub collector: &'a str,
    /// The series' labels (`device`, `op`...); empty for sched.
    pub labels: std::collections::BTreeMap<&'a str, &'a str>,
    /// The length of the interval.
    pub interval_seconds: f64,
    /// Values recorded in the interval.
    pub count: u64,
    /// Their exact sum.
    pub sum_ns: u64,
    /// Non-empty buckets only.
    pub buckets: Vec<JsonBucket>,
}

/// One bucket of a [`JsonInterval`].
#[derive(Debug, Serialize)]
pub struct JsonBucket {
    /// Inclusive upper bound in nanoseconds; `null` for the overflow bucket.
    pub le_ns: Option<u64>,
    /// Values in this bucket (not cumulative).
    pub count: u64,
}

/// The non-empty buckets of `histogram`, for JSON.
pub fn json_buckets(histogram: &Histogram) -> Vec<JsonBucket> {
    histogram
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, &count)| JsonBucket {
            le_ns: bucket_upper_bound_ns(index),
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(duration(128), "128 ns");
        assert_eq!(duration(1_500), "1.50 us");
        assert_eq!(duration(12_000_000), "12.0 ms");
        assert_eq!(duration(34_359_738_368), "34.4 s");
    }

    #[test]
    fn quantiles_point_at_the_bucket_that_holds_them() {
        let mut h = Histogram::ZERO;
        for _ in 0..99 {
            h.record(1_000);
        }
        h.record(1_000_000);
        let p50 = quantile_upper_bound_ns(&h, 0.5);
        assert!(p50.is_some_and(|b| (1_000..1_250).contains(&b)), "{p50:?}");
        let p100 = quantile_upper_bound_ns(&h, 1.0);
        assert!(p100.is_some_and(|b| b >= 1_000_000), "{p100:?}");
        assert_eq!(quantile_upper_bound_ns(&Histogram::ZERO, 0.5), None);
    }

    #[test]
    fn text_shows_the_summary_and_only_the_used_range() {
        let mut h = Histogram::ZERO;
        h.record(1_000);
        h.record(2_000);
        let out = text("run-queue latency", &h, 1.0);
        assert!(
            out.starts_with("run-queue latency over 1.00 s: count 2 sum_ns 3000 "),
            "{out}"
        );
        // Summary, header, and the buckets from 1 us to 2 us inclusive.
        let rows = out.lines().count();
        assert!((4..=8).contains(&rows), "{out}");
        assert!(!out.contains("128 ns"), "{out}");
    }
}
