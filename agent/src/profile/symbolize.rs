//! Symbolization, on a thread of its own for each capture (the work is
//! blocking I/O that must not stall the runtime). Cgroup ids are named
//! here too ([`cgroups::Names`]), for the same reason.
//!
//! While the capture runs, each newly sampled process's executable
//! mappings are read and their files opened ([`mapped`], on threads of
//! their own): a process that exits before the end still resolves,
//! because its files stay open. After
//! the capture, every user address becomes (file, offset), each file is
//! named once for all processes that map it by the sandbox
//! ([`crate::sandbox`]), and kernel addresses are named from kallsyms.
//! Whatever has no name becomes `file+0xOFFSET` (the offset into that
//! file), `[unknown]` outside any file, or `[kernel]`: never a bare
//! address.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use super::{
    Profile, ProfileError, Request, Stack,
    capture::Raw,
    cgroups::{self, CgroupFilter},
    kallsyms::KernelSymbols,
    mapped::{Read, Readers},
    printable,
    procmaps::{self, Mapping},
    unwound::{self, Copied, TRUNCATED},
};
use crate::sandbox::{FileId, ModuleRef, ProcessStacks, Sandbox, SandboxError, StackCopy, Unwound};

/// The most files one capture holds open, and at most a quarter of the
/// soft open-file limit, so that connections and maps always have room.
const MAX_OPEN_FILES: usize = 2048;
/// How long, after sampling, the reads of processes' mappings still under
/// way are waited for (while the others' frames are named); processes not
/// read by then keep no names. The reads still under way then are of
/// processes first sampled in the capture's last moments, and on a busy
/// host those are mostly starting up: a nice-19 shell preempted in exec or
/// mmap holds the locks that reading its maps takes, and with 300 busy
/// processes such a read took 150-900 ms here. Waiting for them would trade
/// the whole graph's latency for a handful of samples (1-3 of 2,000 there).
const READ_WAIT: Duration = Duration::from_millis(50);
/// How long naming one capture's files may take in all; past it, the rest
/// are named `file+0xOFFSET`.
const BUDGET: Duration = Duration::from_secs(20);
/// Copied stacks waiting to be unwound, at most (16 KiB each): past it,
/// samples are dropped rather than memory grown.
const MAX_PENDING: usize = 2_048;

enum Job {
    /// Unwind these copied stacks and count them.
    Unwind(Vec<Copied>),
    /// Remember a live process's mappings and open its files, in case it
    /// exits before the end.
    Cache(u32),
    /// Symbolize a finished capture, whose sampling ended at the instant.
    Symbolize(Raw, Request, Instant, tokio::sync::oneshot::Sender<Profile>),
    /// A process's mappings, read.
    Read(Read),
    /// The capture was abandoned.
    Stop,
}

/// Handle to the symbolization thread; the thread ends with the handle.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Processes found to keep frame pointers in every module.
    walkable: mpsc::Receiver<u32>,
    /// Copied stacks sent and not yet unwound.
    pending: Arc<AtomicUsize>,
    /// Copied stacks dropped because too many were pending.
    dropped: u64,
}

impl Worker {
    /// Starts the thread; names come from `sandbox`. It walks the cgroup
    /// hierarchy (below `filter`, if the capture is limited to it) first.
    pub fn start(sandbox: Arc<Mutex<Sandbox>>, filter: Option<CgroupFilter>) -> Self {
        let (jobs, queue) = mpsc::channel();
        let (found_walkable, walkable) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let unwinding = Unwinding {
            walkable: found_walkable,
            pending: pending.clone(),
            counts: unwound::Counts::default(),
        };
        let reads = jobs.clone();
        std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || {
                let readers = Readers::start(
                    move |read| {
                        let _ = reads.send(Job::Read(read));
                    },
                    max_open_files(),
                );
                run(&queue, &sandbox, &readers, filter.as_ref(), unwinding);
                drop(readers);
                // Everything the capture learned is freed by now.
                crate::heap::release_free();
            })
            .map_or_else(
                |err| tracing::error!("cannot start the symbolization thread: {err}"),
                drop,
            );
        Self {
            jobs,
            walkable,
            pending,
            dropped: 0,
        }
    }

    /// Unwinds and counts `copies`, or drops them if too many wait.
    pub fn unwind(&mut self, copies: Vec<Copied>) {
        let n = copies.len();
        if self.pending.load(Ordering::Relaxed) + n > MAX_PENDING {
            self.dropped += n as u64;
            return;
        }
        self.pending.fetch_add(n, Ordering::Relaxed);
        let _ = self.jobs.send(Job::Unwind(copies));
    }

    /// Processes found, since the last call, to keep frame pointers in
    /// every module they map: the kernel may walk their stacks itself.
    pub fn walkable(&self) -> Vec<u32> {
        self.walkable.try_iter().collect()
    }

    /// Caches `tgid`'s mappings and cgroup now.
    pub fn cache(&self, tgid: u32) {
        let _ = self.jobs.send(Job::Cache(tgid));
    }

    /// Symbolizes `raw`, with the stacks unwound so far; sampling ended at
    /// `ended`.
    pub async fn symbolize(
        self,
        mut raw: Raw,
        request: Request,
        ended: Instant,
    ) -> Result<Profile, ProfileError> {
        raw.dropped += self.dropped;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Symbolize(raw, request, ended, reply))
            .map_err(|_| ProfileError::Failed("the symbolization thread is gone".into()))?;
        answer
            .await
            .map_err(|_| ProfileError::Failed("symbolization failed".into()))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Stop);
    }
}

