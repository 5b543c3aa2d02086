//! Per-cgroup attribution (`--by-cgroup`), shared by every collector: which
//! cgroup an event belongs to, whether that cgroup has a series of its own,
//! and recording into per-cgroup maps.
//!
//! Per-cgroup maps are plain (not per-CPU) hash maps updated with atomic
//! adds, as BCC's tools do: their memory does not grow with the number of
//! CPUs, which matters at hundreds of cgroups on a 128-CPU host, and an
//! atomic add is safe when one program interrupts another on a CPU.

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_cgroup_id,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use hostscope_common::{
    cgroup::{CgroupKey, OTHER_CGROUP, overflow_slot},
    histogram::{BUCKETS, Histogram},
};

use crate::{
    diag,
    maps::{add, count, load_at},
};

#[unsafe(no_mangle)]
static CGROUP_ENABLED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUP_OFF_TASK_CGROUPS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUP_OFF_CSS_SET_DFL_CGRP: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUP_OFF_CGROUP_KN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUP_OFF_KERNFS_NODE_ID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUP_OFF_SOCK_CGROUP: Global<u32> = Global::new(0);

/// Cgroups with series of their own; the daemon sizes it (`--cgroup-max`)
/// and removes the cgroups that are gone.
#[map(name = "CGROUP_ADMITTED")]
static CGROUP_ADMITTED: HashMap<u64, u8> = HashMap::with_max_entries(1, 0);

/// Cgroups the daemon excluded (`--cgroup-match`): counted under "other".
/// The daemon sizes it (the object's size costs nothing when unused).
#[map(name = "CGROUP_EXCLUDED")]
static CGROUP_EXCLUDED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1, 0);

/// Events counted under "other" because [`CGROUP_ADMITTED`] was full.
#[map(name = "CGROUP_OVERFLOW")]
static CGROUP_OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(overflow_slot::SLOTS, 0);

/// An all-zero histogram to insert new keys from: a histogram is larger than
/// the 512-byte BPF stack, so it cannot be built there.
#[map(name = "HISTOGRAM_ZERO")]
pub static HISTOGRAM_ZERO: Array<Histogram> = Array::with_max_entries(1, 0);

/// `EEXIST`, as map updates with `BPF_NOEXIST` return it (negated).
const EEXIST: i32 = 17;

/// Whether the daemon asked for per-cgroup series. A load-time constant: the
/// verifier drops the branches of the mode not in use.
#[inline(always)]
pub fn enabled() -> bool {
    CGROUP_ENABLED.load() != 0
}

/// The cgroup of the running task.
#[inline(always)]
pub fn of_current() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

/// The cgroup v2 id of `task` (a `struct task_struct *` the verifier knows
/// as such): `task->cgroups->dfl_cgrp->kn->id`, or [`OTHER_CGROUP`] if a
/// pointer on the way is null. Plain loads the verifier checks against the
/// kernel's BTF (see [`load_at`]), not a helper call per field.
#[inline(always)]
pub fn of_task(task: u64) -> u64 {
    let css_set: u64 = load_at(task, CGROUP_OFF_TASK_CGROUPS.load());
    if css_set == 0 {
        return OTHER_CGROUP;
    }
    id_of(load_at(css_set, CGROUP_OFF_CSS_SET_DFL_CGRP.load()))
}

/// The cgroup v2 id of socket `sk` (a `struct sock *` the verifier knows as
/// such): the cgroup of the task that created it
/// (`sk->sk_cgrp_data.cgroup->kn->id`), or [`OTHER_CGROUP`].
#[inline(always)]
pub fn of_sock(sk: u64) -> u64 {
    id_of(load_at(sk, CGROUP_OFF_SOCK_CGROUP.load()))
}

