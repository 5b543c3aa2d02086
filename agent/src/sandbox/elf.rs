//! Function names from an ELF file's symbol tables (`.symtab` and
//! `.dynsym`, or a stripped Go binary's `.gopclntab`), read inside the
//! sandbox from a descriptor the daemon opened.
//!
//! Reads go through `pread` of exactly the ranges needed, never a mapping:
//! a file that its owner truncates meanwhile gives a read error here, not
//! a SIGBUS. Every size that the file states is checked against the file's
//! real size and against [`MAX_TABLE_BYTES`] before it is read, so no
//! header can make this allocate more than the file holds.

use std::{fs::File, io, ops::Range, os::unix::fs::FileExt as _};

use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, ReadCache, ReadRef,
    SymbolKind,
};

use super::{gopclntab, protocol::MAX_NAME};

/// The most bytes of symbol and string tables read from one file.
pub const MAX_TABLE_BYTES: u64 = 96 << 20;
/// The most symbols kept from one file.
const MAX_SYMBOLS: usize = 2_000_000;
/// How far back from the nearest preceding symbol a lookup looks for one
/// that contains the address (symbols may nest or alias).
const LOOKBACK: usize = 8;

/// Why a file has no symbol table here.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("reading the file: {0}")]
    Io(#[from] io::Error),
    /// It is not an ELF file this reader understands.
    #[error("not a readable ELF file: {0}")]
    Parse(#[from] object::Error),
    /// Its tables are larger than [`MAX_TABLE_BYTES`].
    #[error("its symbol tables take {0} bytes, more than the limit")]
    TooLarge(u64),
}

/// The functions of one ELF file, sorted by address.
#[derive(Debug)]
pub struct SymbolTable {
    /// Loadable segments: file range, and the virtual address it loads at.
    segments: Vec<(Range<u64>, u64)>,
    /// (start, end) virtual addresses and the name's range in `names`.
    symbols: Vec<(u64, u64, Range<u32>)>,
    names: String,
    /// The GNU build ID (`.note.gnu.build-id`), in lowercase hex, as
    /// debuginfod and pprof servers look files up by it.
    pub build_id: Option<String>,
}

/// The longest build ID kept: SHA-1 IDs are 20 bytes, some linkers write 32.
const MAX_BUILD_ID: usize = 64;

impl SymbolTable {
    /// Reads the symbol tables of `file`.
    pub fn read(file: File) -> Result<Self, ElfError> {
        let size = file.metadata()?.len();
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache)?;

        // Symbol and string tables are read whole, once, into memory:
        // object reads names one at a time otherwise, one syscall each.
        let mut table_ranges = Vec::new();
        let mut total = 0u64;
        for section in elf.sections() {
            // Tables under other names are still found by object (through
            // their section types), only more slowly.
            if !matches!(
                section.name(),
                Ok(".symtab" | ".dynsym" | ".strtab" | ".dynstr")
            ) {
                continue;
            }
            if let Some((offset, len)) = section.file_range() {
                let end = offset.checked_add(len).filter(|end| *end <= size);
                if end.is_none() {
                    continue;
                }
                total = total.saturating_add(len);
                table_ranges.push(offset..offset + len);
            }
        }
        // A Go binary without .symtab still has the runtime's own table.
        let gopclntab = if elf.section_by_name(".symtab").is_none() {
            elf.section_by_name(".gopclntab")
                .and_then(|section| section.file_range())
                .filter(|(offset, len)| offset.checked_add(*len).is_some_and(|end| end <= size))
        } else {
            None
        };
        if let Some((_, len)) = gopclntab {
            total = total.saturating_add(len);
        }
        if total > MAX_TABLE_BYTES {
            return Err(ElfError::TooLarge(total));
        }
        let build_id = elf
            .build_id()
            .ok()
            .flatten()
            .filter(|id| !id.is_empty() && id.len() <= MAX_BUILD_ID)
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
        let segments: Vec<(Range<u64>, u64)> = elf
            .segments()
            .filter_map(|segment| {
                let (offset, len) = segment.file_range();
                Some((offset..offset.checked_add(len)?, segment.address()))
            })
            .collect();
        drop(elf);
        let file = cache.into_inner();
        let go_functions = match gopclntab {
            Some((offset, len)) => {
                let mut table =
                    vec![0u8; usize::try_from(len).map_err(|_| ElfError::TooLarge(len))?];
                file.read_exact_at(&mut table, offset)?;
                gopclntab::functions(&table, MAX_SYMBOLS)
            }
            None => Vec::new(),
        };
        let tables = Preloaded::read(&file, &table_ranges)?;
        let rest = ReadCache::new(file);
        let reader = Layered {
            tables: &tables,
            rest: &rest,
        };
        let elf = object::File::parse(reader)?;

        let mut symbols = Vec::new();
        let mut names = String::new();
        for symbol in elf.symbols().chain(elf.dynamic_symbols()) {
            if symbols.len() >= MAX_SYMBOLS {
                break;
            }
            if symbol.kind() != SymbolKind::Text || symbol.address() == 0 || symbol.is_undefined() {
                continue;
            }
            let Ok(name) = symbol.name_bytes() else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let name = String::from_utf8_lossy(name.get(..MAX_NAME * 4).unwrap_or(name));
            let Some(at) = push_name(&mut names, &name) else {
                break;
            };
            let start = symbol.address();
            symbols.push((start, start.saturating_add(symbol.size()), at));
        }
        for (start, name) in go_functions {
            if symbols.len() >= MAX_SYMBOLS {
                break;
            }
            let Some(at) = push_name(&mut names, &name) else {
                break;
            };
            // No size in the table: each reaches to the next (below).
            symbols.push((start, start, at));
        }
        symbols.sort_unstable_by_key(|(start, end, _)| (*start, std::cmp::Reverse(*end)));
        symbols.dedup_by_key(|(start, _, _)| *start);
        // Symbols without a size (assembly labels) reach to the next one.
        for i in 0..symbols.len() {
            let next = symbols.get(i + 1).map(|(start, _, _)| *start);
            if let (Some(symbol), Some(next)) = (symbols.get_mut(i), next)
                && symbol.1 == symbol.0
            {
                symbol.1 = next;
            }
        }
        Ok(Self {
            segments,
            symbols,
            names,
            build_id,
        })
    }

    /// How many symbols the table holds (for cache accounting).
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// The demangled name of the function at `offset` into the file.
    pub fn name_at_offset(&self, offset: u64) -> Option<String> {
        let address = self
            .segments
            .iter()
            .find(|(range, _)| range.contains(&offset))
            .map(|(range, vaddr)| vaddr.wrapping_add(offset - range.start))?;
        self.name_at_address(address)
    }

    fn name_at_address(&self, address: u64) -> Option<String> {
        let after = self
            .symbols
            .partition_point(|(start, _, _)| *start <= address);
        let (_, _, name) = self.symbols[..after]
            .iter()
            .rev()
            .take(LOOKBACK)
            .find(|(start, end, _)| (*start..*end).contains(&address))?;
        let name = self.names.get(name.start as usize..name.end as usize)?;
        Some(demangle(name))
    }
}

