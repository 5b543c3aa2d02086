//! A small reader for the Prometheus/OpenMetrics text the daemon serves.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, with any `_bucket`/`_sum`/`_count`/`_total` suffix.
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A histogram's series for one label set.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    /// `_count`.
    pub count: f64,
    /// `_sum`.
    pub sum: f64,
    /// `(le, cumulative count)` in exposition order.
    pub buckets: Vec<(f64, f64)>,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses an exposition; panics on a malformed sample line.
    pub fn parse(text: &str) -> Exposition {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("malformed line: {line}")))
            .collect();
        Exposition { samples }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample named `name` with (at least) `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.matching(name, labels);
        let first = found.next()?;
        assert!(
            found.next().is_none(),
            "{name} {labels:?} matches several samples"
        );
        Some(first.value)
    }

    /// The histogram `base` (without suffix) with exactly `labels` (besides `le`).
    pub fn histogram(&self, base: &str, labels: &[(&str, &str)]) -> Option<HistogramSample> {
        let count = self.value(&format!("{base}_count"), labels)?;
        let sum = self.value(&format!("{base}_sum"), labels)?;
        let bucket_name = format!("{base}_bucket");
        let buckets = self
            .matching(&bucket_name, labels)
            .filter(|s| s.labels.len() == labels.len() + 1)
            .map(|s| {
                let le = s.labels.get("le").expect("bucket without le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                (le, s.value)
            })
            .collect();
        Some(HistogramSample {
            count,
            sum,
            buckets,
        })
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_histograms_and_labels() {
        let text = "# TYPE x histogram\n\
            x_sum{a=\"1\"} 2.5\nx_count{a=\"1\"} 3\n\
            x_bucket{a=\"1\",le=\"0.5\"} 1\nx_bucket{a=\"1\",le=\"+Inf\"} 3\n\
            up{collector=\"say \\\"hi\\\"\"} 1\n# EOF\n";
        let e = Exposition::parse(text);
        let h = e.histogram("x", &[("a", "1")]).unwrap();
        assert_eq!(h.count, 3.0);
        assert_eq!(h.sum, 2.5);
        assert_eq!(h.buckets, vec![(0.5, 1.0), (f64::INFINITY, 3.0)]);
        assert_eq!(e.value("up", &[("collector", "say \"hi\"")]), Some(1.0));
    }
}
