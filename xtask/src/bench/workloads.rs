//! The workloads every tool is measured under: the same for all of them.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
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
