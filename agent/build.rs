//! Builds the eBPF programs in `ebpf/` for `bpfel-unknown-none` and leaves the
//! object in `OUT_DIR`, where `src/probes.rs` embeds it into the binary.
//!
//! The eBPF build needs a compiler with the `core` library's source, because
//! `core` is rebuilt for the BPF target (`-Z build-std=core`). `cargo xtask`
//! sets that up: Debian's rust-web toolchain, registered with rustup as
//! `debian-bpf`, and `RUSTC_BOOTSTRAP=1` so that a stable compiler accepts -Z.
//! Elsewhere, `HOSTSCOPE_BPF_TOOLCHAIN=nightly` (with rust-src) works as well.

use std::{env, path::PathBuf};

use anyhow::Context as _;

const DEFAULT_TOOLCHAIN: &str = "debian-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=HOSTSCOPE_BPF_TOOLCHAIN");
    build_info();
    let toolchain =
        env::var("HOSTSCOPE_BPF_TOOLCHAIN").unwrap_or_else(|_| DEFAULT_TOOLCHAIN.to_owned());
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("the path of ebpf/ is not UTF-8")?
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "hostscope-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the eBPF programs with toolchain `{toolchain}` failed; \
             run `cargo xtask setup` to install and check the eBPF toolchain"
        )
    })
}

/// What `hostscope_build_info` reports beside the version: the git revision
/// (`unknown` outside a git checkout), the compiler and the target.
fn build_info() {
    let output = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let revision = output("git", &["rev-parse", "--short=12", "HEAD"]);
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc_version = output(&rustc, &["--version"]);
    println!(
        "cargo:rustc-env=HOSTSCOPE_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=HOSTSCOPE_RUSTC={}",
        rustc_version.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=HOSTSCOPE_TARGET={}",
        env::var("TARGET").unwrap_or_default()
    );
    // A new commit changes the revision: HEAD, or the branch it names.
    if let Some(git_dir) = output("git", &["rev-parse", "--absolute-git-dir"]) {
        let head = PathBuf::from(&git_dir).join("HEAD");
        println!("cargo:rerun-if-changed={}", head.display());
        if let Some(branch) = std::fs::read_to_string(&head)
            .ok()
            .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
        {
            let branch = PathBuf::from(&git_dir).join(branch);
            if branch.exists() {
                println!("cargo:rerun-if-changed={}", branch.display());
            }
        }
    }
}
