//! cgroup v2 in profiles: the `cgroup` parameter (a path under the cgroup2
//! root, checked, then resolved to the id the sampler compares), and the
//! names of the cgroups samples came from.
//!
//! The sampler records each sample's cgroup id; ids become paths here. A
//! cgroup can be removed before the capture ends, so names are gathered
//! three ways: a walk of the hierarchy when the capture starts, the cgroup
//! of each sampled process when it is first seen (a cgroup that lived for
//! part of the capture), and a walk at the end.

use std::{
    collections::HashMap,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::ProfileError;
use crate::{
    cgroup::{
        mount,
        paths::{self, CgroupPaths},
    },
    quote::quoted,
};

/// Longest `cgroup` value accepted, in bytes: PATH_MAX.
pub const MAX_PATH_BYTES: usize = 4096;

/// What a sample's cgroup is called when no walk or process named it (it
/// was created and removed between two looks, or the walk was cut short).
pub const UNKNOWN: &str = "[unknown cgroup]";

/// A cgroup a request is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFilter {
    /// Its path under the cgroup2 root, normalized: `/` or `/a/b`.
    pub path: String,
    /// Its id, as the kernel gives it to BPF: the inode of its directory.
    pub id: u64,
}

/// Where the cgroup2 hierarchy is mounted here, if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount::find_cgroup2(&mountinfo)
}

/// The refusal of `what` when no cgroup2 is mounted.
pub fn not_mounted(what: &str) -> ProfileError {
    ProfileError::BadRequest(format!(
        "{what} needs cgroup v2, and no cgroup2 file system is mounted here"
    ))
}

/// `text` as a cgroup path: absolute, no `.` or `..`, within the length
/// and depth limits; repeated and trailing slashes dropped.
pub fn normalize(text: &str) -> Result<String, ProfileError> {
    let bad = |m: String| Err(ProfileError::BadRequest(m));
    if text.len() > MAX_PATH_BYTES {
        return bad(format!(
            "cgroup is {} bytes long, above the limit of {MAX_PATH_BYTES}",
            text.len()
        ));
    }
    if !text.starts_with('/') {
        return bad(format!(
            "cgroup must be a path from the cgroup2 root, such as /system.slice, not {}",
            quoted(text)
        ));
    }
    let components: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
    if components.iter().any(|c| *c == "." || *c == "..") {
        return bad(format!(
            "cgroup must not contain `.` or `..` components: {}",
            quoted(text)
        ));
    }
    if components.len() > paths::MAX_DEPTH {
        return bad(format!(
            "cgroup {} is deeper than {} levels",
            quoted(text),
            paths::MAX_DEPTH
        ));
    }
    Ok(format!("/{}", components.join("/")))
}

/// The cgroup at `path` (normalized) in the hierarchy mounted at `root`.
pub fn resolve(root: Option<&Path>, path: &str) -> Result<CgroupFilter, ProfileError> {
    let root = root.ok_or_else(|| not_mounted("cgroup=PATH"))?;
    let not_found = || {
        ProfileError::BadRequest(format!(
            "no cgroup {} under the cgroup2 root {}",
            quoted(path),
            quoted(&root.to_string_lossy())
        ))
    };
    let device = std::fs::metadata(root).map_err(|_| not_found())?.dev();
    // Every directory of a cgroup2 file system is a cgroup, and it has no
    // symlinks; the device check rules out anything mounted inside it.
    let meta = std::fs::symlink_metadata(paths::directory(root, path)).map_err(|_| not_found())?;
    if !meta.is_dir() || meta.dev() != device {
        return Err(not_found());
    }
    Ok(CgroupFilter {
        path: path.to_owned(),
        id: meta.ino(),
    })
}

/// `relative` (as [`CgroupPaths`] writes paths under a walk's start)
/// joined to `base`, the path where that walk started.
fn under(base: &str, relative: &str) -> String {
    match (base, relative) {
        ("/", _) => relative.to_owned(),
        (_, "/") => base.to_owned(),
        _ => format!("{base}{relative}"),
    }
}

