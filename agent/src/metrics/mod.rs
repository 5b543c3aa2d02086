//! Prometheus metrics, computed at scrape time straight from the maps.
//! Knows prometheus-client and the exposition formats, not HTTP.

mod batch;
mod format;
mod gzip;
mod model;
mod process;
mod protobuf;

use std::sync::{
    Arc, LazyLock, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;

use hostscope_common::histogram::{BUCKETS, FINITE_BUCKETS, Histogram, native_index};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet, text},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use batch::{Abandoned, Batches};
use gzip::Gzip;
use model::{Kind, Metric, Sample};

use crate::{
    collector::{CollectorKind, Collectors, Layout},
    probes::{self, Probes},
};

pub use format::Format;

/// The registry served at /metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Scrapes that arrive while a read runs wait for the next read and
    /// share it, and its encoding in each format and its compression.
    batches: Batches<Want, Expositions>,
}

/// What one scrape asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    format: Format,
    gzip: bool,
}

/// One read, encoded in each format a scrape of its batch asked for.
#[derive(Debug)]
struct Expositions(Vec<(Format, Result<Exposition, ScrapeError>)>);

/// One encoded exposition, plain and, if a scraper asked for it, gzipped
/// (what Prometheus asks for: repetitive bucket lines compress ~5x).
#[derive(Debug)]
struct Exposition {
    plain: Bytes,
    gzip: Option<Bytes>,
}

/// Why a scrape got no exposition.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScrapeError {
    /// prometheus-client's text encoder failed.
    #[error("encoding the metrics failed")]
    Encode,
    /// gzip failed.
    #[error("compressing the metrics failed: {0}")]
    Compress(#[source] Arc<std::io::Error>),
    /// The read this scrape waited for never finished.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
}

impl Metrics {
    /// Metrics for the given collectors; with `programs`, the run time
    /// and count of each loaded eBPF program too, while the kernel's
    /// statistics are on (`stats_held`: the daemon turned them on).
    /// Histograms get at most `classic` classic buckets.
    pub fn new(
        collectors: Arc<Collectors>,
        programs: Option<(Arc<Mutex<Probes>>, bool)>,
        classic: Layout,
    ) -> Self {
        let scrape_errors = collectors
            .running
            .iter()
            .map(|(kind, _)| (*kind, AtomicU64::new(0)))
            .collect();
        let reader = ScrapeTime {
            collectors,
            programs,
            scrape_errors,
            classic,
            gzip: Gzip::default(),
        };
        Self {
            batches: Batches::new(move |wants: &[Want]| reader.expositions(wants)),
        }
    }

    /// The exposition in `format`, gzipped if `gzip`, read after this call
    /// began.
    pub async fn scrape(&self, format: Format, gzip: bool) -> Result<Bytes, ScrapeError> {
        let answer = self.batches.get(Want { format, gzip }).await?;
        let exposition = match answer.0.iter().find(|(encoded, _)| *encoded == format) {
            Some((_, Ok(exposition))) => exposition,
            Some((_, Err(err))) => return Err(err.clone()),
            // Not reached: a read encodes every format its batch asked for.
            None => return Err(Abandoned.into()),
        };
        Ok(match (gzip, &exposition.gzip) {
            (true, Some(gzipped)) => gzipped.clone(),
            _ => exposition.plain.clone(),
        })
    }
}

/// Reads the collectors' maps each time it is encoded.
struct ScrapeTime {
    collectors: Arc<Collectors>,
    /// The loaded programs, and whether the daemon holds BPF statistics on.
    programs: Option<(Arc<Mutex<Probes>>, bool)>,
    /// Failed map reads, per running collector.
    scrape_errors: Vec<(CollectorKind, AtomicU64)>,
    /// The finest classic layout any histogram gets.
    classic: Layout,
    /// The compressor every gzipped exposition goes through.
    gzip: Gzip,
}

impl std::fmt::Debug for ScrapeTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeTime")
            .field("collectors", &self.collectors)
            .finish_non_exhaustive()
    }
}

/// One read as prometheus-client sees it.
#[derive(Debug)]
struct TextView(Arc<[Metric]>);

impl Collector for TextView {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for metric in self.0.iter() {
            encode_metric(&mut encoder, metric)?;
        }
        Ok(())
    }
}

