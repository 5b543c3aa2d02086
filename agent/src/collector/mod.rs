//! The collectors: each one attaches its own programs, owns its own maps, and
//! turns them into histograms. A collector that cannot start is recorded as
//! down with its reason; the others carry on.

pub mod block;
pub mod sched;
pub mod tcp;

use std::fmt;

use clap::ValueEnum;

use crate::probes::{AttachError, Probes};

pub use block::BlockCollector;
pub use sched::SchedCollector;
pub use tcp::TcpCollector;

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
        match self {
            Self::Sched => "sched",
            Self::Block => "block",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for CollectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// Run-queue latency, when enabled and up.
    pub sched: Option<SchedCollector>,
    /// Block I/O latency, when enabled and up.
    pub block: Option<BlockCollector>,
    /// TCP latency, when enabled and up.
    pub tcp: Option<TcpCollector>,
    /// One entry per enabled collector, in the order they were asked for.
    pub statuses: Vec<Status>,
}

// aya's maps are not Debug; the statuses say all that is worth printing.
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
    pub fn start(probes: &mut Probes, kinds: &[CollectorKind]) -> Self {
        let mut collectors = Collectors::default();
        for &kind in kinds {
            if collectors.statuses.iter().any(|s| s.kind == kind) {
                continue;
            }
            let result = match kind {
                CollectorKind::Sched => {
                    SchedCollector::attach(probes).map(|c| collectors.sched = Some(c))
                }
                CollectorKind::Block => {
                    BlockCollector::attach(probes).map(|c| collectors.block = Some(c))
                }
                CollectorKind::Tcp => {
                    TcpCollector::attach(probes).map(|c| collectors.tcp = Some(c))
                }
            };
            let down_reason = match result {
                Ok(()) => {
                    tracing::info!(collector = %kind, "collector up");
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
        collectors
    }
}
