//! Scheduler run-queue latency (the kernel side is `ebpf/src/sched.rs`).

use aya::maps::{MapData, MapError, PerCpuArray};
use hostscope_common::{
    histogram::Histogram,
    sched::{RUNQ_LATENCY_MAP, SCHED_PROGRAMS},
};

use super::StartError;
use crate::probes::Probes;

/// Reads the run-queue latency histogram the kernel fills.
pub struct SchedCollector {
    latency: PerCpuArray<MapData, Histogram>,
}

impl SchedCollector {
    /// Attaches the scheduler programs and takes the histogram map.
    pub fn attach(probes: &mut Probes) -> Result<Self, StartError> {
        let latency = probes.take_map(RUNQ_LATENCY_MAP)?;
        probes.attach_btf_tracepoints(&SCHED_PROGRAMS)?;
        Ok(Self { latency })
    }

    /// Everything recorded since attach, summed over CPUs.
    pub fn snapshot(&self) -> Result<Histogram, MapError> {
        Ok(Histogram::total(self.latency.get(&0, 0)?.iter()))
    }
}
