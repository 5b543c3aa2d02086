//! What a collector reads: metric families of labelled histograms or
//! counters. Plain data, so that exposition and terminal rendering can be
//! tested on readings built by hand, without a kernel.

use hostscope_common::histogram::Histogram;

/// Label pairs of one series, in exposition order.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family: a name, its help, and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The exported name without its unit or `_total` suffix:
    /// `hostscope_block_io_latency` is exported as
    /// `hostscope_block_io_latency_seconds`, a counter `x` as `x_total`.
    pub name: &'static str,
    /// What `hist` calls it: `rtt`, `dropped`.
    pub short: &'static str,
    /// The exported help text.
    pub help: &'static str,
    /// The series.
    pub values: Values,
    /// The bucket layout histograms are exported with.
    pub layout: Layout,
}

/// How many classic (`le`) buckets a histogram is exported with. The
/// kernel always keeps the fine layout; the coarse one adds up groups of
/// its buckets. Ordered from fewest buckets to most, so that the coarser
/// of two layouts is their minimum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layout {
    /// Only `+Inf` (with `_sum` and `_count`): the distribution travels as
    /// a native histogram only.
    None,
    /// One bucket per power of four (16 `le` values, 18 series per
    /// histogram).
    Coarse,
    /// Every kernel bucket: four per power of two (122 `le` values, 124
    /// series per histogram).
    #[default]
    Fine,
}

/// A family's series: latency histograms (in seconds when exported) or
/// counters.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Histograms of nanoseconds, exported in seconds.
    Histograms(Vec<(Labels, Histogram)>),
    /// Monotonic counters.
    Counters(Vec<(Labels, u64)>),
}

impl Family {
    /// A family of one unlabelled histogram.
    pub fn histogram(
        name: &'static str,
        short: &'static str,
        help: &'static str,
        histogram: Histogram,
    ) -> Self {
        Self {
            name,
            short,
            help,
            values: Values::Histograms(vec![(Vec::new(), histogram)]),
            layout: Layout::Fine,
        }
    }

    /// A family of labelled histograms.
    pub fn histograms(
        name: &'static str,
        short: &'static str,
        help: &'static str,
        series: Vec<(Labels, Histogram)>,
        layout: Layout,
    ) -> Self {
        Self {
            name,
            short,
            help,
            values: Values::Histograms(series),
            layout,
        }
    }

    /// A family of labelled counters.
    pub fn counters(
        name: &'static str,
        short: &'static str,
        help: &'static str,
        series: Vec<(Labels, u64)>,
    ) -> Self {
        Self {
            name,
            short,
            help,
            values: Values::Counters(series),
            layout: Layout::Fine,
        }
    }

    /// A family of one unlabelled counter.
    pub fn counter(
        name: &'static str,
        short: &'static str,
        help: &'static str,
        value: u64,
    ) -> Self {
        Self {
            name,
            short,
            help,
            values: Values::Counters(vec![(Vec::new(), value)]),
            layout: Layout::Fine,
        }
    }
}