/// The most files one capture holds open: [`MAX_OPEN_FILES`], and at most
/// a quarter of the soft open-file limit, so that connections and maps
/// always have room.
fn max_open_files() -> usize {
    let soft = crate::fd_limit::soft().unwrap_or(1024);
    MAX_OPEN_FILES.min(usize::try_from(soft / 4).unwrap_or(MAX_OPEN_FILES))
}

/// The symbolization thread's side of unwinding.
struct Unwinding {
    walkable: mpsc::Sender<u32>,
    pending: Arc<AtomicUsize>,
    counts: unwound::Counts,
}

fn run(
    queue: &mpsc::Receiver<Job>,
    sandbox: &Mutex<Sandbox>,
    readers: &Readers,
    filter: Option<&CgroupFilter>,
    mut unwinding: Unwinding,
) {
    let mut processes = Processes::default();
    let mut cgroups = cgroups::Names::start(filter);
    // Read while the capture runs: /proc/kallsyms takes ~80 ms of kernel
    // time, which would otherwise come after it.
    let kernel = std::thread::Builder::new()
        .name("kallsyms".into())
        .spawn(KernelSymbols::load);
    while let Ok(job) = queue.recv() {
        match job {
            Job::Unwind(copies) => {
                let mut by_tgid: BTreeMap<u32, Vec<Copied>> = BTreeMap::new();
                for copied in copies {
                    by_tgid.entry(copied.tgid).or_default().push(copied);
                }
                let tgids: Vec<u32> = by_tgid.keys().copied().collect();
                for (tgid, copies) in by_tgid {
                    if processes.request(tgid, readers) {
                        cgroups.process(tgid);
                    }
                    processes.parked.entry(tgid).or_default().extend(copies);
                }
                unwind_parked(sandbox, &mut processes, &mut unwinding, &tgids);
            }
            Job::Read(read) => {
                let tgid = read.tgid;
                processes.insert(read);
                unwind_parked(sandbox, &mut processes, &mut unwinding, &[tgid]);
                // Idle while sampling: read the new files' symbol tables
                // now rather than after it.
                let mut sandbox = sandbox.lock().unwrap_or_else(PoisonError::into_inner);
                processes.learn_build_ids(&mut sandbox);
            }
            Job::Cache(tgid) => {
                if processes.request(tgid, readers) {
                    cgroups.process(tgid);
                }
            }
            Job::Symbolize(mut raw, request, ended, reply) => {
                let started = Instant::now();
                // Processes that first ran after the last tick.
                for tgid in raw.comms.keys() {
                    if processes.request(*tgid, readers) {
                        cgroups.process(*tgid);
                    }
                }
                std::mem::take(&mut unwinding.counts).add_to(&mut raw);
                // Cgroups created since the first walk.
                cgroups.walk();
                let mut user = UserNames::default();
                // Name what can be named now, while the last reads finish.
                let named: HashSet<u32> = processes.by_tgid.keys().copied().collect();
                {
                    let mut sandbox = sandbox.lock().unwrap_or_else(PoisonError::into_inner);
                    sandbox.refresh();
                    let addrs = user_addresses(&raw, |tgid| named.contains(&tgid));
                    user.add(&mut sandbox, &processes, addrs, started);
                }
                let deadline = ended + READ_WAIT;
                while processes.reading() > 0 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let Ok(Job::Read(read)) = queue.recv_timeout(left) else {
                        break;
                    };
                    let tgid = read.tgid;
                    processes.insert(read);
                    unwind_parked(sandbox, &mut processes, &mut unwinding, &[tgid]);
                }
                if processes.reading() > 0 {
                    tracing::info!(
                        "{} processes' mappings were still being read {} ms after sampling; \
                         their stacks are not named",
                        processes.reading(),
                        READ_WAIT.as_millis()
                    );
                }
                // Copies of processes still not read keep only their leaf.
                for (_, copies) in processes.parked.drain() {
                    for copied in &copies {
                        unwinding.counts.add(copied, None);
                    }
                    unwinding.pending.fetch_sub(copies.len(), Ordering::Relaxed);
                }
                let waited = ended.elapsed();
                std::mem::take(&mut unwinding.counts).add_to(&mut raw);
                let mut sandbox = sandbox.lock().unwrap_or_else(PoisonError::into_inner);
                let late = user_addresses(&raw, |tgid| !named.contains(&tgid));
                user.add(&mut sandbox, &processes, late, started);
                user.add_build_ids(&mut sandbox, &processes, started);
                drop(sandbox);
                let kernel = match kernel {
                    Ok(loading) => loading.join().unwrap_or_default(),
                    Err(_) => KernelSymbols::load(),
                };
                let stacks = Merger::new(&raw, &user, &kernel, &cgroups).merge();
                let profile = Profile {
                    stacks,
                    mappings: user.mappings,
                    request,
                    dropped: raw.dropped,
                    timings: super::Timings {
                        unwinding: waited,
                        symbolizing: started.elapsed(),
                    },
                };
                let _ = reply.send(profile);
                return;
            }
            Job::Stop => return,
        }
    }
}

