//! The daemon's own costs: start-up, memory, CPU, scrape latency.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::programs::Holder;

/// A running daemon on a free loopback port.
pub struct Daemon {
    /// The process.
    pub holder: Holder,
    /// Its pid.
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// From spawn to the first successful scrape.
    pub ready_after: Duration,
}

/// Starts `hostscope serve` with every collector and waits for a scrape that
/// reports every collector up.
pub fn start() -> anyhow::Result<Daemon> {
    start_with(&[])
}

/// Like [`start`], with extra arguments for `serve`.
pub fn start_with(extra: &[&str]) -> anyhow::Result<Daemon> {
    let collectors = hostscope_common::COLLECTOR_PROGRAMS
        .map(|(name, _)| name)
        .join(",");
    // Quiet unless `extra` asks for a level (clap takes a flag once).
    let quiet: &[&str] = if extra.contains(&"--log-level") {
        &[]
    } else {
        &["--log-level", "warn"]
    };
    let started = Instant::now();
    let args = [quiet, extra].concat();
    let daemon = hostscope_tests::daemon::Launch::new(&collectors)
        .binary(&crate::release_binary())
        .args(&args)
        .try_start()?;
    let ready_after = started.elapsed();
    Ok(Daemon {
        pid: daemon.pid(),
        url: format!("http://{}", daemon.addr),
        ready_after,
        holder: Holder::Daemon(Box::new(daemon)),
    })
}

/// A blocking HTTP client.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The text exposition format's media type.
pub const TEXT: &str = "text/plain;version=0.0.4";

/// One /metrics of the daemon at `url`, asking for `accept`.
pub fn scrape(agent: &ureq::Agent, url: &str, accept: &str) -> anyhow::Result<Vec<u8>> {
    agent
        .get(format!("{url}/metrics"))
        .header("Accept", accept)
        .call()
        .context("scraping")?
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .context("reading /metrics")
}

/// The plain-text /metrics of the daemon at `url`, and the daemon's CPU
/// time per scrape over `scrapes` back-to-back scrapes, in milliseconds.
/// What the idle daemon spends meanwhile is counted too; it is a few
/// microseconds per second (see the daemon section), far below one scrape.
pub fn scrape_cpu_ms(url: &str, pid: u32, scrapes: u32) -> anyhow::Result<(String, f64)> {
    let agent = agent();
    let scrape = || scrape(&agent, url, TEXT);
    let body = String::from_utf8(scrape()?).context("/metrics is not UTF-8")?;
    let before = cpu_ns(pid)?;
    for _ in 0..scrapes {
        scrape()?;
    }
    let spent = cpu_ns(pid)?.saturating_sub(before);
    Ok((body, spent as f64 / f64::from(scrapes.max(1)) / 1e6))
}

/// CPU time `pid` has used, in ns, its exited threads included: the
/// process's CPU-time clock. (Summing /proc/PID/task/*/schedstat loses a
/// thread's time when it exits, and the daemon's blocking-pool threads do,
/// so such a sum can go backwards.)
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes one clockid_t into `clock`, which is ours.
    let rc = unsafe { libc::clock_getcpuclockid(pid, &raw mut clock) };
    if rc != 0 {
        bail!(
            "no CPU-time clock for pid {pid}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec into `time`, which is ours.
    if unsafe { libc::clock_gettime(clock, &raw mut time) } != 0 {
        bail!(
            "reading pid {pid}'s CPU time: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(u64::try_from(time.tv_sec)?.saturating_mul(1_000_000_000) + u64::try_from(time.tv_nsec)?)
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{name} not in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Latency (p50, p99) in ms of `path` (`/metrics`) under `connections`
/// concurrent clients for `seconds`, measured by wrk: one wrk thread (the
/// other CPU is the daemon's), asking for gzip as Prometheus does.
pub fn latency(
    url: &str,
    path: &str,
    connections: u32,
    seconds: u64,
) -> anyhow::Result<(f64, f64)> {
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            "Accept-Encoding: gzip",
        ])
        .arg(format!("{url}{path}"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.contains("Non-2xx") {
        bail!("wrk failed: {text}");
    }
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .and_then(parse_wrk_duration_ms)
            .with_context(|| format!("no {p} line in wrk's output: {text}"))
    };
    Ok((percentile("50%")?, percentile("99%")?))
}

fn parse_wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    Some(match unit {
        "us" => value / 1e3,
        "ms" => value,
        "s" => value * 1e3,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations_convert_to_ms() {
        assert_eq!(super::parse_wrk_duration_ms("520.00us"), Some(0.52));
        assert_eq!(super::parse_wrk_duration_ms("1.20ms"), Some(1.2));
        assert_eq!(super::parse_wrk_duration_ms("2.00s"), Some(2000.0));
    }
}
