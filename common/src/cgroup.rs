//! Per-cgroup attribution (`--by-cgroup`): the maps, keys and load-time
//! constants every collector shares.
//!
//! A collector's per-cgroup histograms and counters are keyed by
//! [`CgroupKey`]. The kernel gives a cgroup a series of its own the first
//! time it sees the cgroup, if [`CGROUP_ADMITTED_MAP`] has room (its size is
//! `--cgroup-max`) and the daemon has not excluded the cgroup; otherwise its
//! events go to [`OTHER_CGROUP`] and, when the cap was the reason, to the
//! overflow counter.

/// Hash map: cgroup id -> `u8`, the cgroups that have series of their own.
/// Sized by `--cgroup-max`; the daemon removes cgroups that are gone.
pub const CGROUP_ADMITTED_MAP: &str = "CGROUP_ADMITTED";
/// LRU hash map: cgroup id -> `u8`, cgroups whose path `--cgroup-match`
/// rejects: their events go to [`OTHER_CGROUP`] without taking a place.
pub const CGROUP_EXCLUDED_MAP: &str = "CGROUP_EXCLUDED";
/// Excluded cgroups remembered at once. One evicted is admitted again at its
/// next event and excluded again at the daemon's next sweep: nothing is lost.
pub const CGROUP_EXCLUDED_ENTRIES: u32 = 16_384;
/// Per-CPU array of `u64`: events counted under [`OTHER_CGROUP`] because
/// [`CGROUP_ADMITTED_MAP`] was full, one slot per recording program (one
/// program can interrupt another on a CPU, and a per-CPU `+= 1` is not
/// atomic).
pub const CGROUP_OVERFLOW_MAP: &str = "CGROUP_OVERFLOW";

/// [`CGROUP_OVERFLOW_MAP`] slots, each written by one program.
pub mod overflow_slot {
    /// `sched_switch`.
    pub const SCHED: u32 = 0;
    /// `block_rq_complete`.
    pub const BLOCK: u32 = 1;
    /// `tcp_probe`.
    pub const TCP_PROBE: u32 = 2;
    /// `inet_sock_set_state`.
    pub const TCP_STATE: u32 = 3;
    /// `tcp_retransmit_skb`.
    pub const TCP_RETRANSMIT: u32 = 4;
    /// Number of slots.
    pub const SLOTS: u32 = 5;
}

/// Which collector each overflow slot belongs to, by collector name.
pub const OVERFLOW_SLOT_COLLECTORS: [&str; overflow_slot::SLOTS as usize] =
    ["sched", "block", "tcp", "tcp", "tcp"];

/// The key of the `cgroup="other"` series. No cgroup has id 0 (the root's is 1).
pub const OTHER_CGROUP: u64 = 0;

/// `--cgroup-max`'s default.
pub const DEFAULT_CGROUP_MAX: u32 = 256;
/// `--cgroup-max`'s largest value: the maps below grow with it.
pub const MAX_CGROUP_MAX: u32 = 65_536;

/// Per-cgroup series kept for the block collector, per cgroup on average:
/// a cgroup that reads and writes two disks uses four.
pub const BLOCK_SERIES_PER_CGROUP: u32 = 4;
/// Per-cgroup histograms of the TCP collector: RTT and connect.
pub const TCP_HISTOGRAMS_PER_CGROUP: u32 = 2;
/// Per-cgroup counters of the TCP collector: connect failures, retransmits.
pub const TCP_COUNTERS_PER_CGROUP: u32 = 2;

/// Entries of a per-cgroup map holding `per_cgroup` series per cgroup, for
/// `cgroup_max` cgroups and [`OTHER_CGROUP`].
pub const fn entries(cgroup_max: u32, per_cgroup: u32) -> u32 {
    cgroup_max.saturating_add(1).saturating_mul(per_cgroup)
}

/// The key of a per-cgroup series.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupKey {
    /// The cgroup v2 id (its directory's inode number), or [`OTHER_CGROUP`].
    pub cgroup: u64,
    /// The disk, as in [`crate::block::BlockKey`]; 0 for other collectors.
    pub dev: u32,
    /// The operation (block), the histogram or counter slot (tcp), or 0.
    pub slot: u32,
}

