//! `cargo xtask build --static`: hostscope linked statically against musl,
//! one file that runs on any x86-64 Linux with BTF, whatever its libc (or
//! none, as in the kernel matrix's initramfs).
//!
//! ring, behind rustls and the password digests, has C and assembly: for
//! the musl target cc-rs needs a C compiler that targets musl, which
//! Debian's `musl-tools` provides as `musl-gcc`. The eBPF object is built
//! by agent/build.rs as for the glibc binary (its target is
//! `bpfel-unknown-none` whatever the host's).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, run_checked, setup, target_dir};

pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// Where `build --static` leaves the binary.
pub fn binary() -> PathBuf {
    target_dir().join(TARGET).join("release/hostscope")
}

/// Builds the static binary and checks that it is static.
pub fn build() -> anyhow::Result<PathBuf> {
    setup::toolchain()?;
    musl_target()?;
    setup::apt_install_missing(&[("musl-gcc", "musl-tools")])?;
    run_checked(
        cargo()
            .args(["build", "--release", "--package", "hostscope"])
            .args(["--target", TARGET])
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
            .env("AR_x86_64_unknown_linux_musl", "ar"),
    )?;
    let binary = binary();
    if !is_static(&binary)? {
        bail!(
            "{} has an ELF interpreter: it is not a static binary",
            binary.display()
        );
    }
    Ok(binary)
}

/// Adds the musl standard library to the default toolchain if it is missing.
fn musl_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is not installed: install it from your distribution or rustup.rs")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {TARGET} standard library");
    run_checked(Command::new("rustup").args(["target", "add", TARGET]))
        .with_context(|| format!("the {TARGET} target is missing: `rustup target add {TARGET}`"))
}

/// An ELF executable is static when it has no PT_INTERP program header
/// (static-pie binaries have PT_DYNAMIC, for their own relocations, but no
/// interpreter and no libraries).
pub fn is_static(path: &Path) -> anyhow::Result<bool> {
    let elf = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    const PT_INTERP: u32 = 3;
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} has a truncated ELF header", path.display());
    };
    let phoff = usize::try_from(phoff)?;
    for i in 0..usize::from(phnum) {
        let p_type = u32_at(phoff + i * usize::from(phentsize))
            .with_context(|| format!("{} has truncated program headers", path.display()))?;
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}
