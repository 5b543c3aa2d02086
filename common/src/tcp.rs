//! Layout of the TCP collector's maps and load-time constants.

/// Per-CPU array of two [`crate::histogram::Histogram`]s, indexed by
/// [`RTT_SLOT`] and [`CONNECT_SLOT`].
pub const TCP_LATENCY_MAP: &str = "TCP_LATENCY";
/// Smoothed RTT samples.
pub const RTT_SLOT: u32 = 0;
/// Active connect latency (SYN sent to established).
pub const CONNECT_SLOT: u32 = 1;

/// Per-CPU array of `u64` counters, indexed by the `*_COUNTER` constants.
pub const TCP_COUNTERS_MAP: &str = "TCP_COUNTERS";
/// Active connects that failed (SYN sent, then closed).
pub const CONNECT_FAILURES_COUNTER: u32 = 0;
/// Segments retransmitted.
pub const RETRANSMITS_COUNTER: u32 = 1;
/// Connects not timed because the start map was full.
pub const CONNECT_DROPPED_COUNTER: u32 = 2;
/// Number of counters.
pub const TCP_COUNTERS: u32 = 3;

/// Hash map: `struct sock *` -> connect start (ns), for connects in flight.
pub const TCP_CONNECT_START_MAP: &str = "TCP_CONNECT_START";
/// Per-CPU array of two `u64`s: entries put in [`TCP_CONNECT_START_MAP`]
/// ([`CONNECT_STARTS_PUT`]) and taken out ([`CONNECT_STARTS_TAKEN`]). Their
/// difference is its fill, which the daemon exports without walking the
/// hash map (a walk visits every bucket, 16,384 of them).
pub const TCP_CONNECT_START_FILL_MAP: &str = "TCP_CONNECT_START_FILL";
/// Slot of [`TCP_CONNECT_START_FILL_MAP`]: entries put in.
pub const CONNECT_STARTS_PUT: u32 = 0;
/// Slot of [`TCP_CONNECT_START_FILL_MAP`]: entries taken out.
pub const CONNECT_STARTS_TAKEN: u32 = 1;

/// Connects in flight (SYN sent, no answer yet) that can be timed at once.
pub const CONNECT_START_ENTRIES: u32 = 10_240;

/// The programs, paired with the BTF tracepoints they attach to.
pub const TCP_PROGRAMS: [(&str, &str); 3] = [
    ("tcp_probe", "tcp_probe"),
    ("inet_sock_set_state", "inet_sock_set_state"),
    ("tcp_retransmit_skb", "tcp_retransmit_skb"),
];

/// Programs to load in place of one of [`TCP_PROGRAMS`] when the kernel
/// refuses it: (refused program, (replacement, tracepoint)). Before the
/// tracepoint had an `err` argument (up to 6.12 at least), it fired only
/// for retransmissions that were sent, and the replacement counts each hit.
pub const TCP_FALLBACKS: [(&str, (&str, &str)); 1] = [(
    "tcp_retransmit_skb",
    ("tcp_retransmit_skb_sent", "tcp_retransmit_skb"),
)];

/// Names of the load-time constants: byte offsets of kernel fields.
pub mod offsets {
    /// `struct tcp_sock.srtt_us`
    pub const TCP_SOCK_SRTT_US: &str = "TCP_OFF_SRTT_US";
    /// `struct sock.sk_protocol` (a `u16`)
    pub const SOCK_PROTOCOL: &str = "TCP_OFF_SK_PROTOCOL";
}

/// Hash map: [`crate::cgroup::CgroupKey`] (slot [`RTT_SLOT`] or
/// [`CONNECT_SLOT`]) -> [`crate::histogram::Histogram`], per socket cgroup
/// (`--by-cgroup`), updated atomically.
pub const TCP_LATENCY_BY_CGROUP_MAP: &str = "TCP_LATENCY_BY_CGROUP";
/// Hash map: [`crate::cgroup::CgroupKey`] (slot [`CONNECT_FAILURES_COUNTER`]
/// or [`RETRANSMITS_COUNTER`]) -> `u64`, per socket cgroup, updated atomically.
pub const TCP_COUNTERS_BY_CGROUP_MAP: &str = "TCP_COUNTERS_BY_CGROUP";
