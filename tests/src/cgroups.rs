//! Scratch cgroups (v2) for tests: made under the cgroup2 root, removed on
//! drop, with any process still in them moved back first ([`Cgroup`]), or
//! with processes started in them held until released and killed on drop
//! ([`TestCgroup`]).

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    require_root,
    schedstat::{self, SchedStat},
};

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup/unified` on a
/// hybrid host), from /proc/self/mountinfo: the mount of its root.
pub fn cgroup2_root() -> PathBuf {
    try_cgroup2_root().unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`cgroup2_root`], or why there is none.
pub fn try_cgroup2_root() -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            if after.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = before.split(' ').skip(3);
            let (root, mount_point) = (fields.next()?, fields.next()?);
            (root == "/").then(|| PathBuf::from(mount_point))
        })
        .context("the root of the cgroup2 hierarchy is mounted nowhere")
}

/// A cgroup made by a test; removed when dropped. Drop children before
/// their parent (declare them after it).
pub struct Cgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// Its path under the cgroup2 root, as the daemon's `cgroup=` takes it.
    pub path: String,
}

impl Cgroup {
    /// Makes the cgroup `path` (`/name` or `/parent/name`; the parent must
    /// exist), removing a leftover of an earlier run first.
    pub fn create(path: &str) -> Cgroup {
        require_root();
        let dir = cgroup2_root().join(path.trim_start_matches('/'));
        let cgroup = Cgroup {
            dir,
            path: path.to_owned(),
        };
        if cgroup.dir.exists() {
            cgroup.empty_and_remove();
        }
        std::fs::create_dir(&cgroup.dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup.dir.display()));
        cgroup
    }

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path));
    }

    /// Moves every process left in the cgroup to the test's own cgroup,
    /// then removes it, retrying while exiting processes still hold it.
    fn empty_and_remove(&self) {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            })
            .unwrap_or_else(|| "/".to_owned());
        let back = cgroup2_root()
            .join(own.trim_start_matches('/'))
            .join("cgroup.procs");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(&back, pid);
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("could not remove {}: {e}", self.dir.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.empty_and_remove();
    }
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
        let dir = cgroup2_root().join(path.trim_start_matches('/'));
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