/// The cgroup id to path map of one capture.
#[derive(Debug, Default)]
pub struct Names {
    /// The cgroup2 mount point; `None` if there is none: every id is unknown.
    root: Option<PathBuf>,
    /// The cgroup the capture is limited to, if it is.
    filter: Option<String>,
    /// Walks of the hierarchy (or of the filter's subtree), latest last.
    walks: Vec<CgroupPaths>,
    /// Cgroups of sampled processes, read when each was first seen.
    of_processes: HashMap<u64, String>,
}

impl Names {
    /// Names for a capture limited to `filter`, if set; walks the
    /// hierarchy once (the start of the capture).
    pub fn start(filter: Option<&CgroupFilter>) -> Self {
        let mut names = Self {
            root: cgroup2_root(),
            filter: filter.map(|f| f.path.clone()),
            ..Self::default()
        };
        names.walk();
        names
    }

    /// Walks the hierarchy (only the filter's subtree, as only samples
    /// from there are counted) and keeps what it found.
    pub fn walk(&mut self) {
        let Some(root) = &self.root else {
            return;
        };
        let start = paths::directory(root, self.filter.as_deref().unwrap_or("/"));
        match CgroupPaths::scan(&start) {
            Ok(found) => {
                if found.truncated {
                    tracing::debug!(
                        "the cgroup walk stopped at {} cgroups or {} levels",
                        paths::MAX_CGROUPS,
                        paths::MAX_DEPTH
                    );
                }
                self.walks.push(found);
            }
            Err(err) => tracing::debug!("cannot walk {}: {err}", start.display()),
        }
    }

    /// Records the cgroup process `tgid` is in now, from /proc/PID/cgroup.
    pub fn process(&mut self, tgid: u32) {
        let Some(root) = &self.root else {
            return;
        };
        let Some(path) = read_proc_cgroup(tgid) else {
            return;
        };
        // The kernel shows the path from our cgroup namespace's root, which
        // is the mount's root unless only a subtree is bind-mounted; the
        // directory's own inode keeps the pair true either way.
        if let Ok(path) = normalize(&path)
            && let Ok(found) = resolve(Some(root), &path)
        {
            self.of_processes.insert(found.id, path);
        }
    }

    /// The path of cgroup `id`. One no look found is still under the
    /// filter's cgroup, if there is one: the sampler checked.
    pub fn name(&self, id: u64) -> String {
        if let Some(path) = self.of_processes.get(&id) {
            return path.clone();
        }
        let base = self.filter.as_deref().unwrap_or("/");
        match self.walks.iter().rev().find_map(|walk| walk.get(id)) {
            Some(relative) => under(base, relative),
            None if base == "/" => UNKNOWN.to_owned(),
            None => format!("{base}/{UNKNOWN}"),
        }
    }
}

/// The cgroup v2 path in /proc/PID/cgroup (its `0::PATH` line), unless the
/// process is gone or its cgroup was removed.
fn read_proc_cgroup(tgid: u32) -> Option<String> {
    // Beyond this the file is not what the kernel writes.
    const MAX_BYTES: u64 = 64 << 10;
    let file = std::fs::File::open(format!("/proc/{tgid}/cgroup")).ok()?;
    let mut text = String::new();
    file.take(MAX_BYTES).read_to_string(&mut text).ok()?;
    v2_path(&text).map(str::to_owned)
}

