//! `--by-cgroup` against the kernel's own accounting, in cgroups the tests
//! create and remove.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    time::{Duration, Instant},
};

use hostscope_tests::{
    assert_close,
    blockdev::{DiskStat, LoopDevice},
    cgroups::TestCgroup,
    daemon::Daemon,
    exposition::Exposition,
};

const RUNQ: &str = "hostscope_runqueue_latency_seconds";
const BLOCK: &str = "hostscope_block_io_latency_seconds";
const CONNECT: &str = "hostscope_tcp_connect_latency_seconds";
const RTT: &str = "hostscope_tcp_rtt_seconds";

/// `(count, sum)` of histogram `name` for `labels`, zero if absent.
fn histogram(exposition: &Exposition, name: &str, labels: &[(&str, &str)]) -> (f64, f64) {
    exposition
        .histogram(name, labels)
        .map_or((0.0, 0.0), |h| (h.count, h.sum))
}

/// Four spinners pinned to one CPU: three in A, one in B. Each cgroup's
/// histogram must match what the kernel accounted for its tasks: the count
/// within 2% of their timeslices and the sum within 3% of their run delay.
/// Pinned, their waits never move between run queues, so the sum is held
/// closer than the host-wide test's.
#[test]
fn runqueue_latency_per_cgroup_matches_schedstat() {
    let daemon = Daemon::start_with("sched", &["--by-cgroup"]);
    let mut a = TestCgroup::new("sched-a");
    let mut b = TestCgroup::new("sched-b");
    let spin = "exec taskset -c 0 sh -c 'while :; do :; done'";
    let gated: Vec<_> = (0..3)
        .map(|_| a.spawn(spin))
        .chain([b.spawn(spin)])
        .collect();
    let kernel_before = [a.schedstat(), b.schedstat()];
    let before = daemon.scrape();
    for process in gated {
        process.release();
    }
    std::thread::sleep(Duration::from_secs(2));
    // Stopped, nothing waits any more: both sides can be read at leisure.
    a.stop_all();
    b.stop_all();
    std::thread::sleep(Duration::from_millis(100));
    let kernel_after = [a.schedstat(), b.schedstat()];
    let after = daemon.scrape();

    for (i, cgroup) in [&a, &b].into_iter().enumerate() {
        let labels = [("cgroup", cgroup.path.as_str())];
        let (count_before, sum_before) = histogram(&before, RUNQ, &labels);
        let (count_after, sum_after) = histogram(&after, RUNQ, &labels);
        let kernel = kernel_after[i].since(&kernel_before[i]);
        let (count, sum) = (count_after - count_before, sum_after - sum_before);
        println!(
            "{}: {count} waits, {sum:.4} s; kernel {} timeslices, {:.4} s",
            cgroup.path,
            kernel.timeslices,
            kernel.run_delay_ns as f64 / 1e9
        );
        assert!(
            kernel.run_delay_ns > 100_000_000,
            "no contention in {}",
            cgroup.path
        );
        assert_close(
            &format!("{} wait count", cgroup.path),
            count,
            kernel.timeslices as f64,
            0.02,
        );
        assert_close(
            &format!("{} wait sum", cgroup.path),
            sum,
            kernel.run_delay_ns as f64 / 1e9,
            0.03,
        );
    }
}

/// fio in A reads a loop device with 16 requests in flight while dd in B
/// writes it: every request is counted under the cgroup that issued it.
#[test]
fn block_io_per_cgroup_is_exact() {
    let device = LoopDevice::create(64);
    let daemon = Daemon::start_with("block", &["--by-cgroup"]);
    let mut a = TestCgroup::new("block-a");
    let mut b = TestCgroup::new("block-b");
    let (reads, writes) = (1024u64, 300u64);
    let dev = device.path();
    let fio = a.spawn(&format!(
        "exec fio --name=reads --filename={dev} --rw=randread --bs=4k --direct=1 \
         --ioengine=libaio --iodepth=16 --size={}k --output=/dev/null",
        reads * 4
    ));
    let dd = b.spawn(&format!(
        "exec dd if=/dev/zero of={dev} bs=4k count={writes} oflag=direct status=none"
    ));
    let kernel_before = DiskStat::read(&device.name);
    let before = daemon.scrape();
    fio.release();
    dd.release();
    a.wait_all();
    b.wait_all();
    let kernel_after = DiskStat::read(&device.name);
    let after = daemon.scrape();

    let count = |cgroup: &TestCgroup, op: &str| {
        let labels = [
            ("cgroup", cgroup.path.as_str()),
            ("device", device.name.as_str()),
            ("op", op),
        ];
        histogram(&after, BLOCK, &labels).0 - histogram(&before, BLOCK, &labels).0
    };
    assert_eq!(
        kernel_after.reads - kernel_before.reads,
        reads,
        "fio's reads reach the device one request each"
    );
    assert_eq!(kernel_after.writes - kernel_before.writes, writes);
    assert_eq!(count(&a, "read"), reads as f64, "A's reads");
    assert_eq!(count(&b, "write"), writes as f64, "B's writes");
    assert_eq!(count(&a, "write"), 0.0, "A wrote nothing");
    assert_eq!(count(&b, "read"), 0.0, "B read nothing");
    // The host-wide drop counters exist for every disk and operation seen,
    // at 0 before any drop, so that increase() sees the first ones.
    for op in ["read", "write"] {
        assert_eq!(
            after.value(
                "hostscope_block_io_dropped_total",
                &[("device", device.name.as_str()), ("op", op)]
            ),
            Some(0.0),
            "no zero drop counter for {} {op}",
            device.name
        );
    }
}

