//! The sandbox process itself (`hostscope __symbolize-sandbox`, started
//! only by the daemon): it answers [`Request`]s about the files the daemon
//! passes it, with no capabilities, under the system-call filter of
//! [`super::seccomp`] and the limits the daemon set before exec.

use std::{
    collections::HashMap,
    fs::File,
    os::{
        fd::{AsFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    process::ExitCode,
    rc::Rc,
};

use caps::CapSet;

use super::{
    elf::SymbolTable,
    perfmap::PerfMap,
    protocol::{
        self, FileId, MAX_ADDRS, MAX_MODULES, MAX_STACKS, ModuleRef, ProcessStacks, Reply, Request,
        Unwound,
    },
    seccomp,
    unwind::{MappedModule, ProcessUnwinder, UnwindTables},
};

/// Unwind tables kept between requests, up to this many bytes in all.
const CACHE_UNWIND_BYTES: usize = 64 << 20;
/// Modules (a file at an address) kept between requests.
const CACHE_MODULES: usize = 16_384;
/// Per-process unwinders kept between requests.
const CACHE_UNWINDERS: usize = 1_024;

/// A file mapped at an address: its identity, start, end and offset.
type ModuleKey = (FileId, u64, u64, u64);

/// Parsed symbol tables kept between requests, up to this many symbols in
/// all (about 64 MiB, a quarter of the sandbox's address space): a host
/// runs the same few binaries in many processes.
const CACHE_SYMBOLS: usize = 1_000_000;

/// A file as it is now: the same inode rewritten is another file.
type FileKey = (u64, u64, u64, i64, i64);

/// Runs the sandbox on the socket at standard input until the daemon
/// closes it.
pub fn run() -> ExitCode {
    match caps::read(None, CapSet::Permitted) {
        Ok(permitted) if permitted.is_empty() => {}
        _ => {
            eprintln!(
                "hostscope: error: the symbolizer sandbox refuses to run with capabilities; \
                 only the daemon starts it"
            );
            return ExitCode::from(2);
        }
    }
    if let Err(err) = seccomp::install() {
        eprintln!(
            "hostscope: error: the symbolizer sandbox cannot install its seccomp filter: {err}"
        );
        return ExitCode::FAILURE;
    }
    // SAFETY: standard input is the daemon's socket, open for the whole run.
    let socket = unsafe { BorrowedFd::borrow_raw(0) };
    let mut cache = Cache::default();
    loop {
        let (request, fd) = match protocol::recv::<Request>(socket) {
            Ok(Some(frame)) => frame,
            Ok(None) => return ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("hostscope: symbolizer sandbox: bad request: {err}");
                return ExitCode::FAILURE;
            }
        };
        let reply = match (request, fd) {
            (Request::Unwind { processes }, _) => cache.unwind(&processes),
            (_, None) => Reply::Failed("no file was passed with the request".into()),
            (request, Some(fd)) => answer(&mut cache, request, File::from(fd)),
        };
        if protocol::send(socket, &reply, None).is_err() {
            return ExitCode::FAILURE;
        }
    }
}

fn answer(cache: &mut Cache, request: Request, file: File) -> Reply {
    match request {
        Request::Elf { offsets } if offsets.len() <= MAX_ADDRS => match cache.table(file) {
            Ok(table) => Reply::Names(offsets.iter().map(|o| table.name_at_offset(*o)).collect()),
            Err(err) => Reply::Failed(err),
        },
        Request::PerfMap { addrs } if addrs.len() <= MAX_ADDRS => match PerfMap::read(file) {
            Ok(map) => Reply::Names(
                addrs
                    .iter()
                    .map(|a| map.name(*a).map(str::to_owned))
                    .collect(),
            ),
            Err(err) => Reply::Failed(err.to_string()),
        },
        Request::BuildId => match cache.table(file) {
            Ok(table) => Reply::BuildId(table.build_id.clone()),
            Err(err) => Reply::Failed(err),
        },
        Request::UnwindTables => match cache.unwind_tables(&file) {
            Ok(tables) => Reply::UnwindTables {
                frame_pointers: tables.frame_pointers,
            },
            Err(err) => Reply::Failed(err),
        },
        _ => Reply::Failed("too many addresses in one request".into()),
    }
}

#[derive(Default)]
struct Cache {
    tables: HashMap<FileKey, Rc<SymbolTable>>,
    symbols: usize,
    unwind_tables: HashMap<FileId, Rc<UnwindTables>>,
    unwind_bytes: usize,
    modules: HashMap<ModuleKey, MappedModule>,
    /// By the process's modules.
    unwinders: HashMap<Vec<ModuleKey>, ProcessUnwinder>,
}

impl Cache {
    fn table(&mut self, file: File) -> Result<Rc<SymbolTable>, String> {
        let meta = file.metadata().map_err(|e| e.to_string())?;
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some(table) = self.tables.get(&key) {
            return Ok(table.clone());
        }
        let table = Rc::new(SymbolTable::read(file).map_err(|e| e.to_string())?);
        if self.symbols + table.len() > CACHE_SYMBOLS {
            self.tables.clear();
            self.symbols = 0;
        }
        self.symbols += table.len();
        self.tables.insert(key, table.clone());
        Ok(table)
    }

    fn unwind_tables(&mut self, file: &File) -> Result<Rc<UnwindTables>, String> {
        let id = FileId::of(file.as_fd()).ok_or("cannot stat the file")?;
        if let Some(tables) = self.unwind_tables.get(&id) {
            return Ok(tables.clone());
        }
        let tables = Rc::new(UnwindTables::read(file)?);
        if self.unwind_bytes + tables.len() > CACHE_UNWIND_BYTES {
            self.unwind_tables.clear();
            self.modules.clear();
            self.unwinders.clear();
            self.unwind_bytes = 0;
        }
        self.unwind_bytes += tables.len();
        self.unwind_tables.insert(id, tables.clone());
        Ok(tables)
    }

    /// Unwinds each process's stacks through its modules, or names the
    /// files whose tables it lacks.
    fn unwind(&mut self, processes: &[ProcessStacks]) -> Reply {
        let stacks: usize = processes.iter().map(|p| p.stacks.len()).sum();
        let modules: usize = processes.iter().map(|p| p.modules.len()).sum();
        if modules > MAX_MODULES || stacks > MAX_STACKS {
            return Reply::Failed("too many modules or stacks in one request".into());
        }
        let mut missing: Vec<FileId> = processes
            .iter()
            .flat_map(|p| &p.modules)
            .map(|m| m.file)
            .filter(|id| !self.unwind_tables.contains_key(id))
            .collect();
        if !missing.is_empty() {
            missing.sort_unstable_by_key(|id| (id.dev, id.ino));
            missing.dedup();
            return Reply::MissingTables(missing);
        }
        let unwound = processes
            .iter()
            .map(|p| self.unwind_one(&p.modules, &p.stacks))
            .collect();
        Reply::Unwound(unwound)
    }

    /// Unwinds one process's `stacks` through its `modules`, whose tables
    /// are all held.
    fn unwind_one(
        &mut self,
        modules: &[ModuleRef],
        stacks: &[protocol::StackCopy],
    ) -> Vec<Unwound> {
        if self.modules.len() > CACHE_MODULES {
            self.modules.clear();
        }
        if self.unwinders.len() > CACHE_UNWINDERS {
            self.unwinders.clear();
        }
        let keys: Vec<ModuleKey> = modules
            .iter()
            .map(|m| (m.file, m.start, m.end, m.offset))
            .collect();
        let unwinder = self.unwinders.entry(keys).or_insert_with_key(|keys| {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(module) = self.modules.get(key) {
                    found.push(module.clone());
                } else if let Some(module) = self
                    .unwind_tables
                    .get(&key.0)
                    .and_then(|t| t.module(key.1..key.2, key.3))
                {
                    self.modules.insert(*key, module.clone());
                    found.push(module);
                }
            }
            ProcessUnwinder::new(&found)
        });
        unwinder.unwind(stacks)
    }
}
