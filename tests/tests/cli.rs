//! Bad input gets one clear line and the documented exit code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{net::TcpListener, process::Command};

use hostscope_tests::{
    daemon::{Daemon, Launch, free_local_addr},
    hostscope_bin, require_root,
};

/// Runs hostscope with `args`; returns (exit code, stderr).
fn hostscope(args: &[&str]) -> (i32, String) {
    let output = Command::new(hostscope_bin())
        .args(args)
        .output()
        .expect("run hostscope");
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_usage_error(args: &[&str], mentions: &str) {
    let (code, stderr) = hostscope(args);
    assert_eq!(code, 2, "{args:?} exited {code}: {stderr}");
    assert!(
        stderr.contains(mentions),
        "{args:?}: `{mentions}` not in: {stderr}"
    );
}

#[test]
fn unknown_collector_is_a_usage_error() {
    assert_usage_error(
        &["serve", "--collectors", "sched,disk"],
        "invalid value 'disk'",
    );
    assert_usage_error(&["hist", "gpu"], "invalid value 'gpu'");
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    assert_usage_error(
        &["serve", "--listen", "localhost"],
        "invalid value 'localhost'",
    );
    assert_usage_error(&["serve", "--listen", "127.0.0.1:99999"], "invalid value");
}

/// A bad `--web.listen-address` is a usage error in one line that names
/// the flag and the forms it takes (the forms are unit-tested in cli.rs).
#[test]
fn bad_web_listen_address_says_what_form_is_expected() {
    for bad in [
        "9661",
        ":http",
        "::1:9661",
        "[::1]",
        "no-such-host.invalid:9661",
    ] {
        let (code, stderr) = hostscope(&["serve", "--web.listen-address", bad]);
        assert_eq!(code, 2, "{bad}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{bad}: {stderr}");
        assert!(
            errors[0].contains("--web.listen-address")
                && errors[0].contains("expected :PORT, HOST:PORT, IPv4:PORT or [IPv6]:PORT"),
            "{bad}: {stderr}"
        );
    }
}

/// A sched-only daemon started with `--web.listen-address HOST:PORT` for a
/// port that was free; it answers at 127.0.0.1:PORT.
fn serve_on(host: &str) -> Daemon {
    let addr = free_local_addr();
    let listen = format!("{host}:{}", addr.port());
    Launch::new("sched")
        .listening(&["--web.listen-address", &listen], addr)
        .spawn()
}

/// `:PORT` listens on every address, IPv4 included, as Go exporters do.
#[test]
fn listen_on_every_address_with_colon_port() {
    let daemon = serve_on("");
    let port = daemon.addr.port();
    let exposition = daemon.scrape();
    assert_eq!(
        exposition.value("hostscope_collector_up", &[("collector", "sched")]),
        Some(1.0)
    );
    // IPv6 too, where the host has it (the test machines do).
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    std::net::TcpStream::connect(v6).expect("connect over IPv6 loopback");
    assert!(
        daemon.log().contains(&format!("listen=[::]:{port}")),
        "{}",
        daemon.log()
    );
}

/// A hostname is resolved; `localhost` listens on 127.0.0.1 alone. The
/// variable HOSTSCOPE_LISTEN still works (the old flag, `--listen`, is the
/// one the harness uses).
#[test]
fn listen_on_a_hostname_and_from_the_environment() {
    let daemon = serve_on("localhost");
    let addr = daemon.addr;
    assert_eq!(daemon.get("/healthz").0, 200);
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()));
    assert!(std::net::TcpStream::connect(v6).is_err(), "not on ::1");
    drop(daemon);
    let daemon = Launch::new("sched")
        .listening(&[], addr)
        .configure(|command| {
            command.env("HOSTSCOPE_LISTEN", addr.to_string());
        })
        .spawn();
    assert_eq!(daemon.get("/healthz").0, 200);
}

