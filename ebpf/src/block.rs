//! Block I/O latency: from the moment a request is issued to the device
//! driver (`block_rq_issue`) to its completion (`block_rq_complete`), per
//! disk and operation.
//!
//! The start time is keyed by the `struct request` pointer: exact under
//! concurrency and merges (a merged bio joins a request; the request is
//! timed once), and a requeued request simply restarts at its next issue.
//! blk-mq preallocates requests per tag and reuses them, so an entry left by
//! a request whose completion was never seen is overwritten at the tag's next
//! use rather than kept forever. At completion, the disk and operation are
//! read from the request through field offsets the daemon found in the
//! kernel's BTF (no CO-RE in Rust eBPF yet).

use crate::maps::{count, read_at};
use aya_ebpf::{
    Global,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use hostscope_common::{
    block::{BLOCK_LATENCY_ENTRIES, BLOCK_START_ENTRIES, BlockKey, MINOR_BITS, REQ_OP_MASK},
    histogram::Histogram,
};

#[unsafe(no_mangle)]
static BLOCK_OFF_REQUEST_Q: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BLOCK_OFF_REQUEST_CMD_FLAGS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BLOCK_OFF_QUEUE_DISK: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BLOCK_OFF_DISK_MAJOR: Global<u32> = Global::new(0);

/// Issue time (monotonic ns) by `struct request *`.
#[map(name = "BLOCK_START")]
static BLOCK_START: HashMap<u64, u64> = HashMap::with_max_entries(BLOCK_START_ENTRIES, 0);

/// The histograms, one per (disk, operation), one copy per CPU.
#[map(name = "BLOCK_LATENCY")]
static BLOCK_LATENCY: PerCpuHashMap<BlockKey, Histogram> =
    PerCpuHashMap::with_max_entries(BLOCK_LATENCY_ENTRIES, 0);

/// An all-zero histogram to insert new keys from: a histogram is larger than
/// the 512-byte BPF stack, so it cannot be built there.
#[map(name = "BLOCK_ZERO")]
static BLOCK_ZERO: Array<Histogram> = Array::with_max_entries(1, 0);

/// Requests not measured because a map was full.
#[map(name = "BLOCK_DROPPED")]
static BLOCK_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `block_rq_issue(struct request *rq)`
#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if BLOCK_START.insert(rq, now, 0).is_err() {
        count(&BLOCK_DROPPED, 0);
    }
    0
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`
#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    // SAFETY: the value is copied out at once.
    let Some(&issued) = (unsafe { BLOCK_START.get(rq) }) else {
        return 0;
    };
    let _ = BLOCK_START.remove(rq);
    // SAFETY: the helper has no preconditions.
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(issued);
    let Some(key) = request_key(rq) else {
        return 0;
    };
    let histogram = match BLOCK_LATENCY.get_ptr_mut(key) {
        Some(histogram) => histogram,
        None => {
            let Some(zero) = BLOCK_ZERO.get(0) else {
                return 0;
            };
            // Another CPU may insert the same key first: that is fine, the
            // lookup below then finds its entry.
            let _ = BLOCK_LATENCY.insert(key, zero, 0);
            match BLOCK_LATENCY.get_ptr_mut(key) {
                Some(histogram) => histogram,
                None => {
                    count(&BLOCK_DROPPED, 0);
                    return 0;
                }
            }
        }
    };
    // SAFETY: this CPU's copy; BPF programs do not migrate mid-run.
    unsafe { crate::histogram::record(&mut *histogram, latency) };
    0
}

/// The disk (as `(major << 20) | first_minor`) and operation of a request.
#[inline(always)]
fn request_key(rq: u64) -> Option<BlockKey> {
    let cmd_flags: u32 = read_at(rq, BLOCK_OFF_REQUEST_CMD_FLAGS.load())?;
    let queue: u64 = read_at(rq, BLOCK_OFF_REQUEST_Q.load())?;
    let disk: u64 = read_at(queue, BLOCK_OFF_QUEUE_DISK.load())?;
    // `major` and `first_minor` are adjacent ints: one read (checked by the daemon).
    let major_minor: [u32; 2] = read_at(disk, BLOCK_OFF_DISK_MAJOR.load())?;
    Some(BlockKey {
        dev: (major_minor[0] << MINOR_BITS) | major_minor[1],
        op: cmd_flags & REQ_OP_MASK,
    })
}
