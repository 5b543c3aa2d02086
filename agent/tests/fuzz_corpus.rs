//! Replays every fuzz input kept in the repository, without libFuzzer or a
//! nightly compiler: `fuzz/corpus/TARGET/` (the minimized corpus) and
//! `fuzz/regressions/TARGET/` (inputs that once broke a parser), through
//! the same checks the fuzz targets run.

use std::{fs, path::PathBuf};

use hostscope::fuzzing::{self, PeakAlloc, TARGETS};

// The checks measure what each input allocates.
#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files of `fuzz/KIND/TARGET/`, sorted; none if the directory is missing.
fn inputs(kind: &str, target: &str) -> std::io::Result<Vec<PathBuf>> {
    let dir = fuzz_dir().join(kind).join(target);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every file that broke `target`, with what it broke.
fn replay(target: &str, files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|path| {
            let broken = match fs::read(path) {
                Ok(data) => fuzzing::check(target, &data).err()?.to_string(),
                Err(err) => format!("unreadable: {err}"),
            };
            Some(format!("{}: {broken}", path.display()))
        })
        .collect()
}

#[test]
fn fuzz_corpus_replays_clean() {
    for target in TARGETS {
        let corpus = inputs("corpus", target.name).unwrap();
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{} is empty: run `cargo run -p hostscope-fuzz --example seeds`",
            target.name
        );
        let failures = replay(target.name, &corpus);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn fuzz_regressions_stay_fixed() {
    for target in TARGETS {
        let regressions = inputs("regressions", target.name).unwrap();
        let failures = replay(target.name, &regressions);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// The seeds built in code, from the running kernel's BTF among others, and
/// that whole BTF (5 MiB here): the largest input any parser gets.
#[test]
fn fuzz_seeds_and_the_running_kernels_btf() {
    let vmlinux = fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
    let seeds = fuzzing::seeds(Some(&vmlinux));
    assert!(seeds.iter().filter(|(t, _)| *t == "btf").count() >= 4);
    for (target, seed) in seeds {
        fuzzing::check(target, &seed).unwrap_or_else(|v| panic!("seed for {target}: {v}"));
    }
    fuzzing::check("btf", &vmlinux).expect("the running kernel's BTF");
}
