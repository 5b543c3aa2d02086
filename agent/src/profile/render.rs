//! A symbolized profile as folded stacks, an SVG flame graph, or pprof.

use std::{collections::HashMap, io::Write as _};

use prost::Message as _;

use super::{GroupBy, Kind, Profile, ProfileError, Stack, pprof};

/// One pprof location: where (mapping and address, if known) and which name.
type LocationKey<'a> = (Option<(usize, u64)>, &'a str);

/// The pprof id of each of `profile`'s mappings (1-based), hottest first:
/// ranked by the samples whose outermost user frame lies in it, which puts
/// the main executable of the busiest process first.
fn mapping_ids(profile: &Profile) -> Vec<u64> {
    let mut weight = vec![0u64; profile.mappings.len()];
    for stack in &profile.stacks {
        if let Some(Some((m, _))) = stack.addresses.iter().find(|a| a.is_some())
            && let Some(w) = weight.get_mut(*m)
        {
            *w = w.saturating_add(stack.count);
        }
    }
    let mut order: Vec<usize> = (0..profile.mappings.len()).collect();
    order.sort_by_key(|&m| (std::cmp::Reverse(weight.get(m).copied().unwrap_or(0)), m));
    let mut ids = vec![0u64; profile.mappings.len()];
    for (rank, m) in order.into_iter().enumerate() {
        if let Some(id) = ids.get_mut(m) {
            *id = rank as u64 + 1;
        }
    }
    ids
}

