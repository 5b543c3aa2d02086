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

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_map, btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use hostscope_common::histogram::Histogram;

use crate::{maps::record, task_storage::TaskStorage};

/// The histogram: one slot, one copy per CPU, so updates need no atomics.
#[map(name = "RUNQ_LATENCY")]
static RUNQ_LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// When the task started to wait (monotonic ns), or 0 when it is not waiting.
#[btf_map(name = "RUNQ_ENQUEUED")]
static RUNQ_ENQUEUED: TaskStorage<u64> = TaskStorage::new();

/// `TASK_RUNNING`: the task is still runnable when switched out.
const TASK_RUNNING: u32 = 0;

/// Monotonic nanoseconds (the same clock on every CPU, unlike a TSC read).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn mark_enqueued(task: *mut c_void, now: u64) {
    // SAFETY: `task` is a task_struct pointer from a BTF tracepoint.
    if let Some(slot) = unsafe { RUNQ_ENQUEUED.get_or_create(task) } {
        // SAFETY: the slot is this task's; a task is woken on one CPU at a time.
        unsafe { *slot = now };
    }
}

/// `sched_wakeup(struct task_struct *p)`
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    mark_enqueued(ctx.arg(0), now());
    0
}

/// `sched_wakeup_new(struct task_struct *p)`
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    mark_enqueued(ctx.arg(0), now());
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
        mark_enqueued(prev, now);
    }

    // SAFETY: `next` is a task_struct pointer from a BTF tracepoint.
    let Some(slot) = (unsafe { RUNQ_ENQUEUED.get_existing(next) }) else {
        return 0;
    };
    // SAFETY: the slot is `next`'s, and `next` is being switched in here.
    let enqueued = unsafe { core::mem::replace(&mut *slot, 0) };
    if enqueued == 0 {
        return 0;
    }
    record(&RUNQ_LATENCY, 0, now.saturating_sub(enqueued));
    0
}
