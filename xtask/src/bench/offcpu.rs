//! Off-CPU profiling's kernel cost per context switch.

use std::time::Duration;

use anyhow::Context as _;

use super::{
    BpfStats, Plan, around, daemon, is_program,
    programs::Attached,
    report::{Peer, Report, Row, Target},
    spawn, workloads,
};

const SECTION: &str = "profiling";

/// Off-CPU profiling's kernel cost per context switch while a capture
/// runs: bpf_stats run time over run count of the off-CPU program during
/// `perf bench sched pipe`. Host-wide, every switch runs it and every
/// blocking one (each of this workload's) walks two stacks, which is what
/// libbpf-tools offcputime does too; limited to one other process (the
/// daemon), the rest of the host pays only the check.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
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
        SECTION,
        "off-CPU capture, host-wide, ns per context switch (perf bench sched pipe)",
        host_wide,
        Peer::new(&offcputime.label, peer),
        Target::RatioAtMost(1.0),
    ));
    report.push(Row::value(
        SECTION,
        "off-CPU capture of one other process, ns per context switch of the rest",
        other_pid.unwrap_or(f64::NAN),
        Target::None,
    ));
    Ok(())
}