/// `metrics` in `format`, and gzipped with `gzip` if given.
fn exposition(
    metrics: &Arc<[Metric]>,
    format: Format,
    gzip: Option<&Gzip>,
) -> Result<Exposition, ScrapeError> {
    let plain = encode(metrics, format).map_err(|_| ScrapeError::Encode)?;
    let gzip = match gzip {
        Some(gzip) => Some(Bytes::from(gzip.compress(&plain).map_err(|err| {
            ScrapeError::Compress(Arc::new(std::io::Error::other(err)))
        })?)),
        None => None,
    };
    Ok(Exposition {
        plain: Bytes::from(plain),
        gzip,
    })
}

/// `metrics`, encoded in `format`.
fn encode(metrics: &Arc<[Metric]>, format: Format) -> Result<Vec<u8>, std::fmt::Error> {
    if format == Format::Protobuf {
        return Ok(protobuf::encode(metrics));
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TextView(metrics.clone())));
    let mut out = String::with_capacity(16 * 1024);
    text::encode(&mut out, &registry)?;
    Ok(match format {
        Format::Text => format::openmetrics_to_text(&out),
        _ => out,
    }
    .into_bytes())
}

impl ScrapeTime {
    /// Every metric, read once now and encoded in each format `wants`
    /// asks for, gzipped too where one of them asks for that.
    fn expositions(&self, wants: &[Want]) -> Expositions {
        let snapshot: Arc<[Metric]> = self.snapshot().into();
        let expositions = [Format::Text, Format::OpenMetrics, Format::Protobuf]
            .into_iter()
            .filter_map(|format| {
                let asked = wants.iter().filter(|want| want.format == format);
                let gzip = asked.clone().any(|want| want.gzip);
                let asked = asked.count() > 0;
                let gzip = gzip.then_some(&self.gzip);
                asked.then(|| (format, exposition(&snapshot, format, gzip)))
            })
            .collect();
        Expositions(expositions)
    }

