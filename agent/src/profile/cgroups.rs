//! cgroup v2 in profiles: the `cgroup` parameter (a path under the cgroup2
//! root, checked, then resolved to the id the sampler compares).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::ProfileError;
use crate::{
    cgroup::{mount, paths},
    quote::quoted,
};

/// Longest `cgroup` value accepted, in bytes: PATH_MAX.
pub const MAX_PATH_BYTES: usize = 4096;

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
}
