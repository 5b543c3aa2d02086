//! The results table, printed and written to BENCHMARKS.md.

use std::{fmt::Write as _, process::Command};

/// The goal a row's figure is held to. It renders its own text for the
/// table and decides the verdict, so that a threshold is written once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// No goal: the row informs.
    None,
    /// Ours over the peer's is at most this (`<= 0.5x`).
    RatioAtMost(f64),
    /// With the tool, throughput is more than this fraction of bare
    /// (`0.97`: `< 3% slower`).
    SlowerBy(f64),
    /// The figure is below `limit`, in `unit` (`< 300 ms`; the unit is
    /// written as given, so `"%"` or `" ms"`).
    Below {
        /// The bound, excluded.
        limit: f64,
        /// What follows the number in the text.
        unit: &'static str,
    },
    /// The figure is at most `limit`, in `unit` (`<= 100 MiB`).
    AtMost {
        /// The bound, included.
        limit: f64,
        /// What follows the number in the text.
        unit: &'static str,
    },
}

impl Target {
    /// Below `limit` `unit` (see [`Target::Below`]).
    pub const fn below(limit: f64, unit: &'static str) -> Target {
        Target::Below { limit, unit }
    }

    /// At most `limit` `unit` (see [`Target::AtMost`]).
    pub const fn at_most(limit: f64, unit: &'static str) -> Target {
        Target::AtMost { limit, unit }
    }

    /// The target column.
    pub fn text(self) -> String {
        match self {
            Target::None => String::new(),
            Target::RatioAtMost(limit) => format!("<= {limit:.1}x"),
            Target::SlowerBy(kept) => format!("< {:.0}% slower", (1.0 - kept) * 100.0),
            Target::Below { limit, unit } => format!("< {limit}{unit}"),
            Target::AtMost { limit, unit } => format!("<= {limit}{unit}"),
        }
    }

    /// Whether `figure` (the row's ratio for ratio and slowdown targets,
    /// its value otherwise) meets the target; `None` when there is no
    /// target, or no figure.
    pub fn met(self, figure: Option<f64>) -> Option<bool> {
        let figure = figure.filter(|f| !f.is_nan())?;
        match self {
            Target::None => None,
            Target::RatioAtMost(limit) | Target::AtMost { limit, .. } => Some(figure <= limit),
            Target::SlowerBy(kept) => Some(figure >= kept),
            Target::Below { limit, .. } => Some(figure < limit),
        }
    }

    /// The verdict column for `figure`.
    pub fn verdict(self, figure: Option<f64>) -> &'static str {
        match (self, self.met(figure)) {
            (Target::None, _) => "",
            (_, Some(true)) => "met",
            (_, Some(false)) => "MISSED",
            (_, None) => "not measured",
        }
    }
}

/// A peer's figure and its name in the table.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// Its name.
    pub label: &'a str,
    /// Its figure, if it was measured.
    pub value: Option<f64>,
}

impl<'a> Peer<'a> {
    /// `label`'s figure `value`.
    pub fn new(label: &'a str, value: Option<f64>) -> Peer<'a> {
        Peer { label, value }
    }

    /// The peer column: its name and its figure as `figure` writes it.
    fn shown(&self, figure: impl Fn(f64) -> String) -> String {
        format!(
            "{}: {}",
            self.label,
            self.value.map_or("n/a".into(), figure)
        )
    }
}

/// The ratio column.
fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or("n/a".into(), |r| format!("{r:.2}x"))
}

