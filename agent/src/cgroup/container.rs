//! Which container and pod a cgroup path names, from the path shapes that
//! container runtimes and the kubelet create. The result joins with
//! kube-state-metrics, whose `container_id` is `<runtime>://<id>` and whose
//! pod `uid` has dashes.
//!
//! Shapes recognised (`<id>` is 64 hex digits, `<uid>` a pod UID):
//! - systemd cgroup driver: `.../kubepods-<qos>-pod<uid_with_underscores>.slice/
//!   cri-containerd-<id>.scope` (also `crio-<id>.scope`, `docker-<id>.scope`),
//!   with `kubepods-pod<uid>.slice` for guaranteed pods;
//! - cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>` and `/kubepods/pod<uid>/<id>`;
//! - Docker: `/system.slice/docker-<id>.scope`, `/docker/<id>`;
//! - Podman: `libpod-<id>.scope` (rootful or rootless), `/libpod_parent/libpod-<id>`;
//! - containerd without Kubernetes: `/<namespace>/<id>` is too loose to
//!   claim, so only the forms above are.
//!
//! A runtime's monitor process (`crio-conmon-<id>.scope`,
//! `libpod-conmon-<id>.scope`) is not a container and gets no labels.

/// The container and pod a cgroup belongs to, as far as its path says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` or
    /// `podman://<id>`; just `<id>` where the path does not name the runtime
    /// (Kubernetes' cgroupfs driver).
    pub container_id: Option<String>,
    /// The pod's UID, with dashes (`1a2b3c4d-...`).
    pub pod_uid: Option<String>,
}

/// Scope prefixes of the systemd cgroup driver, and the runtime each means.
const SCOPE_RUNTIMES: [(&str, &str); 4] = [
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
];

/// Parses `path`, a cgroup's path under the cgroup2 root.
pub fn identify(path: &str) -> Identity {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let in_kubepods = components
        .first()
        .is_some_and(|c| c.starts_with("kubepods"));
    let pod_uid = components
        .iter()
        .find_map(|c| pod_uid(c))
        .filter(|_| in_kubepods);
    let container_id = components.last().and_then(|last| {
        scope_container(last).or_else(|| {
            // cgroupfs drivers: a bare id under a pod, under /docker, or a
            // `libpod-<id>` under /libpod_parent.
            let parent = components.len().checked_sub(2).map(|i| components[i])?;
            if is_container_id(last) {
                if pod_uid.is_some() {
                    // The path does not name the runtime, and a guessed
                    // scheme would join with the wrong series: the bare id.
                    return Some((*last).to_owned());
                }
                if parent == "docker" {
                    return Some(format!("docker://{last}"));
                }
            }
            if parent == "libpod_parent" {
                let id = last.strip_prefix("libpod-")?;
                return is_container_id(id).then(|| format!("podman://{id}"));
            }
            None
        })
    });
    Identity {
        container_id,
        pod_uid,
    }
}

/// `cri-containerd-<id>.scope` and the like: `<runtime>://<id>`.
fn scope_container(component: &str) -> Option<String> {
    let stem = component.strip_suffix(".scope")?;
    SCOPE_RUNTIMES.iter().find_map(|(prefix, runtime)| {
        let id = stem.strip_prefix(prefix)?;
        is_container_id(id).then(|| format!("{runtime}://{id}"))
    })
}

/// The pod UID in `kubepods-burstable-pod<uid>.slice` (underscores for
/// dashes) or `pod<uid>` (cgroupfs driver).
fn pod_uid(component: &str) -> Option<String> {
    let raw = match component.strip_suffix(".slice") {
        Some(slice) => {
            if !slice.starts_with("kubepods-") {
                return None;
            }
            let (_, uid) = slice.rsplit_once("-pod")?;
            uid.replace('_', "-")
        }
        None => component.strip_prefix("pod")?.to_owned(),
    };
    is_uuid(&raw).then_some(raw)
}

/// 64 lowercase hex digits: the container ids every runtime here uses.
fn is_container_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `8-4-4-4-12` hex digits, as Kubernetes pod UIDs are.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7f3c9a1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const UID: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";

    fn expect(path: &str, container_id: Option<&str>, pod_uid: Option<&str>) {
        assert_eq!(
            identify(path),
            Identity {
                container_id: container_id.map(str::to_owned),
                pod_uid: pod_uid.map(str::to_owned),
            },
            "{path}"
        );
    }

    #[test]
    fn kubernetes_with_the_systemd_driver() {
        let uid = UID.replace('-', "_");
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
            ),
            Some(&format!("containerd://{ID}")),
            Some(UID),
        );
        expect(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope"
            ),
            Some(&format!("cri-o://{ID}")),
            Some(UID),
        );
        // Guaranteed pods sit directly under kubepods.slice.
        expect(
            &format!("/kubepods.slice/kubepods-pod{uid}.slice/docker-{ID}.scope"),
            Some(&format!("docker://{ID}")),
            Some(UID),
        );
        // The pod's own slice: a pod, no container.
        expect(
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"),
            None,
            Some(UID),
        );
        // CRI-O's monitor is not a container.
        expect(
            &format!("/kubepods.slice/kubepods-pod{uid}.slice/crio-conmon-{ID}.scope"),
            None,
            Some(UID),
        );
    }

    #[test]
    fn kubernetes_with_the_cgroupfs_driver() {
        expect(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(ID),
            Some(UID),
        );
        expect(&format!("/kubepods/pod{UID}/{ID}"), Some(ID), Some(UID));
        expect(&format!("/kubepods/besteffort/pod{UID}"), None, Some(UID));
    }

    #[test]
    fn docker_and_podman() {
        let docker = Some(format!("docker://{ID}"));
        let podman = Some(format!("podman://{ID}"));
        expect(
            &format!("/system.slice/docker-{ID}.scope"),
            docker.as_deref(),
            None,
        );
        expect(&format!("/docker/{ID}"), docker.as_deref(), None);
        expect(
            &format!("/machine.slice/libpod-{ID}.scope"),
            podman.as_deref(),
            None,
        );
        expect(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            podman.as_deref(),
            None,
        );
        expect(
            &format!("/libpod_parent/libpod-{ID}"),
            podman.as_deref(),
            None,
        );
        expect(
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            None,
            None,
        );
        // A container's own sub-cgroups (systemd inside it, say) are not it.
        expect(
            &format!("/system.slice/docker-{ID}.scope/init.scope"),
            None,
            None,
        );
    }

    #[test]
    fn services_and_near_misses_get_no_labels() {
        for path in [
            "/",
            "",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/init.scope",
            // Not 64 hex digits.
            "/system.slice/docker-abc.scope",
            "/docker/not-an-id",
            // Upper case is not what runtimes write.
            &format!("/docker/{}", ID.to_uppercase()),
            // A pod-looking name outside kubepods and with no UUID.
            "/system.slice/pod-manager.service",
            "/kubepods.slice/kubepods-podnotauid.slice",
            // A bare id under a pod outside kubepods is not claimed.
            &format!("/mine/pod{UID}/{ID}"),
        ] {
            assert_eq!(identify(path), Identity::default(), "{path}");
        }
    }
}
