//! Harness for hostscope's integration tests.
//!
//! The tests run the real `hostscope` binary, which loads the real eBPF
//! programs into the running kernel, and compare what it reports with what
//! the kernel itself accounts. They need root and *fail* (never skip) when
//! the probes cannot load.
//!
//! xtask's bench and soak use the same harness: what they need exists in a
//! form that returns errors (`try_*`), of which the tests' panicking form
//! is a wrapper.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test harness reports failure by panicking"
)]

pub mod blockdev;
pub mod bpf_programs;
pub mod cgroups;
pub mod daemon;
pub mod exposition;
pub mod folded;
pub mod netns;
pub mod programs;
pub mod prometheus;
pub mod schedstat;
pub mod workload;

use std::path::PathBuf;

/// The binary under test: `$HOSTSCOPE_BIN` (set by `cargo xtask test`), or
/// the release build in this workspace.
pub fn hostscope_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HOSTSCOPE_BIN") {
        return path.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/hostscope");
    assert!(
        path.exists(),
        "no hostscope binary at {}: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// Fails the test unless running as root: these tests load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load eBPF programs and must run as root; they fail rather than skip"
    );
}

/// Asserts that `actual` is within `tolerance` (a fraction) of `expected`.
#[track_caller]
pub fn assert_close(what: &str, actual: f64, expected: f64, tolerance: f64) {
    let error = (actual - expected).abs() / expected.abs().max(f64::MIN_POSITIVE);
    assert!(
        error <= tolerance,
        "{what}: got {actual}, expected {expected} within {:.1}% (off by {:.2}%)",
        tolerance * 100.0,
        error * 100.0
    );
}

/// Runs `hostscope hist COLLECTOR --format json` for one interval of
/// `seconds`, doing `work` once its probes are attached (start-up takes tens
/// of milliseconds; a second is left), and returns its JSON lines.
pub fn hist_json(collector: &str, seconds: u32, work: impl FnOnce()) -> Vec<serde_json::Value> {
    hist_json_with(collector, &[], seconds, work)
}

/// [`hist_json`] with `extra` arguments for `hist` (`--by-cgroup`, say).
pub fn hist_json_with(
    collector: &str,
    extra: &[&str],
    seconds: u32,
    work: impl FnOnce(),
) -> Vec<serde_json::Value> {
    require_root();
    let interval = seconds.to_string();
    let hist = std::process::Command::new(hostscope_bin())
        .args([
            "hist",
            collector,
            "--interval",
            &interval,
            "--count",
            "1",
            "--format",
            "json",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run hostscope hist");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    work();
    let output = hist.wait_with_output().expect("hist finishes");
    assert!(
        output.status.success(),
        "hostscope hist {collector} {extra:?} failed"
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}
