//! `hostscope serve`: load the probes once, serve metrics until SIGINT/SIGTERM,
//! then detach everything.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{
    cgroup::{self, Attribution},
    cli::{ClassicBuckets, ListenAddr, ServeArgs},
    collector::{Collectors, Layout},
    fd_limit, http,
    metrics::Metrics,
    privileges,
    probes::{self, Probes},
    profile::{Limits, Profiler},
};

/// The listen address cannot be used: a usage error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr}: {reason}; choose another address with \
     --web.listen-address (alias --listen)"
)]
pub struct BindError {
    /// The address asked for.
    pub addr: ListenAddr,
    /// Why binding failed (in use, not a local address, ...). Part of the
    /// message, not a separate source, so the one line says it once.
    pub reason: io::Error,
}

/// Runs the daemon. Everything that needs privileges (binding, loading and
/// attaching probes) happens first, on this one thread; then capabilities
/// are dropped to [`privileges::RUNTIME_SET`], and only then does the async
/// runtime start its threads, so that none of them ever holds more.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    privileges::check()?;
    args.system.warn_unused();
    let web = load_web_config(&args)?;
    raise_fd_limit();
    // Bind before loading anything: a busy port should fail in milliseconds.
    let listener = bind(args.listen)?;

    let mut probes = Probes::load(&args.system.kernel_btf, args.maps, &args.cgroups)?;
    let kernel_log = probes.take_kernel_log();
    let attribution = match args.cgroups.by_cgroup {
        true => Some(start_attribution(&mut probes, &args)?),
        false => None,
    };
    let collectors = Arc::new(Collectors::start(
        &mut probes,
        &args.collectors,
        attribution,
    ));
    let probes = Arc::new(Mutex::new(probes));
    let limits = Limits {
        max_seconds: args.profile_max_seconds,
        max_frequency: args.profile_max_frequency,
    };
    // Loaded now, attached only while a profile is taken; before the BTF is
    // released, which the off-CPU program (a BTF tracepoint) needs to load.
    let profiler = match args.web_disable_profiling {
        true => {
            tracing::info!("--web.disable-profiling: no profile endpoints");
            None
        }
        false => Some(
            Profiler::new(probes.clone(), limits)
                .map(|p| Arc::new(p.with_max_queue(args.profile_max_queue)))
                .map_err(|err| {
                    tracing::error!("CPU profiling unavailable: {err}");
                    Arc::from(err.to_string())
                }),
        ),
    };
    probes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .release_btf();
    let max_connections = fit_connections(args.web_max_connections);
    // Before capabilities are dropped: turning the statistics on needs
    // CAP_SYS_ADMIN. Held open for the daemon's lifetime.
    let bpf_stats = if args.bpf_stats {
        probes::enable_stats()
            .map_err(|err| {
                tracing::warn!(
                    "--bpf-stats: cannot turn the kernel's BPF statistics on ({err}); \
                     hostscope_bpf_program_* are left out"
                );
            })
            .ok()
    } else {
        None
    };
    let kept = privileges::drop_to_runtime_set(matches!(profiler, Some(Ok(_))))?;
    tracing::info!("capabilities dropped; kept {}", privileges::describe(&kept));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if collectors.attribution.is_some() {
        runtime.spawn(maintain_periodically(collectors.clone()));
    }
    if let Some(kernel_log) = kernel_log {
        runtime.spawn(kernel_log.forward());
    }
    let state = http::AppState {
        metrics: Arc::new(Metrics::new(
            collectors,
            Some((probes.clone(), bpf_stats.is_some())),
            match args.classic_buckets {
                ClassicBuckets::Fine => Layout::Fine,
                ClassicBuckets::Coarse => Layout::Coarse,
                ClassicBuckets::None => Layout::None,
            },
        )),
        profiler: profiler.clone(),
    };
    // The address bound: a hostname's, or the port `:0` got.
    let listen = listener
        .local_addr()
        .map_or_else(|_| args.listen.to_string(), |addr| addr.to_string());
    let path = &args.web_telemetry_path;
    tracing::info!(
        listen = %listen,
        max_connections,
        tls = web.tls.is_some(),
        basic_auth_users = web.users.len(),
        "serving {path}"
    );
    runtime
        .block_on(async {
            let listener = TcpListener::from_std(listener)?;
            let shutdown = CancellationToken::new();
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    shutdown_signal().await;
                    // Profiles end now (their clients get 503); scrapes in
                    // flight may finish.
                    if let Some(Ok(profiler)) = &profiler {
                        profiler.shut_down();
                    }
                    shutdown.cancel();
                }
            });
            http::serve(listener, state, web, path, max_connections, shutdown).await
        })
        .context("serving HTTP")?;

    // Nothing should be left running; a stuck task must not hold up exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    drop(probes);
    tracing::info!("probes detached; bye");
    Ok(())
}

/// Reads `--web.config.file`, if given, and logs what it ignores.
fn load_web_config(args: &ServeArgs) -> Result<http::WebConfig, http::WebConfigError> {
    let Some(path) = args
        .web_config_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
    else {
        return Ok(http::WebConfig::default());
    };
    let web = http::WebConfig::load(path)?;
    for warning in &web.warnings {
        tracing::warn!("--web.config.file {}: {warning}", path.display());
    }
    if !web.users.is_empty() && web.tls.is_none() {
        tracing::warn!(
            "--web.config.file {}: basic auth without TLS: passwords cross the network \
             in the clear",
            path.display()
        );
    }
    Ok(web)
}