/// Brendan Gregg's folded format: `comm;outer;...;leaf count`, one stack a
/// line, the process name as root frame and kernel frames ending in `_[k]`.
/// Grouped by cgroup, the cgroup's path is the root frame, above `comm`.
/// The count is samples, or for an off-CPU profile microseconds blocked.
pub fn folded(profile: &Profile) -> String {
    let mut lines: Vec<String> = profile
        .stacks
        .iter()
        .map(|stack| {
            let mut line = match profile.request.group_by {
                GroupBy::Process => String::new(),
                GroupBy::Cgroup => format!("{};", clean(&stack.cgroup)),
            };
            line.push_str(&clean(&stack.comm));
            for frame in &stack.frames {
                line.push(';');
                line.push_str(&clean(frame));
            }
            format!("{line} {}", weight(profile.request.kind, stack))
        })
        .collect();
    lines.sort_unstable();
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A stack's weight in folded stacks and the flame graph: samples, or
/// microseconds off CPU (flame graph tools take whole numbers, and
/// nanoseconds would make every tooltip a nine-digit number per second).
/// Rounded to the nearest, and at least 1: every counted block is at least
/// `min_block_us` long, and a zero would be an invalid line.
fn weight(kind: Kind, stack: &Stack) -> u64 {
    match kind {
        Kind::Cpu => stack.count,
        Kind::OffCpu { .. } => (stack.count.saturating_add(500) / 1_000).max(1),
    }
}

/// `;` separates frames and the last space precedes the count.
fn clean(frame: &str) -> String {
    frame.replace(';', ":").replace(['\n', '\r'], " ")
}

/// An interactive SVG flame graph (inferno).
pub fn svg(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    let folded = folded(profile);
    let mut options = inferno::flamegraph::Options::default();
    // A frame narrower than a pixel can't be seen or clicked, and on a busy
    // host most frames are single samples (about 0.6 px at 99 Hz on two
    // CPUs for 10 s): leaving them out makes the SVG several times smaller
    // and faster to render and load. Folded stacks and pprof keep them.
    // (inferno takes the width in percent of the whole graph.)
    let pixels = options.image_width.unwrap_or(1200).max(1);
    options.min_width = 100.0 / pixels as f64;
    // `folded` sorted the lines already.
    options.no_sort = true;
    let what = match profile.request.kind {
        Kind::Cpu => format!(
            "CPU profile: {} s at {} Hz",
            profile.request.seconds, profile.request.frequency
        ),
        Kind::OffCpu { min_block_us } => {
            // Blue, as off-CPU flame graphs conventionally are; widths are
            // microseconds blocked.
            options.colors = inferno::flamegraph::color::Palette::Basic(
                inferno::flamegraph::color::BasicPalette::Io,
            );
            options.count_name = "us".to_owned();
            format!(
                "off-CPU profile: {} s, blocks of {min_block_us} us or more",
                profile.request.seconds
            )
        }
    };
    options.title = format!(
        "hostscope {what}{}{}",
        profile
            .request
            .pid
            .map_or(String::new(), |pid| format!(", pid {pid}")),
        profile
            .request
            .cgroup
            .as_ref()
            .map_or(String::new(), |cgroup| format!(
                ", cgroup {}",
                super::printable(&cgroup.path)
            ))
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

/// A gzipped pprof profile: sample counts and CPU time per stack (off
/// CPU: nanoseconds blocked, `offcpu/nanoseconds`), with mappings and
/// addresses for servers to symbolize again, and the
/// process name, pid and cgroup path as labels. `group_by` does not apply:
/// pprof tools group by label (`go tool pprof -tagroot cgroup`).
pub fn pprof_gzip(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    let mut strings = Strings::default();
    let period_ns = period_ns(&profile.request);
    let mut functions: HashMap<String, u64> = HashMap::new();
    let mut out = pprof::Profile {
        sample_type: sample_types(profile.request.kind, &mut strings),
        period_type: Some(period_type(profile.request.kind, &mut strings)),
        period: period_ns,
        duration_nanos: (profile.request.seconds * 1_000_000_000) as i64,
        time_nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        ..Default::default()
    };
    let comm_key = strings.index("comm");
    let pid_key = strings.index("pid");
    let cgroup_key = strings.index("cgroup");
    let mapping_ids = mapping_ids(profile);
    for (index, mapping) in profile.mappings.iter().enumerate() {
        let Some(&id) = mapping_ids.get(index) else {
            continue;
        };
        out.mapping.push(pprof::Mapping {
            id,
            memory_start: mapping.start,
            memory_limit: mapping.limit,
            file_offset: mapping.file_offset,
            filename: strings.index(&mapping.file),
            build_id: mapping
                .build_id
                .as_deref()
                .map_or(0, |id| strings.index(id)),
            has_functions: true,
        });
    }
    // pprof takes the first mapping for the main binary.
    out.mapping.sort_by_key(|m| m.id);
    let mut locations: HashMap<LocationKey<'_>, u64> = HashMap::new();
    for stack in &profile.stacks {
        let location_id = stack
            .frames
            .iter()
            .enumerate()
            .rev()
            .map(|(i, frame)| {
                let at = stack.addresses.get(i).copied().flatten();
                let next_function = functions.len() as u64 + 1;
                let function_id = *functions.entry(frame.clone()).or_insert_with(|| {
                    let name = strings.index(frame);
                    out.function.push(pprof::Function {
                        id: next_function,
                        name,
                        system_name: name,
                    });
                    next_function
                });
                let next_location = locations.len() as u64 + 1;
                *locations.entry((at, frame.as_str())).or_insert_with(|| {
                    let (mapping_id, address) = at
                        .and_then(|(m, address)| Some((*mapping_ids.get(m)?, address)))
                        .unwrap_or((0, 0));
                    out.location.push(pprof::Location {
                        id: next_location,
                        mapping_id,
                        address,
                        line: vec![pprof::Line { function_id }],
                    });
                    next_location
                })
            })
            .collect();
        out.sample.push(pprof::Sample {
            location_id,
            value: values(profile.request.kind, stack.count, period_ns),
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
                pprof::Label {
                    key: cgroup_key,
                    str: strings.index(&stack.cgroup),
                    num: 0,
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

/// What a pprof sample's values are: samples and CPU time (as Go's CPU
/// profiles), or for an off-CPU profile one value, nanoseconds blocked.
fn sample_types(kind: Kind, strings: &mut Strings) -> Vec<pprof::ValueType> {
    match kind {
        Kind::Cpu => vec![
            value_type(strings, "samples", "count"),
            value_type(strings, "cpu", "nanoseconds"),
        ],
        Kind::OffCpu { .. } => vec![value_type(strings, "offcpu", "nanoseconds")],
    }
}

fn period_type(kind: Kind, strings: &mut Strings) -> pprof::ValueType {
    match kind {
        Kind::Cpu => value_type(strings, "cpu", "nanoseconds"),
        Kind::OffCpu { .. } => value_type(strings, "offcpu", "nanoseconds"),
    }
}

/// The time one sample stands for; off CPU every block is measured, so
/// each value is exact (a period of 1 ns).
fn period_ns(request: &super::Request) -> i64 {
    match request.kind {
        Kind::Cpu => 1_000_000_000 / request.frequency.max(1) as i64,
        Kind::OffCpu { .. } => 1,
    }
}

/// A stack's values, in the order of [`sample_types`].
fn values(kind: Kind, count: u64, period_ns: i64) -> Vec<i64> {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    match kind {
        Kind::Cpu => vec![count, count.saturating_mul(period_ns)],
        Kind::OffCpu { .. } => vec![count],
    }
}

fn value_type(strings: &mut Strings, r#type: &str, unit: &str) -> pprof::ValueType {
    pprof::ValueType {
        r#type: strings.index(r#type),
        unit: strings.index(unit),
    }
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

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::profile::{GroupBy, Mapping, Request, Stack};

    fn profile(group_by: GroupBy) -> Profile {
        let mut profile = profile_without_addresses(group_by);
        // nginx's frames are in its executable, worker's spin in a library.
        profile.stacks[0].addresses =
            vec![Some((1, 0x5500_0000_1234)), Some((1, 0x5500_0000_5678))];
        profile.stacks[1].addresses = vec![
            Some((1, 0x5500_0000_1234)),
            Some((0, 0x7f00_0000_0042)),
            None,
        ];
        profile
    }

    fn profile_without_addresses(group_by: GroupBy) -> Profile {
        let stack = |cgroup: &str, comm: &str, pid, frames: &[&str], count| Stack {
            cgroup: cgroup.to_owned(),
            comm: comm.to_owned(),
            pid,
            frames: frames.iter().map(|f| (*f).to_owned()).collect(),
            addresses: vec![None; frames.len()],
            count,
        };
        Profile {
            stacks: vec![
                stack(
                    "/system.slice/nginx.service",
                    "nginx",
                    10,
                    &["main", "serve"],
                    7,
                ),
                stack("/a;b", "worker", 11, &["main", "spin", "tick_[k]"], 3),
                stack("/", "kthreadd", 2, &[], 1),
            ],
            mappings: vec![
                Mapping {
                    start: 0x7f00_0000_0000,
                    limit: 0x7f00_0010_0000,
                    file_offset: 0x1000,
                    file: "/usr/lib/libspin.so".to_owned(),
                    build_id: None,
                },
                Mapping {
                    start: 0x5500_0000_0000,
                    limit: 0x5500_0020_0000,
                    file_offset: 0,
                    file: "/usr/sbin/nginx".to_owned(),
                    build_id: Some("c991f941c690b10ff25dd2732fcd9cd69bba00f1".to_owned()),
                },
            ],
            request: Request {
                kind: Kind::Cpu,
                seconds: 1,
                pid: None,
                frequency: 99,
                cgroup: None,
                group_by,
            },
            dropped: 0,
            timings: crate::profile::Timings::default(),
        }
    }

    #[test]
    fn folded_by_process_has_no_cgroup_frame() {
        assert_eq!(
            folded(&profile(GroupBy::Process)),
            "kthreadd 1\nnginx;main;serve 7\nworker;main;spin;tick_[k] 3\n"
        );
    }

    /// The cgroup path is the root frame, above the process name; a `;` in
    /// it cannot split it into two frames.
    #[test]
    fn folded_by_cgroup_puts_the_path_outermost() {
        assert_eq!(
            folded(&profile(GroupBy::Cgroup)),
            "/;kthreadd 1\n\
             /a:b;worker;main;spin;tick_[k] 3\n\
             /system.slice/nginx.service;nginx;main;serve 7\n"
        );
    }

    /// A frame narrower than one of the SVG's 1200 pixels is left out of
    /// it, and of the folded stacks nothing is.
    #[test]
    fn svg_leaves_out_sub_pixel_frames_and_folded_keeps_them() {
        let mut profile = profile_without_addresses(GroupBy::Process);
        // 1 sample in 1,201 is under a pixel; 2 are over.
        profile.stacks[0].count = 1_198;
        profile.stacks[1].count = 2;
        profile.stacks[2].frames = vec!["rare_leaf".to_owned()];
        profile.stacks[2].count = 1;
        let svg = String::from_utf8(svg(&profile).unwrap()).unwrap();
        assert!(!svg.contains("rare_leaf"), "{svg}");
        assert!(svg.contains("spin") && svg.contains("serve"), "{svg}");
        assert!(folded(&profile).contains("kthreadd;rare_leaf 1\n"));
    }

    #[test]
    fn svg_by_cgroup_renders() {
        let svg = String::from_utf8(svg(&profile(GroupBy::Cgroup)).unwrap()).unwrap();
        assert!(svg.contains("/system.slice/nginx.service"), "{svg}");
    }

    /// Every sample carries `comm`, `pid` and `cgroup` labels; the stacks
    /// are the same whatever the grouping.
    #[test]
    fn pprof_samples_carry_a_cgroup_label() {
        let decode = |group_by| {
            let gz = pprof_gzip(&profile(group_by)).unwrap();
            let mut bytes = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut bytes)
                .unwrap();
            pprof::Profile::decode(bytes.as_slice()).unwrap()
        };
        let out = decode(GroupBy::Process);
        let string = |i: i64| out.string_table[usize::try_from(i).unwrap()].as_str();
        let labels: Vec<Vec<(&str, &str, i64)>> = out
            .sample
            .iter()
            .map(|s| {
                s.label
                    .iter()
                    .map(|l| (string(l.key), string(l.str), l.num))
                    .collect()
            })
            .collect();
        assert_eq!(
            labels[0],
            [
                ("comm", "nginx", 0),
                ("pid", "", 10),
                ("cgroup", "/system.slice/nginx.service", 0)
            ]
        );
        assert_eq!(labels[1][2], ("cgroup", "/a;b", 0));
        assert_eq!(labels[2][2], ("cgroup", "/", 0));
        // The executable most samples start in comes first, with its build
        // ID; every user frame points into its mapping at its address.
        assert_eq!(out.mapping.len(), 2);
        assert_eq!(string(out.mapping[0].filename), "/usr/sbin/nginx");
        assert_eq!(
            string(out.mapping[0].build_id),
            "c991f941c690b10ff25dd2732fcd9cd69bba00f1"
        );
        assert_eq!(out.mapping[0].memory_start, 0x5500_0000_0000);
        assert_eq!(string(out.mapping[1].filename), "/usr/lib/libspin.so");
        assert_eq!(out.mapping[1].build_id, 0);
        assert_eq!(out.mapping[1].file_offset, 0x1000);
        let location = |id: u64| out.location.iter().find(|l| l.id == id).unwrap();
        let nginx_leaf = location(out.sample[0].location_id[0]);
        assert_eq!(
            (nginx_leaf.mapping_id, nginx_leaf.address),
            (1, 0x5500_0000_5678)
        );
        let spin = location(out.sample[1].location_id[1]);
        assert_eq!((spin.mapping_id, spin.address), (2, 0x7f00_0000_0042));
        let kernel = location(out.sample[1].location_id[0]);
        assert_eq!(
            (kernel.mapping_id, kernel.address),
            (0, 0),
            "kernel addresses are not shown"
        );
        let grouped = decode(GroupBy::Cgroup);
        assert_eq!(
            grouped
                .sample
                .iter()
                .map(|s| &s.location_id)
                .collect::<Vec<_>>(),
            out.sample
                .iter()
                .map(|s| &s.location_id)
                .collect::<Vec<_>>()
        );
    }

    /// Off CPU, folded stacks and the flame graph weigh in microseconds
    /// (rounded, never 0); pprof has one value, nanoseconds.
    #[test]
    fn offcpu_weights_are_microseconds_and_nanoseconds() {
        let mut offcpu = profile(GroupBy::Process);
        offcpu.request.kind = Kind::OffCpu {
            min_block_us: std::num::NonZeroU32::new(1000).unwrap(),
        };
        offcpu.request.frequency = 0;
        for (stack, ns) in offcpu.stacks.iter_mut().zip([20_000_499, 1_500, 400]) {
            stack.count = ns;
        }
        assert_eq!(
            folded(&offcpu),
            "kthreadd 1\nnginx;main;serve 20000\nworker;main;spin;tick_[k] 2\n"
        );
        let svg = String::from_utf8(svg(&offcpu).unwrap()).unwrap();
        assert!(svg.contains("off-CPU profile"), "{svg}");
        let gz = pprof_gzip(&offcpu).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut bytes)
            .unwrap();
        let out = pprof::Profile::decode(bytes.as_slice()).unwrap();
        let string = |i: i64| out.string_table[usize::try_from(i).unwrap()].as_str();
        let types: Vec<(&str, &str)> = out
            .sample_type
            .iter()
            .map(|t| (string(t.r#type), string(t.unit)))
            .collect();
        assert_eq!(types, [("offcpu", "nanoseconds")]);
        let period = out.period_type.as_ref().unwrap();
        assert_eq!(
            (string(period.r#type), string(period.unit)),
            ("offcpu", "nanoseconds")
        );
        let values: Vec<&[i64]> = out.sample.iter().map(|s| s.value.as_slice()).collect();
        assert_eq!(values, [&[20_000_499][..], &[1_500], &[400]]);
    }
}
