//! On-demand profiles: for N seconds, count stacks in the kernel (CPU
//! samples, or the time threads spend blocked off CPU), then symbolize them
//! and render folded stacks, an SVG flame graph or pprof.

mod admission;
mod capture;
pub(crate) mod cgroups;
mod files;
mod kallsyms;
mod mapped;
mod pprof;
pub(crate) mod procmaps;
mod render;
mod symbolize;
mod unwound;

pub use capture::Profiler;
pub use cgroups::CgroupFilter;
pub use render::{folded, pprof_gzip, svg};

use std::{
    num::{IntErrorKind, NonZeroU32},
    path::PathBuf,
};

use crate::quote::quoted;

/// A name that came from another process (its binary's symbols, its perf
/// map, its `comm`), made safe for every output: control characters, which
/// would make the SVG invalid XML or split a folded line, become `?`; the
/// length is capped.
pub fn printable(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    crate::sandbox::truncate(cleaned)
}

/// One capture's parameters, already checked against the limits.
#[derive(Debug, Clone)]
pub struct Request {
    /// What is counted.
    pub kind: Kind,
    /// How long to sample.
    pub seconds: u64,
    /// Only this process (thread group), if set.
    pub pid: Option<u32>,
    /// Samples per second per CPU (CPU profiles; 0 for off-CPU ones, which
    /// measure every block rather than sample).
    pub frequency: u64,
    /// Only tasks in this cgroup or below it, if set.
    pub cgroup: Option<CgroupFilter>,
    /// What the outermost frame of folded stacks and the flame graph is.
    pub group_by: GroupBy,
}

/// The parameters of a profile request as given (query string or command
/// line), unchecked; `None` means "not given".
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<'a> {
    /// `kind`: `cpu` or `offcpu`.
    pub kind: Option<&'a str>,
    /// `min_block_us`: the shortest block an off-CPU profile counts.
    pub min_block_us: Option<&'a str>,
    /// `seconds`: how long to sample.
    pub seconds: Option<&'a str>,
    /// `pid`: only this process.
    pub pid: Option<&'a str>,
    /// `frequency`: samples per second per CPU.
    pub frequency: Option<&'a str>,
    /// `cgroup`: only this cgroup (a path under the cgroup2 root) and below.
    pub cgroup: Option<&'a str>,
    /// `group_by`: `cgroup`, or not given.
    pub group_by: Option<&'a str>,
}

impl<'a> Params<'a> {
    /// The parameters of an HTTP query, by their names (the daemon's
    /// handlers and the query fuzz target read them alike).
    pub fn from_query(query: &'a std::collections::HashMap<String, String>) -> Self {
        let param = |name: &str| query.get(name).map(String::as_str);
        Self {
            kind: param("kind"),
            min_block_us: param("min_block_us"),
            seconds: param("seconds"),
            pid: param("pid"),
            frequency: param("frequency"),
            cgroup: param("cgroup"),
            group_by: param("group_by"),
        }
    }
}

/// What a profile weighs stacks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CPU time: stacks sampled on CPU, counted in samples.
    Cpu,
    /// Off-CPU time: the stacks threads blocked in (asleep, waiting for I/O
    /// or a lock; not runnable), weighted by how long they stayed blocked,
    /// blocks shorter than `min_block_us` left out.
    OffCpu {
        /// The shortest block counted, in microseconds. Never 0, which
        /// keeps [`Kind`] (and so [`Request`]) as small as a `u32`.
        min_block_us: NonZeroU32,
    },
}

/// The values `kind` accepts, for its error message.
const KIND_VALUES: &str = "`cpu` or `offcpu`";

/// Default `min_block_us`: 1 ms, above the blocks of ordinary lock and
/// pipe hand-offs that would otherwise dominate the count of events, and
/// short enough to keep every sleep, disk read and network wait.
pub const DEFAULT_MIN_BLOCK_US: NonZeroU32 = match NonZeroU32::new(1_000) {
    Some(us) => us,
    None => NonZeroU32::MIN,
};
/// `min_block_us` from 1 µs to 10 s.
pub const MIN_BLOCK_US: std::ops::RangeInclusive<u32> = 1..=10_000_000;

