//! Loop devices made by a test, direct I/O on them, and the kernel's own
//! per-disk accounting (/sys/block/NAME/stat).

use std::{
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// A loop device over a sparse file, with direct I/O to its backing file;
/// detached and deleted on drop, even when the test fails.
pub struct LoopDevice {
    /// `loopN`.
    pub name: String,
    file: PathBuf,
    attached: bool,
}

impl LoopDevice {
    /// Attaches a `size_mib` MiB loop device.
    pub fn create(size_mib: u64) -> LoopDevice {
        crate::require_root();
        LoopDevice::try_create_in(&std::env::temp_dir(), size_mib)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Attaches a `size_mib` MiB loop device backed by a file in `dir`.
    pub fn try_create_in(dir: &Path, size_mib: u64) -> anyhow::Result<LoopDevice> {
        let file = dir.join(format!(
            "hostscope-test-{}-{}.img",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let f = std::fs::File::create(&file)
            .with_context(|| format!("creating the backing file {}", file.display()))?;
        let attach = || -> anyhow::Result<String> {
            f.set_len(size_mib << 20)
                .context("sizing the backing file")?;
            let output = Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on"])
                .arg(&file)
                .output()
                .context("running losetup (util-linux)")?;
            if !output.status.success() {
                bail!(
                    "losetup failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        let path = attach().inspect_err(|_| {
            let _ = std::fs::remove_file(&file);
        })?;
        let name = path.trim_start_matches("/dev/").to_owned();
        Ok(LoopDevice {
            name,
            file,
            attached: true,
        })
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// Detaches the device now.
    pub fn detach(&mut self) {
        if std::mem::take(&mut self.attached) {
            let status = Command::new("losetup")
                .args(["--detach", &self.path()])
                .status()
                .expect("losetup --detach runs");
            assert!(status.success(), "losetup --detach {} failed", self.path());
        }
    }

    /// `count` direct 4 KiB reads (`write == false`) or writes at spread
    /// offsets, one at a time, so that each is one request.
    pub fn direct_io(&self, count: u64, write: bool) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(self.path())
            .expect("open the loop device with O_DIRECT");
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        // SAFETY: a non-zero-sized layout; freed below.
        let buffer = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!buffer.is_null(), "allocating an aligned buffer");
        let size = std::fs::metadata(&self.file).expect("backing file").len();
        let blocks = size / 4096;
        for i in 0..count {
            // Stride through the device so that no two requests touch.
            let offset = ((i * 7919) % blocks) * 4096;
            use std::os::fd::AsRawFd as _;
            // SAFETY: `buffer` holds 4096 bytes, aligned for O_DIRECT.
            let done = unsafe {
                if write {
                    libc::pwrite(file.as_raw_fd(), buffer.cast(), 4096, offset as i64)
                } else {
                    libc::pread(file.as_raw_fd(), buffer.cast(), 4096, offset as i64)
                }
            };
            assert_eq!(done, 4096, "direct I/O at {offset} failed");
        }
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buffer, layout) };
    }
}

/// What fio completed, per direction.
#[derive(Debug, Clone, Copy)]
pub struct FioTotals {
    /// Reads fio saw complete.
    pub reads: u64,
    /// Writes fio saw complete.
    pub writes: u64,
}

impl LoopDevice {
    /// fio: random 4 KiB direct reads and writes, half each, `jobs` jobs of
    /// `iodepth` requests in flight (libaio) for `seconds`.
    pub fn fio(&self, iodepth: u32, jobs: u32, seconds: u32) -> FioTotals {
        let output = Command::new("fio")
            .args([
                "--name=hostscope-test",
                "--rw=randrw",
                "--bs=4k",
                "--direct=1",
                "--ioengine=libaio",
                "--time_based",
                "--group_reporting",
                "--output-format=json",
            ])
            .arg(format!("--filename={}", self.path()))
            .arg(format!("--iodepth={iodepth}"))
            .arg(format!("--numjobs={jobs}"))
            .arg(format!("--runtime={seconds}"))
            .output()
            .expect("fio runs (cargo xtask test installs it)");
        assert!(
            output.status.success(),
            "fio failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("fio's JSON report");
        let total = |direction: &str| {
            report["jobs"][0][direction]["total_ios"]
                .as_u64()
                .unwrap_or_else(|| panic!("no {direction} total_ios in fio's report"))
        };
        FioTotals {
            reads: total("read"),
            writes: total("write"),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            let _ = Command::new("losetup")
                .args(["--detach", &self.path()])
                .status();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// One direction's line of /sys/block/NAME/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStat {
    /// Completed reads.
    pub reads: u64,
    /// Milliseconds reads spent, from start of accounting to completion.
    pub read_ms: u64,
    /// Completed writes.
    pub writes: u64,
    /// Milliseconds writes spent.
    pub write_ms: u64,
}

impl DiskStat {
    /// The kernel's counters for disk `name`.
    pub fn read(name: &str) -> DiskStat {
        let text = std::fs::read_to_string(format!("/sys/block/{name}/stat"))
            .unwrap_or_else(|e| panic!("reading /sys/block/{name}/stat: {e}"));
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().expect("a number"))
            .collect();
        DiskStat {
            reads: f[0],
            read_ms: f[3],
            writes: f[4],
            write_ms: f[7],
        }
    }
}
