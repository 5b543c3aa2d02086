//! The files in deploy/ against the real thing: promtool checks and
//! unit-tests the rules; and a real Prometheus, scraping the real daemon
//! while a workload fills every histogram, answers every query of the
//! Grafana dashboard and every rule with data.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use hostscope_tests::{
    blockdev::LoopDevice,
    daemon::Daemon,
    exposition::Exposition,
    netns::{NetnsPair, write_for},
    prometheus::{Prometheus, deploy, repo_root},
    workload::{Workload, other_cpu},
};
use serde_json::Value;

/// What the dashboard's `$__rate_interval` and `$__interval` stand for in
/// these queries: Grafana makes the first at least four scrape intervals
/// (here 1 s), and the test leaves room for a slow scrape or two.
const RATE_INTERVAL: &str = "30s";
const INTERVAL: &str = "5s";

/// How long the queries may take to have data once the workload is done.
const DATA_DEADLINE: Duration = Duration::from_secs(60);

const HISTOGRAMS: [&str; 4] = [
    "hostscope_runqueue_latency_seconds",
    "hostscope_block_io_latency_seconds",
    "hostscope_tcp_rtt_seconds",
    "hostscope_tcp_connect_latency_seconds",
];

/// Runs promtool with `args` in the repository root and fails with its
/// output unless it succeeds.
fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("promtool (Debian package prometheus; cargo xtask test installs it)");
    assert!(
        output.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Both rule files are valid, the example config loads them, and the
/// rules' unit tests (every alert firing and not, the percentiles'
/// values) pass.
#[test]
fn promtool_checks_and_tests_the_rules() {
    promtool(&[
        "check",
        "rules",
        "deploy/prometheus/recording-rules.yml",
        "deploy/prometheus/alert-rules.yml",
    ]);
    promtool(&["test", "rules", "deploy/prometheus/rules-test.yml"]);
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/hostscope.json")).expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// The panels that draw something (not rows).
fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|panel| panel["type"] != "row")
        .collect()
}

/// The dashboard's template variables.
fn variables(dashboard: &Value) -> &Vec<Value> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
}