/// The smallest and the largest of `values`.
pub fn extremes(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

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
    /// Our figure against a peer's, with the ratio ours/peer, which
    /// `target` judges (or our figure, for a bound on it).
    pub fn ratio(
        section: &str,
        metric: &str,
        ours: Option<f64>,
        peer: Peer<'_>,
        target: Target,
    ) -> Row {
        let ratio = ours.zip(peer.value).map(|(o, p)| o / p);
        // A bound on the figure itself judges our figure, not the ratio.
        let judged = match target {
            Target::Below { .. } | Target::AtMost { .. } => ours,
            _ => ratio,
        };
        Row {
            section: section.into(),
            metric: metric.into(),
            value: ours.map_or("n/a".into(), |v| format!("{v:.0}")),
            peer: peer.shown(|v| format!("{v:.0}")),
            ratio: ratio_text(ratio),
            target: target.text(),
            verdict: target.verdict(judged),
        }
    }

    /// Throughput with a tool attached against bare runs: median ratio, and
    /// the spread (min..max of the tool's runs over the bare median), which
    /// `target` judges.
    pub fn slowdown(
        section: &str,
        metric: &str,
        with: &[f64],
        bare: &[f64],
        target: Target,
    ) -> Row {
        let (with_median, bare_median) = (median(with), median(bare));
        let ratio = with_median / bare_median;
        let spread = |v: &[f64]| {
            let (lo, hi) = extremes(v);
            format!("{:.3}..{:.3}", lo / bare_median, hi / bare_median)
        };
        // Throughputs of a few runs a second need their decimals.
        let figure = |v: f64| {
            if v.abs() < 100.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        };
        Row {
            section: section.into(),
            metric: metric.into(),
            value: format!("{} (runs {})", figure(with_median), spread(with)),
            peer: format!("bare: {} (runs {})", figure(bare_median), spread(bare)),
            ratio: format!("{ratio:.3}x"),
            target: target.text(),
            verdict: target.verdict(Some(ratio)),
        }
    }

    /// Our slowdown (the fraction of bare throughput lost) against a
    /// peer's, with the ratio ours/peer, which `target` judges. No ratio
    /// when the peer's slowdown is not above `noise` (half the bare runs'
    /// spread, as a fraction): there is nothing to divide by that the bare
    /// runs could not show on their own.
    pub fn slowdowns(
        section: &str,
        metric: &str,
        ours: f64,
        peer: Peer<'_>,
        noise: f64,
        target: Target,
    ) -> Row {
        let above_noise = peer.value.filter(|p| *p > noise.max(0.0));
        let ratio = above_noise.map(|p| ours / p);
        let percent = |v: f64| format!("{:.1}%", v * 100.0);
        Row {
            section: section.into(),
            metric: format!("{metric} (bare runs spread ±{})", percent(noise)),
            value: percent(ours),
            peer: peer.shown(percent),
            ratio: ratio_text(ratio),
            target: target.text(),
            verdict: match ratio {
                Some(_) => target.verdict(ratio),
                None if peer.value.is_some() => "within noise",
                None => target.verdict(None),
            },
        }
    }

    /// A share of CPU (a fraction) of ours against a peer's, as percents,
    /// with the ratio ours/peer, which `target` judges.
    pub fn shares(section: &str, metric: &str, ours: f64, peer: Peer<'_>, target: Target) -> Row {
        let known = |v: f64| v.is_finite().then_some(v);
        let ratio = known(ours)
            .zip(peer.value.and_then(known).filter(|p| *p > 0.0))
            .map(|(o, p)| o / p);
        let percent = |v: f64| match known(v) {
            Some(v) => format!("{:.2}%", v * 100.0),
            None => "n/a".into(),
        };
        Row {
            section: section.into(),
            metric: metric.into(),
            value: percent(ours),
            peer: peer.shown(percent),
            ratio: ratio_text(ratio),
            target: target.text(),
            verdict: target.verdict(ratio),
        }
    }

    /// A figure of our own (NaN: not measured), which `target` judges.
    pub fn value(section: &str, metric: &str, value: f64, target: Target) -> Row {
        Row {
            section: section.into(),
            metric: metric.into(),
            value: format!("{value:.3}"),
            peer: String::new(),
            ratio: String::new(),
            target: target.text(),
            verdict: target.verdict(Some(value)),
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
             (`BPF_ENABLE_STATS`, as with `kernel.bpf_stats_enabled=1`: run time / run count \
             per program) with every tool \
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
            "\nReproduce: `cargo xtask bench` (about 14 minutes; `--quick` for a smoke run).\n",
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

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn targets_render_their_own_text() {
        assert_eq!(Target::None.text(), "");
        assert_eq!(Target::RatioAtMost(0.5).text(), "<= 0.5x");
        assert_eq!(Target::RatioAtMost(1.0).text(), "<= 1.0x");
        assert_eq!(Target::SlowerBy(0.97).text(), "< 3% slower");
        assert_eq!(Target::below(300.0, " ms").text(), "< 300 ms");
        assert_eq!(Target::below(0.2, "%").text(), "< 0.2%");
        assert_eq!(Target::below(300.0, "").text(), "< 300");
        assert_eq!(Target::at_most(100.0, " MiB").text(), "<= 100 MiB");
    }

    #[test]
    fn targets_judge_their_figure() {
        assert_eq!(Target::RatioAtMost(0.5).verdict(Some(0.5)), "met");
        assert_eq!(Target::RatioAtMost(0.5).verdict(Some(0.51)), "MISSED");
        assert_eq!(Target::SlowerBy(0.97).verdict(Some(0.98)), "met");
        assert_eq!(Target::SlowerBy(0.97).verdict(Some(0.96)), "MISSED");
        assert_eq!(Target::below(2.0, " ms").verdict(Some(2.0)), "MISSED");
        assert_eq!(Target::at_most(100.0, " MiB").verdict(Some(100.0)), "met");
        assert_eq!(Target::below(2.0, " ms").verdict(None), "not measured");
        assert_eq!(
            Target::below(2.0, " ms").verdict(Some(f64::NAN)),
            "not measured"
        );
        assert_eq!(Target::None.verdict(Some(9.0)), "");
    }
}
