//! The results table, printed and written to BENCHMARKS.md.

use std::{fmt::Write as _, process::Command};

/// One line of the table.
pub struct Row {
    section: String,
    metric: String,
    value: String,
    peer: String,
    ratio: String,
    target: String,
    verdict: &'static str,
}

impl Row {
    /// Our figure against a peer's, with the ratio ours/peer; `limit` is the
    /// largest ratio that meets the target (NaN: no target).
    pub fn ratio(
        section: &str,
        metric: &str,
        ours: Option<f64>,
        peer_label: &str,
        peer: Option<f64>,
        target: &str,
        limit: f64,
    ) -> Row {
        let ratio = ours.zip(peer).map(|(o, p)| o / p);
        Row {
            section: section.into(),
            metric: metric.into(),
            value: ours.map_or("n/a".into(), |v| format!("{v:.0}")),
            peer: format!(
                "{peer_label}: {}",
                peer.map_or("n/a".into(), |v| format!("{v:.0}"))
            ),
            ratio: ratio.map_or("n/a".into(), |r| format!("{r:.2}x")),
            target: target.into(),
            verdict: verdict(ratio.map(|r| r <= limit), limit.is_nan()),
        }
    }

    /// Throughput with a tool attached against bare runs: median ratio, and
    /// the spread (min..max of the tool's runs over the bare median).
    pub fn slowdown(
        section: &str,
        metric: &str,
        with: &[f64],
        bare: &[f64],
        target: &str,
        limit: f64,
    ) -> Row {
        let (with_median, bare_median) = (median(with), median(bare));
        let ratio = with_median / bare_median;
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:.3}..{:.3}", lo / bare_median, hi / bare_median)
        };
        Row {
            section: section.into(),
            metric: metric.into(),
            value: format!("{with_median:.0} (runs {})", spread(with)),
            peer: format!("bare: {bare_median:.0} (runs {})", spread(bare)),
            ratio: format!("{ratio:.3}x"),
            target: target.into(),
            verdict: verdict(Some(ratio >= limit), limit.is_nan()),
        }
    }

    /// A figure of our own against a target.
    pub fn value(section: &str, metric: &str, value: f64, target: &str, met: bool) -> Row {
        Row {
            section: section.into(),
            metric: metric.into(),
            value: format!("{value:.3}"),
            peer: String::new(),
            ratio: String::new(),
            target: target.into(),
            verdict: verdict(Some(met), target.is_empty()),
        }
    }

    /// A section that could not be measured, and why.
    pub fn failed(section: &str, why: &str) -> Row {
        Row {
            section: section.into(),
            metric: format!("not measured: {}", why.replace('|', "/").replace('\n', " ")),
            value: "n/a".into(),
            peer: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: "not measured",
        }
    }
}

fn verdict(met: Option<bool>, no_target: bool) -> &'static str {
    match (no_target, met) {
        (true, _) => "",
        (false, Some(true)) => "met",
        (false, Some(false)) => "MISSED",
        (false, None) => "not measured",
    }
}

/// The median of `values` (not empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Every row, with a description of the machine.
pub struct Report {
    rows: Vec<Row>,
    machine: String,
    quick: bool,
}

impl Report {
    /// An empty report for this machine.
    pub fn new(quick: bool) -> anyhow::Result<Report> {
        Ok(Report {
            rows: Vec::new(),
            machine: machine(),
            quick,
        })
    }

    /// Adds a row.
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Benchmarks\n\n");
        out.push_str(
            "Written by `cargo xtask bench` (as root; it installs its peers from Debian's \
             packages). hostscope and its peers are measured in the same run on the same \
             machine. Per-event costs come from the kernel's own statistics \
             (`kernel.bpf_stats_enabled=1`, run_time_ns / run_cnt per program) with every tool \
             attached at once to the same events; ratios are hostscope / peer (lower is \
             better) or, for throughput, with / without (higher is better).\n\n",
        );
        let _ = writeln!(out, "Machine: {}\n", self.machine);
        if self.quick {
            out.push_str("**Quick run** (`--quick`): short windows, noisy figures.\n\n");
        }
        out.push_str("| section | metric | hostscope | peer | ratio | target | |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.section, r.metric, r.value, r.peer, r.ratio, r.target, r.verdict
            );
        }
        out.push_str(
            "\nReproduce: `cargo xtask bench` (about 12 minutes; `--quick` for a smoke run).\n",
        );
        out
    }
}

fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_owned();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: u64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    format!("{cpus} x {model}, {memory} RAM, Linux {kernel}")
}