impl Kind {
    /// Checks `kind` and the parameters that belong to one kind only:
    /// `min_block_us` (off-CPU) and `frequency` (CPU).
    fn parse(
        kind: Option<&str>,
        min_block_us: Option<&str>,
        frequency: Option<&str>,
    ) -> Result<Self, ProfileError> {
        let bad = |m: String| ProfileError::BadRequest(m);
        match kind {
            None | Some("cpu") => match min_block_us {
                Some(_) => Err(bad("min_block_us applies only to kind=offcpu".into())),
                // The caller fills in the frequency.
                None => Ok(Self::Cpu),
            },
            Some("offcpu") => {
                if frequency.is_some() {
                    return Err(bad("frequency applies only to kind=cpu: off-CPU \
                         profiles measure every block rather than sample"
                        .into()));
                }
                let min_block_us = match min_block_us {
                    None => DEFAULT_MIN_BLOCK_US,
                    Some(text) => whole_number(text)
                        .and_then(|v| u32::try_from(v).ok())
                        .filter(|v| MIN_BLOCK_US.contains(v))
                        .and_then(NonZeroU32::new)
                        .ok_or_else(|| {
                            bad(format!(
                                "min_block_us must be a whole number of microseconds \
                                 from {} to {}, not {}",
                                MIN_BLOCK_US.start(),
                                MIN_BLOCK_US.end(),
                                quoted(text)
                            ))
                        })?,
                };
                Ok(Self::OffCpu { min_block_us })
            }
            Some(other) => Err(bad(format!(
                "kind must be {KIND_VALUES}, not {}",
                quoted(other)
            ))),
        }
    }

    /// `cpu` or `offcpu`, as the parameter spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::OffCpu { .. } => "offcpu",
        }
    }
}

/// The root frame of each folded stack and flame-graph tower.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupBy {
    /// The process name, as flamegraph.pl's tools do.
    #[default]
    Process,
    /// The cgroup path, above the process name.
    Cgroup,
}

/// The values `group_by` accepts, for its error message.
const GROUP_BY_VALUES: &str = "`cgroup`";

impl GroupBy {
    fn parse(text: Option<&str>) -> Result<Self, ProfileError> {
        match text {
            None => Ok(Self::Process),
            Some("cgroup") => Ok(Self::Cgroup),
            Some(other) => Err(ProfileError::BadRequest(format!(
                "group_by must be {GROUP_BY_VALUES}, not {}",
                quoted(other)
            ))),
        }
    }
}

/// The limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest capture, in seconds.
    pub max_seconds: u64,
    /// Highest sampling frequency, in Hz.
    pub max_frequency: u64,
}

/// Default capture length: 10 s, as the issue and most profilers use.
pub const DEFAULT_SECONDS: u64 = 10;
/// Default frequency: 99 Hz, off the 100 Hz timer tick to avoid lockstep.
pub const DEFAULT_FREQUENCY: u64 = 99;

/// Why a profile request is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A parameter is malformed or out of range: the caller's mistake.
    #[error("{0}")]
    BadRequest(String),
    /// The sampler could not be set up or read.
    #[error("profiling failed: {0}")]
    Failed(String),
    /// This kind of profile cannot be taken on this host (its program did
    /// not load); the reason is logged at start-up too.
    #[error("{0}")]
    Unavailable(String),
    /// A capture is running and the queue behind it is full.
    #[error(
        "a profile is being taken and {waiting} more requests are waiting \
         (--profile-max-queue); retry in {retry_after} s"
    )]
    Busy {
        /// How many requests wait behind the running capture.
        waiting: usize,
        /// Seconds until a place in the queue frees up, roughly.
        retry_after: u64,
    },
    /// The daemon is shutting down; the capture was cancelled.
    #[error("hostscope is shutting down; the profile was cancelled")]
    ShuttingDown,
}

impl Limits {
    /// Checks raw parameters (as given in a query string or on the command
    /// line) and builds a request. A `cgroup` is looked up in the cgroup2
    /// hierarchy mounted here.
    pub fn request(&self, params: &Params<'_>) -> Result<Request, ProfileError> {
        self.request_in(params, cgroups::cgroup2_root)
    }

