//! Who owns which loaded BPF program, and what the kernel says each costs.
//!
//! The kernel does not say which process owns a program, and peers name
//! their programs as we do (`sched_switch`...), so a tool's programs are
//! the ids that appeared when it started. Costs are the kernel's own
//! statistics (`BPF_ENABLE_STATS`): cumulative run time and run count per
//! program, read through aya.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
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

/// What keeps a tool's programs loaded.
pub enum Holder {
    /// A process (a peer tool or the daemon): SIGINT, then SIGKILL, on drop.
    Process(Child),
    /// Programs loaded by this process (held only to keep them attached).
    InProcess {
        /// The loaded object.
        _ebpf: Box<aya::Ebpf>,
    },
}

/// A tool whose programs are loaded and attached.
pub struct Attached {
    /// Its name in the report.
    pub label: String,
    /// Its programs' ids.
    pub ids: BTreeSet<u64>,
    _holder: Holder,
}

impl Attached {
    /// Starts a tool with `start` and waits until it has loaded `expect`
    /// programs (or, with `expect == 0`, until the count stops changing).
    pub fn start(
        label: &str,
        expect: usize,
        start: impl FnOnce() -> anyhow::Result<Holder>,
    ) -> anyhow::Result<Attached> {
        let before: BTreeSet<u64> = snapshot()?.into_keys().collect();
        let mut holder = start().with_context(|| format!("starting {label}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stable_since = (0, Instant::now());
        loop {
            if let Holder::Process(child) = &mut holder
                && let Some(status) = child.try_wait()?
            {
                bail!("{label} exited early ({status})");
            }
            let ids: BTreeSet<u64> = snapshot()?
                .into_keys()
                .filter(|id| !before.contains(id))
                .collect();
            if ids.len() != stable_since.0 {
                stable_since = (ids.len(), Instant::now());
            }
            let settled = stable_since.1.elapsed() > Duration::from_millis(1500);
            if (expect > 0 && ids.len() >= expect) || (expect == 0 && !ids.is_empty() && settled) {
                return Ok(Attached {
                    label: label.to_owned(),
                    ids,
                    _holder: holder,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "{label} loaded {} programs in 30 s, expected {expect}",
                    ids.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run time and count accrued by this tool's programs between two
    /// snapshots, restricted to programs whose name passes `filter`.
    pub fn accrued(
        &self,
        before: &BTreeMap<u64, ProgStats>,
        after: &BTreeMap<u64, ProgStats>,
        filter: impl Fn(&str) -> bool,
    ) -> (u64, u64) {
        self.ids
            .iter()
            .filter_map(|id| Some((before.get(id)?, after.get(id)?)))
            .filter(|(_, a)| filter(&a.name))
            .fold((0, 0), |(t, c), (b, a)| {
                (
                    t + a.run_time_ns.saturating_sub(b.run_time_ns),
                    c + a.run_cnt.saturating_sub(b.run_cnt),
                )
            })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Holder::Process(child) = self {
            // SAFETY: kill(2) on our own child. SIGINT lets peers exit cleanly.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Loads the floor programs (empty, on the same tracepoints) from the
/// object the release build left in OUT_DIR.
pub fn load_floor(programs: &[(&str, &str)]) -> anyhow::Result<Holder> {
    let object = newest_object()?;
    let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
    let mut ebpf = aya::EbpfLoader::new()
        .btf(Some(&btf))
        .allow_unsupported_maps()
        .load_file(&object)
        .with_context(|| format!("loading {}", object.display()))?;
    for (program, tracepoint) in programs {
        let prog: &mut aya::programs::BtfTracePoint = ebpf
            .program_mut(program)
            .with_context(|| format!("no program {program} in the object"))?
            .try_into()?;
        prog.load(tracepoint, &btf)?;
        prog.attach()?;
    }
    Ok(Holder::InProcess {
        _ebpf: Box::new(ebpf),
    })
}

fn newest_object() -> anyhow::Result<std::path::PathBuf> {
    let build = crate::workspace_root().join("target/release/build");
    std::fs::read_dir(&build)
        .with_context(|| format!("reading {}", build.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("hostscope-"))
        .map(|e| e.path().join("out/hostscope"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("no eBPF object under target/release/build: build first")
}
