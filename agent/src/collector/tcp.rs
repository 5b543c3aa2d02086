//! TCP round-trip time, connect latency, connect failures and retransmits
//! (kernel side: `ebpf/src/tcp.rs`).

use std::sync::Arc;

use aya::maps::{MapData, MapError, PerCpuArray};
use hostscope_common::{
    histogram::Histogram,
    tcp::{
        CONNECT_DROPPED_COUNTER, CONNECT_FAILURES_COUNTER, CONNECT_SLOT, RETRANSMITS_COUNTER,
        RTT_SLOT, TCP_COUNTERS_BY_CGROUP_MAP, TCP_COUNTERS_MAP, TCP_FALLBACKS,
        TCP_LATENCY_BY_CGROUP_MAP, TCP_LATENCY_MAP, TCP_PROGRAMS,
    },
};

use super::{Collector, CollectorKind, Family, Labels, Registration, StartError};
use crate::{
    cgroup::{
        Attribution,
        series::{PerCgroup, Row},
    },
    probes::Probes,
};

/// The TCP collector's entry in the registry.
pub const REGISTRATION: Registration = Registration {
    kind: CollectorKind::Tcp,
    name: "tcp",
    title: "TCP latency",
    attach: |probes, attribution| Ok(Box::new(TcpCollector::attach(probes, attribution)?)),
};

/// `(name, short, help)` of each family, by slot.
const RTT: (&str, &str, &str) = (
    "hostscope_tcp_rtt",
    "rtt",
    "Smoothed round-trip time of TCP connections, sampled on every received segment.",
);
const CONNECT: (&str, &str, &str) = (
    "hostscope_tcp_connect_latency",
    "connect",
    "Active TCP connect latency, from SYN sent to established.",
);
const FAILURES: (&str, &str, &str) = (
    "hostscope_tcp_connect_failures",
    "connect_failures",
    "Active TCP connects that failed (SYN sent, then closed).",
);
const RETRANSMITS: (&str, &str, &str) = (
    "hostscope_tcp_retransmits",
    "retransmits",
    "TCP segments retransmitted.",
);
const DROPPED: (&str, &str, &str) = (
    "hostscope_tcp_connect_dropped",
    "connect_dropped",
    "Active TCP connects not timed because a kernel map was full.",
);

/// Reads the TCP maps the kernel fills.
pub struct TcpCollector {
    latency: PerCpuArray<MapData, Histogram>,
    counters: PerCpuArray<MapData, u64>,
    /// With `--by-cgroup`: histograms and counters per socket cgroup,
    /// which the kernel fills instead (all but the dropped counter).
    by_cgroup: Option<ByCgroup>,
}

struct ByCgroup {
    attribution: Arc<Attribution>,
    latency: PerCgroup<Histogram>,
    counters: PerCgroup<u64>,
}

impl TcpCollector {
    /// Attaches the TCP programs and takes their maps.
    pub fn attach(
        probes: &mut Probes,
        attribution: Option<&Arc<Attribution>>,
    ) -> Result<Self, StartError> {
        probes.check_layout("tcp")?;
        let latency = probes.take_map(TCP_LATENCY_MAP)?;
        let counters = probes.take_map(TCP_COUNTERS_MAP)?;
        let by_cgroup = match attribution {
            Some(attribution) => Some(ByCgroup {
                attribution: attribution.clone(),
                latency: PerCgroup::take(probes, TCP_LATENCY_BY_CGROUP_MAP)?,
                counters: PerCgroup::take(probes, TCP_COUNTERS_BY_CGROUP_MAP)?,
            }),
            None => None,
        };
        probes.attach_btf_tracepoints_or(&TCP_PROGRAMS, &TCP_FALLBACKS)?;
        Ok(Self {
            latency,
            counters,
            by_cgroup,
        })
    }

    fn counter(&self, index: u32) -> Result<u64, MapError> {
        Ok(self.counters.get(&index, 0)?.iter().sum())
    }
}

impl Collector for TcpCollector {
    /// Totals since attach, summed over CPUs.
    fn read(&self) -> Result<Vec<Family>, MapError> {
        let dropped = self.counter(CONNECT_DROPPED_COUNTER)?;
        let dropped = Family::counter(DROPPED.0, DROPPED.1, DROPPED.2, dropped);
        let Some(by_cgroup) = &self.by_cgroup else {
            let histogram = |slot| -> Result<Histogram, MapError> {
                Ok(Histogram::total(self.latency.get(&slot, 0)?.iter()))
            };
            return Ok(vec![
                Family::histogram(RTT.0, RTT.1, RTT.2, histogram(RTT_SLOT)?),
                Family::histogram(CONNECT.0, CONNECT.1, CONNECT.2, histogram(CONNECT_SLOT)?),
                Family::counter(
                    FAILURES.0,
                    FAILURES.1,
                    FAILURES.2,
                    self.counter(CONNECT_FAILURES_COUNTER)?,
                ),
                Family::counter(
                    RETRANSMITS.0,
                    RETRANSMITS.1,
                    RETRANSMITS.2,
                    self.counter(RETRANSMITS_COUNTER)?,
                ),
                dropped,
            ]);
        };
        let attribution = &by_cgroup.attribution;
        let latency = by_cgroup.latency.read(attribution)?;
        let counters = by_cgroup.counters.read(attribution)?;
        let layout = attribution.layout();
        let histograms = |slot, (name, short, help): (&'static str, &'static str, &'static str)| {
            Family::histograms(name, short, help, of_slot(&latency, slot), layout)
        };
        let counters = |slot, (name, short, help): (&'static str, &'static str, &'static str)| {
            Family::counters(name, short, help, of_slot(&counters, slot))
        };
        Ok(vec![
            histograms(RTT_SLOT, RTT),
            histograms(CONNECT_SLOT, CONNECT),
            counters(CONNECT_FAILURES_COUNTER, FAILURES),
            counters(RETRANSMITS_COUNTER, RETRANSMITS),
            dropped,
        ])
    }
}

/// The series of `rows` in slot `slot`, labelled by cgroup.
fn of_slot<V: Copy>(rows: &[Row<V>], slot: u32) -> Vec<(Labels, V)> {
    rows.iter()
        .filter(|row| row.slot == slot)
        .map(|row| (row.labels.clone(), row.value))
        .collect()
}
