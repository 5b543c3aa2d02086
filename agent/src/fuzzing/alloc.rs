//! Measures how much a parser allocates: a global allocator that counts,
//! per thread, the bytes live since a measurement started and their peak.
//! The fuzz binaries and the corpus replay test install it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicBool, Ordering},
};

/// The system allocator, counting. Install it with `#[global_allocator]`.
#[derive(Debug, Default)]
pub struct PeakAlloc;

/// Whether any allocation went through [`PeakAlloc`]: if not, it is not the
/// global allocator and there is nothing to measure.
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised cells without destructors: reading them never
    // allocates, which would recurse into the allocator.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    // try_with: during thread teardown the cells may be gone; not measuring then.
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let live = LIVE.try_with(|l| {
            l.set(l.get() + delta);
            l.get()
        });
        if let Ok(live) = live {
            let _ = PEAK.try_with(|p| p.set(p.get().max(live)));
        }
    }
}

// SAFETY: every call forwards to the system allocator with the caller's
// arguments unchanged; the bookkeeping touches only thread-local cells.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        record(layout.size() as isize);
        // SAFETY: the caller upholds alloc's contract, which System shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        record(layout.size() as isize);
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize));
        // SAFETY: ptr came from System with this layout (every alloc above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as if the old and new blocks coexisted, as they may.
        record(new_size as isize);
        // SAFETY: ptr came from System with this layout.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        record(-(layout.size() as isize));
        new
    }
}

/// Runs `f` and returns its result and the peak of bytes allocated and not
/// yet freed by this thread meanwhile, or `None` if [`PeakAlloc`] is not
/// the global allocator.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, Option<usize>) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let result = f();
    MEASURING.with(|m| m.set(false));
    let peak = PEAK.with(Cell::get).max(0) as usize;
    (result, INSTALLED.load(Ordering::Relaxed).then_some(peak))
}
