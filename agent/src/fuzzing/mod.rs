//! Fuzz entry points: each feeds bytes we don't control to a parser and
//! checks what it promises (no panic; errors rather than garbage; results
//! within limits; bounded memory). The fuzz targets in `fuzz/` and the
//! corpus replay test (`agent/tests/fuzz_corpus.rs`) both call [`check`],
//! so every input the fuzzer ever kept is checked again by `cargo xtask
//! test`. Not an API: hidden from the docs, and the parsers' modules stay
//! private.
//!
//! A new target is a function here and a row in [`TARGETS`], a
//! `fuzz/fuzz_targets/NAME.rs` file with a `[[bin]]` in `fuzz/Cargo.toml`,
//! and seeds in `fuzz/corpus/NAME/` (see ARCHITECTURE.md).

mod alloc;
mod btf;
mod cgroup;
mod profile_query;
mod symbols;
mod unwind;

pub use alloc::PeakAlloc;

/// One parser under test.
#[derive(Debug)]
pub struct Target {
    /// The fuzz target's name: its binary, `fuzz/corpus/NAME/`, `fuzz/regressions/NAME/`.
    pub name: &'static str,
    /// Runs one input and checks the parser's promises.
    pub check: fn(&[u8]) -> Result<(), Violation>,
    /// Bytes the check may allocate (at peak) per byte of input...
    pub bytes_per_input_byte: usize,
    /// ... plus this many.
    pub bytes_overhead: usize,
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target {
        name: "btf",
        check: btf::check,
        // The blob is copied once, and its index costs 8 bytes for every
        // type of at least 12: about 2x, with slack for vectors' growth.
        bytes_per_input_byte: 4,
        bytes_overhead: 64 << 10,
    },
    Target {
        name: "profile_query",
        check: profile_query::check,
        // clap builds its whole command tree on every parse.
        bytes_per_input_byte: 8,
        bytes_overhead: 1 << 20,
    },
    Target {
        name: "maps",
        check: symbols::maps,
        // A path buffer and a small record per line.
        bytes_per_input_byte: 8,
        bytes_overhead: 64 << 10,
    },
    Target {
        name: "perf_map",
        check: symbols::perf_map,
        // The text is read as lossy UTF-8 line by line; each entry keeps
        // its name and two addresses.
        bytes_per_input_byte: 8,
        bytes_overhead: 64 << 10,
    },
    Target {
        name: "gopclntab",
        check: symbols::gopclntab,
        // At most 4,096 functions of a name each (up to 512 bytes), however
        // small the input: the cap, not the input, bounds it.
        bytes_per_input_byte: 8,
        bytes_overhead: 4 << 20,
    },
    Target {
        name: "cgroup",
        check: cgroup::check,
        // The lossy text, the path's components and one mountinfo line's
        // fields at a time.
        bytes_per_input_byte: 8,
        bytes_overhead: 64 << 10,
    },
    Target {
        name: "elf",
        check: symbols::elf,
        // Tables are read whole (at most the file), names copied once, a
        // demangled name at a time.
        bytes_per_input_byte: 8,
        bytes_overhead: 1 << 20,
    },
    Target {
        name: "unwind",
        check: unwind::check,
        // The sections are copied once (at most the file), the stack once
        // per walk, and framehop indexes FDEs of a table without a header.
        bytes_per_input_byte: 80,
        bytes_overhead: 1 << 20,
    },
];

/// A promise a parser broke, or a check that could not run.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// No target has that name.
    #[error("no fuzz target `{0}`; the targets are listed in agent/src/fuzzing/mod.rs")]
    UnknownTarget(String),
    /// The parser returned something it promises never to.
    #[error("{0}")]
    Broken(String),
    /// The parser allocated more than its target allows.
    #[error("allocated {peak} bytes at peak for {input} bytes of input (limit {limit})")]
    Memory {
        /// Peak bytes allocated during the check.
        peak: usize,
        /// The input's length.
        input: usize,
        /// What the target allows for that length.
        limit: usize,
    },
    /// The counting allocator is not installed, so memory cannot be checked.
    #[error(
        "install hostscope::fuzzing::PeakAlloc as the #[global_allocator] to check allocations"
    )]
    NotMeasured,
}

/// Runs `data` through the target called `target` and checks its promises,
/// its allocations included.
pub fn check(target: &str, data: &[u8]) -> Result<(), Violation> {
    let target = TARGETS
        .iter()
        .find(|t| t.name == target)
        .ok_or_else(|| Violation::UnknownTarget(target.to_owned()))?;
    let (result, peak) = alloc::peak_during(|| (target.check)(data));
    result?;
    let peak = peak.ok_or(Violation::NotMeasured)?;
    let limit = data
        .len()
        .saturating_mul(target.bytes_per_input_byte)
        .saturating_add(target.bytes_overhead);
    if peak > limit {
        return Err(Violation::Memory {
            peak,
            input: data.len(),
            limit,
        });
    }
    Ok(())
}

/// Seed inputs built in code, by target, for `fuzz/corpus/` (the fuzz
/// crate's `seeds` example writes them): `vmlinux` is the running kernel's
/// BTF, from which the `btf` seeds take an excerpt.
pub fn seeds(vmlinux: Option<&[u8]>) -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds: Vec<_> = btf::seeds(vmlinux)
        .into_iter()
        .map(|seed| ("btf", seed))
        .collect();
    seeds.extend(
        profile_query::seeds()
            .into_iter()
            .map(|seed| ("profile_query", seed)),
    );
    seeds.extend(symbols::seeds());
    seeds.extend(cgroup::seeds().into_iter().map(|seed| ("cgroup", seed)));
    seeds
}

/// `Ok` if `text` is one line a person can read: not empty, not long, no
/// control characters (a newline would split a log line or an HTTP body).
fn one_line(what: &str, text: &str) -> Result<(), Violation> {
    const MAX_LINE: usize = 200;
    if text.is_empty() || text.chars().count() > MAX_LINE || text.chars().any(char::is_control) {
        return Err(Violation::Broken(format!(
            "{what} is not one short line: {text:?}"
        )));
    }
    Ok(())
}
