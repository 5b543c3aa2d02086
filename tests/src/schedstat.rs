//! The kernel's own run-queue accounting: /proc/PID/task/TID/schedstat holds
//! "time on CPU (ns), time waiting on a run queue (ns), timeslices".

use std::{fs, path::Path};

/// Run-queue accounting of one thread or a sum over many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStat {
    /// Nanoseconds spent running.
    pub on_cpu_ns: u64,
    /// Nanoseconds spent runnable but waiting on a run queue.
    pub run_delay_ns: u64,
    /// Times the thread was switched in.
    pub timeslices: u64,
}

impl SchedStat {
    /// What accrued since `earlier`.
    pub fn since(&self, earlier: &SchedStat) -> SchedStat {
        SchedStat {
            on_cpu_ns: self.on_cpu_ns - earlier.on_cpu_ns,
            run_delay_ns: self.run_delay_ns - earlier.run_delay_ns,
            timeslices: self.timeslices - earlier.timeslices,
        }
    }
}

/// One thread's accounting, or `None` if it is gone.
pub fn thread(path: &Path) -> Option<SchedStat> {
    let text = fs::read_to_string(path.join("schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some(SchedStat {
        on_cpu_ns: fields.next()??,
        run_delay_ns: fields.next()??,
        timeslices: fields.next()??,
    })
}

/// One thread of this process, by thread id.
pub fn own_thread(tid: i32) -> SchedStat {
    thread(Path::new(&format!("/proc/self/task/{tid}"))).expect("read this thread's schedstat")
}

/// How many times a thread of this process moved to another CPU
/// (`se.nr_migrations` in /proc/self/task/TID/sched, which kernels with
/// CONFIG_SCHED_DEBUG have).
pub fn own_thread_migrations(tid: i32) -> u64 {
    let path = format!("/proc/self/task/{tid}/sched");
    let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {path}: {err}"));
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == "se.nr_migrations").then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("{path} has no se.nr_migrations"))
}

/// Per-thread accounting of every thread on the system, keyed by
/// (pid, tid), so that two readings can be compared thread by thread.
pub fn all_threads() -> std::collections::HashMap<(u32, u32), SchedStat> {
    let mut all = std::collections::HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return all;
    };
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(tasks) = fs::read_dir(proc_entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(stat) = thread(&task.path()) {
                all.insert((pid, tid), stat);
            }
        }
    }
    all
}

/// What every thread alive at `after` accrued since `before` (threads born in
/// between count from zero). Threads that exited in between are lost to the
/// kernel's accounting: the caller keeps the system quiet.
pub fn accrued(
    before: &std::collections::HashMap<(u32, u32), SchedStat>,
    after: &std::collections::HashMap<(u32, u32), SchedStat>,
) -> SchedStat {
    let mut total = SchedStat::default();
    for (key, now) in after {
        let then = before.get(key).copied().unwrap_or_default();
        let delta = now.since(&then);
        total.on_cpu_ns += delta.on_cpu_ns;
        total.run_delay_ns += delta.run_delay_ns;
        total.timeslices += delta.timeslices;
    }
    total
}
