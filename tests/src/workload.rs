//! Controlled workloads on pinned threads. Every thread stays alive (asleep)
//! after its job until the [`Workload`] is dropped, so that its schedstat can
//! still be read after the measurement window.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    sync::{Arc, Barrier},
    thread::JoinHandle,
    time::{Duration, Instant},
};

type Job = Box<dyn FnOnce() + Send>;

/// A set of jobs, each on a thread pinned to a CPU, started together.
#[derive(Default)]
pub struct Workload {
    jobs: Vec<(usize, Job)>,
}

/// A workload that has run: its threads wait, asleep, to be dropped.
pub struct Finished {
    /// Thread ids of the jobs, in the order they were added, for
    /// /proc/self/task/TID/schedstat.
    pub tids: Vec<i32>,
    release: Arc<Barrier>,
    handles: Vec<JoinHandle<()>>,
}

impl Workload {
    /// An empty workload.
    pub fn new() -> Self {
        Self::default()
    }

    /// `threads` threads on `cpu`, each spinning for `duration`: they must
    /// queue behind each other (preemption, the requeue path).
    pub fn spinners(mut self, threads: usize, cpu: usize, duration: Duration) -> Self {
        for _ in 0..threads {
            self.jobs.push((cpu, Box::new(move || spin(duration))));
        }
        self
    }

    /// `threads` threads spinning for `duration` while one more moves each
    /// of them between CPU 0 and [`other_cpu`] every millisecond: with more
    /// spinners than CPUs, most moves catch a thread waiting on a run
    /// queue, so its wait is split between two queues.
    pub fn moving_spinners(mut self, threads: usize, duration: Duration) -> Self {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        for _ in 0..threads {
            let tid_tx = tid_tx.clone();
            self.jobs.push((
                0,
                Box::new(move || {
                    // SAFETY: gettid has no preconditions.
                    tid_tx.send(unsafe { libc::gettid() }).expect("send tid");
                    spin(duration);
                }),
            ));
        }
        let end = Instant::now() + duration;
        self.jobs.push((
            other_cpu(),
            Box::new(move || {
                let tids: Vec<i32> = tid_rx.iter().take(threads).collect();
                let cpus = [0, other_cpu()];
                let mut round = 0;
                while Instant::now() < end {
                    for (i, &tid) in tids.iter().enumerate() {
                        set_affinity(tid, cpus[(i + round) % 2]);
                    }
                    round += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }),
        ));
        self
    }

    /// Two threads on `cpu` passing a byte back and forth for `duration`:
    /// each round trip is two wakeups (the wakeup path).
    pub fn ping_pong(mut self, cpu: usize, duration: Duration) -> Self {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let end = Instant::now() + duration;
        self.jobs.push((
            cpu,
            Box::new(move || {
                let mut byte = [0u8];
                while Instant::now() < end {
                    a.write_all(&[1]).expect("ping");
                    a.read_exact(&mut byte).expect("pong");
                }
                a.write_all(&[0]).expect("stop");
            }),
        ));
        self.jobs.push((
            cpu,
            Box::new(move || {
                let mut byte = [0u8];
                loop {
                    b.read_exact(&mut byte).expect("ping");
                    if byte[0] == 0 {
                        break;
                    }
                    b.write_all(&[1]).expect("pong");
                }
            }),
        ));
        self
    }

    /// Runs every job at once; returns when all have finished.
    pub fn run(self) -> Finished {
        let threads = self.jobs.len();
        let started = Arc::new(Barrier::new(threads + 1));
        let finished = Arc::new(Barrier::new(threads + 1));
        let release = Arc::new(Barrier::new(threads + 1));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let handles = self
            .jobs
            .into_iter()
            .enumerate()
            .map(|(index, (cpu, job))| {
                let (started, finished, release) =
                    (started.clone(), finished.clone(), release.clone());
                let tid_tx = tid_tx.clone();
                std::thread::spawn(move || {
                    pin_to_cpu(cpu);
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    tid_tx.send((index, tid)).expect("send tid");
                    started.wait();
                    job();
                    finished.wait();
                    release.wait();
                })
            })
            .collect();
        started.wait();
        finished.wait();
        let mut tids: Vec<(usize, i32)> = tid_rx.iter().take(threads).collect();
        tids.sort_unstable();
        Finished {
            tids: tids.into_iter().map(|(_, tid)| tid).collect(),
            release,
            handles,
        }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.release.wait();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

fn spin(duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// The last online CPU (CPU 0 on a one-CPU machine), so that two workloads
/// can run on different CPUs where there are two.
pub fn other_cpu() -> usize {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).saturating_sub(1)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    set_affinity(0, cpu);
}

/// Pins thread `tid` (0: the calling thread) to `cpu`.
fn set_affinity(tid: i32, cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc, 0,
            "sched_setaffinity of thread {tid} to CPU {cpu} failed"
        );
    }
}
