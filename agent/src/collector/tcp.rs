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

use super::StartError;
use crate::probes::Probes;

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