/// Unwinds and counts the parked copies of those of `tgids` whose
/// mappings are known (or known to be unreadable), in one batch.
fn unwind_parked(
    sandbox: &Mutex<Sandbox>,
    processes: &mut Processes,
    unwinding: &mut Unwinding,
    tgids: &[u32],
) {
    let ready: Vec<(u32, Vec<Copied>)> = tgids
        .iter()
        .filter(|t| processes.by_tgid.contains_key(t) || processes.unreadable.contains(t))
        .filter_map(|t| Some((*t, processes.parked.remove(t)?)))
        .collect();
    if ready.is_empty() {
        return;
    }
    let n = ready.iter().map(|(_, copies)| copies.len()).sum();
    let mut sandbox = sandbox.lock().unwrap_or_else(PoisonError::into_inner);
    for tgid in unwind(&mut sandbox, processes, &mut unwinding.counts, ready) {
        let _ = unwinding.walkable.send(tgid);
    }
    unwinding.pending.fetch_sub(n, Ordering::Relaxed);
}

/// What a capture learned about the processes it sampled.
#[derive(Default)]
struct Processes {
    by_tgid: HashMap<u32, Process>,
    /// Processes asked of the readers.
    requested: HashSet<u32>,
    /// Processes whose mappings could not be read (gone, not ours).
    unreadable: HashSet<u32>,
    /// Copied stacks waiting for their process's mappings.
    parked: HashMap<u32, Vec<Copied>>,
    /// Open files, each once however many processes map it.
    files: Vec<OwnedFd>,
    by_inode: HashMap<(u64, u64), usize>,
    /// Files already open, by device and inode as the maps file names them:
    /// three hundred processes of one program open its files once.
    by_mapping: HashMap<(u64, u64), usize>,
    /// The identity of each open file, by its index in `files`.
    ids: Vec<Option<FileId>>,
    /// Whether each file keeps frame pointers, once the sandbox has read
    /// its unwind tables.
    frame_pointers: HashMap<usize, bool>,
    /// Processes already reported as walkable.
    classified: HashSet<u32>,
    /// Processes whose stacks made the sandbox fail.
    unwind_failed: HashSet<u32>,
    /// Each file's build ID, once asked (which also has the sandbox parse
    /// and keep its symbol table).
    build_ids: HashMap<usize, Option<String>>,
}

struct Process {
    mappings: Vec<Mapping>,
    /// The index in `files` of each mapping's file, where it was opened.
    files: Vec<Option<usize>>,
    perf_map: Option<OwnedFd>,
}

impl Processes {
    /// Asks the readers for `tgid`'s mappings, unless they were asked
    /// already; whether this is the first time.
    fn request(&mut self, tgid: u32, readers: &Readers) -> bool {
        let first = self.requested.insert(tgid);
        if first {
            readers.read(tgid);
        }
        first
    }

    /// Reads asked for and not yet answered.
    fn reading(&self) -> usize {
        self.requested.len() - self.by_tgid.len() - self.unreadable.len()
    }

    fn insert(&mut self, read: Read) {
        let Some(process) = read.process else {
            self.unreadable.insert(read.tgid);
            return;
        };
        let files = process
            .mappings
            .iter()
            .zip(process.files)
            .map(|(mapping, fd)| {
                let index = self.add_file(fd?)?;
                self.by_mapping
                    .insert((mapping.device, mapping.inode), index);
                Some(index)
            })
            .collect();
        self.by_tgid.insert(
            read.tgid,
            Process {
                mappings: process.mappings,
                files,
                perf_map: process.perf_map,
            },
        );
    }

