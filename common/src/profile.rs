//! Layout of the CPU profiler's maps.

/// Stack traces (`BPF_MAP_TYPE_STACK_TRACE`), user and kernel alike.
pub const PROFILE_STACKS_MAP: &str = "PROFILE_STACKS";
/// Hash map: [`SampleKey`] -> sample count.
pub const PROFILE_COUNTS_MAP: &str = "PROFILE_COUNTS";
/// Hash map: tgid -> `[u8; 16]` process name, recorded at the first sample
/// so that processes that exit before symbolization keep their name.
pub const PROFILE_COMMS_MAP: &str = "PROFILE_COMMS";
/// Array, one `u32`: sample only this tgid (0: every process).
pub const PROFILE_FILTER_MAP: &str = "PROFILE_FILTER";
/// Per-CPU array, one `u64`: samples lost to a full map or a stack collision.
pub const PROFILE_DROPPED_MAP: &str = "PROFILE_DROPPED";
/// The program.
pub const PROFILE_PROGRAM: &str = "profile_sample";

/// Distinct stacks the stack map holds.
pub const STACK_ENTRIES: u32 = 16_384;
/// Distinct (process, user stack, kernel stack) triples counted.
pub const COUNT_ENTRIES: u32 = 40_960;
/// Processes whose names are kept.
pub const COMM_ENTRIES: u32 = 8_192;

/// What one sample is counted under.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// The process (thread group) id.
    pub tgid: u32,
    /// Id in the stack map of the user stack, or negative when there is none
    /// (kernel threads) or it could not be recorded.
    pub user_stack: i32,
    /// Id of the kernel stack, or negative.
    pub kernel_stack: i32,
}

#[cfg(feature = "user")]
// SAFETY: three 4-byte integers, no padding, every bit pattern valid.
unsafe impl aya::Pod for SampleKey {}
