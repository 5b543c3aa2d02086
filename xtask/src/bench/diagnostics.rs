//! What the kernel diagnostics (aya-log, `--log-level debug`) cost: the
//! default daemon (diagnostics compiled in, turned off at load) against one
//! with them on (none firing on these workloads), both attached at once.
//! A program that runs first on a tracepoint pays for cache misses that
//! the next one finds warm, so the two swap places every round and each
//! figure is the median of its rounds.

use super::{
    Plan, around, daemon,
    programs::{self, Attached},
    programs_of,
    report::{Peer, Report, Row, Target, median},
    workloads,
};

/// Rounds, half with each daemon attached first.
const ROUNDS: usize = 4;

const SECTION: &str = "kernel diagnostics";

/// The diagnostics rows: scheduler and block ns/event, on against off.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let device = workloads::loop_device(256)?;
    let sched = programs_of("sched");
    let block = programs_of("block");
    // Per round: (off, on) ns/event of the scheduler and block programs.
    let mut sched_costs = (Vec::new(), Vec::new());
    let mut block_costs = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let off = || Attached::start("off", 0, || Ok(daemon::start()?.holder));
        let on = || {
            Attached::start("on", 0, || {
                Ok(daemon::start_with(&["--log-level", "debug"])?.holder)
            })
        };
        let (off, on) = programs::start_in_turn(round, off, on)?;
        let (before, after) =
            around(|| workloads::sched_pipe(plan.pipe_loops.div_ceil(2)).map(drop))?;
        let per_event = |tool: &Attached, filter: &dyn Fn(&str) -> bool| {
            let (time, count) = tool.accrued(&before, &after, filter);
            (count > 0).then(|| time as f64 / count as f64)
        };
        sched_costs.0.extend(per_event(&off, &sched));
        sched_costs.1.extend(per_event(&on, &sched));
        let (before, after) = around(|| {
            workloads::fio_randread(&device.path(), plan.fio_seconds.div_ceil(2)).map(drop)
        })?;
        let per_event = |tool: &Attached, filter: &dyn Fn(&str) -> bool| {
            let (time, count) = tool.accrued(&before, &after, filter);
            (count > 0).then(|| time as f64 / count as f64)
        };
        block_costs.0.extend(per_event(&off, &block));
        block_costs.1.extend(per_event(&on, &block));
    }
    for (what, (off, on)) in [
        ("scheduler probes", sched_costs),
        ("block probes", block_costs),
    ] {
        report.push(Row::ratio(
            SECTION,
            &format!("{what} with diagnostics on (none firing), ns/event, median of {ROUNDS}"),
            (!on.is_empty()).then(|| median(&on)),
            Peer::new(
                "diagnostics off (default)",
                (!off.is_empty()).then(|| median(&off)),
            ),
            Target::None,
        ));
    }
    Ok(())
}
