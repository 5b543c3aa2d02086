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
    /// Thread ids of the jobs, for /proc/self/task/TID/schedstat.
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
            .map(|(cpu, job)| {
                let (started, finished, release) =
                    (started.clone(), finished.clone(), release.clone());
                let tid_tx = tid_tx.clone();
                std::thread::spawn(move || {
                    pin_to_cpu(cpu);
                    // SAFETY: gettid has no preconditions.
                    tid_tx.send(unsafe { libc::gettid() }).expect("send tid");
                    started.wait();
                    job();
                    finished.wait();
                    release.wait();
                })
            })
            .collect();
        started.wait();
        finished.wait();
        Finished {
            tids: tid_rx.iter().take(threads).collect(),
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
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity to CPU {cpu} failed");
    }
}
