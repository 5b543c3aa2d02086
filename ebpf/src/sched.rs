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
//! make it), with `last_arrival` and `se.nr_migrations`. At the next
//! switch-in of a task that moved since, `run_delay` beyond that is the
//! parts of this wait before its moves, and the histogram records the wait
//! whole, as one wait, as schedstat does. A task first seen mid-life has no
//! record yet: its first wait, if it moved, is recorded from its last stamp
//! only.
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
static SCHED_OFF_TASK_LAST_ARRIVAL: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SCHED_OFF_TASK_NR_MIGRATIONS: Global<u32> = Global::new(0);

/// What a task's last switch-in left: the slot of its address. Tasks
/// sharing a slot overwrite each other's record, which only costs the one
/// that lost it the parts of a moved wait.
#[repr(C)]
pub struct Arrived {
    /// `sched_info.last_arrival` after the switch-in (the run queue's clock
    /// then): tells whether the record is of the task's last switch-in.
    arrival: u64,
    /// `se.nr_migrations` at the switch-in.
    migrations: u64,
    /// `sched_info.run_delay` after the switch-in.
    run_delay: u64,
    /// The fields above and the address bits XORed: a record written
    /// halfway by two tasks at once fails it.
    check: u64,
}

/// The records, indexed by the task's address in 4 KiB pages, so that
/// tasks allocated together (a build's short-lived processes) share cache
/// lines. An array, not task storage: its lookup is a few instructions the
/// verifier inlines, where task storage costs a helper call (about 30 ns
/// per switch here).
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
    let latency = clock - queued + parts_before_moves(next, clock, clock - queued);
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
/// put), and a record of what this switch-in leaves (`clock` is the run
/// queue's clock, which the kernel is about to make `last_arrival`, and
/// `last_part` what it is about to add to `run_delay`).
///
/// `run_delay` sits on a cache line of its own, which the program reads
/// only when the task moved to another CPU since its last switch-in, or
/// has no record: otherwise it is the record's, unchanged, and the rest
/// is on lines this program reads anyway.
#[inline(always)]
fn parts_before_moves(task: u64, clock: u64, last_part: u64) -> u64 {
    let bits = address_bits(task);
    let Some(slot) = RUNQ_ARRIVED.get_ptr_mut((bits >> 12) & (RUNQ_ARRIVED_SLOTS - 1)) else {
        return 0;
    };
    let arrival: u64 = load_at(task, SCHED_OFF_TASK_LAST_ARRIVAL.load());
    let migrations: u64 = load_at(task, SCHED_OFF_TASK_NR_MIGRATIONS.load());
    let owner = u64::from(bits) << 32;
    // SAFETY: a slot of an array map, valid while the program runs. Other
    // CPUs may write it at the same time (another task in the slot); the
    // check catches a record mixed from two.
    unsafe {
        let was_arrival = read_volatile(&raw const (*slot).arrival);
        let was_migrations = read_volatile(&raw const (*slot).migrations);
        let was_run_delay = read_volatile(&raw const (*slot).run_delay);
        let was_check = read_volatile(&raw const (*slot).check);
        let ours = was_arrival == arrival
            && was_check == was_arrival ^ was_migrations ^ was_run_delay ^ owner;
        let (moved, run_delay) = if ours && was_migrations == migrations {
            (0, was_run_delay)
        } else {
            let run_delay: u64 = load_at(task, SCHED_OFF_TASK_RUN_DELAY.load());
            // Not ours: another task's record, or none yet.
            let moved = if ours {
                run_delay.saturating_sub(was_run_delay)
            } else {
                0
            };
            (moved, run_delay)
        };
        let after = run_delay.wrapping_add(last_part);
        write_volatile(&raw mut (*slot).arrival, clock);
        write_volatile(&raw mut (*slot).migrations, migrations);
        write_volatile(&raw mut (*slot).run_delay, after);
        write_volatile(&raw mut (*slot).check, clock ^ migrations ^ after ^ owner);
        moved
    }
}