/// What Grafana would import: a Prometheus data source variable that every
/// panel and query variable uses, the host, disk and cgroup variables,
/// panels that do not overlap, and a heatmap of every histogram.
#[test]
fn dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().expect("schemaVersion") >= 36,
        "a dashboard for Grafana 10 and 11"
    );
    assert!(dashboard["id"].is_null(), "no id: Grafana assigns one");
    assert_eq!(dashboard["uid"], "hostscope");

    let variables = variables(&dashboard);
    let source = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(source["type"], "datasource");
    assert_eq!(source["query"], "prometheus");
    let this_source = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for name in ["job", "instance", "device", "op", "cgroup"] {
        let variable = variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(variable["type"], "query", "{name}");
        assert_eq!(variable["datasource"], this_source, "{name}");
        let definition = variable["definition"].as_str().expect("definition");
        assert!(
            definition.starts_with("label_values("),
            "{name}: {definition}"
        );
        assert_eq!(variable["query"]["query"], definition, "{name}");
        assert_eq!(variable["includeAll"], true, "{name}");
    }

    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
    }
    let panels = panels(&dashboard);
    let mut placed: Vec<(&str, [u64; 4])> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title");
        let at = |key: &str| panel["gridPos"][key].as_u64().expect("gridPos");
        let rect = [at("x"), at("y"), at("w"), at("h")];
        assert!(
            rect[0] + rect[2] <= 24,
            "{title} is wider than the dashboard"
        );
        for (other, o) in &placed {
            let apart = rect[0] + rect[2] <= o[0]
                || o[0] + o[2] <= rect[0]
                || rect[1] + rect[3] <= o[1]
                || o[1] + o[3] <= rect[1];
            assert!(apart, "{title} overlaps {other}");
        }
        placed.push((title, rect));
    }
    for panel in &panels {
        let title = panel["title"].as_str().expect("a title");
        assert_eq!(panel["datasource"], this_source, "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"], this_source, "{title}");
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}: refId used twice"
            );
            let expr = target["expr"].as_str().expect("expr");
            if panel["type"] == "heatmap" {
                assert_eq!(target["format"], "heatmap", "{title}");
                assert_eq!(target["legendFormat"], "{{le}}", "{title}");
                assert!(
                    expr.starts_with("sum by (le) (rate(") && expr.contains("[$__rate_interval]"),
                    "{title}: {expr}"
                );
            }
        }
    }
    for histogram in HISTOGRAMS {
        let bucket = format!("{histogram}_bucket{{");
        assert!(
            panels.iter().any(|panel| panel["type"] == "heatmap"
                && panel["targets"][0]["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains(&bucket))),
            "no heatmap of {histogram}"
        );
    }
}

/// `expr` with the dashboard's variables replaced as in a query Grafana
/// sends with "All" selected: `$__rate_interval` and `$__interval` by
/// durations, template variables (all used with `=~`) by `.*`. Fails on a
/// variable the dashboard does not define.
fn substitute(expr: &str, variables: &[String]) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').expect("a closing brace");
                (&braced[..end], end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        out.push_str(match name {
            "__rate_interval" => RATE_INTERVAL,
            "__interval" => INTERVAL,
            _ if variables.iter().any(|v| v == name) => ".*",
            _ => panic!("${name} in {expr} is no variable of the dashboard"),
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The left-hand side of an alert's expression, its threshold comparison
/// (the last comparison outside any brackets or strings, against a number)
/// removed: the series the alert compares, which must exist even when no
/// alert fires.
fn without_threshold(expr: &str) -> &str {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut last) = (0i32, None, None);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == b'\\' && q != b'`' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'>' | b'<' | b'=' | b'!' if depth == 0 => {
                    let two = bytes.get(i + 1) == Some(&b'=');
                    if c != b'=' && c != b'!' || two {
                        last = Some((i, i + if two { 2 } else { 1 }));
                    }
                    if two {
                        i += 1;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    let (start, end) = last.unwrap_or_else(|| panic!("no threshold comparison in {expr}"));
    let threshold = expr[end..].trim();
    assert!(
        threshold.parse::<f64>().is_ok(),
        "{expr} does not end in a comparison with a number"
    );
    expr[..start].trim()
}

#[test]
fn thresholds_are_found() {
    assert_eq!(without_threshold("up{job=\"x\"} == 0"), "up{job=\"x\"}");
    assert_eq!(
        without_threshold("a:b:c{op=~\"read|write\"} > 0.1"),
        "a:b:c{op=~\"read|write\"}"
    );
    assert_eq!(
        without_threshold("(label_replace(x, \"a\", \">\", \"\", \"\") or y offset 15m) >= 2"),
        "(label_replace(x, \"a\", \">\", \"\", \"\") or y offset 15m)"
    );
}

/// The metric names in `expr` that hostscope serves (`hostscope_*`,
/// `process_*`), leaving out recorded series (`level:metric:ops`).
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut start = None;
    for (i, c) in expr.char_indices().chain([(expr.len(), ' ')]) {
        match (start, is_name(c)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                let word = &expr[s..i];
                if !word.contains(':')
                    && (word.starts_with("hostscope_") || word.starts_with("process_"))
                {
                    names.push(word);
                }
                start = None;
            }
            _ => {}
        }
    }
    names
}

/// The sample names the exposition declares: each `# TYPE` family, with
/// `_bucket`, `_sum` and `_count` for histograms.
fn declared_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Context switches, block I/O measured and dropped, loopback TCP connects
/// (and refused ones), and retransmissions. Returns the loop device, which
/// must stay attached for its series to stay in /metrics.
fn workload() -> LoopDevice {
    // Three threads spinning on one CPU queue behind each other.
    drop(
        Workload::new()
            .spinners(3, other_cpu(), Duration::from_millis(600))
            .run(),
    );

    // Direct I/O one request at a time is measured; fio's 128 at once
    // overflow the daemon's 32-request map, and some are dropped.
    let device = LoopDevice::create(64);
    device.direct_io(100, true);
    device.direct_io(100, false);
    device.fio(64, 2, 2);

    // Loopback connects with a little echo each, and refused ones.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
    let addr = listener.local_addr().expect("address");
    const CONNECTS: usize = 300;
    let echo = std::thread::spawn(move || {
        for _ in 0..CONNECTS {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buffer = [0u8; 16];
            stream.read_exact(&mut buffer).expect("read");
            stream.write_all(&buffer).expect("echo");
        }
    });
    for i in 0..CONNECTS {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let sent = [i as u8; 16];
        stream.write_all(&sent).expect("send");
        let mut echoed = [0u8; 16];
        stream.read_exact(&mut echoed).expect("echo");
        assert_eq!(echoed, sent);
    }
    echo.join().expect("echo thread");
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    for _ in 0..5 {
        assert!(TcpStream::connect(closed).is_err(), "{closed} is closed");
    }

    // Segments lost for a while between two namespaces are retransmitted.
    let pair = NetnsPair::create();
    let (mut client, mut server) = pair.connect_a_to_b(7002);
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while matches!(server.read(&mut buffer), Ok(n) if n > 0) {}
    });
    client.set_nodelay(true).expect("nodelay");
    write_for(&mut client, Duration::from_millis(100));
    pair.set_b_reachable(false);
    write_for(&mut client, Duration::from_millis(900));
    pair.set_b_reachable(true);
    write_for(&mut client, Duration::from_millis(1000));
    drop(client);
    reader.join().expect("reader");
    device
}

/// One query that must return at least one series.
struct Check {
    what: String,
    expr: String,
    done: bool,
}

/// A real Prometheus scrapes the daemon (every collector, per cgroup, with
/// BPF statistics) every second and evaluates both rule files every second,
/// while a workload gives every histogram and counter data. Then every
/// query the dashboard makes (its panels' and its variables', with "All"
/// selected), every recording rule's expression and recorded series, and
/// every alert's expression without its threshold (the series it compares)
/// return at least one series; every metric name they use is one the
/// daemon declares; every rule evaluates without error; and the drops
/// alert fires for the block requests the workload made the daemon drop.
#[test]
fn every_query_has_data() {
    let started = Instant::now();
    let daemon = Daemon::start_with(
        "sched,block,tcp",
        &["--by-cgroup", "--bpf-stats", "--block-max-inflight", "32"],
    );
    let prometheus = Prometheus::start(daemon.addr);
    let device = workload();
    let worked = started.elapsed();

    // The workload reached every family the queries use.
    let (status, text) = daemon.get("/metrics");
    assert_eq!(status, 200, "GET /metrics");
    let exposition = Exposition::parse(&text);
    let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
        exposition.matching(name, labels).map(|s| s.value).sum()
    };
    for histogram in HISTOGRAMS {
        let count = total(&format!("{histogram}_count"), &[]);
        assert!(count > 0.0, "{histogram} has no observations");
    }
    let dropped = total(
        "hostscope_block_io_dropped_total",
        &[("device", device.name.as_str())],
    );
    assert!(
        dropped > 0.0,
        "fio made the daemon drop no request on {}",
        device.name
    );
    assert!(
        total("hostscope_tcp_retransmits_total", &[]) > 0.0,
        "no retransmission counted"
    );
    let declared = declared_names(&text);

    // Every query: the dashboard's panels and variables...
    let dashboard = dashboard();
    let names: Vec<String> = variables(&dashboard)
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect();
    let mut checks = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().expect("targets") {
            checks.push(Check {
                what: format!("panel {:?} query {}", panel["title"], target["refId"]),
                expr: substitute(target["expr"].as_str().expect("expr"), &names),
                done: false,
            });
        }
    }
    let panel_queries = checks.len();
    for variable in variables(&dashboard)
        .iter()
        .filter(|v| v["type"] == "query")
    {
        // label_values(SELECTOR, LABEL) lists LABEL's values among the series
        // SELECTOR selects.
        let definition = variable["definition"].as_str().expect("definition");
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .expect("label_values(selector, label)");
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        checks.push(Check {
            what: format!("variable {}", variable["name"]),
            expr: substitute(&format!("count by ({}) ({selector})", label.trim()), &names),
            done: false,
        });
    }
    let variable_queries = checks.len() - panel_queries;

    // ...and the rules, as Prometheus loaded them from the files.
    let files_rules: usize = ["recording-rules.yml", "alert-rules.yml"]
        .iter()
        .map(|file| {
            std::fs::read_to_string(deploy(&format!("prometheus/{file}")))
                .expect("rule file")
                .lines()
                .filter(|l| {
                    let l = l.trim_start();
                    l.starts_with("- record:") || l.starts_with("- alert:")
                })
                .count()
        })
        .sum();
    let groups = prometheus.api("/api/v1/rules", &[]);
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect();
    assert_eq!(
        rules.len(),
        files_rules,
        "Prometheus loaded {} rules of the files' {files_rules}",
        rules.len()
    );
    for rule in &rules {
        let name = rule["name"].as_str().expect("name");
        let query = rule["query"].as_str().expect("query");
        if rule["type"] == "recording" {
            checks.push(Check {
                what: format!("recording rule {name}"),
                expr: query.to_owned(),
                done: false,
            });
            checks.push(Check {
                what: format!("recorded series {name}"),
                expr: name.to_owned(),
                done: false,
            });
        } else {
            checks.push(Check {
                what: format!("alert {name} without its threshold"),
                expr: without_threshold(query).to_owned(),
                done: false,
            });
        }
    }
    let rule_queries = checks.len() - panel_queries - variable_queries;
    for check in &checks {
        for name in metric_names(&check.expr) {
            assert!(
                declared.contains(name),
                "{}: the daemon serves no {name}: {}",
                check.what,
                check.expr
            );
        }
    }

    // Poll until each has data; a query Prometheus rejects fails at once.
    let polling = Instant::now();
    let deadline = polling + DATA_DEADLINE;
    let loop_device = device.name.clone();
    let mut rules_ok = false;
    let mut drops_alert = false;
    loop {
        for check in checks.iter_mut().filter(|c| !c.done) {
            check.done = !prometheus.query(&check.expr).is_empty();
        }
        if !rules_ok {
            let groups = prometheus.api("/api/v1/rules", &[]);
            let mut unevaluated = 0;
            for rule in groups["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .flat_map(|g| g["rules"].as_array().expect("rules"))
            {
                assert_ne!(
                    rule["health"], "err",
                    "rule {} fails: {}",
                    rule["name"], rule["lastError"]
                );
                if rule["health"] != "ok" {
                    unevaluated += 1;
                }
            }
            rules_ok = unevaluated == 0;
        }
        if !drops_alert {
            let alerts = prometheus.api("/api/v1/alerts", &[]);
            for alert in alerts["alerts"].as_array().expect("alerts") {
                // The latency alerts may be pending on a busy machine.
                let name = &alert["labels"]["alertname"];
                assert!(
                    name != "HostscopeDown" && name != "HostscopeCollectorDown",
                    "the daemon is up, and all its collectors: {alert}"
                );
                drops_alert |= alert["labels"]["counter"] == "hostscope_block_io_dropped_total"
                    && alert["labels"]["device"] == loop_device.as_str()
                    && alert["state"] == "firing";
            }
        }
        let missing: Vec<&Check> = checks.iter().filter(|c| !c.done).collect();
        if missing.is_empty() && rules_ok && drops_alert {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = missing
                .iter()
                .map(|c| format!("{}: {}", c.what, c.expr))
                .collect();
            let targets = prometheus.api("/api/v1/targets", &[]);
            panic!(
                "after {} s: no data for\n{}\nrules evaluated: {rules_ok}; drops alert firing for \
                 {loop_device}: {drop_alert}\ntargets: {targets}\nPrometheus log:\n{}",
                DATA_DEADLINE.as_secs(),
                missing.join("\n"),
                prometheus.log(),
                drop_alert = drops_alert,
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{} queries had data: {panel_queries} of the dashboard's panels, {variable_queries} of \
         its variables, {rule_queries} for the {} rules (expressions and recorded series); \
         workload {:.1} s, data {:.1} s after it, {:.1} s in all",
        checks.len(),
        rules.len(),
        worked.as_secs_f64(),
        polling.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Prometheus with native histograms on negotiates protobuf and stores
/// each histogram as one native series, and the native quantiles agree
/// within one bucket with those computed from the kernel's own counts
/// (the daemon's fine classic buckets, which are the kernel buckets).
#[test]
fn native_histograms_agree_with_the_kernel_counts() {
    let daemon = Daemon::start_with("sched", &["--classic-buckets", "fine"]);
    let prometheus = Prometheus::start_with(daemon.addr, &["--enable-feature=native-histograms"]);
    // Prometheus picks up its targets a few seconds after it is ready.
    let deadline = Instant::now() + DATA_DEADLINE;
    while prometheus.query("up == 1").is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the daemon: {}",
            prometheus.api("/api/v1/targets", &[])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _workload = Workload::new()
        .spinners(3, 0, Duration::from_secs(2))
        .ping_pong(other_cpu(), Duration::from_secs(2))
        .run();
    // Let Prometheus scrape what the workload left, then read both sides.
    std::thread::sleep(Duration::from_millis(2500));
    let kernel = daemon
        .scrape()
        .histogram("hostscope_runqueue_latency_seconds", &[])
        .expect("the run-queue histogram");
    let stored = prometheus.query("hostscope_runqueue_latency_seconds");
    assert_eq!(
        stored.len(),
        1,
        "{stored:?}; targets: {}",
        prometheus.api("/api/v1/targets", &[])
    );
    assert!(
        stored[0].get("histogram").is_some(),
        "Prometheus stored no native histogram: {stored:?}\n{}",
        prometheus.log()
    );
    let native_count: f64 = stored[0]["histogram"][1]["count"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("count");
    assert!(
        native_count >= 0.95 * kernel.count && native_count <= kernel.count,
        "native count {native_count}, kernel {}",
        kernel.count
    );
    // Which bucket (by its upper bound's exponent, 4 per power of two) a
    // latency falls in.
    let bucket = |seconds: f64| (4.0 * seconds.log2()).ceil();
    for q in [0.5, 0.99] {
        let result = prometheus.query(&format!(
            "histogram_quantile({q}, hostscope_runqueue_latency_seconds)"
        ));
        let native: f64 = result[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a quantile");
        let counted = classic_quantile(q, &kernel.buckets, kernel.count);
        println!(
            "p{}: native {native:.9} s, from the kernel counts {counted:.9} s",
            q * 100.0
        );
        assert!(
            (bucket(native) - bucket(counted)).abs() <= 1.0,
            "p{}: native {native} s, from the kernel counts {counted} s: more than a bucket apart",
            q * 100.0
        );
    }
}

/// The `q` quantile of cumulative classic buckets, as Prometheus computes
/// it (linear within the bucket where the rank falls).
fn classic_quantile(q: f64, buckets: &[(f64, f64)], count: f64) -> f64 {
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for &(le, cumulative) in buckets {
        if cumulative >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let within = (rank - lower.1) / (cumulative - lower.1).max(1.0);
            return lower.0 + (le - lower.0) * within;
        }
        lower = (le, cumulative);
    }
    lower.0
}
