//! Scheduler run-queue latency (the kernel side is `ebpf/src/sched.rs`).

use std::sync::Arc;

use aya::maps::{MapData, MapError, PerCpuArray};
use hostscope_common::{
    histogram::Histogram,
    sched::{RUNQ_LATENCY_BY_CGROUP_MAP, RUNQ_LATENCY_MAP, SCHED_PROGRAMS},
};

use super::{Collector, CollectorKind, Family, Registration, StartError};
use crate::{
    cgroup::{Attribution, series::PerCgroup},
    probes::Probes,
};

/// The scheduler collector's entry in the registry.
pub const REGISTRATION: Registration = Registration {
    kind: CollectorKind::Sched,
    name: "sched",
    title: "run-queue latency",
    attach: |probes, attribution| Ok(Box::new(SchedCollector::attach(probes, attribution)?)),
};

const NAME: &str = "hostscope_runqueue_latency";
const SHORT: &str = "runqueue";
const HELP: &str =
    "Time runnable tasks waited on a CPU run queue, from wakeup or preemption to running.";

/// Reads the run-queue latency histogram the kernel fills.
pub struct SchedCollector {
    latency: PerCpuArray<MapData, Histogram>,
    /// With `--by-cgroup`: the histograms per cgroup, which the kernel
    /// fills instead.
    by_cgroup: Option<(Arc<Attribution>, PerCgroup<Histogram>)>,
}

impl SchedCollector {
    /// Attaches the scheduler programs and takes the histogram maps.
    pub fn attach(
        probes: &mut Probes,
        attribution: Option<&Arc<Attribution>>,
    ) -> Result<Self, StartError> {
        probes.check_layout("sched")?;
        let latency = probes.take_map(RUNQ_LATENCY_MAP)?;
        let by_cgroup = match attribution {
            Some(attribution) => Some((
                attribution.clone(),
                PerCgroup::take(probes, RUNQ_LATENCY_BY_CGROUP_MAP)?,
            )),
            None => None,
        };
        probes.attach_btf_tracepoints(&SCHED_PROGRAMS)?;
        Ok(Self { latency, by_cgroup })
    }
}

impl Collector for SchedCollector {
    fn read(&self) -> Result<Vec<Family>, MapError> {
        let Some((attribution, per_cgroup)) = &self.by_cgroup else {
            let total = Histogram::total(self.latency.get(&0, 0)?.iter());
            return Ok(vec![Family::histogram(NAME, SHORT, HELP, total)]);
        };
        let series = per_cgroup
            .read(attribution)?
            .into_iter()
            .map(|row| (row.labels, row.value))
            .collect();
        Ok(vec![Family::histograms(
            NAME,
            SHORT,
            HELP,
            series,
            attribution.layout(),
        )])
    }
}
