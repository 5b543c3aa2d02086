//! The Prometheus protobuf exposition: `io.prometheus.client.MetricFamily`
//! messages, each prefixed by its length (`encoding=delimited`). It is the
//! one format that carries native histograms, and the kernel's buckets are
//! schema-2 buckets, so they go out exactly as counted.
//!
//! The messages are declared here with prost's derive, field numbers as in
//! prometheus/client_model's `metrics.proto`; only what hostscope sends.

use hostscope_common::histogram::{BUCKETS, Histogram, MIN_INDEX, SCHEMA};

use super::{
    buckets,
    model::{Kind, Metric, Sample},
};

/// `io.prometheus.client.MetricFamily`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<ProtoMetric>,
}

/// `io.prometheus.client.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 4,
}

/// `io.prometheus.client.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoMetric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<ProtoHistogram>,
}

/// `io.prometheus.client.LabelPair`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// `io.prometheus.client.Gauge`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Counter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Histogram`: classic buckets and, alongside, the
/// native (sparse) ones.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoHistogram {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Classic buckets, cumulative, without `+Inf` (it is the count).
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Each bucket's count as the difference from the previous one's.
    #[prost(sint64, repeated, tag = "13")]
    pub positive_delta: Vec<i64>,
}

/// `io.prometheus.client.Bucket`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
}

/// `io.prometheus.client.BucketSpan`: `length` consecutive buckets,
/// starting `offset` after the previous span's end (the first: at index
/// `offset`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BucketSpan {
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

/// The content type of this format.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Every metric, length-delimited.
pub fn encode(metrics: &[Metric]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    for metric in metrics {
        let family = family(metric);
        // Writing to a Vec cannot run out of room.
        let _ = prost::Message::encode_length_delimited(&family, &mut out);
    }
    out
}

fn family(metric: &Metric) -> MetricFamily {
    let r#type = match metric.kind {
        Kind::Gauge => MetricType::Gauge,
        Kind::Counter => MetricType::Counter,
        Kind::Histogram(_) => MetricType::Histogram,
    };
    MetricFamily {
        name: Some(metric.full_name()),
        help: Some(metric.help.to_owned()),
        r#type: Some(r#type as i32),
        metric: metric
            .series
            .iter()
            .map(|(labels, sample)| {
                let label = labels
                    .iter()
                    .map(|(name, value)| LabelPair {
                        name: Some((*name).to_owned()),
                        value: Some(value.clone()),
                    })
                    .collect();
                let value = match sample {
                    Sample::Integer(v) => *v as f64,
                    Sample::Real(v) => *v,
                    Sample::Histogram(_) => 0.0,
                };
                let mut out = ProtoMetric {
                    label,
                    gauge: None,
                    counter: None,
                    histogram: None,
                };
                match (metric.kind, sample) {
                    (Kind::Histogram(layout), Sample::Histogram(h)) => {
                        out.histogram = Some(histogram(h, layout));
                    }
                    (Kind::Counter, _) => out.counter = Some(Counter { value: Some(value) }),
                    _ => out.gauge = Some(Gauge { value: Some(value) }),
                }
                out
            })
            .collect(),
    }
}

/// A histogram with `layout`'s classic buckets and every native bucket:
/// kernel bucket 0 is the zero bucket (threshold 2^-23 s), kernel bucket
/// `k` native bucket `MIN_INDEX + k`, the overflow bucket the next one.
fn histogram(histogram: &Histogram, layout: crate::collector::Layout) -> ProtoHistogram {
    let bucket = buckets(histogram, layout)
        .into_iter()
        .filter(|(bound, _)| bound.is_finite())
        .scan(0u64, |cumulative, (bound, count)| {
            *cumulative = cumulative.wrapping_add(count);
            Some(Bucket {
                cumulative_count: Some(*cumulative),
                upper_bound: Some(bound),
            })
        })
        .collect();
    let (positive_span, positive_delta) = spans(histogram);
    ProtoHistogram {
        sample_count: Some(histogram.count),
        sample_sum: Some(histogram.sum_ns as f64 / 1e9),
        bucket,
        schema: Some(SCHEMA),
        zero_threshold: Some(f64::exp2(f64::from(MIN_INDEX) / 4.0)),
        zero_count: Some(histogram.buckets[0]),
        positive_span,
        positive_delta,
    }
}

