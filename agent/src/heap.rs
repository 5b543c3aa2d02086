//! Giving freed memory back to the kernel.

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
