//! Kernel diagnostics: rare conditions (a map full, an operation the
//! programs do not expect) that the kernel programs log through aya-log's
//! ring (`AYA_LOGS`) when the daemon runs with `--log-level debug`.
//!
//! Off, a load-time constant turns every diagnostic into dead code that
//! the verifier removes, and the daemon does not read the ring.

/// Name of the load-time constant (`u32`): nonzero when the kernel programs
/// log their diagnostics.
pub const ENABLED_GLOBAL: &str = "DIAG_ENABLED";

/// Per-CPU array of `u64`: when each kind of diagnostic was last logged on
/// this CPU (monotonic ns), indexed by [`kind`].
pub const DIAG_LAST_MAP: &str = "DIAG_LAST";

/// aya-log's ring buffer, which every logging program writes to.
pub const AYA_LOGS_MAP: &str = "AYA_LOGS";

/// The shortest time between two lines of one kind on one CPU: a condition
/// that lasts (a full map under load) is said once a second per CPU, not
/// once per event.
pub const INTERVAL_NS: u64 = 1_000_000_000;

/// The target the daemon logs kernel diagnostics under; `--log-level`
/// must let debug events of this target through for them to be on.
pub const LOG_TARGET: &str = "hostscope::kernel";

/// Slots of [`DIAG_LAST_MAP`]: one per kind of diagnostic, so that one
/// condition logging often does not hide another.
pub mod kind {
    /// `BLOCK_START` full: a request issued untimed.
    pub const BLOCK_START_FULL: u32 = 0;
    /// A dropped request that could not be counted under its disk.
    pub const BLOCK_DROPPED_UNKEYED: u32 = 1;
    /// A completed request whose latency had nowhere to go.
    pub const BLOCK_LATENCY_LOST: u32 = 2;
    /// A request with an operation other than read, write, flush, discard.
    pub const BLOCK_UNEXPECTED_OP: u32 = 3;
    /// `TCP_CONNECT_START` full: a connect started untimed.
    pub const TCP_CONNECT_START_FULL: u32 = 4;
    /// `CGROUP_ADMITTED` full: a new cgroup's events go to "other".
    pub const CGROUP_ADMITTED_FULL: u32 = 5;
    /// A per-cgroup map full, "other" included: an event lost.
    pub const CGROUP_SERIES_FULL: u32 = 6;
    /// A stack id could not be had (stack map full, or a collision).
    pub const PROFILE_STACK: u32 = 7;
    /// `PROFILE_COUNTS` full: a sample or off-CPU time lost.
    pub const PROFILE_COUNTS_FULL: u32 = 8;
    /// The user-stack ring full: a frame-pointer walk instead of a copy.
    pub const PROFILE_RING_FULL: u32 = 9;
    /// Task storage refused for a blocking task: its off-CPU time is lost.
    pub const OFFCPU_STORAGE: u32 = 10;
    /// Number of kinds.
    pub const KINDS: u32 = 11;
}
