//! Kernel diagnostics: a line in the daemon's log, through aya-log's ring,
//! for each rare condition the programs otherwise only count (a map full,
//! an operation they do not expect). See `hostscope_common::diag`.
//!
//! Three things keep them cheap:
//! - Each is called only on a rare path (an insert that failed), or, for
//!   checks that would cost something on every event, behind [`enabled`].
//! - [`enabled`] reads a load-time constant. Off (the default), the
//!   verifier sees that every branch into this module is never taken and
//!   removes it: what is left is the load of the constant where it is
//!   tested, on a rare path, except for the check of each completed block
//!   request's operation (one load per completion).
//! - On, each kind is logged at most once a second per CPU ([`due`]), so a
//!   condition that lasts under load costs a clock read per event, not a
//!   ring record.
//!
//! Each line says what happened and where it is counted. The logging
//! itself (aya-log's record encoding) is a fair amount of code, so it
//! lives in functions of its own (BPF-to-BPF calls), outside the programs'
//! hot paths. Two things the verifier or loader need of those functions:
//! - No text fragment of a line (between `{}`s) and no `&str` argument
//!   longer than 128 bytes: LLVM's BPF backend copies up to 128 bytes
//!   inline and calls `memcpy` past that, which the verifier rejects
//!   (pointer arithmetic). Long lines are split into `&str` arguments.
//! - Not `#[cold]`: that moves them to `.text.unlikely`, and aya 0.14
//!   linked a call from there to `memcpy` (in `.text`) to the wrong
//!   function.

use aya_ebpf::{Global, helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::debug;
use hostscope_common::{
    block::MINOR_BITS,
    diag::{INTERVAL_NS, kind},
};

/// The minor number's bits of a disk's dev_t.
const MINOR_MASK: u32 = (1 << MINOR_BITS) - 1;

#[unsafe(no_mangle)]
static DIAG_ENABLED: Global<u32> = Global::new(0);

/// When each kind was last logged on this CPU (monotonic ns).
#[map(name = "DIAG_LAST")]
static DIAG_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::KINDS, 0);

/// Whether the daemon wants diagnostics (`--log-level debug`). A load-time
/// constant: off, the verifier drops every branch it guards.
#[inline(always)]
pub fn enabled() -> bool {
    DIAG_ENABLED.load() != 0
}

