//! Where the cgroup v2 hierarchy is mounted. It is `/sys/fs/cgroup` on a
//! unified host, `/sys/fs/cgroup/unified` on a hybrid one (systemd's layout
//! with v1 controllers), and anywhere an administrator chose otherwise, so it
//! is looked up in /proc/self/mountinfo, never assumed.

use std::path::{Path, PathBuf};

/// Where hostscope mounts cgroup2 on a host that has it nowhere.
pub const PRIVATE_MOUNT: &str = "/run/hostscope/cgroup2";

/// The cgroup v2 hierarchy could not be found or mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// /proc/self/mountinfo could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
    /// No cgroup2 mount, and mounting one failed.
    #[error(
        "no cgroup2 hierarchy is mounted and mounting one at {PRIVATE_MOUNT} failed ({0}); \
         mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or run without --by-cgroup"
    )]
    Mount(std::io::Error),
}

/// The cgroup2 mount point, mounting the hierarchy at [`PRIVATE_MOUNT`] if
/// it is mounted nowhere (a v1-only host). Needs CAP_SYS_ADMIN for that,
/// so it runs before the daemon drops its capabilities.
pub fn find_or_mount() -> Result<PathBuf, MountError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Mountinfo)?;
    if let Some(found) = find_cgroup2(&mountinfo) {
        return Ok(found);
    }
    let target = Path::new(PRIVATE_MOUNT);
    std::fs::create_dir_all(target).map_err(MountError::Mount)?;
    rustix::mount::mount(
        "cgroup2",
        target,
        "cgroup2",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        None::<&std::ffi::CStr>,
    )
    .map_err(|errno| MountError::Mount(errno.into()))?;
    tracing::info!("no cgroup2 hierarchy was mounted; mounted one at {PRIVATE_MOUNT}");
    Ok(target.to_path_buf())
}

/// The cgroup2 mount point in `mountinfo` (the text of
/// /proc/self/mountinfo): the first one that shows the hierarchy's root,
/// else the first one at all.
pub fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    let mut mounts = mountinfo.lines().filter_map(parse_line);
    let mut fallback = None;
    for (root, mount_point) in mounts.by_ref() {
        if root == "/" {
            return Some(mount_point);
        }
        fallback.get_or_insert(mount_point);
    }
    fallback
}

/// `(root, mount point)` of a cgroup2 line of mountinfo, else `None`.
///
/// A line is `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
fn parse_line(line: &str) -> Option<(String, PathBuf)> {
    let (before, after) = line.split_once(" - ")?;
    if after.split(' ').next()? != "cgroup2" {
        return None;
    }
    let mut fields = before.split(' ');
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    Some((unescape(root), PathBuf::from(unescape(mount_point))))
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths
/// as `\040`, `\011`, `\012` and `\134`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_hybrid_and_absent() {
        let unified = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
29 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        // This host: systemd's hybrid layout.
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2(v1_only), None);
        assert_eq!(find_cgroup2(""), None);
    }

    /// A bind mount of a sub-cgroup (as inside some containers) is used
    /// only if the hierarchy's root is mounted nowhere.
    #[test]
    fn the_root_mount_wins_over_a_bind_mount() {
        let both = "\
50 1 0:26 /kubepods.slice /host/cg rw - cgroup2 cgroup2 rw
51 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2(both), Some(PathBuf::from("/sys/fs/cgroup")));
        let only_bind = "50 1 0:26 /kubepods.slice /host/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(only_bind), Some(PathBuf::from("/host/cg")));
    }

    #[test]
    fn escaped_and_malformed_lines() {
        let escaped = "60 1 0:26 / /mnt/my\\040cgroups rw shared:9 - cgroup2 none rw\n";
        assert_eq!(
            find_cgroup2(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(unescape("a\\134b\\01"), "a\\b\\01");
        for junk in [
            "- cgroup2",
            "1 2 - cgroup2 x y",
            "garbage",
            " - ",
            "1 2 3 / - cgroup2",
        ] {
            assert_eq!(find_cgroup2(junk), None, "{junk:?}");
        }
    }
}
