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

/// An atomic compare-and-swap (`BPF_ATOMIC | BPF_CMPXCHG`): if `*target`
/// is `current`, writes `new`. Returns what `*target` held before, so the
/// swap happened exactly when that is `current`. Asm for the same reason
/// as [`add`]; the kernel has run the instruction since 5.12.
///
/// # Safety
/// `target` must be valid and 8-byte aligned.
#[inline(always)]
pub unsafe fn compare_exchange(target: *mut u64, current: u64, new: u64) -> u64 {
    let mut previous = current;
    // SAFETY: the caller's promise; the instruction touches only `*target`.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({0} + 0, r0, {1})",
            in(reg) target,
            in(reg) new,
            inout("r0") previous,
            options(nostack),
        )
    };
    previous
}

/// The low 32 bits of a kernel pointer, as a number the verifier lets a
/// program compute with (it refuses shifts and multiplications of a
/// pointer). A 32-bit move is the one operation it allows on a pointer,
/// to programs that may see addresses (CAP_PERFMON), and its result is a
/// plain scalar. The register is named because the target has no `wreg`
/// class without the alu32 feature; the instruction itself is in every
/// kernel we support.
#[inline(always)]
pub fn address_bits(pointer: u64) -> u32 {
    let bits: u64;
    // SAFETY: a register move; no memory is touched.
    unsafe {
        core::arch::asm!(
            "w1 = w1",
            inout("r1") pointer => bits,
            options(pure, nomem, nostack),
        )
    };
    bits as u32
}
