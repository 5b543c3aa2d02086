//! What every fuzz target shares: the counting allocator that checks memory,
//! and the step from a broken promise to a crash, which is how libFuzzer
//! learns of it. The checks themselves are in `hostscope::fuzzing`, where
//! the corpus replay test runs them too.

#[global_allocator]
static ALLOCATOR: hostscope::fuzzing::PeakAlloc = hostscope::fuzzing::PeakAlloc;

/// Checks one input against `target`; crashes if a promise is broken.
#[allow(
    clippy::panic,
    reason = "a crash is how a fuzz target reports a broken property to libFuzzer"
)]
pub fn run(target: &str, data: &[u8]) {
    if let Err(violation) = hostscope::fuzzing::check(target, data) {
        panic!("{target}: {violation}");
    }
}
