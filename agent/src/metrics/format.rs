//! Which exposition format a scraper gets, from its `Accept` header, the
//! way the Go client's `expfmt.Negotiate` decides: the highest-quality
//! media range we can produce wins, and anything else gets the Prometheus
//! text format 0.0.4, which every scraper understands.

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4: what `promtool check metrics` lints
    /// and what most tools expect.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily` protobuf
    /// messages: the one format with native histograms.
    Protobuf,
}

impl Format {
    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Protobuf => super::protobuf::CONTENT_TYPE,
        }
    }

    /// The format for an `Accept` header's value (all of its values,
    /// joined by commas); [`Format::Text`] when none is given or none
    /// can be served.
    pub fn negotiate(accept: &str) -> Self {
        let mut ranges: Vec<(f32, usize, Option<Self>)> = accept
            .split(',')
            .enumerate()
            .filter_map(|(order, range)| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?.to_ascii_lowercase();
                let mut quality = 1.0f32;
                let mut version = None;
                let mut proto = None;
                let mut encoding = None;
                for parameter in parts {
                    let Some((key, value)) = parameter.split_once('=') else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"');
                    match key.trim().to_ascii_lowercase().as_str() {
                        "q" => quality = value.parse().ok().filter(|q: &f32| q.is_finite())?,
                        "version" => version = Some(value.to_owned()),
                        "proto" => proto = Some(value.to_owned()),
                        "encoding" => encoding = Some(value.to_ascii_lowercase()),
                        _ => {}
                    }
                }
                let format = match (media.as_str(), version.as_deref()) {
                    ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                        Some(Self::OpenMetrics)
                    }
                    ("text/plain", None | Some("0.0.4")) => Some(Self::Text),
                    ("application/vnd.google.protobuf", _)
                        if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                            && encoding.as_deref() == Some("delimited") =>
                    {
                        Some(Self::Protobuf)
                    }
                    _ => None,
                };
                Some((quality, order, format))
            })
            .filter(|(quality, _, _)| *quality > 0.0)
            .collect();
        // Highest quality first; among equals, the header's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranges
            .into_iter()
            .find_map(|(_, _, format)| format)
            .unwrap_or(Self::Text)
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition (as
/// prometheus-client writes it): no `# UNIT` or `# EOF` lines, and a
/// counter's `# HELP` and `# TYPE` under its sample name, `<name>_total`,
/// as the Go client writes them. Samples and escaping are the same in both.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(prefix);
                text.push_str(name);
                if counters.contains(name) {
                    text.push_str("_total");
                }
                if !tail.is_empty() || rest.contains(' ') {
                    text.push(' ');
                    text.push_str(tail);
                }
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_the_go_client() {
        // Prometheus' default scrape_protocols.
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,\
            text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(prometheus), Format::OpenMetrics);
        // ... with native histograms on (scrape_protocols PrometheusProto first).
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
            encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,\
            text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(native), Format::Protobuf);
        // Only the delimited MetricFamily stream is served.
        assert_eq!(
            Format::negotiate(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            ),
            Format::Text
        );
        assert_eq!(
            Format::negotiate("application/vnd.google.protobuf"),
            Format::Text
        );
        assert_eq!(Format::negotiate(""), Format::Text);
        assert_eq!(Format::negotiate("*/*"), Format::Text);
        assert_eq!(Format::negotiate("text/plain"), Format::Text);
        assert_eq!(
            Format::negotiate("application/openmetrics-text"),
            Format::OpenMetrics
        );
        // Quality outranks order; q=0 refuses; unknown versions are skipped.
        assert_eq!(
            Format::negotiate("text/plain;q=0.2, application/openmetrics-text;q=0.9"),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate("application/openmetrics-text;q=0, text/plain"),
            Format::Text
        );
        assert_eq!(
            Format::negotiate("application/openmetrics-text;version=2.0.0"),
            Format::Text
        );
        assert_eq!(
            Format::negotiate("application/json, application/openmetrics-text; q=0.1"),
            Format::OpenMetrics
        );
        // Garbage is no format at all, not an error.
        assert_eq!(Format::negotiate(";;;,q=,=;q=nan"), Format::Text);
        assert_eq!(
            Format::negotiate("application/openmetrics-text;q=NaN"),
            Format::Text
        );
    }

    #[test]
    fn text_has_counter_descriptors_under_total_names_and_no_openmetrics_lines() {
        let openmetrics = "# HELP a_seconds Latency.\n\
            # TYPE a_seconds histogram\n\
            # UNIT a_seconds seconds\n\
            a_seconds_bucket{le=\"+Inf\"} 1\n\
            a_seconds_sum 0.5\n\
            a_seconds_count 1\n\
            # HELP b Drops.\n\
            # TYPE b counter\n\
            b_total{x=\"y\"} 3\n\
            # HELP c_total_bytes Odd name.\n\
            # TYPE c_total_bytes gauge\n\
            c_total_bytes 1\n\
            # EOF\n";
        let text = openmetrics_to_text(openmetrics);
        assert_eq!(
            text,
            "# HELP a_seconds Latency.\n\
            # TYPE a_seconds histogram\n\
            a_seconds_bucket{le=\"+Inf\"} 1\n\
            a_seconds_sum 0.5\n\
            a_seconds_count 1\n\
            # HELP b_total Drops.\n\
            # TYPE b_total counter\n\
            b_total{x=\"y\"} 3\n\
            # HELP c_total_bytes Odd name.\n\
            # TYPE c_total_bytes gauge\n\
            c_total_bytes 1\n"
        );
    }
}
