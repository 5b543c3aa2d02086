//! `cargo xtask bench`: hostscope measured side by side with its peers
//! (libbpf-tools, bpftrace) in one run, reported as ratios in BENCHMARKS.md.
//! Targets are goals, not assertions: a missed one is marked in the table.

pub(crate) mod daemon;
mod diagnostics;
mod exposition;
mod per_cgroup;
mod programs;
mod report;
mod sampler;
pub(crate) mod workloads;

pub(crate) use per_cgroup::cgroup2_root;

use std::{process::Command, time::Duration};

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;
use clap::Args;

use self::{
    programs::{Attached, Holder},
    report::{Peer, Report, Row, Target},
};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Shorter windows and fewer repetitions (a smoke run, figures noisier).
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: std::path::PathBuf,
    /// Run only the sections whose name contains this (for example
    /// `sampler`).
    #[arg(long)]
    only: Option<String>,
}

/// Run lengths.
struct Plan {
    pipe_loops: u64,
    pipe_reps: usize,
    fio_seconds: u64,
    fio_reps: usize,
    tcp_round_trips: u64,
    idle_window: Duration,
    busy_processes: usize,
    scrape_window: Duration,
    wrk_seconds: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                pipe_loops: 50_000,
                pipe_reps: 3,
                fio_seconds: 3,
                fio_reps: 2,
                tcp_round_trips: 20_000,
                idle_window: Duration::from_secs(5),
                busy_processes: 30,
                scrape_window: Duration::from_secs(5),
                wrk_seconds: 3,
            }
        } else {
            Plan {
                pipe_loops: 200_000,
                pipe_reps: 7,
                fio_seconds: 5,
                fio_reps: 5,
                tcp_round_trips: 100_000,
                idle_window: Duration::from_secs(30),
                busy_processes: 300,
                scrape_window: Duration::from_secs(30),
                wrk_seconds: 10,
            }
        }
    }
}

/// Runs every benchmark and writes the report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    crate::setup::toolchain()?;
    crate::setup::kernel()?;
    crate::setup::require_root("benchmarks load eBPF programs and read their statistics")?;
    crate::setup::apt_install_missing(&[
        ("bpftool", "bpftool"),
        ("runqlat", "libbpf-tools"),
        ("bpftrace", "bpftrace"),
        ("offcputime", "libbpf-tools"),
        ("perf", "linux-perf"),
        ("fio", "fio"),
        ("wrk", "wrk"),
        ("go", "golang-go"),
        ("losetup", "mount"),
    ])?;
    crate::run_checked(crate::cargo().args(["build", "--release", "--package", "hostscope"]))?;

    let plan = Plan::new(args.quick);
    let mut report = Report::new(args.quick)?;
    let only = args.only.as_deref();
    section(&mut report, only, "per-event cost", |r| {
        let _stats = BpfStats::enable()?;
        per_event_cost(r, &plan)
    });
    section(&mut report, only, "kernel diagnostics", |r| {
        let _stats = BpfStats::enable()?;
        diagnostics::costs(r, &plan)
    });
    section(&mut report, only, "workload slowdown", |r| {
        slowdown(r, &plan)
    });
    section(&mut report, only, "daemon", |r| daemon_costs(r, &plan));
    section(&mut report, only, "exposition", exposition::costs);
    section(&mut report, only, "per cgroup", |r| {
        per_cgroup::costs(r, &plan)
    });
    section(&mut report, only, "profiling", |r| profiling(r, &plan));
    section(&mut report, only, "CPU sampler", sampler::costs);
    section(&mut report, only, "off-CPU profiling", |r| {
        offcpu_cost(r, &plan)
    });

    let markdown = report.markdown();
    println_table(&markdown);
    let path = crate::workspace_root().join(&args.output);
    std::fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the table is this task's output")]
fn println_table(markdown: &str) {
    println!("{markdown}");
}

