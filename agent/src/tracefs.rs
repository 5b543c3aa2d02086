//! Makes sure tracefs is mounted: classic tracepoints are attached by an id
//! read from it, and a fresh machine may have only an empty mount point.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// tracefs is not there and could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// mount(2) failed.
    #[error(
        "tracefs is not mounted at {path} and mounting it failed ({source}); \
         mount it with `mount -t tracefs nodev {path}`"
    )]
    Mount {
        /// Where tracefs was to be mounted.
        path: PathBuf,
        /// Why the mount failed.
        source: io::Error,
    },
    /// The path contains a NUL byte.
    #[error("the tracefs path {0} contains a NUL byte")]
    BadPath(PathBuf),
}

/// Whether `path` already holds a mounted tracefs (its `events` directory is
/// the part every classic tracepoint needs).
pub fn is_mounted(path: &Path) -> bool {
    path.join("events").is_dir()
}

/// Mounts tracefs at `path` unless it is there already. Returns whether it
/// had to mount it.
pub fn ensure_mounted(path: &Path) -> Result<bool, TracefsError> {
    if is_mounted(path) {
        return Ok(false);
    }
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| TracefsError::BadPath(path.to_owned()))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(true)
    } else {
        Err(TracefsError::Mount {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        })
    }
}
