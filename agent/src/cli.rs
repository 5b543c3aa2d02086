//! Command-line surface. Names here are contracts: scripts and unit files use them.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{collector::CollectorKind, quote::quoted};

/// Default listen address. 9100 is node_exporter's and 9435 ebpf_exporter's;
/// 9661 is free in Prometheus' list of default exporter ports.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9661";

/// Default `--web.max-connections`: Prometheus' own default. Far more than
/// scrapers and people need, and half of the 1,024 open files that many
/// systems allow, leaving room for the probes' maps and the symbolizer.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Upper bounds that only catch typos: no daemon needs more.
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
const MAX_QUEUE_LIMIT: usize = 1_000;

/// Where the options every command takes go in each command's help: after
/// its own (which are numbered from 0 in the order they are declared).
const GLOBAL_ORDER: usize = 100;

#[derive(Debug, Parser)]
#[command(name = "hostscope", version, about, long_about = None)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (or a tracing filter such as `hostscope=debug`).
    #[arg(
        long,
        global = true,
        env = "HOSTSCOPE_LOG_LEVEL",
        default_value = "info",
        display_order = GLOBAL_ORDER
    )]
    pub log_level: String,

    /// Log line format: text (for people), logfmt or json (one object per line).
    #[arg(long, global = true, env = "HOSTSCOPE_LOG_FORMAT", value_enum,
          default_value_t = LogFormat::Text, value_name = "FORMAT",
          display_order = GLOBAL_ORDER + 1)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people: time, level, message, fields.
    Text,
    /// `ts=... level=info target=... msg="..." key=value`, as Go exporters write.
    Logfmt,
    /// One JSON object a line: timestamp, level, message, fields, target.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes once and serve Prometheus metrics over HTTP.
    Serve(ServeArgs),
    /// Print a latency histogram at the terminal, like BCC's runqlat.
    Hist(HistArgs),
    /// Take a CPU profile without a daemon: flame graph, folded stacks or pprof.
    Profile(ProfileArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print a manual page (roff), of hostscope or of one of its commands.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (hostscope-COMMAND(1)); none: hostscope(1).
    #[arg(value_parser = crate::generate::parse_command)]
    pub command: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to serve on: `:PORT` (every address, IPv6 and
    /// IPv4), `HOST:PORT` (resolved at start), `IPv4:PORT` or `[IPv6]:PORT`.
    #[arg(long = "web.listen-address", visible_alias = "listen", env = "HOSTSCOPE_LISTEN",
          default_value = DEFAULT_LISTEN, value_name = "ADDR", value_parser = parse_listen_address)]
    pub listen: ListenAddr,

    /// Path to serve the metrics at.
    #[arg(long = "web.telemetry-path", env = "HOSTSCOPE_WEB_TELEMETRY_PATH",
          default_value = "/metrics", value_name = "PATH", value_parser = parse_telemetry_path)]
    pub web_telemetry_path: String,

    /// Turn the kernel's BPF run-time statistics on while the daemon runs,
    /// and export each program's run time and count
    /// (hostscope_bpf_program_*). They cost every BPF program on the host
    /// two clock reads per run.
    #[arg(long = "bpf-stats", env = "HOSTSCOPE_BPF_STATS")]
    pub bpf_stats: bool,

    /// Collectors to enable, comma-separated.
    #[arg(
        long,
        env = "HOSTSCOPE_COLLECTORS",
        value_delimiter = ',',
        default_value = "sched,block,tcp"
    )]
    pub collectors: Vec<CollectorKind>,

    /// Longest CPU profile a request may ask for, in seconds.
    #[arg(long, env = "HOSTSCOPE_PROFILE_MAX_SECONDS", default_value_t = 60)]
    pub profile_max_seconds: u64,

    /// Highest sampling frequency a profile request may ask for, in Hz.
    #[arg(long, env = "HOSTSCOPE_PROFILE_MAX_FREQUENCY", default_value_t = 1000)]
    pub profile_max_frequency: u64,

    /// Profile requests that may wait behind the running capture; more get
    /// HTTP 429 with Retry-After.
    #[arg(long, env = "HOSTSCOPE_PROFILE_MAX_QUEUE", default_value_t = 4,
          value_name = "N", value_parser = parse_max_queue)]
    pub profile_max_queue: usize,

    /// Most HTTP connections open at once. At the limit, the connection idle
    /// the longest is closed to make room for a new one.
    #[arg(long = "web.max-connections", env = "HOSTSCOPE_WEB_MAX_CONNECTIONS",
          default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N",
          value_parser = parse_max_connections)]
    pub web_max_connections: usize,

    /// Web configuration file in exporter-toolkit's format (node_exporter's
    /// web-config.yml): TLS, client certificates, basic auth, response
    /// headers. Read at start-up; /healthz needs no credentials.
    #[arg(
        long = "web.config.file",
        env = "HOSTSCOPE_WEB_CONFIG_FILE",
        value_name = "FILE"
    )]
    pub web_config_file: Option<PathBuf>,

    /// Serve no CPU profiles: /flamegraph.svg, /stacks and
    /// /debug/pprof/profile answer 404, and the profiler is never loaded.
    #[arg(
        long = "web.disable-profiling",
        env = "HOSTSCOPE_WEB_DISABLE_PROFILING"
    )]
    pub web_disable_profiling: bool,

    #[command(flatten)]
    pub maps: MapArgs,

    #[command(flatten)]
    pub cgroups: CgroupArgs,

    /// Bucket layout of per-cgroup histograms (--by-cgroup), never finer
    /// than --classic-buckets: coarse has 15 finite buckets, one per power
    /// of 4 seconds from 238 ns to 64 s (18 series per histogram); fine is
    /// every kernel bucket (124 series).
    #[arg(long, env = "HOSTSCOPE_CGROUP_BUCKETS", value_enum,
          default_value_t = CgroupBuckets::Coarse, value_name = "LAYOUT")]
    pub cgroup_buckets: CgroupBuckets,

    /// Classic `le` buckets of every histogram in the text formats: fine is
    /// every kernel bucket (2^(i/4) s from 119 ns to 128 s, 124 series per
    /// histogram), coarse one per power of 4 (18 series), none only +Inf
    /// (the distribution then travels only as a native histogram, over
    /// protobuf).
    #[arg(long = "classic-buckets", env = "HOSTSCOPE_CLASSIC_BUCKETS", value_enum,
          default_value_t = ClassicBuckets::Coarse, value_name = "LAYOUT")]
    pub classic_buckets: ClassicBuckets,

    #[command(flatten)]
    pub system: SystemArgs,
}

