//! Prometheus metrics, computed at scrape time straight from the maps.
//! Knows prometheus-client, not HTTP.

use std::{
    sync::{Arc, LazyLock},
    time::Instant,
};

use std::io::Write as _;

use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};

use hostscope_common::histogram::{BUCKETS, Histogram, bucket_upper_bound_ns};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet, text},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use crate::collector::Collectors;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry served at /metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The last exposition and when its encoding started. A scrape reuses
    /// it only if that encoding started after the scrape arrived: never
    /// staler than a read of its own (scrape, act, scrape shows the act),
    /// yet scrapes that queue up while one read runs all share the next.
    latest: tokio::sync::Mutex<Option<(Instant, Exposition)>>,
}

/// One encoded exposition, plain and gzipped (what Prometheus asks for: the
/// text is ~100 KiB of repetitive bucket lines and compresses ~20x).
#[derive(Debug, Clone)]
pub struct Exposition {
    /// The OpenMetrics text.
    pub plain: Bytes,
    /// The same, gzip-compressed.
    pub gzip: Bytes,
}

impl Metrics {
    /// Metrics for the given collectors.
    pub fn new(collectors: Arc<Collectors>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ScrapeTime { collectors }));
        Self {
            registry,
            latest: tokio::sync::Mutex::new(None),
        }
    }

    /// The exposition, read after this call began.
    pub async fn scrape(&self) -> Result<Exposition, std::fmt::Error> {
        let arrived = Instant::now();
        let mut latest = self.latest.lock().await;
        if let Some((started, exposition)) = latest.as_ref()
            && *started >= arrived
        {
            return Ok(exposition.clone());
        }
        let started = Instant::now();
        let plain = self.encode()?;
        let mut gz = GzEncoder::new(Vec::with_capacity(plain.len() / 8), Compression::fast());
        let gzip = gz
            .write_all(plain.as_bytes())
            .and_then(|()| gz.finish())
            .map_err(|_| std::fmt::Error)?;
        let exposition = Exposition {
            plain: Bytes::from(plain),
            gzip: Bytes::from(gzip),
        };
        *latest = Some((started, exposition.clone()));
        Ok(exposition)
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the collectors' maps each time it is encoded.
#[derive(Debug)]
struct ScrapeTime {
    collectors: Arc<Collectors>,
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_descriptor(
                "hostscope_build_info",
                "hostscope's version; always 1.",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1i64)?;

        let mut up = encoder.encode_descriptor(
            "hostscope_collector_up",
            "Whether an enabled collector's probes are attached (1) or not (0).",
            None,
            MetricType::Gauge,
        )?;
        for status in &self.collectors.statuses {
            up.encode_family(&[("collector", status.kind.name())])?
                .encode_gauge(&i64::from(status.down_reason.is_none()))?;
        }

        if let Some(sched) = &self.collectors.sched {
            match sched.snapshot() {
                Ok(histogram) => encode_histograms(
                    &mut encoder,
                    "hostscope_runqueue_latency",
                    "Time runnable tasks waited on a CPU run queue, from wakeup or preemption to running.",
                    [(&[][..], &histogram)],
                )?,
                // A scrape never fails for one unreadable map: log and leave it out.
                Err(err) => tracing::warn!("reading the run-queue histogram failed: {err}"),
            }
        }
        if let Some(block) = &self.collectors.block {
            match block.snapshot() {
                Ok(snapshot) => {
                    let labels: Vec<[(&str, &str); 2]> = snapshot
                        .series
                        .iter()
                        .map(|s| [("device", s.device.as_str()), ("op", s.op)])
                        .collect();
                    encode_histograms(
                        &mut encoder,
                        "hostscope_block_io_latency",
                        "Block I/O latency from issue to the device driver to completion, per disk and operation.",
                        labels
                            .iter()
                            .zip(&snapshot.series)
                            .map(|(l, s)| (&l[..], &s.histogram)),
                    )?;
                    let mut dropped = encoder.encode_descriptor(
                        "hostscope_block_io_dropped",
                        "Block requests completed without a latency because more were in flight \
                         than --block-max-inflight; with the histogram's count, every completed request.",
                        None,
                        MetricType::Counter,
                    )?;
                    for (labels, series) in labels.iter().zip(&snapshot.series) {
                        dropped
                            .encode_family(labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&series.dropped, None)?;
                    }
                    // Only past 1,024 disk and operation pairs: rare enough
                    // to appear only once it happens.
                    if snapshot.dropped_unknown_disk > 0 {
                        dropped
                            .encode_family(&[("device", "unknown"), ("op", "unknown")])?
                            .encode_counter::<NoLabelSet, _, u64>(
                                &snapshot.dropped_unknown_disk,
                                None,
                            )?;
                    }
                }
                Err(err) => tracing::warn!("reading the block I/O histograms failed: {err}"),
            }
        }
        if let Some(tcp) = &self.collectors.tcp {
            match tcp.snapshot() {
                Ok(snapshot) => {
                    encode_histograms(
                        &mut encoder,
                        "hostscope_tcp_rtt",
                        "Smoothed round-trip time of TCP connections, sampled on every received segment.",
                        [(&[][..], &snapshot.rtt)],
                    )?;
                    encode_histograms(
                        &mut encoder,
                        "hostscope_tcp_connect_latency",
                        "Active TCP connect latency, from SYN sent to established.",
                        [(&[][..], &snapshot.connect)],
                    )?;
                    for (name, help, value) in [
                        (
                            "hostscope_tcp_connect_failures",
                            "Active TCP connects that failed (SYN sent, then closed).",
                            snapshot.connect_failures,
                        ),
                        (
                            "hostscope_tcp_retransmits",
                            "TCP segments retransmitted.",
                            snapshot.retransmits,
                        ),
                        (
                            "hostscope_tcp_connect_dropped",
                            "Active TCP connects not timed because a kernel map was full.",
                            snapshot.connect_dropped,
                        ),
                    ] {
                        encode_counter(&mut encoder, name, help, value)?;
                    }
                }
                Err(err) => tracing::warn!("reading the TCP maps failed: {err}"),
            }
        }
        Ok(())
    }
}

/// Upper bounds of every bucket in seconds, `+Inf` for the overflow bucket.
static BOUNDS_SECONDS: LazyLock<[f64; BUCKETS]> = LazyLock::new(|| {
    std::array::from_fn(|i| bucket_upper_bound_ns(i).map_or(f64::INFINITY, |ns| ns as f64 / 1e9))
});

/// Encodes one histogram family `<name>_seconds` (with `_bucket`, `_sum`
/// and `_count`): one series per label set, or a single unlabelled one.
fn encode_histograms<'h>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (&'h [(&'h str, &'h str)], &'h Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, histogram) in series {
        let buckets: Vec<(f64, u64)> = BOUNDS_SECONDS
            .iter()
            .copied()
            .zip(histogram.buckets.iter().copied())
            .collect();
        let sum = histogram.sum_ns as f64 / 1e9;
        if labels.is_empty() {
            family.encode_histogram::<NoLabelSet>(sum, histogram.count, &buckets, None)?;
        } else {
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, histogram.count, &buckets, None)?;
        }
    }
    Ok(())
}

/// Encodes an unlabelled counter `<name>_total`.
fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}
