//! `cargo xtask soak --minutes N`: the release daemon (every collector,
//! `--by-cgroup`) under a mixed workload for N minutes, scraped every
//! second and profiled every minute, watched for resources that grow
//! without bound.
//!
//! Every 30 s it prints the daemon's resident memory, open files, threads
//! and CPU time. At the end it prints a Markdown table (for BENCHMARKS.md)
//! and fails if, after a warm-up, the second half of the run shows
//! - resident memory above the first half's peak by more than
//!   [`RSS_GROWTH`] plus [`RSS_SLACK_MIB`] (allocator noise);
//! - a median of open files or threads above the first half's by more
//!   than [`FD_SLACK`] or [`THREAD_SLACK`] (medians, so that a connection
//!   or blocking-pool thread caught at one sample does not count);
//! - CPU use per second above the first half's by more than [`CPU_GROWTH`]
//!   plus [`CPU_SLACK`] (work per scrape that grows with time, such as
//!   state that is never pruned).
//!
//! It also fails if the daemon exits, or a scrape or profile fails.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    bench::{
        daemon::{self, Daemon},
        workloads,
    },
    benchmarks_md,
};

/// Resident memory may end this much above its first-half peak...
const RSS_GROWTH: f64 = 0.10;
/// ...plus this many MiB.
const RSS_SLACK_MIB: f64 = 2.0;
/// Open files: the second half's median may exceed the first half's by
/// this many (a leak of one file a minute passes it within 10 minutes).
const FD_SLACK: u64 = 4;
/// Threads: likewise.
const THREAD_SLACK: u64 = 2;
/// CPU per second may end this much above the first half's...
const CPU_GROWTH: f64 = 0.25;
/// ...plus this many percent of one CPU.
const CPU_SLACK: f64 = 0.5;

/// A sample every this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// A scrape every this often.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// Profiles start this far into each minute, so that they are over (two
/// 5 s captures and their symbolization) before the next sample.
const PROFILE_AT: Duration = Duration::from_secs(5);

/// What Prometheus sends for each format, in turn.
const FORMATS: [(&str, &str); 3] = [
    ("text", "text/plain;version=0.0.4"),
    (
        "OpenMetrics",
        "application/openmetrics-text;version=1.0.0;charset=utf-8",
    ),
    (
        "protobuf",
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
    ),
];

/// Options of `cargo xtask soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long to run, in minutes (at least 3).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Also write the table into BENCHMARKS.md, as its "Soak" section
    /// (which `cargo xtask bench` keeps).
    #[arg(long)]
    record: bool,
}

/// One row: the daemon's resources at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    cpu_ns: u64,
    scrapes: u64,
    profiles: u64,
}

impl Sample {
    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    if args.minutes < 3 {
        bail!("--minutes must be at least 3: the verdict compares two halves after a warm-up");
    }
    crate::setup::toolchain()?;
    crate::setup::kernel()?;
    crate::setup::require_root("the soak loads eBPF programs and makes a loop device")?;
    crate::setup::apt_install_missing(&[
        ("perf", "linux-perf"),
        ("fio", "fio"),
        ("losetup", "mount"),
        ("taskset", "util-linux"),
    ])?;
    crate::run_checked(crate::cargo().args(["build", "--release", "--package", "hostscope"]))?;