/// Where `serve` listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// `:PORT`: every local address, IPv6 and IPv4 alike, as Go exporters
    /// listen on `:PORT`.
    Any(u16),
    /// One address: given as `IPv4:PORT` or `[IPv6]:PORT`, or a hostname's.
    Socket(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any(port) => write!(f, ":{port}"),
            Self::Socket(addr) => addr.fmt(f),
        }
    }
}

/// What `--web.listen-address` takes, for its errors.
const LISTEN_FORMS: &str =
    "expected :PORT, HOST:PORT, IPv4:PORT or [IPv6]:PORT, such as :9661 or 127.0.0.1:9661";

/// Parses `--web.listen-address`. A hostname is resolved here, once; of its
/// addresses the first IPv4 one is taken if there is one (as Go's
/// net.Listen does), else the first.
pub(crate) fn parse_listen_address(text: &str) -> Result<ListenAddr, String> {
    let fail = |why: String| format!("{why}; {LISTEN_FORMS}");
    // `[IPv6]:PORT` is the one form whose host holds colons.
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((ip, port)) => (Host::V6(ip), port),
            None => return Err(fail("no `]:PORT` after the IPv6 address".into())),
        },
        None => match text.rsplit_once(':') {
            Some(("", port)) => (Host::Any, port),
            Some((host, _)) if host.contains(':') => {
                return Err(fail(
                    "an IPv6 address goes in brackets, as in [::1]:9661".into(),
                ));
            }
            Some((host, port)) => (Host::Name(host), port),
            None => return Err(fail(format!("no port in {}", quoted(text)))),
        },
    };
    // Digits only: `u16::from_str` would take `+80`.
    let port = match port.parse::<u16>() {
        Ok(port_number) if port.bytes().all(|b| b.is_ascii_digit()) => port_number,
        _ => {
            return Err(fail(format!(
                "{} is not a port from 0 to 65535",
                quoted(port)
            )));
        }
    };
    let ip = match host {
        Host::Any => return Ok(ListenAddr::Any(port)),
        Host::V6(ip) => ip
            .parse::<Ipv6Addr>()
            .map_err(|_| fail(format!("{} is not an IPv6 address", quoted(ip))))?
            .into(),
        Host::Name(name) => match name.parse::<Ipv4Addr>() {
            Ok(ip) => ip.into(),
            Err(_) => return resolve(name, port).map(ListenAddr::Socket).map_err(fail),
        },
    };
    Ok(ListenAddr::Socket(SocketAddr::new(ip, port)))
}