    /// Asks the build ID of each file opened since the last call: while
    /// sampling, so that naming after it finds the sandbox's symbol tables
    /// parsed.
    fn learn_build_ids(&mut self, sandbox: &mut Sandbox) {
        for (file, fd) in self.files.iter().enumerate() {
            self.build_ids
                .entry(file)
                .or_insert_with(|| build_id(sandbox, fd.as_fd()));
        }
    }

    /// Keeps `fd` unless the same file is open already; its index.
    fn add_file(&mut self, fd: OwnedFd) -> Option<usize> {
        let stat = rustix::fs::fstat(&fd).ok()?;
        Some(
            *self
                .by_inode
                .entry((stat.st_dev, stat.st_ino))
                .or_insert_with(|| {
                    self.ids.push(FileId::of(fd.as_fd()));
                    self.files.push(fd);
                    self.files.len() - 1
                }),
        )
    }

    /// The open file behind `process`'s `i`th mapping: opened by its own
    /// read, or by another process's read of the same file.
    fn file_of(&self, process: &Process, i: usize) -> Option<usize> {
        process.files.get(i).copied().flatten().or_else(|| {
            let mapping = process.mappings.get(i).filter(|m| m.is_file())?;
            self.by_mapping
                .get(&(mapping.device, mapping.inode))
                .copied()
        })
    }
}

/// Unwinds each process's copies in the sandbox, all in one exchange,
/// and counts them. Returns the processes that first turned out to keep
/// frame pointers in every module (or to have no user memory: kernel
/// threads): the kernel may walk them.
fn unwind(
    sandbox: &mut Sandbox,
    processes: &mut Processes,
    counts: &mut unwound::Counts,
    batch: Vec<(u32, Vec<Copied>)>,
) -> Vec<u32> {
    let mut walkable = Vec::new();
    let mut asked: Vec<(u32, Vec<Copied>)> = Vec::new();
    let mut requests: Vec<ProcessStacks> = Vec::new();
    for (tgid, mut copies) in batch {
        let Some(modules) = modules(sandbox, processes, tgid, &mut walkable) else {
            // Gone before it could be read, or its stacks made the sandbox
            // fail: its stacks keep their leaf.
            for copied in &copies {
                counts.add(copied, None);
            }
            continue;
        };
        let (mut walk, none): (Vec<Copied>, Vec<Copied>) =
            copies.drain(..).partition(|c| !c.stack.bytes.is_empty());
        for copied in &none {
            counts.add(copied, None);
        }
        let stacks = walk
            .iter_mut()
            .map(|c| StackCopy {
                bytes: std::mem::take(&mut c.stack.bytes),
                ..c.stack.clone()
            })
            .collect();
        requests.push(ProcessStacks { modules, stacks });
        asked.push((tgid, walk));
    }
    if requests.is_empty() {
        return walkable;
    }
    let answer = unwind_files(sandbox, processes, &requests);
    match answer {
        Ok(unwound) => count(counts, &asked, unwound),
        // One process's stacks may have made the sandbox fail: each is
        // tried alone, so that it costs only its own.
        Err(SandboxError::Failed(_)) if requests.len() > 1 => {
            for ((tgid, copies), request) in asked.iter().zip(&requests) {
                match unwind_files(sandbox, processes, std::slice::from_ref(request)) {
                    Ok(unwound) => count(
                        counts,
                        std::slice::from_ref(&(*tgid, copies.clone())),
                        unwound,
                    ),
                    Err(err) => failed(processes, counts, *tgid, copies, &err),
                }
            }
        }
        Err(err) => {
            for (tgid, copies) in &asked {
                failed(processes, counts, *tgid, copies, &err);
            }
        }
    }
    walkable
}

/// Asks the sandbox to unwind `requests`, sending the tables of the files
/// it lacks from those the capture holds open.
fn unwind_files(
    sandbox: &mut Sandbox,
    processes: &Processes,
    requests: &[ProcessStacks],
) -> Result<Vec<Vec<Unwound>>, SandboxError> {
    let (ids, files) = (&processes.ids, &processes.files);
    let open = |id: &FileId| {
        let index = ids.iter().position(|known| known.as_ref() == Some(id))?;
        files.get(index).map(OwnedFd::as_fd)
    };
    sandbox.unwind(requests, open)
}

