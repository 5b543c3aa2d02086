//! Opening the files that sampled processes map, as the privileged side,
//! for the symbolizer sandbox to read.
//!
//! The process controls its paths: a library can be deleted and replaced by
//! a FIFO (an `open` that never returns), a symlink to /etc/shadow, a
//! device. So a file is first opened with `O_PATH` (which opens nothing:
//! no FIFO handshake, no device side effects), checked with `fstat` to be a
//! regular file of bounded size, and only then reopened for reading
//! through `/proc/self/fd`, non-blocking. Mapped files are reached through
//! `/proc/PID/map_files`, which is the mapped inode itself whatever the
//! path now holds; failing that, through the process's root with
//! `RESOLVE_IN_ROOT`, so that its symlinks cannot lead out of its root, and
//! only if the inode is the one mapped.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::procmaps::Mapping;

/// The largest file handed to the sandbox.
pub const MAX_FILE_BYTES: u64 = 2 << 30;
/// The largest perf map handed to the sandbox.
pub const MAX_PERF_MAP_BYTES: u64 = 64 << 20;

/// Why a process's file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The open or fstat failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// It is a FIFO, socket, device, directory or symlink.
    #[error("not a regular file")]
    NotRegular,
    /// It is larger than the sandbox is given.
    #[error("{0} bytes, over the limit")]
    TooLarge(u64),
    /// The path now names another file than the one mapped.
    #[error("the path now holds another file than the one mapped")]
    Replaced,
    /// A perf map that someone else than the process's user could have written.
    #[error("not owned by the process's user, or writable by others")]
    Untrusted,
}

impl From<rustix::io::Errno> for OpenError {
    fn from(errno: rustix::io::Errno) -> Self {
        Self::Io(errno.into())
    }
}

/// Opens the file behind an executable mapping of `pid` for reading.
pub fn open_mapping(pid: u32, mapping: &Mapping) -> Result<OwnedFd, OpenError> {
    let by_inode = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    let path_fd = match rustix::fs::open(&by_inode, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(err) => match &mapping.path {
            Some(path) if !mapping.deleted => in_root(pid, path)?,
            _ => return Err(err.into()),
        },
    };
    let stat = rustix::fs::fstat(&path_fd)?;
    if stat.st_ino != mapping.inode {
        return Err(OpenError::Replaced);
    }
    reopen(&path_fd, stat, MAX_FILE_BYTES)
}

/// Opens `pid`'s perf map (`/tmp/perf-NSPID.map` in its root), if it has
/// one that its own user wrote and no one else can write.
pub fn open_perf_map(pid: u32) -> Result<Option<OwnedFd>, OpenError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::split_whitespace)
    };
    // The pid as the process knows it, in its own pid namespace.
    let ns_pid = field("NSpid:").and_then(Iterator::last).unwrap_or_default();
    let euid: Option<u32> = field("Uid:")
        .and_then(|mut ids| ids.nth(1))
        .and_then(|id| id.parse().ok());
    let path_fd = match in_root(pid, Path::new(&format!("/tmp/perf-{ns_pid}.map"))) {
        Ok(fd) => fd,
        Err(OpenError::Io(err)) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let stat = rustix::fs::fstat(&path_fd)?;
    let writable_by_others = stat.st_mode & 0o022 != 0;
    if Some(stat.st_uid) != euid || writable_by_others {
        return Err(OpenError::Untrusted);
    }
    reopen(&path_fd, stat, MAX_PERF_MAP_BYTES).map(Some)
}

/// `O_PATH` open of `path` as `pid` sees it: resolved inside its root, no
/// magic links, the last component not followed.
fn in_root(pid: u32, path: &Path) -> Result<OwnedFd, OpenError> {
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    Ok(rustix::fs::openat2(
        &root,
        relative,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Opens an `O_PATH` descriptor's file for reading, if it is a regular file
/// of at most `max_bytes`.
fn reopen(path_fd: &OwnedFd, stat: rustix::fs::Stat, max_bytes: u64) -> Result<OwnedFd, OpenError> {
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(OpenError::NotRegular);
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > max_bytes {
        return Err(OpenError::TooLarge(size));
    }
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", path_fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}