/// The host part of a listen address.
enum Host<'a> {
    /// Empty: every address.
    Any,
    /// Inside brackets.
    V6(&'a str),
    /// An IPv4 address or a hostname.
    Name(&'a str),
}

/// The address `name` resolves to that a listener binds: the first IPv4
/// one, else the first.
fn resolve(name: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (name, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {} ({err})", quoted(name)))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{} resolves to no address", quoted(name)))
}

/// Checks `--web.telemetry-path`: a path the router takes as it is (no
/// parameters, nothing to decode) and that no other route has.
fn parse_telemetry_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("{} does not start with /", quoted(text)));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
    {
        return Err(format!(
            "{} is not a path of letters, digits, /, -, ., _ and ~",
            quoted(text)
        ));
    }
    if crate::http::OTHER_ROUTES.contains(&text) {
        return Err(format!(
            "{} is taken: the paths {} serve other things",
            quoted(text),
            crate::http::OTHER_ROUTES.join(", ")
        ));
    }
    Ok(text.to_owned())
}

/// Bucket layouts for per-cgroup histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupBuckets {
    /// One bucket per power of 4 seconds: 238 ns, 954 ns, 3.8 us, ... 64 s.
    Coarse,
    /// Four buckets per power of two, as the host-wide histograms.
    Fine,
}

/// Classic bucket layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClassicBuckets {
    /// Every kernel bucket: four per power of two.
    Fine,
    /// One bucket per power of 4 seconds.
    Coarse,
    /// Only +Inf: native histograms carry the distribution.
    None,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// What to profile: `cpu` (stacks on CPU, sampled) or `offcpu` (where
    /// threads block, weighted by the time blocked).
    #[arg(long, value_name = "cpu|offcpu")]
    pub kind: Option<String>,

    /// Off-CPU profiles: the shortest block counted, in microseconds
    /// (default 1000).
    #[arg(long, value_name = "US")]
    pub min_block_us: Option<String>,

    /// How long to sample, in seconds (default 10).
    #[arg(long)]
    pub seconds: Option<String>,

    /// Only this process.
    #[arg(long)]
    pub pid: Option<String>,

    /// Samples per second per CPU (default 99).
    #[arg(long)]
    pub frequency: Option<String>,

    /// Only tasks in this cgroup v2 or below it: its path under the cgroup2
    /// root, such as /system.slice/nginx.service.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// `cgroup`: each stack's cgroup path as its root frame, above the
    /// process name (svg and folded; pprof has a cgroup label either way).
    #[arg(long, value_name = "cgroup")]
    pub group_by: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = ProfileFormat::Svg)]
    pub format: ProfileFormat,

    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub system: SystemArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileFormat {
    /// An interactive SVG flame graph.
    Svg,
    /// Folded stacks, one per line (flamegraph.pl's input).
    Folded,
    /// Gzipped pprof protobuf (go tool pprof, Pyroscope, Parca).
    Pprof,
}

#[derive(Debug, Args)]
pub struct HistArgs {
    /// Which histogram to print.
    pub collector: CollectorKind,

