//! Scheduler run-queue latency (the kernel side is `ebpf/src/sched.rs`).

use aya::maps::{MapData, MapError, PerCpuArray};
use hostscope_common::{
    histogram::Histogram,
    sched::{RUNQ_LATENCY_MAP, SCHED_PROGRAMS},
};

use super::{Collector, CollectorKind, Family, Registration, StartError};
use crate::probes::Probes;

/// The scheduler collector's entry in the registry.
pub const REGISTRATION: Registration = Registration {
    kind: CollectorKind::Sched,
    name: "sched",
    title: "run-queue latency",
    attach: |probes| Ok(Box::new(SchedCollector::attach(probes)?)),
};

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

impl Collector for SchedCollector {
    fn read(&self) -> Result<Vec<Family>, MapError> {
        Ok(vec![Family::histogram(
            "hostscope_runqueue_latency",
            "runqueue",
            "Time runnable tasks waited on a CPU run queue, from wakeup or preemption to running.",
            self.snapshot()?,
        )])
    }
}
