//! What a scraper gets from /metrics: the format its `Accept` header asks
//! for, and a default that Prometheus' own linter accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
};

use hostscope_tests::{daemon::Daemon, exposition::Exposition};

/// The status line and headers (lower-cased names) and the body of a GET
/// of /metrics with these request headers.
fn get_metrics(daemon: &Daemon, headers: &str) -> (String, String) {
    let mut stream = TcpStream::connect(daemon.addr).expect("connect");
    write!(stream, "GET /metrics HTTP/1.0\r\n{headers}\r\n").expect("send");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read");
    // Protobuf bodies are not text; the tests only look at their headers.
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response}"));
    (head.to_ascii_lowercase(), body.to_owned())
}

/// No `Accept` (curl, a browser) gets the Prometheus text format 0.0.4;
/// Prometheus' own default `Accept` gets OpenMetrics; both say that the
/// answer varies with those headers, and carry the same samples.
#[test]
fn metrics_come_in_the_format_asked_for() {
    let daemon = Daemon::start("sched,block,tcp");

    let (head, text) = get_metrics(&daemon, "");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("vary: accept, accept-encoding"), "{head}");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(!text.contains("# UNIT"), "{text}");
    assert!(
        text.contains("# TYPE hostscope_tcp_retransmits_total counter\n"),
        "counters are typed under their _total name: {text}"
    );

    let prometheus = "Accept: application/openmetrics-text;version=1.0.0;q=0.5,\
        application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,\
        */*;q=0.2\r\n";
    let (head, openmetrics) = get_metrics(&daemon, prometheus);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(head.contains("vary: accept, accept-encoding"), "{head}");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(
        openmetrics.contains("# TYPE hostscope_tcp_retransmits counter\n"),
        "{openmetrics}"
    );

    let native = "Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
        encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.2\r\n";
    let (head, protobuf) = get_metrics(&daemon, native);
    assert!(
        head.contains(
            "content-type: application/vnd.google.protobuf; \
             proto=io.prometheus.client.metricfamily; encoding=delimited"
        ),
        "{head}"
    );
    assert!(head.contains("vary: accept, accept-encoding"), "{head}");
    assert!(protobuf.contains("hostscope_runqueue_latency_seconds"));

    let (_, plain) = get_metrics(&daemon, "Accept: text/plain\r\n");
    assert!(!plain.contains("# EOF"), "{plain}");

    // The same series either way (values move between the two reads).
    let names = |exposition: &str| {
        let mut names: Vec<String> = Exposition::parse(exposition)
            .samples
            .into_iter()
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(names(&text), names(&openmetrics));
}

/// `promtool check metrics` finds nothing to complain about in the default
/// exposition, with every collector and per-cgroup series on.
#[test]
fn promtool_accepts_the_default_exposition() {
    let daemon = Daemon::start_with("sched,block,tcp", &["--by-cgroup"]);
    let (_, text) = get_metrics(&daemon, "");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; cargo xtask test installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool ran");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );
}

