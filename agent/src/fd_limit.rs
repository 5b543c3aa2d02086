//! The open-file limit. Every HTTP connection is a file descriptor, as is
//! every loaded map, program and link, and every file the symbolizer opens.
//! Many systems hand processes a soft limit of 1,024 (for select(2)'s sake)
//! under a far higher hard limit; like Go programs (since Go 1.19), the
//! daemon raises the soft limit to the hard one at start-up. Nothing here
//! uses select(2).

use std::io;

/// Descriptors kept free for everything but connections: the symbolizer's
/// files during a profile, /proc reads, a connection being evicted.
const RESERVE: u64 = 256;

/// The soft limit on open files before and after [`raise_to_hard`].
#[derive(Debug, Clone, Copy)]
pub struct Raised {
    /// The inherited soft limit.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub now: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; needs no privilege.
pub fn raise_to_hard() -> io::Result<Raised> {
    let mut limit = get()?;
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Raised {
        before,
        now: limit.rlim_cur,
    })
}

/// The soft limit now.
pub fn soft() -> io::Result<u64> {
    get().map(|limit| limit.rlim_cur)
}

fn get() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// How many connections fit under `soft_limit` when `open` descriptors are
/// already in use: `wanted`, or less if the limit would not leave
/// [`RESERVE`] free (at least 1: a daemon that serves nothing is no use).
pub fn connections_that_fit(wanted: usize, soft_limit: u64, open: u64) -> usize {
    let room = soft_limit
        .saturating_sub(open.saturating_add(RESERVE))
        .max(1);
    usize::try_from(room).map_or(wanted, |room| wanted.min(room))
}

/// Descriptors this process has open now.
pub fn open_now() -> io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_under_the_limit_with_a_reserve() {
        assert_eq!(connections_that_fit(512, 1024, 100), 512);
        assert_eq!(connections_that_fit(512, 1024, 300), 468);
        assert_eq!(connections_that_fit(512, 200, 100), 1);
        assert_eq!(connections_that_fit(512, u64::MAX, 100), 512);
    }

    #[test]
    fn raising_keeps_the_hard_limit() {
        let raised = raise_to_hard().unwrap();
        assert!(raised.now >= raised.before);
        let limit = get().unwrap();
        assert_eq!(
            (raised.now, limit.rlim_cur),
            (limit.rlim_max, limit.rlim_max)
        );
    }
}