/// Counts each process's unwound stacks.
fn count(counts: &mut unwound::Counts, asked: &[(u32, Vec<Copied>)], unwound: Vec<Vec<Unwound>>) {
    for ((_, copies), unwound) in asked.iter().zip(unwound) {
        for (copied, unwound) in copies.iter().zip(unwound) {
            counts.add(copied, Some(unwound));
        }
    }
}

/// Counts a process's stacks that could not be unwound by their leaf. A
/// file whose tables crash or hang the sandbox is not sent again
/// (`Sandbox` quarantines it); a process whose stacks did is not unwound
/// again in this capture.
fn failed(
    processes: &mut Processes,
    counts: &mut unwound::Counts,
    tgid: u32,
    copies: &[Copied],
    err: &SandboxError,
) {
    log_unwind_failure(tgid, err);
    if matches!(err, SandboxError::Failed(_)) {
        processes.unwind_failed.insert(tgid);
    }
    for copied in copies {
        counts.add(copied, None);
    }
}

/// The executable mappings of `tgid` as the sandbox knows them (reading
/// each new file's unwind tables first), or `None` if the process could
/// not be read or is not to be unwound. If every file keeps frame
/// pointers, and this is the first time, `tgid` is added to `walkable`.
fn modules(
    sandbox: &mut Sandbox,
    processes: &mut Processes,
    tgid: u32,
    walkable: &mut Vec<u32>,
) -> Option<Vec<ModuleRef>> {
    let process = processes
        .by_tgid
        .get(&tgid)
        .filter(|_| !processes.unwind_failed.contains(&tgid))?;
    let mut modules = Vec::new();
    let mut all_keep_frame_pointers = true;
    for (i, mapping) in process.mappings.iter().enumerate() {
        let Some((file, Some(id))) = processes
            .file_of(process, i)
            .and_then(|f| Some((f, *processes.ids.get(f)?)))
        else {
            continue;
        };
        let keeps = *processes.frame_pointers.entry(file).or_insert_with(|| {
            let fd = processes.files.get(file).map(OwnedFd::as_fd);
            fd.is_some_and(|fd| {
                sandbox.unwind_tables(fd).unwrap_or_else(|err| {
                    log_unwind_failure(tgid, &err);
                    false
                })
            })
        });
        all_keep_frame_pointers &= keeps;
        modules.push(ModuleRef {
            file: id,
            start: mapping.start,
            end: mapping.end,
            offset: mapping.offset,
        });
    }
    if all_keep_frame_pointers && processes.classified.insert(tgid) {
        walkable.push(tgid);
    }
    Some(modules)
}

/// A file the sandbox cannot read is the file's business (debug); a
/// sandbox that failed is the operator's (one warning).
fn log_unwind_failure(tgid: u32, err: &SandboxError) {
    match err {
        SandboxError::File(why) => tracing::debug!(tgid, "stacks not unwound: {why}"),
        err => tracing::warn!("{err}; those stacks end in [truncated]"),
    }
}

/// The build ID of `file`, if the sandbox finds one.
fn build_id(sandbox: &mut Sandbox, file: BorrowedFd<'_>) -> Option<String> {
    sandbox
        .build_id(file)
        .map_err(|err| tracing::debug!("no build ID: {err}"))
        .ok()
        .flatten()
}

/// Where a user address was, and its name if nothing better is found.
struct Place {
    tgid: u32,
    addr: u64,
    fallback: String,
}

/// The user addresses to name of the processes `wanted` picks, each once.
fn user_addresses(raw: &Raw, wanted: impl Fn(u32) -> bool) -> BTreeMap<u32, Vec<u64>> {
    let mut user_addrs: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut listed = HashSet::new();
    for (key, _) in &raw.counts {
        if !wanted(key.tgid) || !listed.insert((key.tgid, key.user_stack)) {
            continue;
        }
        if let Some((ips, _)) = user_stack(raw, key.user_stack) {
            user_addrs
                .entry(key.tgid)
                .or_default()
                .extend(call_sites(ips));
        }
    }
    user_addrs
}

/// Frame names, each kept once and known by a number.
#[derive(Default)]
struct Interned {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interned {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.add(name.to_owned())
    }

    fn add(&mut self, name: String) -> u32 {
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map_or("[unknown]", String::as_str)
    }
}

/// The named half of a stack: its frames by number and, for user frames,
/// where each was.
struct Part {
    frames: Vec<u32>,
    addresses: Vec<Option<(usize, u64)>>,
}

