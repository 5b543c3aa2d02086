//! Per-event cost: every tool attached at once to the same events, each
//! one's kernel run time over its run count (`bpf_stats`) per workload.

use std::collections::BTreeMap;

use super::{
    Plan, RUNQLAT_BPFTRACE, around, daemon, is_program,
    programs::{self, Attached},
    programs_of,
    report::{Peer, Report, Row, Target, median},
    spawn, workloads,
};

const SECTION: &str = "per-event cost";

/// The kernel's program statistics before and after one workload.
struct Window {
    before: BTreeMap<u64, programs::ProgStats>,
    after: BTreeMap<u64, programs::ProgStats>,
}

/// Which of a tool's programs a figure covers, by kernel name.
type Filter<'a> = &'a dyn Fn(&str) -> bool;

impl Window {
    /// Runs `work` between two snapshots.
    fn of(work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Window> {
        let (before, after) = around(work)?;
        Ok(Window { before, after })
    }

    /// How many times `tool`'s programs that `filter` names ran.
    fn runs(&self, tool: &Attached, filter: Filter<'_>) -> u64 {
        tool.accrued(&self.before, &self.after, filter).1
    }

    /// `tool`'s run time in the programs `filter` names, per run of them.
    fn per_run(&self, tool: &Attached, filter: Filter<'_>) -> Option<f64> {
        let (time, runs) = tool.accrued(&self.before, &self.after, filter);
        (runs > 0).then(|| time as f64 / runs as f64)
    }

    /// `tool`'s run time in the programs `filter` names, per one of
    /// `events` (which another tool's program counted).
    fn per(&self, tool: &Attached, filter: Filter<'_>, events: u64) -> Option<f64> {
        let (time, _) = tool.accrued(&self.before, &self.after, filter);
        (events > 0).then(|| time as f64 / events as f64)
    }
}

/// Every tool attached at once, then each workload in turn; per-event cost
/// is each tool's run time over its run count on that workload's events.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
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
    let floor = Attached::start(
        "empty tp_btf program",
        programs::FLOOR_PROGRAMS.len(),
        || programs::load_floor(&programs::FLOOR_PROGRAMS),
    )?;