/// The id of `struct cgroup *cgroup`.
#[inline(always)]
fn id_of(cgroup: u64) -> u64 {
    if cgroup == 0 {
        return OTHER_CGROUP;
    }
    let kn: u64 = load_at(cgroup, CGROUP_OFF_CGROUP_KN.load());
    if kn == 0 {
        return OTHER_CGROUP;
    }
    match load_at::<u64>(kn, CGROUP_OFF_KERNFS_NODE_ID.load()) {
        0 => OTHER_CGROUP,
        id => id,
    }
}

/// The cgroup whose series `cgroup`'s event goes to: its own, or
/// [`OTHER_CGROUP`] when it is excluded or there is no room for it (then
/// counted in overflow slot `slot`).
#[inline(always)]
pub fn series_of(cgroup: u64, slot: u32) -> u64 {
    if cgroup == OTHER_CGROUP {
        return OTHER_CGROUP;
    }
    // SAFETY: only tested for presence.
    if unsafe { CGROUP_ADMITTED.get(&cgroup) }.is_some() {
        return cgroup;
    }
    // SAFETY: only tested for presence.
    if unsafe { CGROUP_EXCLUDED.get(&cgroup) }.is_some() {
        return OTHER_CGROUP;
    }
    match CGROUP_ADMITTED.insert(&cgroup, &0, u64::from(BPF_NOEXIST)) {
        Ok(()) => cgroup,
        // Another CPU admitted it first.
        Err(err) if err == -EEXIST => cgroup,
        Err(_) => {
            diag::cgroup_admitted_full(slot);
            count(&CGROUP_OVERFLOW, slot);
            OTHER_CGROUP
        }
    }
}

/// Records `value_ns` under `key` in a per-cgroup histogram map, or under
/// the same key with [`OTHER_CGROUP`] if there is no room for `key`.
/// `false` if there was room for neither.
#[inline(always)]
pub fn record(map: &HashMap<CgroupKey, Histogram>, key: CgroupKey, value_ns: u64) -> bool {
    let Some(histogram) = entry(map, key).or_else(|| {
        entry(
            map,
            CgroupKey {
                cgroup: OTHER_CGROUP,
                ..key
            },
        )
    }) else {
        diag::cgroup_series_full();
        return false;
    };
    let index = crate::histogram::bucket(value_ns);
    if index >= BUCKETS {
        return false;
    }
    // SAFETY: `histogram` points into a map value, which stays allocated
    // while the program runs; the fields are u64s, aligned as AtomicU64.
    unsafe {
        add(&raw mut (*histogram).buckets[index], 1);
        add(&raw mut (*histogram).sum_ns, value_ns);
        add(&raw mut (*histogram).count, 1);
    }
    true
}

/// Adds one under `key` in a per-cgroup counter map, or under the same key
/// with [`OTHER_CGROUP`] if there is no room for `key`.
#[inline(always)]
pub fn count_in(map: &HashMap<CgroupKey, u64>, key: CgroupKey) {
    let mut counter = map.get_ptr_mut(&key);
    if counter.is_none() {
        let _ = map.insert(&key, &0, u64::from(BPF_NOEXIST));
        counter = map.get_ptr_mut(&key);
    }
    if counter.is_none() {
        let other = CgroupKey {
            cgroup: OTHER_CGROUP,
            ..key
        };
        let _ = map.insert(&other, &0, u64::from(BPF_NOEXIST));
        counter = map.get_ptr_mut(&other);
    }
    match counter {
        // SAFETY: as in `record`.
        Some(counter) => unsafe { add(counter, 1) },
        None => diag::cgroup_series_full(),
    }
}

/// The histogram under `key`, inserted empty if it is not there yet.
#[inline(always)]
fn entry(map: &HashMap<CgroupKey, Histogram>, key: CgroupKey) -> Option<*mut Histogram> {
    if let Some(histogram) = map.get_ptr_mut(&key) {
        return Some(histogram);
    }
    let zero = HISTOGRAM_ZERO.get(0)?;
    // Another CPU may insert the same key first: the lookup then finds it.
    let _ = map.insert(&key, zero, u64::from(BPF_NOEXIST));
    map.get_ptr_mut(&key)
}
