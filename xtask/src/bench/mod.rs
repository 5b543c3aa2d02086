//! `cargo xtask bench`: hostscope measured side by side with its peers
//! (libbpf-tools, bpftrace) in one run, reported as ratios in BENCHMARKS.md.
//! Targets are goals, not assertions: a missed one is marked in the table.
//!
//! Each section is a module with a `costs` function that pushes its rows;
//! this module holds the run lengths ([`Plan`]), runs the sections and
//! keeps what several of them share.

pub(crate) mod daemon;
mod daemon_costs;
mod diagnostics;
mod exposition;
mod growth;
mod offcpu;
mod per_cgroup;
mod per_event;
mod profiling;
mod programs;
mod realistic;
mod report;
mod sampler;
mod slowdown;
pub(crate) mod workloads;

use std::{process::Command, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::benchmarks_md;

use self::{
    programs::{BpfStats, Holder},
    report::{Report, Row},
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
    /// Rounds of the realistic workloads, each tool taking one turn in each.
    realistic_rounds: usize,
    /// `perf bench sched messaging -l`.
    messaging_loops: u64,
    /// Objects compiled by one run of the build workload.
    build_objects: usize,
    /// Block devices added, in steps, for the cost-growth rows.
    growth_devices: Vec<usize>,
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
                realistic_rounds: 2,
                messaging_loops: 10,
                build_objects: 4,
                growth_devices: vec![0, 4],
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
                realistic_rounds: 5,
                messaging_loops: 30,
                build_objects: 12,
                growth_devices: vec![0, 8, 32],
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
        per_event::costs(r, &plan)
    });
    section(&mut report, only, "kernel diagnostics", |r| {
        let _stats = BpfStats::enable()?;
        diagnostics::costs(r, &plan)
    });
    section(&mut report, only, "workload slowdown", |r| {
        slowdown::costs(r, &plan)
    });
    section(&mut report, only, "realistic slowdown", |r| {
        realistic::costs(r, &plan)
    });
    section(&mut report, only, "daemon", |r| {
        daemon_costs::costs(r, &plan)
    });
    section(&mut report, only, "exposition", exposition::costs);
    section(&mut report, only, "cost growth", |r| {
        growth::costs(r, &plan)
    });
    section(&mut report, only, "per cgroup", |r| {
        per_cgroup::costs(r, &plan)
    });
    section(&mut report, only, "profiling", |r| {
        profiling::costs(r, &plan)
    });
    section(&mut report, only, "CPU sampler", sampler::costs);
    section(&mut report, only, "off-CPU profiling", |r| {
        offcpu::costs(r, &plan)
    });

    let mut markdown = report.markdown();
    println_table(&markdown);
    let path = crate::workspace_root().join(&args.output);
    // The soak's section is written by `cargo xtask soak --record`; keep it.
    let previous = std::fs::read_to_string(&path).unwrap_or_default();
    if let Some(soak) = benchmarks_md::section(&previous, benchmarks_md::SOAK_HEADING) {
        markdown = benchmarks_md::with_section(&markdown, benchmarks_md::SOAK_HEADING, soak);
    }
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

fn spawn(program: &str, args: &[&str]) -> anyhow::Result<Holder> {
    let child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    Ok(Holder::Process(child))
}

/// Starts a tool for a slowdown measurement.
type Starter = Box<dyn Fn() -> anyhow::Result<Holder>>;

fn hostscope_starter() -> Starter {
    Box::new(|| Ok(daemon::start()?.holder))
}

fn peer_starter(program: &'static str, args: &'static [&'static str]) -> Starter {
    Box::new(move || spawn(program, args))
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

/// Whether `name`, as the kernel keeps it, is program `function`: the
/// kernel keeps the first 15 bytes of longer names.
fn is_program(name: &str, function: &str) -> bool {
    name == function || name == hostscope_common::kernel_program_name(function)
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