/// `--web.telemetry-path` moves the metrics, and the index says where.
#[test]
fn metrics_at_the_telemetry_path() {
    let daemon = Daemon::spawn("sched", &["--web.telemetry-path", "/custom"]);
    let (status, body) = daemon.get("/custom");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE hostscope_build_info gauge"), "{body}");
    assert_eq!(daemon.get("/metrics").0, 404);
    let (status, index) = daemon.get("/");
    assert_eq!(status, 200);
    assert!(index.contains("\n/custom "), "{index}");
    assert!(!index.contains("/metrics"), "{index}");
    assert!(daemon.log().contains("serving /custom"), "{}", daemon.log());
}

#[test]
fn bad_telemetry_path_is_a_usage_error() {
    for (path, mentions) in [
        ("metrics", "does not start with /"),
        ("/healthz", "is taken"),
        ("/", "is taken"),
        ("/debug/pprof/profile", "is taken"),
        ("/{param}", "not a path of letters"),
    ] {
        assert_usage_error(&["serve", "--web.telemetry-path", path], mentions);
    }
    let output = Command::new(hostscope_bin())
        .arg("serve")
        .env("HOSTSCOPE_WEB_TELEMETRY_PATH", "/stacks")
        .output()
        .expect("run hostscope");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--web.telemetry-path"));
}

#[test]
fn environment_variables_are_read_and_checked() {
    let output = Command::new(hostscope_bin())
        .arg("serve")
        .env("HOSTSCOPE_COLLECTORS", "sched,nope")
        .output()
        .expect("run hostscope");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'nope'"));
}

