//! CPU profile: a perf_event program, attached to every CPU's software
//! clock only while a profile is being taken, that counts samples per
//! (cgroup, process, user stack, kernel stack) in the kernel. Its maps are
//! shared with the off-CPU program (`offcpu.rs`); a capture attaches one or
//! the other.
//!
//! User stacks are walked here by frame pointers only for processes the
//! daemon has found to keep them ([`PROFILE_WALKED`]). For the others the
//! user registers and up to [`USER_STACK_BYTES`] of the stack go to a ring
//! buffer, for the daemon to unwind from the binaries' unwind tables: a
//! frame-pointer walk of code built without them follows garbage.

use core::{ffi::c_void, ptr};

use crate::{diag, maps::count};
use aya_ebpf::{
    bindings::{
        BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs,
    },
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};
use hostscope_common::profile::{
    COMM_ENTRIES, COPY_USER_STACKS, COUNT_ENTRIES, MAX_CGROUP_LEVEL, ProfileFilter, STACK_ENTRIES,
    SampleKey, USER_STACK_BYTES, USER_STACK_PAGE, USER_STACKS_RING_BYTES, UserStackHeader,
    UserStackSample, WALKED_ENTRIES,
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

#[map(name = "PROFILE_USER_STACKS")]
static PROFILE_USER_STACKS: RingBuf = RingBuf::with_byte_size(USER_STACKS_RING_BYTES, 0);

#[map(name = "PROFILE_WALKED")]
static PROFILE_WALKED: HashMap<u32, u8> = HashMap::with_max_entries(WALKED_ENTRIES, 0);

#[map(name = "PROFILE_COPY_MISSED")]
static PROFILE_COPY_MISSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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
    passes(filter, tgid, cgroup)
}

#[inline(always)]
fn passes(filter: &ProfileFilter, tgid: u32, cgroup: u64) -> bool {
    (filter.tgid == 0 || filter.tgid == tgid)
        && (filter.cgroup == 0 || under_cgroup(cgroup, filter.cgroup))
}

/// Sends the current task's user registers and stack to the daemon, with
/// `cgroup`, `tgid` and the kernel stack. False if the ring is full: the
/// caller then walks frame pointers.
#[inline(always)]
fn copy_user_stack(cgroup: u64, tgid: u32, kernel_stack: i32) -> bool {
    let Some(mut entry) = PROFILE_USER_STACKS.reserve::<UserStackSample>(0) else {
        diag::profile_ring_full();
        count(&PROFILE_COPY_MISSED, 0);
        return false;
    };
    // The registers saved where the task entered the kernel: its user
    // registers whether the sample hit user code, a system call or an
    // interrupt. SAFETY: helpers given the current task, which they accept.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    // SAFETY: a checked read of kernel memory.
    let (ip, sp, bp) = match unsafe { bpf_probe_read_kernel(regs) } {
        Ok(r) => (r.rip, r.rsp, r.rbp),
        Err(_) => (0, 0, 0),
    };
    let stack_base = sp & !(USER_STACK_PAGE as u64 - 1);
    let sample = entry.as_mut_ptr();
    let mut copied = 0u32;
    // SAFETY: `sample` is the reserved record; every write stays inside its
    // `stack` array (constant offsets), and the reads of user memory are
    // checked: a page that faults ends the copy.
    unsafe {
        let stack = ptr::addr_of_mut!((*sample).stack).cast::<u8>();
        if sp != 0 {
            for page in 0..USER_STACK_BYTES / USER_STACK_PAGE {
                let offset = page * USER_STACK_PAGE;
                let read = bpf_probe_read_user(
                    stack.add(offset).cast::<c_void>(),
                    USER_STACK_PAGE as u32,
                    (stack_base + offset as u64) as *const c_void,
                );
                if read != 0 {
                    break;
                }
                copied += USER_STACK_PAGE as u32;
            }
        }
        ptr::addr_of_mut!((*sample).header).write(UserStackHeader {
            cgroup,
            tgid,
            kernel_stack,
            ip,
            sp,
            bp,
            stack_base,
            stack_len: copied,
            reserved: 0,
        });
    }
    // Wake the daemon only once the ring is half full: it drains on a
    // timer as well, and a wakeup per sample would cost it a round trip
    // to the sandbox per sample.
    let flags = if PROFILE_USER_STACKS.query(u64::from(BPF_RB_AVAIL_DATA))
        > u64::from(USER_STACKS_RING_BYTES / 2)
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
    true
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
                diag::profile_stack(err);
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
    let Some(filter) = PROFILE_FILTER.get(0) else {
        return 0;
    };
    if !passes(filter, tgid, cgroup) {
        return 0;
    }
    let kernel_stack = stack_id(&ctx, 0);
    // SAFETY: the value is only compared with None.
    let copy =
        filter.flags & COPY_USER_STACKS != 0 && unsafe { PROFILE_WALKED.get(tgid) }.is_none();
    if !(copy && copy_user_stack(cgroup, tgid, kernel_stack)) {
        let key = SampleKey {
            cgroup,
            tgid,
            user_stack: stack_id(&ctx, u64::from(BPF_F_USER_STACK)),
            kernel_stack,
            reserved: 0,
        };
        match PROFILE_COUNTS.get_ptr_mut(key) {
            // SAFETY: a plain counter; a lost increment under a race costs one sample.
            Some(count) => unsafe { *count += 1 },
            None => {
                if PROFILE_COUNTS.insert(key, 1, 0).is_err() {
                    diag::profile_counts_full();
                    count(&PROFILE_DROPPED, 0);
                }
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