    let daemon = daemon::start_with(&["--by-cgroup"])?;
    eprintln!(
        "xtask: soak: hostscope (pid {}) at {} for {} minutes: sched pipe ping-pong, fio \
         random reads on a loop device, loopback TCP, cgroups created and removed; a scrape \
         every second (text, OpenMetrics, protobuf in turn), a CPU and an off-CPU flame \
         graph every minute",
        daemon.pid, daemon.url, args.minutes
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let workers = start_workload(&stop, &errors)?;
    let result = drive(&daemon, args.minutes, &errors);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let samples = result?;

    let table = markdown(&samples, args.minutes);
    let verdict = verdict(&samples, args.minutes);
    let mut report = table;
    match &verdict {
        Ok(()) => report.push_str("\nVerdict: nothing grew without bound.\n"),
        Err(reason) => {
            let _ = writeln!(report, "\nVerdict: FAILED: {reason}");
        }
    }
    print_report(&report);
    if let Some(path) = &args.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.record {
        record(&report)?;
    }
    if let Some(error) = errors.first() {
        bail!(
            "{} requests or workloads failed during the soak; the first: {error}",
            errors.count()
        );
    }
    verdict.map_err(|reason| anyhow::anyhow!("soak: {reason}"))
}

/// Puts `report` into BENCHMARKS.md's soak section.
fn record(report: &str) -> anyhow::Result<()> {
    let path = crate::workspace_root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let body = format!(
        "{}\n\n{}\n\nReproduce: `cargo xtask soak --minutes N --record`.\n",
        benchmarks_md::SOAK_HEADING,
        report.trim_end()
    );
    let text = benchmarks_md::with_section(&text, benchmarks_md::SOAK_HEADING, &body);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: soak: wrote the table into {}", path.display());
    Ok(())
}

#[allow(
    clippy::print_stdout,
    reason = "the table goes to standard output, to paste or redirect"
)]
fn print_report(report: &str) {
    println!("{report}");
}

/// Failures seen by the scrapers, profilers and workloads.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn record(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            eprintln!("xtask: soak: {what}");
            *first = Some(what);
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Scrapes every second, profiles every minute, samples every 30 s, for
/// `minutes`; returns the samples (the first at start).
fn drive(daemon: &Daemon, minutes: u64, errors: &Arc<Errors>) -> anyhow::Result<Vec<Sample>> {
    let agent = daemon::agent();
    let started = Instant::now();
    let end = Duration::from_secs(minutes * 60);
    let mut scrapes = 0;
    let profiles = Arc::new(AtomicU64::new(0));
    let mut samples = vec![sample(daemon, Duration::ZERO, 0, 0)?];
    eprintln!("xtask: soak: {}", row_text(&samples[0]));
    let mut next_scrape = Duration::ZERO;
    let mut next_sample = SAMPLE_EVERY;
    let mut next_profile = PROFILE_AT;
    let mut profiler: Option<JoinHandle<()>> = None;
    let mut format = 0;
    loop {
        let now = started.elapsed();
        if now >= next_sample {
            let s = sample(
                daemon,
                next_sample,
                scrapes,
                profiles.load(Ordering::Relaxed),
            )?;
            eprintln!("xtask: soak: {}", row_text(&s));
            samples.push(s);
            next_sample += SAMPLE_EVERY;
            if next_sample > end {
                break;
            }
        }
        if now >= next_profile {
            next_profile += Duration::from_secs(60);
            if profiler.as_ref().is_some_and(|p| !p.is_finished()) {
                errors.record("the previous minute's profiles were still running".into());
            } else {
                let (url, profiles, errors) =
                    (daemon.url.clone(), profiles.clone(), errors.clone());
                profiler = Some(std::thread::spawn(move || {
                    profile_once(&url, &profiles, &errors)
                }));
            }
        }
        if now >= next_scrape {
            next_scrape += SCRAPE_EVERY;
            let (name, accept) = FORMATS[format % FORMATS.len()];
            format += 1;
            match scrape(&agent, &daemon.url, accept) {
                Ok(()) => scrapes += 1,
                Err(err) => errors.record(format!("{name} scrape: {err:#}")),
            }
        }
        if has_exited(daemon.pid) {
            bail!("hostscope exited during the soak");
        }
        let wake = [next_sample, next_scrape, next_profile]
            .into_iter()
            .min()
            .unwrap_or(next_scrape);
        std::thread::sleep(wake.saturating_sub(started.elapsed()));
    }
    if let Some(profiler) = profiler {
        let _ = profiler.join();
    }
    Ok(samples)
}

/// Whether our child `pid` has exited (it is a zombie until reaped).
fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn scrape(agent: &ureq::Agent, url: &str, accept: &str) -> anyhow::Result<()> {
    let mut response = agent
        .get(format!("{url}/metrics"))
        .header("Accept", accept)
        .call()?;
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()?;
    if body.is_empty() {
        bail!("empty body");
    }
    Ok(())
}

