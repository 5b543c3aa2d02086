//! Block I/O latency: from the moment a request is issued to the device
//! driver (`block_rq_issue`) to its completion (`block_rq_complete`), per
//! disk and operation.
//!
//! The start time is kept by the `struct request` pointer: exact under
//! concurrency and merges (a merged bio joins a request; the request is
//! timed once). It goes in the slot of [`BLOCK_START_SLOTS`] the pointer
//! hashes to, claimed and freed by compare-and-swap; only when another
//! request in flight holds that slot does it go to the hash map
//! [`BLOCK_START`] (the spill map). The slots halved the programs' cost
//! against a hash map alone (see BENCHMARKS.md). blk-mq preallocates
//! requests per tag and reuses them, so an entry left by a request whose
//! completion was never seen is overwritten at the tag's next use rather
//! than kept forever. At completion, the disk and operation are read from
//! the request through field offsets the daemon found in the kernel's BTF
//! (no CO-RE in Rust eBPF yet).
//!
//! Every request is either measured or counted as dropped, once:
//! - A request issued while its slot is taken and the spill map is full is
//!   counted as dropped at that issue, under its disk and operation.
//! - A driver may bounce a started request back (`block_rq_requeue`) and
//!   the block layer issues it again. A timed request keeps its slot or
//!   entry and is timed from its last issue. An untimed one gets a
//!   [`BLOCK_UNTIMED`] entry in the spill map, so that its next issue
//!   neither times it nor counts it twice (an issue looks in the spill map
//!   first whenever it holds anything).
//! - A request can trace more than one completion (a partial completion, or
//!   the data part and then the end of a flush sequence): the first one with
//!   an entry measures it, the later ones find none.
//!
//! With `--by-cgroup`, the cgroup of the task running at issue (the one that
//! submitted the request, or the kernel thread that dispatched it) is kept
//! in the start entry, and the latency goes to that cgroup's histogram.

use crate::{
    cgroup, diag,
    maps::{add, address_bits, compare_exchange, count, load_at},
};
use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use hostscope_common::{
    block::{
        BLOCK_DROPPED_UNKEYED_SLOTS, BLOCK_LATENCY_ENTRIES, BLOCK_START_ENTRIES, BLOCK_UNTIMED,
        BlockKey, BlockSlot, BlockStart, MINOR_BITS, REQ_OP_MASK, slot_index,
    },
    cgroup::{CgroupKey, overflow_slot},
    histogram::Histogram,
};

#[unsafe(no_mangle)]
static BLOCK_OFF_REQUEST_Q: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BLOCK_OFF_REQUEST_CMD_FLAGS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BLOCK_OFF_REQUEST_STATE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BLOCK_OFF_QUEUE_DISK: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BLOCK_OFF_DISK_MAJOR: Global<u32> = Global::new(0);

/// Issue time and issuing cgroup of the requests in flight, each in the
/// slot its `struct request *` hashes to; the daemon sizes it
/// (`--block-max-inflight`). Array lookups are inlined by
/// the verifier: a slot costs a few instructions and one compare-and-swap
/// where a hash map insert, lookup and delete cost three helper calls, a
/// bucket lock and a free-list pop and push (which move between CPUs when
/// requests complete on another CPU than they were issued on).
/// Memory-mappable, for the daemon to count the slots in use.
#[map(name = "BLOCK_START_SLOTS")]
static BLOCK_START_SLOTS: Array<BlockSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// `BLOCK_START_SLOTS`' length, set by the daemon.
#[unsafe(no_mangle)]
static BLOCK_START_SLOTS_LEN: Global<u32> = Global::new(1);

/// Issue time (monotonic ns, or [`BLOCK_UNTIMED`]) and issuing cgroup by
/// `struct request *`, for requests whose slot another request holds (and
/// the marks of untimed requeued ones). The daemon sizes it
/// (`--block-max-inflight`).
#[map(name = "BLOCK_START")]
static BLOCK_START: HashMap<u64, BlockStart> = HashMap::with_max_entries(BLOCK_START_ENTRIES, 0);

/// The entries in [`BLOCK_START`], so that requests in slots skip it.
#[map(name = "BLOCK_START_SPILLED")]
static BLOCK_START_SPILLED: Array<u64> = Array::with_max_entries(1, 0);

/// The histograms, one per (disk, operation), one copy per CPU. Not
/// preallocated: a preallocated map would hold every possible entry on
/// every CPU (1024 x 1 KiB x 128 CPUs = 124 MiB on a large host) for the
/// few (disk, operation) pairs a host has; an entry is created once per
/// pair, and lookups cost the same.
#[map(name = "BLOCK_LATENCY")]
static BLOCK_LATENCY: PerCpuHashMap<BlockKey, Histogram> =
    PerCpuHashMap::with_max_entries(BLOCK_LATENCY_ENTRIES, BPF_F_NO_PREALLOC);

