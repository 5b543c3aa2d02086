//! Layout of the scheduler collector's maps.

/// Map holding the run-queue latency histogram: a per-CPU array with one
/// [`crate::histogram::Histogram`] entry.
pub const RUNQ_LATENCY_MAP: &str = "RUNQ_LATENCY";

/// The eBPF programs of the scheduler collector, by function name, paired
/// with the BTF tracepoint each attaches to.
pub const SCHED_PROGRAMS: [(&str, &str); 1] = [("sched_switch", "sched_switch")];

/// Slots of the array where the `sched_switch` program keeps each task's
/// run delay as of its last switch-in (32 bytes each, 1 MiB), to record
/// whole a wait that moved between CPUs. A power of two.
pub const RUNQ_ARRIVED_SLOTS: u32 = 1 << 15;

/// Hash map: [`crate::cgroup::CgroupKey`] -> [`crate::histogram::Histogram`],
/// the run-queue latency per cgroup (`--by-cgroup`), updated atomically.
pub const RUNQ_LATENCY_BY_CGROUP_MAP: &str = "RUNQ_LATENCY_BY_CGROUP";

/// Names of the load-time constants: byte offsets of the kernel fields the
/// `sched_switch` program reads, found in the kernel's BTF by the daemon.
pub mod offsets {
    /// `struct task_struct.sched_info.last_queued`: when the task was put
    /// on its run queue, in that queue's clock (0: not queued).
    pub const TASK_LAST_QUEUED: &str = "SCHED_OFF_TASK_LAST_QUEUED";
    /// `struct task_struct.se.cfs_rq`: the task's fair-class queue on its
    /// CPU (`CONFIG_FAIR_GROUP_SCHED`).
    pub const TASK_CFS_RQ: &str = "SCHED_OFF_TASK_CFS_RQ";
    /// `struct cfs_rq.rq`: the CPU's run queue.
    pub const CFS_RQ_RQ: &str = "SCHED_OFF_CFS_RQ_RQ";
    /// `struct rq.clock`: the run queue's clock, updated by `__schedule`
    /// before `sched_switch` fires.
    pub const RQ_CLOCK: &str = "SCHED_OFF_RQ_CLOCK";
    /// `struct task_struct.sched_info.run_delay`: the task's total wait,
    /// which the kernel adds to when a wait ends or moves.
    pub const TASK_RUN_DELAY: &str = "SCHED_OFF_TASK_RUN_DELAY";
    /// `struct task_struct.sched_info.last_arrival`: when the task was last
    /// switched in after a wait, in that run queue's clock.
    pub const TASK_LAST_ARRIVAL: &str = "SCHED_OFF_TASK_LAST_ARRIVAL";
    /// `struct task_struct.se.nr_migrations`: how many times the task moved
    /// to another CPU.
    pub const TASK_NR_MIGRATIONS: &str = "SCHED_OFF_TASK_NR_MIGRATIONS";
}
