//! Off-CPU profile: where threads block, weighted by how long they stay
//! blocked (Brendan Gregg's off-CPU analysis), counted in the kernel.
//!
//! One BTF tracepoint, `sched_switch`, attached only while an off-CPU
//! profile is being taken. When `prev` leaves the CPU without being
//! runnable (it went to sleep, waits for I/O or a lock; a preempted task is
//! still runnable and is not off-CPU time), it is still the current task,
//! so the stack helpers see its user and kernel stacks: their ids, its
//! process, cgroup, name and the time go into its task storage. When the
//! same task is switched in again (`next`), the time since then is added,
//! in nanoseconds, to the sampler's count map under the same key a CPU
//! sample would have. Nothing per event leaves the kernel.
//!
//! The count, stack, name, filter and dropped maps are the sampler's
//! (`profile.rs`): captures run one at a time and attach one of the two
//! programs, so sharing them costs nothing and saves a second copy of the
//! preallocated count map (about 3 MiB).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{btf_map, btf_tracepoint, map},
    maps::Array,
    programs::BtfTracePointContext,
};
use hostscope_common::profile::{OffCpuConfig, SampleKey};

use crate::{
    diag,
    maps::{add, count},
    profile::{PROFILE_COMMS, PROFILE_COUNTS, PROFILE_DROPPED, stack_id, wanted},
    task_storage::TaskStorage,
};

/// This capture's start and threshold, written by the daemon before it
/// attaches the program.
#[map(name = "OFFCPU_CONFIG")]
static OFFCPU_CONFIG: Array<OffCpuConfig> = Array::with_max_entries(1, 0);

/// Where and since when a task has been blocked.
#[repr(C)]
pub struct Blocked {
    /// When it left the CPU (monotonic ns); 0 once counted.
    at: u64,
    /// The key its time goes under.
    key: SampleKey,
    /// Its process's name, recorded when the time is counted.
    comm: [u8; 16],
}

#[btf_map(name = "OFFCPU_START")]
static OFFCPU_START: TaskStorage<Blocked> = TaskStorage::new();

/// `TASK_RUNNING`: switched out but still runnable.
const TASK_RUNNING: u32 = 0;

/// `sched_switch(bool preempt, struct task_struct *prev,
///               struct task_struct *next, unsigned int prev_state)`
#[btf_tracepoint(function = "sched_switch")]
pub fn offcpu_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *mut c_void = ctx.arg(1);
    let next: *mut c_void = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    let Some(config) = OFFCPU_CONFIG.get(0) else {
        return 0;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // A preempted task stays on the run queue whatever its state says: it
    // is waiting for a CPU, which is run-queue latency, not blocking.
    if preempt & 1 == 0 && prev_state != TASK_RUNNING {
        blocks(&ctx, prev, now);
    }
    resumes(next, now, config);
    0
}

/// `prev`, the current task, leaves the CPU to block.
#[inline(always)]
fn blocks(ctx: &BtfTracePointContext, prev: *mut c_void, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The idle task never blocks; this is cheap insurance.
    if pid_tgid as u32 == 0 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: a helper with no arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if !wanted(tgid, cgroup) {
        return;
    }
    // SAFETY: `prev` is a task_struct pointer from a BTF tracepoint.
    let Some(slot) = (unsafe { OFFCPU_START.get_or_create(prev) }) else {
        diag::offcpu_storage();
        count(&PROFILE_DROPPED, 0);
        return;
    };
    let key = SampleKey {
        cgroup,
        tgid,
        user_stack: stack_id(ctx, u64::from(BPF_F_USER_STACK)),
        kernel_stack: stack_id(ctx, 0),
        reserved: 0,
    };
    // SAFETY: the slot is `prev`'s, which cannot run anywhere until this
    // switch is done (it is still on this CPU), so nothing else touches it.
    unsafe {
        (*slot).key = key;
        if let Ok(comm) = bpf_get_current_comm() {
            (*slot).comm = comm;
        }
        (*slot).at = now;
    }
}

/// `next` runs again: count the time it was blocked, if it blocked during
/// this capture for long enough.
#[inline(always)]
fn resumes(next: *mut c_void, now: u64, config: &OffCpuConfig) {
    // SAFETY: `next` is a task_struct pointer from a BTF tracepoint.
    let Some(slot) = (unsafe { OFFCPU_START.get_existing(next) }) else {
        return;
    };
    // SAFETY: the slot is `next`'s, being switched in on this CPU only.
    let at = unsafe { core::mem::replace(&mut (*slot).at, 0) };
    // 0: not blocked since it was last counted. Before `since_ns`: left by
    // an earlier capture, its stack ids no longer valid.
    if at == 0 || at < config.since_ns {
        return;
    }
    let blocked = now.saturating_sub(at);
    if blocked < config.min_block_ns {
        return;
    }
    // SAFETY: as above.
    let key = unsafe { (*slot).key };
    let mut total = PROFILE_COUNTS.get_ptr_mut(key);
    if total.is_none() {
        // Another CPU may insert the same key first: the lookup finds it.
        let _ = PROFILE_COUNTS.insert(key, 0, u64::from(BPF_NOEXIST));
        total = PROFILE_COUNTS.get_ptr_mut(key);
    }
    match total {
        // SAFETY: a u64 in a map value, which stays allocated while the
        // program runs. Atomic: tasks of one stack resume on several CPUs.
        Some(total) => unsafe { add(total, blocked) },
        None => {
            diag::profile_counts_full();
            count(&PROFILE_DROPPED, 0);
        }
    }
    // SAFETY: the value is only compared with None.
    if unsafe { PROFILE_COMMS.get(key.tgid) }.is_none() {
        // SAFETY: as above.
        let comm = unsafe { (*slot).comm };
        let _ = PROFILE_COMMS.insert(key.tgid, comm, 0);
    }
}
