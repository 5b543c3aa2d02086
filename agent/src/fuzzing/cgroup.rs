//! The cgroup parsers on arbitrary bytes. cgroup names are chosen by
//! whoever may create cgroups (a container with a delegated subtree, for
//! one), and mountinfo paths by whoever may mount.

use super::Violation;
use crate::cgroup::{container, mount};

/// Paths: whatever `identify` claims is well-formed; mountinfo: no panic.
pub(super) fn check(data: &[u8]) -> Result<(), Violation> {
    let text = String::from_utf8_lossy(data);
    let identity = container::identify(&text);
    if let Some(id) = &identity.container_id {
        let bare = id.rsplit_once("://").map_or(id.as_str(), |(_, id)| id);
        let hex = bare.len() == 64 && bare.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || !text.contains(bare) {
            return Err(Violation::Broken(format!(
                "container id {id:?} from {text:?}"
            )));
        }
    }
    if let Some(uid) = &identity.pod_uid
        && (uid.len() != 36 || !uid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()))
    {
        return Err(Violation::Broken(format!("pod uid {uid:?} from {text:?}")));
    }
    let _ = mount::find_cgroup2(&text);
    Ok(())
}

/// Real path shapes and mountinfo lines.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    let id = "7f3c9a1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    let uid = "1a2b3c4d_5e6f_4a7b_8c9d_0e1f2a3b4c5d";
    [
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{id}.scope"),
        format!("/kubepods/besteffort/pod{}/{id}", uid.replace('_', "-")),
        format!("/system.slice/docker-{id}.scope"),
        format!("/libpod_parent/libpod-{id}"),
        "/system.slice/nginx.service".to_owned(),
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
         60 1 0:26 / /mnt/my\\040cg rw shared:9 - cgroup2 none rw\n"
            .to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}
