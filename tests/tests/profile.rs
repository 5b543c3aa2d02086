//! CPU and off-CPU profiles of programs whose stacks are known, in every
//! format.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::process::Command;

use hostscope_tests::{
    cgroups::Cgroup,
    daemon::Daemon,
    folded::parse_folded,
    hostscope_bin,
    programs::{HOT_LOOP, Running, SLEEPER, SYSCALL_LOOP},
    schedstat,
};

/// A 3 s profile of a program that spins in `hot_spin_loop` shows that
/// function under its true callers (`main` -> `intermediate_caller`) in at
/// least 90% of the process's samples. The remainder is time the sampler
/// catches the process outside the loop (the call, timer interrupts whose
/// kernel frames are still under the loop, scheduling): a few percent.
#[test]
fn hot_function_shows_under_its_callers() {
    let daemon = Daemon::start("sched");
    let hot = Running::build_and_start("hot_loop", HOT_LOOP);
    let (status, body) = daemon.get(&format!("/stacks?seconds=3&pid={}", hot.pid));
    assert_eq!(status, 200, "{body}");
    let stacks = parse_folded(&body);
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let under_callers: u64 = stacks
        .iter()
        .filter(|(frames, _)| {
            frames[0] == hot.name
                && frames
                    .windows(3)
                    .any(|w| w == ["main", "intermediate_caller", "hot_spin_loop"])
        })
        .map(|(_, c)| c)
        .sum();
    println!("{under_callers} of {total} samples in main;intermediate_caller;hot_spin_loop");
    // 3 s at 99 Hz of a process that never sleeps.
    assert!(
        total >= 200,
        "only {total} samples in 3 s at 99 Hz:\n{body}"
    );
    assert!(under_callers as f64 >= 0.9 * total as f64, "{body}");
    assert!(
        stacks.iter().all(|(f, _)| f[0] == hot.name),
        "pid filter leaked:\n{body}"
    );
}

/// A program that makes system calls in a loop shows kernel frames (marked
/// `_[k]`) under it, through the syscall entry, in most of its samples.
#[test]
fn syscall_heavy_workload_shows_kernel_frames() {
    let daemon = Daemon::start("sched");
    let busy = Running::build_and_start("syscall_loop", SYSCALL_LOOP);
    let (status, body) = daemon.get(&format!("/stacks?seconds=2&pid={}", busy.pid));
    assert_eq!(status, 200, "{body}");
    let stacks = parse_folded(&body);
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let in_kernel: u64 = stacks
        .iter()
        .filter(|(frames, _)| {
            frames
                .iter()
                .any(|f| f.starts_with("do_syscall_64") && f.ends_with("_[k]"))
        })
        .map(|(_, c)| c)
        .sum();
    println!("{in_kernel} of {total} samples under do_syscall_64_[k]");
    // Each write(2) to /dev/null is mostly entry, exit and VFS: well over
    // half of the loop's time is in the kernel.
    assert!(in_kernel as f64 >= 0.5 * total as f64, "{body}");
    // Kernel frames come after (under) the user frames.
    for (frames, _) in &stacks {
        if let Some(first_kernel) = frames.iter().position(|f| f.ends_with("_[k]")) {
            assert!(
                frames[first_kernel..].iter().all(|f| f.ends_with("_[k]")),
                "user frame under a kernel frame: {frames:?}"
            );
        }
    }
}

