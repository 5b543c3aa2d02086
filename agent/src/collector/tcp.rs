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

/// Everything the TCP collector reports at one instant (totals since attach).
#[derive(Debug, Clone, Copy)]
pub struct TcpSnapshot {
    /// Smoothed RTT, sampled on every received segment.
    pub rtt: Histogram,
    /// Active connects, SYN sent to established.
    pub connect: Histogram,
    /// Active connects that failed.
    pub connect_failures: u64,
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Connects not timed because the start map was full.
    pub connect_dropped: u64,
}

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

    /// Totals since attach, summed over CPUs.
    pub fn snapshot(&self) -> Result<TcpSnapshot, MapError> {
        let histogram = |slot| -> Result<Histogram, MapError> {
            Ok(Histogram::total(self.latency.get(&slot, 0)?.iter()))
        };
        let counter =
            |index| -> Result<u64, MapError> { Ok(self.counters.get(&index, 0)?.iter().sum()) };
        Ok(TcpSnapshot {
            rtt: histogram(RTT_SLOT)?,
            connect: histogram(CONNECT_SLOT)?,
            connect_failures: counter(CONNECT_FAILURES_COUNTER)?,
            retransmits: counter(RETRANSMITS_COUNTER)?,
            connect_dropped: counter(CONNECT_DROPPED_COUNTER)?,
        })
    }
}

impl Collector for TcpCollector {
    fn read(&self) -> Result<Vec<Family>, MapError> {
        let snapshot = self.snapshot()?;
        Ok(vec![
            Family::histogram(
                "hostscope_tcp_rtt",
                "rtt",
                "Smoothed round-trip time of TCP connections, sampled on every received segment.",
                snapshot.rtt,
            ),
            Family::histogram(
                "hostscope_tcp_connect_latency",
                "connect",
                "Active TCP connect latency, from SYN sent to established.",
                snapshot.connect,
            ),
            Family::counter(
                "hostscope_tcp_connect_failures",
                "connect_failures",
                "Active TCP connects that failed (SYN sent, then closed).",
                snapshot.connect_failures,
            ),
            Family::counter(
                "hostscope_tcp_retransmits",
                "retransmits",
                "TCP segments retransmitted.",
                snapshot.retransmits,
            ),
            Family::counter(
                "hostscope_tcp_connect_dropped",
                "connect_dropped",
                "Active TCP connects not timed because a kernel map was full.",
                snapshot.connect_dropped,
            ),
        ])
    }
}