/// The path of the `0::PATH` line of a /proc/PID/cgroup text.
fn v2_path(text: &str) -> Option<&str> {
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    // A removed cgroup reads `/path (deleted)`; its name is gone.
    (!path.ends_with(" (deleted)")).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<impl std::fmt::Debug, ProfileError>) -> String {
        match result {
            Err(ProfileError::BadRequest(reason)) => {
                assert!(
                    reason.len() < 160 && !reason.contains('\n'),
                    "not one short line: {reason}"
                );
                reason
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn paths_are_normalized_or_refused_with_a_reason() {
        for (text, normal) in [
            ("/", "/"),
            ("//", "/"),
            ("/system.slice/nginx.service", "/system.slice/nginx.service"),
            (
                "/system.slice//nginx.service/",
                "/system.slice/nginx.service",
            ),
            ("/a b/c;d", "/a b/c;d"),
        ] {
            assert_eq!(normalize(text).unwrap(), normal, "{text}");
        }
        let deep = "/d".repeat(paths::MAX_DEPTH + 1);
        let long = format!("/{}", "x".repeat(MAX_PATH_BYTES));
        for (text, says) in [
            ("", "must be a path from the cgroup2 root"),
            ("system.slice", "not `system.slice`"),
            ("/system.slice/../etc", "`.` or `..`"),
            ("/..", "`.` or `..`"),
            ("/a/./b", "`.` or `..`"),
            ("/a\n/..", "`/a\\n/..`"),
            (deep.as_str(), "deeper than 32 levels"),
            (long.as_str(), "4097 bytes long, above the limit of 4096"),
        ] {
            let reason = refused(normalize(text));
            assert!(reason.contains(says), "{text:?}: {reason}");
        }
    }

    /// A scratch directory standing in for the cgroup2 root.
    fn tree(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "hostscope-profile-cgroups-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("system.slice/nginx.service")).unwrap();
        std::fs::write(root.join("system.slice/cgroup.procs"), "").unwrap();
        root
    }

    #[test]
    fn resolves_directories_under_the_root_only() {
        let root = tree("resolve");
        let nginx = resolve(Some(&root), "/system.slice/nginx.service").unwrap();
        let inode = std::fs::metadata(root.join("system.slice/nginx.service"))
            .unwrap()
            .ino();
        assert_eq!(nginx.id, inode);
        assert_eq!(nginx.path, "/system.slice/nginx.service");
        assert_eq!(
            resolve(Some(&root), "/").unwrap().id,
            std::fs::metadata(&root).unwrap().ino()
        );
        for path in ["/system.slice/cgroup.procs", "/nope", "/system.slice/nope"] {
            let reason = refused(resolve(Some(&root), path));
            assert!(reason.contains("no cgroup"), "{path}: {reason}");
        }
        let reason = refused(resolve(None, "/system.slice"));
        assert!(reason.contains("no cgroup2 file system"), "{reason}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names_come_from_walks_and_processes() {
        let root = tree("names");
        let id = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let mut names = Names {
            root: Some(root.clone()),
            ..Names::default()
        };
        names.walk();
        assert_eq!(
            names.name(id("system.slice/nginx.service")),
            "/system.slice/nginx.service"
        );
        // Created after the first walk, removed before the second: unknown.
        std::fs::create_dir(root.join("gone")).unwrap();
        let gone = id("gone");
        std::fs::remove_dir(root.join("gone")).unwrap();
        names.walk();
        assert_eq!(names.name(gone), UNKNOWN);
        // Removed after the first walk: still named.
        let nginx = id("system.slice/nginx.service");
        std::fs::remove_dir(root.join("system.slice/nginx.service")).unwrap();
        names.walk();
        assert_eq!(names.name(nginx), "/system.slice/nginx.service");

        // Limited to a subtree, whose walk writes paths from its own top.
        let mut limited = Names {
            root: Some(root.clone()),
            filter: Some("/system.slice".into()),
            ..Names::default()
        };
        std::fs::create_dir(root.join("system.slice/cron.service")).unwrap();
        limited.walk();
        assert_eq!(limited.name(id("system.slice")), "/system.slice");
        assert_eq!(
            limited.name(id("system.slice/cron.service")),
            "/system.slice/cron.service"
        );
        assert_eq!(limited.name(gone), "/system.slice/[unknown cgroup]");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_v2_line_of_proc_cgroup() {
        let hybrid = "12:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/user.slice/session-1.scope\n";
        assert_eq!(v2_path(hybrid), Some("/user.slice/session-1.scope"));
        assert_eq!(v2_path("0::/\n"), Some("/"));
        assert_eq!(v2_path("0::/gone (deleted)\n"), None);
        assert_eq!(v2_path("1:name=systemd:/\n"), None);
        // Our own process, read for real (no v2 line on a v1-only host).
        let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(
            read_proc_cgroup(std::process::id()).as_deref(),
            v2_path(&ours)
        );
    }
}
