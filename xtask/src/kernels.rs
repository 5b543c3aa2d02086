//! `cargo xtask kernels`: the kernel matrix. Boots each of Debian's kernel
//! packages under QEMU (TCG: KVM guests hang on these machines) with an
//! initramfs of a static busybox, the static hostscope and the kernel's
//! own virtio modules; `/init` starts `hostscope serve` with every
//! collector, runs a workload (context switches, direct I/O on a virtio
//! disk, loopback TCP), asks for a profile and prints `/metrics` between
//! markers on the serial console. The host then checks the console.
//!
//! Kernel packages, busybox and the disk image are cached in
//! `target/kernels/`; the package versions are whatever the configured
//! Debian archive offers for each meta-package.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{initramfs::Initramfs, run_checked, setup, static_build, target_dir};

#[derive(Debug, Args)]
pub struct KernelsArgs {
    /// Only the kernels whose meta-package name contains this.
    filter: Option<String>,
    /// Give up on a VM after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT)]
    timeout: u64,
}

const DEFAULT_TIMEOUT: u64 = 300;

impl Default for KernelsArgs {
    fn default() -> Self {
        Self {
            filter: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One kernel of the matrix.
struct Kernel {
    /// Debian's meta-package, which depends on the current kernel package.
    meta: &'static str,
    title: &'static str,
    /// Collectors that cannot work on this kernel: (collector, what their
    /// one-line reason must name, why). They must report themselves down
    /// with that reason; any other collector down is a failure.
    expect_down: &'static [(&'static str, &'static str, &'static str)],
}

const KERNELS: &[Kernel] = &[
    Kernel {
        meta: "linux-image-amd64",
        title: "Debian 12, 6.1",
        expect_down: &[],
    },
    Kernel {
        meta: "linux-image-cloud-amd64",
        title: "Debian 12 cloud, 6.1",
        expect_down: &[],
    },
    Kernel {
        meta: "linux-image-6.12-cloud-amd64",
        title: "Debian 12 cloud, 6.12 (bookworm-security)",
        expect_down: &[],
    },
];

const COLLECTORS: [&str; 3] = ["sched", "block", "tcp"];
/// Modules for the virtio disk, with their dependencies; the ones a kernel
/// builds in are skipped.
const MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];
const DISK_BYTES: u64 = 64 << 20;
/// Direct reads and writes of 4 KiB each that `/init` makes on the disk.
const DIRECT_IOS: u64 = 256;
const MARK: &str = "@@HS";

pub fn run(args: &KernelsArgs) -> anyhow::Result<()> {
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| {
            args.filter
                .as_ref()
                .is_none_or(|f| k.meta.contains(f.as_str()))
        })
        .collect();
    if kernels.is_empty() {
        bail!("no kernel of the matrix matches the filter");
    }
    setup::apt_install_missing(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
    ])?;
    let binary = static_build::build()?;
    let cache = target_dir().join("kernels");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let busybox = busybox(&cache)?;
    let disk = cache.join("disk.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(DISK_BYTES))
        .with_context(|| format!("cannot create {}", disk.display()))?;

    let mut summary = String::new();
    let mut failed = 0;
    for kernel in kernels {
        let started = Instant::now();
        let result = boot(kernel, &cache, &binary, &busybox, &disk, args.timeout);
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(report) => {
                eprintln!("xtask: {}: pass in {secs:.0} s", kernel.title);
                for line in &report {
                    eprintln!("    {line}");
                }
                let down: Vec<&str> = report
                    .iter()
                    .filter(|l| l.contains(" DOWN, as expected"))
                    .filter_map(|l| l.split_whitespace().next())
                    .collect();
                let note = if down.is_empty() {
                    String::new()
                } else {
                    format!(" ({} down, as expected)", down.join(", "))
                };
                let _ = writeln!(summary, "  pass  {secs:5.0} s  {}{note}", kernel.title);
            }
            Err(err) => {
                failed += 1;
                eprintln!("xtask: {}: FAIL after {secs:.0} s: {err:#}", kernel.title);
                let first = format!("{err:#}");
                let first = first.lines().next().unwrap_or_default();
                let _ = writeln!(summary, "  FAIL  {secs:5.0} s  {}: {first}", kernel.title);
            }
        }
    }
    eprint!("xtask: kernel matrix ({}):\n{summary}", binary.display());
    if failed > 0 {
        bail!(
            "{failed} kernel(s) of the matrix failed; consoles in {}",
            cache.display()
        );
    }
    Ok(())
}