    /// [`Limits::request`], with the cgroup2 mount point (if any) found by
    /// `cgroup2_root`, which is called only if a parameter needs it.
    pub(crate) fn request_in(
        &self,
        params: &Params<'_>,
        cgroup2_root: impl FnOnce() -> Option<PathBuf>,
    ) -> Result<Request, ProfileError> {
        let Params {
            kind,
            min_block_us,
            seconds,
            pid,
            frequency,
            cgroup,
            group_by,
        } = *params;
        let bad = |m: String| ProfileError::BadRequest(m);
        // A limit of 0 allows nothing: not even the defaults fit under it.
        if self.max_seconds == 0 || self.max_frequency == 0 {
            return Err(bad("profiles are turned off here \
                 (--profile-max-seconds or --profile-max-frequency is 0)"
                .into()));
        }
        let kind = Kind::parse(kind, min_block_us, frequency)?;
        let seconds = match seconds {
            None => DEFAULT_SECONDS.min(self.max_seconds),
            Some(text) => {
                let value = whole_number(text).ok_or_else(|| {
                    bad(format!(
                        "seconds must be a whole number, not {}",
                        quoted(text)
                    ))
                })?;
                if value < 1 {
                    return Err(bad(format!(
                        "seconds must be at least 1, not {}",
                        quoted(text)
                    )));
                }
                u64::try_from(value)
                    .ok()
                    .filter(|v| *v <= self.max_seconds)
                    .ok_or_else(|| {
                        bad(format!(
                            "seconds {} is above the limit of {} (--profile-max-seconds)",
                            quoted(text),
                            self.max_seconds
                        ))
                    })?
            }
        };
        let pid = match pid {
            None => None,
            Some(text) => {
                let value = whole_number(text)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        bad(format!("pid must be a process id, not {}", quoted(text)))
                    })?;
                if !std::path::Path::new(&format!("/proc/{value}")).exists() {
                    return Err(bad(format!("no process with pid {value}")));
                }
                Some(value)
            }
        };
        let frequency = match frequency {
            None if kind != Kind::Cpu => 0,
            None => DEFAULT_FREQUENCY.min(self.max_frequency),
            Some(text) => {
                let value = whole_number(text).filter(|f| *f > 0).ok_or_else(|| {
                    bad(format!(
                        "frequency must be a positive number of Hz, not {}",
                        quoted(text)
                    ))
                })?;
                u64::try_from(value)
                    .ok()
                    .filter(|f| *f <= self.max_frequency)
                    .ok_or_else(|| {
                        bad(format!(
                            "frequency {} is above the limit of {} Hz (--profile-max-frequency)",
                            quoted(text),
                            self.max_frequency
                        ))
                    })?
            }
        };
        let group_by = GroupBy::parse(group_by)?;
        let cgroup = match cgroup {
            Some(text) => {
                // The syntax first: it needs no mount, and says more.
                let path = cgroups::normalize(text)?;
                Some(cgroups::resolve(cgroup2_root().as_deref(), &path)?)
            }
            None if group_by == GroupBy::Cgroup && cgroup2_root().is_none() => {
                return Err(cgroups::not_mounted("group_by=cgroup"));
            }
            None => None,
        };
        Ok(Request {
            kind,
            seconds,
            pid,
            frequency,
            cgroup,
            group_by,
        })
    }
}

/// `text` as a whole number (surrounding spaces allowed), if it is one.
/// Beyond i128 it is clamped: such values are out of range either way, and
/// "above the limit" says so better than "not a number".
fn whole_number(text: &str) -> Option<i128> {
    match text.trim().parse::<i128>() {
        Ok(value) => Some(value),
        Err(err) => match err.kind() {
            IntErrorKind::PosOverflow => Some(i128::MAX),
            IntErrorKind::NegOverflow => Some(i128::MIN),
            _ => None,
        },
    }
}

/// One symbolized stack and how often it was sampled.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The cgroup's path under the cgroup2 root (printable), or
    /// `[unknown cgroup]`.
    pub cgroup: String,
    /// The process name (at its first sample).
    pub comm: String,
    /// The process id.
    pub pid: u32,
    /// Frames from the outermost caller to the leaf: user frames, then
    /// kernel frames (whose names end in `_[k]`).
    pub frames: Vec<String>,
    /// Where each frame is, beside it: for a frame in a mapped file, the
    /// index of its mapping in [`Profile::mappings`] and its address in
    /// the process; `None` for kernel frames (their addresses are not
    /// shown) and frames outside any file. Of stacks merged because their
    /// names are equal, the first one's.
    pub addresses: Vec<Option<(usize, u64)>>,
    /// Samples ([`Kind::Cpu`]) or nanoseconds blocked ([`Kind::OffCpu`]).
    pub count: u64,
}