/// Finds (or mounts) the cgroup2 hierarchy and takes the shared cgroup
/// maps, logging what they cost. Mounting needs CAP_SYS_ADMIN, which is why
/// this runs before capabilities are dropped.
fn start_attribution(probes: &mut Probes, args: &ServeArgs) -> anyhow::Result<Arc<Attribution>> {
    let root = cgroup::mount::find_or_mount()?;
    let attribution = Attribution::new(
        probes,
        root,
        args.cgroups.cgroup_match.clone(),
        args.cgroup_buckets,
    )
    .context("setting up --by-cgroup")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bytes = hostscope_common::cgroup::map_bytes(
        args.cgroups.cgroup_max,
        u32::try_from(cpus).unwrap_or(u32::MAX),
    );
    tracing::info!(
        cgroup_root = %attribution.root().display(),
        cgroup_max = args.cgroups.cgroup_max,
        "per-cgroup series on; their kernel maps take {:.1} MiB",
        bytes as f64 / f64::from(1 << 20)
    );
    Ok(Arc::new(attribution))
}

/// Reads the per-cgroup maps every [`cgroup::attribution::REVALIDATE`], so
/// that the entries of removed cgroups leave the kernel even when nobody
/// scrapes.
async fn maintain_periodically(collectors: Arc<Collectors>) {
    let mut tick = tokio::time::interval(cgroup::attribution::REVALIDATE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let collectors = collectors.clone();
        // Map syscalls and a directory walk: off the async workers.
        let _ = tokio::task::spawn_blocking(move || collectors.maintain()).await;
    }
}

/// Raises the soft open-file limit to the hard one, so that connections
/// and the symbolizer's files do not run out at an inherited 1,024.
fn raise_fd_limit() {
    match fd_limit::raise_to_hard() {
        Ok(raised) if raised.now > raised.before => tracing::info!(
            "open-file limit raised from {} to {}",
            raised.before,
            raised.now
        ),
        Ok(raised) => tracing::debug!("open-file limit is {}", raised.now),
        Err(err) => tracing::warn!("cannot raise the open-file limit: {err}"),
    }
}

/// `wanted` connections, or fewer if the open-file limit would run out.
fn fit_connections(wanted: usize) -> usize {
    let (Ok(limit), Ok(open)) = (fd_limit::soft(), fd_limit::open_now()) else {
        return wanted;
    };
    let fit = fd_limit::connections_that_fit(wanted, limit, open);
    if fit < wanted {
        tracing::warn!(
            "--web.max-connections {wanted} would exhaust the open-file limit of {limit} \
             ({open} files open); allowing {fit}. Raise the limit (LimitNOFILE=) to allow more"
        );
    }
    fit
}

/// Binds the listening socket (non-blocking, for the runtime to adopt).
fn bind(addr: ListenAddr) -> Result<std::net::TcpListener, BindError> {
    match addr {
        ListenAddr::Socket(socket) => std::net::TcpListener::bind(socket),
        ListenAddr::Any(port) => bind_any(port),
    }
    .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
    .map_err(|reason| BindError { addr, reason })
}

/// `:PORT` as Go's net.Listen has it: one socket on `[::]:PORT` that takes
/// IPv4 connections too (IPV6_V6ONLY off, whatever the
/// net.ipv6.bindv6only sysctl says), or `0.0.0.0:PORT` on a host without
/// IPv6. Otherwise as std's bind: SO_REUSEADDR, a backlog of 128.
fn bind_any(port: u16) -> io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let socket = match rustix::net::socket_with(
        AddressFamily::INET6,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) {
        Ok(socket) => socket,
        Err(rustix::io::Errno::AFNOSUPPORT) => {
            return std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port));
        }
        Err(err) => return Err(err.into()),
    };
    sockopt::set_ipv6_v6only(&socket, false)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
    rustix::net::listen(&socket, 128)?;
    Ok(socket.into())
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

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use rustix::net::sockopt;

    use super::*;

    /// `:PORT` is one socket for IPv6 and IPv4 whatever the sysctl
    /// net.ipv6.bindv6only says, set as std's bind sets its sockets.
    #[test]
    fn any_address_takes_ipv4_and_ipv6() {
        let listener = bind(ListenAddr::Any(0)).unwrap();
        let local = listener.local_addr().unwrap();
        assert_eq!(local.ip(), Ipv6Addr::UNSPECIFIED);
        assert!(!sockopt::ipv6_v6only(&listener).unwrap());
        assert!(sockopt::socket_reuseaddr(&listener).unwrap());
        TcpStream::connect((Ipv4Addr::LOCALHOST, local.port())).unwrap();
        TcpStream::connect((Ipv6Addr::LOCALHOST, local.port())).unwrap();
    }

    #[test]
    fn a_busy_port_says_which_address() {
        let busy = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let err = bind(ListenAddr::Any(port)).unwrap_err();
        assert_eq!(err.reason.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on :{port}: ")),
            "{err}"
        );
    }
}