    /// Seconds per interval.
    #[arg(long, short, env = "HOSTSCOPE_INTERVAL", default_value_t = 1.0,
          value_parser = parse_positive_seconds)]
    pub interval: f64,

    /// Number of intervals to print, then exit (0: until Ctrl-C).
    #[arg(long, short, env = "HOSTSCOPE_COUNT", default_value_t = 1)]
    pub count: u64,

    /// Output format.
    #[arg(long, env = "HOSTSCOPE_FORMAT", value_enum, default_value_t = HistFormat::Text)]
    pub format: HistFormat,

    #[command(flatten)]
    pub maps: MapArgs,

    #[command(flatten)]
    pub cgroups: CgroupArgs,

    #[command(flatten)]
    pub system: SystemArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistFormat {
    /// A runqlat-style table with a distribution bar per bucket.
    Text,
    /// One JSON object per interval, for scripts.
    Json,
}

/// Sizes of the kernel maps whose right size depends on the host.
#[derive(Debug, Clone, Copy, Args)]
pub struct MapArgs {
    /// Block requests that can surely be timed at once, over all disks
    /// together. Each request is timed in one of N slots, picked by its
    /// address (32 bytes each), or, when that slot is taken, in a table of
    /// N more (about 100 bytes each). A request that finds both full is not
    /// measured; it is counted in hostscope_block_io_dropped_total.
    #[arg(long, env = "HOSTSCOPE_BLOCK_MAX_INFLIGHT", value_name = "N",
          default_value_t = hostscope_common::block::BLOCK_START_ENTRIES,
          value_parser = parse_max_inflight)]
    pub block_max_inflight: u32,
}

impl Default for MapArgs {
    fn default() -> Self {
        Self {
            block_max_inflight: hostscope_common::block::BLOCK_START_ENTRIES,
        }
    }
}

/// Per-cgroup attribution.
#[derive(Debug, Clone, Args)]
pub struct CgroupArgs {
    /// Label run-queue, block and TCP series with the cgroup (v2) they belong
    /// to: `cgroup` (its path), and `container_id` and `pod_uid` where the
    /// path names a container or pod.
    #[arg(long, env = "HOSTSCOPE_BY_CGROUP")]
    pub by_cgroup: bool,

    /// Most cgroups with series of their own; the events of cgroups beyond
    /// it are counted under cgroup="other" and in
    /// hostscope_cgroup_overflow_total. Kernel maps are sized from it.
    #[arg(long, env = "HOSTSCOPE_CGROUP_MAX", value_name = "N",
          default_value_t = hostscope_common::cgroup::DEFAULT_CGROUP_MAX,
          value_parser = parse_cgroup_max)]
    pub cgroup_max: u32,

    /// Only cgroups whose path matches this regular expression (anywhere in
    /// the path; anchor it with ^ and $) get series of their own; the others
    /// are counted under cgroup="other".
    #[arg(long, env = "HOSTSCOPE_CGROUP_MATCH", value_name = "REGEX",
          value_parser = parse_cgroup_match)]
    pub cgroup_match: Option<regex::Regex>,
}

impl Default for CgroupArgs {
    fn default() -> Self {
        Self {
            by_cgroup: false,
            cgroup_max: hostscope_common::cgroup::DEFAULT_CGROUP_MAX,
            cgroup_match: None,
        }
    }
}

fn parse_cgroup_max(text: &str) -> Result<u32, String> {
    let max = hostscope_common::cgroup::MAX_CGROUP_MAX as usize;
    let n = parse_count(text, 1, max, "cgroups")?;
    u32::try_from(n).map_err(|_| format!("`{text}` is too large"))
}

fn parse_cgroup_match(text: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(text)
        // A pattern is a handful of path parts; this bounds a hostile one.
        .size_limit(1 << 20)
        .build()
        .map_err(|err| {
            let reason = err.to_string();
            let last = reason.lines().last().unwrap_or("").trim().to_owned();
            format!("`{text}` is not a regular expression ({last})")
        })
}

/// Where the kernel's interfaces live; the defaults are right on every usual system.
#[derive(Debug, Clone, Args)]
pub struct SystemArgs {
    /// No longer used: every probe is a BTF tracepoint, which needs no
    /// tracefs. Still accepted so that existing unit files keep starting.
    #[arg(long, env = "HOSTSCOPE_TRACEFS", hide = true)]
    pub tracefs: Option<PathBuf>,

    /// Kernel BTF to read struct layouts from (the block and tcp probes read
    /// a few kernel fields at offsets found there).
    #[arg(
        long,
        env = "HOSTSCOPE_KERNEL_BTF",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    pub kernel_btf: PathBuf,
}