/// Whether a line of `kind` may be logged now, on this CPU: not if one was
/// in the last [`INTERVAL_NS`]. Claims the slot when it answers yes.
#[inline(always)]
fn due(kind: u32) -> bool {
    let Some(last) = DIAG_LAST.get_ptr_mut(kind) else {
        return false;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's copy. A program that interrupts another on this
    // CPU may race for the slot: at worst one line more or one fewer.
    unsafe {
        if now.wrapping_sub(*last) < INTERVAL_NS {
            return false;
        }
        *last = now;
    }
    true
}

/// Defines a diagnostic: `pub fn NAME(args)`, which the programs call on
/// the rare path and which does nothing unless diagnostics are on, and the
/// function it calls then, `LOG`, which logs the line at most once a second
/// per CPU. `if CONDITION` (optional) is tested in `LOG`, not in `NAME`:
/// there LLVM cannot move it ahead of the [`enabled`] test, where the
/// verifier could not remove it.
macro_rules! diagnostic {
    (
        $(#[$doc:meta])*
        $name:ident => $log:ident($($arg:ident: $ty:ty),*) $(if $condition:expr)?,
        kind: $kind:expr,
        target: $target:literal,
        $($line:tt)+
    ) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name($($arg: $ty),*) {
            if enabled() {
                $log($($arg),*);
            }
        }

        #[inline(never)]
        fn $log($($arg: $ty),*) {
            if $($condition &&)? due($kind) {
                debug!(&(), target: $target, $($line)+);
            }
        }
    };
}

diagnostic! {
    /// A request was issued while `BLOCK_START` was full (`err` from the insert).
    block_start_full => log_block_start_full(err: i32),
    kind: kind::BLOCK_START_FULL,
    target: "block",
    "{} is full (insert error {}): block requests issued now are not timed, only \
     counted in {}; raise --block-max-inflight",
    "BLOCK_START",
    err,
    "hostscope_block_io_dropped_total"
}

diagnostic! {
    /// A dropped request could not be counted under its disk and operation.
    block_dropped_unkeyed => log_block_dropped_unkeyed(),
    kind: kind::BLOCK_DROPPED_UNKEYED,
    target: "block",
    "a block request's disk and operation could not be read, or {} had no room \
     for them: counted under device=\"unknown\" in {}",
    "BLOCK_DROPPED",
    "hostscope_block_io_dropped_total"
}

diagnostic! {
    /// A completed request's latency had nowhere to go: no room for a new
    /// (disk, operation) histogram.
    block_latency_lost => log_block_latency_lost(dev: u32, op: u32),
    kind: kind::BLOCK_LATENCY_LOST,
    target: "block",
    "{} has no room for disk {}:{} operation {}: its latencies are lost, counted \
     under device=\"unknown\" in {}",
    "BLOCK_LATENCY",
    dev >> MINOR_BITS,
    dev & MINOR_MASK,
    op,
    "hostscope_block_io_dropped_total"
}

/// The operations the block collector labels by name (read, write, flush,
/// discard); [`block_unexpected_op`] tells about the others.
const BLOCK_NAMED_OPS: u32 = 4;

diagnostic! {
    /// A request completed with an operation outside [`BLOCK_NAMED_OPS`].
    /// Called on every completion: off, what is left of it is the load of
    /// [`enabled`]'s constant.
    block_unexpected_op => log_block_unexpected_op(dev: u32, op: u32) if op >= BLOCK_NAMED_OPS,
    kind: kind::BLOCK_UNEXPECTED_OP,
    target: "block",
    "unexpected block operation {} (REQ_OP_*) on disk {}:{}: measured under op=\"other\"",
    op,
    dev >> MINOR_BITS,
    dev & MINOR_MASK
}

diagnostic! {
    /// A connect started while `TCP_CONNECT_START` was full (`err` from the insert).
    tcp_connect_start_full => log_tcp_connect_start_full(err: i32),
    kind: kind::TCP_CONNECT_START_FULL,
    target: "tcp",
    "{} is full (insert error {}): connects started now are not timed, only \
     counted in {}; {}",
    "TCP_CONNECT_START",
    err,
    "hostscope_tcp_connect_dropped_total",
    "more connects wait for an answer than the table holds"
}

diagnostic! {
    /// A cgroup had no room in `CGROUP_ADMITTED`; `slot` is the overflow slot
    /// of the program that saw it.
    cgroup_admitted_full => log_cgroup_admitted_full(slot: u32),
    kind: kind::CGROUP_ADMITTED_FULL,
    target: "cgroup",
    "{} is full: events of cgroups beyond --cgroup-max go to cgroup=\"other\", \
     counted in {} (overflow slot {})",
    "CGROUP_ADMITTED",
    "hostscope_cgroup_overflow_total",
    slot
}

diagnostic! {
    /// A per-cgroup map had room neither for the cgroup's series nor for
    /// "other": the event is lost.
    cgroup_series_full => log_cgroup_series_full(),
    kind: kind::CGROUP_SERIES_FULL,
    target: "cgroup",
    "a per-cgroup map is full, cgroup=\"other\" included: this event is lost"
}

diagnostic! {
    /// `bpf_get_stackid` failed with `err` (other than "no user stack").
    profile_stack => log_profile_stack(err: i32),
    kind: kind::PROFILE_STACK,
    target: "profile",
    "{}: no stack id (error {}; -17: a hash collision, -12: the map is full): {}",
    "PROFILE_STACKS",
    err,
    "the sample's stack is lost, counted in the profile's dropped samples"
}

diagnostic! {
    /// `PROFILE_COUNTS` had no room for a new stack.
    profile_counts_full => log_profile_counts_full(),
    kind: kind::PROFILE_COUNTS_FULL,
    target: "profile",
    "{} is full: samples of new stacks are lost, counted in the profile's dropped \
     samples; {}",
    "PROFILE_COUNTS",
    "a shorter capture, or a pid or cgroup filter, helps"
}

diagnostic! {
    /// The user-stack ring was full: the stack is walked by frame pointers.
    profile_ring_full => log_profile_ring_full(),
    kind: kind::PROFILE_RING_FULL,
    target: "profile",
    "{} ring is full: user stacks are walked by frame pointers instead, {}; {}",
    "PROFILE_USER_STACKS",
    "so stacks of code built without them come out truncated",
    "a lower frequency helps"
}

diagnostic! {
    /// Task storage refused a slot for a task that blocks.
    offcpu_storage => log_offcpu_storage(),
    kind: kind::OFFCPU_STORAGE,
    target: "profile",
    "{}: task storage refused (out of memory, or another BPF program using task \
     storage on this CPU): {}",
    "OFFCPU_START",
    "this blocked time is lost, counted in the profile's dropped samples"
}
