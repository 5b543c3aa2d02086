//! `--by-cgroup`: which series a cgroup id gets. Its own, labelled with its
//! path and the container and pod the path names; "other", when
//! `--cgroup-match` rejects it; or none, when it is gone.
//!
//! The kernel admits a cgroup the first time it sees it (if there is room,
//! see `ebpf/src/cgroup.rs`); the daemon learns the cgroup's path from a walk
//! of the hierarchy, repeated whenever a map holds an id the last walk did
//! not see. Cgroups that are gone leave the kernel maps (and so /metrics);
//! rejected ones are folded into "other" and remembered, so the kernel
//! counts them there from then on.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use hostscope_common::cgroup::{
    CGROUP_ADMITTED_MAP, CGROUP_EXCLUDED_MAP, CGROUP_OVERFLOW_MAP, OTHER_CGROUP,
    OVERFLOW_SLOT_COLLECTORS,
};
use regex::Regex;

use super::{container, paths::CgroupPaths};
use crate::{
    cli::CgroupBuckets,
    collector::{Labels, reading::Layout},
    probes::{AttachError, Probes},
};

/// The label value of the series that gathers the cgroups without their own.
pub const OTHER_LABEL: &str = "other";

/// How old the last walk may be before the next read walks again, to find
/// the cgroups removed since: a removed cgroup leaves /metrics within this
/// (plus one scrape).
pub const REVALIDATE: Duration = Duration::from_secs(5);

/// Where a cgroup's numbers go.
#[derive(Debug, Clone, PartialEq)]
pub enum Series {
    /// Its own series, with these labels (`cgroup`, and `container_id` and
    /// `pod_uid` where the path names them).
    Own(Arc<Labels>),
    /// The "other" series: `--cgroup-match` rejects its path, or the
    /// hierarchy is too large to have been walked to it.
    Other,
    /// The cgroup no longer exists: its numbers leave /metrics.
    Gone,
}

/// What the daemon knows of the cgroup hierarchy.
struct Known {
    paths: CgroupPaths,
    /// When the walk that found `paths` started.
    scanned_at: Option<Instant>,
    /// Series decided so far, by id (cleared at every walk).
    series: StdHashMap<u64, Series>,
}

/// Per-cgroup attribution, shared by every collector.
pub struct Attribution {
    root: PathBuf,
    matcher: Option<Regex>,
    layout: Layout,
    admitted: Mutex<HashMap<MapData, u64, u8>>,
    excluded: Mutex<HashMap<MapData, u64, u8>>,
    overflow: PerCpuArray<MapData, u64>,
    known: Mutex<Known>,
}

impl std::fmt::Debug for Attribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attribution")
            .field("root", &self.root)
            .field("matcher", &self.matcher)
            .finish_non_exhaustive()
    }
}

impl Attribution {
    /// Takes the shared cgroup maps. `root` is the cgroup2 mount point.
    pub fn new(
        probes: &mut Probes,
        root: PathBuf,
        matcher: Option<Regex>,
        buckets: CgroupBuckets,
    ) -> Result<Self, AttachError> {
        Ok(Self {
            root,
            matcher,
            layout: match buckets {
                CgroupBuckets::Coarse => Layout::Coarse,
                CgroupBuckets::Fine => Layout::Fine,
            },
            admitted: Mutex::new(probes.take_map(CGROUP_ADMITTED_MAP)?),
            excluded: Mutex::new(probes.take_map(CGROUP_EXCLUDED_MAP)?),
            overflow: probes.take_map(CGROUP_OVERFLOW_MAP)?,
            known: Mutex::new(Known {
                paths: CgroupPaths::default(),
                scanned_at: None,
                series: StdHashMap::new(),
            }),
        })
    }

