//! Kernel diagnostics in the daemon's log: the lines the kernel programs
//! write to aya-log's ring (`AYA_LOGS`) on rare conditions (a map full, an
//! unexpected operation; see `ebpf/src/diag.rs`), read as they come and
//! logged as tracing events under [`LOG_TARGET`], in the format the
//! daemon's log has.
//!
//! They are on only when the log lets debug events of that target through
//! (`--log-level debug`, or a filter such as `hostscope::kernel=debug`).
//! Off, the programs are loaded with the diagnostics turned off by a
//! load-time constant, so they cost nothing, and the ring is not read.

use std::fmt;

use aya::Ebpf;
use aya_log::EbpfLogger;
use hostscope_common::diag::LOG_TARGET;
use tokio::io::{Interest, unix::AsyncFd};

/// Whether the log lets kernel diagnostics through. Asked once, before
/// the programs are loaded: the answer is baked into them.
pub fn wanted() -> bool {
    tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG)
}

/// The reader of the kernel programs' log ring.
pub struct KernelLog(EbpfLogger<ToTracing>);

impl fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KernelLog")
    }
}

impl KernelLog {
    /// Takes the log ring out of the loaded object. `None`, after one
    /// warning, if it cannot: the daemon runs on without diagnostics.
    pub fn take(ebpf: &mut Ebpf) -> Option<Self> {
        match EbpfLogger::init_with_logger(ebpf, ToTracing) {
            Ok(logger) => {
                tracing::debug!(
                    target: LOG_TARGET,
                    "kernel diagnostics on: rare conditions in the probes are logged here, \
                     each at most once a second per CPU"
                );
                Some(Self(logger))
            }
            Err(err) => {
                tracing::warn!("kernel diagnostics unavailable: cannot read their ring: {err}");
                None
            }
        }
    }

    /// Logs each record the kernel writes, as it comes, until the runtime
    /// stops. The ring's descriptor wakes the task; no polling.
    pub async fn forward(self) {
        // SAFETY: the logger owns the ring's descriptor, which stays open
        // and the same for as long as the AsyncFd holds the logger.
        let mut ring = match unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) }
        {
            Ok(ring) => ring,
            Err(err) => {
                let (_, err) = err.into_parts();
                tracing::warn!("kernel diagnostics unavailable: cannot watch their ring: {err}");
                return;
            }
        };
        loop {
            let mut ready = match ring.readable_mut().await {
                Ok(ready) => ready,
                Err(err) => {
                    tracing::warn!("kernel diagnostics stopped: watching their ring failed: {err}");
                    return;
                }
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }
}

/// A `log` logger (what aya-log writes to) that turns each kernel record
/// into a tracing event under [`LOG_TARGET`]. The record's own target is
/// the part of the probes that wrote it (block, tcp, sched, cgroup,
/// profile), kept as the `probe` field, which every log format shows
/// (the text format leaves targets out).
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        // The kernel writes only what the daemon asked for at load.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let probe = record.target();
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: LOG_TARGET, probe, "{message}"),
            log::Level::Warn => tracing::warn!(target: LOG_TARGET, probe, "{message}"),
            log::Level::Info => tracing::info!(target: LOG_TARGET, probe, "{message}"),
            log::Level::Debug => tracing::debug!(target: LOG_TARGET, probe, "{message}"),
            log::Level::Trace => tracing::trace!(target: LOG_TARGET, probe, "{message}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use std::io;

    use log::Log as _;

    use super::*;
    use crate::logging::tests::Shared;

    /// A kernel record comes out as a JSON log line under the kernel's
    /// target, its level kept, the probe that wrote it as a field.
    #[test]
    fn records_become_events_under_the_kernel_target() {
        let out = Shared::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            ToTracing.log(
                &log::Record::builder()
                    .args(format_args!("BLOCK_START is full"))
                    .target("block")
                    .level(log::Level::Debug)
                    .module_path(Some("hostscope::diag"))
                    .file(Some("src/diag.rs"))
                    .line(Some(70))
                    .build(),
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "DEBUG", "{line}");
        assert_eq!(line["target"], "hostscope::kernel", "{line}");
        assert_eq!(line["probe"], "block", "{line}");
        assert_eq!(line["message"], "BLOCK_START is full", "{line}");
    }

    /// The daemon's filters decide: debug or a filter naming the kernel's
    /// target turns diagnostics on; info, or debug for another target, not.
    #[test]
    fn debug_for_the_kernel_target_turns_them_on() {
        for (filter, on) in [
            ("debug", true),
            ("trace", true),
            ("hostscope=debug", true),
            ("hostscope::kernel=debug", true),
            ("info", false),
            ("warn,aya=debug", false),
            ("info,hostscope::kernel=info", false),
        ] {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(io::sink)
                .finish();
            let wanted = tracing::subscriber::with_default(subscriber, wanted);
            assert_eq!(wanted, on, "--log-level {filter}");
        }
    }
}
