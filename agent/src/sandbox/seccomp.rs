//! The sandbox's system-call filter: what reading files it was handed and
//! answering on its socket takes, and nothing else. No `open`, no
//! `socket`, no `execve`, no `kill`, no `ptrace`, no executable memory. A
//! call outside the list kills the sandbox, which the daemon then
//! restarts.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Calls allowed with any arguments.
const ALLOWED: &[i64] = &[
    // Requests in, replies out, files read, a log line on stderr.
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_close,
    libc::SYS_fstat,
    // Memory.
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    // The runtime: locks, time, random seeds, signal returns, exit.
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Builds the filter for this machine's architecture.
pub fn filter() -> Result<BpfProgram, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|call| (*call, Vec::new())).collect();
    // Memory may be mapped and protected, but never executable.
    let not_exec = |arg| -> Result<Vec<SeccompRule>, seccompiler::Error> {
        Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, not_exec(2)?);
    rules.insert(libc::SYS_mprotect, not_exec(2)?);
    // std's File::metadata uses statx (or fstatat) on the descriptor with
    // an empty path: allowed only in that form, never on a path.
    let empty_path = |arg| -> Result<Vec<SeccompRule>, seccompiler::Error> {
        Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::AT_EMPTY_PATH as u64),
            libc::AT_EMPTY_PATH as u64,
        )?])?])
    };
    rules.insert(libc::SYS_statx, empty_path(2)?);
    rules.insert(libc::SYS_newfstatat, empty_path(3)?);
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// Installs the filter on the calling thread (the sandbox has only one).
/// Needs `no_new_privs`, which the daemon set before exec.
pub fn install() -> Result<(), seccompiler::Error> {
    seccompiler::apply_filter(&filter()?)
}
