//! Small operations every collector does on its maps and on kernel memory.

use aya_ebpf::{helpers::bpf_probe_read_kernel, maps::PerCpuArray};
use hostscope_common::histogram::Histogram;

/// Adds one to slot `index` of a per-CPU counter array.
#[inline(always)]
pub fn count(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(value) = counters.get_ptr_mut(index) {
        // SAFETY: this CPU's copy; BPF programs do not migrate mid-run.
        unsafe { *value += 1 };
    }
}

/// Records `value_ns` into slot `index` of a per-CPU histogram array.
#[inline(always)]
pub fn record(histograms: &PerCpuArray<Histogram>, index: u32, value_ns: u64) {
    if let Some(histogram) = histograms.get_ptr_mut(index) {
        // SAFETY: this CPU's copy; BPF programs do not migrate mid-run.
        unsafe { crate::histogram::record(&mut *histogram, value_ns) };
    }
}

/// Reads a `T` at `base + offset` from kernel memory (offsets come from the
/// kernel's BTF, found by the daemon); `None` for a null base or a fault.
#[inline(always)]
pub fn read_at<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    let field = (base as usize).wrapping_add(offset as usize) as *const T;
    // SAFETY: bpf_probe_read_kernel copes with any address.
    unsafe { bpf_probe_read_kernel(field) }.ok()
}

/// Reads a `T` at `base + offset` with a plain load, no helper call.
///
/// Only for a `base` the verifier knows as a typed kernel pointer (a BTF
/// tracepoint's argument, or a pointer read from one this way) and an
/// `offset` that is a load-time constant (a `Global` in the frozen
/// `.rodata`, whose value the verifier sees): it then checks the access
/// against the kernel's BTF and makes it a load that reads zero where the
/// address faults. The verifier refuses the program otherwise, so a misuse
/// fails at load time, not at run time.
#[inline(always)]
pub fn load_at<T: Copy>(base: u64, offset: u32) -> T {
    let field = (base as usize).wrapping_add(offset as usize) as *const T;
    // SAFETY: the verifier checks the load (see above) and the kernel
    // catches a fault, so no address can crash the kernel.
    unsafe { core::ptr::read_volatile(field) }
}

/// An atomic `*target += value` (`BPF_ATOMIC | BPF_ADD`). Written as asm
/// because core's atomics offer no read-modify-write on the BPF target.
///
/// # Safety
/// `target` must be valid and 8-byte aligned.
#[inline(always)]
pub unsafe fn add(target: *mut u64, value: u64) {
    // SAFETY: the caller's promise; the instruction touches only `*target`.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) target,
            in(reg) value,
            options(nostack),
        )
    };
}
