//! Writes the seed inputs built in code (`hostscope::fuzzing::seeds`) into
//! `fuzz/corpus/TARGET/seed-N`, with excerpts of the running kernel's BTF
//! when it has one. Run once after adding a target or changing its seeds:
//! `cargo run -p hostscope-fuzz --example seeds`.

use std::{fs, path::Path};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let vmlinux = fs::read("/sys/kernel/btf/vmlinux").ok();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut per_target = std::collections::HashMap::new();
    for (target, seed) in hostscope::fuzzing::seeds(vmlinux.as_deref()) {
        let n: &mut usize = per_target.entry(target).or_default();
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("seed-{n}"));
        fs::write(&path, seed).with_context(|| format!("writing {}", path.display()))?;
        *n += 1;
    }
    for (target, n) in per_target {
        eprintln!("seeds: wrote {n} seeds for {target}");
    }
    Ok(())
}
