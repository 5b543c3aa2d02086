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