/// Boots one kernel and checks what its console says; returns the lines
/// worth reporting (timings, collectors down as expected).
fn boot(
    kernel: &Kernel,
    cache: &Path,
    binary: &Path,
    busybox: &Path,
    disk: &Path,
    timeout: u64,
) -> anyhow::Result<Vec<String>> {
    let package = resolve(kernel.meta)?;
    let root = extract(&download(&package, cache)?, &cache.join(&package), "boot")?;
    let version = only_entry(&root.join("lib/modules"))?;
    let modules_dir = root.join("lib/modules").join(&version);
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));

    let modules = modules(&modules_dir, busybox)?;
    let mut cpio = Initramfs::default();
    for dir in [
        "/bin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/www",
        "/lib",
        "/lib/modules",
    ] {
        cpio.dir(dir);
    }
    cpio.char_device("/dev/console", 5, 1);
    cpio.copy("/bin/busybox", 0o755, busybox)?;
    cpio.copy("/hostscope", 0o755, binary)?;
    let mut insmod = String::new();
    for (name, bytes) in &modules {
        cpio.file(&format!("/lib/modules/{name}.ko"), 0o644, bytes);
        let _ = writeln!(
            insmod,
            "insmod /lib/modules/{name}.ko || echo \"{MARK} insmod {name} failed\""
        );
    }
    cpio.file("/init", 0o755, init_script(&insmod).as_bytes());
    let initrd = cache.join(format!("{package}.cpio"));
    cpio.write(&initrd)?;

    let console = cache.join(format!("{package}.console"));
    let started = Instant::now();
    let status = qemu(
        &vmlinuz,
        &initrd,
        disk,
        &console,
        Duration::from_secs(timeout),
    )?;
    let wall = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&console)
        .unwrap_or_default()
        .replace('\r', "");
    let mut report = vec![format!("{package}, {wall:.0} s in QEMU")];
    match status {
        Some(status) if !text.contains(&format!("{MARK} done")) => bail!(
            "QEMU exited ({status}) before /init finished; console: {}\n{}",
            console.display(),
            tail(&text, 30)
        ),
        Some(_) => {}
        None => bail!(
            "no power-off within {timeout} s (raise --timeout?); console: {}\n{}",
            console.display(),
            tail(&text, 30)
        ),
    }
    report.extend(check(kernel, &text)?);
    Ok(report)
}

