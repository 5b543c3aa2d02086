//! cgroup ids to paths. The kernel identifies a cgroup by its id (what
//! `bpf_get_current_cgroup_id` returns, `cgroup->kn->id`); on 64-bit
//! kernels that id is the inode number of the cgroup's directory in the
//! cgroup2 file system (checked on 6.18: bpftrace's `cgroup` for a process
//! in a new cgroup equals the directory's inode). So a walk of the
//! hierarchy maps ids to paths.
//!
//! Whoever may create cgroups (a container with a delegated subtree) shapes
//! this tree, so the walk is bounded in depth and in directories, never
//! follows symlinks (cgroupfs has none, a bind mount might) and never
//! leaves the mount it starts on.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Deepest cgroup path walked: systemd and Kubernetes nest 4-6 levels.
pub const MAX_DEPTH: usize = 32;
/// Most cgroups walked: far more than a host runs; bounds the map's memory.
pub const MAX_CGROUPS: usize = 65_536;

/// Every cgroup under a cgroup2 mount, by id.
#[derive(Debug, Default)]
pub struct CgroupPaths {
    by_id: HashMap<u64, String>,
    /// Whether the walk stopped at [`MAX_DEPTH`] or [`MAX_CGROUPS`].
    pub truncated: bool,
}

impl CgroupPaths {
    /// Walks the hierarchy mounted at `root`. Paths are relative to it and
    /// start with `/` (the root cgroup is `/`), as /proc/PID/cgroup shows them.
    pub fn scan(root: &Path) -> std::io::Result<Self> {
        let device = std::fs::metadata(root)?.dev();
        let mut paths = CgroupPaths::default();
        let mut pending = vec![(root.to_path_buf(), String::from("/"), 0usize)];
        while let Some((dir, path, depth)) = pending.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue; // removed while walking
            };
            if !meta.is_dir() || meta.dev() != device {
                continue;
            }
            if paths.by_id.len() >= MAX_CGROUPS {
                paths.truncated = true;
                break;
            }
            paths.by_id.insert(meta.ino(), path.clone());
            if depth >= MAX_DEPTH {
                paths.truncated = true;
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // cgroup directories only: the interface files are files.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    pending.push((entry.path(), child, depth + 1));
                }
            }
        }
        Ok(paths)
    }

    /// The path of cgroup `id`, if it existed at the scan.
    pub fn get(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// How many cgroups the scan found.
    #[cfg_attr(not(test), expect(dead_code, reason = "used by the tests"))]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The directory of `path` (as [`CgroupPaths`] writes it) under `root`.
pub fn directory(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "hostscope-cgroup-paths-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for dir in [
            "system.slice/nginx.service",
            "kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("system.slice/cgroup.procs"), "").unwrap();
        root
    }

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    /// Ids are directory inodes; paths start at `/`; files are not cgroups.
    #[test]
    fn maps_directory_inodes_to_paths() {
        let root = tree();
        let paths = CgroupPaths::scan(&root).unwrap();
        assert_eq!(paths.get(inode(&root)), Some("/"));
        let nginx = root.join("system.slice/nginx.service");
        assert_eq!(
            paths.get(inode(&nginx)),
            Some("/system.slice/nginx.service")
        );
        let scope = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope";
        assert_eq!(paths.get(inode(&directory(&root, scope))), Some(scope));
        assert_eq!(
            paths.get(inode(&root.join("system.slice/cgroup.procs"))),
            None
        );
        assert_eq!(paths.len(), 6);
        assert!(!paths.truncated);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A symlink (to anywhere, even back up the tree) is not followed, and a
    /// tree deeper than the limit is cut, and says so.
    #[test]
    fn symlinks_are_not_followed_and_depth_is_bounded() {
        let root = tree();
        std::os::unix::fs::symlink(&root, root.join("system.slice/loop")).unwrap();
        let mut deep = root.join("deep");
        for _ in 0..MAX_DEPTH + 5 {
            deep = deep.join("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let paths = CgroupPaths::scan(&root).unwrap();
        assert!(paths.truncated);
        assert_eq!(paths.len(), 6 + MAX_DEPTH);
        assert_eq!(paths.get(inode(&deep)), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
