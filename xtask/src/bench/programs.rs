//! Who owns which loaded BPF program, and what the kernel says each costs.
//!
//! The kernel does not say which process owns a program, and peers name
//! their programs as we do (`sched_switch`...), so a tool's programs are
//! the ids that appeared when it started. Costs are the kernel's own
//! statistics: cumulative run time and run count per program.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use hostscope_tests::bpf_programs::{BpfStats, ProgStats, snapshot};

/// What keeps a tool's programs loaded.
pub enum Holder {
    /// A peer tool's process: SIGINT, then SIGKILL, on drop.
    Process(Child),
    /// The daemon (killed on drop).
    Daemon(Box<hostscope_tests::daemon::Daemon>),
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
            let exited = match &mut holder {
                Holder::Process(child) => child.try_wait()?,
                Holder::Daemon(daemon) => daemon.exited(),
                Holder::InProcess { .. } => None,
            };
            if let Some(status) = exited {
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

/// Every floor program (ebpf/src/floor.rs) and its tracepoint.
pub const FLOOR_PROGRAMS: [(&str, &str); 3] = [
    ("floor_sched_switch", "sched_switch"),
    ("floor_block_rq_issue", "block_rq_issue"),
    ("floor_block_rq_complete", "block_rq_complete"),
];

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

/// Starts two tools, `a` first on even rounds and `b` first on odd ones
/// (the program that runs first on a tracepoint pays for bringing the
/// event's data into the cache, so comparisons swap the order); returns
/// them as `(a, b)` whichever started first.
pub fn start_in_turn<T>(
    round: usize,
    a: impl FnOnce() -> anyhow::Result<T>,
    b: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, T)> {
    if round.is_multiple_of(2) {
        let first = a()?;
        Ok((first, b()?))
    } else {
        let first = b()?;
        Ok((a()?, first))
    }
}
