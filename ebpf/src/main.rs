//! hostscope's kernel programs.
//!
//! Invariant: nothing per-event leaves the kernel. Every program folds its
//! events into histogram or counter maps that the daemon reads at scrape time.
#![no_std]
#![no_main]
// Inline asm on BPF is unstable; the build enables it with RUSTC_BOOTSTRAP=1 (see agent/build.rs).
#![feature(asm_experimental_arch)]

mod block;
mod cgroup;
mod diag;
mod floor;
mod histogram;
mod maps;
mod offcpu;
mod profile;
mod sched;
mod task_storage;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the programs are written so that no panic is reachable; the
    // verifier would reject an infinite loop here.
    unsafe { core::hint::unreachable_unchecked() }
}
