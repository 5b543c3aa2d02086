//! Unwinding copied user stacks from the binaries' unwind tables, in the
//! sandbox: code built without frame pointers (most of a distribution's C
//! and C++, Rust by default) can only be walked this way. The tables
//! (`.eh_frame` with its `.eh_frame_hdr` index, or `.debug_frame`) are read
//! with `object`; framehop (samply's unwinder, on gimli) evaluates them.
//!
//! Each file's tables also say whether it keeps frame pointers, so that
//! the daemon can let the kernel walk such processes itself.

use std::{fs::File, ops::Range, os::unix::fs::FileExt as _, sync::Arc};

use framehop::{
    Error as UnwindError, ExplicitModuleSectionInfo, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use gimli::{BaseAddresses, CallFrameInstruction, CieOrFde, EhFrame, LittleEndian, UnwindSection};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, read::ReadCache};

use super::protocol::{StackCopy, Unwound};

/// Section bytes shared by every module that maps the file.
type Bytes = Arc<[u8]>;
/// One mapping of a file, with its tables, as framehop looks it up.
pub type MappedModule = Module<Bytes>;

/// The largest unwind section read (Chromium's `.eh_frame` is ~10 MiB).
const MAX_SECTION_BYTES: u64 = 64 << 20;
/// The most frames one stack is unwound to, as the kernel's stack map.
pub const MAX_FRAMES: usize = 127;
/// FDEs looked at to decide whether a file keeps frame pointers.
const FDES_SAMPLED: usize = 4_096;
/// x86-64 DWARF register 6.
const RBP: gimli::Register = gimli::X86_64::RBP;

/// A section's address in the file's own address space, and its bytes.
#[derive(Debug, Clone)]
struct Section {
    svma: Range<u64>,
    bytes: Bytes,
}

/// One file's unwind tables and loadable segments.
#[derive(Debug)]
pub struct UnwindTables {
    /// File range of each loadable segment and the address it loads at.
    segments: Vec<(Range<u64>, u64)>,
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    eh_frame: Option<Section>,
    eh_frame_hdr: Option<Section>,
    debug_frame: Option<Bytes>,
    /// Whether walking this file's code by frame pointers is sound: Go
    /// code (which always keeps them), code whose unwind tables define the
    /// frame by `%rbp`, or code with no tables at all (nothing else can
    /// walk it).
    pub frame_pointers: bool,
}

