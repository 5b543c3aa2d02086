//! The BPF programs loaded in the kernel, with the kernel's statistics of
//! each (run time and count, kept while `BPF_ENABLE_STATS` is on), read
//! through aya.

use std::{collections::BTreeMap, os::fd::OwnedFd};

use anyhow::Context as _;
use aya::{
    programs::ProgramError,
    sys::{Stats, SyscallError},
};

/// Cumulative statistics of one program.
#[derive(Debug, Clone, Default)]
pub struct ProgStats {
    /// The program's name as the kernel keeps it (at most 15 bytes).
    pub name: String,
    /// Nanoseconds spent in it since load (while statistics were on).
    pub run_time_ns: u64,
    /// Times it ran since load (while statistics were on).
    pub run_cnt: u64,
}

/// Every loaded program, by id.
pub fn snapshot() -> anyhow::Result<BTreeMap<u64, ProgStats>> {
    let mut programs = BTreeMap::new();
    for program in aya::programs::loaded_programs() {
        let program = match program {
            Ok(program) => program,
            // Unloaded between the kernel listing its id and our opening it.
            Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                continue;
            }
            Err(err) => return Err(err).context("reading the loaded BPF programs"),
        };
        programs.insert(
            u64::from(program.id()),
            ProgStats {
                name: program.name_as_str().unwrap_or_default().to_owned(),
                run_time_ns: u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX),
                run_cnt: program.run_count(),
            },
        );
    }
    Ok(programs)
}

/// Ids of the loaded programs named `name` (at most 15 bytes, as the
/// kernel keeps it).
pub fn ids_named(name: &str) -> anyhow::Result<Vec<u64>> {
    Ok(snapshot()?
        .into_iter()
        .filter(|(_, program)| program.name == name)
        .map(|(id, _)| id)
        .collect())
}

/// The kernel's run time and run count statistics, on while this is held
/// (the kernel counts holders, so other users' settings are left alone).
pub struct BpfStats {
    _on_while_open: OwnedFd,
}

impl BpfStats {
    /// Turns the statistics on.
    pub fn enable() -> anyhow::Result<Self> {
        let fd = aya::sys::enable_stats(Stats::RunTime).context("enabling BPF run-time stats")?;
        Ok(Self { _on_while_open: fd })
    }
}
