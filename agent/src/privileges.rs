//! Capabilities: checked before anything is loaded, so that a missing one is
//! one clear line rather than an EPERM from deep inside the loader; dropped
//! once everything is attached, so that the long-running daemon keeps only
//! what it still uses.
//!
//! Capabilities belong to threads, not processes: [`drop_to_runtime_set`]
//! must run before any other thread is started (the async runtime, the
//! symbolizer), or those threads keep the full set.

use std::collections::HashSet;

use caps::{CapSet, Capability};

/// What a daemon still needs after start-up, and why. Everything else
/// (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_MODULE, ...) is gone from every
/// set, the bounding set included, so that not even an exec can get it back.
pub const RUNTIME_SET: [(Capability, &str); 6] = [
    (
        Capability::CAP_PERFMON,
        "open the CPU-clock perf events a profile samples with",
    ),
    (
        Capability::CAP_BPF,
        "attach the loaded sampler to those perf events",
    ),
    (
        Capability::CAP_SYSLOG,
        "read kernel symbol addresses from /proc/kallsyms to name kernel frames",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "read other users' /proc/PID/maps and /proc/PID/root for user frames",
    ),
    (
        Capability::CAP_CHECKPOINT_RESTORE,
        "open mapped files through /proc/PID/map_files (deleted or replaced libraries)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "open a sampled process's binaries whatever their file mode",
    ),
];

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
    /// Dropping capabilities failed: the daemon refuses to run with more
    /// than it needs.
    #[error("cannot drop capabilities ({0}); the daemon will not run with more than it needs")]
    Drop(caps::errors::CapsError),
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

/// Drops every capability outside [`RUNTIME_SET`] from the bounding,
/// inheritable, ambient, permitted and effective sets of the calling thread
/// (the only thread, when called as documented). Capabilities of the set
/// that the process never had stay absent. Every capability of that set is
/// for profiles: without `profiling` (`--web.disable-profiling`), none is
/// kept, as reading the collectors' maps through descriptors already open
/// needs none. Returns the set kept.
pub fn drop_to_runtime_set(profiling: bool) -> Result<HashSet<Capability>, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: HashSet<Capability> = RUNTIME_SET
        .iter()
        .map(|(cap, _)| *cap)
        .filter(|cap| profiling && permitted.contains(cap))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // effective set loses below. Capabilities this kernel does not know are
    // skipped by `caps::all()`'s runtime check.
    let bounding = caps::read(None, CapSet::Bounding)?;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(PrivilegeError::Drop)?;
        }
    } else if !bounding.is_subset(&keep) {
        tracing::warn!(
            "without CAP_SETPCAP the bounding set cannot be narrowed; only the \
             effective and permitted sets are"
        );
    }
    caps::clear(None, CapSet::Ambient).map_err(PrivilegeError::Drop)?;
    caps::clear(None, CapSet::Inheritable).map_err(PrivilegeError::Drop)?;
    caps::set(None, CapSet::Effective, &keep).map_err(PrivilegeError::Drop)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(PrivilegeError::Drop)?;
    Ok(keep)
}

/// `CAP_BPF, CAP_PERFMON, ...` in [`RUNTIME_SET`]'s order, or `none`.
pub fn describe(kept: &HashSet<Capability>) -> String {
    let names: Vec<String> = RUNTIME_SET
        .iter()
        .filter(|(cap, _)| kept.contains(cap))
        .map(|(cap, _)| cap.to_string())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
