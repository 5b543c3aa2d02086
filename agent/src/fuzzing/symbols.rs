//! The parsers of what other processes control, on arbitrary bytes:
//! `/proc/PID/maps` lines (their paths are the process's to choose), perf
//! maps, and ELF symbol tables (parsed in the sandbox, which must still
//! not fall over).

use std::{
    fs::File,
    io::{Seek as _, Write as _},
};

use super::Violation;
use crate::{
    profile::procmaps,
    sandbox::{elf::SymbolTable, gopclntab, perfmap::PerfMap, truncate},
};

/// Offsets or addresses looked up per input.
const MAX_LOOKUPS: usize = 256;
/// The longest name any lookup may return.
const MAX_NAME: usize = 512;

/// Maps lines: every mapping kept is executable, non-empty and sorted, and
/// `find` agrees with the ranges.
pub(super) fn maps(data: &[u8]) -> Result<(), Violation> {
    let mappings = procmaps::parse(data);
    for (i, mapping) in mappings.iter().enumerate() {
        if mapping.start >= mapping.end {
            return Err(Violation::Broken(format!("empty mapping {mapping:?}")));
        }
        if mappings
            .get(i + 1)
            .is_some_and(|next| next.start < mapping.start)
        {
            return Err(Violation::Broken("mappings out of order".into()));
        }
        let _ = mapping.module_name();
        let found = procmaps::find(&mappings, mapping.start)
            .and_then(|at| mappings.get(at))
            .is_some_and(|m| (m.start..m.end).contains(&mapping.start));
        if !found {
            return Err(Violation::Broken(format!("find misses {mapping:?}")));
        }
    }
    Ok(())
}

/// Perf maps: lookups of every address the text mentions return a short
/// name or none.
pub(super) fn perf_map(data: &[u8]) -> Result<(), Violation> {
    let map = PerfMap::parse(data);
    for addr in numbers(data).take(MAX_LOOKUPS) {
        for probe in [addr, addr.wrapping_add(1), addr.wrapping_sub(1)] {
            short(map.name(probe))?;
        }
    }
    Ok(())
}

/// ELF symbol tables: reading is an error or a table whose lookups return
/// short names; nothing the file says may make it allocate beyond the
/// file's size (which the memory check of [`super::check`] enforces).
pub(super) fn elf(data: &[u8]) -> Result<(), Violation> {
    let file = memory_file(data).map_err(|e| Violation::Broken(format!("memfd: {e}")))?;
    let Ok(table) = SymbolTable::read(file) else {
        return Ok(());
    };
    let len = data.len() as u64;
    let step = (len / MAX_LOOKUPS as u64).max(1);
    for offset in (0..len.saturating_add(step))
        .step_by(step as usize)
        .take(MAX_LOOKUPS + 1)
    {
        short(table.name_at_offset(offset).as_deref())?;
    }
    Ok(())
}

fn short(name: Option<&str>) -> Result<(), Violation> {
    match name {
        Some(name) if name.len() > MAX_NAME || truncate(name.to_owned()) != name => {
            Err(Violation::Broken(format!("a name of {} bytes", name.len())))
        }
        _ => Ok(()),
    }
}

/// Hexadecimal numbers in `data`, as a perf map writes addresses.
fn numbers(data: &[u8]) -> impl Iterator<Item = u64> + '_ {
    data.split(|b| !b.is_ascii_hexdigit())
        .filter_map(|word| u64::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok())
}

/// `data` as a file with no name, as the sandbox receives one.
pub(super) fn memory_file(data: &[u8]) -> std::io::Result<File> {
    let fd = rustix::fs::memfd_create("fuzz", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(data)?;
    file.rewind()?;
    Ok(file)
}

/// Seeds: this process's own maps, a perf map, and a small ELF file built
/// from a few lines of C with `cc`, if there is one (whole, and cut short).
pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        ("maps", std::fs::read("/proc/self/maps").unwrap_or_default()),
        (
            "maps",
            b"55d0c0a02000-55d0c0a05000 r-xp 00002000 fd:01 1234   /usr/bin/a b\n\
              7f0000000000-7f0000100000 r-xp 00028000 00:2a 99 /tmp/x\\012y.so (deleted)\n\
              7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]\n"
                .to_vec(),
        ),
        (
            "perf_map",
            b"7f0000001000 40 LazyCompile:~main app.js:1\n7f0000002000 10 Interpreter\n\
              0x3000 0x20 stub\r\nnot a line\n"
                .to_vec(),
        ),
    ];
    if let Some(elf) = tiny_elf() {
        for target in ["elf", "unwind"] {
            seeds.push((target, elf.get(..elf.len() / 2).unwrap_or(&elf).to_vec()));
            seeds.push((target, elf.clone()));
        }
    }
    seeds
}

/// A static, symbol-rich, few-KiB ELF file: two functions, one C++-mangled.
fn tiny_elf() -> Option<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("hostscope-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let source = dir.join("tiny.c");
    let out = dir.join("tiny");
    std::fs::write(
        &source,
        "int _Z4workv(void) { return 42; }\n\
         void _start(void) { for (;;) _Z4workv(); }\n",
    )
    .ok()?;
    let built = std::process::Command::new("cc")
        .args(["-Os", "-nostdlib", "-static", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .ok()?
        .success();
    let elf = built.then(|| std::fs::read(&out).ok()).flatten();
    let _ = std::fs::remove_dir_all(&dir);
    elf
}

/// Go's `.gopclntab` (in a stripped Go binary, the process's to choose):
/// at most the cap, each name non-empty and within the name limit, and no
/// more functions than the table has room for.
pub(super) fn gopclntab(data: &[u8]) -> Result<(), Violation> {
    let functions = gopclntab::functions(data, MAX_LOOKUPS * 16);
    if functions.len() > data.len() / 8 {
        return Err(Violation::Broken(format!(
            "{} functions from {} bytes",
            functions.len(),
            data.len()
        )));
    }
    for (_, name) in &functions {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(Violation::Broken(format!("a name of {} bytes", name.len())));
        }
    }
    Ok(())
}
