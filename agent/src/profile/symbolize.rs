//! Symbolization on a thread of its own: blazesym's `Symbolizer` is not
//! `Send`, and its work is blocking file I/O that must not stall the
//! runtime. The thread lives for one capture, so its caches are bounded by
//! what that capture touched.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::mpsc,
    time::Instant,
};

use blazesym::{
    Pid,
    normalize::{Normalizer, UserMeta},
    symbolize::{
        Input, Symbolized, Symbolizer,
        cache::{Cache, Process as CacheProcess},
        source::{Elf, Kernel, Process, Source},
    },
};

use super::{Profile, ProfileError, Request, Stack, capture::Raw};

enum Job {
    /// Remember a live process's mappings, in case it exits before the end.
    Cache(u32),
    /// Symbolize a finished capture.
    Symbolize(Raw, Request, tokio::sync::oneshot::Sender<Profile>),
}

/// Handle to the symbolization thread; the thread ends with the handle.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread.
    pub fn start() -> Self {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || run(&queue))
            .map_or_else(
                |err| tracing::error!("cannot start the symbolization thread: {err}"),
                drop,
            );
        Self { jobs }
    }

    /// Caches `tgid`'s mappings now.
    pub fn cache(&self, tgid: u32) {
        let _ = self.jobs.send(Job::Cache(tgid));
    }

    /// Symbolizes `raw`.
    pub async fn symbolize(self, raw: Raw, request: Request) -> Result<Profile, ProfileError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Symbolize(raw, request, reply))
            .map_err(|_| ProfileError::Failed("the symbolization thread is gone".into()))?;
        answer
            .await
            .map_err(|_| ProfileError::Failed("symbolization failed".into()))
    }
}

fn run(queue: &mpsc::Receiver<Job>) {
    let symbolizer = Symbolizer::builder()
        .enable_demangling(true)
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .build();
    for job in queue {
        match job {
            Job::Cache(tgid) => {
                let process = CacheProcess::new(Pid::from(tgid));
                if let Err(err) = symbolizer.cache(&Cache::from(process)) {
                    tracing::debug!(tgid, "caching mappings failed: {err}");
                }
            }
            Job::Symbolize(raw, request, reply) => {
                let _ = reply.send(symbolize(&symbolizer, raw, request));
            }
        }
    }
}

fn symbolize(symbolizer: &Symbolizer, raw: Raw, request: Request) -> Profile {
    let started = Instant::now();
    // Every address once: kernel ones together, user ones per process.
    let mut kernel_addrs = Vec::new();
    let mut user_addrs: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (key, _) in &raw.counts {
        if let Some(ips) = stack(&raw, key.kernel_stack) {
            kernel_addrs.extend(call_sites(ips));
        }
        if let Some(ips) = stack(&raw, key.user_stack) {
            user_addrs
                .entry(key.tgid)
                .or_default()
                .extend(call_sites(ips));
        }
    }
    let kernel_source = Source::Kernel(Kernel {
        vmlinux: blazesym::MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    });
    let kernel_names = names(symbolizer, &kernel_source, kernel_addrs, "_[k]");
    let user_names = user_names(symbolizer, user_addrs);

    // Stacks that differ only in addresses within the same functions read
    // the same once symbolized: merge them.
    let mut merged: HashMap<(u32, Vec<String>), Stack> = HashMap::new();
    let all = raw.counts.iter().map(|(key, count)| {
        let mut frames = Vec::new();
        // Outermost caller first: user frames, then the kernel's.
        if let Some(ips) = stack(&raw, key.user_stack) {
            let names = user_names.get(&key.tgid);
            frames.extend(call_sites(ips).rev().map(|a| {
                names
                    .and_then(|n| n.get(&a))
                    .cloned()
                    .unwrap_or_else(|| unknown(a))
            }));
        }
        if let Some(ips) = stack(&raw, key.kernel_stack) {
            frames.extend(call_sites(ips).rev().map(|a| {
                kernel_names
                    .get(&a)
                    .cloned()
                    .unwrap_or_else(|| format!("{}_[k]", unknown(a)))
            }));
        }
        Stack {
            comm: raw
                .comms
                .get(&key.tgid)
                .cloned()
                .unwrap_or_else(|| format!("pid {}", key.tgid)),
            pid: key.tgid,
            frames,
            count: *count,
        }
    });
    for stack in all {
        merged
            .entry((stack.pid, stack.frames.clone()))
            .and_modify(|s| s.count += stack.count)
            .or_insert(stack);
    }
    Profile {
        stacks: merged.into_values().collect(),
        request,
        dropped: raw.dropped,
        symbolize_time: started.elapsed(),
    }
}