/// A file mapped into a sampled process, for pprof: what a server needs
/// to symbolize its addresses again (from debuginfod, by build ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address of the mapping in the process.
    pub start: u64,
    /// One past its last address.
    pub limit: u64,
    /// Offset into the file where it starts.
    pub file_offset: u64,
    /// The file's path as the process sees it (printable).
    pub file: String,
    /// The file's GNU build ID, in hex.
    pub build_id: Option<String>,
}

/// A finished, symbolized profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The stacks.
    pub stacks: Vec<Stack>,
    /// The mappings [`Stack::addresses`] refer to.
    pub mappings: Vec<Mapping>,
    /// The request it answers.
    pub request: Request,
    /// Samples (off CPU: blocks) lost to full maps or stack-map collisions.
    pub dropped: u64,
    /// Where the time went after sampling ended.
    pub timings: Timings,
}

/// What happens between the end of sampling and a symbolized profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Detaching, reading the kernel's maps, and unwinding the last copied
    /// stacks.
    pub unwinding: std::time::Duration,
    /// Naming every frame.
    pub symbolizing: std::time::Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_seconds: 60,
        max_frequency: 1000,
    };

    #[test]
    fn bad_parameters_are_refused_with_a_reason() {
        for (seconds, pid, frequency, says) in [
            (Some("0"), None, None, "at least 1"),
            (Some("-3"), None, None, "at least 1"),
            (Some("soon"), None, None, "whole number"),
            (Some("61"), None, None, "above the limit of 60"),
            (None, Some("abc"), None, "process id"),
            (None, Some("0"), None, "process id"),
            (None, Some("4000000000"), None, "no process"),
            (None, None, Some("0"), "positive"),
            (None, None, Some("5000"), "above the limit of 1000"),
            // Found by the fuzzer: values are quoted back escaped and cut
            // short, and numbers too large for any type are above the limit.
            (Some("5\n\0x"), None, None, "not `5\\n\\0x`"),
            (
                Some("9".repeat(50).as_str()),
                None,
                None,
                "above the limit of 60",
            ),
            (
                None,
                Some("-99999999999999999999999999999999999999999"),
                None,
                "process id",
            ),
            (
                None,
                None,
                Some("7".repeat(5000).as_str()),
                "above the limit of 1000",
            ),
        ] {
            let err = LIMITS
                .request(&Params {
                    seconds,
                    pid,
                    frequency,
                    ..Params::default()
                })
                .unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(says),
                "{seconds:?} {pid:?} {frequency:?}: {err}"
            );
            assert!(message.len() < 120 && !message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn a_zero_limit_turns_profiles_off() {
        for limits in [
            Limits {
                max_seconds: 0,
                max_frequency: 1000,
            },
            Limits {
                max_seconds: 60,
                max_frequency: 0,
            },
        ] {
            let err = limits.request(&Params::default()).unwrap_err();
            assert!(err.to_string().contains("turned off"), "{err}");
        }
    }

    #[test]
    fn defaults_apply() {
        let r = LIMITS.request(&Params::default()).unwrap();
        assert_eq!(r.kind, Kind::Cpu);
        assert_eq!((r.seconds, r.pid, r.frequency), (10, None, 99));
        assert_eq!((r.cgroup, r.group_by), (None, GroupBy::Process));
        let r = LIMITS
            .request(&Params {
                seconds: Some("3"),
                pid: Some("1"),
                frequency: Some("49"),
                ..Params::default()
            })
            .unwrap();
        assert_eq!((r.seconds, r.pid, r.frequency), (3, Some(1), 49));
    }

    #[test]
    fn kind_and_min_block_us_are_checked() {
        let request = |kind, min_block_us, frequency| {
            LIMITS.request(&Params {
                kind,
                min_block_us,
                frequency,
                ..Params::default()
            })
        };
        let r = request(Some("offcpu"), None, None).unwrap();
        let us = |us| NonZeroU32::new(us).unwrap();
        assert_eq!(
            r.kind,
            Kind::OffCpu {
                min_block_us: us(1000)
            }
        );
        assert_eq!(r.frequency, 0);
        let r = request(Some("offcpu"), Some(" 10000000 "), None).unwrap();
        assert_eq!(
            r.kind,
            Kind::OffCpu {
                min_block_us: us(10_000_000)
            }
        );
        let r = request(Some("cpu"), None, Some("49")).unwrap();
        assert_eq!((r.kind, r.frequency), (Kind::Cpu, 49));
        for (kind, min_block_us, frequency, says) in [
            (
                Some("wall"),
                None,
                None,
                "kind must be `cpu` or `offcpu`, not `wall`",
            ),
            (
                Some(""),
                None,
                None,
                "kind must be `cpu` or `offcpu`, not ``",
            ),
            (Some("OFFCPU"), None, None, "not `OFFCPU`"),
            (
                Some("offcpu"),
                Some("0"),
                None,
                "from 1 to 10000000, not `0`",
            ),
            (Some("offcpu"), Some("-5"), None, "from 1 to 10000000"),
            (
                Some("offcpu"),
                Some("1ms"),
                None,
                "whole number of microseconds",
            ),
            (Some("offcpu"), Some("10000001"), None, "not `10000001`"),
            (
                Some("offcpu"),
                Some("9".repeat(60).as_str()),
                None,
                "from 1 to 10000000",
            ),
            (
                Some("offcpu"),
                None,
                Some("99"),
                "frequency applies only to kind=cpu",
            ),
            (
                None,
                Some("1000"),
                None,
                "min_block_us applies only to kind=offcpu",
            ),
            (Some("cpu"), Some("1000"), None, "only to kind=offcpu"),
        ] {
            let err = request(kind, min_block_us, frequency).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(says),
                "{kind:?} {min_block_us:?} {frequency:?}: {message}"
            );
            assert!(message.len() < 120 && !message.contains('\n'), "{message}");
        }
    }

    /// A scratch directory standing in for the cgroup2 root, with one cgroup.
    fn cgroup_root() -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("hostscope-profile-query-{}", std::process::id()));
        std::fs::create_dir_all(root.join("system.slice/nginx.service")).unwrap();
        root
    }

    #[test]
    fn cgroup_and_group_by_are_checked() {
        let root = cgroup_root();
        let request = |cgroup, group_by, root: Option<&PathBuf>| {
            LIMITS.request_in(
                &Params {
                    cgroup,
                    group_by,
                    ..Params::default()
                },
                || root.cloned(),
            )
        };
        let r = request(
            Some("/system.slice/nginx.service/"),
            Some("cgroup"),
            Some(&root),
        )
        .unwrap();
        assert_eq!(r.group_by, GroupBy::Cgroup);
        let cgroup = r.cgroup.unwrap();
        assert_eq!(cgroup.path, "/system.slice/nginx.service");
        assert_eq!(
            cgroup.id,
            std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(root.join("system.slice/nginx.service")).unwrap()
            )
        );
        for (cgroup, group_by, root, says) in [
            (
                None,
                Some("pid"),
                Some(&root),
                "group_by must be `cgroup`, not `pid`",
            ),
            (
                None,
                Some(""),
                Some(&root),
                "group_by must be `cgroup`, not ``",
            ),
            (None, Some("Cgroup"), Some(&root), "not `Cgroup`"),
            (
                None,
                Some("cgroup"),
                None,
                "group_by=cgroup needs cgroup v2",
            ),
            (
                Some("/system.slice"),
                None,
                None,
                "no cgroup2 file system is mounted",
            ),
            (
                Some("system.slice"),
                None,
                Some(&root),
                "from the cgroup2 root",
            ),
            (
                Some("/system.slice/../.."),
                None,
                Some(&root),
                "`.` or `..`",
            ),
            (
                Some("/system.slice/apache.service"),
                None,
                Some(&root),
                "no cgroup `/system.slice/apache.service`",
            ),
            // The syntax is checked before the mount is looked for.
            (Some("relative"), None, None, "from the cgroup2 root"),
        ] {
            let err = request(cgroup, group_by, root).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(says), "{cgroup:?} {group_by:?}: {message}");
            assert!(message.len() < 160 && !message.contains('\n'), "{message}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
