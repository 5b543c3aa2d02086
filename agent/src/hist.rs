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
    let read = || -> anyhow::Result<Histogram> {
        match (args.collector, &collectors.sched) {
            (CollectorKind::Sched, Some(sched)) => {
                sched.snapshot().context("reading the histogram map")
            }
            (kind, _) => bail!("the {kind} collector is not running"),
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
        print(&args, &now.since(&previous), elapsed)?;
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
fn print(args: &HistArgs, delta: &Histogram, elapsed: f64) -> anyhow::Result<()> {
    match args.format {
        HistFormat::Text => println!("{}", render::text(title(args.collector), delta, elapsed)),
        HistFormat::Json => {
            let interval = render::JsonInterval {
                collector: args.collector.name(),
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