/// A mapped file: its path and build ID.
type FileId = (PathBuf, Option<Vec<u8>>);
/// An address of a process, and its offset in a mapped file: (pid, address, offset).
type FileAddr = (u32, u64, u64);

/// Names for every process's user addresses. Addresses are first mapped to
/// (file, offset) per process, and each file is then symbolized once for
/// all processes that map it: a host running three hundred copies of one
/// program parses its ELF once, not three hundred times. Files are opened
/// through /proc/PID/root, so a container's binaries are its own. What does
/// not map to a file (JIT code, processes that already exited) goes through
/// per-process symbolization, which has perf maps and cached mappings.
fn user_names(
    symbolizer: &Symbolizer,
    user_addrs: BTreeMap<u32, Vec<u64>>,
) -> HashMap<u32, HashMap<u64, String>> {
    let normalizer = Normalizer::builder().enable_build_ids(true).build();
    let mut by_file: HashMap<FileId, (u32, Vec<FileAddr>)> = HashMap::new();
    let mut per_process: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (tgid, mut addrs) in user_addrs {
        addrs.sort_unstable();
        addrs.dedup();
        let Ok(normalized) = normalizer.normalize_user_addrs(Pid::from(tgid), &addrs) else {
            per_process.insert(tgid, addrs);
            continue;
        };
        for (addr, (offset, meta)) in addrs.iter().zip(normalized.outputs) {
            match normalized.meta.get(meta) {
                Some(UserMeta::Elf(elf)) => {
                    let key = (elf.path.clone(), elf.build_id.as_ref().map(|b| b.to_vec()));
                    let (_, entries) = by_file.entry(key).or_insert((tgid, Vec::new()));
                    entries.push((tgid, *addr, offset));
                }
                _ => per_process.entry(tgid).or_default().push(*addr),
            }
        }
    }

    let mut names: HashMap<u32, HashMap<u64, String>> = HashMap::new();
    for ((path, _), (opener, entries)) in by_file {
        let relative = path.strip_prefix("/").unwrap_or(&path);
        let file = PathBuf::from(format!("/proc/{opener}/root")).join(relative);
        let offsets: Vec<u64> = entries.iter().map(|(_, _, offset)| *offset).collect();
        let source = Source::Elf(Elf::new(file));
        match symbolizer.symbolize(&source, Input::FileOffset(&offsets)) {
            Ok(results) => {
                for ((tgid, addr, _), result) in entries.into_iter().zip(results) {
                    match result {
                        Symbolized::Sym(sym) => {
                            names
                                .entry(tgid)
                                .or_default()
                                .insert(addr, sym.name.into_owned());
                        }
                        Symbolized::Unknown(_) => per_process.entry(tgid).or_default().push(addr),
                    }
                }
            }
            Err(err) => {
                tracing::debug!("symbolizing {}: {err}", path.display());
                for (tgid, addr, _) in entries {
                    per_process.entry(tgid).or_default().push(addr);
                }
            }
        }
    }
    for (tgid, addrs) in per_process {
        let source = Source::Process(Process::new(Pid::from(tgid)));
        names
            .entry(tgid)
            .or_default()
            .extend(self::names(symbolizer, &source, addrs, ""));
    }
    names
}

fn stack(raw: &Raw, id: i32) -> Option<&Vec<u64>> {
    u32::try_from(id).ok().and_then(|id| raw.stacks.get(&id))
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

fn unknown(addr: u64) -> String {
    format!("[unknown {addr:#x}]")
}

/// Names for `addrs` from `source`: the symbol, or the module and offset
/// when only that is known.
fn names(
    symbolizer: &Symbolizer,
    source: &Source,
    mut addrs: Vec<u64>,
    suffix: &str,
) -> HashMap<u64, String> {
    addrs.sort_unstable();
    addrs.dedup();
    let results = match symbolizer.symbolize(source, Input::AbsAddr(&addrs)) {
        Ok(results) => results,
        Err(err) => {
            tracing::warn!("symbolizing {} addresses failed: {err}", addrs.len());
            return HashMap::new();
        }
    };
    addrs
        .iter()
        .zip(results)
        .filter_map(|(addr, result)| match result {
            Symbolized::Sym(sym) => Some((*addr, format!("{}{suffix}", sym.name))),
            Symbolized::Unknown(reason) => {
                tracing::debug!("{addr:#x}: {reason}");
                None
            }
        })
        .collect()
}
