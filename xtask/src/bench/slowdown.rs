//! Workload slowdown: throughput bare and with each tool attached.

use super::{
    Plan, RUNQLAT_BPFTRACE, Starter, hostscope_starter, peer_starter,
    programs::Attached,
    report::{Report, Row, Target},
    workloads,
};

/// Throughput of the workloads with nothing attached, with hostscope, and
/// with each peer, as the median of several runs.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
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

    let device = workloads::loop_device(256)?;
    let fio = || workloads::fio_randread(&device.path(), plan.fio_seconds);
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