#[test]
fn port_in_use_is_a_usage_error_with_one_line() {
    require_root();
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let (code, stderr) = hostscope(&["serve", "--listen", &addr, "--collectors", "sched"]);
    assert_eq!(code, 2, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(errors[0].contains("--listen"), "says what to do: {stderr}");
}

/// A connection limit, profile queue or block start map size that is not a
/// number in range is a usage error in one line naming the flag, from the
/// command line or the environment.
#[test]
fn bad_connection_limit_and_queue_are_usage_errors() {
    for (args, env, flag) in [
        (
            &["--web.max-connections", "0"][..],
            None,
            "--web.max-connections",
        ),
        (
            &["--web.max-connections", "lots"],
            None,
            "--web.max-connections",
        ),
        (&["--profile-max-queue=-1"], None, "--profile-max-queue"),
        (&["--block-max-inflight", "0"], None, "--block-max-inflight"),
        (&["--cgroup-max", "0"], None, "--cgroup-max"),
        (&[], Some(("HOSTSCOPE_CGROUP_MAX", "lots")), "--cgroup-max"),
        (
            &[],
            Some(("HOSTSCOPE_BLOCK_MAX_INFLIGHT", "99999999999")),
            "--block-max-inflight",
        ),
        (
            &[],
            Some(("HOSTSCOPE_WEB_MAX_CONNECTIONS", "0")),
            "--web.max-connections",
        ),
        (
            &[],
            Some(("HOSTSCOPE_PROFILE_MAX_QUEUE", "many")),
            "--profile-max-queue",
        ),
    ] {
        let mut command = Command::new(hostscope_bin());
        command.arg("serve").args(args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().expect("run hostscope");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?} {env:?}: {stderr}");
        assert!(
            errors[0].contains(flag) && errors[0].contains(" from "),
            "says which flag and what it takes: {stderr}"
        );
    }
}

#[test]
fn bad_cgroup_flags_are_usage_errors() {
    assert_usage_error(
        &["serve", "--cgroup-match", "(unclosed"],
        "is not a regular expression",
    );
    assert_usage_error(
        &["hist", "sched", "--cgroup-match", "a{99999}"],
        "--cgroup-match",
    );
    assert_usage_error(&["serve", "--cgroup-buckets", "tiny"], "--cgroup-buckets");
    assert_usage_error(&["hist", "block", "--cgroup-max", "65537"], "--cgroup-max");
}

#[test]
fn bad_interval_and_log_level_are_usage_errors() {
    assert_usage_error(
        &["hist", "sched", "--interval", "0"],
        "positive number of seconds",
    );
    assert_usage_error(&["hist", "sched", "--interval", "soon"], "not a number");
    assert_usage_error(
        &["--log-level", "loud=[", "hist", "sched"],
        "invalid --log-level",
    );
}

/// Runs hostscope with `args` as nobody, without capabilities.
fn hostscope_as_nobody(args: &[&str]) -> std::process::Output {
    require_root();
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(hostscope_bin())
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs hostscope as nobody")
}

/// Without CAP_BPF/CAP_PERFMON (here: as nobody, no capabilities) hostscope
/// says in one line which capability is missing and how to grant it.
#[test]
fn missing_capability_is_named_in_one_line() {
    let output = hostscope_as_nobody(&["hist", "sched"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("missing capability CAP_BPF, CAP_PERFMON"),
        "{stderr}"
    );
    assert!(stderr.contains("setcap"), "says what to do: {stderr}");
}

#[test]
fn healthz_and_index_answer() {
    let daemon = Daemon::start("sched");
    assert_eq!(daemon.get("/healthz"), (200, "ok\n".to_owned()));
    let (status, index) = daemon.get("/");
    assert_eq!(status, 200);
    assert!(index.contains("/metrics"));
    assert_eq!(daemon.get("/nope").0, 404);
    // The harness's client asks for gzip, as Prometheus does; a client that
    // does not gets plain text.
    let mut stream = std::net::TcpStream::connect(daemon.addr).expect("connect");
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.0\r\n\r\n").expect("send");
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut stream, &mut plain).expect("read");
    assert!(
        !plain.to_ascii_lowercase().contains("content-encoding"),
        "{plain}"
    );
    assert!(
        plain.contains("# TYPE hostscope_build_info gauge"),
        "{plain}"
    );
    let exposition = daemon.scrape();
    assert_eq!(
        exposition.value(
            "hostscope_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

/// A collector that cannot start is reported down, in the metric and in one
/// log line saying what is wrong, while the others serve. The fault is
/// real: every collector reads kernel fields at offsets found in kernel
/// BTF, and here the daemon is given this kernel's BTF with one field
/// renamed in its string table (same length, so the file stays valid BTF).
/// `tcp_sock.srtt_us` only the TCP programs read; `sched_info.last_queued`
/// only the scheduler's, whose line names the kernel options it needs.
#[test]
fn a_collector_whose_kernel_field_is_missing_is_down_and_the_rest_serve() {
    let cases = [
        ("srtt_us", "srtt_xx", "tcp", "tcp_sock.srtt_us"),
        ("last_queued", "last_queuex", "sched", "CONFIG_SCHED_INFO"),
    ];
    for (field, renamed, down, said) in cases {
        let edited = btf_with_renamed_field(field, renamed);
        let daemon = Daemon::spawn(
            "sched,block,tcp",
            &["--kernel-btf", edited.to_str().expect("UTF-8 path")],
        );
        let exposition = daemon.scrape();
        let _ = std::fs::remove_file(&edited);
        let log = daemon.log();
        for collector in ["sched", "block", "tcp"] {
            let expected = if collector == down { 0.0 } else { 1.0 };
            assert_eq!(
                exposition.value("hostscope_collector_up", &[("collector", collector)]),
                Some(expected),
                "{collector} with {field} renamed; log:\n{log}"
            );
        }
        let lines = down_lines(&log, down);
        assert_eq!(lines.len(), 1, "one line for {down}:\n{log}");
        assert!(lines[0].contains(said), "says {said}: {}", lines[0]);
    }
}

/// A copy of this kernel's BTF with the member name `field` spelled
/// `renamed` (of the same length) in its string table.
fn btf_with_renamed_field(field: &str, renamed: &str) -> std::path::PathBuf {
    assert_eq!(field.len(), renamed.len(), "a rename keeps the length");
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel's BTF");
    let name = format!("\0{field}\0").into_bytes();
    let at = btf
        .windows(name.len())
        .position(|window| window == name)
        .unwrap_or_else(|| panic!("{field} in the BTF's strings"));
    btf[at + 1..at + 1 + field.len()].copy_from_slice(renamed.as_bytes());
    let edited = std::env::temp_dir().join(format!(
        "hostscope-btf-without-{field}-{}",
        std::process::id()
    ));
    std::fs::write(&edited, &btf).expect("write the edited BTF");
    edited
}

/// Kernel BTF that is not BTF at all downs every collector (each reads
/// kernel fields), each with one line that says which flag to fix, and
/// the daemon still serves its own metrics.
#[test]
fn kernel_btf_that_is_not_btf_downs_each_collector_with_one_line() {
    let not_btf = std::env::temp_dir().join(format!("hostscope-not-btf-{}", std::process::id()));
    std::fs::write(&not_btf, b"this is not BTF").expect("write the decoy");
    let daemon = Daemon::spawn(
        "sched,block,tcp",
        &["--kernel-btf", not_btf.to_str().expect("UTF-8 path")],
    );
    let exposition = daemon.scrape();
    let _ = std::fs::remove_file(&not_btf);
    assert!(
        exposition
            .value(
                "hostscope_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            )
            .is_some(),
        "the daemon serves"
    );
    let log = daemon.log();
    for collector in ["sched", "block", "tcp"] {
        assert_eq!(
            exposition.value("hostscope_collector_up", &[("collector", collector)]),
            Some(0.0)
        );
        let lines = down_lines(&log, collector);
        assert_eq!(lines.len(), 1, "one line for {collector}:\n{log}");
        assert!(
            lines[0].contains("--kernel-btf"),
            "says what to do: {}",
            lines[0]
        );
    }
}

/// The daemon's "collector down" lines for `collector`.
fn down_lines<'a>(log: &'a str, collector: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("collector down") && l.contains(&format!("collector={collector}")))
        .collect()
}

/// `--log-format json`: every line the daemon logs, from start to
/// shutdown, is a JSON object with a timestamp, a level and a message.
#[test]
fn json_log_lines_parse() {
    let mut daemon = Daemon::spawn("sched", &["--log-format", "json", "--log-level", "debug"]);
    daemon.scrape();
    assert!(daemon.stop().success(), "{}", daemon.log());
    let log = daemon.log();
    assert!(log.lines().count() >= 4, "{log}");
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        let level = event["level"].as_str().unwrap_or_default();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "{line}"
        );
        let message = event["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        // The `log` crate's events (aya's, at debug) under their own target.
        assert_ne!(event["target"], "log", "{line}");
    }
    let serving = log
        .lines()
        .find(|line| line.contains("\"serving /metrics\""))
        .unwrap_or_else(|| panic!("{log}"));
    let serving: serde_json::Value = serde_json::from_str(serving).unwrap();
    assert_eq!(serving["listen"], daemon.addr.to_string().as_str());
    assert_eq!(serving["max_connections"], 512);
}

/// The `key=value` pairs of a logfmt line, values unquoted; panics if the
/// line is not logfmt.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("no `=` in {rest:?} of {line}"));
        assert!(
            !key.is_empty() && !key.contains([' ', '"']),
            "key {key:?} in {line}"
        );
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i + 1,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => panic!("a lone backslash in {line}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => panic!("an unclosed quote in {line}"),
                    }
                };
                (value, &quoted[end..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                assert!(!after[..end].contains('"'), "a stray quote in {line}");
                (after[..end].to_owned(), &after[end..])
            }
        };
        pairs.push((key.to_owned(), value));
        rest = after.strip_prefix(' ').unwrap_or(after);
        assert!(
            after.is_empty() || after.starts_with(' '),
            "no space after {key} in {line}"
        );
    }
    pairs
}

