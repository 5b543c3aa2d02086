//! Layout of the profilers' maps: the CPU sampler's, and the off-CPU
//! program's, which shares the sampler's stack, count, name, filter and
//! dropped maps (one capture at a time uses them, of one kind).

/// Stack traces (`BPF_MAP_TYPE_STACK_TRACE`), user and kernel alike.
pub const PROFILE_STACKS_MAP: &str = "PROFILE_STACKS";
/// Hash map: [`SampleKey`] -> samples (CPU profile) or nanoseconds blocked
/// (off-CPU profile).
pub const PROFILE_COUNTS_MAP: &str = "PROFILE_COUNTS";
/// Hash map: tgid -> `[u8; 16]` process name, recorded at the first sample
/// so that processes that exit before symbolization keep their name.
pub const PROFILE_COMMS_MAP: &str = "PROFILE_COMMS";
/// Array, one [`ProfileFilter`]: which tasks to sample.
pub const PROFILE_FILTER_MAP: &str = "PROFILE_FILTER";
/// Per-CPU array, one `u64`: samples (or blocks) lost to a full map or a
/// stack collision.
pub const PROFILE_DROPPED_MAP: &str = "PROFILE_DROPPED";
/// The program.
pub const PROFILE_PROGRAM: &str = "profile_sample";
/// Ring buffer of [`UserStackSample`]s: the user stacks of processes whose
/// code may lack frame pointers, for the daemon to unwind from their
/// unwind tables. Only the sampler writes it, and only during a capture.
pub const PROFILE_USER_STACKS_MAP: &str = "PROFILE_USER_STACKS";
/// Hash map: tgid -> 1 for processes whose stacks the kernel walks by
/// frame pointers (every module keeps them, or it has no user stack):
/// their samples are counted in [`PROFILE_COUNTS_MAP`] as before.
pub const PROFILE_WALKED_MAP: &str = "PROFILE_WALKED";
/// Per-CPU array, one `u64`: samples whose user stack was walked by frame
/// pointers because the ring buffer was full.
pub const PROFILE_COPY_MISSED_MAP: &str = "PROFILE_COPY_MISSED";

/// The off-CPU program: at `sched_switch`, remembers where a task blocked
/// and, when it runs again, adds the nanoseconds it spent blocked to
/// [`PROFILE_COUNTS_MAP`] under the stacks it blocked in.
pub const OFFCPU_PROGRAM: &str = "offcpu_switch";
/// The BTF tracepoint [`OFFCPU_PROGRAM`] attaches to.
pub const OFFCPU_TRACEPOINT: &str = "sched_switch";
/// Task storage: where and since when each task has been blocked.
pub const OFFCPU_START_MAP: &str = "OFFCPU_START";
/// Array, one [`OffCpuConfig`]: this capture's start and threshold.
pub const OFFCPU_CONFIG_MAP: &str = "OFFCPU_CONFIG";

/// Distinct stacks the stack map holds.
pub const STACK_ENTRIES: u32 = 16_384;
/// Distinct (cgroup, process, user stack, kernel stack) keys counted.
pub const COUNT_ENTRIES: u32 = 40_960;
/// Processes whose names are kept.
pub const COMM_ENTRIES: u32 = 8_192;
/// Bytes of user stack copied per sample, from the page of the stack
/// pointer up: what a frame-pointer-less unwinder may need. perf's
/// `--call-graph dwarf` copies 8 KiB by default.
pub const USER_STACK_BYTES: usize = 16_384;
/// The copy is made page by page, so that a stack that ends sooner (a
/// thread's stack, the top of the main one) still gives what it has.
pub const USER_STACK_PAGE: usize = 4_096;
/// Size of the [`PROFILE_USER_STACKS_MAP`] ring: about 250 samples. When
/// it is full the kernel walks frame pointers instead, so a host with many
/// CPUs degrades to the fast path rather than losing samples.
pub const USER_STACKS_RING_BYTES: u32 = 4 << 20;
/// Processes the kernel may be told to walk by frame pointers.
pub const WALKED_ENTRIES: u32 = 8_192;
/// [`ProfileFilter::flags`]: copy user stacks of processes not in
/// [`PROFILE_WALKED_MAP`] to [`PROFILE_USER_STACKS_MAP`].
pub const COPY_USER_STACKS: u32 = 1;
/// Deepest cgroup level (the root is 0) the cgroup filter looks at. The
/// filter compares ancestors by id, level by level, because a daemon in a
/// cgroup namespace cannot know the absolute level of the cgroup it was
/// asked for; systemd and Kubernetes nest 4-6 levels.
pub const MAX_CGROUP_LEVEL: i32 = 64;