impl UnwindTables {
    /// Reads `file`'s unwind tables.
    pub fn read(file: &File) -> Result<Self, String> {
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache).map_err(|e| e.to_string())?;
        let range = |name: &str| {
            elf.section_by_name(name)
                .map(|s| s.address()..s.address().saturating_add(s.size()))
        };
        let read = |name: &str| -> Result<Option<Section>, String> {
            let Some(section) = elf.section_by_name(name) else {
                return Ok(None);
            };
            // Compressed sections (.zdebug, SHF_COMPRESSED) are not read:
            // their declared size is the file's word, and a bomb's.
            let Ok(file_range) = section.compressed_file_range() else {
                return Ok(None);
            };
            if file_range.format != object::CompressionFormat::None {
                return Ok(None);
            }
            let (offset, len) = (file_range.offset, file_range.compressed_size);
            if len > MAX_SECTION_BYTES || offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(format!(
                    "{name}: {len} bytes at {offset}, outside the file or over the limit"
                ));
            }
            let mut bytes = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
            file.read_exact_at(&mut bytes, offset)
                .map_err(|e| e.to_string())?;
            Ok(Some(Section {
                svma: section.address()..section.address().saturating_add(len),
                bytes: bytes.into(),
            }))
        };
        let eh_frame = read(".eh_frame")?;
        let eh_frame_hdr = read(".eh_frame_hdr")?;
        let debug_frame = read(".debug_frame")?;
        let go = elf.section_by_name(".gopclntab").is_some()
            || elf.section_by_name(".go.buildinfo").is_some()
            || elf.section_by_name(".note.go.buildid").is_some();
        let segments = elf
            .segments()
            .filter_map(|segment| {
                let (offset, len) = segment.file_range();
                Some((offset..offset.checked_add(len)?, segment.address()))
            })
            .collect();
        let text = range(".text");
        let frame_pointers = go
            || match (&eh_frame, &debug_frame) {
                (Some(eh), _) => keeps_frame_pointers(eh, text.clone()),
                (None, None) => true,
                (None, Some(_)) => false,
            };
        Ok(Self {
            segments,
            text,
            got: range(".got"),
            eh_frame,
            eh_frame_hdr,
            debug_frame: debug_frame.map(|s| s.bytes),
            frame_pointers,
        })
    }

    /// Bytes held, for the cache's bound.
    pub fn len(&self) -> usize {
        self.eh_frame.as_ref().map_or(0, |s| s.bytes.len())
            + self.eh_frame_hdr.as_ref().map_or(0, |s| s.bytes.len())
            + self.debug_frame.as_ref().map_or(0, |b| b.len())
    }

    /// The module for a mapping of this file at `avma` (its start, end and
    /// file offset), or `None` if no segment holds that offset.
    pub fn module(&self, avma: Range<u64>, offset: u64) -> Option<MappedModule> {
        let (file_range, vaddr) = self.segments.iter().find(|(r, _)| r.contains(&offset))?;
        let svma = vaddr.checked_add(offset - file_range.start)?;
        // ELF addresses are relative to 0: the module's base is the bias.
        let base_avma = avma.start.wrapping_sub(svma);
        Some(Module::new(
            String::new(),
            avma,
            base_avma,
            ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: self.text.clone(),
                got_svma: self.got.clone(),
                eh_frame_svma: self.eh_frame.as_ref().map(|s| s.svma.clone()),
                eh_frame: self.eh_frame.as_ref().map(|s| s.bytes.clone()),
                eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
                eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|s| s.bytes.clone()),
                debug_frame: self.debug_frame.clone(),
                ..ExplicitModuleSectionInfo::default()
            },
        ))
    }
}

/// Whether most functions described in `eh_frame` define their frame by
/// `%rbp` (`-fno-omit-frame-pointer`). Code built without frame pointers
/// keeps the frame relative to `%rsp` throughout.
fn keeps_frame_pointers(eh_frame: &Section, text: Option<Range<u64>>) -> bool {
    let mut section = EhFrame::new(&eh_frame.bytes, LittleEndian);
    section.set_address_size(8);
    let mut bases = BaseAddresses::default().set_eh_frame(eh_frame.svma.start);
    if let Some(text) = text {
        bases = bases.set_text(text.start);
    }
    let (mut functions, mut with_rbp) = (0usize, 0usize);
    let mut entries = section.entries(&bases);
    while functions < FDES_SAMPLED {
        let Ok(Some(entry)) = entries.next() else {
            break;
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
            continue;
        };
        // Stubs (PLT entries, tiny leaves) have no frame either way.
        if fde.len() < 16 {
            continue;
        }
        functions += 1;
        let mut instructions = fde.instructions(&section, &bases);
        while let Ok(Some(instruction)) = instructions.next() {
            if matches!(
                instruction,
                CallFrameInstruction::DefCfaRegister { register }
                | CallFrameInstruction::DefCfa { register, .. }
                    if register == RBP
            ) {
                with_rbp += 1;
                break;
            }
        }
    }
    functions > 0 && with_rbp * 2 >= functions
}

/// An unwinder for one process's set of modules, with its cache of
/// unwind rules: kept across requests, as one process is sampled many
/// times with the same mappings.
pub struct ProcessUnwinder {
    unwinder: UnwinderX86_64<Bytes>,
    cache: CacheX86_64,
}

impl ProcessUnwinder {
    /// An unwinder for a process with these executable mappings.
    pub fn new(modules: &[MappedModule]) -> Self {
        let mut unwinder = UnwinderX86_64::new();
        for module in modules {
            unwinder.add_module(module.clone());
        }
        Self {
            unwinder,
            cache: CacheX86_64::new(),
        }
    }

