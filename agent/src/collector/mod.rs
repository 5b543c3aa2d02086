//! The collectors. A collector is one kernel module (`ebpf/src/NAME.rs`),
//! one module here implementing [`Collector`], and one entry in
//! [`REGISTRY`]. `/metrics` and `hostscope hist` iterate over what the
//! running collectors read; nothing else knows which collectors exist. A
//! collector that cannot start is recorded as down with its reason; the
//! others carry on.

pub mod block;
pub mod reading;
pub mod sched;
pub mod tcp;

use std::{fmt, sync::Arc};

use aya::maps::MapError;
use clap::ValueEnum;

use crate::{
    cgroup::Attribution,
    probes::{AttachError, Probes},
};

pub use reading::{Family, Labels, Layout, Values};

/// A collector's name, as used by `--collectors`, `hist` and the `collector` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum CollectorKind {
    /// Run-queue latency.
    Sched,
    /// Block I/O latency per disk and operation.
    Block,
    /// TCP round-trip time, connect latency and retransmits.
    Tcp,
}

impl CollectorKind {
    /// The name used on the command line and in labels.
    pub fn name(self) -> &'static str {
        self.registration().name
    }

    /// What `hist` calls it in titles.
    pub fn title(self) -> &'static str {
        self.registration().title
    }

    fn registration(self) -> &'static Registration {
        // Every kind has exactly one entry; the registry test checks it.
        REGISTRY
            .iter()
            .find(|r| r.kind == self)
            .unwrap_or(&REGISTRY[0])
    }
}

impl fmt::Display for CollectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running collector: it owns its attached programs' maps and reads them.
pub trait Collector: Send + Sync {
    /// Everything recorded since attach, as metric families in the order
    /// they are exported.
    fn read(&self) -> Result<Vec<Family>, MapError>;
}

/// Loads and attaches one collector's programs and takes its maps (with
/// `--by-cgroup`, its per-cgroup maps too).
pub type AttachFn =
    fn(&mut Probes, Option<&Arc<Attribution>>) -> Result<Box<dyn Collector>, StartError>;

/// How to start one collector.
pub struct Registration {
    /// Its identity on the command line.
    pub kind: CollectorKind,
    /// Its name on the command line and in the `collector` label.
    pub name: &'static str,
    /// What `hist` calls it: "run-queue latency".
    pub title: &'static str,
    /// Loads and attaches its programs and takes its maps; with
    /// `--by-cgroup`, its per-cgroup maps too.
    pub attach: AttachFn,
}

/// Every collector, in the order their families appear in /metrics.
pub static REGISTRY: [Registration; 3] =
    [sched::REGISTRATION, block::REGISTRATION, tcp::REGISTRATION];

/// Why a collector is not running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its programs or maps could not be set up.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// An enabled collector's state, for `hostscope_collector_up` and the log.
#[derive(Debug)]
pub struct Status {
    /// Which collector.
    pub kind: CollectorKind,
    /// Why it is down, if it is.
    pub down_reason: Option<String>,
}

/// The running collectors, and the status of every enabled one.
#[derive(Default)]
pub struct Collectors {
    /// The collectors that are up, in [`REGISTRY`] order.
    pub running: Vec<(CollectorKind, Box<dyn Collector>)>,
    /// One entry per enabled collector, in the order they were asked for.
    pub statuses: Vec<Status>,
    /// With `--by-cgroup`: the attribution every collector shares.
    pub attribution: Option<Arc<Attribution>>,
}

// A collector's maps are not Debug; the statuses say all that is worth printing.
impl std::fmt::Debug for Collectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collectors")
            .field("statuses", &self.statuses)
            .finish_non_exhaustive()
    }
}

impl Collectors {
    /// Starts every collector in `kinds` (duplicates ignored). Failures are
    /// logged and recorded, never returned: one collector down must not take
    /// the others with it.
    pub fn start(
        probes: &mut Probes,
        kinds: &[CollectorKind],
        attribution: Option<Arc<Attribution>>,
    ) -> Self {
        let mut collectors = Collectors {
            attribution,
            ..Collectors::default()
        };
        for &kind in kinds {
            if collectors.statuses.iter().any(|s| s.kind == kind) {
                continue;
            }
            let attach = kind.registration().attach;
            let down_reason = match attach(probes, collectors.attribution.as_ref()) {
                Ok(collector) => {
                    tracing::info!(collector = %kind, "collector up");
                    collectors.running.push((kind, collector));
                    None
                }
                Err(err) => {
                    tracing::error!(
                        collector = %kind,
                        "collector down: {err} (the other collectors keep running; \
                         leave it out of --collectors to silence this)"
                    );
                    Some(err.to_string())
                }
            };
            collectors.statuses.push(Status { kind, down_reason });
        }
        let position = |kind: CollectorKind| REGISTRY.iter().position(|r| r.kind == kind);
        collectors.running.sort_by_key(|(kind, _)| position(*kind));
        collectors
    }

    /// Reads every running collector, for what reading does besides: with
    /// `--by-cgroup`, removing the series of cgroups that are gone and
    /// folding rejected ones into "other", so that kernel maps stay bounded
    /// between scrapes.
    pub fn maintain(&self) {
        if let Some(attribution) = &self.attribution {
            attribution.sweep();
        }
        for (kind, collector) in &self.running {
            if let Err(err) = collector.read() {
                tracing::warn!(collector = %kind, "reading the maps failed: {err}");
            }
        }
    }

    /// Events counted under cgroup="other" because `--cgroup-max` was
    /// reached, per running collector; `None` without `--by-cgroup`.
    pub fn overflow_family(&self) -> Option<Family> {
        let attribution = self.attribution.as_ref()?;
        let totals = match attribution.overflow() {
            Ok(totals) => totals,
            Err(err) => {
                tracing::warn!("reading the cgroup overflow counters failed: {err}");
                return None;
            }
        };
        let series = self
            .running
            .iter()
            .map(|(kind, _)| {
                let value = totals
                    .iter()
                    .find(|(name, _)| *name == kind.name())
                    .map_or(0, |(_, v)| *v);
                (vec![("collector", kind.name().to_owned())], value)
            })
            .collect();
        Some(Family::counters(
            "hostscope_cgroup_overflow",
            "cgroup_overflow",
            "Events counted under cgroup=\"other\" because --cgroup-max cgroups already had series.",
            series,
        ))
    }

    /// The running collector `kind`, if it is up.
    pub fn get(&self, kind: CollectorKind) -> Option<&dyn Collector> {
        self.running
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| c.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind the command line accepts has exactly one registry entry,
    /// under the same name.
    #[test]
    fn every_kind_is_registered_once() {
        for kind in CollectorKind::value_variants() {
            let entries: Vec<_> = REGISTRY.iter().filter(|r| r.kind == *kind).collect();
            assert_eq!(entries.len(), 1, "{kind:?}");
            let cli_name = kind.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(cli_name.as_deref(), Some(entries[0].name));
        }
        assert_eq!(REGISTRY.len(), CollectorKind::value_variants().len());
    }

    /// The registry and the list the benchmark reads name the same
    /// collectors in the same order.
    #[test]
    fn registry_matches_the_shared_list() {
        let registry: Vec<&str> = REGISTRY.iter().map(|r| r.name).collect();
        let shared: Vec<&str> = hostscope_common::COLLECTOR_PROGRAMS
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(registry, shared);
    }
}
