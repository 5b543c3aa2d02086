//! Recording into a [`Histogram`] in a way the verifier accepts.

use hostscope_common::histogram::{
    BUCKET_GUESS, GUESS_ENTRIES, Histogram, SEARCH_SPAN, THRESHOLDS_NS, bucket_index_guessed,
};

/// Records `value_ns` into `histogram`.
#[inline(always)]
pub fn record(histogram: &mut Histogram, value_ns: u64) {
    histogram.record_in_bucket(bucket(value_ns), value_ns);
}

/// The bucket of `value_ns`, hidden from LLVM (see [`opaque`]). Each
/// table read masks an index LLVM cannot see through either, so the
/// verifier finds every read in bounds. The guess and one comparison take
/// about half the instructions of the seven-step search.
#[inline(always)]
pub fn bucket(value_ns: u64) -> usize {
    let index = bucket_index_guessed(
        value_ns,
        |i| usize::from(BUCKET_GUESS[opaque(i) & (GUESS_ENTRIES - 1)]),
        |i| THRESHOLDS_NS[opaque(i) & (SEARCH_SPAN - 1)],
    );
    opaque(index)
}

/// Returns `value` unchanged, but LLVM can no longer reason about its range.
/// LLVM can prove a bucket index in range and delete the bounds check; the
/// verifier cannot, and rejects the unchecked map-value access. Passing the
/// index through an empty asm block keeps the check in the bytecode.
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    let out: usize;
    // SAFETY: a register move; no memory is touched.
    unsafe {
        core::arch::asm!("{0} = {1}", out(reg) out, in(reg) value, options(pure, nomem, nostack))
    };
    out
}
