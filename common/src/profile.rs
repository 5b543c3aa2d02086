//! Layout of the CPU profiler's maps.

/// Stack traces (`BPF_MAP_TYPE_STACK_TRACE`), user and kernel alike.
pub const PROFILE_STACKS_MAP: &str = "PROFILE_STACKS";
/// Hash map: [`SampleKey`] -> sample count.
pub const PROFILE_COUNTS_MAP: &str = "PROFILE_COUNTS";
/// Hash map: tgid -> `[u8; 16]` process name, recorded at the first sample
/// so that processes that exit before symbolization keep their name.
pub const PROFILE_COMMS_MAP: &str = "PROFILE_COMMS";
/// Array, one [`ProfileFilter`]: which tasks to sample.
pub const PROFILE_FILTER_MAP: &str = "PROFILE_FILTER";
/// Per-CPU array, one `u64`: samples lost to a full map or a stack collision.
pub const PROFILE_DROPPED_MAP: &str = "PROFILE_DROPPED";
/// The program.
pub const PROFILE_PROGRAM: &str = "profile_sample";

/// Distinct stacks the stack map holds.
pub const STACK_ENTRIES: u32 = 16_384;
/// Distinct (cgroup, process, user stack, kernel stack) keys counted.
pub const COUNT_ENTRIES: u32 = 40_960;
/// Processes whose names are kept.
pub const COMM_ENTRIES: u32 = 8_192;
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
    /// Always 0: makes the padding explicit.
    pub reserved: u32,
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

// No implicit padding in either: the sizes are the fields' sum.
const _: () = assert!(core::mem::size_of::<SampleKey>() == 24);
const _: () = assert!(core::mem::size_of::<ProfileFilter>() == 16);

#[cfg(feature = "user")]
// SAFETY: integers only, no padding, every bit pattern valid.
unsafe impl aya::Pod for SampleKey {}

#[cfg(feature = "user")]
// SAFETY: integers only, no padding, every bit pattern valid.
unsafe impl aya::Pod for ProfileFilter {}
