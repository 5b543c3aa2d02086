//! `hostscope hist`: the same probes as the daemon, printed at the terminal
//! every interval, like BCC's runqlat.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hostscope_common::histogram::Histogram;

use crate::{
    cgroup::{self, Attribution},
    cli::{CgroupBuckets, HistArgs, HistFormat},
    collector::{CollectorKind, Collectors, Family, Labels, Values},
    privileges,
    probes::Probes,
    render,
};

/// Runs the command.
pub fn run(args: HistArgs) -> anyhow::Result<()> {
    privileges::check()?;
    args.system.warn_unused();
    let mut probes = Probes::load(&args.system.kernel_btf, args.maps, &args.cgroups)?;
    let kernel_log = probes.take_kernel_log();
    let attribution = match args.cgroups.by_cgroup {
        true => {
            let root = cgroup::mount::find_or_mount()?;
            let matcher = args.cgroups.cgroup_match.clone();
            let attribution = Attribution::new(&mut probes, root, matcher, CgroupBuckets::Fine)
                .context("setting up --by-cgroup")?;
            Some(Arc::new(attribution))
        }
        false => None,
    };
    let collectors = Collectors::start(&mut probes, &[args.collector], attribution);
    if let Some(reason) = collectors
        .statuses
        .iter()
        .find_map(|s| s.down_reason.as_ref())
    {
        bail!("the {} collector could not start: {reason}", args.collector);
    }
    let collector = collectors
        .get(args.collector)
        .with_context(|| format!("{} is not running", args.collector))?;
    let read = || collector.read().context("reading the collector's maps");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Runs whenever the loop below waits on the runtime.
    if let Some(kernel_log) = kernel_log {
        runtime.spawn(kernel_log.forward());
    }
    let interval = Duration::from_secs_f64(args.interval);
    if args.format == HistFormat::Text {
        eprintln!("Tracing {}... Hit Ctrl-C to end.", args.collector.title());
    }

    let mut previous = read()?;
    let mut started = Instant::now();
    let mut printed = 0;
    while args.count == 0 || printed < args.count {
        let interrupted = runtime.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = tokio::signal::ctrl_c() => true,
            }
        });
        let now = read()?;
        let elapsed = started.elapsed().as_secs_f64();
        for line in interval_lines(args.format, args.collector, &previous, &now, elapsed)? {
            print_line(&line);
        }
        printed += 1;
        if interrupted {
            break;
        }
        previous = now;
        started = Instant::now();
    }
    Ok(())
}

#[expect(
    clippy::print_stdout,
    reason = "printing the histograms is this command's job"
)]
fn print_line(line: &str) {
    println!("{line}");
}

/// What one interval prints: a table (or JSON object) per histogram series,
/// then one line of counters. `previous` and `now` are two readings of the
/// same collector; what is printed is their difference.
fn interval_lines(
    format: HistFormat,
    kind: CollectorKind,
    previous: &[Family],
    now: &[Family],
    elapsed: f64,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let histogram_families = now
        .iter()
        .filter(|f| matches!(f.values, Values::Histograms(_)))
        .count();
    let mut any_series = false;
    let mut counters: Vec<(&str, u64)> = Vec::new();
    for family in now {
        let before = previous.iter().find(|f| f.name == family.name);
        match &family.values {
            Values::Histograms(series) => {
                for (labels, histogram) in series {
                    let earlier = match before.map(|f| &f.values) {
                        Some(Values::Histograms(earlier)) => earlier
                            .iter()
                            .find(|(l, _)| l == labels)
                            .map_or(Histogram::ZERO, |(_, h)| *h),
                        _ => Histogram::ZERO,
                    };
                    let delta = histogram.since(&earlier);
                    // Per cgroup (--by-cgroup), only the cgroups that had
                    // events this interval: a host has hundreds.
                    if delta.count == 0 && labels.iter().any(|(name, _)| *name == "cgroup") {
                        continue;
                    }
                    any_series = true;
                    // A collector with several histograms names which one.
                    let mut shown: Labels = Vec::new();
                    if histogram_families > 1 {
                        shown.push(("histogram", family.short.to_owned()));
                    }
                    shown.extend(labels.iter().cloned());
                    lines.push(series_line(format, kind, &shown, &delta, elapsed)?);
                }
            }
            Values::Counters(series) => {
                let total = |series: &[(Labels, u64)]| {
                    series.iter().fold(0u64, |sum, (_, v)| sum.wrapping_add(*v))
                };
                let then = match before.map(|f| &f.values) {
                    Some(Values::Counters(earlier)) => total(earlier),
                    _ => 0,
                };
                counters.push((family.short, total(series).wrapping_sub(then)));
            }
        }
    }
    if !any_series && format == HistFormat::Text {
        lines.push(format!("{} over {elapsed:.2} s: no events\n", kind.title()));
    }
    if !counters.is_empty() {
        lines.push(counters_line(format, kind, &counters, elapsed));
    }
    Ok(lines)
}

