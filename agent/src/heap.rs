//! Keeping the allocator's memory bounded: few arenas, and freed memory
//! given back to the kernel.

/// glibc arenas the daemon may use. glibc's default is 8 per CPU, and a
/// thread that finds every arena busy gets a new one. A profile starts
/// short-lived threads (symbolization, map readers, rendering, blocking
/// tasks) next to the runtime's, each new one could land in a new arena,
/// and each arena kept about 10 MiB of fragments that `malloc_trim` could
/// not return: a 30-minute soak grew to nine such arenas and 100 MiB.
/// Two arenas keep threads mostly apart; their lock is not contended at the
/// daemon's rate of allocation.
#[cfg(target_env = "gnu")]
const MAX_ARENAS: i32 = 2;

/// Bounds the allocator's arenas; called first, before any thread starts.
/// musl's allocator (the static binary) has no arenas.
pub fn limit_arenas() {
    // SAFETY: mallopt only changes a tunable of the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS);
    }
}

/// Returns the allocator's free memory to the kernel. glibc keeps what is
/// freed in each thread's arena until asked, and a profile's threads
/// (symbolization, map readers, rendering) free tens of MiB: without this,
/// a daemon profiled every minute on a host with many short-lived
/// processes grew from 37 to 95 MiB. musl's allocator (the static binary)
/// returns free memory by itself.
pub fn release_free() {
    // SAFETY: malloc_trim only releases memory that is already free.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
