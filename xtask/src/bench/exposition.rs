//! What one scrape costs in each exposition format and classic-bucket
//! layout: series, bytes and latency, with every collector on and the
//! host idle (so the figures are the floor a fleet pays per host).

use std::time::{Duration, Instant};

use super::{
    daemon::{self, TEXT},
    report::{Report, Row, Target},
};

/// What Prometheus sends for each format.
const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
/// Sequential scrapes timed per variant.
const SCRAPES: usize = 21;

pub fn costs(report: &mut Report) -> anyhow::Result<()> {
    for (layout, format, accept) in [
        ("coarse", "text 0.0.4", TEXT),
        ("fine", "text 0.0.4", TEXT),
        ("coarse", "protobuf", PROTOBUF),
        ("none", "protobuf", PROTOBUF),
    ] {
        let daemon = daemon::start_with(&["--classic-buckets", layout])?;
        let agent = daemon::agent();
        let scrape = || daemon::scrape(&agent, &daemon.url, accept);
        let body = scrape()?;
        let mut times = Vec::with_capacity(SCRAPES);
        for _ in 0..SCRAPES {
            let started = Instant::now();
            scrape()?;
            times.push(started.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        times.sort();
        let median = times[SCRAPES / 2].as_secs_f64() * 1e3;
        let variant = format!("--classic-buckets {layout}, {format}");
        if accept == TEXT {
            let series = String::from_utf8_lossy(&body)
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count();
            let default = layout == "coarse";
            report.push(Row::value(
                "exposition",
                &format!("series per scrape ({variant}), idle host"),
                series as f64,
                if default {
                    Target::below(300.0, "")
                } else {
                    Target::None
                },
            ));
        }
        report.push(Row::value(
            "exposition",
            &format!("scrape size ({variant}), KiB"),
            body.len() as f64 / 1024.0,
            Target::None,
        ));
        report.push(Row::value(
            "exposition",
            &format!("scrape latency ({variant}), ms (median of {SCRAPES})"),
            median,
            Target::None,
        ));
    }
    Ok(())
}
