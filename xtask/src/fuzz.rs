//! `cargo xtask fuzz`: long fuzzing of the parsers of untrusted input with
//! cargo-fuzz (libFuzzer). The targets are the `[[bin]]`s of `fuzz/`, one
//! per entry of `hostscope::fuzzing::TARGETS`; `cargo xtask test` replays
//! their committed corpus without any of this.
//!
//! cargo-fuzz passes -Z flags (sanitizer, coverage) to rustc: the stable
//! compiler takes them with RUSTC_BOOTSTRAP=1, which `cargo()` sets.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cargo, run_checked, setup, workspace_root};

/// Pinned so that every machine fuzzes with the same tool.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// The target to fuzz (`btf`, `profile_query`, ...); default: each in turn.
    target: Option<String>,
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Fuzzing processes per target (libFuzzer's -fork).
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// Afterwards, add what the run found to fuzz/corpus/TARGET, minimized
    /// with `cargo fuzz cmin`, to be committed.
    #[arg(long)]
    update_corpus: bool,
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    // The agent's build script builds the eBPF programs, fuzzed or not.
    setup::toolchain()?;
    install_cargo_fuzz()?;
    let sanitizer = sanitizer()?;
    let targets = match args.target {
        Some(target) => vec![target],
        None => targets()?,
    };
    let root = workspace_root();
    for target in &targets {
        // New inputs go to a scratch directory under target/: the committed
        // corpus only grows, minimized, with --update-corpus.
        let scratch = root.join("target/fuzz-corpus").join(target);
        fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let corpus = root.join("fuzz/corpus").join(target);
        let regressions = root.join("fuzz/regressions").join(target);
        let mut cmd = cargo_fuzz("run", target, sanitizer);
        cmd.arg(&scratch).arg(&corpus);
        if regressions.is_dir() {
            cmd.arg(&regressions);
        }
        if args.jobs > 1 {
            cmd.arg(format!("--jobs={}", args.jobs));
        }
        cmd.arg("--").args([
            format!("-max_total_time={}", args.seconds),
            // An input that takes this long is a hang, and a crash.
            "-timeout=10".into(),
            "-rss_limit_mb=2048".into(),
            "-print_final_stats=1".into(),
        ]);
        eprintln!(
            "xtask: fuzzing `{target}` for {} s (sanitizer: {sanitizer})",
            args.seconds
        );
        run_checked(&mut cmd).with_context(|| {
            format!(
                "`{target}` broke on an input saved in fuzz/artifacts/{target}/: reproduce \
                 with `cargo fuzz run --sanitizer {sanitizer} {target} FILE`; once fixed, \
                 copy the file to fuzz/regressions/{target}/ so that `cargo xtask test` replays it"
            )
        })?;
        if args.update_corpus {
            update_corpus(target, &scratch, &corpus, sanitizer)?;
        }
    }
    Ok(())
}

/// `cargo fuzz SUBCOMMAND` on TARGET, from the workspace root.
fn cargo_fuzz(subcommand: &str, target: &str, sanitizer: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "fuzz",
        subcommand,
        "--fuzz-dir",
        "fuzz",
        "--sanitizer",
        sanitizer,
        target,
    ]);
    cmd
}

/// Copies the run's finds into the committed corpus, then minimizes it.
fn update_corpus(
    target: &str,
    scratch: &Path,
    corpus: &Path,
    sanitizer: &str,
) -> anyhow::Result<()> {
    for entry in fs::read_dir(scratch)? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            fs::copy(&path, corpus.join(name))
                .with_context(|| format!("cannot copy {} to the corpus", path.display()))?;
        }
    }
    let mut cmd = cargo_fuzz("cmin", target, sanitizer);
    cmd.arg(corpus);
    run_checked(&mut cmd)?;
    eprintln!(
        "xtask: fuzz/corpus/{target} now has {} inputs; commit them",
        fs::read_dir(corpus)?.count()
    );
    Ok(())
}

/// The fuzz targets, as cargo-fuzz lists them.
fn targets() -> anyhow::Result<Vec<String>> {
    let out = cargo()
        .args(["fuzz", "list", "--fuzz-dir", "fuzz"])
        .output()
        .context("cannot run `cargo fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    let installed = cargo().args(["fuzz", "--version"]).output();
    if let Ok(out) = &installed
        && String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    run_checked(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
    .context("installing cargo-fuzz failed")
}

/// AddressSanitizer when the compiler ships its runtime, else none: Rust
/// code is memory-safe without it, and panics, hangs and the memory checks
/// of hostscope::fuzzing are found either way.
fn sanitizer() -> anyhow::Result<&'static str> {
    let out = Command::new("rustc")
        .args(["--print", "target-libdir"])
        .output()
        .context("cannot run rustc")?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let has_asan = fs::read_dir(&libdir)
        .map(|entries| {
            entries.flatten().any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with("librustc-") && name.ends_with("_rt.asan.a")
            })
        })
        .unwrap_or(false);
    if !has_asan {
        eprintln!("xtask: {libdir} has no AddressSanitizer runtime; fuzzing without it");
    }
    Ok(if has_asan { "address" } else { "none" })
}
