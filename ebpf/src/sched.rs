//! Run-queue latency: the time a runnable task waits for a CPU.
//!
//! A task starts waiting when it is woken (`sched_wakeup`, `sched_wakeup_new`)
//! or when it is switched out while still runnable (preempted, or yielded):
//! `sched_switch` with `preempt` set or `prev_state == TASK_RUNNING`. It stops
//! waiting when `sched_switch` switches it in. The wait is recorded into a
//! per-CPU histogram.
//!
//! The start timestamp lives in task-local storage: one slot hung off the
//! task, reached from the `task_struct` pointer the tracepoint hands over.
//! No hash map round trip per event, no task field read (no CO-RE), and
//! the kernel frees the slot with the task. BTF tracepoints rather than
//! classic ones: the kernel passes their arguments directly, without
//! filling a trace record first.
//!
//! With `--by-cgroup`, the waiting task's cgroup is stored next to the
//! timestamp when it is queued (the cgroup it waited in, even if it moves
//! before it runs), and the wait goes to that cgroup's histogram.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_map, btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use hostscope_common::{
    cgroup::{CgroupKey, overflow_slot},
    histogram::Histogram,
};

use crate::{cgroup, diag, maps::record, task_storage::TaskStorage};

/// The histogram: one slot, one copy per CPU, so updates need no atomics.
#[map(name = "RUNQ_LATENCY")]
static RUNQ_LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// The histograms per cgroup (`--by-cgroup`); the daemon sizes it.
#[map(name = "RUNQ_LATENCY_BY_CGROUP")]
static RUNQ_LATENCY_BY_CGROUP: HashMap<CgroupKey, Histogram> = HashMap::with_max_entries(1, 0);

/// A task's wait: when it started (monotonic ns; 0 when it is not waiting)
/// and, with `--by-cgroup`, in which cgroup.
#[repr(C)]
pub struct Enqueued {
    at: u64,
    cgroup: u64,
}

#[btf_map(name = "RUNQ_ENQUEUED")]
static RUNQ_ENQUEUED: TaskStorage<Enqueued> = TaskStorage::new();

/// `TASK_RUNNING`: the task is still runnable when switched out.
const TASK_RUNNING: u32 = 0;

/// Monotonic nanoseconds (the same clock on every CPU, unlike a TSC read).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Marks `task` as waiting since `now`, in the cgroup `cgroup` returns
/// (called only with `--by-cgroup`).
#[inline(always)]
fn mark_enqueued(task: *mut c_void, now: u64, cgroup: impl FnOnce() -> u64) {
    // SAFETY: `task` is a task_struct pointer from a BTF tracepoint.
    let Some(slot) = (unsafe { RUNQ_ENQUEUED.get_or_create(task) }) else {
        diag::runq_storage();
        return;
    };
    // SAFETY: the slot is this task's; a task is woken on one CPU at a time.
    unsafe {
        (*slot).at = now;
        if cgroup::enabled() {
            (*slot).cgroup = cgroup();
        }
    }
}

/// `sched_wakeup(struct task_struct *p)`: `p` is not the running task.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let task: *mut c_void = ctx.arg(0);
    mark_enqueued(task, now(), || cgroup::of_task(task as u64));
    0
}

/// `sched_wakeup_new(struct task_struct *p)`
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    let task: *mut c_void = ctx.arg(0);
    mark_enqueued(task, now(), || cgroup::of_task(task as u64));
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev,
///               struct task_struct *next, unsigned int prev_state)`
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *mut c_void = ctx.arg(1);
    let next: *mut c_void = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    let now = now();

    // The tracepoint fires before the switch, so the current task is `prev`;
    // its pid tells us cheaply whether it is the idle task (pid 0), which is
    // never on a run queue.
    let prev_is_idle = bpf_get_current_pid_tgid() as u32 == 0;
    if !prev_is_idle && (preempt & 1 != 0 || prev_state == TASK_RUNNING) {
        // `prev` is still the running task: the helper knows its cgroup.
        mark_enqueued(prev, now, cgroup::of_current);
    }

    // SAFETY: `next` is a task_struct pointer from a BTF tracepoint.
    let Some(slot) = (unsafe { RUNQ_ENQUEUED.get_existing(next) }) else {
        return 0;
    };
    // SAFETY: the slot is `next`'s, and `next` is being switched in here.
    let enqueued = unsafe { core::mem::replace(&mut (*slot).at, 0) };
    if enqueued == 0 {
        return 0;
    }
    let latency = now.saturating_sub(enqueued);
    if cgroup::enabled() {
        // SAFETY: as above.
        let waited_in = unsafe { (*slot).cgroup };
        let key = CgroupKey {
            cgroup: cgroup::series_of(waited_in, overflow_slot::SCHED),
            dev: 0,
            slot: 0,
        };
        cgroup::record(&RUNQ_LATENCY_BY_CGROUP, key, latency);
    } else {
        record(&RUNQ_LATENCY, 0, latency);
    }
    0
}