/// k connects from A and m from B (and failed ones from A) are counted
/// under their cgroups exactly; RTT samples appear under the cgroups whose
/// sockets received data, and not under an idle cgroup.
#[test]
fn tcp_connects_per_cgroup_are_exact() {
    let daemon = Daemon::start_with("tcp", &["--by-cgroup"]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    // A port nobody listens on: connects to it fail.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("address").port();
    drop(closed);
    let (k, m, failed) = (25u32, 15u32, 5u32);
    let server = std::thread::spawn(move || {
        for _ in 0..k + m {
            let (mut stream, _) = listener.accept().expect("accept");
            // Data for the client to receive, so that its socket sees RTT samples.
            let _ = stream.write_all(b"hello\n");
            let mut sink = [0u8; 16];
            let _ = stream.read(&mut sink);
        }
    });
    // bash's /dev/tcp: connect, read the greeting, close.
    let connects = |n: u32, port: u16| {
        format!(
            "exec bash -c 'for i in $(seq {n}); do \
               exec 3<>/dev/tcp/127.0.0.1/{port} && read -u 3 line; exec 3>&-; done; true'"
        )
    };
    let failures = |n: u32, port: u16| {
        format!(
            "exec bash -c 'for i in $(seq {n}); do \
               (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; done; true'"
        )
    };
    let mut a = TestCgroup::new("tcp-a");
    let mut b = TestCgroup::new("tcp-b");
    let mut idle = TestCgroup::new("tcp-idle");
    let a_ok = a.spawn(&connects(k, port));
    let b_ok = b.spawn(&connects(m, port));
    let idle_sleep = idle.spawn("exec sleep 3");
    let before = daemon.scrape();
    idle_sleep.release();
    a_ok.release();
    b_ok.release();
    a.wait_all();
    b.wait_all();
    let a_fail = a.spawn(&failures(failed, closed_port));
    a_fail.release();
    a.wait_all();
    server.join().expect("server thread");
    let after = daemon.scrape();

    let delta = |name: &str, cgroup: &TestCgroup| {
        let labels = [("cgroup", cgroup.path.as_str())];
        histogram(&after, name, &labels).0 - histogram(&before, name, &labels).0
    };
    assert_eq!(delta(CONNECT, &a), f64::from(k), "A's connects");
    assert_eq!(delta(CONNECT, &b), f64::from(m), "B's connects");
    let failures_of = |cgroup: &TestCgroup, exposition: &Exposition| {
        exposition
            .value(
                "hostscope_tcp_connect_failures_total",
                &[("cgroup", cgroup.path.as_str())],
            )
            .unwrap_or(0.0)
    };
    assert_eq!(
        failures_of(&a, &after) - failures_of(&a, &before),
        f64::from(failed),
        "A's failed connects"
    );
    assert_eq!(failures_of(&b, &after), 0.0, "B had no failures");
    assert!(delta(RTT, &a) >= f64::from(k), "A's sockets received data");
    assert!(delta(RTT, &b) >= f64::from(m), "B's sockets received data");
    for name in [RTT, CONNECT] {
        assert!(
            after
                .histogram(name, &[("cgroup", idle.path.as_str())])
                .is_none(),
            "{name}: the idle cgroup has no series"
        );
    }
}

/// With room for two cgroups and five busy ones, nothing is lost: the
/// series of the device add up to the kernel's count, and the overflow
/// counter says how many went to "other".
#[test]
fn cgroups_beyond_the_cap_go_to_other_and_nothing_is_lost() {
    let device = LoopDevice::create(16);
    let daemon = Daemon::start_with("block", &["--by-cgroup", "--cgroup-max", "2"]);
    let reads = 200u64;
    let mut cgroups: Vec<TestCgroup> = (0..5)
        .map(|i| TestCgroup::new(&format!("cap-{i}")))
        .collect();
    let kernel_before = DiskStat::read(&device.name);
    let before = daemon.scrape();
    for cgroup in &mut cgroups {
        let dd = cgroup.spawn(&format!(
            "exec dd if={} of=/dev/null bs=4k count={reads} iflag=direct status=none",
            device.path()
        ));
        dd.release();
        cgroup.wait_all();
    }
    let kernel_after = DiskStat::read(&device.name);
    let after = daemon.scrape();

    let total = |exposition: &Exposition| -> f64 {
        exposition
            .matching(
                &format!("{BLOCK}_count"),
                &[("device", device.name.as_str()), ("op", "read")],
            )
            .map(|s| s.value)
            .sum()
    };
    let kernel = (kernel_after.reads - kernel_before.reads) as f64;
    assert_eq!(kernel, 5.0 * reads as f64);
    assert_eq!(
        total(&after) - total(&before),
        kernel,
        "every read is in some series"
    );
    let own = cgroups
        .iter()
        .filter(|c| {
            after
                .histogram(
                    BLOCK,
                    &[
                        ("cgroup", c.path.as_str()),
                        ("device", device.name.as_str()),
                        ("op", "read"),
                    ],
                )
                .is_some()
        })
        .count();
    assert!(
        own <= 2,
        "{own} cgroups got series of their own past --cgroup-max 2"
    );
    let other = histogram(
        &after,
        BLOCK,
        &[
            ("cgroup", "other"),
            ("device", device.name.as_str()),
            ("op", "read"),
        ],
    )
    .0;
    assert!(other >= 3.0 * reads as f64, "other holds the rest: {other}");
    let overflow = after
        .value("hostscope_cgroup_overflow_total", &[("collector", "block")])
        .expect("the overflow counter is exported");
    assert!(overflow >= 3.0 * reads as f64, "overflow {overflow}");
}

/// `--cgroup-match` keeps series only for matching paths; the rest are
/// counted under "other".
#[test]
fn cgroup_match_sends_the_rest_to_other() {
    let device = LoopDevice::create(16);
    let kept = TestCgroup::new("match-keep");
    let pattern = format!("^{}$", kept.path);
    let daemon = Daemon::start_with("block", &["--by-cgroup", "--cgroup-match", &pattern]);
    let mut kept = kept;
    let mut rejected = TestCgroup::new("match-reject");
    let before = daemon.scrape();
    for cgroup in [&mut kept, &mut rejected] {
        let dd = cgroup.spawn(&format!(
            "exec dd if={} of=/dev/null bs=4k count=100 iflag=direct status=none",
            device.path()
        ));
        dd.release();
        cgroup.wait_all();
    }
    let after = daemon.scrape();
    let reads = |exposition: &Exposition, cgroup: &str| {
        histogram(
            exposition,
            BLOCK,
            &[
                ("cgroup", cgroup),
                ("device", device.name.as_str()),
                ("op", "read"),
            ],
        )
        .0
    };
    assert_eq!(
        reads(&after, &kept.path) - reads(&before, &kept.path),
        100.0
    );
    assert!(
        after
            .histogram(BLOCK, &[("cgroup", rejected.path.as_str())])
            .is_none()
            && !after
                .samples
                .iter()
                .any(|s| s.labels.get("cgroup") == Some(&rejected.path)),
        "the rejected cgroup has no series"
    );
    assert_eq!(reads(&after, "other") - reads(&before, "other"), 100.0);
}

/// 2,000 cgroups created, used and removed: afterwards none has a series,
/// the kernel's admitted set is back where it was, and the daemon's memory
/// did not grow with them.
#[test]
fn removed_cgroups_leave_metrics_and_kernel_maps() {
    let daemon = Daemon::start_with("sched,block,tcp", &["--by-cgroup"]);
    std::thread::sleep(Duration::from_millis(500));
    let labelled = |exposition: &Exposition| {
        exposition
            .value("hostscope_cgroups_labelled", &[])
            .expect("hostscope_cgroups_labelled is exported")
    };
    let rss_kib = || -> u64 {
        hostscope_tests::daemon::proc_status(&daemon.pid().to_string(), "VmRSS")
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .expect("VmRSS in kB")
    };
    let is_churn = |s: &hostscope_tests::exposition::Sample| {
        s.labels
            .get("cgroup")
            .is_some_and(|c| c.contains("-churn-"))
    };
    // How many churn series scrapes saw while the cgroups came and went:
    // they must have been exported, or their leaving proves nothing.
    let churn = |round: u32, count: u32| -> usize {
        let mut seen = 0;
        for i in 0..count {
            let mut cgroup = TestCgroup::new(&format!("churn-{round}-{i}"));
            let gated = cgroup.spawn("exec true");
            gated.release();
            cgroup.wait_all();
            if i % 100 == 99 {
                // Scrapes in between, as Prometheus would.
                seen += daemon
                    .scrape()
                    .samples
                    .iter()
                    .filter(|s| is_churn(s))
                    .count();
            }
        }
        seen
    };
    let baseline = labelled(&daemon.scrape());
    let seen = churn(0, 1000);
    let rss_after_first = rss_kib();
    let seen = seen + churn(1, 1000);
    assert!(seen > 0, "no scrape saw a series of the churned cgroups");
    // Gone cgroups are found at the next walk, at most 5 s old.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut exposition = daemon.scrape();
    while exposition.samples.iter().any(is_churn) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        exposition = daemon.scrape();
    }
    let left: Vec<_> = exposition
        .samples
        .iter()
        .filter(|s| is_churn(s))
        .map(|s| s.labels["cgroup"].clone())
        .collect();
    assert!(
        left.is_empty(),
        "series of removed cgroups remain: {left:?}"
    );
    let now = labelled(&exposition);
    assert!(
        now <= baseline + 2.0,
        "admitted cgroups: {baseline} before, {now} after"
    );
    let rss_after_second = rss_kib();
    println!(
        "RSS {rss_after_first} KiB after 1,000 cgroups, {rss_after_second} KiB after 2,000; \
         {seen} churn series seen"
    );
    assert!(
        rss_after_second < rss_after_first + 2048,
        "RSS grew from {rss_after_first} KiB to {rss_after_second} KiB over the second 1,000 cgroups"
    );
}

