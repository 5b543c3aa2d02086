//! Checks, before anything is loaded, that the process may load and attach
//! eBPF programs, so that a missing capability is one clear line rather than
//! an EPERM from deep inside the loader.

use caps::{CapSet, Capability};

/// The process lacks what loading eBPF programs takes.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// One or more capabilities are missing from the effective set.
    #[error(
        "missing capability {missing}: run hostscope as root, or grant it with \
         `setcap cap_bpf,cap_perfmon,cap_sys_admin,cap_syslog+ep hostscope`"
    )]
    Missing {
        /// The missing capabilities, comma-separated.
        missing: String,
    },
    /// The capability sets could not be read from /proc/self/status.
    #[error("cannot read this process's capabilities")]
    Unreadable(#[from] caps::errors::CapsError),
}

/// Loading tracing programs needs CAP_BPF and CAP_PERFMON (Linux 5.8+);
/// CAP_SYS_ADMIN grants both on any kernel.
pub fn check() -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective)?;
    if effective.contains(&Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<String> = [Capability::CAP_BPF, Capability::CAP_PERFMON]
        .into_iter()
        .filter(|cap| !effective.contains(cap))
        .map(|cap| cap.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing {
            missing: missing.join(", "),
        })
    }
}
