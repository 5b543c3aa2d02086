//! Scratch cgroups (v2) for tests: made under the cgroup2 root, removed on
//! drop, with any process still in them moved back first.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::require_root;

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup/unified` on a
/// hybrid host), from /proc/self/mountinfo: the mount of its root.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
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
        .expect("this host mounts cgroup2 (its root)")
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
