//! Prerequisites: checked every time, installed where this machine allows.
//!
//! What the eBPF build needs (facts from ../shared/TOOLCHAIN.md):
//! - a compiler that ships the `core` source, because `core` is rebuilt for
//!   `bpfel-unknown-none`. rustup's toolchains here lack `rust-src`, Debian's
//!   `rustc-web` + `rust-web-src` have it; rustup knows it as `debian-bpf`.
//! - bpf-linker built against the LLVM major version that compiler uses (22).
//!
//! What running needs: root (or CAP_BPF+CAP_PERFMON), kernel BTF, tracefs.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::run_checked;

/// The rustup name under which Debian's toolchain is linked.
const BPF_TOOLCHAIN: &str = "debian-bpf";
const DEBIAN_PACKAGES: [&str; 4] = ["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const CORE_SOURCE: &str = "/usr/lib/rustlib/src/rust/library/core";

/// Makes sure the eBPF programs can be built.
pub fn toolchain() -> anyhow::Result<()> {
    if let Ok(custom) = std::env::var("HOSTSCOPE_BPF_TOOLCHAIN") {
        // Someone brought their own (say, nightly with rust-src): only check it.
        check_quietly(Command::new("rustup").args(["run", &custom, "rustc", "--version"]))
            .with_context(|| {
                format!("HOSTSCOPE_BPF_TOOLCHAIN={custom} is not a rustup toolchain")
            })?;
        return bpf_linker();
    }
    if !Path::new(CORE_SOURCE).is_dir() || !Path::new(LLVM_PREFIX).is_dir() {
        install_debian_toolchain()?;
    }
    let linked = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is not installed: install it from your distribution or rustup.rs")?;
    if !String::from_utf8_lossy(&linked.stdout).contains(BPF_TOOLCHAIN) {
        eprintln!("xtask: registering /usr's compiler with rustup as `{BPF_TOOLCHAIN}`");
        run_checked(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))?;
    }
    check_quietly(Command::new("rustup").args(["run", BPF_TOOLCHAIN, "rustc", "--version"]))
        .context("the debian-bpf toolchain does not run")?;
    bpf_linker()
}

fn install_debian_toolchain() -> anyhow::Result<()> {
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "no Rust toolchain with the core library's source was found. On this \
             non-Debian host install a nightly with it (`rustup toolchain install nightly \
             --component rust-src`), then set HOSTSCOPE_BPF_TOOLCHAIN=nightly"
        );
    }
    apt_install(&DEBIAN_PACKAGES)
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = &version
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    // LLVM_PREFIX matters: bpf-linker's build script otherwise asks whatever
    // llvm-config is first on PATH, which may be another LLVM version.
    run_checked(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
    )
    .context("installing bpf-linker failed (it needs llvm-22-dev)")?;
    check_quietly(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH")
}

/// Makes sure the kernel offers what hostscope attaches to.
pub fn kernel() -> anyhow::Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux): hostscope needs CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    let tracefs = Path::new("/sys/kernel/tracing");
    if !tracefs.join("events").is_dir() {
        require_root("mounting tracefs")?;
        eprintln!("xtask: mounting tracefs at {}", tracefs.display());
        run_checked(
            Command::new("mount")
                .args(["-t", "tracefs", "nodev"])
                .arg(tracefs),
        )
        .context("tracefs could not be mounted")?;
    }
    Ok(())
}

/// Tools the integration tests call: bpftool (which programs are loaded),
/// setpriv (running hostscope without privileges), losetup (loop devices),
/// fio (deep block queues), ip (network namespaces), cc (test programs),
/// go (`go tool pprof`), promtool (linting the exposition and the rule files),
/// prometheus (evaluating the dashboard's and the rules' queries) and
/// systemd-analyze (verifying the systemd unit).
pub fn test_tools() -> anyhow::Result<()> {
    apt_install_missing(&[
        ("bpftool", "bpftool"),
        ("setpriv", "util-linux"),
        ("losetup", "mount"),
        ("fio", "fio"),
        ("ip", "iproute2"),
        ("cc", "gcc"),
        ("go", "golang-go"),
        ("promtool", "prometheus"),
        ("prometheus", "prometheus"),
        ("systemd-analyze", "systemd"),
    ])
}

/// Installs the Debian packages whose commands are not on PATH.
pub fn apt_install_missing(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(command, _)| check_quietly(Command::new("which").arg(command)).is_err())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "install these packages with your package manager: {}",
            missing.join(" ")
        );
    }
    apt_install(&missing)
}

/// `apt-get install` of `packages` (Debian only, as root).
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    require_root("installing Debian packages needs apt-get")?;
    eprintln!("xtask: installing {}", packages.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get could not install {}", packages.join(" ")))
}

/// Fails with `why` unless running as root.
pub fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{why}: run this as root (for example with sudo -E)");
    }
    Ok(())
}

fn check_quietly(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