    /// Every metric, read now.
    fn snapshot(&self) -> Vec<Metric> {
        let mut metrics = vec![Metric {
            name: "hostscope_build_info",
            help: "hostscope's version, git revision, compiler and target; always 1.",
            kind: Kind::Gauge,
            series: vec![(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("revision", env!("HOSTSCOPE_REVISION").to_owned()),
                    ("rustc", env!("HOSTSCOPE_RUSTC").to_owned()),
                    ("target", env!("HOSTSCOPE_TARGET").to_owned()),
                ],
                Sample::Integer(1),
            )],
        }];
        metrics.extend(process_metrics());
        metrics.extend(self.program_metrics());
        metrics.extend(self.map_metrics());
        metrics.push(Metric {
            name: "hostscope_collector_up",
            help: "Whether an enabled collector's probes are attached (1) or not (0).",
            kind: Kind::Gauge,
            series: self
                .collectors
                .statuses
                .iter()
                .map(|status| {
                    (
                        vec![("collector", status.kind.name().to_owned())],
                        Sample::Integer(u64::from(status.down_reason.is_none())),
                    )
                })
                .collect(),
        });
        for (kind, collector) in &self.collectors.running {
            match collector.read() {
                Ok(families) => metrics.extend(Metric::from_families(&families, self.classic)),
                // A scrape never fails for one unreadable map: log, count
                // and leave it out.
                Err(err) => {
                    tracing::warn!(collector = %kind, "reading the maps failed: {err}");
                    if let Some((_, errors)) = self.scrape_errors.iter().find(|(k, _)| k == kind) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        metrics.push(Metric {
            name: "hostscope_scrape_errors",
            help: "Scrapes in which reading a running collector's maps failed (its families were left out).",
            kind: Kind::Counter,
            series: self
                .scrape_errors
                .iter()
                .map(|(kind, count)| {
                    (
                        vec![("collector", kind.name().to_owned())],
                        Sample::Integer(count.load(Ordering::Relaxed)),
                    )
                })
                .collect(),
        });
        if let Some(overflow) = self.collectors.overflow_family() {
            metrics.extend(Metric::from_families(&[overflow], self.classic));
        }
        if let Some(attribution) = &self.collectors.attribution {
            metrics.push(Metric::single(
                "hostscope_cgroups_labelled",
                "Cgroups that have series of their own now (at most --cgroup-max).",
                Kind::Gauge,
                Sample::Integer(attribution.admitted() as u64),
            ));
        }
        metrics
    }

    /// How full the in-flight tables are, against their capacity.
    fn map_metrics(&self) -> Vec<Metric> {
        let Some((probes, _)) = &self.programs else {
            return Vec::new();
        };
        let fill = probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight_tables();
        let series = |value: fn(&probes::MapFill) -> u64| {
            fill.iter()
                .map(|map| {
                    (
                        vec![("map", map.name.to_owned())],
                        Sample::Integer(value(map)),
                    )
                })
                .collect()
        };
        vec![
            Metric {
                name: "hostscope_bpf_map_entries",
                help: "Entries in use in each of hostscope's in-flight tables (a start time per block request or TCP connect in flight): BLOCK_START_SLOTS, then BLOCK_START for requests whose slot was taken, and TCP_CONNECT_START.",
                kind: Kind::Gauge,
                series: series(|map| map.entries),
            },
            Metric {
                name: "hostscope_bpf_map_max_entries",
                help: "The most entries each of those tables holds; a request finding both block tables full, or a connect finding its table full, is counted as dropped.",
                kind: Kind::Gauge,
                series: series(|map| map.capacity),
            },
        ]
    }

    /// Each loaded program's run time and count, if the kernel is keeping
    /// them (they stand still, and would mislead, while it is not).
    fn program_metrics(&self) -> Vec<Metric> {
        let Some((probes, held)) = &self.programs else {
            return Vec::new();
        };
        let stats = probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .program_stats();
        if stats.is_empty() {
            return Vec::new();
        }
        let label = |program: &probes::ProgramStats| vec![("program", program.name.clone())];
        let misses = Metric {
            name: "hostscope_bpf_program_recursion_misses",
            help: "Events each of hostscope's eBPF programs missed because it was already running on that CPU (an event in an interrupt nested in one in a task).",
            kind: Kind::Counter,
            series: stats
                .iter()
                .map(|p| (label(p), Sample::Integer(p.recursion_misses)))
                .collect(),
        };
        if !probes::stats_enabled(*held) {
            return vec![misses];
        }
        vec![
            misses,
            Metric {
                name: "hostscope_bpf_program_run_seconds",
                help: "Time the kernel spent running each of hostscope's eBPF programs (while BPF statistics are on).",
                kind: Kind::Counter,
                series: stats
                    .iter()
                    .map(|p| (label(p), Sample::Real(p.run_time.as_secs_f64())))
                    .collect(),
            },
            Metric {
                name: "hostscope_bpf_program_runs",
                help: "Times each of hostscope's eBPF programs ran (while BPF statistics are on).",
                kind: Kind::Counter,
                series: stats
                    .iter()
                    .map(|p| (label(p), Sample::Integer(p.runs)))
                    .collect(),
            },
        ]
    }
}

/// The daemon's own `process_*` metrics; none if /proc cannot be read.
fn process_metrics() -> Vec<Metric> {
    let stats = match process::ProcessStats::read() {
        Ok(stats) => stats,
        Err(err) => {
            tracing::debug!("process metrics left out: {err}");
            return Vec::new();
        }
    };
    let gauge = |name, help, value| Metric::single(name, help, Kind::Gauge, Sample::Real(value));
    vec![
        Metric::single(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
            Sample::Real(stats.cpu_seconds),
        ),
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stats.resident_bytes as f64,
        ),
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stats.virtual_bytes as f64,
        ),
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            stats.open_fds as f64,
        ),
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            stats.max_fds as f64,
        ),
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            stats.start_time_seconds,
        ),
    ]
}