/// The checks on one console's output.
fn check(kernel: &Kernel, text: &str) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    let mut problems = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(MARK)) {
        let line = line.trim_start_matches(MARK).trim();
        if ["init", "modules", "ready", "workload", "done"]
            .iter()
            .any(|w| line.starts_with(w))
        {
            report.push(format!("uptime at {line}"));
        } else if line.starts_with("perf_event_paranoid") {
            report.push(line.to_owned());
        } else if line.contains("failed") || line.starts_with("no ") {
            problems.push(line.to_owned());
        }
    }
    let metrics = parse_metrics(&section(text, "metrics"));
    let log = section(text, "log");
    let stacks = section(text, "stacks");
    if metrics.is_empty() {
        bail!("/metrics gave nothing; daemon log:\n{}", tail(&log, 20));
    }
    if !metrics
        .iter()
        .any(|m| m.name == "hostscope_build_info" && m.labels.contains("musl"))
    {
        problems.push("hostscope_build_info does not name a musl target".into());
    }

    for collector in COLLECTORS {
        let up = value(
            &metrics,
            "hostscope_collector_up",
            &[&format!("collector=\"{collector}\"")],
        )
        .map(|v| v > 0.5);
        let reason = log
            .lines()
            .find(|l| {
                l.contains("collector down")
                    && (l.contains(&format!("collector={collector}"))
                        || l.contains(&format!("collector=\"{collector}\"")))
            })
            .map(str::trim);
        let expected = kernel.expect_down.iter().find(|(c, ..)| *c == collector);
        match (up, expected, reason) {
            (Some(true), None, _) => {}
            (Some(true), Some((.., why)), _) => problems.push(format!(
                "{collector} is up, but the matrix expects it down ({why}): update KERNELS"
            )),
            (Some(false), Some((_, names, why)), Some(reason)) if reason.contains(names) => {
                report.push(format!("{collector} DOWN, as expected ({why}): {reason}"));
            }
            (Some(_), _, Some(reason)) => problems.push(format!("{collector} down: {reason}")),
            (Some(_), _, None) => {
                problems.push(format!("{collector} down without a reason in the log"));
            }
            (None, ..) => problems.push(format!("no hostscope_collector_up for {collector}")),
        }
    }

    let up = |c: &str| {
        value(
            &metrics,
            "hostscope_collector_up",
            &[&format!("collector=\"{c}\"")],
        )
        .is_some_and(|v| v > 0.5)
    };
    let mut histogram = |name: &str, labels: &[&str], min: f64, what: &str| {
        let count = value(&metrics, &format!("{name}_count"), labels).unwrap_or(0.0);
        let sum = value(&metrics, &format!("{name}_sum"), labels).unwrap_or(0.0);
        if count < min {
            problems.push(format!("{what}: {count} events, expected at least {min}"));
        } else if sum / count > 1.0 {
            problems.push(format!(
                "{what}: mean {:.3} s, not a plausible latency",
                sum / count
            ));
        } else {
            report.push(format!(
                "{what}: {count} events, mean {:.1} us",
                sum / count * 1e6
            ));
        }
    };
    if up("sched") {
        histogram(
            "hostscope_runqueue_latency_seconds",
            &[],
            1.0,
            "run-queue latency",
        );
    }
    if up("block") {
        let ios = DIRECT_IOS as f64;
        for op in ["write", "read"] {
            histogram(
                "hostscope_block_io_latency_seconds",
                &["device=\"vda\"", &format!("op=\"{op}\"")],
                ios,
                &format!("vda {op}s"),
            );
        }
    }
    if up("tcp") {
        histogram("hostscope_tcp_rtt_seconds", &[], 1.0, "TCP RTT");
        histogram(
            "hostscope_tcp_connect_latency_seconds",
            &[],
            1.0,
            "TCP connects",
        );
        // One event per retransmitted skb; the kernel counts segments, and
        // a GSO skb can hold several.
        let counted = value(&metrics, "hostscope_tcp_retransmits_total", &[]).unwrap_or(0.0);
        let kernel = marked_number(text, "retrans-after") - marked_number(text, "retrans-before");
        if !(counted >= 1.0 && counted <= kernel) {
            problems.push(format!(
                "TCP retransmits: {counted} counted, the kernel's RetransSegs rose by {kernel}"
            ));
        } else {
            report.push(format!(
                "TCP retransmits: {counted} counted, RetransSegs +{kernel}"
            ));
        }
    }
    let paranoid = section(text, "paranoid");
    if text.contains("perf_event_paranoid 3,") {
        if paranoid.contains("run `sysctl kernel.perf_event_paranoid=2`") {
            report.push(format!(
                "profile at perf_event_paranoid 3: {}",
                paranoid.lines().last().unwrap_or_default().trim()
            ));
        } else {
            problems.push(format!(
                "a profile at perf_event_paranoid 3 did not say how to fix it:\n{}",
                tail(&paranoid, 5)
            ));
        }
    }
    let stack_lines = stacks
        .lines()
        .filter(|l| {
            l.rsplit_once(' ')
                .is_some_and(|(stack, n)| !stack.is_empty() && n.parse::<u64>().is_ok())
        })
        .count();
    if stack_lines == 0 {
        problems.push(format!("the profile has no stacks:\n{}", tail(&stacks, 5)));
    } else {
        report.push(format!("profile: {stack_lines} stacks"));
    }
    if !problems.is_empty() {
        bail!("{}\ndaemon log:\n{}", problems.join("\n"), tail(&log, 15));
    }
    Ok(report)
}