/// A 5 s CPU flame graph, then a 5 s off-CPU one.
fn profile_once(url: &str, profiles: &AtomicU64, errors: &Errors) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(40)))
        .build()
        .into();
    for query in ["seconds=5", "seconds=5&kind=offcpu"] {
        match flame_graph(&agent, &format!("{url}/flamegraph.svg?{query}")) {
            Ok(()) => {
                profiles.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => errors.record(format!("/flamegraph.svg?{query}: {err:#}")),
        }
    }
}

fn flame_graph(agent: &ureq::Agent, url: &str) -> anyhow::Result<()> {
    let mut response = agent.get(url).call()?;
    let svg = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    if !svg.contains("<svg") {
        bail!("not an SVG");
    }
    Ok(())
}

fn sample(daemon: &Daemon, at: Duration, scrapes: u64, profiles: u64) -> anyhow::Result<Sample> {
    let pid = daemon.pid;
    let (rss_kib, _) = daemon::memory_kib(pid)?;
    let count = |dir: &str| -> anyhow::Result<u64> {
        Ok(std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .with_context(|| format!("reading /proc/{pid}/{dir}"))?
            .count() as u64)
    };
    Ok(Sample {
        at,
        rss_kib,
        fds: count("fd")?,
        threads: count("task")?,
        cpu_ns: daemon::cpu_ns(pid)?,
        scrapes,
        profiles,
    })
}

fn row_text(s: &Sample) -> String {
    format!(
        "{:>5.1} min  RSS {:>6.1} MiB  fds {:>4}  threads {:>3}  CPU {:>7.2} s  scrapes {:>5}  profiles {:>3}",
        s.at.as_secs_f64() / 60.0,
        s.rss_mib(),
        s.fds,
        s.threads,
        s.cpu_ns as f64 / 1e9,
        s.scrapes,
        s.profiles
    )
}

/// Samples after the warm-up (a sixth of the run, at least one minute and
/// at most five), split into halves.
fn halves(samples: &[Sample], minutes: u64) -> (&[Sample], &[Sample]) {
    let warm_up = Duration::from_secs((minutes * 10).clamp(60, 300));
    let start = samples
        .iter()
        .position(|s| s.at >= warm_up)
        .unwrap_or(samples.len());
    let rest = &samples[start..];
    rest.split_at(rest.len() / 2)
}

/// CPU use between the first and last sample of `window`, in percent of
/// one CPU.
fn cpu_percent(window: &[Sample]) -> f64 {
    match (window.first(), window.last()) {
        (Some(a), Some(b)) if b.at > a.at => {
            (b.cpu_ns.saturating_sub(a.cpu_ns)) as f64 / 1e9 / (b.at - a.at).as_secs_f64() * 100.0
        }
        _ => 0.0,
    }
}