/// `hostscope hist sched --by-cgroup` prints a histogram per cgroup that
/// had events, labelled with the cgroup's path.
#[test]
fn terminal_histograms_per_cgroup() {
    let mut busy = TestCgroup::new("hist-busy");
    let work = busy.spawn(
        "exec taskset -c 0 sh -c 'i=0; while [ $i -lt 200 ]; do sleep 0.001; i=$((i+1)); done'",
    );
    let lines = hostscope_tests::hist_json_with("sched", &["--by-cgroup"], 3, || {
        work.release();
        busy.wait_all();
    });
    let ours = lines
        .iter()
        .find(|l| l["labels"]["cgroup"] == busy.path.as_str())
        .unwrap_or_else(|| panic!("no histogram for {} in {lines:?}", busy.path));
    // 200 sleeps: at least 200 wakeups, each a wait.
    assert!(ours["count"].as_u64().unwrap_or(0) >= 200, "{ours}");
    assert!(
        lines.iter().all(|l| l["count"].as_u64().unwrap_or(0) > 0),
        "cgroups without events are left out: {lines:?}"
    );
}

/// A cgroup named with quotes, backslashes and a terminal escape (anyone
/// with a delegated subtree can make one): the exposition stays parseable,
/// the label has no control character, and the numbers are still there.
#[test]
fn hostile_cgroup_names_are_exported_safely() {
    let device = LoopDevice::create(16);
    let daemon = Daemon::start_with("block", &["--by-cgroup"]);
    // cgroupfs refuses a newline in a name; everything else goes.
    let mut evil = TestCgroup::new("evil\"} 1 \\\u{1b}[2J\t");
    let dd = evil.spawn(&format!(
        "exec dd if={} of=/dev/null bs=4k count=50 iflag=direct status=none",
        device.path()
    ));
    dd.release();
    evil.wait_all();
    // Parsing panics on a malformed line.
    let exposition = daemon.scrape();
    let label = evil.path.replace(|c: char| c.is_control(), "?");
    let reads = histogram(
        &exposition,
        BLOCK,
        &[
            ("cgroup", label.as_str()),
            ("device", device.name.as_str()),
            ("op", "read"),
        ],
    )
    .0;
    assert_eq!(reads, 50.0, "the evil cgroup's reads, labelled {label:?}");
}
