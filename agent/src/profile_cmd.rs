//! `hostscope profile`: one CPU or off-CPU profile at the terminal, without
//! a daemon.

use std::{
    io::Write as _,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;

use crate::{
    cli::{CgroupArgs, MapArgs, ProfileArgs, ProfileFormat},
    privileges,
    probes::Probes,
    profile::{self, Kind, Limits, Params, Profiler},
};

/// The CLI's own limits: an engineer at a terminal may ask for more than a
/// daemon should serve to any client.
pub(crate) const LIMITS: Limits = Limits {
    max_seconds: 3600,
    max_frequency: 10_000,
};

/// The flags that make a request, as the query string gives them.
pub(crate) fn params(args: &ProfileArgs) -> Params<'_> {
    Params {
        kind: args.kind.as_deref(),
        min_block_us: args.min_block_us.as_deref(),
        seconds: args.seconds.as_deref(),
        pid: args.pid.as_deref(),
        frequency: args.frequency.as_deref(),
        cgroup: args.cgroup.as_deref(),
        group_by: args.group_by.as_deref(),
    }
}

/// Runs the command.
pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let request = LIMITS.request(&params(&args))?;
    privileges::check()?;
    args.system.warn_unused();
    let mut probes = Probes::load(
        &args.system.kernel_btf,
        MapArgs::default(),
        &CgroupArgs::default(),
    )?;
    let kernel_log = probes.take_kernel_log();
    let probes = Arc::new(Mutex::new(probes));
    let profiler = Profiler::new(probes, LIMITS)?;
    // As the daemon does: nothing that reads other processes' files runs
    // with more than it needs.
    privileges::drop_to_runtime_set(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Runs while the capture is awaited below.
    if let Some(kernel_log) = kernel_log {
        runtime.spawn(kernel_log.forward());
    }
    let what = match (request.pid, &request.cgroup) {
        (None, None) => "every process".to_owned(),
        (Some(pid), None) => format!("pid {pid}"),
        (None, Some(cgroup)) => format!("cgroup {}", profile::printable(&cgroup.path)),
        (Some(pid), Some(cgroup)) => {
            format!("pid {pid} in cgroup {}", profile::printable(&cgroup.path))
        }
    };
    match request.kind {
        Kind::Cpu => eprintln!(
            "Sampling {what} for {} s at {} Hz...",
            request.seconds, request.frequency
        ),
        Kind::OffCpu { min_block_us } => eprintln!(
            "Measuring where {what} blocks for {} s (blocks of {min_block_us} us or more)...",
            request.seconds
        ),
    }
    let profile = runtime.block_on(profiler.capture(request))?;
    tracing::info!(
        stacks = profile.stacks.len(),
        dropped = profile.dropped,
        "last stacks unwound in {:.1} ms, symbolized in {:.1} ms",
        profile.timings.unwinding.as_secs_f64() * 1e3,
        profile.timings.symbolizing.as_secs_f64() * 1e3
    );
    let bytes = match args.format {
        ProfileFormat::Svg => profile::svg(&profile)?,
        ProfileFormat::Folded => profile::folded(&profile).into_bytes(),
        ProfileFormat::Pprof => profile::pprof_gzip(&profile)?,
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .write_all(&bytes)
            .context("writing to standard output")?,
    }
    Ok(())
}