/// `--log-format logfmt` (here from HOSTSCOPE_LOG_FORMAT): every line is
/// `ts=... level=... target=... msg=... key=value...`, quoted where a
/// value holds spaces.
#[test]
fn logfmt_log_lines_parse() {
    let mut daemon = Launch::new("sched")
        .args(&["--log-level", "debug"])
        .configure(|command| {
            command.env("HOSTSCOPE_LOG_FORMAT", "logfmt");
        })
        .spawn();
    daemon.scrape();
    assert!(daemon.stop().success(), "{}", daemon.log());
    let log = daemon.log();
    assert!(log.lines().count() >= 4, "{log}");
    for line in log.lines() {
        let pairs = logfmt(line);
        let keys: Vec<&str> = pairs.iter().take(4).map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ts", "level", "target", "msg"], "{line}");
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&pairs[1].1.as_str()),
            "{line}"
        );
        // The `log` crate's events (aya's, at debug) under their own target,
        // without its file and line.
        assert_ne!(pairs[2].1, "log", "{line}");
        assert!(!pairs.iter().any(|(k, _)| k.starts_with("log.")), "{line}");
    }
    assert!(log.contains(" target=aya"), "aya's debug lines: {log}");
    let serving = log
        .lines()
        .map(logfmt)
        .find(|pairs| pairs[3].1 == "serving /metrics")
        .unwrap_or_else(|| panic!("{log}"));
    let listen = daemon.addr.to_string();
    assert!(
        serving.contains(&("listen".to_owned(), listen)),
        "{serving:?}"
    );
    assert!(
        serving.contains(&("max_connections".to_owned(), "512".to_owned())),
        "{serving:?}"
    );
}

