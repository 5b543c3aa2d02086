//! How the daemon's costs grow with what the host has: /metrics size,
//! series and daemon CPU per scrape with more block devices, each of which
//! adds its own histograms (measured, with loop devices that did some I/O);
//! and the kernel memory of its maps with more CPUs (the kernel's count on
//! this host, moved to other CPU counts by the maps' layout). The per
//! cgroup section has the same for `--by-cgroup`'s maps and cgroups.

use std::process::Command;

use anyhow::{Context as _, bail};

use super::{
    Plan, daemon,
    report::{Report, Row, Target},
    workloads,
};

const SECTION: &str = "cost growth";

/// Scrapes timed per device count.
const SCRAPES: u32 = 20;

/// Every row of the section.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    let daemon = daemon::start()?;
    let maps = maps_of(daemon.pid)?;
    let here = possible_cpus()?;
    let mut counts = vec![here, 2, 128];
    counts.sort_unstable();
    counts.dedup();
    for cpus in counts {
        let how = if cpus == here {
            "the kernel's count"
        } else {
            "computed"
        };
        report.push(Row::value(
            SECTION,
            &format!("kernel map memory without --by-cgroup, {cpus} CPUs, MiB ({how})"),
            map_bytes_on(&maps, here, cpus) as f64 / f64::from(1 << 20),
            Target::None,
        ));
    }
    let mut devices = Vec::new();
    for &count in &plan.growth_devices {
        while devices.len() < count {
            let device = workloads::loop_device(16)?;
            read_some(&device.path())?;
            devices.push(device);
        }
        let (body, cpu_ms) = daemon::scrape_cpu_ms(&daemon.url, daemon.pid, SCRAPES)?;
        let series = body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        let with = format!("{count} more block devices (loop, each read)");
        report.push(Row::value(
            SECTION,
            &format!("/metrics with {with}, KiB (plain text)"),
            body.len() as f64 / 1024.0,
            Target::None,
        ));
        report.push(Row::value(
            SECTION,
            &format!("  series with {with}"),
            series as f64,
            Target::None,
        ));
        report.push(Row::value(
            SECTION,
            &format!("  daemon CPU per scrape with {with}, ms (mean of {SCRAPES})"),
            cpu_ms,
            Target::None,
        ));
    }
    Ok(())
}

/// A few direct reads, so that the device has block series of its own.
fn read_some(device: &str) -> anyhow::Result<()> {
    let status = Command::new("dd")
        .args([
            &format!("if={device}"),
            "of=/dev/null",
            "bs=4k",
            "count=4",
            "iflag=direct",
            "status=none",
        ])
        .status()
        .context("running dd")?;
    if !status.success() {
        bail!("dd from {device} failed");
    }
    Ok(())
}

/// What the kernel says of one map in `/proc/PID/fdinfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MapLayout {
    map_type: u32,
    key_size: u64,
    value_size: u64,
    max_entries: u64,
    map_flags: u64,
    /// The kernel's own count of the map's memory (6.4 and later: what it
    /// allocated, per-CPU copies included).
    memlock: u64,
}

/// Map types (`enum bpf_map_type`) whose memory depends on the CPU count.
const HASH: u32 = 1;
const PERCPU_HASH: u32 = 5;
const PERCPU_ARRAY: u32 = 6;
const LRU_PERCPU_HASH: u32 = 10;
/// `BPF_F_NO_PREALLOC`: entries are allocated as they are inserted.
const NO_PREALLOC: u64 = 1;
/// `struct htab_elem` before its key, on 64-bit kernels.
const HTAB_ELEM_HEADER: u64 = 48;

impl MapLayout {
    /// Parses a map's fdinfo; `None` for a descriptor that is not a map.
    fn parse(fdinfo: &str) -> Option<MapLayout> {
        let field = |name: &str| {
            fdinfo.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?.trim();
                match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => value.parse().ok(),
                }
            })
        };
        Some(MapLayout {
            map_type: u32::try_from(field("map_type")?).ok()?,
            key_size: field("key_size")?,
            value_size: field("value_size")?,
            max_entries: field("max_entries")?,
            map_flags: field("map_flags").unwrap_or(0),
            memlock: field("memlock")?,
        })
    }

    /// The bytes of this map that the kernel allocates per possible CPU,
    /// as `kernel/bpf/arraymap.c` and `hashtab.c` size them: a value per
    /// entry per CPU for per-CPU maps; one spare element per CPU for a
    /// preallocated plain hash map. Maps that allocate as they fill are
    /// counted by what they hold, which does not follow the CPU count.
    fn per_cpu_bytes(&self) -> u64 {
        let value = self.value_size.next_multiple_of(8);
        let preallocated = self.map_flags & NO_PREALLOC == 0;
        match self.map_type {
            PERCPU_ARRAY => self.max_entries * value,
            PERCPU_HASH | LRU_PERCPU_HASH if preallocated => self.max_entries * value,
            HASH if preallocated => HTAB_ELEM_HEADER + self.key_size.next_multiple_of(8) + value,
            _ => 0,
        }
    }
}

/// The maps `pid` holds open.
fn maps_of(pid: u32) -> anyhow::Result<Vec<MapLayout>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        maps.extend(MapLayout::parse(&text));
    }
    Ok(maps)
}

/// The CPUs the kernel sizes per-CPU memory for (`possible`, not online).
fn possible_cpus() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading the possible CPUs")?;
    let mut count = 0;
    for range in text.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last): (u64, u64) = (first.parse()?, last.parse()?);
        count += last + 1 - first;
    }
    Ok(count)
}

/// The kernel's count of `maps`' memory on this host, moved to a host with
/// `cpus` CPUs by the part that is per CPU.
fn map_bytes_on(maps: &[MapLayout], here: u64, cpus: u64) -> u64 {
    maps.iter()
        .map(|map| {
            let per_cpu = map.per_cpu_bytes();
            (map.memlock.saturating_sub(per_cpu * here)) + per_cpu * cpus
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{MapLayout, PERCPU_ARRAY, map_bytes_on};

    const PERCPU_ARRAY_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n\
        map_type:\t6\nkey_size:\t4\nvalue_size:\t1044\nmax_entries:\t1\nmap_flags:\t0x0\n\
        map_extra:\t0x0\nmemlock:\t2400\nmap_id:\t77\nfrozen:\t0\n";

    #[test]
    fn fdinfo_of_a_map_is_parsed() {
        let map = MapLayout::parse(PERCPU_ARRAY_FDINFO);
        assert_eq!(
            map,
            Some(MapLayout {
                map_type: PERCPU_ARRAY,
                key_size: 4,
                value_size: 1044,
                max_entries: 1,
                map_flags: 0,
                memlock: 2400,
            })
        );
        assert_eq!(MapLayout::parse("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn per_cpu_memory_follows_the_cpu_count() {
        let map = MapLayout::parse(PERCPU_ARRAY_FDINFO).unwrap_or_default();
        // 1048 bytes per CPU; what is left of 2400 on 2 CPUs is fixed.
        assert_eq!(map_bytes_on(&[map], 2, 2), 2400);
        assert_eq!(map_bytes_on(&[map], 2, 128), 304 + 128 * 1048);
    }
}