/// Turns the kernel's counts into named stacks. Thousands of counts share
/// a few hundred distinct stacks, which share a few thousand names: each
/// stack is named once, as numbers, and stacks are merged by those
/// numbers, so that strings are only built for the merged stacks.
struct Merger<'a> {
    raw: &'a Raw,
    user: &'a UserNames,
    kernel: &'a KernelSymbols,
    cgroups: &'a cgroups::Names,
    names: Interned,
    /// Each user stack (by process and stack id) named: the index in
    /// `parts` of its frames' sequence, and of its own part.
    user_parts: HashMap<(u32, i32), (usize, usize)>,
    /// Each kernel stack named, as an index in `parts`.
    kernel_parts: HashMap<i32, usize>,
    /// Each distinct sequence of frames, as an index in `parts`.
    by_frames: HashMap<Vec<u32>, usize>,
    parts: Vec<Part>,
    /// Cgroup ids' names, by number.
    cgroup_names: HashMap<u64, u32>,
    /// Kernel addresses' names, by number: kernel stacks share most of
    /// their frames.
    kernel_names: HashMap<u64, u32>,
    /// User addresses' names, by number.
    user_names: HashMap<(u32, u64), u32>,
}

impl<'a> Merger<'a> {
    fn new(
        raw: &'a Raw,
        user: &'a UserNames,
        kernel: &'a KernelSymbols,
        cgroups: &'a cgroups::Names,
    ) -> Self {
        let mut names = Interned::default();
        let user_names = user
            .names
            .iter()
            .map(|(place, name)| (*place, names.id(name)))
            .collect();
        Self {
            raw,
            user,
            kernel,
            cgroups,
            names,
            user_parts: HashMap::new(),
            kernel_parts: HashMap::new(),
            by_frames: HashMap::new(),
            parts: Vec::new(),
            cgroup_names: HashMap::new(),
            kernel_names: HashMap::new(),
            user_names,
        }
    }

    /// Stacks that differ only in addresses within the same functions read
    /// the same once symbolized: they are merged. So are cgroups with one
    /// name (unknown ones).
    fn merge(mut self) -> Vec<Stack> {
        // (process, cgroup name, user frames, kernel frames): the count,
        // and the user part first seen, whose addresses are kept.
        let mut merged: HashMap<(u32, u32, usize, usize), (u64, usize)> = HashMap::new();
        for (key, count) in &self.raw.counts {
            let user = self.user_part(key.tgid, key.user_stack);
            let kernel = self.kernel_part(key.kernel_stack);
            let cgroup = self.cgroup(key.cgroup);
            let (user_frames, _) = user;
            merged
                .entry((key.tgid, cgroup, user_frames, kernel))
                .and_modify(|(total, _)| *total += count)
                .or_insert((*count, user.1));
        }
        merged
            .into_iter()
            .map(|((tgid, cgroup, user_frames, kernel), (count, first))| {
                let names = &self.names;
                let frames: Vec<String> = [user_frames, kernel]
                    .iter()
                    .filter_map(|part| self.parts.get(*part))
                    .flat_map(|part| part.frames.iter().map(|id| names.name(*id).to_owned()))
                    .collect();
                let mut addresses = self
                    .parts
                    .get(first)
                    .map_or_else(Vec::new, |part| part.addresses.clone());
                addresses.resize(frames.len(), None);
                Stack {
                    cgroup: names.name(cgroup).to_owned(),
                    comm: self
                        .raw
                        .comms
                        .get(&tgid)
                        .map_or_else(|| format!("pid {tgid}"), |comm| printable(comm)),
                    pid: tgid,
                    frames,
                    addresses,
                    count,
                }
            })
            .collect()
    }

    /// A process's user stack, named: the index of its frames' sequence,
    /// and of the part holding its addresses.
    fn user_part(&mut self, tgid: u32, id: i32) -> (usize, usize) {
        if let Some(parts) = self.user_parts.get(&(tgid, id)) {
            return *parts;
        }
        let mut frames = Vec::new();
        let mut addresses = Vec::new();
        // Outermost caller first.
        if let Some((ips, truncated)) = user_stack(self.raw, id) {
            for addr in call_sites(ips).rev() {
                let name = match self.user_names.get(&(tgid, addr)) {
                    Some(name) => *name,
                    None => self.names.id("[unknown]"),
                };
                frames.push(name);
                addresses.push(self.user.mapping_of.get(&(tgid, addr)).map(|m| (*m, addr)));
            }
            let at_root = frames
                .first()
                .is_some_and(|f| STACK_ROOTS.contains(&self.names.name(*f)));
            if truncated && !at_root {
                frames.insert(0, self.names.id("[truncated]"));
                addresses.insert(0, None);
            }
        }
        let own = self.push(frames.clone(), addresses);
        let sequence = *self.by_frames.entry(frames).or_insert(own);
        self.user_parts.insert((tgid, id), (sequence, own));
        (sequence, own)
    }