    let window = Window::of(|| workloads::sched_pipe(plan.pipe_loops).map(drop))?;
    // Per context switch: runqlat also runs on every wakeup, hostscope
    // only on the switch, so ns/event alone would compare different event
    // counts. Every tool sees the same switches: hostscope's count them.
    let switch = |n: &str| is_program(n, "sched_switch");
    let switches = window.runs(&hostscope, &switch);
    let per_switch = |tool: &Attached, filter: Filter<'_>| window.per(tool, filter, switches);
    let sched = programs_of("sched");
    let ours = per_switch(&hostscope, &sched);
    let metric =
        "scheduler probes, ns per context switch (all of a tool's programs, perf bench sched pipe)";
    report.push(Row::ratio(
        SECTION,
        metric,
        ours,
        Peer::new(&runqlat.label, per_switch(&runqlat, &|_| true)),
        Target::RatioAtMost(0.5),
    ));
    report.push(Row::ratio(
        SECTION,
        "scheduler probes with --by-cgroup, ns per context switch",
        per_switch(&by_cgroup, &sched),
        Peer::new(&runqlat.label, per_switch(&runqlat, &|_| true)),
        Target::RatioAtMost(0.6),
    ));
    report.push(Row::ratio(
        SECTION,
        metric,
        ours,
        Peer::new(&runqlat_bt.label, per_switch(&runqlat_bt, &|_| true)),
        Target::None,
    ));
    // The floor: an empty program on the one tracepoint hostscope uses.
    let switch_only = |n: &str| is_program(n, "floor_sched_switch");
    let floor_per_switch = per_switch(&floor, &switch_only);
    report.push(Row::ratio(
        SECTION,
        metric,
        ours,
        Peer::new(&floor.label, floor_per_switch),
        Target::None,
    ));
    for (peer, filter) in [(&runqlat, &switch as Filter<'_>), (&floor, &switch_only)] {
        report.push(Row::ratio(
            SECTION,
            "  the sched_switch program alone, ns/event",
            window.per_run(&hostscope, &switch),
            Peer::new(&peer.label, window.per_run(peer, filter)),
            Target::None,
        ));
    }

    let device = workloads::loop_device(256)?;
    let window =
        Window::of(|| workloads::fio_randread(&device.path(), plan.fio_seconds).map(drop))?;
    let block = programs_of("block");
    let ours = window.per_run(&hostscope, &block);
    let metric = "block probes, ns/event (fio 4k direct reads, loop device)";
    let peer = window.per_run(&biolatency, &|_| true);
    report.push(Row::ratio(
        SECTION,
        metric,
        ours,
        Peer::new(&biolatency.label, peer),
        Target::None,
    ));
    let floor_cost = window.per_run(&floor, &|n| n.starts_with("floor_block"));
    report.push(Row::ratio(
        SECTION,
        metric,
        ours,
        Peer::new(&floor.label, floor_cost),
        Target::None,
    ));
    // Per I/O: the tools attach different numbers of programs per request
    // (biolatency also runs on block_rq_insert), so ns/event alone flatters
    // the one with more, cheaper events. Completions are the I/O count.
    let ios = window.runs(&hostscope, &|n| is_program(n, "block_rq_complete"));
    let metric = "block probes, ns per I/O (all of a tool's programs)";
    let peer = window.per(&biolatency, &|_| true, ios);
    report.push(Row::ratio(
        SECTION,
        metric,
        window.per(&hostscope, &block, ios),
        Peer::new(&biolatency.label, peer),
        Target::None,
    ));

    drop(device);

    let window = Window::of(|| workloads::tcp_ping_pong(plan.tcp_round_trips, 1_000).map(drop))?;
    let metric = "TCP probes, ns/event (loopback ping-pong + connects)";
    report.push(Row::ratio(
        SECTION,
        metric,
        window.per_run(&hostscope, &programs_of("tcp")),
        Peer::new(&tcp_bt.label, window.per_run(&tcp_bt, &|_| true)),
        Target::None,
    ));
    // Detach everything before the block comparison of two tools alone.
    drop((
        hostscope, by_cgroup, runqlat, runqlat_bt, biolatency, tcp_bt, floor,
    ));
    alone_with_one_peer(report, plan)
}

/// bpftrace's equivalent of our TCP RTT histogram and retransmit counter.
const TCP_BPFTRACE: &str = "tracepoint:tcp:tcp_probe { @srtt = hist(args->srtt); } \
    tracepoint:tcp:tcp_retransmit_skb { @retransmits = count(); }";

/// Rounds of each comparison alone with one peer.
const ALONE_ROUNDS: usize = 4;

/// hostscope (every collector: only the programs `ours` names run on
/// these events) alone with one peer on the same events, each attached in turn
/// first and second for [`ALONE_ROUNDS`] rounds (the program that runs
/// first on a tracepoint pays for bringing the event's data into the
/// cache, which moved the block ratio between 0.75x and 1.07x in single
/// runs): each tool's run time per event (the run count of hostscope's
/// program `events`), median of the rounds, as `(hostscope, peer)`.
fn alone_in_turn(
    peer: (&str, usize, &dyn Fn() -> anyhow::Result<programs::Holder>),
    ours: Filter<'_>,
    events: &str,
    work: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let (peer_label, peer_programs, start_peer) = peer;
    let mut ours_ns = Vec::new();
    let mut peers_ns = Vec::new();
    for round in 0..ALONE_ROUNDS {
        let hostscope = || Attached::start("hostscope", 0, || Ok(daemon::start()?.holder));
        let peer = || Attached::start(peer_label, peer_programs, start_peer);
        let (hostscope, peer) = programs::start_in_turn(round, hostscope, peer)?;
        let window = Window::of(work)?;
        let count = window.runs(&hostscope, &|n| is_program(n, events));
        if count == 0 {
            anyhow::bail!("no {events} event while {peer_label} was attached");
        }
        ours_ns.extend(window.per(&hostscope, ours, count));
        peers_ns.extend(window.per(&peer, &|_| true, count));
    }
    Ok((median(&ours_ns), median(&peers_ns)))
}

/// The block programs alone with biolatency, and the scheduler program
/// alone with the empty program on its tracepoint (the figure the 100 ns
/// target judges: with every tool attached at once, seven programs share
/// `sched_switch` and evict each other's cache lines).
fn alone_with_one_peer(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let device = workloads::loop_device(256)?;
    let biolatency = || spawn("biolatency", &["3600"]);
    let (ours, peer) = alone_in_turn(
        ("libbpf-tools biolatency", 0, &biolatency),
        &programs_of("block"),
        "block_rq_complete",
        &|| workloads::fio_randread(&device.path(), plan.fio_seconds.div_ceil(2)).map(drop),
    )?;
    report.push(Row::ratio(
        SECTION,
        &format!(
            "block probes, ns per I/O, alone with the peer, attach order alternating \
             (median of {ALONE_ROUNDS})"
        ),
        Some(ours),
        Peer::new("libbpf-tools biolatency", Some(peer)),
        Target::RatioAtMost(0.7),
    ));
    drop(device);

    const FLOOR_SWITCH: [(&str, &str); 1] = [("floor_sched_switch", "sched_switch")];
    let floor = || programs::load_floor(&FLOOR_SWITCH);
    let (ours, peer) = alone_in_turn(
        ("empty tp_btf program", FLOOR_SWITCH.len(), &floor),
        &programs_of("sched"),
        "sched_switch",
        &|| workloads::sched_pipe(plan.pipe_loops).map(drop),
    )?;
    report.push(Row::ratio(
        SECTION,
        &format!(
            "scheduler probes, ns per context switch, alone with the floor, attach order \
             alternating (median of {ALONE_ROUNDS})"
        ),
        Some(ours),
        Peer::new("empty tp_btf program", Some(peer)),
        Target::at_most(100.0, " ns"),
    ));
    Ok(())
}
