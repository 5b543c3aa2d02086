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
//! So one program on one tracepoint and no clock read: a wakeup costs
//! nothing, and a switch costs plain loads that the verifier checks against
//! the kernel's BTF (`next->sched_info`, and `next->se.cfs_rq->rq->clock`
//! to reach this CPU's run queue without a per-CPU kernel symbol) and one
//! array slot read and written. The numbers are the kernel's own: the
//! histogram's count and sum match schedstat's timeslices and run delay.
//!
//! A wait that moves to another CPU's run queue before it ends (load
//! balancing, an affinity change) is accounted by the kernel in parts: the
//! move adds the part so far to the task's `run_delay` and clears the
//! stamp, and the new queue stamps the task again. No tracepoint fires
//! before the move clears the stamp, so the program keeps, per task, the
//! `run_delay` each switch-in leaves behind (what the kernel is about to
//! make it) and the `pcount` it will have. At the next switch-in of the
//! same task, `run_delay` beyond that is the parts of this wait before its
//! moves, and the histogram records the wait whole, as one wait, as
//! schedstat does. A task first seen mid-life has no record yet:
//! its first wait, if it moved, is recorded from its last stamp only.
//!
//! With `--by-cgroup`, the wait goes to the histogram of the cgroup the
//! task is in when it is switched in.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    Global,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use hostscope_common::{
    block::slot_index,
    cgroup::{CgroupKey, overflow_slot},
    histogram::Histogram,
    sched::RUNQ_ARRIVED_SLOTS,
};

use crate::{
    cgroup,
    maps::{address_bits, load_at, record},
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
#[unsafe(no_mangle)]
static SCHED_OFF_TASK_RUN_DELAY: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SCHED_OFF_TASK_PCOUNT: Global<u32> = Global::new(0);

/// Where a task's last switch-in left its `sched_info`: the slot its
/// address hashes to. Tasks sharing a slot overwrite each other's record,
/// which only costs the one that lost it the parts of a moved wait.
#[repr(C)]
pub struct Arrived {
    /// `(address bits << 32 | pcount after the switch-in) ^ run_delay`: a
    /// record overwritten halfway by another task fails the check.
    check: u64,
    /// `run_delay` after the switch-in.
    run_delay: u64,
}

/// Records of tasks' last switch-ins: 1 MiB, enough that tasks collide
/// rarely on hosts with tens of thousands of threads. An array, not task
/// storage, because its lookup is a few instructions the verifier inlines
/// where task storage costs a helper call (about 30 ns per switch here).
#[map(name = "RUNQ_ARRIVED")]
static RUNQ_ARRIVED: Array<Arrived> = Array::with_max_entries(RUNQ_ARRIVED_SLOTS, 0);

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
    let latency = clock - queued + parts_before_moves(next, clock - queued);
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

/// The parts of `task`'s wait that the kernel folded into its `run_delay`
/// when the wait moved off other run queues (0 for a wait that stayed
/// put), and a record of what this switch-in leaves (`last_part` is the
/// part the kernel is about to add).
#[inline(always)]
fn parts_before_moves(task: u64, last_part: u64) -> u64 {
    let bits = address_bits(task);
    // The block collector's address hash suits task_structs as well.
    let Some(slot) = RUNQ_ARRIVED.get_ptr_mut(slot_index(bits, RUNQ_ARRIVED_SLOTS)) else {
        return 0;
    };
    let pcount: u64 = load_at(task, SCHED_OFF_TASK_PCOUNT.load());
    let run_delay: u64 = load_at(task, SCHED_OFF_TASK_RUN_DELAY.load());
    let owner = u64::from(bits) << 32;
    // SAFETY: a slot of an array map, valid while the program runs. Other
    // CPUs may write it at the same time (another task in the slot); the
    // check catches a record mixed from two.
    unsafe {
        let check = read_volatile(&raw const (*slot).check);
        let before = read_volatile(&raw const (*slot).run_delay);
        // Another task's record, or this task's from before a switch-in
        // that left none (it had no stamp): nothing to go by.
        let moved = if check ^ before == owner | u64::from(pcount as u32) {
            run_delay.saturating_sub(before)
        } else {
            0
        };
        let after = run_delay.wrapping_add(last_part);
        write_volatile(&raw mut (*slot).run_delay, after);
        let pcount_after = u64::from(pcount.wrapping_add(1) as u32);
        write_volatile(&raw mut (*slot).check, (owner | pcount_after) ^ after);
        moved
    }
}
