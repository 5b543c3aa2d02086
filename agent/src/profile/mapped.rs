//! Reading a sampled process's mappings and opening the files it maps, on
//! threads of their own.
//!
//! Reading `/proc/PID/maps` (and opening `/proc/PID/map_files`) waits for
//! the process's memory-map locks. A process can hold them as long as it
//! likes (one that maps and unmaps in a loop, a page fault parked in
//! userfaultfd), and a low-priority process can be preempted while holding
//! one: with 300 busy nice-19 processes, single reads took 400-600 ms
//! here. So each read runs on one of [`READERS`] threads and answers when
//! it can; a slow process delays its own stacks, never the unwinding and
//! naming of the others, and a capture waits for it only so long.

use std::{
    collections::HashSet,
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use super::{
    files,
    procmaps::{self, Mapping},
};

/// Reads at once: as many processes may hold their locks without holding
/// up the rest.
pub const READERS: usize = 8;
/// The most executable mappings kept per process (a process can map the
/// same file tens of thousands of times).
const MAX_MAPPINGS: usize = 4096;

/// What was read of one process.
#[derive(Debug)]
pub struct Read {
    /// The process.
    pub tgid: u32,
    /// Its executable mappings and files; `None` if it could not be read
    /// (it exited, or is not ours to read).
    pub process: Option<ReadProcess>,
}

/// A process's executable mappings and the files behind them.
#[derive(Debug)]
pub struct ReadProcess {
    /// Sorted by address.
    pub mappings: Vec<Mapping>,
    /// Beside each mapping, its file if this read opened it: not if
    /// another read already did (same device and inode), or the limit of
    /// open files was reached.
    pub files: Vec<Option<OwnedFd>>,
    /// The perf map (`/tmp/perf-PID.map`) a JIT wrote, if trusted.
    pub perf_map: Option<OwnedFd>,
}

/// Files opened by all readers, shared so that each is opened once.
#[derive(Debug)]
struct Opened {
    /// By device and inode as the maps file names them.
    files: Mutex<HashSet<(u64, u64)>>,
    count: AtomicUsize,
    max: usize,
}

/// The reader threads; they end when this is dropped (one stuck in the
/// kernel, when the kernel lets it go).
pub struct Readers {
    requests: mpsc::Sender<u32>,
}

impl Readers {
    /// Starts the threads, which give each [`Read`] to `done` and open at
    /// most `max_files` files in all.
    pub fn start(done: impl Fn(Read) + Send + Clone + 'static, max_files: usize) -> Self {
        let (requests, queue) = mpsc::channel::<u32>();
        let queue = Arc::new(Mutex::new(queue));
        let opened = Arc::new(Opened {
            files: Mutex::new(HashSet::new()),
            count: AtomicUsize::new(0),
            max: max_files,
        });
        for _ in 0..READERS {
            let (queue, opened, done) = (queue.clone(), opened.clone(), done.clone());
            let spawned = std::thread::Builder::new()
                .name("read-maps".into())
                .spawn(move || {
                    loop {
                        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(tgid) = next else { return };
                        done(Read {
                            tgid,
                            process: read(tgid, &opened),
                        });
                    }
                });
            if let Err(err) = spawned {
                tracing::error!("cannot start a mappings reader: {err}");
            }
        }
        Self { requests }
    }

    /// Reads `tgid` when a reader is free.
    pub fn read(&self, tgid: u32) {
        let _ = self.requests.send(tgid);
    }
}

fn read(tgid: u32, opened: &Opened) -> Option<ReadProcess> {
    let mut mappings = procmaps::read(tgid)
        .map_err(|err| tracing::debug!(tgid, "cannot read its mappings: {err}"))
        .ok()?;
    mappings.truncate(MAX_MAPPINGS);
    let files = mappings.iter().map(|m| open(tgid, m, opened)).collect();
    let perf_map = files::open_perf_map(tgid).unwrap_or_else(|err| {
        tracing::debug!(tgid, "perf map not used: {err}");
        None
    });
    Some(ReadProcess {
        mappings,
        files,
        perf_map,
    })
}

fn open(tgid: u32, mapping: &Mapping, opened: &Opened) -> Option<OwnedFd> {
    if !mapping.is_file() {
        return None;
    }
    let key = (mapping.device, mapping.inode);
    if !opened
        .files
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key)
    {
        return None;
    }
    let claimed = opened.count.fetch_add(1, Ordering::Relaxed) < opened.max;
    let fd = claimed
        .then(|| {
            files::open_mapping(tgid, mapping)
                .map_err(|err| tracing::debug!(tgid, "{}: {err}", mapping.module_name()))
                .ok()
        })
        .flatten();
    if fd.is_none() {
        // Another process's mapping of the file may open it yet.
        opened.count.fetch_sub(1, Ordering::Relaxed);
        opened
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }
    fd
}
