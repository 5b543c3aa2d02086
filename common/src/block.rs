//! Layout of the block I/O collector's maps and load-time constants.

/// Per-CPU hash map: [`BlockKey`] -> [`crate::histogram::Histogram`].
pub const BLOCK_LATENCY_MAP: &str = "BLOCK_LATENCY";
/// Array of [`BlockSlot`]s, `--block-max-inflight` of them: the start time
/// of a request in flight, in the slot its `struct request *` hashes to.
pub const BLOCK_START_SLOTS_MAP: &str = "BLOCK_START_SLOTS";
/// Hash map: `struct request *` -> [`BlockStart`], sized by
/// `--block-max-inflight`: requests whose slot was taken by another.
pub const BLOCK_START_MAP: &str = "BLOCK_START";
/// Array of one `u64`: the entries in [`BLOCK_START_MAP`], so that the
/// programs look there only when it holds something.
pub const BLOCK_START_SPILLED_MAP: &str = "BLOCK_START_SPILLED";
/// Hash map: [`crate::cgroup::CgroupKey`] (disk, operation) ->
/// [`crate::histogram::Histogram`], per submitting cgroup (`--by-cgroup`),
/// updated atomically.
pub const BLOCK_LATENCY_BY_CGROUP_MAP: &str = "BLOCK_LATENCY_BY_CGROUP";
/// Per-CPU hash map: [`BlockKey`] -> `u64`, requests completed without a
/// latency because a map was full when they were issued.
pub const BLOCK_DROPPED_MAP: &str = "BLOCK_DROPPED";
/// Per-CPU array, one `u64`: dropped requests that could not be counted
/// under their disk either (their disk or the dropped map was full).
pub const BLOCK_DROPPED_UNKEYED_MAP: &str = "BLOCK_DROPPED_UNKEYED";
/// Its slots: one counted at issue, one at completion.
pub const BLOCK_DROPPED_UNKEYED_SLOTS: u32 = 2;

/// Distinct (disk, operation) histograms the kernel keeps at most.
pub const BLOCK_LATENCY_ENTRIES: u32 = 1024;
/// Requests in flight that can be timed at once. blk-mq reuses a fixed set
/// of preallocated requests (one per tag), so this bounds all devices'
/// queue depths together, as in libbpf-tools' biolatency.
pub const BLOCK_START_ENTRIES: u32 = 10_240;

/// The programs, paired with the BTF tracepoints they attach to.
pub const BLOCK_PROGRAMS: [(&str, &str); 3] = [
    ("block_rq_issue", "block_rq_issue"),
    ("block_rq_complete", "block_rq_complete"),
    ("block_rq_requeue", "block_rq_requeue"),
];

/// The `issued_ns` a start-map entry holds for a request that was issued
/// while the map was full, counted as dropped then, and requeued: its next
/// issue must neither time it nor count it again.
pub const BLOCK_UNTIMED: u64 = u64::MAX;

/// The slot of a request among `slots`, from the low 32 bits of its address
/// (all the verifier lets a program compute with). Requests are cache-line
/// aligned, so the low 6 bits carry nothing; the rest are mixed by
/// Fibonacci hashing, and the top bits of the mix scaled to `slots` (so
/// any count works, not only powers of two).
#[inline(always)]
pub const fn slot_index(address_bits: u32, slots: u32) -> u32 {
    let mixed = (address_bits >> 6).wrapping_mul(0x9e37_79b9);
    ((mixed as u64 * slots as u64) >> 32) as u32
}

/// The load-time constant that holds the slot count.
pub const START_SLOTS_GLOBAL: &str = "BLOCK_START_SLOTS_LEN";

/// A direct-mapped start slot: free while `request` is 0. A program claims
/// it with a compare-and-swap of `request` and frees it the same way, so
/// two CPUs never time two requests in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSlot {
    /// The `struct request *` timed here, or 0.
    pub request: u64,
    /// Monotonic nanoseconds at its (last) issue.
    pub issued_ns: u64,
    /// The cgroup of the task that issued it (`--by-cgroup`), else 0.
    pub cgroup: u64,
    /// Pads a slot to 32 bytes, so that none straddles two cache lines.
    pub _reserved: u64,
}

/// A start-map entry: when a request was issued, and by which cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStart {
    /// Monotonic nanoseconds, or [`BLOCK_UNTIMED`].
    pub issued_ns: u64,
    /// The cgroup of the task that issued it (`--by-cgroup`), else 0.
    pub cgroup: u64,
}

/// Names of the load-time constants: byte offsets of the kernel fields the
/// completion program reads, found in the kernel's BTF by the daemon.
pub mod offsets {
    /// `struct request.q`
    pub const REQUEST_Q: &str = "BLOCK_OFF_REQUEST_Q";
    /// `struct request.cmd_flags`
    pub const REQUEST_CMD_FLAGS: &str = "BLOCK_OFF_REQUEST_CMD_FLAGS";
    /// `struct request.state` (`enum mq_rq_state`; 0 is `MQ_RQ_IDLE`)
    pub const REQUEST_STATE: &str = "BLOCK_OFF_REQUEST_STATE";
    /// `struct request_queue.disk`
    pub const QUEUE_DISK: &str = "BLOCK_OFF_QUEUE_DISK";
    /// `struct gendisk.major`, followed by `first_minor`.
    pub const DISK_MAJOR: &str = "BLOCK_OFF_DISK_MAJOR";
}

/// Which histogram a completed request lands in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The whole disk, `(major << 20) | first_minor` as the kernel's dev_t.
    pub dev: u32,
    /// `cmd_flags & REQ_OP_MASK`: 0 read, 1 write, 2 flush, 3 discard, ...
    pub op: u32,
}

#[cfg(feature = "user")]
// SAFETY: two u32s, no padding, every bit pattern valid.
unsafe impl aya::Pod for BlockKey {}

/// `REQ_OP_MASK`: the low 8 bits of `cmd_flags` are the operation.
pub const REQ_OP_MASK: u32 = 0xff;

/// The kernel's dev_t split: 12 bits of major above 20 bits of minor.
pub const MINOR_BITS: u32 = 20;

/// The label for an operation code. Everything past the four that matter
/// for latency shares one label, so cardinality stays bounded.
pub const fn op_name(op: u32) -> &'static str {
    match op {
        0 => "read",
        1 => "write",
        2 => "flush",
        3 => "discard",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_index_stays_below_the_slot_count() {
        for slots in [1, 2, 3, 32, 5000, 10_240, 1 << 24] {
            for bits in [0, 63, 64, 0x8000_0000, u32::MAX, 0xdead_beef] {
                assert!(slot_index(bits, slots) < slots, "{bits:#x} in {slots}");
            }
        }
    }

    /// blk-mq allocates a queue's requests back to back in pages, a few
    /// hundred bytes apart (the request and the driver's data, cache-line
    /// aligned): consecutive requests must spread over the slots rather
    /// than pile into a few.
    #[test]
    fn requests_laid_out_back_to_back_spread_over_the_slots() {
        for stride in [320u32, 384, 448, 512, 640] {
            let slots = 10_240;
            let requests = 1024;
            let base = 0x9a40_1000u32;
            let mut used = std::collections::HashSet::new();
            for i in 0..requests {
                used.insert(slot_index(base.wrapping_add(i * stride), slots));
            }
            // Random placement would leave about 5% colliding here.
            assert!(
                used.len() * 100 >= requests as usize * 90,
                "stride {stride}: {} distinct slots for {requests} requests",
                used.len()
            );
        }
    }
}
