//! TCP latency: smoothed RTT on every received segment (`tcp_probe`),
//! active connect latency and failures (`inet_sock_set_state`), and
//! retransmitted segments (`tcp_retransmit_skb`, in two variants for the
//! tracepoint's two signatures). IPv4 and IPv6 alike; no
//! per-address or per-port state is exported, so cardinality stays fixed.
//! With `--by-cgroup`, every number goes to the socket's cgroup (the cgroup
//! of the task that created the socket), whichever task or softirq the
//! event runs in.

use crate::{
    cgroup, diag,
    maps::{count, load_at, read_at, record},
};
use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use hostscope_common::{
    cgroup::{CgroupKey, overflow_slot},
    histogram::Histogram,
    tcp::{
        CONNECT_DROPPED_COUNTER, CONNECT_FAILURES_COUNTER, CONNECT_SLOT, CONNECT_START_ENTRIES,
        CONNECT_STARTS_PUT, CONNECT_STARTS_TAKEN, RETRANSMITS_COUNTER, RTT_SLOT, TCP_COUNTERS,
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

/// Entries put in and taken out of [`TCP_CONNECT_START`], per CPU (only
/// `inet_sock_set_state` writes them, and it does not nest on a CPU).
#[map(name = "TCP_CONNECT_START_FILL")]
static TCP_CONNECT_START_FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// `EEXIST`, as map updates with `BPF_NOEXIST` return it (negated).
const EEXIST: i32 = 17;

/// RTT and connect latency per socket cgroup (`--by-cgroup`); the daemon
/// sizes it.
#[map(name = "TCP_LATENCY_BY_CGROUP")]
static TCP_LATENCY_BY_CGROUP: HashMap<CgroupKey, Histogram> = HashMap::with_max_entries(1, 0);

/// Failures and retransmits per socket cgroup (`--by-cgroup`).
#[map(name = "TCP_COUNTERS_BY_CGROUP")]
static TCP_COUNTERS_BY_CGROUP: HashMap<CgroupKey, u64> = HashMap::with_max_entries(1, 0);

/// The per-cgroup key of socket `sk`'s series `slot`; the event is counted
/// as overflow in `overflow` if the cgroup has no room.
#[inline(always)]
fn key_of(sk: u64, slot: u32, overflow: u32) -> CgroupKey {
    CgroupKey {
        cgroup: cgroup::series_of(cgroup::of_sock(sk), overflow),
        dev: 0,
        slot,
    }
}

/// Records a latency in histogram `slot`, for the socket's cgroup or not.
#[inline(always)]
fn record_latency(sk: u64, slot: u32, overflow: u32, value_ns: u64) {
    if cgroup::enabled() {
        cgroup::record(&TCP_LATENCY_BY_CGROUP, key_of(sk, slot, overflow), value_ns);
    } else {
        record(&TCP_LATENCY, slot, value_ns);
    }
}

/// Counts an event in counter `counter`, for the socket's cgroup or not.
#[inline(always)]
fn count_event(sk: u64, counter: u32, overflow: u32) {
    if cgroup::enabled() {
        cgroup::count_in(&TCP_COUNTERS_BY_CGROUP, key_of(sk, counter, overflow));
    } else {
        count(&TCP_COUNTERS_MAP, counter);
    }
}

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
        record_latency(
            sk,
            RTT_SLOT,
            overflow_slot::TCP_PROBE,
            u64::from(srtt_x8 >> 3) * 1_000,
        );
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
    if load_at::<u16>(sk, TCP_OFF_SK_PROTOCOL.load()) != IPPROTO_TCP {
        return 0;
    }
    if new == TCP_SYN_SENT {
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        match TCP_CONNECT_START.insert(sk, now, u64::from(BPF_NOEXIST)) {
            Ok(()) => count(&TCP_CONNECT_START_FILL, CONNECT_STARTS_PUT),
            // A socket whose entry outlived its connect (one cannot leave
            // SYN_SENT unseen, but be safe): timed afresh, counted once.
            Err(err) if err == -EEXIST => {
                let _ = TCP_CONNECT_START.insert(sk, now, 0);
            }
            Err(err) => {
                diag::tcp_connect_start_full(err);
                count(&TCP_COUNTERS_MAP, CONNECT_DROPPED_COUNTER);
            }
        }
        return 0;
    }
    // Leaving SYN_SENT: established, or failed.
    // SAFETY: the value is copied out at once.
    let Some(&started) = (unsafe { TCP_CONNECT_START.get(sk) }) else {
        return 0;
    };
    if TCP_CONNECT_START.remove(sk).is_ok() {
        count(&TCP_CONNECT_START_FILL, CONNECT_STARTS_TAKEN);
    }
    if new == TCP_ESTABLISHED {
        // SAFETY: the helper has no preconditions.
        let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(started);
        record_latency(sk, CONNECT_SLOT, overflow_slot::TCP_STATE, latency);
    } else if new == TCP_CLOSE {
        count_event(sk, CONNECT_FAILURES_COUNTER, overflow_slot::TCP_STATE);
    }
    0
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`:
/// counted when the retransmission was sent (`err == 0`), as the kernel's
/// own retransmit counters are.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let err: i32 = ctx.arg(2);
    if err == 0 {
        count_event(sk, RETRANSMITS_COUNTER, overflow_slot::TCP_RETRANSMIT);
    }
    0
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb)`,
/// on kernels before the `err` argument (Debian 12's 6.1 and 6.12): there
/// the tracepoint fires only for retransmissions that were sent, so every
/// hit counts. The verifier refuses [`tcp_retransmit_skb`] on those kernels
/// (it reads a third argument), and the daemon loads this one instead.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_sent(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    count_event(sk, RETRANSMITS_COUNTER, overflow_slot::TCP_RETRANSMIT);
    0
}
