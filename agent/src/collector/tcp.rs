//! TCP round-trip time, connect latency, connect failures and retransmits
//! (kernel side: `ebpf/src/tcp.rs`).

use aya::maps::{MapData, MapError, PerCpuArray};
use hostscope_common::{
    histogram::Histogram,
    tcp::{
        CONNECT_DROPPED_COUNTER, CONNECT_FAILURES_COUNTER, CONNECT_SLOT, RETRANSMITS_COUNTER,
        RTT_SLOT, TCP_COUNTERS_MAP, TCP_LATENCY_MAP, TCP_PROGRAMS,
    },
};

use super::{Collector, CollectorKind, Family, Registration, StartError};
use crate::probes::Probes;

/// The TCP collector's entry in the registry.
pub const REGISTRATION: Registration = Registration {
    kind: CollectorKind::Tcp,
    name: "tcp",
    title: "TCP latency",
    attach: |probes| Ok(Box::new(TcpCollector::attach(probes)?)),
};

/// Reads the TCP maps the kernel fills.
pub struct TcpCollector {
    latency: PerCpuArray<MapData, Histogram>,
    counters: PerCpuArray<MapData, u64>,
}

impl TcpCollector {
    /// Attaches the TCP programs and takes their maps.
    pub fn attach(probes: &mut Probes) -> Result<Self, StartError> {
        probes.check_layout("tcp")?;
        let latency = probes.take_map(TCP_LATENCY_MAP)?;
        let counters = probes.take_map(TCP_COUNTERS_MAP)?;
        probes.attach_btf_tracepoints(&TCP_PROGRAMS)?;
        Ok(Self { latency, counters })
    }
}

impl Collector for TcpCollector {
    /// Totals since attach, summed over CPUs.
    fn read(&self) -> Result<Vec<Family>, MapError> {
        let histogram = |slot| -> Result<Histogram, MapError> {
            Ok(Histogram::total(self.latency.get(&slot, 0)?.iter()))
        };
        let counter =
            |index| -> Result<u64, MapError> { Ok(self.counters.get(&index, 0)?.iter().sum()) };
        Ok(vec![
            Family::histogram(
                "hostscope_tcp_rtt",
                "rtt",
                "Smoothed round-trip time of TCP connections, sampled on every received segment.",
                histogram(RTT_SLOT)?,
            ),
            Family::histogram(
                "hostscope_tcp_connect_latency",
                "connect",
                "Active TCP connect latency, from SYN sent to established.",
                histogram(CONNECT_SLOT)?,
            ),
            Family::counter(
                "hostscope_tcp_connect_failures",
                "connect_failures",
                "Active TCP connects that failed (SYN sent, then closed).",
                counter(CONNECT_FAILURES_COUNTER)?,
            ),
            Family::counter(
                "hostscope_tcp_retransmits",
                "retransmits",
                "TCP segments retransmitted.",
                counter(RETRANSMITS_COUNTER)?,
            ),
            Family::counter(
                "hostscope_tcp_connect_dropped",
                "connect_dropped",
                "Active TCP connects not timed because a kernel map was full.",
                counter(CONNECT_DROPPED_COUNTER)?,
            ),
        ])
    }
}
