//! `/proc/PID/maps`: which file each executable range of a process maps,
//! and from which offset.
//!
//! The kernel writes the file, but the paths in it are the process's to
//! choose (any bytes but NUL; a newline is escaped as `\012`, and a mapped
//! file that was deleted gets ` (deleted)` appended), so every line is
//! parsed defensively and one that doesn't parse is skipped.

use std::{io::Read as _, path::PathBuf};

/// The most bytes read from one maps file (a process with 65,530 mappings,
/// the kernel's default limit, at about 120 bytes each).
const MAX_BYTES: u64 = 8 << 20;

/// One executable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset into the file of `start`.
    pub offset: u64,
    /// Device (`major << 32 | minor`, as the maps file shows it) and inode
    /// of the mapped file (0 for anonymous memory).
    pub device: u64,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// The path as the process sees it (` (deleted)` removed), or a
    /// pseudo-path such as `[vdso]`; `None` for anonymous memory.
    pub path: Option<PathBuf>,
    /// The file was deleted after it was mapped.
    pub deleted: bool,
}

impl Mapping {
    /// The file's name, for `name+0xOFFSET` frames: its last path component.
    pub fn module_name(&self) -> String {
        self.path.as_ref().map_or_else(
            || "[anon]".to_owned(),
            |path| {
                path.file_name()
                    .map_or_else(|| path.to_string_lossy(), |name| name.to_string_lossy())
                    .into_owned()
            },
        )
    }

    /// Whether this maps a file (rather than `[vdso]`, `[heap]`, ...).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.as_ref().is_some_and(|p| p.is_absolute())
    }
}

/// Reads `pid`'s executable mappings.
pub fn read(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let mut text = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/maps"))?
        .take(MAX_BYTES)
        .read_to_end(&mut text)?;
    Ok(parse(&text))
}

/// The executable mappings in maps-file text, sorted by address.
pub fn parse(text: &[u8]) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = text.split(|b| *b == b'\n').filter_map(parse_line).collect();
    mappings.sort_by_key(|m| m.start);
    mappings
}

/// `start-end perms offset dev inode [path]`, executable lines only.
fn parse_line(line: &[u8]) -> Option<Mapping> {
    let mut rest = line;
    // The next space-separated field; the last may end the line.
    let mut field = || {
        let at = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
        let (field, after) = rest.split_at(at);
        rest = after.get(1..).unwrap_or_default();
        std::str::from_utf8(field).ok()
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let device = field()?;
    let inode = field()?;
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let (start, end, offset) = (hex(start)?, hex(end)?, hex(offset)?);
    if start >= end {
        return None;
    }
    let inode: u64 = inode.parse().ok()?;
    let (major, minor) = device.split_once(':')?;
    let device = hex(major)? << 32 | hex(minor)?;
    let path = rest.trim_ascii_start();
    let (path, deleted) = match path.strip_suffix(b" (deleted)") {
        Some(path) => (path, true),
        None => (path, false),
    };
    let path = (!path.is_empty()).then(|| {
        use std::os::unix::ffi::OsStrExt as _;
        PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_newlines(path)))
    });
    Some(Mapping {
        start,
        end,
        offset,
        device,
        inode,
        path,
        deleted,
    })
}

/// The kernel writes a newline in a path as `\012`.
fn unescape_newlines(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path.get(i..i + 4) == Some(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.extend(path.get(i));
            i += 1;
        }
    }
    out
}

/// The index of the mapping that contains `addr`, in mappings sorted by
/// start.
pub fn find(mappings: &[Mapping], addr: u64) -> Option<usize> {
    let index = mappings
        .partition_point(|m| m.start <= addr)
        .checked_sub(1)?;
    mappings.get(index).filter(|m| addr < m.end).map(|_| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_lines_of_every_kind() {
        let text = b"\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234      /usr/bin/prog with space\n\
55d0c0a02000-55d0c0a05000 r-xp 00002000 fd:01 1234      /usr/bin/prog with space\n\
7f0000000000-7f0000100000 r-xp 00028000 00:2a 99        /tmp/lib\\012x.so (deleted)\n\
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0         [vdso]\n\
7e0000000000-7e0000001000 rwxp 00000000 00:00 0 \n\
garbage line\n\
ffff-0000 r-xp 0 0 0\n";
        let maps = parse(text);
        assert_eq!(maps.len(), 4, "{maps:#?}");
        assert_eq!(maps[0].start, 0x55d0c0a02000);
        assert_eq!(maps[0].offset, 0x2000);
        assert_eq!(
            maps[0].path.as_deref(),
            Some(std::path::Path::new("/usr/bin/prog with space"))
        );
        assert!(maps[0].is_file());
        assert_eq!(maps[0].module_name(), "prog with space");
        let anon = &maps[1];
        assert_eq!((anon.path.clone(), anon.is_file()), (None, false));
        let deleted = &maps[2];
        assert!(deleted.deleted);
        assert_eq!(deleted.module_name(), "lib\nx.so");
        assert!(!maps[3].is_file());
        assert_eq!(find(&maps, 0x7f0000000fff), Some(2));
        assert_eq!(find(&maps, 0x7f0000100000), None);
    }
}