/// Runs one section; a failure becomes a row saying why, not an abort.
fn section(
    report: &mut Report,
    only: Option<&str>,
    name: &str,
    body: impl FnOnce(&mut Report) -> anyhow::Result<()>,
) {
    if only.is_some_and(|only| !name.contains(only)) {
        return;
    }
    eprintln!("xtask: bench: {name}");
    if let Err(err) = body(report) {
        eprintln!("xtask: bench: {name} failed: {err:#}");
        report.push(Row::failed(name, &format!("{err:#}")));
    }
}

/// Turns on `kernel.bpf_stats_enabled` and restores it on drop.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling bpf_stats")?;
        Ok(Self(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn spawn(program: &str, args: &[&str]) -> anyhow::Result<Holder> {
    let child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    Ok(Holder::Process(child))
}

/// A filter for the programs of `collector` (hostscope's shared list).
fn programs_of(collector: &str) -> impl Fn(&str) -> bool + use<> {
    let programs: Vec<&'static str> = hostscope_common::COLLECTOR_PROGRAMS
        .iter()
        .filter(|(name, _)| *name == collector)
        .flat_map(|(_, programs)| programs.iter())
        .map(|(function, _)| *function)
        .collect();
    move |name: &str| programs.iter().any(|function| is_program(name, function))
}

/// Whether bpftool's `name` is program `function`: bpftool prints the full
/// name when the program carries BTF, else the kernel's 15-byte cut.
fn is_program(name: &str, function: &str) -> bool {
    name == function || name == hostscope_common::kernel_program_name(function)
}

/// Every tool attached at once, then each workload in turn; per-event cost
/// is each tool's run time over its run count on that workload's events.
fn per_event_cost(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let hostscope = Attached::start("hostscope", 0, || Ok(daemon::start()?.holder))?;
    let by_cgroup = Attached::start("hostscope --by-cgroup", 0, || {
        Ok(daemon::start_with(&["--by-cgroup"])?.holder)
    })?;
    let runqlat = Attached::start("libbpf-tools runqlat", 3, || spawn("runqlat", &["3600"]))?;
    let runqlat_bt = Attached::start("bpftrace runqlat", 0, || {
        spawn("bpftrace", &["-e", RUNQLAT_BPFTRACE])
    })?;
    let biolatency = Attached::start("libbpf-tools biolatency", 0, || {
        spawn("biolatency", &["3600"])
    })?;
    let tcp_bt = Attached::start("bpftrace tcp_probe histogram", 0, || {
        spawn("bpftrace", &["-e", TCP_BPFTRACE])
    })?;
    let floor = Attached::start("empty tp_btf program", 4, || {
        programs::load_floor(&[
            ("floor_sched_switch", "sched_switch"),
            ("floor_sched_wakeup", "sched_wakeup"),
            ("floor_block_rq_issue", "block_rq_issue"),
            ("floor_block_rq_complete", "block_rq_complete"),
        ])
    })?;
    let section = "per-event cost";

    let (before, after) = around(|| workloads::sched_pipe(plan.pipe_loops).map(drop))?;
    let cost = |tool: &Attached, filter: &dyn Fn(&str) -> bool| {
        let (time, count) = tool.accrued(&before, &after, filter);
        (count > 0).then(|| time as f64 / count as f64)
    };
    let sched = programs_of("sched");
    let ours = cost(&hostscope, &sched);
    let metric = "scheduler probes, ns/event (perf bench sched pipe)";
    report.push(Row::ratio(
        section,
        metric,
        ours,
        Peer::new(&runqlat.label, cost(&runqlat, &sched)),
        Target::RatioAtMost(0.5),
    ));
    report.push(Row::ratio(
        section,
        "scheduler probes with --by-cgroup, ns/event",
        cost(&by_cgroup, &sched),
        Peer::new(&runqlat.label, cost(&runqlat, &sched)),
        Target::RatioAtMost(0.6),
    ));
    for peer in [&runqlat_bt, &floor] {
        let peer_cost = cost(peer, &|_| true);
        report.push(Row::ratio(
            section,
            metric,
            ours,
            Peer::new(&peer.label, peer_cost),
            Target::None,
        ));
    }
    for (name, _) in hostscope_common::sched::SCHED_PROGRAMS {
        let only = |n: &str| is_program(n, name);
        let metric = format!("  {name}, ns/event");
        report.push(Row::ratio(
            section,
            &metric,
            cost(&hostscope, &only),
            Peer::new(&runqlat.label, cost(&runqlat, &only)),
            Target::None,
        ));
    }

    let device = workloads::LoopDevice::create(256)?;
    let (before, after) =
        around(|| workloads::fio_randread(&device.path, plan.fio_seconds).map(drop))?;
    let cost = |tool: &Attached, filter: &dyn Fn(&str) -> bool| {
        let (time, count) = tool.accrued(&before, &after, filter);
        (count > 0).then(|| time as f64 / count as f64)
    };
    let block = programs_of("block");
    let ours = cost(&hostscope, &block);
    let metric = "block probes, ns/event (fio 4k direct reads, loop device)";
    let peer = cost(&biolatency, &|_| true);
    report.push(Row::ratio(
        section,
        metric,
        ours,
        Peer::new(&biolatency.label, peer),
        Target::RatioAtMost(0.7),
    ));
    let floor_cost = cost(&floor, &|n| n.starts_with("floor_block"));
    report.push(Row::ratio(
        section,
        metric,
        ours,
        Peer::new(&floor.label, floor_cost),
        Target::None,
    ));
    // Per I/O: the tools attach different numbers of programs per request
    // (biolatency also runs on block_rq_insert), so ns/event alone flatters
    // the one with more, cheaper events. Completions are the I/O count.
    let (_, ios) = hostscope.accrued(&before, &after, |n| is_program(n, "block_rq_complete"));
    let per_io = |tool: &Attached, filter: &dyn Fn(&str) -> bool| {
        let (time, _) = tool.accrued(&before, &after, filter);
        (ios > 0).then(|| time as f64 / ios as f64)
    };
    let metric = "block probes, ns per I/O (all of a tool's programs)";
    let peer = per_io(&biolatency, &|_| true);
    report.push(Row::ratio(
        section,
        metric,
        per_io(&hostscope, &block),
        Peer::new(&biolatency.label, peer),
        Target::None,
    ));

    let (before, after) =
        around(|| workloads::tcp_ping_pong(plan.tcp_round_trips, 1_000).map(drop))?;
    let tcp = programs_of("tcp");
    let (ours_time, ours_count) = hostscope.accrued(&before, &after, tcp);
    let (peer_time, peer_count) = tcp_bt.accrued(&before, &after, |_| true);
    let per = |t: u64, c: u64| (c > 0).then(|| t as f64 / c as f64);
    let metric = "TCP probes, ns/event (loopback ping-pong + connects)";
    report.push(Row::ratio(
        section,
        metric,
        per(ours_time, ours_count),
        Peer::new(&tcp_bt.label, per(peer_time, peer_count)),
        Target::None,
    ));
    Ok(())
}

/// runqlat.bt's logic. Debian's /usr/sbin/runqlat.bt itself includes
/// <linux/sched.h> for TASK_RUNNING, which fails without kernel headers.
const RUNQLAT_BPFTRACE: &str = "\
    tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @qtime[args->pid] = nsecs; } \
    tracepoint:sched:sched_switch { \
        if (args->prev_state == 0) { @qtime[args->prev_pid] = nsecs; } \
        $ns = @qtime[args->next_pid]; \
        if ($ns) { @usecs = hist((nsecs - $ns) / 1000); } \
        delete(@qtime[args->next_pid]); \
    }";

/// bpftrace's equivalent of our TCP RTT histogram and retransmit counter.
const TCP_BPFTRACE: &str = "tracepoint:tcp:tcp_probe { @srtt = hist(args->srtt); } \
    tracepoint:tcp:tcp_retransmit_skb { @retransmits = count(); }";

/// Program statistics just before and just after `workload`.
fn around(
    workload: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(
    std::collections::BTreeMap<u64, programs::ProgStats>,
    std::collections::BTreeMap<u64, programs::ProgStats>,
)> {
    let before = programs::snapshot()?;
    workload()?;
    Ok((before, programs::snapshot()?))
}

/// Starts a tool for a slowdown measurement.
type Starter = Box<dyn Fn() -> anyhow::Result<Holder>>;

fn hostscope_starter() -> Starter {
    Box::new(|| Ok(daemon::start()?.holder))
}

fn peer_starter(program: &'static str, args: &'static [&'static str]) -> Starter {
    Box::new(move || spawn(program, args))
}

/// Throughput of the workloads with nothing attached, with hostscope, and
/// with each peer, as the median of several runs.
fn slowdown(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let pipe = || workloads::sched_pipe(plan.pipe_loops);
    let tools = [
        (
            "hostscope (all collectors)",
            hostscope_starter(),
            Target::SlowerBy(0.97),
        ),
        (
            "libbpf-tools runqlat",
            peer_starter("runqlat", &["3600"]),
            Target::None,
        ),
        (
            "bpftrace runqlat",
            peer_starter("bpftrace", &["-e", RUNQLAT_BPFTRACE]),
            Target::None,
        ),
    ];
    compare_throughput(
        report,
        "perf bench sched pipe ops/s",
        plan.pipe_reps,
        pipe,
        tools,
    )?;

    let device = workloads::LoopDevice::create(256)?;
    let fio = || workloads::fio_randread(&device.path, plan.fio_seconds);
    let tools = [
        (
            "hostscope (all collectors)",
            hostscope_starter(),
            Target::None,
        ),
        (
            "libbpf-tools biolatency",
            peer_starter("biolatency", &["3600"]),
            Target::None,
        ),
    ];
    compare_throughput(report, "fio 4k direct read IOPS", plan.fio_reps, fio, tools)
}

/// Runs `workload` `reps` times bare, then with each tool attached, each
/// tool's row judged by its target.
fn compare_throughput<const N: usize>(
    report: &mut Report,
    metric: &str,
    reps: usize,
    workload: impl Fn() -> anyhow::Result<f64>,
    tools: [(&str, Starter, Target); N],
) -> anyhow::Result<()> {
    let bare = repeat(reps, &workload)?;
    for (label, start, target) in tools {
        let _tool = Attached::start(label, 0, start)?;
        let with = repeat(reps, &workload)?;
        report.push(Row::slowdown(
            "workload slowdown",
            &format!("{metric}, {label}"),
            &with,
            &bare,
            target,
        ));
    }
    Ok(())
}

fn repeat(reps: usize, run: impl Fn() -> anyhow::Result<f64>) -> anyhow::Result<Vec<f64>> {
    (0..reps).map(|_| run()).collect()
}

/// Start-up time, memory, CPU when idle and per scrape, scrape latency.
fn daemon_costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let mut ready = Vec::new();
    for _ in 0..3 {
        ready.push(daemon::start()?.ready_after.as_secs_f64() * 1e3);
    }
    ready.sort_by(f64::total_cmp);
    report.push(Row::value(
        "daemon",
        "start to first scrape with all probes attached, ms (median of 3)",
        ready[1],
        Target::below(300.0, " ms"),
    ));

    let daemon = daemon::start()?;
    let agent = daemon::agent();
    let cpu_start = daemon::cpu_ns(daemon.pid)?;
    std::thread::sleep(plan.idle_window);
    let cpu_idle = daemon::cpu_ns(daemon.pid)? - cpu_start;
    let scrapes = plan.scrape_window.as_secs();
    let cpu_before_scrapes = daemon::cpu_ns(daemon.pid)?;
    for _ in 0..scrapes {
        agent
            .get(format!("{}/metrics", daemon.url))
            .call()
            .context("scraping")?;
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu_scraping = daemon::cpu_ns(daemon.pid)? - cpu_before_scrapes;
    let idle_per_second = cpu_idle as f64 / plan.idle_window.as_secs_f64();
    let per_scrape =
        (cpu_scraping as f64 - idle_per_second * scrapes as f64).max(0.0) / scrapes as f64;
    let at_15s = (idle_per_second + per_scrape / 15.0) / 1e9 * 100.0;
    report.push(Row::value(
        "daemon",
        "CPU per scrape, ms",
        per_scrape / 1e6,
        Target::None,
    ));
    report.push(Row::value(
        "daemon",
        "CPU when scraped every 15 s, % of one core",
        at_15s,
        Target::below(0.2, "%"),
    ));
    let (rss, peak) = daemon::memory_kib(daemon.pid)?;
    report.push(Row::value(
        "daemon",
        "resident memory after scraping, MiB",
        rss as f64 / 1024.0,
        Target::below(25.0, " MiB"),
    ));
    let (p50, p99) = daemon::scrape_latency(&daemon.url, 50, plan.wrk_seconds)?;
    report.push(Row::value(
        "daemon",
        "/metrics p50 latency, 50 clients (wrk -t1, gzip), ms",
        p50,
        Target::None,
    ));
    report.push(Row::value(
        "daemon",
        "/metrics p99 latency, 50 clients (wrk -t1, gzip), ms",
        p99,
        Target::below(2.0, " ms"),
    ));
    let (_, peak_after) = daemon::memory_kib(daemon.pid)?;
    report.push(Row::value(
        "daemon",
        "peak resident memory under 50 clients, MiB",
        peak.max(peak_after) as f64 / 1024.0,
        Target::None,
    ));
    Ok(())
}

/// A 10 s, 99 Hz system-wide flame graph while a few hundred processes (of
/// three different programs, niced so that the daemon is not starved) keep
/// the CPUs busy: how long after the capture ends the SVG arrives, and the
/// daemon's peak resident memory meanwhile.
fn profiling(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    profile_busy_host(report, plan, false)?;
    profile_busy_host(report, plan, true)
}

/// With `own_session`, the busy processes run in a session of their own
/// (`setsid`), so that the scheduler's autogroups weigh them as one group
/// against the daemon, as another service's processes would be on a
/// systemd or Kubernetes host; without, they share the daemon's group and
/// 300 nice-19 processes outweigh it about four to one.
fn profile_busy_host(report: &mut Report, plan: &Plan, own_session: bool) -> anyhow::Result<()> {
    let daemon = daemon::start()?;
    let programs: [(&str, &[&str]); 3] = [
        ("sh", &["-c", "while :; do :; done"]),
        ("perl", &["-e", "1 while 1"]),
        ("python3", &["-c", "while True: pass"]),
    ];
    let mut busy = Vec::new();
    let mut session = None;
    if own_session {
        // One shell in a new session starts them all, so that they share
        // one autogroup (a session each would weigh 300 to 1 against the
        // daemon); the whole session is killed at the end.
        let mut script = String::new();
        for i in 0..plan.busy_processes {
            let (program, args) = programs[i % programs.len()];
            script.push_str(&format!(
                "nice -n 19 {program} {} '{}' &\n",
                args[0], args[1]
            ));
        }
        script.push_str("wait\n");
        let mut command = Command::new("sh");
        command
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: setsid(2) only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        session = Some(Session(
            command.spawn().context("starting the busy processes")?,
        ));
    } else {
        for i in 0..plan.busy_processes {
            let (program, args) = programs[i % programs.len()];
            busy.push(spawn("nice", &[&["-n", "19", program], args].concat())?);
        }
    }
    std::thread::sleep(Duration::from_secs(1));

    let pid = daemon.pid;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((rss, _)) = daemon::memory_kib(pid) {
                    peak = peak.max(rss);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let started = std::time::Instant::now();
    let mut response = agent
        .get(format!(
            "{}/flamegraph.svg?seconds=10&frequency=99",
            daemon.url
        ))
        .call()
        .context("requesting a flame graph")?;
    let svg = response
        .body_mut()
        .read_to_vec()
        .context("reading the flame graph")?;
    let after_capture = started.elapsed().saturating_sub(Duration::from_secs(10));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("memory watcher panicked"))?;
    drop(busy);
    drop(session);

    let ms = after_capture.as_secs_f64() * 1e3;
    let metric = format!(
        "10 s, 99 Hz capture end to served SVG ({} busy processes {}, {} KiB SVG), ms",
        plan.busy_processes,
        if own_session {
            "in a session of their own"
        } else {
            "in the daemon's scheduling group"
        },
        svg.len() / 1024
    );
    report.push(Row::value(
        "profiling",
        &metric,
        ms,
        Target::below(300.0, " ms"),
    ));
    report.push(Row::value(
        "profiling",
        "peak resident memory during capture and symbolization, MiB",
        peak as f64 / 1024.0,
        Target::at_most(100.0, " MiB"),
    ));
    Ok(())
}

/// A session of processes, all killed on drop.
struct Session(std::process::Child);

impl Drop for Session {
    fn drop(&mut self) {
        let Ok(pid) = libc::pid_t::try_from(self.0.id()) else {
            return;
        };
        // SAFETY: kill(2) on the process group this session leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Off-CPU profiling's kernel cost per context switch while a capture
/// runs: bpf_stats run time over run count of the off-CPU program during
/// `perf bench sched pipe`. Host-wide, every switch runs it and every
/// blocking one (each of this workload's) walks two stacks, which is what
/// libbpf-tools offcputime does too; limited to one other process (the
/// daemon), the rest of the host pays only the check.
fn offcpu_cost(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let _stats = BpfStats::enable()?;
    // Each capture must outlast the workload: time one bare run.
    let started = std::time::Instant::now();
    workloads::sched_pipe(plan.pipe_loops)?;
    let seconds = (started.elapsed().as_secs_f64() * 2.0).ceil() as u64 + 3;
    let mut daemon_at = None;
    let hostscope = Attached::start("hostscope", 0, || {
        let daemon = daemon::start()?;
        daemon_at = Some((daemon.url.clone(), daemon.pid));
        Ok(daemon.holder)
    })?;
    let (url, daemon_pid) = daemon_at.context("the daemon did not start")?;
    let program = hostscope_common::profile::OFFCPU_PROGRAM;
    let during_capture = |query: String| -> anyhow::Result<Option<f64>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(seconds + 60)))
            .build()
            .into();
        let request = format!("{url}/stacks?kind=offcpu&seconds={seconds}{query}");
        let capture = std::thread::spawn(move || agent.get(request).call().map(drop));
        // Attaching takes milliseconds; the capture then runs `seconds`.
        std::thread::sleep(Duration::from_secs(1));
        let measured = around(|| workloads::sched_pipe(plan.pipe_loops).map(drop));
        capture
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?
            .context("requesting an off-CPU profile")?;
        let (before, after) = measured?;
        let (time, count) = hostscope.accrued(&before, &after, |n| is_program(n, program));
        Ok((count > 0).then(|| time as f64 / count as f64))
    };
    let host_wide = during_capture(String::new())?;
    let other_pid = during_capture(format!("&pid={daemon_pid}"))?;
    drop(hostscope);

    let offcputime = Attached::start("libbpf-tools offcputime", 0, || {
        spawn("offcputime", &[&seconds.to_string()])
    })?;
    let (before, after) = around(|| workloads::sched_pipe(plan.pipe_loops).map(drop))?;
    let (time, count) = offcputime.accrued(&before, &after, |_| true);
    let peer = (count > 0).then(|| time as f64 / count as f64);
    report.push(Row::ratio(
        "profiling",
        "off-CPU capture, host-wide, ns per context switch (perf bench sched pipe)",
        host_wide,
        Peer::new(&offcputime.label, peer),
        Target::RatioAtMost(1.0),
    ));
    report.push(Row::value(
        "profiling",
        "off-CPU capture of one other process, ns per context switch of the rest",
        other_pid.unwrap_or(f64::NAN),
        Target::None,
    ));
    Ok(())
}