/// In JSON and logfmt, the line saying why hostscope stops is a log line
/// too, so that the whole log parses.
#[test]
fn a_fatal_error_is_a_log_line_in_json_and_logfmt() {
    require_root();
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    for format in ["json", "logfmt"] {
        let (code, stderr) = hostscope(&[
            "--log-format",
            format,
            "serve",
            "--listen",
            &addr,
            "--collectors",
            "sched",
        ]);
        assert_eq!(code, 2, "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        let (level, message) = match format {
            "json" => {
                let event: serde_json::Value =
                    serde_json::from_str(last).unwrap_or_else(|err| panic!("{err}: {stderr}"));
                (
                    event["level"].as_str().unwrap_or_default().to_owned(),
                    event["message"].as_str().unwrap_or_default().to_owned(),
                )
            }
            _ => {
                let pairs = logfmt(last);
                (pairs[1].1.clone(), pairs[3].1.clone())
            }
        };
        assert!(level.eq_ignore_ascii_case("error"), "{stderr}");
        assert!(
            message.starts_with(&format!("cannot listen on {addr}")),
            "{stderr}"
        );
        for line in stderr.lines() {
            match format {
                "json" => assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "{line}"
                ),
                _ => {
                    logfmt(line);
                }
            }
        }
    }
}

/// `completions SHELL` and `man [COMMAND]` print to stdout and need no
/// privileges: here they run as nobody, without capabilities, where
/// anything that loads probes fails (see above).
#[test]
fn completions_and_man_need_no_privileges() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = hostscope_as_nobody(&["completions", shell]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{shell}: {stderr}");
        assert!(stderr.is_empty(), "{shell}: {stderr}");
        assert!(stdout.contains("serve"), "{shell}: {stdout}");
    }
    let bash = hostscope_as_nobody(&["completions", "bash"]).stdout;
    let mut check = Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("bash");
    std::io::Write::write_all(check.stdin.as_mut().expect("stdin"), &bash).expect("write");
    assert!(
        check.wait().expect("bash -n").success(),
        "the bash script parses"
    );
    assert_usage_error(&["completions", "tcsh"], "invalid value 'tcsh'");

    let output = hostscope_as_nobody(&["man"]);
    let page = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{page}");
    assert!(page.starts_with(".TH hostscope 1 "), "{page}");
    assert!(page.contains("hostscope\\-serve(1)"), "{page}");
    let output = hostscope_as_nobody(&["man", "serve"]);
    let page = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{page}");
    assert!(page.starts_with(".TH hostscope-serve 1 "), "{page}");
    assert!(page.contains("web.listen\\-address"), "{page}");
    assert_usage_error(&["man", "nope"], "invalid value 'nope'");
}
