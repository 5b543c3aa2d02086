//! cgroup v2 groups the tests create, fill with processes and remove.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use crate::schedstat::{self, SchedStat};

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split(' ').next()? == "cgroup2").then(|| before.split(' ').nth(4))?
        })
        .map(PathBuf::from)
        .expect("a cgroup2 hierarchy is mounted (the daemon mounts one; tests expect the host's)")
}

/// A cgroup under the root, removed on drop with every process in it.
pub struct TestCgroup {
    /// Its path under the root, as the daemon labels it: `/hostscope-test-...`.
    pub path: String,
    dir: PathBuf,
    children: Vec<Child>,
}

/// A process started in a cgroup, held until [`TestCgroup::release`].
pub struct Gated {
    stdin: ChildStdin,
    /// Its pid.
    pub pid: u32,
}

impl TestCgroup {
    /// Creates `/hostscope-test-<pid>-<name>`.
    pub fn new(name: &str) -> TestCgroup {
        let path = format!("/hostscope-test-{}-{name}", std::process::id());
        let dir = root().join(path.trim_start_matches('/'));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        TestCgroup {
            path,
            dir,
            children: Vec::new(),
        }
    }

    /// Starts `sh -c script` in this cgroup. It waits for a line on its
    /// standard input before running `script`, so that all of its work
    /// happens inside the cgroup: write one with [`Gated::release`].
    pub fn spawn(&mut self, script: &str) -> Gated {
        let mut child = Command::new("sh")
            .args(["-c", &format!("read _ && {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sh");
        let pid = child.id();
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path));
        let stdin = child.stdin.take().expect("piped stdin");
        self.children.push(child);
        Gated { stdin, pid }
    }

    /// Waits for every process started here to exit; panics if one failed.
    pub fn wait_all(&mut self) {
        for child in &mut self.children {
            let status = child.wait().expect("wait for a cgroup's process");
            assert!(
                status.success(),
                "a process in {} failed: {status}",
                self.path
            );
        }
        self.children.clear();
    }

    /// Sends `signal` to every process started here.
    pub fn signal(&self, signal: i32) {
        for child in &self.children {
            // SAFETY: kill has no memory preconditions; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Stops every process started here (SIGSTOP) and waits until they are.
    pub fn stop_all(&self) {
        self.signal(libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &self.children {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
                    .unwrap_or_default();
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next());
                if state == Some("T") {
                    break;
                }
                assert!(Instant::now() < deadline, "{} did not stop", child.id());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// The kernel's run-queue accounting summed over every thread in here.
    pub fn schedstat(&self) -> SchedStat {
        let threads =
            std::fs::read_to_string(self.dir.join("cgroup.threads")).expect("read cgroup.threads");
        let mut total = SchedStat::default();
        for tid in threads.lines() {
            if let Some(stat) = schedstat::thread(&PathBuf::from(format!("/proc/{tid}"))) {
                total.on_cpu_ns += stat.on_cpu_ns;
                total.run_delay_ns += stat.run_delay_ns;
                total.timeslices += stat.timeslices;
            }
        }
        total
    }
}

impl Gated {
    /// Lets the process run its script.
    pub fn release(mut self) {
        self.stdin
            .write_all(b"\n")
            .expect("release a gated process");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        for child in &mut self.children {
            let _ = child.wait();
        }
        // A cgroup can be removed once its last task has been reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