/// A readable name for a mangled Rust or C++ symbol, cut to [`MAX_NAME`].
pub fn demangle(name: &str) -> String {
    let readable = if let Ok(rust) = rustc_demangle::try_demangle(name) {
        format!("{rust:#}")
    } else if name.starts_with("_Z")
        && let Some(cpp) = cpp_demangle::Symbol::new(name)
            .ok()
            .and_then(|s| s.demangle().ok())
    {
        cpp
    } else {
        name.to_owned()
    };
    truncate(readable)
}

/// Cuts `name` to at most [`MAX_NAME`] bytes, on a character boundary.
pub fn truncate(mut name: String) -> String {
    if name.len() > MAX_NAME {
        let mut end = MAX_NAME - 3;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name.push_str("...");
    }
    name
}

/// Ranges of a file read into memory up front.
struct Preloaded(Vec<(u64, Vec<u8>)>);

impl Preloaded {
    fn read(file: &File, ranges: &[Range<u64>]) -> io::Result<Self> {
        let mut chunks = Vec::with_capacity(ranges.len());
        for range in ranges {
            let len = usize::try_from(range.end - range.start).map_err(io::Error::other)?;
            let mut bytes = Vec::new();
            bytes.try_reserve_exact(len).map_err(io::Error::other)?;
            bytes.resize(len, 0);
            file.read_exact_at(&mut bytes, range.start)?;
            chunks.push((range.start, bytes));
        }
        Ok(Self(chunks))
    }