/// The pprof answer is accepted by `go tool pprof -top` and names the hot
/// function; the SVG is well-formed XML that names it.
#[test]
fn pprof_and_svg_name_the_hot_function() {
    let daemon = Daemon::start("sched");
    let hot = Running::build_and_start("hot_loop", HOT_LOOP);

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = |path: &str| format!("http://{}{path}&pid={}", daemon.addr, hot.pid);
    let mut response = agent
        .get(url("/debug/pprof/profile?seconds=2"))
        .call()
        .expect("GET pprof");
    assert_eq!(response.status().as_u16(), 200);
    let pprof = response.body_mut().read_to_vec().expect("pprof body");
    let file = std::env::temp_dir().join(format!("hostscope-test-{}.pb.gz", std::process::id()));
    std::fs::write(&file, &pprof).expect("write the profile");
    let top = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&file)
        .output()
        .expect("go (golang-go) is installed by `cargo xtask setup`");
    let raw = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&file)
        .output()
        .expect("go tool pprof -raw");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&top.stdout);
    let warnings = String::from_utf8_lossy(&top.stderr);
    assert!(top.status.success(), "go tool pprof failed: {warnings}");
    assert!(text.contains("hot_spin_loop"), "{text}");
    assert!(
        !warnings.contains("binary filename not available"),
        "pprof names the main binary: {warnings}"
    );
    // The executable's mapping carries its GNU build ID, so that a pprof
    // server can fetch its symbols from debuginfod.
    let notes = Command::new("readelf")
        .args(["-n", &format!("/proc/{}/exe", hot.pid)])
        .output()
        .expect("readelf (binutils) is installed with gcc");
    let notes = String::from_utf8_lossy(&notes.stdout);
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("gcc writes a build ID")
        .trim()
        .to_owned();
    let raw = String::from_utf8_lossy(&raw.stdout);
    let mappings = raw.split("Mappings").nth(1).unwrap_or_default();
    assert!(
        mappings
            .lines()
            .any(|l| l.contains(&hot.name) && l.contains(&build_id)),
        "no mapping of {} with build ID {build_id} in:\n{raw}",
        hot.name
    );

    let (status, svg) = daemon.get(&format!("/flamegraph.svg?seconds=2&pid={}", hot.pid));
    assert_eq!(status, 200);
    // inferno's SVG starts with a DOCTYPE, which roxmltree must be told to accept.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let document =
        roxmltree::Document::parse_with_options(&svg, options).expect("the SVG is well-formed XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    assert!(
        document
            .descendants()
            .any(|n| n.text().is_some_and(|t| t.contains("hot_spin_loop"))),
        "the SVG does not name hot_spin_loop"
    );
}

