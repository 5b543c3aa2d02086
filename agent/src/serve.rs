//! `hostscope serve`: load the probes once, serve metrics until SIGINT/SIGTERM,
//! then detach everything.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::{net::TcpListener, signal::unix::SignalKind};

use crate::{
    cli::ServeArgs,
    collector::Collectors,
    http,
    metrics::Metrics,
    privileges,
    probes::Probes,
    profile::{Limits, Profiler},
    tracefs,
};

/// The listen address cannot be used: a usage error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}; choose another address with --listen")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why binding failed (in use, not a local address, ...).
    pub source: io::Error,
}

/// Runs the daemon.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    privileges::check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    // Bind before loading anything: a busy port should fail in milliseconds.
    let listener = runtime
        .block_on(TcpListener::bind(args.listen))
        .map_err(|source| BindError {
            addr: args.listen,
            source,
        })?;

    prepare_tracefs(&args.system.tracefs);
    let mut probes = Probes::load(&args.system.kernel_btf)?;
    let collectors = Arc::new(Collectors::start(&mut probes, &args.collectors));
    probes.release_btf();
    let probes = Arc::new(Mutex::new(probes));
    let limits = Limits {
        max_seconds: args.profile_max_seconds,
        max_frequency: args.profile_max_frequency,
    };
    // Loaded now, attached only while a profile is taken.
    let profiler = Profiler::new(probes.clone(), limits)
        .map(Arc::new)
        .map_err(|err| {
            tracing::error!("CPU profiling unavailable: {err}");
            Arc::from(err.to_string())
        });
    let state = http::AppState {
        metrics: Arc::new(Metrics::new(collectors)),
        profiler,
    };

    tracing::info!(listen = %args.listen, "serving /metrics");
    runtime
        .block_on(http::serve(listener, state, shutdown_signal()))
        .context("serving HTTP")?;

    drop(runtime);
    drop(probes);
    tracing::info!("probes detached; bye");
    Ok(())
}

/// Mounts tracefs if needed. A failure only matters to collectors that use
/// classic tracepoints, which then report themselves down.
pub fn prepare_tracefs(path: &std::path::Path) {
    match tracefs::ensure_mounted(path) {
        Ok(true) => tracing::info!(path = %path.display(), "mounted tracefs"),
        Ok(false) => {}
        Err(err) => tracing::warn!("{err}"),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!("cannot watch SIGTERM ({err}); stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