/// The number after marker line `name` (NaN if absent, which fails any
/// comparison).
fn marked_number(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(MARK))
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// `/init`: mount, load the disk's modules, start the daemon, run the
/// workload, print the results between markers, power off.
fn init_script(insmod: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /www
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
t() {{ cut -d' ' -f1 /proc/uptime; }}
echo "{MARK} init $(t) s, kernel $(uname -r)"
{insmod}
echo "{MARK} modules $(t) s"
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
[ -b /dev/vda ] || echo "{MARK} no /dev/vda"

finish() {{
    echo "{MARK} log-begin"
    cat /tmp/hostscope.log
    echo "{MARK} log-end"
    echo "{MARK} done $(t) s"
    poweroff -f
}}
/hostscope --log-format logfmt serve --web.listen-address 127.0.0.1:9661 \
    --collectors sched,block,tcp >/tmp/hostscope.log 2>&1 &
daemon=$!
n=0
until wget -q -O /dev/null http://127.0.0.1:9661/healthz 2>/dev/null; do
    kill -0 $daemon 2>/dev/null || {{ echo "{MARK} daemon exit failed"; finish; }}
    n=$((n+1))
    [ $n -gt 300 ] && {{ echo "{MARK} daemon start failed"; finish; }}
    [ $((n % 10)) = 0 ] && echo "{MARK} waiting $(t) s: $(tail -n 1 /tmp/hostscope.log)"
    sleep 1
done
echo "{MARK} ready $(t) s"
# Debian's kernels default to perf_event_paranoid=3, which Debian's patch
# lets only CAP_SYS_ADMIN past; the daemon keeps CAP_PERFMON, not that. A
# profile asked for there must say what to do, and the daemon go on.
echo "{MARK} perf_event_paranoid $(cat /proc/sys/kernel/perf_event_paranoid), set to 2 after one profile"
echo "{MARK} paranoid-begin"
(printf 'GET /stacks?seconds=1 HTTP/1.0\r\n\r\n'; sleep 3) | nc -w 5 127.0.0.1 9661
echo "{MARK} paranoid-end"
echo 2 >/proc/sys/kernel/perf_event_paranoid
# The kernel's count of retransmitted segments (RetransSegs).
retrans() {{ awk '/^Tcp: [0-9]/ {{ print $13 }}' /proc/net/snmp; }}
echo "{MARK} retrans-before $(retrans)"

# Run-queue waits: three spinners on two CPUs, and a pipe's ping-pong.
spin() {{ while :; do :; done; }}
spin & s1=$!
spin & s2=$!
spin & s3=$!
i=0; while [ $i -lt 2000 ]; do echo $i; i=$((i+1)); done | cat >/dev/null
# Direct I/O on the virtio disk.
dd if=/dev/urandom of=/dev/vda bs=4096 count={DIRECT_IOS} oflag=direct 2>/dev/null \
    || echo "{MARK} dd write failed"
dd if=/dev/vda of=/dev/null bs=4096 count={DIRECT_IOS} iflag=direct 2>/dev/null \
    || echo "{MARK} dd read failed"
# Loopback TCP: a few downloads from busybox's httpd.
head -c 4194304 /dev/zero >/www/blob
httpd -p 127.0.0.1:8080 -h /www
for i in 1 2 3 4 5; do
    wget -q -O /dev/null http://127.0.0.1:8080/blob || echo "{MARK} wget blob failed"
done
# Retransmissions: downloads run while loopback is down for 1.5 s; what
# was lost is retransmitted once it is up again.
(while [ ! -e /tmp/stop ]; do wget -q -O /dev/null http://127.0.0.1:8080/blob || sleep 0.1; done) &
sleep 0.5
ip link set lo down
sleep 1.5
ip link set lo up
sleep 4
touch /tmp/stop
wait $!
echo "{MARK} workload $(t) s"

echo "{MARK} stacks-begin"
wget -q -O - "http://127.0.0.1:9661/stacks?seconds=2" || echo "{MARK} profile failed"
echo "{MARK} stacks-end"
kill $s1 $s2 $s3
echo "{MARK} metrics-begin"
wget -q -O - http://127.0.0.1:9661/metrics | grep '^hostscope_'
echo "{MARK} metrics-end"
# After the scrape, so that the kernel's count covers every retransmission
# the scrape can have counted.
echo "{MARK} retrans-after $(retrans)"
kill $daemon
wait $daemon || echo "{MARK} daemon stop failed"
finish
"#
    )
}