/// Encodes one metric family for the text formats.
fn encode_metric(encoder: &mut DescriptorEncoder, metric: &Metric) -> Result<(), std::fmt::Error> {
    let (metric_type, unit) = match metric.kind {
        Kind::Gauge => (MetricType::Gauge, None),
        Kind::Counter => (MetricType::Counter, None),
        Kind::Histogram(_) => (MetricType::Histogram, Some(&Unit::Seconds)),
    };
    let mut family = encoder.encode_descriptor(metric.name, metric.help, unit, metric_type)?;
    for (labels, sample) in &metric.series {
        let mut encoder = family.encode_family(labels)?;
        match (metric.kind, sample) {
            (Kind::Gauge, Sample::Integer(v)) => {
                encoder.encode_gauge(&i64::try_from(*v).unwrap_or(i64::MAX))?;
            }
            (Kind::Gauge, Sample::Real(v)) => encoder.encode_gauge(v)?,
            (Kind::Counter, Sample::Integer(v)) => {
                encoder.encode_counter::<NoLabelSet, _, u64>(v, None)?;
            }
            (Kind::Counter, Sample::Real(v)) => {
                encoder.encode_counter::<NoLabelSet, _, f64>(v, None)?;
            }
            (Kind::Histogram(layout), Sample::Histogram(histogram)) => {
                let buckets = buckets(histogram, layout);
                let sum = histogram.sum_ns as f64 / 1e9;
                encoder.encode_histogram::<NoLabelSet>(sum, histogram.count, &buckets, None)?;
            }
            // A sample of another kind than its family is a bug here, and
            // not worth a failed scrape: left out.
            _ => {}
        }
    }
    Ok(())
}

/// Encodes families as a collector read them.
#[cfg(test)]
fn encode_families(
    encoder: &mut DescriptorEncoder,
    families: &[crate::collector::Family],
    classic: Layout,
) -> Result<(), std::fmt::Error> {
    for metric in Metric::from_families(families, classic) {
        encode_metric(encoder, &metric)?;
    }
    Ok(())
}

/// Upper bounds of every bucket in seconds, `+Inf` for the overflow bucket:
/// 2^(i/4) exactly as Prometheus computes native-histogram boundaries, so
/// that classic and native buckets agree.
static BOUNDS_SECONDS: LazyLock<[f64; BUCKETS]> = LazyLock::new(|| {
    std::array::from_fn(|k| {
        if k < FINITE_BUCKETS {
            f64::exp2(f64::from(native_index(k)) / 4.0)
        } else {
            f64::INFINITY
        }
    })
});

/// Whether kernel bucket `index` ends a coarse bucket: its upper bound is
/// a power of four seconds (2^-22 s = 238 ns, 954 ns, 3.8 us, ... 16 s,
/// 64 s), or it is the overflow bucket.
fn ends_coarse_bucket(index: usize) -> bool {
    index >= FINITE_BUCKETS || native_index(index).rem_euclid(8) == 0
}

/// `(upper bound in seconds, count)` of each exported bucket.
fn buckets(histogram: &Histogram, layout: Layout) -> Vec<(f64, u64)> {
    match layout {
        Layout::Fine => BOUNDS_SECONDS
            .iter()
            .copied()
            .zip(histogram.buckets.iter().copied())
            .collect(),
        Layout::Coarse => {
            let mut out = Vec::with_capacity(COARSE_BUCKETS);
            let mut pending = 0u64;
            for (index, (&bound, &count)) in BOUNDS_SECONDS
                .iter()
                .zip(histogram.buckets.iter())
                .enumerate()
            {
                pending = pending.wrapping_add(count);
                if ends_coarse_bucket(index) {
                    out.push((bound, pending));
                    pending = 0;
                }
            }
            out
        }
        Layout::None => vec![(f64::INFINITY, histogram.count)],
    }
}