/// The median of `f` over `window` (the upper one of an even count).
fn median(window: &[Sample], f: fn(&Sample) -> u64) -> u64 {
    let mut values: Vec<u64> = window.iter().map(f).collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// `Ok` unless something grew without bound; the reason in one line.
fn verdict(samples: &[Sample], minutes: u64) -> Result<(), String> {
    let (first, second) = halves(samples, minutes);
    if first.len() < 2 || second.len() < 2 {
        return Err(format!(
            "too few samples after the warm-up ({} and {})",
            first.len(),
            second.len()
        ));
    }
    let max = |w: &[Sample], f: fn(&Sample) -> u64| w.iter().map(f).max().unwrap_or(0);
    let mut reasons = Vec::new();
    let (rss_before, rss_after) = (
        max(first, |s| s.rss_kib) as f64 / 1024.0,
        max(second, |s| s.rss_kib) as f64 / 1024.0,
    );
    if rss_after > rss_before * (1.0 + RSS_GROWTH) + RSS_SLACK_MIB {
        reasons.push(format!(
            "resident memory grew from a peak of {rss_before:.1} MiB to {rss_after:.1} MiB"
        ));
    }
    for (what, f, slack) in [
        (
            "open files",
            (|s: &Sample| s.fds) as fn(&Sample) -> u64,
            FD_SLACK,
        ),
        ("threads", |s: &Sample| s.threads, THREAD_SLACK),
    ] {
        let (before, after) = (median(first, f), median(second, f));
        if after > before + slack {
            reasons.push(format!(
                "{what} kept increasing: a median of {before} in the first half, {after} in the second"
            ));
        }
    }
    // The first half's window starts at its first sample and ends where the
    // second half's begins, so both cover whole minutes alike.
    let first_window = [first[0], second[0]];
    let (cpu_before, cpu_after) = (cpu_percent(&first_window), cpu_percent(second));
    if cpu_after > cpu_before * (1.0 + CPU_GROWTH) + CPU_SLACK {
        reasons.push(format!(
            "CPU use grew from {cpu_before:.2}% to {cpu_after:.2}% of one CPU"
        ));
    }
    match reasons.is_empty() {
        true => Ok(()),
        false => Err(reasons.join("; ")),
    }
}

/// The samples (at most about a dozen rows, evenly spread, and the last)
/// and a summary of the two halves, in Markdown.
fn markdown(samples: &[Sample], minutes: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Soak: {minutes} minutes, every collector and --by-cgroup; sched pipe ping-pong, fio \
         random reads on a loop device, loopback TCP and cgroup churn; a scrape every second \
         (text, OpenMetrics, protobuf in turn), a 5 s CPU and a 5 s off-CPU flame graph every \
         minute.\n"
    );
    out.push_str("| minute | RSS, MiB | open files | threads | CPU, s | scrapes | profiles |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    let stride = samples.len().div_ceil(12).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % stride == 0 || i + 1 == samples.len() {
            let _ = writeln!(
                out,
                "| {:.1} | {:.1} | {} | {} | {:.2} | {} | {} |",
                s.at.as_secs_f64() / 60.0,
                s.rss_mib(),
                s.fds,
                s.threads,
                s.cpu_ns as f64 / 1e9,
                s.scrapes,
                s.profiles
            );
        }
    }
    let (first, second) = halves(samples, minutes);
    if let (Some(f0), Some(s0)) = (first.first(), second.first()) {
        let max = |w: &[Sample], f: fn(&Sample) -> u64| w.iter().map(f).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "\n| after the warm-up | first half ({:.1} to {:.1} min) | second half | limit |\n\
             |---|---:|---:|---|\n\
             | peak RSS, MiB | {:.1} | {:.1} | first × {:.2} + {RSS_SLACK_MIB} MiB |\n\
             | open files, median | {} | {} | first + {FD_SLACK} |\n\
             | threads, median | {} | {} | first + {THREAD_SLACK} |\n\
             | CPU, % of one CPU | {:.2} | {:.2} | first × {:.2} + {CPU_SLACK} |",
            f0.at.as_secs_f64() / 60.0,
            s0.at.as_secs_f64() / 60.0,
            max(first, |s| s.rss_kib) as f64 / 1024.0,
            max(second, |s| s.rss_kib) as f64 / 1024.0,
            1.0 + RSS_GROWTH,
            median(first, |s| s.fds),
            median(second, |s| s.fds),
            median(first, |s| s.threads),
            median(second, |s| s.threads),
            cpu_percent(&[*f0, *s0]),
            cpu_percent(second),
            1.0 + CPU_GROWTH,
        );
    }
    out
}

