//! One scrape's metrics, before any exposition format: what the text
//! encoders (through prometheus-client) and the protobuf encoder both
//! write out, so that every format carries the same families.

use hostscope_common::histogram::Histogram;

use crate::collector::{Family, Labels, Layout, Values};

/// A metric family.
#[derive(Debug, Clone)]
pub struct Metric {
    /// The name without a unit or `_total` suffix (prometheus-client adds
    /// them for the text formats; [`Metric::full_name`] for protobuf).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// What kind it is.
    pub kind: Kind,
    /// Its series: labels and value.
    pub series: Vec<(Labels, Sample)>,
}

/// The kinds of metric hostscope exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonic counter, exported as `<name>_total`.
    Counter,
    /// A latency histogram in seconds, exported as `<name>_seconds`, with
    /// this many classic buckets (the native ones are always all).
    Histogram(Layout),
}

/// One series' value.
#[derive(Debug, Clone)]
pub enum Sample {
    /// An integer (a count, a 0/1 state).
    Integer(u64),
    /// A real number.
    Real(f64),
    /// A histogram of nanoseconds.
    Histogram(Box<Histogram>),
}

impl Metric {
    /// A family of one unlabelled value.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, sample: Sample) -> Self {
        Self {
            name,
            help,
            kind,
            series: vec![(Vec::new(), sample)],
        }
    }

    /// The name as exposed: with `_seconds` for histograms and `_total`
    /// for counters.
    pub fn full_name(&self) -> String {
        match self.kind {
            Kind::Gauge => self.name.to_owned(),
            Kind::Counter => format!("{}_total", self.name),
            Kind::Histogram(_) => format!("{}_seconds", self.name),
        }
    }

    /// The metrics of families as a collector read them, histograms with
    /// at most `classic` classic buckets.
    pub fn from_families(families: &[Family], classic: Layout) -> Vec<Self> {
        families
            .iter()
            .map(|family| match &family.values {
                Values::Histograms(series) => Self {
                    name: family.name,
                    help: family.help,
                    kind: Kind::Histogram(family.layout.min(classic)),
                    series: series
                        .iter()
                        .map(|(labels, h)| (labels.clone(), Sample::Histogram(Box::new(*h))))
                        .collect(),
                },
                Values::Counters(series) => Self {
                    name: family.name,
                    help: family.help,
                    kind: Kind::Counter,
                    series: series
                        .iter()
                        .map(|(labels, value)| (labels.clone(), Sample::Integer(*value)))
                        .collect(),
                },
            })
            .collect()
    }
}
