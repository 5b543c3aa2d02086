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
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
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