/// Starts the workload threads; they run until `stop`.
fn start_workload(
    stop: &Arc<AtomicBool>,
    errors: &Arc<Errors>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut workers = Vec::new();
    let spawn = |name: &'static str,
                 mut work: Box<dyn FnMut() -> anyhow::Result<()> + Send>|
     -> JoinHandle<()> {
        let (stop, errors) = (stop.clone(), errors.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(err) = work() {
                    errors.record(format!("workload {name}: {err:#}"));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
    };
    // Context switches: a pipe ping-pong, in short runs.
    workers.push(spawn(
        "sched",
        Box::new(|| workloads::sched_pipe(20_000).map(drop)),
    ));
    // Block I/O: direct random reads on a loop device, 5 s at a time. The
    // device lives (and is detached) in this thread.
    let device = workloads::loop_device(256)?;
    workers.push(spawn(
        "block",
        Box::new(move || workloads::fio_randread(&device.path(), 5).map(drop)),
    ));
    // TCP: round trips on one connection and fresh connects, paced so
    // that TIME_WAIT sockets stay in the thousands.
    workers.push(spawn(
        "tcp",
        Box::new(|| {
            workloads::tcp_ping_pong(5_000, 50)?;
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        }),
    ));
    // Cgroups created, used and removed: the per-cgroup state must shrink
    // again as they go.
    if let Some(mut churn) = CgroupChurn::new()? {
        workers.push(spawn("cgroups", Box::new(move || churn.once())));
    } else {
        eprintln!("xtask: soak: no cgroup2 hierarchy is mounted; no cgroup churn");
    }
    Ok(workers)
}

/// A parent cgroup whose children come and go, each running a short busy
/// process; removed with its children on drop.
struct CgroupChurn {
    parent: PathBuf,
    next: u64,
}

impl CgroupChurn {
    fn new() -> anyhow::Result<Option<CgroupChurn>> {
        let Ok(root) = hostscope_tests::cgroups::try_cgroup2_root() else {
            return Ok(None);
        };
        let parent = root.join(format!("hostscope-soak-{}", std::process::id()));
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        Ok(Some(CgroupChurn { parent, next: 0 }))
    }

    /// One cgroup: made, given a process that does some I/O and switches,
    /// then removed.
    fn once(&mut self) -> anyhow::Result<()> {
        let dir = self.parent.join(format!("c{}", self.next));
        self.next += 1;
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let result = run_in(&dir);
        // A cgroup can be removed once its last process has been reaped.
        let removed =
            std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()));
        std::thread::sleep(Duration::from_millis(500));
        result.and(removed)
    }
}

/// Runs a short process that does some I/O and switches in cgroup `dir`.
fn run_in(dir: &std::path::Path) -> anyhow::Result<()> {
    // The shell moves itself in before it starts the work.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=4k count=50000",
        dir.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting sh")?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the cgroup's process failed ({status}): {}", stderr.trim());
    }
    Ok(())
}

impl Drop for CgroupChurn {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.parent) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(minutes: u64, f: impl Fn(u64) -> (u64, u64, u64, u64)) -> Vec<Sample> {
        (0..=minutes * 2)
            .map(|i| {
                let (rss_kib, fds, threads, cpu_ns) = f(i);
                Sample {
                    at: SAMPLE_EVERY * u32::try_from(i).unwrap_or(0),
                    rss_kib,
                    fds,
                    threads,
                    cpu_ns,
                    scrapes: i * 30,
                    profiles: i,
                }
            })
            .collect()
    }

    #[test]
    fn steady_resources_pass() {
        let samples = run_of(30, |i| {
            (
                20_000 + (i % 3) * 300,
                40 + i % 2,
                6 + i % 2,
                i * 300_000_000,
            )
        });
        assert_eq!(verdict(&samples, 30), Ok(()));
    }

    #[test]
    fn each_kind_of_growth_fails() {
        let rss = run_of(30, |i| (20_000 + i * 200, 40, 6, i * 300_000_000));
        assert!(verdict(&rss, 30).unwrap_err().contains("resident memory"));
        let fds = run_of(30, |i| (20_000, 40 + i, 6, i * 300_000_000));
        assert!(verdict(&fds, 30).unwrap_err().contains("open files"));
        let threads = run_of(30, |i| (20_000, 40, 6 + i / 2, i * 300_000_000));
        assert!(verdict(&threads, 30).unwrap_err().contains("threads"));
        // CPU per 30 s growing linearly: cumulative CPU grows quadratically.
        let cpu = run_of(30, |i| (20_000, 40, 6, i * i * 30_000_000));
        assert!(verdict(&cpu, 30).unwrap_err().contains("CPU"));
    }

    #[test]
    fn short_runs_still_have_two_halves() {
        let samples = run_of(3, |i| (20_000, 40, 6, i * 300_000_000));
        let (first, second) = halves(&samples, 3);
        assert_eq!((first.len(), second.len()), (2, 3));
        assert_eq!(verdict(&samples, 3), Ok(()));
    }
}