    /// Unwinds each copied stack. A stack that could not be followed to
    /// its root is marked incomplete: its last address is the last one
    /// that was sound.
    pub fn unwind(&mut self, stacks: &[StackCopy]) -> Vec<Unwound> {
        stacks.iter().map(|copy| self.unwind_one(copy)).collect()
    }

    fn unwind_one(&mut self, copy: &StackCopy) -> Unwound {
        let mut read = |addr: u64| -> Result<u64, ()> {
            let from = usize::try_from(addr.checked_sub(copy.base).ok_or(())?).map_err(|_| ())?;
            let word = copy
                .bytes
                .get(from..from.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp);
        let mut frames = self
            .unwinder
            .iter_frames(copy.ip, regs, &mut self.cache, &mut read);
        let mut addrs = Vec::new();
        let complete = loop {
            if addrs.len() >= MAX_FRAMES {
                break false;
            }
            match frames.next() {
                Ok(Some(frame)) => addrs.push(frame.address()),
                // A null return address is how the outermost frame ends.
                Ok(None) | Err(UnwindError::ReturnAddressIsNull) => break true,
                Err(_) => break false,
            }
        };
        Unwound { addrs, complete }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write as _, path::PathBuf, process::Command};

    /// Compiles a few functions with `flags` (gcc is on every machine
    /// that runs these tests: it builds the integration tests' programs).
    fn compiled(name: &str, flags: &[&str]) -> File {
        let dir = std::env::temp_dir().join(format!("hostscope-unwind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join(format!("{name}.c"));
        let mut file = File::create(&source).unwrap();
        for i in 0..8 {
            writeln!(file, "int f{i}(int *p, int n);").unwrap();
        }
        for i in 0..8 {
            writeln!(
                file,
                "__attribute__((noinline)) int f{i}(int *p, int n) {{ int a[16]; \
                 for (int i = 0; i < 16; i++) a[i] = p[i] * n; return f{}(a, n - 1) + a[n & 15]; }}",
                (i + 1) % 8
            )
            .unwrap();
        }
        writeln!(
            file,
            "int main(void) {{ int a[16] = {{0}}; return f0(a, 3); }}"
        )
        .unwrap();
        let out: PathBuf = dir.join(name);
        let status = Command::new("cc")
            .arg(&source)
            .args(flags)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        File::open(out).unwrap()
    }

    #[test]
    fn tells_code_with_frame_pointers_from_code_without() {
        let with = compiled("with_fp", &["-O2", "-fno-omit-frame-pointer"]);
        let without = compiled("without_fp", &["-O2", "-fomit-frame-pointer"]);
        assert!(UnwindTables::read(&with).unwrap().frame_pointers);
        let tables = UnwindTables::read(&without).unwrap();
        assert!(!tables.frame_pointers);
        assert!(tables.len() > 0);
    }

    #[test]
    fn garbage_is_an_error_and_garbage_stacks_end_truncated() {
        let mut file = tempfile();
        file.write_all(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0xff, 0xff])
            .unwrap();
        assert!(UnwindTables::read(&file).is_err());

        // A real module and a stack of noise: no panic, and a bounded walk.
        let exe = compiled("noise", &["-O2", "-fomit-frame-pointer"]);
        let tables = UnwindTables::read(&exe).unwrap();
        let (range, vaddr) = tables.segments[0].clone();
        let module = tables.module(0x40_0000..0x50_0000, range.start).unwrap();
        let noise: Vec<u8> = (0..16_384u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let stacks: Vec<StackCopy> = (0..64u64)
            .map(|i| StackCopy {
                ip: 0x40_0000 + vaddr + i * 97,
                sp: 0x7fff_0000,
                bp: 0x7fff_0100,
                base: 0x7fff_0000,
                bytes: noise.clone(),
            })
            .collect();
        for walked in ProcessUnwinder::new(&[module]).unwind(&stacks) {
            assert!(walked.addrs.len() <= MAX_FRAMES);
            assert!(!walked.addrs.is_empty());
        }
    }

    fn tempfile() -> File {
        let path =
            std::env::temp_dir().join(format!("hostscope-unwind-garbage-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }
}
