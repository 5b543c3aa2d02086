//! The daemon's own costs: start-up, memory, CPU when idle and per scrape,
//! scrape latency under concurrent clients.

use std::time::Duration;

use anyhow::Context as _;

use super::{
    Plan, daemon,
    report::{Report, Row, Target, median},
};

/// wrk runs per path (see the latency rows).
const LATENCY_ROUNDS: usize = 3;

const SECTION: &str = "daemon";

/// Start-up time, memory, CPU when idle and per scrape, scrape latency.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let mut ready = Vec::new();
    for _ in 0..3 {
        ready.push(daemon::start()?.ready_after.as_secs_f64() * 1e3);
    }
    ready.sort_by(f64::total_cmp);
    report.push(Row::value(
        SECTION,
        "start to first scrape with all probes attached, ms (median of 3)",
        ready[1],
        Target::below(300.0, " ms"),
    ));

    let daemon = daemon::start()?;
    let agent = daemon::agent();
    let cpu_start = daemon::cpu_ns(daemon.pid)?;
    std::thread::sleep(plan.idle_window);
    let cpu_idle = daemon::cpu_ns(daemon.pid)?.saturating_sub(cpu_start);
    let scrapes = plan.scrape_window.as_secs();
    let cpu_before_scrapes = daemon::cpu_ns(daemon.pid)?;
    for _ in 0..scrapes {
        agent
            .get(format!("{}/metrics", daemon.url))
            .call()
            .context("scraping")?;
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu_scraping = daemon::cpu_ns(daemon.pid)?.saturating_sub(cpu_before_scrapes);
    let idle_per_second = cpu_idle as f64 / plan.idle_window.as_secs_f64();
    let per_scrape =
        (cpu_scraping as f64 - idle_per_second * scrapes as f64).max(0.0) / scrapes as f64;
    let at_15s = (idle_per_second + per_scrape / 15.0) / 1e9 * 100.0;
    report.push(Row::value(
        SECTION,
        "CPU per scrape, ms",
        per_scrape / 1e6,
        Target::None,
    ));
    report.push(Row::value(
        SECTION,
        "CPU when scraped every 15 s, % of one core",
        at_15s,
        Target::below(0.2, "%"),
    ));
    let (rss, peak) = daemon::memory_kib(daemon.pid)?;
    report.push(Row::value(
        SECTION,
        "resident memory after scraping, MiB",
        rss as f64 / 1024.0,
        Target::below(25.0, " MiB"),
    ));
    // wrk's p99 moves by a fifth from run to run here, so each figure is
    // the median of a few runs, alternating with /healthz: the same HTTP
    // stack with nothing read or encoded, the floor of this machine (wrk
    // and the daemon share its two CPUs).
    let mut metrics = (Vec::new(), Vec::new());
    let mut healthz = (Vec::new(), Vec::new());
    let seconds = (plan.wrk_seconds / LATENCY_ROUNDS as u64).max(1);
    for _ in 0..LATENCY_ROUNDS {
        for (path, into) in [("/healthz", &mut healthz), ("/metrics", &mut metrics)] {
            let (p50, p99) = daemon::latency(&daemon.url, path, 50, seconds)?;
            into.0.push(p50);
            into.1.push(p99);
        }
    }
    let rows = [
        ("/metrics p50", median(&metrics.0), Target::None),
        (
            "/metrics p99",
            median(&metrics.1),
            Target::below(2.0, " ms"),
        ),
        ("/healthz p50", median(&healthz.0), Target::None),
        ("/healthz p99", median(&healthz.1), Target::None),
    ];
    for (what, ms, target) in rows {
        report.push(Row::value(
            SECTION,
            &format!("{what} latency, 50 clients (wrk -t1, gzip), ms, median of {LATENCY_ROUNDS}"),
            ms,
            target,
        ));
    }
    let (_, peak_after) = daemon::memory_kib(daemon.pid)?;
    report.push(Row::value(
        SECTION,
        "peak resident memory under 50 clients, MiB",
        peak.max(peak_after) as f64 / 1024.0,
        Target::None,
    ));
    Ok(())
}