/// Bad parameters get 400 and a one-line reason; the CLI exits 2.
#[test]
fn bad_parameters_are_refused() {
    let daemon = Daemon::start("sched");
    for (query, says) in [
        ("seconds=0", "at least 1"),
        ("seconds=-5", "at least 1"),
        ("seconds=ten", "whole number"),
        ("seconds=100000", "above the limit"),
        ("seconds=1&pid=999999999", "no process with pid 999999999"),
        ("seconds=1&pid=self", "process id"),
        ("seconds=1&frequency=0", "positive"),
        (
            "seconds=1&kind=wall",
            "kind must be `cpu` or `offcpu`, not `wall`",
        ),
        ("seconds=1&kind=", "kind must be `cpu` or `offcpu`"),
        ("seconds=1&kind=offcpu&min_block_us=0", "from 1 to 10000000"),
        (
            "seconds=1&kind=offcpu&min_block_us=10000001",
            "from 1 to 10000000",
        ),
        (
            "seconds=1&kind=offcpu&min_block_us=1ms",
            "whole number of microseconds",
        ),
        ("seconds=1&min_block_us=100", "only to kind=offcpu"),
        ("seconds=1&kind=offcpu&frequency=99", "only to kind=cpu"),
    ] {
        for path in ["/stacks", "/flamegraph.svg", "/debug/pprof/profile"] {
            let (status, body) = daemon.get(&format!("{path}?{query}"));
            assert_eq!(status, 400, "{path}?{query}: {body}");
            assert!(body.contains(says), "{path}?{query}: {body}");
            assert_eq!(body.trim().lines().count(), 1, "{path}?{query}: {body}");
        }
    }
    for (args, says) in [
        (&["--seconds", "0"][..], "at least 1"),
        (
            &["--kind", "wall"],
            "kind must be `cpu` or `offcpu`, not `wall`",
        ),
        (
            &["--kind", "offcpu", "--min-block-us", "0"],
            "from 1 to 10000000",
        ),
        (&["--min-block-us", "5"], "only to kind=offcpu"),
    ] {
        let output = Command::new(hostscope_bin())
            .arg("profile")
            .args(args)
            .output()
            .expect("run hostscope profile");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// `hostscope profile` works without a daemon and writes folded stacks.
#[test]
fn terminal_profile_writes_folded_stacks() {
    let hot = Running::build_and_start("hot_loop", HOT_LOOP);
    let out = std::env::temp_dir().join(format!("hostscope-test-{}.folded", std::process::id()));
    let status = Command::new(hostscope_bin())
        .args(["profile", "--seconds", "2", "--format", "folded", "--pid"])
        .arg(hot.pid.to_string())
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run hostscope profile");
    assert!(status.success());
    let text = std::fs::read_to_string(&out).expect("the output file");
    let _ = std::fs::remove_file(&out);
    let stacks = parse_folded(&text);
    assert!(
        stacks
            .iter()
            .any(|(f, _)| f.iter().any(|x| x == "hot_spin_loop")),
        "{text}"
    );
}

/// Perf-event links currently in the kernel (the sampler's, one per CPU
/// while a capture runs).
fn perf_links() -> usize {
    let output = Command::new("bpftool")
        .args(["--json", "link", "show"])
        .output()
        .expect("bpftool");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    links.as_array().map_or(0, |l| {
        l.iter().filter(|l| l["type"] == "perf_event").count()
    })
}

/// A client that goes away stops the capture: the sampler is detached at
/// once, not when the requested 30 s are up.
#[test]
fn client_disconnect_stops_the_capture() {
    let daemon = Daemon::start("sched");
    let addr = daemon.addr;
    let client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        std::io::Write::write_all(
            &mut stream,
            b"GET /stacks?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(800));
        // Dropping the stream closes the connection mid-capture.
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(perf_links() > 0, "the capture did not start");
    client.join().expect("client");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while perf_links() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sampler still attached 3 s after the client left"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Two requests at once are served one after the other: never more than
/// one sampler (one perf link per online CPU) at a time, both answered.
#[test]
fn concurrent_requests_never_run_two_samplers() {
    let daemon = std::sync::Arc::new(Daemon::start("sched"));
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
    let started = std::time::Instant::now();
    let requests: Vec<_> = (0..2)
        .map(|_| {
            let daemon = daemon.clone();
            std::thread::spawn(move || daemon.get("/stacks?seconds=2"))
        })
        .collect();
    let mut most = 0;
    while requests.iter().any(|r| !r.is_finished()) {
        most = most.max(perf_links());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for request in requests {
        let (status, body) = request.join().expect("request thread");
        assert_eq!(status, 200, "{body}");
    }
    println!(
        "at most {most} perf links for {cpus} CPUs; both answered in {:?}",
        started.elapsed()
    );
    assert!(
        most <= cpus,
        "{most} perf links for {cpus} CPUs: two samplers ran at once"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "not served one after the other"
    );
}

/// Two sibling cgroups under a parent made for one test, each with a
/// process spinning in `hot_spin_loop`. Fields drop in order: the processes
/// are killed, then the cgroups removed, children before the parent.
struct TwoBurners {
    a: Running,
    b: Running,
    cgroup_a: Cgroup,
    cgroup_b: Cgroup,
    parent: Cgroup,
}

fn two_burners(test: &str) -> TwoBurners {
    let parent = Cgroup::create(&format!("/hostscope-test-{}-{test}", std::process::id()));
    let cgroup_a = Cgroup::create(&format!("{}/a", parent.path));
    let cgroup_b = Cgroup::create(&format!("{}/b", parent.path));
    let a = Running::build_and_start("burn_a", HOT_LOOP);
    cgroup_a.add(a.pid);
    let b = Running::build_and_start("burn_b", HOT_LOOP);
    cgroup_b.add(b.pid);
    TwoBurners {
        a,
        b,
        cgroup_a,
        cgroup_b,
        parent,
    }
}

/// Samples whose root frame is `root`.
fn samples_under(stacks: &[(Vec<String>, u64)], root: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames[0] == root)
        .map(|(_, c)| c)
        .sum()
}

/// `cgroup=A` counts only A's process, although B's spins as hard beside
/// it; the flame graph takes the parameter too.
#[test]
fn cgroup_filter_keeps_only_that_cgroup() {
    let daemon = Daemon::start("sched");
    let burners = two_burners("filter");
    let on_cpu = || {
        let task = format!("/proc/{0}/task/{0}", burners.a.pid);
        schedstat::thread(std::path::Path::new(&task)).expect("burn_a's schedstat")
    };
    let before = on_cpu();
    let (status, body) = daemon.get(&format!(
        "/stacks?seconds=3&cgroup={}",
        burners.cgroup_a.path
    ));
    let ran = on_cpu().since(&before).on_cpu_ns as f64 / 1e9;
    assert_eq!(status, 200, "{body}");
    let stacks = parse_folded(&body);
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let from_a = samples_under(&stacks, &burners.a.name);
    let from_b = samples_under(&stacks, &burners.b.name);
    // What A's time on a CPU is worth at 99 Hz. It is measured over the
    // whole request, a little longer than the sampling, so it is an upper
    // bound; the share of a CPU A gets depends on what else runs.
    let expected = ran * 99.0;
    println!(
        "cgroup={}: {from_a} of {total} samples from burn_a ({:.1}%), {from_b} from burn_b; \
         burn_a ran {ran:.2} s, worth {expected:.0} samples",
        burners.cgroup_a.path,
        100.0 * from_a as f64 / total.max(1) as f64
    );
    // Enough that 5% is a few samples, however busy the machine.
    assert!(total >= 50, "only {total} samples in 3 s:\n{body}");
    assert!(from_a as f64 >= 0.95 * total as f64, "{body}");
    assert_eq!(from_b, 0, "cgroup filter leaked:\n{body}");
    // The filter loses none of A's samples.
    assert!(
        from_a as f64 >= 0.7 * expected,
        "{from_a} samples for {ran:.2} s on a CPU:\n{body}"
    );

    let (status, svg) = daemon.get(&format!(
        "/flamegraph.svg?seconds=1&cgroup={}&group_by=cgroup",
        burners.cgroup_b.path
    ));
    assert_eq!(status, 200, "{svg}");
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let document =
        roxmltree::Document::parse_with_options(&svg, options).expect("the SVG is well-formed XML");
    let texts: Vec<&str> = document.descendants().filter_map(|n| n.text()).collect();
    assert!(
        texts.iter().any(|t| t.contains(&burners.cgroup_b.path)),
        "the SVG does not name {}",
        burners.cgroup_b.path
    );
    assert!(
        !texts.iter().any(|t| t.contains(&burners.a.name)),
        "the SVG of {} shows burn_a",
        burners.cgroup_b.path
    );
}

/// `group_by=cgroup` puts each stack's cgroup path outermost, above the
/// process name, for the cgroup asked for and everything below it; a
/// cgroup made and removed during the capture keeps its name.
#[test]
fn group_by_cgroup_puts_the_path_outermost() {
    let daemon = Daemon::start("sched");
    let burners = two_burners("group-by");
    let parent = &burners.parent.path;
    let c_path = format!("{parent}/c");
    let body = std::thread::scope(|scope| {
        let capture = scope.spawn(|| {
            daemon.get(&format!(
                "/stacks?seconds=3&cgroup={parent}&group_by=cgroup"
            ))
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        {
            let cgroup_c = Cgroup::create(&c_path);
            let c = Running::build_and_start("burn_c", HOT_LOOP);
            cgroup_c.add(c.pid);
            std::thread::sleep(std::time::Duration::from_millis(1200));
            // c is killed, then its cgroup removed, before the capture ends.
            drop(c);
            drop(cgroup_c);
        }
        assert!(
            !hostscope_tests::cgroups::cgroup2_root()
                .join(c_path.trim_start_matches('/'))
                .exists(),
            "{c_path} was not removed"
        );
        let (status, body) = capture.join().expect("the capture thread");
        assert_eq!(status, 200, "{body}");
        body
    });
    let stacks = parse_folded(&body);
    for (frames, _) in &stacks {
        assert!(
            frames.len() >= 2,
            "no cgroup and process frames: {frames:?}"
        );
        let expected = match frames[1].as_str() {
            "burn_a" => &burners.cgroup_a.path,
            "burn_b" => &burners.cgroup_b.path,
            "burn_c" => &c_path,
            other => panic!("{other} is not in {parent}:\n{body}"),
        };
        assert_eq!(&frames[0], expected, "{frames:?}");
    }
    let count = |comm: &str| -> u64 {
        stacks
            .iter()
            .filter(|(frames, _)| frames[1] == comm)
            .map(|(_, c)| c)
            .sum()
    };
    let (a, b, c) = (count("burn_a"), count("burn_b"), count("burn_c"));
    println!("group_by=cgroup under {parent}: a {a}, b {b}, c (removed) {c} samples");
    // Three spinning processes share the machine's CPUs with whatever else
    // runs: modest floors.
    assert!(a >= 30 && b >= 30, "too few samples:\n{body}");
    assert!(c >= 5, "the removed cgroup's process is missing:\n{body}");
}

/// pprof samples carry the cgroup path as a `cgroup` label, which `go tool
/// pprof -tags` reads back.
#[test]
fn pprof_samples_carry_the_cgroup_label() {
    let daemon = Daemon::start("sched");
    let burners = two_burners("pprof");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!(
            "http://{}/debug/pprof/profile?seconds=2&cgroup={}",
            daemon.addr, burners.parent.path
        ))
        .call()
        .expect("GET pprof");
    assert_eq!(response.status().as_u16(), 200);
    let pprof = response.body_mut().read_to_vec().expect("pprof body");
    let file = std::env::temp_dir().join(format!("hostscope-test-{}-cg.pb.gz", std::process::id()));
    std::fs::write(&file, &pprof).expect("write the profile");
    let tags = Command::new("go")
        .args(["tool", "pprof", "-tags"])
        .arg(&file)
        .output()
        .expect("go (golang-go) is installed by `cargo xtask setup`");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&tags.stdout);
    assert!(
        tags.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&tags.stderr)
    );
    println!("{text}");
    // `cgroup: Total ...`, then one indented line per value, then a blank line.
    let values: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("cgroup:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split("): ").nth(1))
        .collect();
    let mut expected = vec![
        burners.cgroup_a.path.as_str(),
        burners.cgroup_b.path.as_str(),
    ];
    let mut found = values.clone();
    expected.sort_unstable();
    found.sort_unstable();
    assert_eq!(found, expected, "{text}");
}

/// A cgroup that is not one, or malformed, and any `group_by` but
/// `cgroup`: HTTP 400 and one line, and exit code 2 from the CLI.
#[test]
fn bad_cgroups_are_refused() {
    let daemon = Daemon::start("sched");
    let missing = format!("/hostscope-no-such-cgroup-{}", std::process::id());
    let long = format!("/{}", "x".repeat(5000));
    for (query, says) in [
        (
            format!("cgroup={missing}"),
            "no cgroup `/hostscope-no-such-cg",
        ),
        (
            "cgroup=/cgroup.procs".to_owned(),
            "no cgroup `/cgroup.procs`",
        ),
        ("cgroup=system.slice".to_owned(), "from the cgroup2 root"),
        ("cgroup=/a/../b".to_owned(), "`.` or `..`"),
        (format!("cgroup={long}"), "above the limit of 4096"),
        (
            "group_by=pid".to_owned(),
            "group_by must be `cgroup`, not `pid`",
        ),
        ("group_by=".to_owned(), "group_by must be `cgroup`"),
    ] {
        for path in ["/stacks", "/flamegraph.svg", "/debug/pprof/profile"] {
            let (status, body) = daemon.get(&format!("{path}?seconds=1&{query}"));
            let shown = &query[..query.len().min(60)];
            assert_eq!(status, 400, "{path}?{shown}: {body}");
            assert!(body.contains(says), "{path}?{shown}: {body}");
            assert_eq!(body.trim().lines().count(), 1, "{path}?{shown}: {body}");
        }
    }
    for (args, says) in [
        (["--cgroup", missing.as_str()], "no cgroup"),
        (["--cgroup", "relative"], "from the cgroup2 root"),
        (["--group-by", "pid"], "group_by must be `cgroup`"),
    ] {
        let output = Command::new(hostscope_bin())
            .args(["profile", "--seconds", "1"])
            .args(args)
            .output()
            .expect("run hostscope profile");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// `hostscope profile --cgroup A --group-by cgroup` writes only A's
/// stacks, each under A's path.
#[test]
fn terminal_profile_limited_to_a_cgroup() {
    let burners = two_burners("terminal");
    let output = Command::new(hostscope_bin())
        .args(["profile", "--seconds", "2", "--format", "folded"])
        .args(["--cgroup", &burners.cgroup_a.path, "--group-by", "cgroup"])
        .output()
        .expect("run hostscope profile");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stacks = parse_folded(&text);
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    println!("{total} samples from {}", burners.cgroup_a.path);
    assert!(total >= 40, "only {total} samples in 2 s:\n{text}");
    assert!(
        stacks
            .iter()
            .all(|(f, _)| f[0] == burners.cgroup_a.path && f[1] == burners.a.name),
        "{text}"
    );
}

/// A Go program built stripped (`-ldflags=-s`: no `.symtab`, as Debian's
/// Go packages ship) is named from its `.gopclntab`.
#[test]
fn stripped_go_binary_is_named_from_its_pclntab() {
    let daemon = Daemon::start("sched");
    let dir = hostscope_tests::programs::build_dir();
    let source = dir.join("gospin.go");
    std::fs::write(
        &source,
        "package main\n\n//go:noinline\nfunc hotGoSpin(n int) int {\n\ts := 0\n\t\
         for i := 0; i < n; i++ {\n\t\ts += i * i\n\t}\n\treturn s\n}\n\n\
         func main() {\n\tt := 0\n\tfor {\n\t\tt += hotGoSpin(1000000)\n\t}\n}\n",
    )
    .expect("write the Go source");
    let exe = dir.join("gospin");
    let built = Command::new("go")
        .args(["build", "-ldflags=-s", "-o"])
        .arg(&exe)
        .arg(&source)
        .env("GOCACHE", dir.join("gocache"))
        .env("HOME", &dir)
        .output()
        .expect("go (golang-go) is installed by `cargo xtask setup`");
    assert!(
        built.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let sections = Command::new("readelf")
        .arg("-S")
        .arg(&exe)
        .output()
        .expect("readelf");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(!sections.contains(".symtab"), "the binary is stripped");
    let hot = Running::start(Command::new(&exe), "gospin");
    let (status, body) = daemon.get(&format!("/stacks?seconds=2&pid={}", hot.pid));
    assert_eq!(status, 200, "{body}");
    let mut named = 0u64;
    let mut total = 0u64;
    for line in body.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("stack and count");
        let count: u64 = count.parse().expect("a count");
        total += count;
        if stack.split(';').any(|f| f == "main.hotGoSpin") {
            named += count;
        }
    }
    assert!(total >= 50, "too few samples: {body}");
    assert!(
        named * 10 >= total * 9,
        "{named} of {total} samples name main.hotGoSpin:\n{body}"
    );
}
/// The off-CPU stacks of `text` (folded, weights in microseconds); an empty
/// profile is one empty line.
fn parse_offcpu(text: &str) -> Vec<(Vec<String>, u64)> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    parse_folded(text)
}

/// Whether `frames` run main -> sleeper_caller -> sleeper_leaf.
fn in_sleeper_leaf(frames: &[String]) -> bool {
    frames
        .windows(3)
        .any(|w| w == ["main", "sleeper_caller", "sleeper_leaf"])
}

/// A program that sleeps 20 ms at a time in `sleeper_leaf`: a 2 s off-CPU
/// profile of it puts at least 90% of its blocked time under that function
/// and its callers, and that time adds up to the window, within 10%: the
/// thread is off CPU all the time but for a few microseconds per loop, and
/// only the sleeps cut by the window's two ends (20 ms each at most) are
/// not counted. The kernel frames end at the scheduler, without the
/// tracepoint's own. With `min_block_us` above 20 ms, nothing is left.
#[test]
fn offcpu_time_is_under_the_blocking_function() {
    let daemon = Daemon::start("sched");
    let sleeper = Running::build_and_start("sleeper", SLEEPER);
    let window_s = 2.0;
    let (status, body) = daemon.get(&format!(
        "/stacks?kind=offcpu&seconds=2&pid={}",
        sleeper.pid
    ));
    assert_eq!(status, 200, "{body}");
    let stacks = parse_offcpu(&body);
    let total_us: u64 = stacks.iter().map(|(_, us)| us).sum();
    let under_leaf: u64 = stacks
        .iter()
        .filter(|(frames, _)| in_sleeper_leaf(frames))
        .map(|(_, us)| us)
        .sum();
    println!(
        "off CPU: {:.3} s of a {window_s} s window, {:.1}% under main;sleeper_caller;sleeper_leaf\n{body}",
        total_us as f64 / 1e6,
        100.0 * under_leaf as f64 / total_us.max(1) as f64
    );
    assert!(
        stacks.iter().all(|(f, _)| f[0] == sleeper.name),
        "pid filter leaked:\n{body}"
    );
    assert!(under_leaf as f64 >= 0.9 * total_us as f64, "{body}");
    hostscope_tests::assert_close("off-CPU seconds", total_us as f64 / 1e6, window_s, 0.1);
    for (frames, _) in &stacks {
        let leaf = frames.last().map_or("", String::as_str);
        assert!(
            !leaf.starts_with("bpf_trace_run") && !leaf.starts_with("__traceiter"),
            "tracepoint frames left: {frames:?}"
        );
    }

    let (status, body) = daemon.get(&format!(
        "/stacks?kind=offcpu&seconds=1&min_block_us=50000&pid={}",
        sleeper.pid
    ));
    assert_eq!(status, 200, "{body}");
    let stacks = parse_offcpu(&body);
    assert!(
        stacks.iter().all(|(frames, _)| !in_sleeper_leaf(frames)),
        "20 ms sleeps counted with min_block_us=50000:\n{body}"
    );
}

/// Links of the off-CPU program in the kernel.
fn offcpu_links() -> usize {
    let json = |args: &[&str]| -> serde_json::Value {
        let output = Command::new("bpftool")
            .arg("--json")
            .args(args)
            .output()
            .expect("bpftool");
        serde_json::from_slice(&output.stdout).expect("bpftool JSON")
    };
    let programs = json(&["prog", "show"]);
    let ids: Vec<u64> = programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "offcpu_switch")
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let links = json(&["link", "show"]);
    links.as_array().map_or(0, |l| {
        l.iter()
            .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
            .count()
    })
}

/// The off-CPU program is attached only while an off-CPU capture runs, and
/// a CPU profile taken after one counts samples again, not nanoseconds.
#[test]
fn offcpu_program_is_attached_only_during_a_capture() {
    let daemon = Daemon::start("sched");
    let sleeper = Running::build_and_start("sleeper", SLEEPER);
    assert_eq!(offcpu_links(), 0, "attached before any capture");
    let (status, body, during) = std::thread::scope(|scope| {
        let capture = scope.spawn(|| {
            daemon.get(&format!(
                "/stacks?kind=offcpu&seconds=2&pid={}",
                sleeper.pid
            ))
        });
        std::thread::sleep(std::time::Duration::from_millis(800));
        let during = offcpu_links();
        let (status, body) = capture.join().expect("the capture thread");
        (status, body, during)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(during, 1, "links during the capture");
    assert_eq!(offcpu_links(), 0, "still attached after the capture");

    let (status, body) = daemon.get(&format!("/stacks?seconds=1&pid={}", sleeper.pid));
    assert_eq!(status, 200, "{body}");
    let samples: u64 = parse_offcpu(&body).iter().map(|(_, c)| c).sum();
    // One second at 99 Hz is at most 99 samples per CPU; the sleeper is
    // hardly ever on one.
    assert!(samples < 100, "{samples} samples in 1 s:\n{body}");
}

/// An off-CPU pprof is accepted by `go tool pprof -top`, which reads its
/// sample type as `offcpu` and names the blocking function; the off-CPU
/// SVG is well-formed and names it too.
#[test]
fn offcpu_pprof_and_svg_name_the_blocking_function() {
    let daemon = Daemon::start("sched");
    let sleeper = Running::build_and_start("sleeper", SLEEPER);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!(
            "http://{}/debug/pprof/profile?kind=offcpu&seconds=2&pid={}",
            daemon.addr, sleeper.pid
        ))
        .call()
        .expect("GET pprof");
    assert_eq!(response.status().as_u16(), 200);
    let pprof = response.body_mut().read_to_vec().expect("pprof body");
    let file =
        std::env::temp_dir().join(format!("hostscope-test-{}-off.pb.gz", std::process::id()));
    std::fs::write(&file, &pprof).expect("write the profile");
    let top = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&file)
        .output()
        .expect("go (golang-go) is installed by `cargo xtask setup`");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    println!("{text}");
    assert!(text.contains("Type: offcpu"), "{text}");
    assert!(text.contains("sleeper_leaf"), "{text}");

    let (status, svg) = daemon.get(&format!(
        "/flamegraph.svg?kind=offcpu&seconds=1&pid={}",
        sleeper.pid
    ));
    assert_eq!(status, 200);
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let document =
        roxmltree::Document::parse_with_options(&svg, options).expect("the SVG is well-formed XML");
    let texts: Vec<&str> = document.descendants().filter_map(|n| n.text()).collect();
    assert!(
        texts.iter().any(|t| t.contains("off-CPU profile")),
        "the SVG's title does not say off-CPU"
    );
    assert!(
        texts.iter().any(|t| t.contains("sleeper_leaf")),
        "the SVG does not name sleeper_leaf"
    );
}

/// `hostscope profile --kind offcpu` works without a daemon.
#[test]
fn terminal_offcpu_profile_writes_folded_stacks() {
    let sleeper = Running::build_and_start("sleeper", SLEEPER);
    let output = Command::new(hostscope_bin())
        .args(["profile", "--kind", "offcpu", "--seconds", "2"])
        .args(["--min-block-us", "500", "--format", "folded", "--pid"])
        .arg(sleeper.pid.to_string())
        .output()
        .expect("run hostscope profile");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stacks = parse_offcpu(&text);
    let under_leaf: u64 = stacks
        .iter()
        .filter(|(frames, _)| in_sleeper_leaf(frames))
        .map(|(_, us)| us)
        .sum();
    println!("{under_leaf} us under sleeper_leaf");
    // Most of 2 s, however busy the machine.
    assert!(under_leaf >= 1_000_000, "{text}");
}
