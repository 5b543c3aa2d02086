//! `hostscope hist`: the same probes as the daemon, printed at the terminal
//! every interval, like BCC's runqlat.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hostscope_common::histogram::Histogram;

use crate::{
    cli::{HistArgs, HistFormat},
    collector::{CollectorKind, Collectors},
    privileges,
    probes::Probes,
    render,
};

/// Runs the command.
pub fn run(args: HistArgs) -> anyhow::Result<()> {
    privileges::check()?;
    args.system.warn_unused();
    let mut probes = Probes::load(&args.system.kernel_btf, args.maps)?;
    let collectors = Collectors::start(&mut probes, &[args.collector]);
    if let Some(reason) = collectors
        .statuses
        .iter()
        .find_map(|s| s.down_reason.as_ref())
    {
        bail!("the {} collector could not start: {reason}", args.collector);
    }
    let read = || -> anyhow::Result<Reading> {
        match args.collector {
            CollectorKind::Sched => {
                let sched = collectors.sched.as_ref().context("sched is not running")?;
                let histogram = sched.snapshot().context("reading the histogram map")?;
                Ok(Reading::series(vec![(Vec::new(), histogram)]))
            }
            CollectorKind::Block => {
                let block = collectors.block.as_ref().context("block is not running")?;
                let snapshot = block.snapshot().context("reading the histogram maps")?;
                let dropped = snapshot
                    .series
                    .iter()
                    .fold(snapshot.dropped_unknown_disk, |sum, s| {
                        sum.wrapping_add(s.dropped)
                    });
                let series = snapshot
                    .series
                    .into_iter()
                    .map(|s| {
                        let labels = vec![("device", s.device), ("op", s.op.to_owned())];
                        (labels, s.histogram)
                    })
                    .collect();
                Ok(Reading {
                    series,
                    counters: vec![("dropped", dropped)],
                })
            }
            CollectorKind::Tcp => {
                let tcp = collectors.tcp.as_ref().context("tcp is not running")?;
                let snapshot = tcp.snapshot().context("reading the TCP maps")?;
                Ok(Reading {
                    series: vec![
                        (vec![("histogram", "rtt".to_owned())], snapshot.rtt),
                        (vec![("histogram", "connect".to_owned())], snapshot.connect),
                    ],
                    counters: vec![
                        ("connect_failures", snapshot.connect_failures),
                        ("retransmits", snapshot.retransmits),
                        ("connect_dropped", snapshot.connect_dropped),
                    ],
                })
            }
        }
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let interval = Duration::from_secs_f64(args.interval);
    if args.format == HistFormat::Text {
        eprintln!("Tracing {}... Hit Ctrl-C to end.", title(args.collector));
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
        if now.series.is_empty() && args.format == HistFormat::Text {
            print_idle(args.collector, elapsed);
        }
        for (labels, histogram) in &now.series {
            let before = previous
                .series
                .iter()
                .find(|(l, _)| l == labels)
                .map_or(Histogram::ZERO, |(_, h)| *h);
            print(&args, labels, &histogram.since(&before), elapsed)?;
        }
        if !now.counters.is_empty() {
            let deltas: Vec<(&str, u64)> = now
                .counters
                .iter()
                .zip(&previous.counters)
                .map(|((name, now), (_, then))| (*name, now.wrapping_sub(*then)))
                .collect();
            print_counters(&args, &deltas, elapsed)?;
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

fn title(kind: CollectorKind) -> &'static str {
    match kind {
        CollectorKind::Sched => "run-queue latency",
        CollectorKind::Block => "block I/O latency",
        CollectorKind::Tcp => "TCP latency",
    }
}

#[expect(
    clippy::print_stdout,
    reason = "printing the histogram is this command's job"
)]
fn print_idle(kind: CollectorKind, elapsed: f64) {
    println!("{} over {elapsed:.2} s: no events\n", title(kind));
}

/// Label pairs and the histogram they name.
type Series = (Vec<(&'static str, String)>, Histogram);

/// One reading of a collector: its histograms and its counters (totals).
struct Reading {
    series: Vec<Series>,
    counters: Vec<(&'static str, u64)>,
}

impl Reading {
    fn series(series: Vec<Series>) -> Self {
        Self {
            series,
            counters: Vec::new(),
        }
    }
}

#[expect(
    clippy::print_stdout,
    reason = "printing the counters is this command's job"
)]
fn print_counters(args: &HistArgs, deltas: &[(&str, u64)], elapsed: f64) -> anyhow::Result<()> {
    match args.format {
        HistFormat::Text => {
            let list: Vec<String> = deltas.iter().map(|(n, v)| format!("{n} {v}")).collect();
            println!(
                "{} counters over {elapsed:.2} s: {}\n",
                title(args.collector),
                list.join(", ")
            );
        }
        HistFormat::Json => {
            let counters: std::collections::BTreeMap<&str, u64> = deltas.iter().copied().collect();
            let line = serde_json::json!({
                "collector": args.collector.name(),
                "interval_seconds": elapsed,
                "counters": counters,
            });
            println!("{line}");
        }
    }
    Ok(())
}

#[expect(
    clippy::print_stdout,
    reason = "printing the histogram is this command's job"
)]
fn print(
    args: &HistArgs,
    labels: &[(&'static str, String)],
    delta: &Histogram,
    elapsed: f64,
) -> anyhow::Result<()> {
    match args.format {
        HistFormat::Text => {
            let mut title = title(args.collector).to_owned();
            for (_, value) in labels {
                title.push(' ');
                title.push_str(value);
            }
            println!("{}", render::text(&title, delta, elapsed));
        }
        HistFormat::Json => {
            let interval = render::JsonInterval {
                collector: args.collector.name(),
                labels: labels.iter().map(|(k, v)| (*k, v.as_str())).collect(),
                interval_seconds: elapsed,
                count: delta.count,
                sum_ns: delta.sum_ns,
                buckets: render::json_buckets(delta),
            };
            println!("{}", serde_json::to_string(&interval)?);
        }
    }
    Ok(())
}
