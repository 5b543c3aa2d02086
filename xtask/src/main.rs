//! `cargo xtask`: set up, build, run and test hostscope on a fresh machine.
//!
//! Every task first checks the prerequisites and installs what it can
//! (Debian's rust-web toolchain with its library source, bpf-linker built
//! against the same LLVM, the `debian-bpf` rustup link, tracefs), and says in
//! one line what to do about what it can't.

mod bench;
mod benchmarks_md;
mod fuzz;
mod initramfs;
mod kernels;
mod setup;
mod soak;
mod static_build;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test, benchmark and soak hostscope"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install or check every prerequisite, then stop.
    Setup,
    /// Build the release binary at target/release/hostscope.
    Build {
        /// A static binary linked against musl instead, at
        /// target/x86_64-unknown-linux-musl/release/hostscope.
        #[arg(long = "static")]
        static_: bool,
    },
    /// Build, then run the daemon (arguments after `--` go to hostscope; default `serve`).
    Run {
        /// Arguments for hostscope.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run formatting and lint checks, unit tests, the integration tests
    /// against the real kernel (needs root) and, unless filtered, the kernel
    /// matrix.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Measure hostscope against libbpf-tools and bpftrace; writes BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Boot Debian's kernels under QEMU with the static binary inside and
    /// check every collector there (the last step of `test`).
    Kernels(kernels::KernelsArgs),
    /// Run the daemon for a while under load, scraped every second and
    /// profiled every minute; fail if its memory, open files, threads or
    /// CPU use grow without bound. Prints a Markdown table.
    Soak(soak::SoakArgs),
    /// Fuzz the parsers of untrusted input with cargo-fuzz (installed if
    /// missing); `test` replays the committed corpus.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::toolchain().and_then(|()| setup::kernel()),
        Task::Build { static_: false } => build(),
        Task::Build { static_: true } => static_build::build().map(|binary| {
            // The path on stdout, for scripts; the rest of xtask talks on stderr.
            #[allow(clippy::print_stdout)]
            {
                println!("{}", binary.display());
            }
        }),
        Task::Run { args } => run(args),
        Task::Test { filter } => test(filter),
        Task::Bench(args) => bench::run(args),
        Task::Kernels(args) => kernels::run(&args),
        Task::Soak(args) => soak::run(args),
        Task::Fuzz(args) => fuzz::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || workspace_root().join("target"),
            |d| workspace_root().join(d),
        )
}

/// The release binary `build` leaves behind.
pub fn release_binary() -> PathBuf {
    target_dir().join("release/hostscope")
}

/// `cargo` with the environment the eBPF build needs.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    // The BPF target has no prebuilt `core`: aya-build rebuilds it with
    // -Z build-std, which a stable compiler accepts only with RUSTC_BOOTSTRAP.
    cmd.env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Runs `cmd`, failing with its description if it does not succeed.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn build() -> anyhow::Result<()> {
    setup::toolchain()?;
    run_checked(cargo().args(["build", "--release", "--package", "hostscope"]))?;
    eprintln!("xtask: built {}", release_binary().display());
    Ok(())
}

fn run(mut args: Vec<String>) -> anyhow::Result<()> {
    build()?;
    setup::kernel()?;
    if args.is_empty() {
        args.push("serve".into());
    }
    let mut cmd = Command::new(release_binary());
    cmd.args(&args);
    // Replace this process, so that Ctrl-C and SIGTERM reach the daemon alone.
    use std::os::unix::process::CommandExt as _;
    Err(cmd.exec()).context("cannot start target/release/hostscope")
}

fn test(filter: Option<String>) -> anyhow::Result<()> {
    setup::toolchain()?;
    setup::kernel()?;
    setup::require_root("the integration tests load eBPF programs into the kernel")?;
    setup::test_tools()?;
    run_checked(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    run_checked(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "hostscope-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_checked(cargo().args(["build", "--release", "--package", "hostscope"]))?;
    let mut cmd = cargo();
    // The fuzz crate has no tests (its corpus is replayed by the agent's),
    // and its targets link libFuzzer.
    cmd.args(["test", "--workspace", "--exclude", "hostscope-ebpf"])
        .args(["--exclude", "hostscope-fuzz"])
        .env("HOSTSCOPE_BIN", release_binary())
        // Integration tests compare system-wide kernel accounting with the
        // probes' totals: they must not run alongside each other.
        .args(["--", "--test-threads=1"]);
    let filtered = filter.is_some();
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    run_checked(&mut cmd)?;
    if filtered {
        return Ok(());
    }
    // Last, the smoke test on Debian's kernels, with the static binary.
    kernels::run(&kernels::KernelsArgs::default())
}
