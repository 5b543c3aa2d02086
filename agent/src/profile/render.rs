//! A symbolized profile as folded stacks, an SVG flame graph, or pprof.

use std::{collections::HashMap, io::Write as _};

use prost::Message as _;

use super::{Profile, ProfileError, pprof};

/// Brendan Gregg's folded format: `comm;outer;...;leaf count`, one stack a
/// line, the process name as root frame and kernel frames ending in `_[k]`.
pub fn folded(profile: &Profile) -> String {
    let mut lines: Vec<String> = profile
        .stacks
        .iter()
        .map(|stack| {
            let mut line = clean(&stack.comm);
            for frame in &stack.frames {
                line.push(';');
                line.push_str(&clean(frame));
            }
            format!("{line} {}", stack.count)
        })
        .collect();
    lines.sort_unstable();
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// `;` separates frames and the last space precedes the count.
fn clean(frame: &str) -> String {
    frame.replace(';', ":").replace(['\n', '\r'], " ")
}

/// An interactive SVG flame graph (inferno).
pub fn svg(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    let folded = folded(profile);
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!(
        "hostscope CPU profile: {} s at {} Hz{}",
        profile.request.seconds,
        profile.request.frequency,
        profile
            .request
            .pid
            .map_or(String::new(), |pid| format!(", pid {pid}"))
    );
    let mut svg = Vec::new();
    if profile.stacks.is_empty() {
        // inferno refuses empty input; an empty graph is still an answer.
        options.title.push_str(" (no samples)");
        inferno::flamegraph::from_lines(&mut options, ["(no samples) 1"], &mut svg)
    } else {
        inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
    }
    .map_err(|e| ProfileError::Failed(format!("rendering the flame graph: {e}")))?;
    Ok(svg)
}

/// A gzipped pprof profile: sample counts and CPU time per stack, with the
/// process name and pid as labels.
pub fn pprof_gzip(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    let mut strings = Strings::default();
    let period_ns = 1_000_000_000 / profile.request.frequency.max(1) as i64;
    let mut functions: HashMap<String, u64> = HashMap::new();
    let mut out = pprof::Profile {
        sample_type: vec![
            pprof::ValueType {
                r#type: strings.index("samples"),
                unit: strings.index("count"),
            },
            pprof::ValueType {
                r#type: strings.index("cpu"),
                unit: strings.index("nanoseconds"),
            },
        ],
        period_type: Some(pprof::ValueType {
            r#type: strings.index("cpu"),
            unit: strings.index("nanoseconds"),
        }),
        period: period_ns,
        duration_nanos: (profile.request.seconds * 1_000_000_000) as i64,
        time_nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        ..Default::default()
    };
    let comm_key = strings.index("comm");
    let pid_key = strings.index("pid");
    for stack in &profile.stacks {
        let location_id = stack
            .frames
            .iter()
            .rev()
            .map(|frame| {
                let next = functions.len() as u64 + 1;
                *functions.entry(frame.clone()).or_insert_with(|| {
                    let name = strings.index(frame);
                    out.function.push(pprof::Function {
                        id: next,
                        name,
                        system_name: name,
                    });
                    // One location per function: ids match.
                    out.location.push(pprof::Location {
                        id: next,
                        line: vec![pprof::Line { function_id: next }],
                    });
                    next
                })
            })
            .collect();
        out.sample.push(pprof::Sample {
            location_id,
            value: vec![stack.count as i64, stack.count as i64 * period_ns],
            label: vec![
                pprof::Label {
                    key: comm_key,
                    str: strings.index(&stack.comm),
                    num: 0,
                },
                pprof::Label {
                    key: pid_key,
                    str: 0,
                    num: i64::from(stack.pid),
                },
            ],
        });
    }
    out.string_table = strings.table;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&out.encode_to_vec())
        .and_then(|()| gz.finish())
        .map_err(|e| ProfileError::Failed(format!("compressing the profile: {e}")))
}

/// pprof's string table; index 0 is the empty string.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Default for Strings {
    fn default() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl Strings {
    fn index(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}
