//! CPU profile: a perf_event program, attached to every CPU's software
//! clock only while a profile is being taken, that counts samples per
//! (cgroup, process, user stack, kernel stack) in the kernel. Its maps are
//! shared with the off-CPU program (`offcpu.rs`); a capture attaches one or
//! the other.

use crate::maps::count;
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid,
    },
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};
use hostscope_common::profile::{
    COMM_ENTRIES, COUNT_ENTRIES, MAX_CGROUP_LEVEL, ProfileFilter, STACK_ENTRIES, SampleKey,
};

#[map(name = "PROFILE_STACKS")]
static PROFILE_STACKS: StackTrace = StackTrace::with_max_entries(STACK_ENTRIES, 0);

#[map(name = "PROFILE_COUNTS")]
pub(crate) static PROFILE_COUNTS: HashMap<SampleKey, u64> =
    HashMap::with_max_entries(COUNT_ENTRIES, 0);

#[map(name = "PROFILE_COMMS")]
pub(crate) static PROFILE_COMMS: HashMap<u32, [u8; 16]> =
    HashMap::with_max_entries(COMM_ENTRIES, 0);

#[map(name = "PROFILE_FILTER")]
static PROFILE_FILTER: Array<ProfileFilter> = Array::with_max_entries(1, 0);

#[map(name = "PROFILE_DROPPED")]
pub(crate) static PROFILE_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `-EFAULT`: no user stack, as for kernel threads. Not a loss.
const EFAULT: i32 = -14;

/// Whether the current task's cgroup is `target` or below it. The kernel
/// answers for each level from the root down (0 past the task's own
/// level): exact whatever our cgroup namespace, with no fd or cgroup-array
/// map, and it follows cgroups created under `target` during the capture.
#[inline(always)]
fn under_cgroup(current: u64, target: u64) -> bool {
    if current == target {
        return true;
    }
    for level in 0..MAX_CGROUP_LEVEL {
        // SAFETY: a helper with no pointer arguments.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == target {
            return true;
        }
        if ancestor == 0 {
            return false;
        }
    }
    false
}

/// Whether the current task, of process `tgid` in cgroup `cgroup`, passes
/// the capture's pid and cgroup filter.
#[inline(always)]
pub(crate) fn wanted(tgid: u32, cgroup: u64) -> bool {
    let Some(filter) = PROFILE_FILTER.get(0) else {
        return true;
    };
    (filter.tgid == 0 || filter.tgid == tgid)
        && (filter.cgroup == 0 || under_cgroup(cgroup, filter.cgroup))
}

/// The id in [`PROFILE_STACKS`] of the current task's user stack (with
/// `BPF_F_USER_STACK`) or kernel stack, or -1. A failure other than "no
/// user stack" counts as a loss.
#[inline(always)]
pub(crate) fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    match ctx.get_stackid(&PROFILE_STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            if err != EFAULT {
                count(&PROFILE_DROPPED, 0);
            }
            -1
        }
    }
}

#[perf_event]
pub fn profile_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The idle task (pid 0) is not CPU work.
    if pid_tgid as u32 == 0 {
        return 0;
    }
    // SAFETY: a helper with no arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if !wanted(tgid, cgroup) {
        return 0;
    }
    let key = SampleKey {
        cgroup,
        tgid,
        user_stack: stack_id(&ctx, u64::from(BPF_F_USER_STACK)),
        kernel_stack: stack_id(&ctx, 0),
        reserved: 0,
    };
    match PROFILE_COUNTS.get_ptr_mut(key) {
        // SAFETY: a plain counter; a lost increment under a race costs one sample.
        Some(count) => unsafe { *count += 1 },
        None => {
            if PROFILE_COUNTS.insert(key, 1, 0).is_err() {
                count(&PROFILE_DROPPED, 0);
            }
        }
    }
    // SAFETY: the value is only compared with None.
    if unsafe { PROFILE_COMMS.get(tgid) }.is_none()
        && let Ok(comm) = bpf_get_current_comm()
    {
        let _ = PROFILE_COMMS.insert(tgid, comm, 0);
    }
    0
}
