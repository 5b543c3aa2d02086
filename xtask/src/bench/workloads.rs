//! The workloads every tool is measured under: the same for all of them.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// `perf bench sched pipe -l loops`: two processes ping-ponging over a pipe,
/// the classic context-switch benchmark, both pinned to CPU 0. Unpinned,
/// its throughput swings several-fold with whether the scheduler happens to
/// put both on one CPU, which drowns any probe's cost. Returns ops/second.
pub fn sched_pipe(loops: u64) -> anyhow::Result<f64> {
    let output = Command::new("taskset")
        .args([
            "-c",
            "0",
            "perf",
            "bench",
            "sched",
            "pipe",
            "-l",
            &loops.to_string(),
        ])
        .output()
        .context("running perf bench sched pipe")?;
    if !output.status.success() {
        bail!(
            "perf bench sched pipe failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.trim().strip_suffix("ops/sec")?.trim().parse().ok())
        .with_context(|| format!("no ops/sec in perf's output: {text}"))
}

pub use hostscope_tests::blockdev::LoopDevice;

/// A `size_mib` MiB loop device with direct I/O, backed by a file on the
/// root filesystem (`/tmp` may be a tmpfs); detached on drop.
pub fn loop_device(size_mib: u64) -> anyhow::Result<LoopDevice> {
    LoopDevice::try_create_in(Path::new("/var/tmp"), size_mib)
}

/// `perf bench sched messaging -l loops`: ten groups of twenty senders and
/// twenty receivers passing messages over sockets, unpinned: hundreds of
/// processes waking each other across every CPU, as a busy server's do.
/// Returns runs per second.
pub fn sched_messaging(loops: u64) -> anyhow::Result<f64> {
    let output = Command::new("perf")
        .args(["bench", "sched", "messaging", "-l", &loops.to_string()])
        .output()
        .context("running perf bench sched messaging")?;
    if !output.status.success() {
        bail!(
            "perf bench sched messaging failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let seconds =
        total_seconds(&text).with_context(|| format!("no total time in perf's output: {text}"))?;
    Ok(1.0 / seconds)
}

/// The `Total time: 0.123 [sec]` of a perf bench report.
fn total_seconds(report: &str) -> Option<f64> {
    report.lines().find_map(|line| {
        let value = line.trim().strip_prefix("Total time:")?;
        value.trim().strip_suffix("[sec]")?.trim().parse().ok()
    })
}

/// A build-like workload: make running one C compiler per CPU over and
/// over (processes started and reaped, files read and written, CPU-bound
/// in between). A directory with one small C file and a Makefile that
/// compiles it into `objects` objects; removed on drop.
pub struct Build {
    dir: PathBuf,
    objects: usize,
}

impl Build {
    /// Writes the source and the Makefile.
    pub fn prepare(objects: usize) -> anyhow::Result<Build> {
        let dir =
            std::env::temp_dir().join(format!("hostscope-bench-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let build = Build { dir, objects };
        std::fs::write(build.dir.join("unit.c"), BUILD_SOURCE).context("writing unit.c")?;
        let targets: Vec<String> = (0..objects).map(|i| format!("unit{i}.o")).collect();
        let makefile = format!(
            "all: {}\n\nunit%.o: unit.c\n\tcc -O2 -c unit.c -o $@\n",
            targets.join(" ")
        );
        std::fs::write(build.dir.join("Makefile"), makefile).context("writing the Makefile")?;
        Ok(build)
    }

    /// Builds every object from scratch with one job per CPU; returns
    /// objects per second.
    pub fn run(&self) -> anyhow::Result<f64> {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let started = Instant::now();
        let output = Command::new("make")
            .args(["--always-make", "--silent", &format!("-j{jobs}"), "-C"])
            .arg(&self.dir)
            .output()
            .context("running make")?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!("make failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(self.objects as f64 / elapsed.as_secs_f64())
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the build workload compiles: enough code (a hash table, a sort, a
/// parser) that the optimiser works a while on it, and no headers beyond
/// the C library's.
const BUILD_SOURCE: &str = r#"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct entry { char key[32]; uint64_t value; struct entry *next; };
struct table { struct entry *slots[1024]; size_t count; };

static uint64_t hash(const char *key) {
    uint64_t h = 1469598103934665603ULL;
    for (; *key; key++) { h ^= (unsigned char)*key; h *= 1099511628211ULL; }
    return h;
}

int table_put(struct table *t, const char *key, uint64_t value) {
    uint64_t slot = hash(key) % 1024;
    for (struct entry *e = t->slots[slot]; e; e = e->next)
        if (strcmp(e->key, key) == 0) { e->value = value; return 0; }
    struct entry *e = calloc(1, sizeof *e);
    if (!e) return -1;
    strncpy(e->key, key, sizeof e->key - 1);
    e->value = value;
    e->next = t->slots[slot];
    t->slots[slot] = e;
    t->count++;
    return 1;
}

static void merge(uint64_t *v, uint64_t *tmp, size_t lo, size_t mid, size_t hi) {
    size_t i = lo, j = mid, k = lo;
    while (i < mid && j < hi) tmp[k++] = v[i] <= v[j] ? v[i++] : v[j++];
    while (i < mid) tmp[k++] = v[i++];
    while (j < hi) tmp[k++] = v[j++];
    memcpy(v + lo, tmp + lo, (hi - lo) * sizeof *v);
}

void sort_values(uint64_t *v, uint64_t *tmp, size_t n) {
    for (size_t width = 1; width < n; width *= 2)
        for (size_t lo = 0; lo + width < n; lo += 2 * width) {
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            merge(v, tmp, lo, lo + width, hi);
        }
}

long parse_sum(const char *text) {
    long total = 0, current = 0;
    int sign = 1, in_number = 0;
    for (const char *p = text;; p++) {
        if (*p >= '0' && *p <= '9') { current = current * 10 + (*p - '0'); in_number = 1; }
        else {
            if (in_number) total += sign * current;
            current = 0; in_number = 0;
            sign = *p == '-' ? -1 : 1;
            if (!*p) break;
        }
    }
    return total;
}

uint64_t table_sum_sorted(struct table *t, uint64_t *scratch, uint64_t *tmp) {
    size_t n = 0;
    for (size_t s = 0; s < 1024; s++)
        for (struct entry *e = t->slots[s]; e; e = e->next) scratch[n++] = e->value;
    sort_values(scratch, tmp, n);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) sum = sum * 31 + scratch[i];
    return sum;
}
"#;

/// fio 4 KiB random direct reads on `device` for `seconds`; returns IOPS.
pub fn fio_randread(device: &str, seconds: u64) -> anyhow::Result<f64> {
    let output = Command::new("fio")
        .args([
            "--name=bench",
            "--rw=randread",
            "--bs=4k",
            "--direct=1",
            "--ioengine=psync",
            "--numjobs=1",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--filename={device}"))
        .arg(format!("--runtime={seconds}"))
        .output()
        .context("running fio")?;
    if !output.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing fio's JSON")?;
    report["jobs"][0]["read"]["iops"]
        .as_f64()
        .context("no read IOPS in fio's report")
}

/// `round_trips` one-byte request/response exchanges over one loopback TCP
/// connection, plus `connects` fresh connections. Returns the elapsed time.
pub fn tcp_ping_pong(round_trips: u64, connects: u64) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        for stream in listener.incoming() {
            let mut stream = stream?;
            let mut byte = [0u8];
            loop {
                match stream.read(&mut byte)? {
                    0 => break,
                    _ if byte[0] == b'q' => return Ok(()),
                    _ => stream.write_all(&byte)?,
                }
            }
        }
        Ok(())
    });
    let started = Instant::now();
    let mut client = TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    let mut byte = [0u8];
    for _ in 0..round_trips {
        client.write_all(b"p")?;
        client.read_exact(&mut byte)?;
    }
    drop(client);
    for _ in 0..connects {
        drop(TcpStream::connect(addr)?);
    }
    let elapsed = started.elapsed();
    TcpStream::connect(addr)?.write_all(b"q")?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))??;
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn perf_bench_total_time_is_read() {
        let report = "# Running 'sched/messaging' benchmark:\n\
                      # 20 sender and receiver processes per group\n\
                      # 10 groups == 400 processes run\n\n     Total time: 0.250 [sec]\n";
        assert_eq!(super::total_seconds(report), Some(0.25));
        assert_eq!(super::total_seconds("no report"), None);
    }
}