/// The native buckets above the zero bucket as spans of consecutive
/// non-empty buckets and their counts as deltas. A histogram with none
/// gets one empty span: how a scraper tells an empty native histogram
/// from a classic one.
fn spans(histogram: &Histogram) -> (Vec<BucketSpan>, Vec<i64>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut previous_count = 0i64;
    // The native index just past the last span, if any.
    let mut end: Option<i32> = None;
    for k in 1..BUCKETS {
        let count = histogram.buckets[k];
        if count == 0 {
            continue;
        }
        let index = MIN_INDEX + k as i32;
        match (end, spans.last_mut()) {
            (Some(e), Some(span)) if e == index => {
                span.length = Some(span.length.unwrap_or(0) + 1);
            }
            _ => spans.push(BucketSpan {
                offset: Some(end.map_or(index, |e| index - e)),
                length: Some(1),
            }),
        }
        end = Some(index + 1);
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        deltas.push(count.wrapping_sub(previous_count));
        previous_count = count;
    }
    if spans.is_empty() {
        spans.push(BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
    (spans, deltas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Layout;
    use hostscope_common::histogram::OVERFLOW_BUCKET;

    /// The native buckets, decoded back from spans and deltas.
    fn decode(h: &ProtoHistogram) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let mut index = 0i32;
        let mut count = 0i64;
        let mut deltas = h.positive_delta.iter();
        for (n, span) in h.positive_span.iter().enumerate() {
            index = if n == 0 {
                span.offset.unwrap_or(0)
            } else {
                index + span.offset.unwrap_or(0)
            };
            for _ in 0..span.length.unwrap_or(0) {
                count += deltas.next().copied().unwrap_or(0);
                out.push((index, count as u64));
                index += 1;
            }
        }
        out
    }

    #[test]
    fn native_buckets_are_the_kernel_buckets() {
        let mut h = Histogram::ZERO;
        // Zero bucket, 1 s exactly (native index 0), just above 1 s
        // (index 1), twice just above 2 s (index 5), and past 128 s.
        for ns in [
            50,
            1_000_000_000,
            1_000_000_001,
            2_000_000_001,
            2_100_000_000,
            u64::MAX / 4,
        ] {
            h.record(ns);
        }
        let proto = histogram(&h, Layout::Coarse);
        assert_eq!(proto.schema, Some(2));
        assert_eq!(proto.zero_count, Some(1));
        assert_eq!(proto.zero_threshold, Some(f64::exp2(-23.0)));
        assert_eq!(proto.sample_count, Some(6));
        let past = MIN_INDEX + OVERFLOW_BUCKET as i32;
        assert_eq!(decode(&proto), vec![(0, 1), (1, 1), (5, 2), (past, 1)]);
        // Classic buckets: cumulative, finite, powers of 4 seconds.
        let last = proto.bucket.last().expect("classic buckets");
        assert_eq!(last.upper_bound, Some(64.0));
        assert_eq!(last.cumulative_count, Some(5));
    }

    #[test]
    fn an_empty_histogram_is_still_native() {
        let proto = histogram(&Histogram::ZERO, Layout::None);
        assert_eq!(proto.positive_span.len(), 1);
        assert_eq!(proto.positive_span[0].length, Some(0));
        assert!(proto.bucket.is_empty() && proto.positive_delta.is_empty());
    }

    #[test]
    fn families_are_length_delimited() {
        let metrics = vec![
            Metric::single("a", "A.", Kind::Counter, Sample::Integer(3)),
            Metric::single("b", "B.", Kind::Gauge, Sample::Real(0.5)),
        ];
        let bytes = encode(&metrics);
        let mut rest = bytes.as_slice();
        let first: MetricFamily = prost::Message::decode_length_delimited(&mut rest).expect("a");
        let second: MetricFamily = prost::Message::decode_length_delimited(&mut rest).expect("b");
        assert!(rest.is_empty());
        assert_eq!(first.name.as_deref(), Some("a_total"));
        assert_eq!(first.metric[0].counter, Some(Counter { value: Some(3.0) }));
        assert_eq!(second.metric[0].gauge, Some(Gauge { value: Some(0.5) }));
    }
}
