//! Layout of the scheduler collector's maps.

/// Map holding the run-queue latency histogram: a per-CPU array with one
/// [`crate::histogram::Histogram`] entry.
pub const RUNQ_LATENCY_MAP: &str = "RUNQ_LATENCY";

/// The eBPF programs of the scheduler collector, by function name, paired
/// with the BTF tracepoint each attaches to.
pub const SCHED_PROGRAMS: [(&str, &str); 3] = [
    ("sched_wakeup", "sched_wakeup"),
    ("sched_wakeup_new", "sched_wakeup_new"),
    ("sched_switch", "sched_switch"),
];

/// Hash map: [`crate::cgroup::CgroupKey`] -> [`crate::histogram::Histogram`],
/// the run-queue latency per cgroup (`--by-cgroup`), updated atomically.
pub const RUNQ_LATENCY_BY_CGROUP_MAP: &str = "RUNQ_LATENCY_BY_CGROUP";