/// The current package behind a meta-package (`linux-image-cloud-amd64`
/// depends on `linux-image-6.1.0-NN-cloud-amd64`).
fn resolve(meta: &str) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "--important", meta])
        .output()
        .context("apt-cache is missing: the kernel matrix needs Debian's archive")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim().to_owned())
        .with_context(|| format!("the configured apt archive has no {meta} (apt-get update?)"))
}

/// The package's .deb in the cache, downloaded if it is not there yet.
fn download(package: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let cached = |cache: &Path| -> Option<PathBuf> {
        fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = cached(cache) {
        return Ok(deb);
    }
    eprintln!("xtask: downloading {package}");
    run_checked(
        Command::new("apt-get")
            .args(["download", "-qq", package])
            .current_dir(cache)
            .stderr(Stdio::null()),
    )
    .with_context(|| format!("apt-get could not download {package}"))?;
    cached(cache).with_context(|| format!("apt-get download left no {package}_*.deb"))
}

/// The package's files, extracted once into `root` (done when `marker`,
/// a directory of the package, exists).
fn extract(deb: &Path, root: &Path, marker: &str) -> anyhow::Result<PathBuf> {
    if root.join(marker).is_dir() {
        return Ok(root.to_owned());
    }
    // Not with_extension: package names have dots.
    let partial = PathBuf::from(format!("{}.partial", root.display()));
    let _ = fs::remove_dir_all(&partial);
    run_checked(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    fs::rename(&partial, root).with_context(|| format!("cannot create {}", root.display()))?;
    Ok(root.to_owned())
}

/// Busybox from Debian's `busybox-static`, unpacked in the cache rather
/// than installed (it would replace the host's busybox).
fn busybox(cache: &Path) -> anyhow::Result<PathBuf> {
    let root = cache.join("busybox-static");
    if !root.join("bin/busybox").is_file() {
        extract(&download("busybox-static", cache)?, &root, "bin")?;
    }
    let busybox = root.join("bin/busybox");
    if !static_build::is_static(&busybox)? {
        bail!("{} is not a static binary", busybox.display());
    }
    Ok(busybox)
}

/// The one directory in `dir` (a kernel package has one under lib/modules).
fn only_entry(dir: &Path) -> anyhow::Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => bail!("{} holds {n} kernel versions, expected one", dir.display()),
    }
}

