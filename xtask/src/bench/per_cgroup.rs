//! What `--by-cgroup` costs besides per-event time: kernel map memory
//! (computed from the map definitions, for hosts this one is not) and the
//! exposition with 100 labelled cgroups.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use hostscope_common::cgroup::map_bytes;

use super::{
    Plan, daemon,
    report::{Report, Row, Target},
    workloads,
};

const SECTION: &str = "per cgroup";

/// Scrapes timed with the 100 cgroups.
const SCRAPES: u32 = 20;

/// Every row of the section.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let here = std::thread::available_parallelism().map_or(1, |n| n.get());
    let here = u32::try_from(here).unwrap_or(u32::MAX);
    for (cgroups, cpus) in [(256, here), (1_000, here), (256, 128), (1_000, 128)] {
        report.push(Row::value(
            SECTION,
            &format!("kernel map memory, {cgroups} cgroups on {cpus} CPUs, MiB (computed)"),
            map_bytes(cgroups, cpus) as f64 / f64::from(1 << 20),
            Target::None,
        ));
    }
    exposition_with_100_cgroups(report, plan)
}

/// 100 cgroups, each with a process that did some block I/O and then
/// sleeps (so that its cgroup stays): the size of /metrics and its latency.
fn exposition_with_100_cgroups(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let daemon = daemon::start_with(&["--by-cgroup"])?;
    let device = workloads::loop_device(16)?;
    let root = hostscope_tests::cgroups::try_cgroup2_root()?;
    let mut groups = Groups::default();
    for i in 0..100 {
        let dir = root.join(format!("hostscope-bench-{}-{i}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        groups.dirs.push(dir.clone());
        let mut child = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "read _ && dd if={} of=/dev/null bs=4k count=4 iflag=direct status=none; \
                     exec sleep 600",
                    device.path()
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting a process for a cgroup")?;
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string())
            .context("moving a process into its cgroup")?;
        child
            .stdin
            .take()
            .context("piped stdin")?
            .write_all(b"\n")
            .context("releasing a process")?;
        groups.children.push(child);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (body, cpu_ms) = daemon::scrape_cpu_ms(&daemon.url, daemon.pid, SCRAPES)?;
    let labelled = body
        .lines()
        .filter(|l| l.contains("cgroup=\"/hostscope-bench-"))
        .count();
    report.push(Row::value(
        SECTION,
        "/metrics with 100 labelled cgroups, KiB (plain text)",
        body.len() as f64 / 1024.0,
        Target::None,
    ));
    report.push(Row::value(
        SECTION,
        "  series of those cgroups (sched and block, coarse buckets)",
        labelled as f64,
        Target::None,
    ));
    report.push(Row::value(
        SECTION,
        &format!("  daemon CPU per scrape with those cgroups, ms (mean of {SCRAPES})"),
        cpu_ms,
        Target::None,
    ));
    let (p50, p99) = daemon::latency(&daemon.url, "/metrics", 50, plan.wrk_seconds)?;
    report.push(Row::value(
        SECTION,
        "/metrics p50 latency with 100 labelled cgroups, 50 clients, ms",
        p50,
        Target::None,
    ));
    report.push(Row::value(
        SECTION,
        "/metrics p99 latency with 100 labelled cgroups, 50 clients, ms",
        p99,
        Target::None,
    ));
    Ok(())
}

/// The benchmark's cgroups and their processes, removed on drop.
#[derive(Default)]
struct Groups {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Groups {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
