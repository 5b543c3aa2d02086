//! Slowdown of workloads closer to a real host's than a pipe ping-pong:
//! `perf bench sched messaging` (hundreds of processes waking each other
//! over sockets) and a parallel build (make running the C compiler), bare,
//! under the empty floor programs, under hostscope and under the runqlats.
//!
//! Tools take turns within each round (every other round in reverse), so
//! that a drift in the machine's speed, which other people's work on a
//! shared host causes, spreads over all of them instead of landing on
//! whichever ran last.
//!
//! A tool's slowdown of these workloads is a few percent, less than bare
//! runs vary among themselves (10-20% here), so throughput alone cannot
//! rank the tools. A ratio of slowdowns is judged only when the peer's
//! slowdown is larger than that spread; otherwise the row says "within
//! noise". The direct cost comes from a last turn per tool with the
//! kernel's program statistics on (off for the throughput turns, where
//! they would add their own cost): the time the tool's programs ran, as a
//! share of the CPU time the workload had. That share is what the tool
//! takes from the workload directly, measured to the nanosecond.

use std::time::{Duration, Instant};

use super::{
    Plan, RUNQLAT_BPFTRACE, Starter, around, hostscope_starter, peer_starter,
    programs::{self, Attached, BpfStats},
    report::{Peer, Report, Row, Target, extremes, median},
    workloads,
};

const SECTION: &str = "realistic slowdown";

/// Quiet time before each turn's runs.
const SETTLE: Duration = Duration::from_millis(500);

const HOSTSCOPE: &str = "hostscope (all collectors)";
const FLOOR: &str = "empty tp_btf programs";
const RUNQLAT: &str = "libbpf-tools runqlat";
const RUNQLAT_BT: &str = "bpftrace runqlat";

/// Issue 13's goals: hostscope loses at most half what a runqlat does...
const AGAINST_RUNQLAT: Target = Target::RatioAtMost(0.5);
/// ...and at most half as much again as empty programs on its tracepoints.
const AGAINST_FLOOR: Target = Target::RatioAtMost(1.5);

/// The tools hostscope is compared with, and the target of each ratio.
const COMPARED: [(&str, Target); 3] = [
    (RUNQLAT, AGAINST_RUNQLAT),
    (RUNQLAT_BT, AGAINST_RUNQLAT),
    (FLOOR, AGAINST_FLOOR),
];

/// One way of running the workloads: bare, or with a tool attached.
struct Tool {
    label: &'static str,
    /// Programs to wait for (0: until their number settles); `None` is bare.
    start: Option<(usize, Starter)>,
}

/// One workload: what the rows call it, and one timed run of it (higher
/// is faster).
type Workload<'a> = (String, Box<dyn Fn() -> anyhow::Result<f64> + 'a>);

/// Every row of the section.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let build = workloads::Build::prepare(plan.build_objects)?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workloads: [Workload<'_>; 2] = [
        (
            format!(
                "perf bench sched messaging -l {} runs/s",
                plan.messaging_loops
            ),
            Box::new(|| workloads::sched_messaging(plan.messaging_loops)),
        ),
        (
            format!(
                "make -j{jobs}, {} compiles of one C file, compiles/s",
                plan.build_objects
            ),
            Box::new(|| build.run()),
        ),
    ];
    let tools = [
        Tool {
            label: "bare",
            start: None,
        },
        Tool {
            label: FLOOR,
            start: Some((
                programs::FLOOR_PROGRAMS.len(),
                Box::new(|| programs::load_floor(&programs::FLOOR_PROGRAMS)),
            )),
        },
        Tool {
            label: HOSTSCOPE,
            // The daemon has attached everything once it serves, which is
            // when the starter returns: no need to wait for the count to
            // settle.
            start: Some((1, hostscope_starter())),
        },
        Tool {
            label: RUNQLAT,
            start: Some((3, peer_starter("runqlat", &["3600"]))),
        },
        Tool {
            label: RUNQLAT_BT,
            start: Some((0, peer_starter("bpftrace", &["-e", RUNQLAT_BPFTRACE]))),
        },
    ];

    // The first runs find caches cold (the compiler's files, say), which
    // whoever goes first would pay for.
    for (_, run) in &workloads {
        run()?;
    }
    // runs[tool][workload]: one figure per round.
    let mut runs = vec![vec![Vec::new(); workloads.len()]; tools.len()];
    for round in 0..plan.realistic_rounds {
        let mut order: Vec<usize> = (0..tools.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for t in order {
            let tool = &tools[t];
            let _attached = match &tool.start {
                Some((expect, start)) => Some(Attached::start(tool.label, *expect, start)?),
                None => None,
            };
            // Every turn starts after the same pause, bare ones too: the
            // previous tool's teardown (its programs freed by deferred
            // work) then lands on no one's runs.
            std::thread::sleep(SETTLE);
            for (w, (_, run)) in workloads.iter().enumerate() {
                runs[t][w].push(run()?);
            }
        }
    }

    // One more turn per tool, statistics on: the programs' share of CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut shares = vec![vec![f64::NAN; workloads.len()]; tools.len()];
    {
        let _stats = BpfStats::enable()?;
        for (t, tool) in tools.iter().enumerate() {
            let Some((expect, start)) = &tool.start else {
                continue;
            };
            let attached = Attached::start(tool.label, *expect, start)?;
            std::thread::sleep(SETTLE);
            for (w, (_, run)) in workloads.iter().enumerate() {
                let began = Instant::now();
                let (before, after) = around(|| run().map(drop))?;
                let cpu_ns = began.elapsed().as_nanos() as f64 * cpus;
                let (program_ns, _) = attached.accrued(&before, &after, |_| true);
                shares[t][w] = program_ns as f64 / cpu_ns;
            }
        }
    }

    let bare_index = 0;
    let index = |label: &str| tools.iter().position(|t| t.label == label);
    for (w, (name, _)) in workloads.iter().enumerate() {
        let bare = &runs[bare_index][w];
        for (t, tool) in tools.iter().enumerate().skip(1) {
            report.push(Row::slowdown(
                SECTION,
                &format!("{name}, {}", tool.label),
                &runs[t][w],
                bare,
                Target::None,
            ));
        }
        // Half the bare runs' spread, as a fraction of their median: a
        // slowdown below it is not told apart from bare.
        let noise = {
            let (lo, hi) = extremes(bare);
            (hi - lo) / 2.0 / median(bare)
        };
        let slowdown = |label: &str| index(label).map(|t| 1.0 - median(&runs[t][w]) / median(bare));
        let ours = slowdown(HOSTSCOPE).unwrap_or(f64::NAN);
        for (peer, target) in COMPARED {
            report.push(Row::slowdowns(
                SECTION,
                &format!("{name}: slowdown ratio, hostscope / {peer}"),
                ours,
                Peer::new(peer, slowdown(peer)),
                noise,
                target,
            ));
        }
        let share = |label: &str| index(label).map(|t| shares[t][w]);
        for (peer, target) in COMPARED {
            report.push(Row::shares(
                SECTION,
                &format!(
                    "{name}: CPU in the tool's programs, % of the workload's, hostscope / {peer}"
                ),
                share(HOSTSCOPE).unwrap_or(f64::NAN),
                Peer::new(peer, share(peer)),
                target,
            ));
        }
    }
    Ok(())
}