#[cfg(feature = "user")]
// SAFETY: a u64 and two u32s, no padding, every bit pattern valid.
unsafe impl aya::Pod for CgroupKey {}

/// Names of the load-time constants.
pub mod globals {
    /// Nonzero when the daemon runs with `--by-cgroup`.
    pub const ENABLED: &str = "CGROUP_ENABLED";
    /// `struct task_struct.cgroups` (a `struct css_set *`).
    pub const TASK_CGROUPS: &str = "CGROUP_OFF_TASK_CGROUPS";
    /// `struct css_set.dfl_cgrp` (the task's cgroup v2 `struct cgroup *`).
    pub const CSS_SET_DFL_CGRP: &str = "CGROUP_OFF_CSS_SET_DFL_CGRP";
    /// `struct cgroup.kn` (its `struct kernfs_node *`).
    pub const CGROUP_KN: &str = "CGROUP_OFF_CGROUP_KN";
    /// `struct kernfs_node.id` (a `u64`: the cgroup id).
    pub const KERNFS_NODE_ID: &str = "CGROUP_OFF_KERNFS_NODE_ID";
    /// `struct sock.sk_cgrp_data.cgroup` (the socket's `struct cgroup *`).
    pub const SOCK_CGROUP: &str = "CGROUP_OFF_SOCK_CGROUP";
}

/// The kernel's overhead per hash-map entry (`struct htab_elem` and the
/// rounding of key and value), close enough for a memory estimate.
const ENTRY_OVERHEAD: u64 = 48;

/// Bytes of one hash-map entry holding a `key`-byte key and a `value`-byte value.
const fn entry_bytes(key: u64, value: u64) -> u64 {
    ENTRY_OVERHEAD + key.next_multiple_of(8) + value.next_multiple_of(8)
}

/// Kernel memory the per-cgroup maps take with `--cgroup-max cgroup_max`
/// on a host with `cpus` CPUs, in bytes. The maps are preallocated, so this
/// is what they take from the start, used or not. Histograms are shared
/// between CPUs (atomic adds), so only the kernel's spare entry per CPU and
/// the overflow counters grow with the CPU count.
pub const fn map_bytes(cgroup_max: u32, cpus: u32) -> u64 {
    let histogram = core::mem::size_of::<crate::histogram::Histogram>() as u64;
    let key = core::mem::size_of::<CgroupKey>() as u64;
    let cpus = cpus as u64;
    // (entries, entry bytes) of each hash map.
    let maps: [(u64, u64); 6] = [
        (cgroup_max as u64, entry_bytes(8, 1)),
        (CGROUP_EXCLUDED_ENTRIES as u64, entry_bytes(8, 1)),
        (entries(cgroup_max, 1) as u64, entry_bytes(key, histogram)),
        (
            entries(cgroup_max, BLOCK_SERIES_PER_CGROUP) as u64,
            entry_bytes(key, histogram),
        ),
        (
            entries(cgroup_max, TCP_HISTOGRAMS_PER_CGROUP) as u64,
            entry_bytes(key, histogram),
        ),
        (
            entries(cgroup_max, TCP_COUNTERS_PER_CGROUP) as u64,
            entry_bytes(key, 8),
        ),
    ];
    let mut total = overflow_slot::SLOTS as u64 * 8 * cpus;
    let mut i = 0;
    while i < maps.len() {
        // Plain hash maps keep one spare entry per CPU for updates.
        total += (maps[i].0 + cpus) * maps[i].1;
        i += 1;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_memory_grows_with_cgroups_not_cpus() {
        let small = map_bytes(256, 2);
        let many_cpus = map_bytes(256, 128);
        let many_cgroups = map_bytes(1_000, 2);
        assert!(small > 1 << 20, "{small}");
        assert!(many_cpus < small + small / 4, "{many_cpus} vs {small}");
        assert!(many_cgroups > 2 * small, "{many_cgroups} vs {small}");
    }
}
