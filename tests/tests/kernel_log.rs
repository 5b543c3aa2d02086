//! Kernel diagnostics: with `--log-level debug`, a kernel map filled on
//! purpose is said in the daemon's log, through aya-log, under the
//! kernel's target and at most once a second per CPU; at the default
//! level, the same workload logs nothing of the kind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::{
    net::SocketAddr,
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use hostscope_tests::{blockdev::LoopDevice, daemon::Daemon, netns::NetnsPair};

/// The start of the line the block programs log when `BLOCK_START` is full.
const BLOCK_START_FULL: &str = "BLOCK_START is full";

/// The line the TCP programs log when `TCP_CONNECT_START` is full.
const CONNECT_START_FULL: &str = "TCP_CONNECT_START is full";

/// Room to time 32 block requests at once: fio's 4 x 64 in flight fill it.
const SMALL_START_MAP: &[&str] = &["--block-max-inflight", "32"];

/// fio keeps more requests in flight than the start map holds, for
/// `seconds`; returns the block requests the daemon counted as dropped.
fn fill_block_start(daemon: &Daemon, seconds: u32) -> f64 {
    let device = LoopDevice::create(256);
    let dropped = |daemon: &Daemon| -> f64 {
        daemon
            .scrape()
            .matching(
                "hostscope_block_io_dropped_total",
                &[("device", device.name.as_str())],
            )
            .map(|s| s.value)
            .sum()
    };
    let before = dropped(daemon);
    device.fio(64, 4, seconds);
    dropped(daemon) - before
}

/// The daemon's log lines that contain `text`.
fn lines_with(log: &str, text: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(text))
        .map(str::to_owned)
        .collect()
}

/// Waits up to 5 s for a line containing `text` in the daemon's log: the
/// ring is read as records come, but the daemon writes asynchronously.
fn wait_for_line(daemon: &Daemon, text: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = lines_with(&daemon.log(), text);
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Online CPUs, as the rate limit is per CPU.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn a_full_block_start_map_is_logged_once_a_second_per_cpu() {
    // Before the daemon starts: every line it logs is from after this.
    let started = Instant::now();
    let daemon = Daemon::start_with(
        "block",
        &[
            SMALL_START_MAP,
            &["--log-level", "debug", "--log-format", "logfmt"],
        ]
        .concat(),
    );
    let seconds = 3;
    let dropped = fill_block_start(&daemon, seconds);
    assert!(
        dropped > 0.0,
        "fio did not fill BLOCK_START: nothing dropped"
    );
    let lines = wait_for_line(&daemon, BLOCK_START_FULL);
    let elapsed = started.elapsed().as_secs_f64();
    let log = daemon.log();
    assert!(
        !lines.is_empty(),
        "{dropped} requests dropped but no `{BLOCK_START_FULL}` line; log:\n{log}"
    );
    println!(
        "{dropped} dropped, {} lines in {elapsed:.1} s, such as:\n{}",
        lines.len(),
        lines[0]
    );
    for line in &lines {
        // logfmt: the kernel's target and the probe that wrote it, and a
        // line that says where the drops are counted and what to change.
        assert!(
            line.contains(" level=debug target=hostscope::kernel msg=")
                && line.ends_with(" probe=block")
                && line.contains("hostscope_block_io_dropped_total")
                && line.contains("--block-max-inflight"),
            "{line}"
        );
    }
    // Tens of thousands of drops, at most one line a second per CPU: in
    // `elapsed`, at most ceil(elapsed) + 1 per CPU.
    let most = cpus() * (elapsed.ceil() as usize + 1);
    assert!(
        lines.len() <= most,
        "{} lines in {elapsed:.1} s on {} CPUs: not rate-limited; log:\n{log}",
        lines.len(),
        cpus()
    );
    assert!(
        log.contains("kernel diagnostics on"),
        "the daemon did not say diagnostics are on; log:\n{log}"
    );
}

#[test]
fn at_the_default_level_the_same_workload_logs_nothing() {
    let daemon = Daemon::start_with("block", SMALL_START_MAP);
    let dropped = fill_block_start(&daemon, 3);
    assert!(
        dropped > 0.0,
        "fio did not fill BLOCK_START: nothing dropped"
    );
    // As long as the line takes to show up when it is on.
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log();
    assert!(
        lines_with(&log, BLOCK_START_FULL).is_empty() && !log.contains("kernel diagnostics"),
        "diagnostics logged at the default level; log:\n{log}"
    );
}

/// Starts a non-blocking connect from namespace `ns` to `target`, which
/// drops everything: the socket stays in SYN_SENT, holding an entry in
/// `TCP_CONNECT_START`, until it is closed.
fn pending_connect(target: SocketAddr) -> OwnedFd {
    let SocketAddr::V4(target) = target else {
        panic!("an IPv4 target");
    };
    // SAFETY: plain socket calls on a descriptor owned here; the address
    // is a sockaddr_in of the size passed.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: target.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*target.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        assert!(
            rc == -1 && err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {err}"
        );
        fd
    }
}

/// More connects waiting for an answer than `TCP_CONNECT_START` holds
/// (10,240): the TCP program says so.
#[test]
fn a_full_connect_start_map_is_logged() {
    let daemon = Daemon::start_with("tcp", &["--log-level", "debug"]);
    let pair = NetnsPair::create();
    pair.set_b_reachable(false);
    let target = SocketAddr::from((pair.addr_b, 7003));
    let pending = connects_to_fill_the_table();
    let sockets = NetnsPair::spawn_in(&pair.a, move || {
        (0..pending)
            .map(|_| pending_connect(target))
            .collect::<Vec<_>>()
    })
    .join()
    .expect("connect thread");
    let lines = wait_for_line(&daemon, CONNECT_START_FULL);
    let dropped = daemon
        .scrape()
        .value("hostscope_tcp_connect_dropped_total", &[])
        .unwrap_or(0.0);
    drop(sockets);
    let log = daemon.log();
    assert!(
        dropped > 0.0,
        "{pending} pending connects did not fill TCP_CONNECT_START; log:\n{log}"
    );
    assert!(
        !lines.is_empty(),
        "{dropped} connects dropped but no `{CONNECT_START_FULL}` line; log:\n{log}"
    );
    println!("{dropped} dropped; {}", lines[0]);
    assert!(
        lines[0].contains("hostscope_tcp_connect_dropped_total") && lines[0].contains("probe"),
        "{}",
        lines[0]
    );
}

/// Connects to leave pending: the table's 10,240 entries and a few
/// hundred more, within the tests' open-file limit.
fn connects_to_fill_the_table() -> usize {
    let table = 10_240;
    let more = 300;
    raise_open_files(table + more + 100);
    table + more
}

/// Raises the soft open-file limit to `wanted` (or the hard limit).
fn raise_open_files(wanted: usize) {
    // SAFETY: get/setrlimit on this process with a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let wanted = (wanted as libc::rlim_t).min(limit.rlim_max);
        assert!(
            wanted >= 10_540,
            "the open-file hard limit {} is too low to fill TCP_CONNECT_START",
            limit.rlim_max
        );
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}
