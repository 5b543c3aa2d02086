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
    render, serve,
};

/// Runs the command.
pub fn run(args: HistArgs) -> anyhow::Result<()> {
    privileges::check()?;
    serve::prepare_tracefs(&args.system.tracefs);
    let mut probes = Probes::load()?;
    let collectors = Collectors::start(&mut probes, &[args.collector]);
    if let Some(reason) = collectors
        .statuses
        .iter()
        .find_map(|s| s.down_reason.as_ref())
    {
        bail!("the {} collector could not start: {reason}", args.collector);
    }
    let read = || -> anyhow::Result<Vec<Series>> {
        match args.collector {
            CollectorKind::Sched => {
                let sched = collectors.sched.as_ref().context("sched is not running")?;
                let histogram = sched.snapshot().context("reading the histogram map")?;
                Ok(vec![(Vec::new(), histogram)])
            }
            CollectorKind::Block => {
                let block = collectors.block.as_ref().context("block is not running")?;
                let snapshot = block.snapshot().context("reading the histogram maps")?;
                Ok(snapshot
                    .series
                    .into_iter()
                    .map(|s| {
                        (
                            vec![("device", s.device), ("op", s.op.to_owned())],
                            s.histogram,
                        )
                    })
                    .collect())
            }
            kind => bail!("the {kind} collector is not running"),
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
        if now.is_empty() && args.format == HistFormat::Text {
            print_idle(args.collector, elapsed);
        }
        for (labels, histogram) in &now {
            let before = previous
                .iter()
                .find(|(l, _)| l == labels)
                .map_or(Histogram::ZERO, |(_, h)| *h);
            print(&args, labels, &histogram.since(&before), elapsed)?;
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
