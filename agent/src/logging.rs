//! The log on stderr, in the format `--log-format` names.

use std::fmt::{self, Write as _};

use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter,
    filter::ParseError,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime as _, SystemTime},
    },
    registry::LookupSpan,
};

use crate::cli::LogFormat;

/// Sends every event that `level` (a tracing filter) lets through to
/// stderr, one line each, in `format`.
pub fn init(level: &str, format: LogFormat) -> Result<(), ParseError> {
    let filter = EnvFilter::try_new(level)?;
    let stderr = std::io::stderr;
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(stderr)
            // Colour only for a person at a terminal, never into journald or a file.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .init(),
        // The message beside the other fields, at the top level.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(filter)
            .with_writer(stderr)
            .with_ansi(false)
            .init(),
        LogFormat::Logfmt => tracing_subscriber::fmt()
            .event_format(Logfmt)
            .with_env_filter(filter)
            .with_writer(stderr)
            .init(),
    }
    Ok(())
}

/// Says on stderr, in one line, why hostscope stops: as a log event when
/// the log is JSON or logfmt (so that every line of it parses) and errors
/// are logged, as `hostscope: error: ...` otherwise.
pub fn fatal(format: LogFormat, err: &anyhow::Error) {
    if format != LogFormat::Text && tracing::enabled!(Level::ERROR) {
        tracing::error!("{err:#}");
    } else {
        eprintln!("hostscope: error: {err:#}");
    }
}

/// logfmt as Go exporters write it (go-kit/log, slog): `ts=... level=info
/// target=... msg="..." key=value ...`, one event a line. Values are quoted
/// where they are empty or hold spaces, `=`, `"` or control characters,
/// with JSON's escapes inside the quotes. hostscope opens no spans, so
/// there are no span fields to write.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = LogfmtFields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        writer.write_str("ts=")?;
        SystemTime.format_time(&mut writer)?;
        let level = match *metadata.level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(writer, " level={level} target=")?;
        // Events of the `log` crate (aya's) carry their real target in a field.
        let target = fields.log_target.as_deref().unwrap_or(metadata.target());
        write_value(&mut writer, target)?;
        writer.write_str(" msg=")?;
        write_value(&mut writer, &fields.message)?;
        writeln!(writer, "{}", fields.rest)
    }
}

/// An event's fields: the message, the `log` crate's target, and the rest
/// written out as ` key=value` pairs.
#[derive(Default)]
struct LogfmtFields {
    message: String,
    log_target: Option<String>,
    rest: String,
}

impl LogfmtFields {
    fn record(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "log.target" => self.log_target = Some(value.to_owned()),
            // The `log` crate's file, line and module: not in the other formats either.
            name if name.starts_with("log.") => {}
            name => {
                // Writing to a String cannot fail.
                let key: String = name.chars().filter(|&c| !needs_quotes(c)).collect();
                let _ = write!(self.rest, " {key}=");
                let _ = write_value(&mut self.rest, value);
            }
        }
    }
}

impl Visit for LogfmtFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, &value.to_string());
    }

    // Numbers, booleans, `%display` and `?debug` values.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, &format!("{value:?}"));
    }
}

fn needs_quotes(c: char) -> bool {
    c == '=' || c == '"' || c.is_control() || c.is_whitespace()
}

/// `value` as a logfmt value: bare if it can be, else quoted and escaped.
fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if !value.is_empty() && !value.chars().any(needs_quotes) {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{:04x}", u32::from(c))?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// A writer whose bytes the test reads back: where a test's log goes.
    #[derive(Clone, Default)]
    pub(crate) struct Shared(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What `emit` logs in logfmt, each line without its `ts=...`, which
    /// must be an RFC 3339 time in UTC.
    fn logfmt_lines(emit: impl FnOnce()) -> Vec<String> {
        let out = Shared::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Logfmt)
            .with_max_level(Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let (ts, rest) = line.split_once(' ').unwrap();
                let ts = ts.strip_prefix("ts=").unwrap();
                assert!(ts.len() >= 20 && ts.ends_with('Z'), "{ts}");
                assert_eq!(&ts[4..5], "-", "{ts}");
                assert_eq!(&ts[10..11], "T", "{ts}");
                rest.to_owned()
            })
            .collect()
    }

    #[test]
    fn logfmt_lines_are_go_exporters() {
        let err = io::Error::other("no \"such\" thing");
        let lines = logfmt_lines(|| {
            tracing::info!(listen = %"[::]:9661", max_connections = 512, "serving /metrics");
            tracing::warn!(collector = "block", up = false, ratio = 0.5, "a=b");
            tracing::error!(error = &err as &dyn std::error::Error, empty = "", "x");
            tracing::debug!(path = ?"/a b", "line\nbreak\ttab\\ \u{1}");
            tracing::trace!("ünïcode");
        });
        let target = "target=hostscope::logging::tests";
        assert_eq!(
            lines,
            [
                format!(
                    "level=info {target} msg=\"serving /metrics\" listen=[::]:9661 \
                     max_connections=512"
                ),
                format!("level=warn {target} msg=\"a=b\" collector=block up=false ratio=0.5"),
                format!("level=error {target} msg=x error=\"no \\\"such\\\" thing\" empty=\"\""),
                format!(
                    "level=debug {target} msg=\"line\\nbreak\\ttab\\\\ \\u0001\" \
                     path=\"\\\"/a b\\\"\""
                ),
                format!("level=trace {target} msg=ünïcode"),
            ]
        );
    }

    /// Events of the `log` crate, as tracing-log turns them into events:
    /// under their own target, without the file and line.
    #[test]
    fn logfmt_takes_the_log_crates_target() {
        let lines = logfmt_lines(|| {
            tracing::debug!(
                log.target = "aya::bpf",
                log.module_path = "aya::bpf",
                log.file = "/home/build/aya/src/bpf.rs",
                log.line = 87,
                "BPF Feature Detection"
            );
        });
        assert_eq!(
            lines,
            ["level=debug target=aya::bpf msg=\"BPF Feature Detection\""]
        );
    }
}