    /// The cgroup2 mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bucket layout of per-cgroup histograms.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Where each of `ids` goes. `listed_at` is when they were read from a
    /// map: an id the last walk does not know is looked up by a new walk
    /// unless one started after that (then the cgroup is gone).
    pub fn resolve(&self, ids: &BTreeSet<u64>, listed_at: Instant) -> StdHashMap<u64, Series> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let unknown = || {
            ids.iter()
                .any(|id| *id != OTHER_CGROUP && known.paths.get(*id).is_none())
        };
        let walk = match known.scanned_at {
            None => true,
            Some(at) => at.elapsed() >= REVALIDATE || (at < listed_at && unknown()),
        };
        if walk {
            let started = Instant::now();
            match CgroupPaths::scan(&self.root) {
                Ok(paths) => {
                    if paths.truncated {
                        tracing::warn!(
                            "the cgroup hierarchy at {} is too large to walk completely; \
                             cgroups beyond the walk are counted under cgroup=\"other\"",
                            self.root.display()
                        );
                    }
                    known.paths = paths;
                    known.scanned_at = Some(started);
                    known.series.clear();
                }
                Err(err) => tracing::warn!(
                    "cannot walk the cgroup hierarchy at {}: {err}",
                    self.root.display()
                ),
            }
        }
        let mut resolved = StdHashMap::with_capacity(ids.len());
        for &id in ids {
            if id == OTHER_CGROUP {
                continue;
            }
            let series = match known.series.get(&id) {
                Some(series) => series.clone(),
                None => {
                    let series = self.decide(&known.paths, id);
                    self.apply(id, &series);
                    known.series.insert(id, series.clone());
                    series
                }
            };
            resolved.insert(id, series);
        }
        resolved
    }

    /// Where cgroup `id` goes, from the last walk.
    fn decide(&self, paths: &CgroupPaths, id: u64) -> Series {
        match paths.get(id) {
            // Not found by a complete walk that started after the id was
            // seen in a map: the cgroup existed then, so it is gone now.
            None if !paths.truncated => Series::Gone,
            None => Series::Other,
            Some(path) if self.matcher.as_ref().is_some_and(|m| !m.is_match(path)) => Series::Other,
            Some(path) => Series::Own(Arc::new(labels_of(path))),
        }
    }

    /// Tells the kernel: a cgroup that is gone leaves the admitted set; one
    /// that goes to "other" leaves it for the excluded set, so it no longer
    /// takes a place under `--cgroup-max`.
    fn apply(&self, id: u64, series: &Series) {
        let result = match series {
            Series::Own(_) => return,
            Series::Gone => self.forget(id),
            Series::Other => self
                .excluded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, 0, 0)
                .and_then(|()| self.forget(id)),
        };
        if let Err(err) = result {
            tracing::warn!(cgroup = id, "cannot update the kernel's cgroup maps: {err}");
        }
    }

    fn forget(&self, id: u64) -> Result<(), MapError> {
        match self
            .admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
        {
            Err(err) if !is_missing(&err) => Err(err),
            // Already removed (by a read of another collector's map).
            _ => Ok(()),
        }
    }

    /// Removes admitted cgroups that are gone or rejected even if no map
    /// holds a series of theirs (a record that found no room), so that the
    /// admitted set cannot fill up with dead ids.
    pub fn sweep(&self) {
        let listed_at = Instant::now();
        let ids: BTreeSet<u64> = self
            .admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter_map(Result::ok)
            .collect();
        self.resolve(&ids, listed_at);
    }

    /// Events counted under "other" because `--cgroup-max` cgroups already
    /// had series, by collector name.
    pub fn overflow(&self) -> Result<Vec<(&'static str, u64)>, MapError> {
        let mut totals: Vec<(&'static str, u64)> = Vec::new();
        for (slot, collector) in (0u32..).zip(OVERFLOW_SLOT_COLLECTORS) {
            let value: u64 = self.overflow.get(&slot, 0)?.iter().sum();
            match totals.iter_mut().find(|(c, _)| *c == collector) {
                Some((_, total)) => *total = total.wrapping_add(value),
                None => totals.push((collector, value)),
            }
        }
        Ok(totals)
    }

    /// How many cgroups have series of their own in the kernel now.
    pub fn admitted(&self) -> usize {
        self.admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter_map(Result::ok)
            .count()
    }
}

/// Whether a map operation failed only because the key was not there.
fn is_missing(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(syscall) => syscall.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The labels of a cgroup's own series. Whoever may create cgroups names
/// them: control characters (a terminal escape in `hist`'s titles) become
/// `?`, as in profiles; the exposition escapes quotes and backslashes.
pub fn labels_of(path: &str) -> Labels {
    let identity = container::identify(path);
    let mut labels: Labels = vec![("cgroup", crate::profile::printable(path))];
    if let Some(id) = identity.container_id {
        labels.push(("container_id", id));
    }
    if let Some(uid) = identity.pod_uid {
        labels.push(("pod_uid", uid));
    }
    labels
}

/// The labels of the "other" series.
pub fn other_labels() -> Labels {
    vec![("cgroup", OTHER_LABEL.to_owned())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_get_container_and_pod_labels() {
        let path = "/kubepods.slice/kubepods-burstable.slice/\
                    kubepods-burstable-pod1a2b3c4d_0000_1111_2222_333344445555.slice/\
                    cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        let labels = labels_of(path);
        assert_eq!(labels[0], ("cgroup", path.to_owned()));
        assert_eq!(
            labels[1],
            (
                "container_id",
                "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                    .to_owned()
            )
        );
        assert_eq!(
            labels[2],
            ("pod_uid", "1a2b3c4d-0000-1111-2222-333344445555".to_owned())
        );
    }

    #[test]
    fn control_characters_in_names_become_question_marks() {
        assert_eq!(
            labels_of("/evil\u{1b}[31m\t\"x\\"),
            vec![("cgroup", "/evil?[31m?\"x\\".to_owned())]
        );
    }

    #[test]
    fn service_paths_get_only_the_cgroup_label() {
        assert_eq!(
            labels_of("/system.slice/nginx.service"),
            vec![("cgroup", "/system.slice/nginx.service".to_owned())]
        );
    }
}