/// The histograms per (cgroup, disk, operation) (`--by-cgroup`); the daemon
/// sizes it.
#[map(name = "BLOCK_LATENCY_BY_CGROUP")]
static BLOCK_LATENCY_BY_CGROUP: HashMap<CgroupKey, Histogram> = HashMap::with_max_entries(1, 0);

/// Requests not measured because a map was full, per (disk, operation).
#[map(name = "BLOCK_DROPPED")]
static BLOCK_DROPPED: PerCpuHashMap<BlockKey, u64> =
    PerCpuHashMap::with_max_entries(BLOCK_LATENCY_ENTRIES, 0);

/// Dropped requests that could not be counted under their disk: slot 0
/// counted at issue, slot 1 at completion. Each program has its own slot
/// (and only the issue program writes [`BLOCK_DROPPED`]) because one can
/// interrupt the other on a CPU, and a per-CPU `+= 1` is not atomic.
#[map(name = "BLOCK_DROPPED_UNKEYED")]
static BLOCK_DROPPED_UNKEYED: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(BLOCK_DROPPED_UNKEYED_SLOTS, 0);

/// [`BLOCK_DROPPED_UNKEYED`] slots.
const UNKEYED_AT_ISSUE: u32 = 0;
const UNKEYED_AT_COMPLETION: u32 = 1;

/// `block_rq_issue(struct request *rq)`
#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue(ctx: BtfTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let cgroup = if cgroup::enabled() {
        cgroup::of_current()
    } else {
        0
    };
    let start = BlockStart {
        issued_ns: now,
        cgroup,
    };
    // A request already in the spill map (requeued, or stale) stays there.
    if let Some(entry) = spilled_entry(rq) {
        // SAFETY: a map value; no other program touches this request's
        // entry until this request completes.
        unsafe {
            if (*entry).issued_ns != BLOCK_UNTIMED {
                *entry = start;
            }
        }
        return 0;
    }
    if let Some(slot) = slot_of(rq) {
        // SAFETY: a map value, 8-byte aligned.
        let holder = unsafe { compare_exchange(&raw mut (*slot).request, 0, rq) };
        // Claimed now, or this request's own (requeued and issued again,
        // or stale): either way it is timed from this issue.
        if holder == 0 || holder == rq {
            // SAFETY: the slot is this request's until its completion
            // frees it; no other CPU writes it meanwhile.
            unsafe {
                (*slot).issued_ns = now;
                (*slot).cgroup = cgroup;
            }
            return 0;
        }
    }
    // The slot holds another request in flight.
    match BLOCK_START.insert(rq, start, u64::from(BPF_NOEXIST)) {
        Ok(()) => add_spilled(1),
        Err(err) => {
            diag::block_start_full(err);
            count_dropped_at_issue(rq);
        }
    }
    0
}