    /// A kernel stack, named: the index of its frames' sequence.
    fn kernel_part(&mut self, id: i32) -> usize {
        if let Some(part) = self.kernel_parts.get(&id) {
            return *part;
        }
        let mut frames = Vec::new();
        if let Some(ips) = stack(self.raw, id) {
            for addr in call_sites(ips).rev() {
                let name = match self.kernel_names.get(&addr) {
                    Some(name) => *name,
                    None => {
                        let name = self.kernel.name(addr).unwrap_or("[kernel]");
                        let name = self.names.id(&format!("{name}_[k]"));
                        self.kernel_names.insert(addr, name);
                        name
                    }
                };
                frames.push(name);
            }
        }
        let part = match self.by_frames.get(&frames) {
            Some(part) => *part,
            None => {
                let part = self.push(frames.clone(), Vec::new());
                self.by_frames.insert(frames, part);
                part
            }
        };
        self.kernel_parts.insert(id, part);
        part
    }

    fn push(&mut self, frames: Vec<u32>, addresses: Vec<Option<(usize, u64)>>) -> usize {
        self.parts.push(Part { frames, addresses });
        self.parts.len() - 1
    }

    fn cgroup(&mut self, id: u64) -> u32 {
        if let Some(name) = self.cgroup_names.get(&id) {
            return *name;
        }
        let name = self.names.id(&printable(&self.cgroups.name(id)));
        self.cgroup_names.insert(id, name);
        name
    }
}

/// Names of user addresses, and the mapped files they are in.
#[derive(Default)]
struct UserNames {
    /// By (process, address).
    names: HashMap<(u32, u64), String>,
    /// The index in `mappings` of the file mapping an address is in.
    mapping_of: HashMap<(u32, u64), usize>,
    /// Every file mapping a sampled address is in.
    mappings: Vec<super::Mapping>,
    /// The open file each of `mappings` is read from.
    file_of_mapping: Vec<Option<usize>>,
    /// Per mapping (by process and index in its maps): its index in
    /// `mappings`.
    mapping_index: HashMap<(u32, usize), usize>,
}

impl UserNames {
    /// Names these processes' user addresses. Each mapped file is named
    /// once for all the processes and addresses that hit it: a host
    /// running three hundred copies of one program has its ELF read once,
    /// not three hundred times. Past [`BUDGET`] since `started`, the rest
    /// are named `file+0xOFFSET`.
    fn add(
        &mut self,
        sandbox: &mut Sandbox,
        processes: &Processes,
        user_addrs: BTreeMap<u32, Vec<u64>>,
        started: Instant,
    ) {
        let mut by_file: HashMap<usize, Vec<(u64, Place)>> = HashMap::new();
        let mut by_perf_map: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (tgid, mut addrs) in user_addrs {
            addrs.sort_unstable();
            addrs.dedup();
            let Some(process) = processes.by_tgid.get(&tgid) else {
                continue;
            };
            for addr in addrs {
                let found = procmaps::find(&process.mappings, addr)
                    .and_then(|i| Some((i, process.mappings.get(i)?)));
                match found {
                    Some((i, mapping)) if mapping.is_file() => {
                        let offset = addr - mapping.start + mapping.offset;
                        let index = self.mapping(processes, process, tgid, i, mapping);
                        self.mapping_of.insert((tgid, addr), index);
                        let fallback = printable(&format!("{}+{offset:#x}", mapping.module_name()));
                        let place = Place {
                            tgid,
                            addr,
                            fallback,
                        };
                        match processes.file_of(process, i) {
                            Some(file) => by_file.entry(file).or_default().push((offset, place)),
                            None => {
                                self.names.insert((tgid, addr), place.fallback);
                            }
                        }
                    }
                    Some((_, mapping)) if mapping.path.is_some() => {
                        // [vdso], [vsyscall]: named by what they are.
                        self.names
                            .insert((tgid, addr), printable(&mapping.module_name()));
                    }
                    // Anonymous memory, or none: JIT code, if a perf map
                    // names it.
                    _ if process.perf_map.is_some() => {
                        by_perf_map.entry(tgid).or_default().push(addr);
                    }
                    _ => {}
                }
            }
        }

        let mut failures = 0usize;
        let mut over_budget = false;
        for (file, places) in by_file {
            let offsets: Vec<u64> = places.iter().map(|(offset, _)| *offset).collect();
            let answer = match processes.files.get(file) {
                Some(_) if started.elapsed() > BUDGET => {
                    over_budget = true;
                    None
                }
                Some(fd) => ask(&mut failures, sandbox.elf_names(fd.as_fd(), &offsets)),
                None => None,
            };
            for (i, (_, place)) in places.into_iter().enumerate() {
                let name = answer
                    .as_ref()
                    .and_then(|names| names.get(i).cloned().flatten())
                    .map_or(place.fallback, |name| printable(&name));
                self.names.insert((place.tgid, place.addr), name);
            }
        }
        for (tgid, addrs) in by_perf_map {
            let Some(fd) = processes
                .by_tgid
                .get(&tgid)
                .and_then(|p| p.perf_map.as_ref())
            else {
                continue;
            };
            if let Some(found) = ask(&mut failures, sandbox.perf_map_names(fd.as_fd(), &addrs)) {
                for (addr, name) in addrs.into_iter().zip(found) {
                    if let Some(name) = name {
                        self.names.insert((tgid, addr), printable(&name));
                    }
                }
            }
        }
        if failures > 0 {
            tracing::warn!(
                "{failures} files could not be named in the symbolizer sandbox; their frames read file+0xOFFSET"
            );
        }
        if over_budget {
            tracing::warn!(
                "symbolization took over {} s; the remaining frames read file+0xOFFSET",
                BUDGET.as_secs()
            );
        }
    }

