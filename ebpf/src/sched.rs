//! Run-queue latency: the time a runnable task waits for a CPU.
//!
//! A task starts waiting when it is woken (`sched_wakeup`, `sched_wakeup_new`)
//! or when it is switched out while still runnable (preempted, or yielded):
//! `sched_switch` with `preempt` set or `prev_state == TASK_RUNNING`. It stops
//! waiting when `sched_switch` switches it in. The wait is recorded into a
//! per-CPU histogram; the start timestamp is keyed by the `task_struct`
//! pointer, so no field of the task is ever read (no CO-RE needed).
//!
//! BTF tracepoints are used rather than classic ones: the kernel hands their
//! arguments over directly, without filling a trace record first.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use hostscope_common::{histogram::Histogram, sched::RUNQ_ENQUEUED_DEFAULT_ENTRIES};

/// The histogram: one slot, one copy per CPU, so updates need no atomics.
#[map(name = "RUNQ_LATENCY")]
static RUNQ_LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// When each waiting task started to wait, by `task_struct` address. LRU, so
/// that entries of tasks that exit in an unusual way age out instead of
/// filling the map.
#[map(name = "RUNQ_ENQUEUED")]
static RUNQ_ENQUEUED: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(RUNQ_ENQUEUED_DEFAULT_ENTRIES, 0);

/// `TASK_RUNNING`: the task is still runnable when switched out.
const TASK_RUNNING: u32 = 0;

/// Monotonic nanoseconds (the same clock on every CPU, unlike a TSC read).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn mark_enqueued(task: u64, now: u64) {
    // An insert can only fail on a full map; LRU evicts instead, so ignore.
    let _ = RUNQ_ENQUEUED.insert(task, now, 0);
}

/// `sched_wakeup(struct task_struct *p)`
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let task: *const c_void = ctx.arg(0);
    mark_enqueued(task as u64, now());
    0
}

/// `sched_wakeup_new(struct task_struct *p)`
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    let task: *const c_void = ctx.arg(0);
    mark_enqueued(task as u64, now());
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev,
///               struct task_struct *next, unsigned int prev_state)`
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const c_void = ctx.arg(1);
    let next: *const c_void = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    let now = now();

    // The tracepoint fires before the switch, so the current task is `prev`;
    // its pid tells us cheaply whether it is the idle task (pid 0), which is
    // never on a run queue.
    let prev_is_idle = bpf_get_current_pid_tgid() as u32 == 0;
    if !prev_is_idle && (preempt & 1 != 0 || prev_state == TASK_RUNNING) {
        mark_enqueued(prev as u64, now);
    }

    let next = next as u64;
    // SAFETY: the value is copied out at once; a concurrent delete can only
    // make us read a timestamp that was valid a moment ago.
    let Some(&enqueued) = (unsafe { RUNQ_ENQUEUED.get(next) }) else {
        return 0;
    };
    let _ = RUNQ_ENQUEUED.remove(next);
    if let Some(histogram) = RUNQ_LATENCY.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, and BPF programs do not migrate mid-run.
        unsafe { crate::histogram::record(&mut *histogram, now.saturating_sub(enqueued)) };
    }
    0
}