/// `block_rq_requeue(struct request *rq)`
#[btf_tracepoint(function = "block_rq_requeue")]
pub fn block_rq_requeue(ctx: BtfTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    // A request bounced before it was started was never issued: nothing to do.
    let state: u32 = load_at(rq, BLOCK_OFF_REQUEST_STATE.load());
    if state == 0 {
        return 0;
    }
    // Timed, or marked already.
    if own_slot(rq).is_some() || spilled_entry(rq).is_some() {
        return 0;
    }
    // Issued untimed: already counted as dropped. If there is no room for
    // the mark, its next issue may count it a second time.
    let untimed = BlockStart {
        issued_ns: BLOCK_UNTIMED,
        cgroup: 0,
    };
    if BLOCK_START
        .insert(rq, untimed, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        add_spilled(1);
    }
    0
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`
#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let Some(start) = take_start(rq) else {
        return 0;
    };
    if start.issued_ns == BLOCK_UNTIMED {
        return 0;
    }
    // SAFETY: the helper has no preconditions.
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.issued_ns);
    let Some(key) = request_key(rq) else {
        diag::block_dropped_unkeyed();
        count(&BLOCK_DROPPED_UNKEYED, UNKEYED_AT_COMPLETION);
        return 0;
    };
    diag::block_unexpected_op(key.dev, key.op);
    if cgroup::enabled() {
        let key = CgroupKey {
            cgroup: cgroup::series_of(start.cgroup, overflow_slot::BLOCK),
            dev: key.dev,
            slot: key.op,
        };
        if !cgroup::record(&BLOCK_LATENCY_BY_CGROUP, key, latency) {
            count(&BLOCK_DROPPED_UNKEYED, UNKEYED_AT_COMPLETION);
        }
        return 0;
    }
    let histogram = match BLOCK_LATENCY.get_ptr_mut(key) {
        Some(histogram) => histogram,
        None => {
            let Some(zero) = cgroup::HISTOGRAM_ZERO.get(0) else {
                return 0;
            };
            // Another CPU may insert the same key first: that is fine, the
            // lookup below then finds its entry.
            let _ = BLOCK_LATENCY.insert(key, zero, 0);
            match BLOCK_LATENCY.get_ptr_mut(key) {
                Some(histogram) => histogram,
                None => {
                    diag::block_latency_lost(key.dev, key.op);
                    count(&BLOCK_DROPPED_UNKEYED, UNKEYED_AT_COMPLETION);
                    return 0;
                }
            }
        }
    };
    // SAFETY: this CPU's copy; BPF programs do not migrate mid-run.
    unsafe { crate::histogram::record(&mut *histogram, latency) };
    0
}

/// The start of a completing request, taken out of its slot or of the
/// spill map; `None` if it was not timed (issued before the programs were
/// attached, or its first completion already took it).
#[inline(always)]
fn take_start(rq: u64) -> Option<BlockStart> {
    if let Some(slot) = own_slot(rq) {
        // SAFETY: a map value; while it holds this request, only this
        // completion writes it.
        unsafe {
            let start = BlockStart {
                issued_ns: (*slot).issued_ns,
                cgroup: (*slot).cgroup,
            };
            // Atomic, so that the reads above are done before another CPU
            // can claim the slot.
            compare_exchange(&raw mut (*slot).request, rq, 0);
            return Some(start);
        }
    }
    // SAFETY: the value is copied out at once.
    let start = unsafe { *spilled_entry(rq)? };
    if BLOCK_START.remove(rq).is_ok() {
        add_spilled(u64::MAX);
    }
    Some(start)
}

/// The slot `rq` hashes to.
#[inline(always)]
fn slot_of(rq: u64) -> Option<*mut BlockSlot> {
    BLOCK_START_SLOTS.get_ptr_mut(slot_index(address_bits(rq), BLOCK_START_SLOTS_LEN.load()))
}

/// The slot `rq` hashes to, if `rq` holds it.
#[inline(always)]
fn own_slot(rq: u64) -> Option<*mut BlockSlot> {
    // SAFETY: a map value, read once.
    slot_of(rq).filter(|&slot| unsafe { (*slot).request } == rq)
}

/// `rq`'s entry in the spill map; no lookup while the map is empty.
#[inline(always)]
fn spilled_entry(rq: u64) -> Option<*mut BlockStart> {
    if spilled() == 0 {
        return None;
    }
    BLOCK_START.get_ptr_mut(rq)
}

/// Entries in the spill map (read without a lock: an entry is counted
/// before the request it belongs to can complete or be issued again).
#[inline(always)]
fn spilled() -> u64 {
    // SAFETY: a map value, read once.
    BLOCK_START_SPILLED
        .get_ptr(0)
        .map_or(0, |count| unsafe { core::ptr::read_volatile(count) })
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to the spill map's count.
#[inline(always)]
fn add_spilled(delta: u64) {
    if let Some(count) = BLOCK_START_SPILLED.get_ptr_mut(0) {
        // SAFETY: a map value, 8-byte aligned.
        unsafe { add(count, delta) };
    }
}

/// Counts a request issued untimed, under its disk and operation if there
/// is room for them.
#[inline(always)]
fn count_dropped_at_issue(rq: u64) {
    let Some(key) = request_key(rq) else {
        diag::block_dropped_unkeyed();
        count(&BLOCK_DROPPED_UNKEYED, UNKEYED_AT_ISSUE);
        return;
    };
    if BLOCK_DROPPED.get_ptr_mut(key).is_none() {
        // Only this CPU's copy is written: a racing insert from another CPU
        // leaves that CPU's copy alone.
        let _ = BLOCK_DROPPED.insert(key, 0, 0);
    }
    match BLOCK_DROPPED.get_ptr_mut(key) {
        // SAFETY: this CPU's copy, written only by this program, which the
        // kernel never runs nested on one CPU.
        Some(dropped) => unsafe { *dropped += 1 },
        None => {
            diag::block_dropped_unkeyed();
            count(&BLOCK_DROPPED_UNKEYED, UNKEYED_AT_ISSUE);
        }
    }
}

/// The disk (as `(major << 20) | first_minor`) and operation of a request:
/// `rq->cmd_flags`, `rq->q->disk->major` and `first_minor`, read with
/// plain loads (BTF-checked by the verifier) rather than
/// `bpf_probe_read_kernel`, which costs a helper call each.
#[inline(always)]
fn request_key(rq: u64) -> Option<BlockKey> {
    let cmd_flags: u32 = load_at(rq, BLOCK_OFF_REQUEST_CMD_FLAGS.load());
    let queue: u64 = load_at(rq, BLOCK_OFF_REQUEST_Q.load());
    let disk: u64 = load_at(queue, BLOCK_OFF_QUEUE_DISK.load());
    // A faulting load reads zero: no disk.
    if disk == 0 {
        return None;
    }
    // `first_minor` follows `major` (checked by the daemon).
    let major_offset = BLOCK_OFF_DISK_MAJOR.load();
    let major: u32 = load_at(disk, major_offset);
    let first_minor: u32 = load_at(disk, major_offset + 4);
    Some(BlockKey {
        dev: (major << MINOR_BITS) | first_minor,
        op: cmd_flags & REQ_OP_MASK,
    })
}