    /// The index in `mappings` of `process`'s `i`th mapping, added if new.
    fn mapping(
        &mut self,
        processes: &Processes,
        process: &Process,
        tgid: u32,
        i: usize,
        mapping: &Mapping,
    ) -> usize {
        if let Some(index) = self.mapping_index.get(&(tgid, i)) {
            return *index;
        }
        self.mappings.push(super::Mapping {
            start: mapping.start,
            limit: mapping.end,
            file_offset: mapping.offset,
            file: printable(
                &mapping
                    .path
                    .as_ref()
                    .map_or_else(|| mapping.module_name(), |p| p.display().to_string()),
            ),
            build_id: None,
        });
        self.file_of_mapping.push(processes.file_of(process, i));
        let index = self.mappings.len() - 1;
        self.mapping_index.insert((tgid, i), index);
        index
    }

    /// Gives each mapping its file's build ID: one question per file
    /// however many processes map it, and none for files whose ID was
    /// learned while sampling.
    fn add_build_ids(&mut self, sandbox: &mut Sandbox, processes: &Processes, started: Instant) {
        let mut build_ids: HashMap<usize, Option<String>> = HashMap::new();
        for (mapping, file) in self.mappings.iter_mut().zip(&self.file_of_mapping) {
            let Some(file) = *file else { continue };
            if started.elapsed() > BUDGET {
                tracing::warn!(
                    "symbolization took over {} s; some mappings have no build ID",
                    BUDGET.as_secs()
                );
                break;
            }
            let id = build_ids.entry(file).or_insert_with(|| {
                if let Some(known) = processes.build_ids.get(&file) {
                    return known.clone();
                }
                build_id(sandbox, processes.files.get(file)?.as_fd())
            });
            mapping.build_id = id.clone();
        }
    }
}

/// The names, or `None` after logging why there are none.
fn ask(
    failures: &mut usize,
    answer: Result<Vec<Option<String>>, SandboxError>,
) -> Option<Vec<Option<String>>> {
    match answer {
        Ok(names) => Some(names),
        Err(SandboxError::File(why)) => {
            tracing::debug!("a sampled file could not be read: {why}");
            None
        }
        Err(err) => {
            *failures += 1;
            tracing::warn!("{err}");
            None
        }
    }
}

fn stack(raw: &Raw, id: i32) -> Option<&Vec<u64>> {
    u32::try_from(id).ok().and_then(|id| raw.stacks.get(&id))
}

/// Functions that start a stack: a walk that stops past one of them has
/// not lost anything. Go's goroutines start in `runtime.goexit` (a fake
/// return address) and its system stacks in `runtime.mstart`; the frame
/// pointer found there points anywhere.
const STACK_ROOTS: [&str; 3] = ["runtime.goexit", "runtime.mstart", "runtime.rt0_go"];

/// A user stack's addresses, and whether its walk stopped short (the
/// [`TRUNCATED`] mark, which is not an address, is left out).
fn user_stack(raw: &Raw, id: i32) -> Option<(&[u64], bool)> {
    let ips = stack(raw, id)?;
    Some(match ips.split_last() {
        Some((&TRUNCATED, rest)) => (rest, true),
        _ => (ips.as_slice(), false),
    })
}

/// The addresses to symbolize, leaf first: the leaf is where the CPU was;
/// every other frame is a return address, one past its call, so step back
/// into the call instruction (or a call at a function's end would be
/// attributed to the next function).
fn call_sites(ips: &[u64]) -> impl DoubleEndedIterator<Item = u64> + '_ {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
}