    fn find(&self, offset: u64, len: u64) -> Option<&[u8]> {
        self.0.iter().find_map(|(start, bytes)| {
            let from = offset.checked_sub(*start)?;
            let to = from.checked_add(len)?;
            bytes.get(usize::try_from(from).ok()?..usize::try_from(to).ok()?)
        })
    }
}

/// Reads from the preloaded tables where they cover a request, and from
/// the file otherwise (headers, which are small).
#[derive(Clone, Copy)]
struct Layered<'a> {
    tables: &'a Preloaded,
    rest: &'a ReadCache<File>,
}

impl<'a> ReadRef<'a> for Layered<'a> {
    fn len(self) -> Result<u64, ()> {
        self.rest.len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        match self.tables.find(offset, size) {
            Some(bytes) => Ok(bytes),
            None => self.rest.read_bytes_at(offset, size),
        }
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        let len = range.end.checked_sub(range.start).ok_or(())?;
        match self.tables.find(range.start, len) {
            Some(bytes) => {
                let end = bytes.iter().position(|b| *b == delimiter).ok_or(())?;
                bytes.get(..end).ok_or(())
            }
            None => self.rest.read_bytes_at_until(range, delimiter),
        }
    }
}

/// Appends `name` to `names` and returns where it is, or `None` once
/// `names` outgrows the `u32` ranges that keep the table small.
fn push_name(names: &mut String, name: &str) -> Option<Range<u32>> {
    let at = u32::try_from(names.len()).ok()?;
    let end = u32::try_from(names.len() + name.len()).ok()?;
    names.push_str(name);
    Some(at..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::procmaps;

    #[inline(never)]
    fn a_function_the_test_looks_up() -> u64 {
        std::hint::black_box(42)
    }

    /// This test binary names one of its own functions from its own file,
    /// through the offset its mapping gives, as the daemon does for others.
    #[test]
    fn names_a_function_of_this_binary_by_file_offset() {
        let addr = a_function_the_test_looks_up as *const () as u64 + 1;
        let maps = procmaps::read(std::process::id()).unwrap();
        let mapping = &maps[procmaps::find(&maps, addr).unwrap()];
        let offset = addr - mapping.start + mapping.offset;
        let table = SymbolTable::read(File::open("/proc/self/exe").unwrap()).unwrap();
        let name = table.name_at_offset(offset).unwrap();
        assert!(name.ends_with("a_function_the_test_looks_up"), "{name}");
        assert_eq!(table.name_at_offset(u64::MAX), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let file = tempfile_with(b"\x7fELF\x02\x01\x01garbage");
        assert!(SymbolTable::read(file).is_err());
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        use std::io::Write as _;
        let path = std::env::temp_dir().join(format!("hostscope-elf-test-{}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn demangles_rust_and_cpp_and_caps_length() {
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("_Z3fooi"), "foo(int)");
        assert_eq!(demangle("plain_c"), "plain_c");
        assert!(demangle(&"x".repeat(5000)).len() <= MAX_NAME);
    }
}