/// Which tasks the sampler counts; zero fields match everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileFilter {
    /// Only tasks in this cgroup v2 (its id, the inode of its directory) or
    /// anywhere below it.
    pub cgroup: u64,
    /// Only this process (thread group).
    pub tgid: u32,
    /// [`COPY_USER_STACKS`] or 0.
    pub flags: u32,
}

/// One sample whose user stack is left to the daemon to unwind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStackHeader {
    /// As in [`SampleKey`].
    pub cgroup: u64,
    /// As in [`SampleKey`].
    pub tgid: u32,
    /// As in [`SampleKey`].
    pub kernel_stack: i32,
    /// The user registers (where the task entered the kernel, or was
    /// interrupted): instruction, stack and frame pointer.
    pub ip: u64,
    /// See `ip`.
    pub sp: u64,
    /// See `ip`.
    pub bp: u64,
    /// The user address of the copy's first byte (the stack pointer's
    /// page).
    pub stack_base: u64,
    /// Bytes copied: whole pages, 0 if the stack could not be read.
    pub stack_len: u32,
    /// Always 0: makes the padding explicit.
    pub reserved: u32,
}

/// A [`PROFILE_USER_STACKS_MAP`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStackSample {
    /// What the bytes are.
    pub header: UserStackHeader,
    /// The first `header.stack_len` bytes are the stack from
    /// `header.stack_base` up.
    pub stack: [u8; USER_STACK_BYTES],
}

/// What one sample is counted under.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// The cgroup v2 the task was in (`bpf_get_current_cgroup_id`).
    pub cgroup: u64,
    /// The process (thread group) id.
    pub tgid: u32,
    /// Id in the stack map of the user stack, or negative when there is none
    /// (kernel threads) or it could not be recorded.
    pub user_stack: i32,
    /// Id of the kernel stack, or negative.
    pub kernel_stack: i32,
    /// Always 0: a hash key is compared byte for byte, so the padding after
    /// the 8-byte id must be a field that is always written.
    pub reserved: u32,
}

/// What the off-CPU program counts in the capture under way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuConfig {
    /// When the capture started (`CLOCK_MONOTONIC` ns, the clock of
    /// `bpf_ktime_get_ns`). A block that started earlier is not counted:
    /// task storage outlives captures, and an entry left by an earlier one
    /// names stack ids that have since been cleared.
    pub since_ns: u64,
    /// Shorter blocks are not counted.
    pub min_block_ns: u64,
}

// No implicit padding in any: the sizes are the fields' sum.
const _: () = assert!(core::mem::size_of::<SampleKey>() == 24);
const _: () = assert!(core::mem::size_of::<ProfileFilter>() == 16);
const _: () = assert!(core::mem::size_of::<OffCpuConfig>() == 16);
const _: () = assert!(core::mem::size_of::<UserStackHeader>() == 56);
const _: () = assert!(USER_STACK_BYTES.is_multiple_of(USER_STACK_PAGE));

#[cfg(feature = "user")]
// SAFETY: integers only, no padding, every bit pattern valid.
unsafe impl aya::Pod for SampleKey {}

#[cfg(feature = "user")]
// SAFETY: integers only, no padding, every bit pattern valid.
unsafe impl aya::Pod for ProfileFilter {}

#[cfg(feature = "user")]
// SAFETY: integers only, no padding, every bit pattern valid.
unsafe impl aya::Pod for OffCpuConfig {}
