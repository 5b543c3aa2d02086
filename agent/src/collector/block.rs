//! Block I/O latency per disk and operation (kernel side: `ebpf/src/block.rs`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use hostscope_common::{
    block::{
        BLOCK_DROPPED_MAP, BLOCK_DROPPED_UNKEYED_MAP, BLOCK_DROPPED_UNKEYED_SLOTS,
        BLOCK_LATENCY_BY_CGROUP_MAP, BLOCK_LATENCY_MAP, BLOCK_PROGRAMS, BlockKey, MINOR_BITS,
        op_name,
    },
    histogram::Histogram,
};

use super::{Collector, CollectorKind, Family, Labels, Registration, StartError, reading::Layout};
use crate::{
    cgroup::{Attribution, series::PerCgroup},
    probes::Probes,
};

/// The block collector's entry in the registry.
pub const REGISTRATION: Registration = Registration {
    kind: CollectorKind::Block,
    name: "block",
    title: "block I/O latency",
    attach: |probes, attribution| Ok(Box::new(BlockCollector::attach(probes, attribution)?)),
};

/// Reads the block histograms the kernel fills.
pub struct BlockCollector {
    // Behind a mutex only so that entries of vanished disks can be removed
    // during a scrape, which takes `&self`.
    latency: Mutex<PerCpuHashMap<MapData, BlockKey, Histogram>>,
    dropped: Mutex<PerCpuHashMap<MapData, BlockKey, u64>>,
    dropped_unkeyed: PerCpuArray<MapData, u64>,
    names: Mutex<NameCache>,
    /// With `--by-cgroup`: the histograms per submitting cgroup, which the
    /// kernel fills instead (the dropped counts stay per disk).
    by_cgroup: Option<(Arc<Attribution>, PerCgroup<Histogram>)>,
}

/// Disk names by dev_t, looked up in sysfs at most once a second per disk:
/// a scrape must stay cheap under many concurrent scrapers, and a disk that
/// appears or goes away is still noticed within a second.
#[derive(Default)]
struct NameCache(HashMap<u32, (Option<String>, Instant)>);

impl NameCache {
    const FRESH_FOR: Duration = Duration::from_secs(1);

    fn get(&mut self, dev: u32) -> Option<String> {
        let now = Instant::now();
        match self.0.get(&dev) {
            Some((name, at)) if now.duration_since(*at) < Self::FRESH_FOR => name.clone(),
            _ => {
                let name = disk_name(dev);
                self.0.insert(dev, (name.clone(), now));
                name
            }
        }
    }
}

impl BlockCollector {
    /// Attaches the block programs and takes their maps.
    pub fn attach(
        probes: &mut Probes,
        attribution: Option<&Arc<Attribution>>,
    ) -> Result<Self, StartError> {
        probes.check_layout("block")?;
        let latency = probes.take_map(BLOCK_LATENCY_MAP)?;
        let dropped = probes.take_map(BLOCK_DROPPED_MAP)?;
        let dropped_unkeyed = probes.take_map(BLOCK_DROPPED_UNKEYED_MAP)?;
        let by_cgroup = match attribution {
            Some(attribution) => Some((
                attribution.clone(),
                PerCgroup::take(probes, BLOCK_LATENCY_BY_CGROUP_MAP)?,
            )),
            None => None,
        };
        probes.attach_btf_tracepoints(&BLOCK_PROGRAMS)?;
        Ok(Self {
            latency: Mutex::new(latency),
            dropped: Mutex::new(dropped),
            dropped_unkeyed,
            names: Mutex::default(),
            by_cgroup,
        })
    }

    /// The per-cgroup histograms, labelled by cgroup, disk and operation.
    /// Rows of disks that no longer exist are left out.
    fn by_cgroup(
        attribution: &Attribution,
        per_cgroup: &PerCgroup<Histogram>,
        names: &mut NameCache,
    ) -> Result<Vec<(Labels, Histogram)>, MapError> {
        let rows = per_cgroup.read(attribution)?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let device = names.get(row.dev)?;
                let mut labels = row.labels;
                labels.push(("device", device));
                labels.push(("op", op_name(row.slot).to_owned()));
                Some((labels, row.value))
            })
            .collect())
    }
}