fn counters_line(
    format: HistFormat,
    kind: CollectorKind,
    deltas: &[(&str, u64)],
    elapsed: f64,
) -> String {
    match format {
        HistFormat::Text => {
            let list: Vec<String> = deltas.iter().map(|(n, v)| format!("{n} {v}")).collect();
            format!(
                "{} counters over {elapsed:.2} s: {}\n",
                kind.title(),
                list.join(", ")
            )
        }
        HistFormat::Json => {
            let counters: std::collections::BTreeMap<&str, u64> = deltas.iter().copied().collect();
            serde_json::json!({
                "collector": kind.name(),
                "interval_seconds": elapsed,
                "counters": counters,
            })
            .to_string()
        }
    }
}

fn series_line(
    format: HistFormat,
    kind: CollectorKind,
    labels: &[(&'static str, String)],
    delta: &Histogram,
    elapsed: f64,
) -> anyhow::Result<String> {
    Ok(match format {
        HistFormat::Text => {
            let mut title = kind.title().to_owned();
            for (_, value) in labels {
                title.push(' ');
                title.push_str(value);
            }
            render::text(&title, delta, elapsed)
        }
        HistFormat::Json => {
            let interval = render::JsonInterval {
                collector: kind.name(),
                labels: labels.iter().map(|(k, v)| (*k, v.as_str())).collect(),
                interval_seconds: elapsed,
                count: delta.count,
                sum_ns: delta.sum_ns,
                buckets: render::json_buckets(delta),
            };
            serde_json::to_string(&interval)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Layout;

    fn histogram_of(values: &[u64]) -> Histogram {
        let mut h = Histogram::ZERO;
        for v in values {
            h.record(*v);
        }
        h
    }

    fn tcp_like(rtt: &[u64], retransmits: u64) -> Vec<Family> {
        vec![
            Family::histogram("t_rtt", "rtt", "", histogram_of(rtt)),
            Family::histogram("t_connect", "connect", "", Histogram::ZERO),
            Family::counter("t_retransmits", "retransmits", "", retransmits),
        ]
    }

    /// JSON intervals print the difference between two readings, name the
    /// histogram when a collector has several, and total the counters.
    #[test]
    fn json_interval_is_the_difference_between_readings() {
        let before = tcp_like(&[1_000], 5);
        let now = tcp_like(&[1_000, 3_000, 3_000], 9);
        let lines =
            interval_lines(HistFormat::Json, CollectorKind::Tcp, &before, &now, 1.0).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let rtt: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(rtt["collector"], "tcp");
        assert_eq!(rtt["labels"]["histogram"], "rtt");
        assert_eq!(rtt["count"], 2);
        assert_eq!(rtt["sum_ns"], 6_000);
        let connect: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(connect["labels"]["histogram"], "connect");
        assert_eq!(connect["count"], 0);
        let counters: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(counters["counters"]["retransmits"], 4);
    }

    /// Series are matched by labels: a disk that appears between readings
    /// counts from zero; the text title carries the label values; a counter
    /// family is totalled over its series.
    #[test]
    fn text_interval_matches_series_by_labels() {
        let disk = |name: &str| vec![("device", name.to_owned()), ("op", "read".to_owned())];
        let reading = |vda: &[u64], sdb: Option<&[u64]>, dropped: u64| {
            let mut series = vec![(disk("vda"), histogram_of(vda))];
            if let Some(sdb) = sdb {
                series.push((disk("sdb"), histogram_of(sdb)));
            }
            vec![
                Family {
                    name: "b_latency",
                    short: "latency",
                    help: "",
                    values: Values::Histograms(series),
                    layout: Layout::Fine,
                },
                Family {
                    name: "b_dropped",
                    short: "dropped",
                    help: "",
                    values: Values::Counters(vec![(disk("vda"), dropped), (disk("sdb"), 1)]),
                    layout: Layout::Fine,
                },
            ]
        };
        let before = reading(&[1_000], None, 2);
        let now = reading(&[1_000, 2_000], Some(&[5_000, 5_000, 5_000]), 4);
        let lines =
            interval_lines(HistFormat::Text, CollectorKind::Block, &before, &now, 2.0).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].contains("block I/O latency vda read"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(": count 1 sum_ns 2000 "), "{}", lines[0]);
        assert!(lines[1].contains(": count 3 sum_ns 15000 "), "{}", lines[1]);
        assert!(
            lines[1].contains("block I/O latency sdb read"),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[2],
            "block I/O latency counters over 2.00 s: dropped 2\n"
        );
    }

    /// No series at all: one line saying so, in text only.
    #[test]
    fn idle_interval_says_no_events() {
        let empty = vec![Family {
            name: "s",
            short: "s",
            help: "",
            values: Values::Histograms(Vec::new()),
            layout: Layout::Fine,
        }];
        let text =
            interval_lines(HistFormat::Text, CollectorKind::Sched, &empty, &empty, 1.0).unwrap();
        assert_eq!(
            text,
            vec!["run-queue latency over 1.00 s: no events\n".to_owned()]
        );
        let json =
            interval_lines(HistFormat::Json, CollectorKind::Sched, &empty, &empty, 1.0).unwrap();
        assert!(json.is_empty(), "{json:?}");
    }
}
