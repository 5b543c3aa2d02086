//! The standard `process_*` metrics of the daemon itself, as every
//! Prometheus client library exports them, read from /proc/self at scrape
//! time.

use std::{fs, io};

/// What /proc says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads this process's numbers. Each scrape reads the short
    /// /proc/self/statm and the CPU-time clock: /proc/self/stat sums over
    /// every thread and cost a tenth of a scrape. It is read once, for the
    /// start time, which does not change.
    pub fn read() -> io::Result<Self> {
        let page_size = rustix::param::page_size() as u64;
        let (virtual_pages, resident_pages) = statm_pages()?;
        let cpu = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Ok(Self {
            cpu_seconds: cpu.tv_sec as f64 + cpu.tv_nsec as f64 * 1e-9,
            resident_bytes: resident_pages.saturating_mul(page_size),
            virtual_bytes: virtual_pages.saturating_mul(page_size),
            open_fds: open_fds()?,
            max_fds: crate::fd_limit::soft()?,
            start_time_seconds: start_time()?,
        })
    }

    /// This process's numbers from /proc/self/stat, which the tests compare
    /// [`ProcessStats::read`] with.
    fn read_stat() -> io::Result<Self> {
        Self::parse(
            &fs::read_to_string("/proc/self/stat")?,
            boot_time(&fs::read_to_string("/proc/stat")?)?,
            open_fds()?,
            crate::fd_limit::soft()?,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size() as u64,
        )
    }

    /// The numbers in a `/proc/PID/stat` line, given the boot time, the
    /// descriptor counts, clock ticks per second and the page size.
    fn parse(
        stat: &str,
        boot_time: u64,
        open_fds: u64,
        max_fds: u64,
        ticks_per_second: u64,
        page_size: u64,
    ) -> io::Result<Self> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat");
        // The command name is in parentheses and may hold anything, ')'
        // included: the fields start after the last one.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')').ok_or_else(bad)? + 1..)
            .ok_or_else(bad)?
            .split_whitespace()
            .collect();
        // Fields numbered as in proc(5); fields[0] is field 3 (state).
        let field = |number: usize| -> io::Result<u64> {
            fields
                .get(number - 3)
                .and_then(|f| f.parse().ok())
                .ok_or_else(bad)
        };
        let ticks = ticks_per_second.max(1) as f64;
        Ok(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            resident_bytes: field(24)?.saturating_mul(page_size),
            virtual_bytes: field(23)?,
            open_fds,
            max_fds,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        })
    }
}

/// The total and resident sizes, in pages, from /proc/self/statm, read
/// through a descriptor opened once: under many scrapers, opening it (a
/// path walk through /proc) cost more than reading it. procfs makes the
/// text anew for each read from offset 0.
fn statm_pages() -> io::Result<(u64, u64)> {
    static STATM: std::sync::OnceLock<fs::File> = std::sync::OnceLock::new();
    let file = match STATM.get() {
        Some(file) => file,
        None => {
            let opened = fs::File::open("/proc/self/statm")?;
            STATM.get_or_init(|| opened)
        }
    };
    // Seven numbers of at most 20 digits each fit.
    let mut buffer = [0u8; 256];
    let read = std::os::unix::fs::FileExt::read_at(file, &mut buffer, 0)?;
    let text = std::str::from_utf8(buffer.get(..read).unwrap_or_default())
        .map_err(|_| io::Error::other("/proc/self/statm is not text"))?;
    statm(text)
}

/// The total and resident sizes, in pages, from a `/proc/PID/statm` line.
fn statm(line: &str) -> io::Result<(u64, u64)> {
    let mut fields = line.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(size)), Some(Ok(resident))) => Ok((size, resident)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected /proc/self/statm",
        )),
    }
}

/// When this process started, read once from /proc/self/stat: /proc/stat
/// (for the boot time) is long, a count per interrupt, and the boot time
/// it shows moves when the wall clock is set, which should not move the
/// daemon's start time.
fn start_time() -> io::Result<f64> {
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    if let Some(start) = START.get() {
        return Ok(*start);
    }
    let start = ProcessStats::read_stat()?.start_time_seconds;
    Ok(*START.get_or_init(|| start))
}

/// Open file descriptors: the size of /proc/self/fd, which is their count
/// since Linux 6.2 and saves listing the directory (a lookup per
/// descriptor, on every scrape); older kernels say 0 there and get the
/// listing (which counts its own descriptor too).
fn open_fds() -> io::Result<u64> {
    match fs::metadata("/proc/self/fd")?.len() {
        0 => Ok(fs::read_dir("/proc/self/fd")?.count() as u64),
        count => Ok(count),
    }
}

/// The boot time (`btime`) from `/proc/stat`, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> io::Result<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no btime in /proc/stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_holds_parentheses_and_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority nice threads
        // itrealvalue starttime vsize rss ...
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 \
                    1000 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let stats = ProcessStats::parse(stat, 1_700_000_000, 9, 1024, 100, 4096).expect("parses");
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 2048 * 4096,
                virtual_bytes: 123_456_789,
                open_fds: 9,
                max_fds: 1024,
                start_time_seconds: 1_700_000_010.0,
            }
        );
        assert!(ProcessStats::parse("garbage", 0, 0, 0, 100, 4096).is_err());
        assert!(ProcessStats::parse("1 (x) S 1 2", 0, 0, 0, 100, 4096).is_err());
    }

    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read().expect("reads /proc/self");
        assert!(stats.resident_bytes > 0 && stats.virtual_bytes >= stats.resident_bytes);
        assert!(stats.open_fds >= 3 && stats.max_fds >= stats.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!(stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 3600.0);
        assert_eq!(boot_time("cpu 1 2\nbtime 17\n").expect("btime"), 17);
    }

    /// The cheap reads say what /proc/self/stat says.
    #[test]
    fn statm_and_the_cpu_clock_agree_with_stat() {
        let stat = ProcessStats::read_stat().expect("reads /proc/self/stat");
        let cheap = ProcessStats::read().expect("reads /proc/self/statm");
        let stat_again = ProcessStats::read_stat().expect("reads /proc/self/stat");
        assert_eq!(cheap.start_time_seconds, stat.start_time_seconds);
        // stat counts whole clock ticks, scaled from tick samples with
        // adjustments that keep it monotonic (it can lag by a tick more);
        // the clock counts nanoseconds.
        let slack = 2.0 / rustix::param::clock_ticks_per_second() as f64;
        assert!(
            cheap.cpu_seconds >= stat.cpu_seconds - slack
                && cheap.cpu_seconds <= stat_again.cpu_seconds * 1.02 + slack,
            "{cheap:?} against {stat:?}"
        );
        let within = |value: u64, low: u64, high: u64| {
            value >= low.min(high) * 9 / 10 && value <= low.max(high) * 11 / 10
        };
        assert!(
            within(
                cheap.virtual_bytes,
                stat.virtual_bytes,
                stat_again.virtual_bytes
            ),
            "{cheap:?} against {stat:?}"
        );
        assert!(
            within(
                cheap.resident_bytes,
                stat.resident_bytes,
                stat_again.resident_bytes
            ),
            "{cheap:?} against {stat:?}"
        );
        assert_eq!(statm("10 3 1 1 0 5 0\n").expect("parses"), (10, 3));
        assert!(statm("x").is_err());
    }
}