impl Collector for BlockCollector {
    /// Every disk's histograms and dropped counts, named as the disk is
    /// named now. Disks that no longer exist are dropped from the maps (and
    /// so from /metrics): a loop device detached and attached again starts
    /// afresh.
    fn read(&self) -> Result<Vec<Family>, MapError> {
        let mut latency = lock(&self.latency);
        let mut dropped = lock(&self.dropped);
        let mut names = lock(&self.names);
        let mut merged: BTreeMap<(String, &'static str), (Histogram, u64)> = BTreeMap::new();
        by_disk(&mut latency, &mut names, |disk, per_cpu| {
            let slot = &mut merged.entry(disk).or_insert((Histogram::ZERO, 0)).0;
            slot.merge(&Histogram::total(per_cpu.iter()));
        })?;
        by_disk(&mut dropped, &mut names, |disk, per_cpu| {
            let slot = &mut merged.entry(disk).or_insert((Histogram::ZERO, 0)).1;
            *slot = per_cpu.iter().fold(*slot, |sum, n| sum.wrapping_add(*n));
        })?;
        let mut histograms = Vec::with_capacity(merged.len());
        let mut dropped_by_disk = Vec::with_capacity(merged.len() + 1);
        // Sorted by disk, then operation.
        for ((device, op), (histogram, dropped)) in merged {
            let labels: Labels = vec![("device", device), ("op", op.to_owned())];
            histograms.push((labels.clone(), histogram));
            dropped_by_disk.push((labels, dropped));
        }
        let mut unknown_disk = 0u64;
        for slot in 0..BLOCK_DROPPED_UNKEYED_SLOTS {
            for n in self.dropped_unkeyed.get(&slot, 0)?.iter() {
                unknown_disk = unknown_disk.wrapping_add(*n);
            }
        }
        // Only past 1,024 disk and operation pairs: rare enough to appear
        // only once it happens.
        if unknown_disk > 0 {
            let unknown = vec![
                ("device", "unknown".to_owned()),
                ("op", "unknown".to_owned()),
            ];
            dropped_by_disk.push((unknown, unknown_disk));
        }
        let (histograms, layout) = match &self.by_cgroup {
            Some((attribution, per_cgroup)) => {
                let histograms = Self::by_cgroup(attribution, per_cgroup, &mut names)?;
                // Latencies then go only to the per-cgroup map, so the
                // host-wide drop counters exist only where something was
                // dropped: give every disk and operation seen a series
                // from its first I/O, as without --by-cgroup, so that
                // increase() sees the first drops.
                let seen: std::collections::BTreeSet<Labels> = histograms
                    .iter()
                    .map(|(labels, _)| {
                        labels
                            .iter()
                            .filter(|(name, _)| *name == "device" || *name == "op")
                            .cloned()
                            .collect()
                    })
                    .collect();
                for labels in seen {
                    if !dropped_by_disk.iter().any(|(known, _)| *known == labels) {
                        dropped_by_disk.push((labels, 0));
                    }
                }
                dropped_by_disk.sort();
                (histograms, attribution.layout())
            }
            None => (histograms, Layout::Fine),
        };
        Ok(vec![
            Family::histograms(
                "hostscope_block_io_latency",
                "latency",
                "Block I/O latency from issue to the device driver to completion, per disk and operation.",
                histograms,
                layout,
            ),
            Family::counters(
                "hostscope_block_io_dropped",
                "dropped",
                "Block requests completed without a latency because more were in flight \
                 than --block-max-inflight; with the histogram's count, every completed request.",
                dropped_by_disk,
            ),
        ])
    }
}

/// Calls `add` with each entry of `map` under its disk's current name and
/// its operation's label, and removes the entries of disks that no longer
/// exist.
fn by_disk<V: aya::Pod>(
    map: &mut PerCpuHashMap<MapData, BlockKey, V>,
    names: &mut NameCache,
    mut add: impl FnMut((String, &'static str), PerCpuValues<V>),
) -> Result<(), MapError> {
    let mut gone = Vec::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry?;
        match names.get(key.dev) {
            Some(device) => add((device, op_name(key.op)), per_cpu),
            None => gone.push(key),
        }
    }
    for key in gone {
        // Already gone (another scrape removed it) is fine.
        let _ = map.remove(&key);
    }
    Ok(())
}

/// Locks `mutex`, whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The kernel's name for a disk (`DEVNAME` in its uevent), if it exists
/// and has media. A detached loop device keeps its node with size 0, as does
/// an empty drive: neither can do I/O, so neither is exported.
fn disk_name(dev: u32) -> Option<String> {
    let (major, minor) = (dev >> MINOR_BITS, dev & ((1 << MINOR_BITS) - 1));
    let sysfs = format!("/sys/dev/block/{major}:{minor}");
    let sectors: u64 = std::fs::read_to_string(format!("{sysfs}/size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if sectors == 0 {
        return None;
    }
    let uevent = std::fs::read_to_string(format!("{sysfs}/uevent")).ok()?;
    uevent
        .lines()
        .find_map(|line| line.strip_prefix("DEVNAME="))
        .map(str::to_owned)
}
