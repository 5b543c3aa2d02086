//! Run-queue latency: the time a runnable task waits for a CPU.
//!
//! The kernel already timestamps every wait. When a task is put on a run
//! queue (woken, created, or switched out while still runnable), it stores
//! the run queue's clock in `task->sched_info.last_queued`; when the task
//! is switched in, it adds `rq->clock - last_queued` to the task's
//! `run_delay` (what `/proc/<pid>/schedstat` shows) and clears the stamp.
//! The `sched_switch` tracepoint fires just before that, with the run queue
//! locked and its clock updated, so this program reads the same two values
//! and records the same difference into a per-CPU histogram.
//!
//! So one program on one tracepoint, no storage of our own and no clock
//! read: a wakeup costs nothing, and a switch costs five plain loads that
//! the verifier checks against the kernel's BTF (`next->sched_info.
//! last_queued`, and `next->se.cfs_rq->rq->clock` to reach this CPU's run
//! queue without a per-CPU kernel symbol). The numbers are the kernel's
//! own: the histogram's count and sum match schedstat's timeslices and
//! run delay.
//!
//! A wait that moves to another CPU's run queue before it ends (load
//! balancing) is accounted by the kernel in two parts, and the histogram
//! records the part on the run queue it ends on.
//!
//! With `--by-cgroup`, the wait goes to the histogram of the cgroup the
//! task is in when it is switched in.

use aya_ebpf::{
    Global,
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use hostscope_common::{
    cgroup::{CgroupKey, overflow_slot},
    histogram::Histogram,
};

use crate::{
    cgroup,
    maps::{load_at, record},
};

/// The histogram: one slot, one copy per CPU, so updates need no atomics.
#[map(name = "RUNQ_LATENCY")]
static RUNQ_LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// The histograms per cgroup (`--by-cgroup`); the daemon sizes it.
#[map(name = "RUNQ_LATENCY_BY_CGROUP")]
static RUNQ_LATENCY_BY_CGROUP: HashMap<CgroupKey, Histogram> = HashMap::with_max_entries(1, 0);

// Byte offsets, load-time constants from the kernel's BTF (see
// `hostscope_common::sched::offsets`).
#[unsafe(no_mangle)]
static SCHED_OFF_TASK_LAST_QUEUED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SCHED_OFF_TASK_CFS_RQ: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SCHED_OFF_CFS_RQ_RQ: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SCHED_OFF_RQ_CLOCK: Global<u32> = Global::new(0);

/// `sched_switch(bool preempt, struct task_struct *prev,
///               struct task_struct *next, unsigned int prev_state)`
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let next: u64 = ctx.arg(2);
    // Zero when `next` did not wait: the idle task, or a task the kernel
    // switches back in without queueing it.
    let queued: u64 = load_at(next, SCHED_OFF_TASK_LAST_QUEUED.load());
    if queued == 0 {
        return 0;
    }
    // `next` is on this CPU's run queue; its fair-class entity points to
    // it whatever class `next` is in now.
    let cfs_rq: u64 = load_at(next, SCHED_OFF_TASK_CFS_RQ.load());
    let rq: u64 = load_at(cfs_rq, SCHED_OFF_CFS_RQ_RQ.load());
    let clock: u64 = load_at(rq, SCHED_OFF_RQ_CLOCK.load());
    // A load that faulted read zero: nothing to measure against.
    if clock < queued {
        return 0;
    }
    let latency = clock - queued;
    if cgroup::enabled() {
        let key = CgroupKey {
            cgroup: cgroup::series_of(cgroup::of_task(next), overflow_slot::SCHED),
            dev: 0,
            slot: 0,
        };
        cgroup::record(&RUNQ_LATENCY_BY_CGROUP, key, latency);
    } else {
        record(&RUNQ_LATENCY, 0, latency);
    }
    0
}