/// The modules `MODULES` need, dependencies first, decompressed. Packages
/// carry no modules.dep (depmod makes it on install), so dependencies come
/// from each module's `.modinfo` (`depends=a,b`).
fn modules(dir: &Path, busybox: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && let Some(stem) = name
                    .strip_suffix(".ko")
                    .or_else(|| name.strip_suffix(".ko.xz"))
            {
                files.insert(stem.replace('-', "_"), path.clone());
            }
        }
    }
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let is_builtin = |name: &str| {
        builtin.lines().any(|l| {
            l.rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".ko"))
                .map(|s| s.replace('-', "_"))
                == Some(name.to_owned())
        })
    };
    let mut ordered: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        is_builtin: &dyn Fn(&str) -> bool,
        busybox: &Path,
        ordered: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if ordered.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let Some(path) = files.get(name) else {
            if is_builtin(name) {
                return Ok(());
            }
            bail!("the kernel has no module {name}, built in or not");
        };
        if depth > 16 {
            bail!("module dependencies of {name} are too deep");
        }
        let bytes = if path.extension().is_some_and(|e| e == "xz") {
            let out = Command::new(busybox)
                .arg("xzcat")
                .arg(path)
                .output()
                .with_context(|| format!("cannot decompress {}", path.display()))?;
            if !out.status.success() {
                bail!("cannot decompress {}", path.display());
            }
            out.stdout
        } else {
            fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        };
        for dep in depends(&bytes) {
            visit(&dep, files, is_builtin, busybox, ordered, depth + 1)?;
        }
        ordered.push((name.to_owned(), bytes));
        Ok(())
    }
    for name in MODULES {
        visit(name, &files, &is_builtin, busybox, &mut ordered, 0)?;
    }
    Ok(ordered)
}

/// A module's `depends=` entry in `.modinfo`.
fn depends(module: &[u8]) -> Vec<String> {
    module
        .split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs QEMU with the console in `console`; `None` if it had to be killed
/// after `timeout`.
fn qemu(
    vmlinuz: &Path,
    initrd: &Path,
    disk: &Path,
    console: &Path,
    timeout: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let _ = fs::remove_file(console);
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1G"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut child = cmd.spawn().context("cannot start qemu-system-x86_64")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The lines between `MARK name-begin` and `MARK name-end`.
fn section(text: &str, name: &str) -> String {
    let begin = format!("{MARK} {name}-begin");
    let end = format!("{MARK} {name}-end");
    text.lines()
        .skip_while(|l| !l.starts_with(&begin))
        .skip(1)
        .take_while(|l| !l.starts_with(&end))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Sample {
    name: String,
    labels: String,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_owned(),
                labels: labels.to_owned(),
                value,
            })
        })
        .collect()
}

/// The sum of the series named `name` whose labels contain each of `labels`.
fn value(metrics: &[Sample], name: &str, labels: &[&str]) -> Option<f64> {
    let matching: Vec<f64> = metrics
        .iter()
        .filter(|m| m.name == name && labels.iter().all(|l| m.labels.contains(l)))
        .map(|m| m.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_dependencies() {
        let module = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        assert_eq!(depends(module), ["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0name=loop\0").is_empty());
    }

    #[test]
    fn samples_are_summed_over_matching_labels() {
        let metrics = parse_metrics(
            "hostscope_collector_up{collector=\"sched\"} 1\n\
             hostscope_block_io_latency_seconds_count{device=\"vda\",op=\"read\"} 3\n\
             hostscope_block_io_latency_seconds_count{device=\"vdb\",op=\"read\"} 4\n",
        );
        let v = |n, l: &[&str]| value(&metrics, n, l);
        assert_eq!(
            v("hostscope_collector_up", &["collector=\"sched\""]),
            Some(1.0)
        );
        assert_eq!(
            v("hostscope_block_io_latency_seconds_count", &[]),
            Some(7.0)
        );
        assert_eq!(
            v(
                "hostscope_block_io_latency_seconds_count",
                &["device=\"vda\""]
            ),
            Some(3.0)
        );
        assert_eq!(v("hostscope_tcp_rtt_seconds_count", &[]), None);
    }
}
