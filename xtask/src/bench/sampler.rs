//! The CPU sampler's cost per sample, for the two ways it gets a user
//! stack: walked by frame pointers in the kernel (a Go program: Go keeps
//! them), and copied for the daemon to unwind from `.eh_frame` (C built
//! `-O2 -fomit-frame-pointer`). Against bpftrace's `profile` probe taking
//! `ustack` and `kstack` (a frame-pointer walk, garbage on the C program)
//! on the same spinners; plus the daemon's and its sandbox's CPU time per
//! copied sample, which the kernel figures do not show.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    BpfStats, around, daemon, is_program,
    programs::{Attached, Holder},
    report::{Peer, Report, Row, Target},
};

const SECTION: &str = "profiling";
const SECONDS: u64 = 5;

const GO_SPIN: &str = "package main\n\nvar sink uint64\n\n//go:noinline\nfunc spinLeaf(n uint64) uint64 {\n\tfor i := uint64(0); i < n; i++ {\n\t\tsink += i\n\t}\n\treturn sink\n}\n\nfunc main() {\n\tfor {\n\t\tspinLeaf(100000000)\n\t}\n}\n";

const C_SPIN: &str = "#include <stdint.h>\nvolatile uint64_t sink;\n__attribute__((noinline)) uint64_t leaf(uint64_t n) { uint64_t a = 0; for (uint64_t i = 0; i < n; i++) { a += i * sink; sink = a; } return a; }\n__attribute__((noinline)) uint64_t b(uint64_t n) { uint64_t r = leaf(n); sink += 1; return r + 1; }\n__attribute__((noinline)) uint64_t a(uint64_t n) { uint64_t r = b(n); sink += 2; return r + 2; }\nint main(void) { uint64_t r = 0; for (;;) { r += a(100000000ULL); if (r == 1) break; } return (int)r; }\n";

/// Every row of the section.
pub fn costs(report: &mut Report) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("hostscope-bench-sampler-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let go = build_go(&dir)?;
    let c = build_c(&dir)?;
    let _stats = BpfStats::enable()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut started = None;
    let hostscope = Attached::start("hostscope", 0, || {
        let daemon = daemon::start()?;
        started = Some((daemon.url.clone(), daemon.pid));
        Ok(daemon.holder)
    })?;
    let (url, pid) = started.context("the daemon did not start")?;
    let program = hostscope_common::profile::PROFILE_PROGRAM;
    let mut ours = Vec::new();
    for exe in [&go, &c] {
        let _spinners = Spinners::start(exe, cpus)?;
        let cpu_before = daemon_cpu_ns(pid);
        let mut samples = 0;
        let (before, after) = around(|| {
            samples = capture(&url)?;
            Ok(())
        })?;
        let cpu = daemon_cpu_ns(pid).saturating_sub(cpu_before);
        let (time, count) = hostscope.accrued(&before, &after, |n| is_program(n, program));
        let kernel = (count > 0).then(|| time as f64 / count as f64);
        let daemon_us = (samples > 0).then(|| cpu as f64 / samples as f64 / 1e3);
        ours.push((kernel, daemon_us));
    }
    drop(hostscope);

    let mut peer = Vec::new();
    for exe in [&go, &c] {
        let _spinners = Spinners::start(exe, cpus)?;
        let bpftrace = Attached::start("bpftrace profile", 0, || {
            let child = Command::new("bpftrace")
                .args(["-e", "profile:hz:99 { @[ustack, kstack, pid] = count(); }"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            Ok(Holder::Process(child))
        })?;
        let (before, after) = around(|| {
            std::thread::sleep(Duration::from_secs(SECONDS));
            Ok(())
        })?;
        let (time, count) = bpftrace.accrued(&before, &after, |_| true);
        peer.push((count > 0).then(|| time as f64 / count as f64));
    }
    let _ = std::fs::remove_dir_all(&dir);

    for ((label, (kernel, daemon_us)), peer) in [
        "frame-pointer stacks (Go), walked in the kernel",
        "stacks without frame pointers (C -O2), copied",
    ]
    .into_iter()
    .zip(ours)
    .zip(peer)
    {
        report.push(Row::ratio(
            SECTION,
            &format!("CPU sampler, {label}, kernel ns per sample"),
            kernel,
            Peer::new("bpftrace profile (ustack, kstack)", peer),
            Target::None,
        ));
        report.push(Row::value(
            SECTION,
            &format!("CPU sampler, {label}, daemon and sandbox CPU per sample, us"),
            daemon_us.unwrap_or(f64::NAN),
            Target::None,
        ));
    }
    Ok(())
}

/// A 5 s host-wide capture; the number of samples it counted.
fn capture(url: &str) -> anyhow::Result<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(SECONDS + 60)))
        .build()
        .into();
    let mut response = agent
        .get(format!("{url}/stacks?seconds={SECONDS}"))
        .call()
        .context("requesting a profile")?;
    let body = response.body_mut().read_to_string()?;
    Ok(body
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum())
}

/// CPU time of the daemon and of its children (the symbolizer sandbox).
fn daemon_cpu_ns(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .map(|p| daemon::cpu_ns(p).unwrap_or(0))
        .sum()
}

/// One busy copy of a program per CPU, killed on drop.
struct Spinners(Vec<Child>);

impl Spinners {
    fn start(exe: &Path, n: usize) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        for _ in 0..n {
            children.push(Command::new(exe).spawn().context("starting a spinner")?);
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self(children))
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn build_go(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::write(dir.join("spin.go"), GO_SPIN)?;
    let out = dir.join("gospin");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("spin.go")
        .current_dir(dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GO111MODULE", "off")
        .status()
        .context("running go build (Debian's golang-go)")?;
    if !status.success() {
        bail!("go build failed");
    }
    Ok(out)
}

fn build_c(dir: &Path) -> anyhow::Result<PathBuf> {
    let source = dir.join("spin.c");
    std::fs::write(&source, C_SPIN)?;
    let out = dir.join("cspin");
    let status = Command::new("cc")
        .arg(&source)
        .args(["-O2", "-fomit-frame-pointer", "-o"])
        .arg(&out)
        .status()
        .context("running cc")?;
    if !status.success() {
        bail!("cc failed");
    }
    Ok(out)
}
