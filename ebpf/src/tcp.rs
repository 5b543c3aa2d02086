//! TCP latency: smoothed RTT on every received segment (`tcp_probe`),
//! active connect latency and failures (`inet_sock_set_state`), and
//! retransmitted segments (`tcp_retransmit_skb`). IPv4 and IPv6 alike; no
//! per-address or per-port state is exported, so cardinality stays fixed.

use crate::maps::{count, read_at, record};
use aya_ebpf::{
    Global,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use hostscope_common::{
    histogram::Histogram,
    tcp::{
        CONNECT_DROPPED_COUNTER, CONNECT_FAILURES_COUNTER, CONNECT_SLOT, CONNECT_START_ENTRIES,
        RETRANSMITS_COUNTER, RTT_SLOT, TCP_COUNTERS,
    },
};

#[unsafe(no_mangle)]
static TCP_OFF_SRTT_US: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_OFF_SK_PROTOCOL: Global<u32> = Global::new(0);

/// RTT and connect-latency histograms, one copy per CPU.
#[map(name = "TCP_LATENCY")]
static TCP_LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(2, 0);

/// Failures, retransmits, dropped: see `hostscope_common::tcp`.
#[map(name = "TCP_COUNTERS")]
static TCP_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(TCP_COUNTERS, 0);

/// When each connecting socket sent its SYN, by `struct sock *`. A plain
/// hash: every SYN_SENT socket leaves that state (established or closed),
/// which removes its entry, so a full map means real overload and is counted.
#[map(name = "TCP_CONNECT_START")]
static TCP_CONNECT_START: HashMap<u64, u64> = HashMap::with_max_entries(CONNECT_START_ENTRIES, 0);

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

/// `tcp_probe(const struct sock *sk, const struct sk_buff *skb)`: a segment
/// arrived on an established socket. `srtt_us` holds 8 x the smoothed RTT.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if let Some(srtt_x8) = read_at::<u32>(sk, TCP_OFF_SRTT_US.load())
        && srtt_x8 != 0
    {
        record(&TCP_LATENCY, RTT_SLOT, u64::from(srtt_x8 >> 3) * 1_000);
    }
    0
}

/// `inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if new != TCP_SYN_SENT && old != TCP_SYN_SENT {
        return 0;
    }
    if read_at::<u16>(sk, TCP_OFF_SK_PROTOCOL.load()) != Some(IPPROTO_TCP) {
        return 0;
    }
    if new == TCP_SYN_SENT {
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if TCP_CONNECT_START.insert(sk, now, 0).is_err() {
            count(&TCP_COUNTERS_MAP, CONNECT_DROPPED_COUNTER);
        }
        return 0;
    }
    // Leaving SYN_SENT: established, or failed.
    // SAFETY: the value is copied out at once.
    let Some(&started) = (unsafe { TCP_CONNECT_START.get(sk) }) else {
        return 0;
    };
    let _ = TCP_CONNECT_START.remove(sk);
    if new == TCP_ESTABLISHED {
        // SAFETY: the helper has no preconditions.
        record(
            &TCP_LATENCY,
            CONNECT_SLOT,
            unsafe { bpf_ktime_get_ns() }.saturating_sub(started),
        );
    } else if new == TCP_CLOSE {
        count(&TCP_COUNTERS_MAP, CONNECT_FAILURES_COUNTER);
    }
    0
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`:
/// counted when the retransmission was sent (`err == 0`), as the kernel's
/// own retransmit counters are.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let err: i32 = ctx.arg(2);
    if err == 0 {
        count(&TCP_COUNTERS_MAP, RETRANSMITS_COUNTER);
    }
    0
}
