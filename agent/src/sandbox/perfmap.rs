//! Perf maps: `/tmp/perf-PID.map`, where JIT compilers (the JVM with
//! perf-map-agent, Node with --perf-basic-prof, LuaJIT, ...) write one line
//! per generated function: `START SIZE NAME`, hexadecimal. The process
//! writes the file, so it is parsed here, in the sandbox, and every line
//! that doesn't have that shape is skipped.

use std::io::Read as _;

use super::elf::truncate;

/// The most bytes read from one perf map.
pub const MAX_BYTES: u64 = 64 << 20;
/// The most entries kept from one perf map.
const MAX_ENTRIES: usize = 2_000_000;

/// A parsed perf map, sorted by start address.
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// Reads a perf map from `file`, up to [`MAX_BYTES`].
    pub fn read(file: std::fs::File) -> std::io::Result<Self> {
        let mut text = Vec::new();
        file.take(MAX_BYTES).read_to_end(&mut text)?;
        Ok(Self::parse(&text))
    }

    /// Parses perf map text; lines that are not `START SIZE NAME` are skipped.
    pub fn parse(text: &[u8]) -> Self {
        let mut entries = Vec::new();
        for line in text.split(|b| *b == b'\n') {
            if entries.len() >= MAX_ENTRIES {
                break;
            }
            let line = String::from_utf8_lossy(line);
            let mut fields = line.trim_end_matches('\r').splitn(3, ' ');
            let (Some(start), Some(size), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let (Some(start), Some(size)) = (hex(start), hex(size)) else {
                continue;
            };
            let name = name.trim();
            if size == 0 || name.is_empty() {
                continue;
            }
            entries.push((start, start.saturating_add(size), truncate(name.to_owned())));
        }
        // Later lines win: a JIT reuses addresses after freeing code.
        entries.reverse();
        entries.sort_by_key(|(start, _, _)| *start);
        entries.dedup_by_key(|(start, _, _)| *start);
        Self { entries }
    }

    /// The name of the function containing `addr`.
    pub fn name(&self, addr: u64) -> Option<&str> {
        let after = self.entries.partition_point(|(start, _, _)| *start <= addr);
        let (start, end, name) = self.entries.get(after.checked_sub(1)?)?;
        (*start..*end).contains(&addr).then_some(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips_garbage() {
        let map = PerfMap::parse(
            b"1000 10 LazyCompile:~main app.js:1\n\
              nonsense\n\
              2000 zz bad size\n\
              0x3000 0x20 Interpreter\r\n\
              1000 8 replaced\n",
        );
        assert_eq!(map.name(0x1004), Some("replaced"));
        assert_eq!(map.name(0x1009), None);
        assert_eq!(map.name(0x301f), Some("Interpreter"));
        assert_eq!(map.name(0x2000), None);
        assert_eq!(map.name(0x10), None);
    }
}