/// The standard process metrics describe the daemon's own process as /proc
/// does, and build_info names the revision it was built from.
#[test]
fn the_daemon_describes_itself() {
    let daemon = Daemon::start("sched");
    let exposition = daemon.scrape();
    let pid = daemon.pid();
    let value = |name: &str| {
        exposition
            .value(name, &[])
            .unwrap_or_else(|| panic!("no {name}"))
    };

    let rss_kib: f64 = hostscope_tests::daemon::proc_status(&pid.to_string(), "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .expect("VmRSS");
    let rss = value("process_resident_memory_bytes");
    assert!(
        (rss - rss_kib * 1024.0).abs() < 0.5 * rss_kib * 1024.0,
        "process_resident_memory_bytes {rss}, VmRSS {rss_kib} kB"
    );
    assert!(value("process_virtual_memory_bytes") >= rss);
    let fds = hostscope_tests::daemon::proc_entries(pid, "fd") as f64;
    let open = value("process_open_fds");
    assert!(
        (open - fds).abs() <= 8.0,
        "process_open_fds {open}, /proc/{pid}/fd has {fds}"
    );
    let (soft, _) = hostscope_tests::daemon::proc_limit(&pid.to_string(), "Max open files");
    assert_eq!(
        value("process_max_fds"),
        soft.parse::<f64>().expect("soft limit")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now && started > now - 60.0,
        "process_start_time_seconds {started}, now {now}"
    );
    let cpu = value("process_cpu_seconds_total");
    assert!(cpu > 0.0 && cpu < 60.0, "process_cpu_seconds_total {cpu}");

    let info = exposition
        .matching("hostscope_build_info", &[])
        .next()
        .expect("hostscope_build_info");
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    assert_eq!(
        info.labels.get("revision").map(String::as_str),
        Some(String::from_utf8_lossy(&revision.stdout).trim()),
        "{info:?}"
    );
    assert!(info.labels["rustc"].starts_with("rustc "), "{info:?}");
    assert_eq!(info.labels["target"], "x86_64-unknown-linux-gnu");
    assert_eq!(
        exposition.value("hostscope_scrape_errors_total", &[("collector", "sched")]),
        Some(0.0)
    );
}

/// `--bpf-stats` exports each program's run count and time, from the
/// kernel's own accounting: scheduler programs run on every context switch.
#[test]
fn bpf_stats_count_program_runs() {
    let daemon = Daemon::start_with("sched", &["--bpf-stats"]);
    let runs = |exposition: &Exposition| {
        exposition
            .value(
                "hostscope_bpf_program_runs_total",
                &[("program", "sched_switch")],
            )
            .expect("hostscope_bpf_program_runs_total for sched_switch")
    };
    let before = daemon.scrape();
    let _ = hostscope_tests::workload::Workload::new()
        .spinners(2, 0, std::time::Duration::from_millis(300))
        .run();
    let after = daemon.scrape();
    assert!(
        runs(&after) - runs(&before) > 10.0,
        "sched_switch ran {} times while two threads shared a CPU",
        runs(&after) - runs(&before)
    );
    let seconds = after
        .value(
            "hostscope_bpf_program_run_seconds_total",
            &[("program", "sched_switch")],
        )
        .expect("run seconds");
    assert!(seconds > 0.0, "run time {seconds}");

    // Without the flag, and with the kernel's statistics off, there are
    // no program metrics rather than frozen zeros.
    drop(daemon);
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").expect("sysctl");
    let daemon = Daemon::start("sched");
    let has_programs = daemon
        .scrape()
        .value(
            "hostscope_bpf_program_runs_total",
            &[("program", "sched_switch")],
        )
        .is_some();
    assert_eq!(has_programs, sysctl.trim() == "1", "sysctl {sysctl}");
}

/// The in-flight tables' fill is exported against their capacity: connects
/// whose SYNs are lost hold an entry until they give up.
#[test]
fn in_flight_tables_report_their_fill() {
    use hostscope_tests::netns::NetnsPair;

    let daemon = Daemon::start_with("block,tcp", &["--block-max-inflight", "5000"]);
    let entries = |exposition: &Exposition, map: &str| {
        exposition
            .value("hostscope_bpf_map_entries", &[("map", map)])
            .unwrap_or_else(|| panic!("no hostscope_bpf_map_entries for {map}"))
    };
    let idle = daemon.scrape();
    assert_eq!(
        idle.value("hostscope_bpf_map_max_entries", &[("map", "BLOCK_START")]),
        Some(5000.0)
    );
    assert_eq!(
        idle.value(
            "hostscope_bpf_map_max_entries",
            &[("map", "TCP_CONNECT_START")]
        ),
        Some(10240.0)
    );
    assert_eq!(
        idle.value(
            "hostscope_bpf_map_max_entries",
            &[("map", "BLOCK_START_SLOTS")]
        ),
        Some(5000.0)
    );

    // fio keeps 4 x 64 requests in flight (the loop device takes 128 at a
    // time): a scrape meanwhile finds some of them in the slots.
    let device = hostscope_tests::blockdev::LoopDevice::create(64);
    let slots_in_use = std::thread::scope(|scope| {
        let fio = scope.spawn(|| device.fio(64, 4, 3));
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let in_use = entries(&daemon.scrape(), "BLOCK_START_SLOTS");
        fio.join().expect("fio thread");
        in_use
    });
    assert!(
        slots_in_use > 0.0,
        "no BLOCK_START_SLOTS in use while fio kept 256 requests in flight"
    );

    let pair = NetnsPair::create();
    pair.set_b_reachable(false);
    let target = std::net::SocketAddr::from((pair.addr_b, 7002));
    const PENDING: usize = 5;
    let connects: Vec<_> = (0..PENDING)
        .map(|_| {
            NetnsPair::spawn_in(&pair.a, move || {
                std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let during = entries(&daemon.scrape(), "TCP_CONNECT_START");
    for connect in connects {
        assert!(
            connect.join().expect("connect thread").is_err(),
            "a connect to an address that drops everything succeeded"
        );
    }
    let after = entries(&daemon.scrape(), "TCP_CONNECT_START");
    assert!(
        during >= PENDING as f64 && during - after >= PENDING as f64,
        "TCP_CONNECT_START entries: {during} with {PENDING} connects pending, {after} after"
    );
}