/// Buckets of the coarse layout, `+Inf` included.
pub const COARSE_BUCKETS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{Family, Labels, Values};

    /// A prometheus-client collector that encodes fixed families under a
    /// classic layout.
    #[derive(Debug)]
    struct Fixed(Vec<Family>, Layout);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_families(&mut encoder, &self.0, self.1)
        }
    }

    fn exposition(families: Vec<Family>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(families, Layout::Fine)));
        let mut out = String::new();
        text::encode(&mut out, &registry).expect("encodes");
        out
    }

    fn disk(device: &str, op: &str) -> Labels {
        vec![("device", device.to_owned()), ("op", op.to_owned())]
    }

    /// A histogram family is exported in seconds with cumulative buckets,
    /// `_sum` and `_count`; a counter family with `_total`; labels as given.
    #[test]
    fn families_are_exported_with_units_buckets_and_labels() {
        let mut histogram = Histogram::ZERO;
        histogram.record(1_000); // 1 us
        histogram.record(2_000_000); // 2 ms
        let text = exposition(vec![
            Family {
                name: "test_latency",
                short: "latency",
                help: "Test latency.",
                values: Values::Histograms(vec![(disk("vda", "read"), histogram)]),
                layout: Layout::Fine,
            },
            Family {
                name: "test_dropped",
                short: "dropped",
                help: "Test drops.",
                values: Values::Counters(vec![(disk("vda", "read"), 7), (disk("sda", "write"), 0)]),
                layout: Layout::Fine,
            },
            Family::counter("test_plain", "plain", "Unlabelled.", 3),
        ]);
        assert!(
            text.contains("# TYPE test_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT test_latency_seconds seconds\n"),
            "{text}"
        );
        assert!(
            text.contains("test_latency_seconds_count{device=\"vda\",op=\"read\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("test_latency_seconds_sum{device=\"vda\",op=\"read\"} 0.002001\n"),
            "{text}"
        );
        // Cumulative: the +Inf bucket holds both values.
        assert!(
            text.contains(
                "test_latency_seconds_bucket{le=\"+Inf\",device=\"vda\",op=\"read\"} 2\n"
            ),
            "{text}"
        );
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("test_latency_seconds_bucket"))
            .count();
        assert_eq!(buckets, BUCKETS, "one line per bucket");
        assert!(text.contains("# TYPE test_dropped counter\n"), "{text}");
        assert!(
            text.contains("test_dropped_total{device=\"vda\",op=\"read\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("test_dropped_total{device=\"sda\",op=\"write\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("test_plain_total 3\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// A family with no series still has its descriptor, and nothing else.
    #[test]
    fn empty_family_has_only_its_descriptor() {
        let text = exposition(vec![Family {
            name: "test_latency",
            short: "latency",
            help: "Test latency.",
            values: Values::Histograms(Vec::new()),
            layout: Layout::Fine,
        }]);
        assert!(
            text.contains("# HELP test_latency_seconds Test latency.\n"),
            "{text}"
        );
        assert!(!text.contains("test_latency_seconds_count"), "{text}");
    }

    /// The coarse layout has one bucket per factor of 4, each holding the
    /// fine buckets below its bound, and the same sum and count.
    #[test]
    fn coarse_layout_adds_up_fine_buckets() {
        let mut histogram = Histogram::ZERO;
        for ns in [100, 129, 500, 513, 3_000, 1_000_000, 40_000_000_000] {
            histogram.record(ns);
        }
        let text = exposition(vec![Family::histograms(
            "test_latency",
            "latency",
            "Test latency.",
            vec![(vec![("cgroup", "/a".to_owned())], histogram)],
            Layout::Coarse,
        )]);
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("test_latency_seconds_bucket"))
            .collect();
        assert_eq!(buckets.len(), COARSE_BUCKETS, "{text}");
        assert_eq!(COARSE_BUCKETS, 16);
        for (bound, cumulative) in [
            ("2.384185791015625e-7", 2),
            ("9.5367431640625e-7", 4),
            ("0.000003814697265625", 5),
            ("0.0009765625", 5),
            ("0.00390625", 6),
            ("16.0", 6),
            ("64.0", 7),
            ("+Inf", 7),
        ] {
            let line = format!(
                "test_latency_seconds_bucket{{le=\"{bound}\",cgroup=\"/a\"}} {cumulative}\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            text.contains("test_latency_seconds_count{cgroup=\"/a\"} 7\n"),
            "{text}"
        );
    }

    /// `--classic-buckets none` leaves only `+Inf`, and a family is never
    /// finer than the classic layout asked for.
    #[test]
    fn classic_layout_caps_every_family() {
        let mut histogram = Histogram::ZERO;
        histogram.record(1_000);
        histogram.record(2_000);
        let family = |layout| {
            Family::histograms(
                "test_latency",
                "latency",
                "Test latency.",
                vec![(Vec::new(), histogram)],
                layout,
            )
        };
        let encoded = |classic, layout| {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(Fixed(vec![family(layout)], classic)));
            let mut out = String::new();
            text::encode(&mut out, &registry).expect("encodes");
            out.lines()
                .filter(|l| l.starts_with("test_latency_seconds_bucket"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            encoded(Layout::None, Layout::Fine),
            vec!["test_latency_seconds_bucket{le=\"+Inf\"} 2".to_owned()]
        );
        assert_eq!(encoded(Layout::Coarse, Layout::Fine).len(), COARSE_BUCKETS);
        assert_eq!(encoded(Layout::Fine, Layout::Coarse).len(), COARSE_BUCKETS);
        assert_eq!(encoded(Layout::Fine, Layout::Fine).len(), BUCKETS);
    }

    /// One read answers a batch: each format asked for is encoded once,
    /// gzipped only if one of its scrapes asked for gzip, and the gzipped
    /// bytes are the plain ones compressed; formats nobody asked for are
    /// not encoded.
    #[test]
    fn a_read_encodes_each_format_asked_for_once() {
        use crate::collector::{CollectorKind, Collectors, Status};
        use std::io::Read as _;
        let reader = ScrapeTime {
            collectors: Arc::new(Collectors {
                running: vec![(CollectorKind::Block, Box::new(Readable))],
                statuses: vec![Status {
                    kind: CollectorKind::Block,
                    down_reason: None,
                }],
                attribution: None,
            }),
            programs: None,
            scrape_errors: Vec::new(),
            classic: Layout::Coarse,
            gzip: Gzip::default(),
        };
        let want = |format, gzip| Want { format, gzip };
        let Expositions(answers) = reader.expositions(&[
            want(Format::Text, false),
            want(Format::Protobuf, false),
            want(Format::Text, true),
            want(Format::Text, false),
        ]);
        let formats: Vec<Format> = answers.iter().map(|(format, _)| *format).collect();
        assert_eq!(formats, [Format::Text, Format::Protobuf]);
        let text = answers[0].1.as_ref().unwrap();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&text.gzip.as_ref().expect("gzipped")[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, text.plain);
        let plain = std::str::from_utf8(&text.plain).unwrap();
        assert!(plain.contains("test_readable_total 5\n"), "{plain}");
        let protobuf = answers[1].1.as_ref().unwrap();
        assert!(protobuf.gzip.is_none(), "nobody asked for gzipped protobuf");
        assert!(!protobuf.plain.is_empty());
    }

    /// A collector whose maps can't be read: every read fails.
    struct Unreadable;

    impl crate::collector::Collector for Unreadable {
        fn read(&self) -> Result<Vec<Family>, aya::maps::MapError> {
            Err(aya::maps::MapError::KeyNotFound)
        }
    }

    /// A collector that always reads one counter.
    struct Readable;

    impl crate::collector::Collector for Readable {
        fn read(&self) -> Result<Vec<Family>, aya::maps::MapError> {
            Ok(vec![Family::counter(
                "test_readable",
                "readable",
                "Readable.",
                5,
            )])
        }
    }

    /// A map read that fails at scrape time leaves that collector's
    /// families out, counts the failure under its name, and leaves the
    /// other collectors' families and the scrape itself whole.
    #[tokio::test]
    async fn a_failed_map_read_is_counted_and_spares_the_others() {
        use crate::collector::{CollectorKind, Collectors, Status};
        let collectors = Collectors {
            running: vec![
                (CollectorKind::Sched, Box::new(Unreadable)),
                (CollectorKind::Block, Box::new(Readable)),
            ],
            statuses: [CollectorKind::Sched, CollectorKind::Block]
                .into_iter()
                .map(|kind| Status {
                    kind,
                    down_reason: None,
                })
                .collect(),
            attribution: None,
        };
        let metrics = Metrics::new(Arc::new(collectors), None, Layout::Coarse);
        for scrape in 1..=2 {
            let text = metrics.scrape(Format::Text, false).await.unwrap();
            let text = String::from_utf8(text.to_vec()).unwrap();
            assert!(
                text.contains(&format!(
                    "hostscope_scrape_errors_total{{collector=\"sched\"}} {scrape}\n"
                )),
                "{text}"
            );
            assert!(
                text.contains("hostscope_scrape_errors_total{collector=\"block\"} 0\n"),
                "{text}"
            );
            assert!(text.contains("test_readable_total 5\n"), "{text}");
            assert!(
                text.contains("hostscope_collector_up{collector=\"sched\"} 1\n"),
                "{text}"
            );
        }
    }
}