pub(crate) fn parse_positive_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{} is not a number of seconds", quoted(text)))?;
    // `hist` sleeps for a Duration: it must be one, and not round to zero.
    match Duration::try_from_secs_f64(seconds) {
        Ok(interval) if !interval.is_zero() => Ok(seconds),
        _ => Err(format!(
            "{} must be a positive number of seconds, from 1e-9 to 1e19",
            quoted(text)
        )),
    }
}

/// A whole number in `min..=max`, or a one-line reason.
fn parse_count(text: &str, min: usize, max: usize, what: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a number of {what} from {min} to {max}"
        )),
    }
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    parse_count(text, 1, MAX_CONNECTIONS_LIMIT, "connections")
}

fn parse_max_inflight(text: &str) -> Result<u32, String> {
    // 16 Mi requests, about 2.1 GiB of kernel memory (slots and spill
    // map): far beyond any host.
    let n = parse_count(text, 1, 1 << 24, "requests in flight")?;
    u32::try_from(n).map_err(|_| format!("`{text}` is too large"))
}

fn parse_max_queue(text: &str) -> Result<usize, String> {
    parse_count(text, 0, MAX_QUEUE_LIMIT, "waiting requests")
}

impl SystemArgs {
    /// Says once that `--tracefs` no longer does anything.
    pub fn warn_unused(&self) {
        if self.tracefs.is_some() {
            tracing::warn!("--tracefs (HOSTSCOPE_TRACEFS) is no longer used and can be removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn listen(text: &str) -> ListenAddr {
        parse_listen_address(text).unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    #[track_caller]
    fn socket(text: &str) -> SocketAddr {
        match listen(text) {
            ListenAddr::Socket(addr) => addr,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn listen_address_forms() {
        assert_eq!(listen(":9661"), ListenAddr::Any(9661));
        assert_eq!(listen(":0"), ListenAddr::Any(0));
        assert_eq!(listen(":9661").to_string(), ":9661");
        assert_eq!(socket("127.0.0.1:9661"), "127.0.0.1:9661".parse().unwrap());
        assert_eq!(socket("0.0.0.0:65535"), "0.0.0.0:65535".parse().unwrap());
        assert_eq!(socket("[::]:9661"), "[::]:9661".parse().unwrap());
        assert_eq!(socket("[::1]:80"), "[::1]:80".parse().unwrap());
        assert_eq!(socket("[::ffff:10.0.0.1]:1").port(), 1);
        assert_eq!(socket(DEFAULT_LISTEN).to_string(), DEFAULT_LISTEN);
        // A hostname is resolved; localhost to its IPv4 address, as Go
        // resolves it for a listener.
        assert_eq!(socket("localhost:9661"), "127.0.0.1:9661".parse().unwrap());
    }

    #[test]
    fn definitions_are_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[track_caller]
    fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("hostscope").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap_or_else(|err| panic!("{args:?}: {err}"))
    }

    #[track_caller]
    fn serve_args(args: &[&str]) -> ServeArgs {
        match parse(args).command {
            Command::Serve(serve) => serve,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn listen_has_two_names() {
        let serve = serve_args(&["serve"]);
        assert_eq!(serve.listen.to_string(), DEFAULT_LISTEN);
        let serve = serve_args(&["serve", "--web.listen-address", ":1234"]);
        assert_eq!(serve.listen, ListenAddr::Any(1234));
        let serve = serve_args(&["serve", "--listen", "[::1]:80"]);
        assert_eq!(serve.listen.to_string(), "[::1]:80");
        let both = ["serve", "--listen", ":1", "--web.listen-address", ":2"];
        assert!(Cli::try_parse_from(std::iter::once("hostscope").chain(both)).is_err());
    }

    #[test]
    fn telemetry_path_defaults_to_metrics() {
        assert_eq!(serve_args(&["serve"]).web_telemetry_path, "/metrics");
        let serve = serve_args(&["serve", "--web.telemetry-path", "/custom"]);
        assert_eq!(serve.web_telemetry_path, "/custom");
    }

    #[test]
    fn log_format_is_global() {
        assert_eq!(parse(&["serve"]).log_format, LogFormat::Text);
        assert_eq!(
            parse(&["--log-format", "json", "serve"]).log_format,
            LogFormat::Json
        );
        assert_eq!(
            parse(&["hist", "sched", "--log-format", "logfmt"]).log_format,
            LogFormat::Logfmt
        );
        assert_eq!(
            parse(&["profile", "--log-format=json"]).log_format,
            LogFormat::Json
        );
        let bad = ["hostscope", "--log-format", "xml", "serve"];
        assert!(Cli::try_parse_from(bad).is_err());
    }

    #[test]
    fn completions_and_man_take_what_they_document() {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            assert!(matches!(
                parse(&["completions", shell]).command,
                Command::Completions(_)
            ));
        }
        assert!(Cli::try_parse_from(["hostscope", "completions", "tcsh"]).is_err());
        assert!(Cli::try_parse_from(["hostscope", "completions"]).is_err());
        match parse(&["man"]).command {
            Command::Man(ManArgs { command }) => assert_eq!(command, None),
            other => panic!("{other:?}"),
        }
        match parse(&["man", "serve"]).command {
            Command::Man(ManArgs { command }) => assert_eq!(command.as_deref(), Some("serve")),
            other => panic!("{other:?}"),
        }
        let err = Cli::try_parse_from(["hostscope", "man", "nope"]).expect_err("no such page");
        assert!(err.to_string().contains("serve, hist, profile"), "{err}");
    }

    #[test]
    fn telemetry_paths() {
        for path in [
            "/metrics",
            "/custom",
            "/prometheus/metrics",
            "/-/metrics",
            "/metrics/",
        ] {
            assert_eq!(parse_telemetry_path(path).as_deref(), Ok(path));
        }
        for (path, mentions) in [
            ("", "does not start with /"),
            ("metrics", "does not start with /"),
            ("/metrics?x=1", "not a path of letters"),
            ("/a b", "not a path of letters"),
            ("/{name}", "not a path of letters"),
            ("/*rest", "not a path of letters"),
            ("/m%65trics", "not a path of letters"),
            ("/métriques", "not a path of letters"),
            ("/", "`/` is taken"),
            ("/healthz", "`/healthz` is taken"),
            ("/flamegraph.svg", "is taken"),
            ("/stacks", "is taken"),
            ("/debug/pprof/profile", "is taken"),
        ] {
            let err = parse_telemetry_path(path).expect_err(path);
            assert!(err.contains(mentions), "{path}: `{mentions}` not in: {err}");
        }
    }

    #[track_caller]
    fn listen_error(text: &str, mentions: &str) {
        let err = parse_listen_address(text).expect_err(text);
        assert!(err.contains(mentions), "{text}: `{mentions}` not in: {err}");
        assert!(
            err.contains(LISTEN_FORMS),
            "{text}: says what is expected: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{text}: one line: {err}");
    }

    #[test]
    fn bad_listen_addresses_say_what_is_expected() {
        listen_error("", "no port in ``");
        listen_error("localhost", "no port in `localhost`");
        listen_error("9661", "no port");
        listen_error(":", "`` is not a port");
        listen_error(":99999", "`99999` is not a port");
        listen_error(":+80", "`+80` is not a port");
        listen_error(":-1", "`-1` is not a port");
        listen_error("127.0.0.1:http", "`http` is not a port");
        listen_error("127.0.0.1:", "`` is not a port");
        listen_error("::1:9661", "IPv6 address goes in brackets");
        listen_error(":::9661", "IPv6 address goes in brackets");
        listen_error("[::1]", "no `]:PORT`");
        listen_error("[::1]9661", "no `]:PORT`");
        listen_error("[::1:9661", "no `]:PORT`");
        listen_error("[127.0.0.1]:9661", "`127.0.0.1` is not an IPv6 address");
        listen_error("[]:9661", "`` is not an IPv6 address");
        listen_error("[::1]:9661x", "`9661x` is not a port");
        listen_error(
            "no-such-host.invalid:9661",
            "cannot resolve `no-such-host.invalid`",
        );
        listen_error("bad\nname:80", "cannot resolve `bad\\nname`");
    }
}
