//! Symbolization of other processes' files, in a process of its own.
//!
//! Every binary, library and perf map on the host may be hostile: a
//! compressed section that claims a terabyte, a zlib bomb, a truncated
//! table. The daemon never parses them. It opens each file itself (see
//! `profile::files`: regular files only, never by a path the process can
//! swap) and hands the descriptor to a sandbox: `/proc/self/exe
//! __symbolize-sandbox`, started with no capabilities and
//! `no_new_privs`, limited to [`MEMORY_LIMIT`] of address space and
//! [`CPU_SECONDS`] of CPU, which then installs a seccomp filter that allows
//! reading what it was given and answering on its socket, nothing else.
//!
//! If the sandbox crashes, hits a limit or does not answer within
//! [`REPLY_TIMEOUT`], the file it was reading gets no names (its frames
//! read `file+0xOFFSET`), the sandbox is killed and a new one is started
//! for the next file; a file that does this twice is not sent again.

pub(crate) mod elf;
pub(crate) mod gopclntab;
pub(crate) mod perfmap;
mod protocol;
mod seccomp;
pub(crate) mod unwind;
pub mod worker;

use std::{
    collections::{HashMap, HashSet},
    io,
    ops::Range,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command, Stdio},
    time::Duration,
};

use rustix::{
    net::{AddressFamily, SocketFlags, SocketType},
    process::{Resource, Rlimit},
    thread::{CapabilitySet, CapabilitySets},
};

pub use elf::truncate;
pub use protocol::{FileId, ModuleRef, ProcessStacks, StackCopy, Unwound};
use protocol::{MAX_ADDRS, MAX_MODULES, MAX_STACKS, Reply, Request};
pub(crate) use unwind::{MAX_FRAMES, ProcessUnwinder, UnwindTables};

/// The hidden subcommand that runs the sandbox.
pub const SUBCOMMAND: &str = "__symbolize-sandbox";
/// The sandbox's address-space limit.
pub const MEMORY_LIMIT: u64 = 256 << 20;
/// The sandbox's CPU-time limit over its life; it is replaced before a
/// capture once it has used half of it.
pub const CPU_SECONDS: u64 = 60;
/// How long one answer may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The sandbox did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox process could not be started.
    #[error("cannot start the symbolizer sandbox: {0}")]
    Spawn(io::Error),
    /// It died, hit a limit, timed out or sent something malformed.
    #[error("the symbolizer sandbox failed ({0}) and was restarted")]
    Failed(String),
    /// It could not read this one file.
    #[error("{0}")]
    File(String),
}

/// The daemon's handle on the sandbox, started on first use.
#[derive(Debug, Default)]
pub struct Sandbox {
    worker: Option<Worker>,
    /// How often each file (as it is now) made a sandbox fail. One that
    /// did [`STRIKES`] times is never sent again, so that a hostile file
    /// costs its own names, not every capture's time; one failure may be
    /// bad luck (a host too loaded to answer in time).
    failures: HashMap<FileKey, u8>,
}

/// Failures after which a file is not read again.
const STRIKES: u8 = 2;

/// A file's identity and version: device, inode, size, modification time.
type FileKey = (u64, u64, i64, i64, u64);

/// Files whose failures are remembered at most (a few MiB).
const QUARANTINE_MAX: usize = 65_536;

fn file_key(file: BorrowedFd<'_>) -> Option<FileKey> {
    let stat = rustix::fs::fstat(file).ok()?;
    Some((
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime,
        stat.st_mtime_nsec,
    ))
}

#[derive(Debug)]
struct Worker {
    child: Child,
    socket: OwnedFd,
}

impl Sandbox {
    /// Replaces a sandbox that has used half its CPU-time limit, so that
    /// the limit never strikes in the middle of a capture.
    pub fn refresh(&mut self) {
        if self
            .worker
            .as_ref()
            .is_some_and(|w| w.cpu_seconds() > CPU_SECONDS / 2)
        {
            self.worker = None;
        }
    }

    /// Names for offsets into the ELF file `file`.
    pub fn elf_names(
        &mut self,
        file: BorrowedFd<'_>,
        offsets: &[u64],
    ) -> Result<Vec<Option<String>>, SandboxError> {
        self.ask_in_chunks(file, offsets, |offsets| Request::Elf { offsets })
    }

    /// Names for addresses from the perf map `file`.
    pub fn perf_map_names(
        &mut self,
        file: BorrowedFd<'_>,
        addrs: &[u64],
    ) -> Result<Vec<Option<String>>, SandboxError> {
        self.ask_in_chunks(file, addrs, |addrs| Request::PerfMap { addrs })
    }

    /// The GNU build ID of the ELF file `file`, in hex.
    pub fn build_id(&mut self, file: BorrowedFd<'_>) -> Result<Option<String>, SandboxError> {
        if self.quarantined(file) {
            return Err(SandboxError::File(
                "it made the sandbox fail before and is not read again".into(),
            ));
        }
        match self.exchange(Some(file), &Request::BuildId)? {
            // Checked: the sandbox's answers are not trusted either.
            Reply::BuildId(id) => {
                Ok(id.filter(|id| id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())))
            }
            Reply::Failed(why) => Err(SandboxError::File(why)),
            _ => Err(self.confused("a build ID request")),
        }
    }

    /// Has the sandbox read `file`'s unwind tables; whether the file keeps
    /// frame pointers.
    pub fn unwind_tables(&mut self, file: BorrowedFd<'_>) -> Result<bool, SandboxError> {
        if self.quarantined(file) {
            return Err(SandboxError::File(
                "it made the sandbox fail before and is not read again".into(),
            ));
        }
        let answer = self.exchange(Some(file), &Request::UnwindTables);
        if let Err(err) = &answer {
            self.strike(err, file_key(file));
        }
        match answer? {
            Reply::UnwindTables { frame_pointers } => Ok(frame_pointers),
            Reply::Failed(why) => Err(SandboxError::File(why)),
            _ => Err(self.confused("an unwind-tables request")),
        }
    }

    /// Unwinds each process's stacks through its modules, in as few
    /// requests as the limits allow. The tables of files the sandbox does
    /// not hold (it was restarted) are sent first, from `open_file`; a
    /// module whose file cannot be sent is left out.
    pub fn unwind<'f>(
        &mut self,
        processes: &[ProcessStacks],
        open_file: impl Fn(&FileId) -> Option<BorrowedFd<'f>>,
    ) -> Result<Vec<Vec<Unwound>>, SandboxError> {
        let mut unsendable: HashSet<FileId> = HashSet::new();
        let mut unwound: Vec<Vec<Unwound>> = processes
            .iter()
            .map(|p| Vec::with_capacity(p.stacks.len()))
            .collect();
        for request in pack(processes) {
            let mut attempts = 0;
            loop {
                let asked: Vec<ProcessStacks> = request
                    .iter()
                    .map(|(i, stacks)| {
                        let process = &processes[*i];
                        ProcessStacks {
                            modules: process
                                .modules
                                .iter()
                                .filter(|m| !unsendable.contains(&m.file))
                                .cloned()
                                .collect(),
                            stacks: process.stacks[stacks.clone()].to_vec(),
                        }
                    })
                    .collect();
                match self.exchange(None, &Request::Unwind { processes: asked })? {
                    Reply::Unwound(answers)
                        if answers.len() == request.len()
                            && answers
                                .iter()
                                .zip(&request)
                                .all(|(a, (_, stacks))| a.len() == stacks.len()) =>
                    {
                        for ((i, _), answer) in request.iter().zip(answers) {
                            unwound[*i].extend(answer);
                        }
                        break;
                    }
                    Reply::MissingTables(files) if attempts == 0 => {
                        attempts += 1;
                        for id in files {
                            let sent =
                                open_file(&id).is_some_and(|fd| self.unwind_tables(fd).is_ok());
                            if !sent {
                                unsendable.insert(id);
                            }
                        }
                    }
                    Reply::Failed(why) => return Err(SandboxError::File(why)),
                    _ => return Err(self.confused("an unwind request")),
                }
            }
        }
        Ok(unwound)
    }

    /// Drops a sandbox that answered something else than was asked.
    fn confused(&mut self, request: &str) -> SandboxError {
        self.worker = None;
        SandboxError::Failed(format!("a wrong kind of answer to {request}"))
    }

    /// Counts a failure of the sandbox (not of the file alone) against the
    /// file it was reading.
    fn strike(&mut self, err: &SandboxError, key: Option<FileKey>) {
        if let (SandboxError::Failed(_), Some(key)) = (err, key)
            && self.failures.len() < QUARANTINE_MAX
        {
            *self.failures.entry(key).or_default() += 1;
        }
    }

    /// Whether `file` made the sandbox fail too often to be read again.
    fn quarantined(&self, file: BorrowedFd<'_>) -> bool {
        file_key(file)
            .and_then(|key| self.failures.get(&key))
            .is_some_and(|n| *n >= STRIKES)
    }

    fn ask_in_chunks(
        &mut self,
        file: BorrowedFd<'_>,
        addrs: &[u64],
        request: impl Fn(Vec<u64>) -> Request,
    ) -> Result<Vec<Option<String>>, SandboxError> {
        let key = file_key(file);
        if self.quarantined(file) {
            return Err(SandboxError::File(
                "it made the sandbox fail before and is not read again".into(),
            ));
        }
        let mut names = Vec::with_capacity(addrs.len());
        for chunk in addrs.chunks(MAX_ADDRS) {
            match self.ask(file, request(chunk.to_vec()), chunk.len()) {
                Ok(found) => names.extend(found),
                Err(err) => {
                    self.strike(&err, key);
                    return Err(err);
                }
            }
        }
        Ok(names)
    }

    fn ask(
        &mut self,
        file: BorrowedFd<'_>,
        request: Request,
        expected: usize,
    ) -> Result<Vec<Option<String>>, SandboxError> {
        match self.exchange(Some(file), &request)? {
            Reply::Names(names) if names.len() == expected => Ok(names),
            Reply::Failed(why) => Err(SandboxError::File(why)),
            Reply::Names(names) => {
                self.worker = None;
                Err(SandboxError::Failed(format!(
                    "{} names for {expected} addresses",
                    names.len()
                )))
            }
            _ => Err(self.confused("a names request")),
        }
    }

    /// Sends one request and reads its reply; on any failure but the
    /// file's own, the worker is dropped (killed) and the next request
    /// starts a new one.
    fn exchange(
        &mut self,
        file: Option<BorrowedFd<'_>>,
        request: &Request,
    ) -> Result<Reply, SandboxError> {
        // One that died while idle (killed by the OOM killer, say) is
        // replaced before it costs a file its names.
        if let Some(worker) = &mut self.worker
            && let Ok(Some(status)) = worker.child.try_wait()
        {
            tracing::warn!("the symbolizer sandbox exited while idle ({status}); starting another");
            self.worker = None;
        }
        let worker = match &mut self.worker {
            Some(worker) => worker,
            None => self
                .worker
                .insert(Worker::spawn().map_err(SandboxError::Spawn)?),
        };
        let failed = |what: String| SandboxError::Failed(what);
        let answer = protocol::send(worker.socket.as_fd(), request, file)
            .and_then(|()| protocol::recv::<Reply>(worker.socket.as_fd()));
        let result = match answer {
            Ok(Some((reply, _))) => Ok(reply),
            Ok(None) => Err(failed(worker.exit_reason())),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(failed(format!(
                "no answer within {} s",
                REPLY_TIMEOUT.as_secs()
            ))),
            Err(err) => Err(failed(format!("{err}; {}", worker.exit_reason()))),
        };
        if result.is_err() {
            // Dropping the worker kills it; the next request starts anew.
            self.worker = None;
        }
        result
    }
}

/// Which stacks of which process (by index) each unwind request carries:
/// at most [`MAX_STACKS`] stacks and [`MAX_MODULES`] modules a request, a
/// process with more stacks than that split over several.
fn pack(processes: &[ProcessStacks]) -> Vec<Vec<(usize, Range<usize>)>> {
    let mut requests = Vec::new();
    let mut request: Vec<(usize, Range<usize>)> = Vec::new();
    let (mut stacks, mut modules) = (0, 0);
    for (i, process) in processes.iter().enumerate() {
        let mut start = 0;
        while start < process.stacks.len() {
            let full = stacks == MAX_STACKS || modules + process.modules.len() > MAX_MODULES;
            if full && !request.is_empty() {
                requests.push(std::mem::take(&mut request));
                (stacks, modules) = (0, 0);
            }
            let end = process.stacks.len().min(start + (MAX_STACKS - stacks));
            request.push((i, start..end));
            stacks += end - start;
            modules += process.modules.len();
            start = end;
        }
    }
    if !request.is_empty() {
        requests.push(request);
    }
    requests
}

impl Worker {
    fn spawn() -> io::Result<Self> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(REPLY_TIMEOUT),
        )?;
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Send,
            Some(REPLY_TIMEOUT),
        )?;
        let mut command = Command::new("/proc/self/exe");
        command
            .arg(SUBCOMMAND)
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: `confine` makes only async-signal-safe raw system calls.
        unsafe { command.pre_exec(confine) };
        let child = command.spawn()?;
        Ok(Self {
            child,
            socket: ours,
        })
    }

    /// CPU seconds the sandbox has used (utime + stime in /proc/PID/stat).
    fn cpu_seconds(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may
        // contain anything.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: u64 = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse::<u64>().ok())
            .sum();
        let hz = rustix::param::clock_ticks_per_second().max(1);
        ticks / hz
    }

    /// How the sandbox ended, if it has.
    fn exit_reason(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(20));
        match self.child.try_wait() {
            Ok(Some(status)) => format!("it exited: {status}"),
            _ => "it closed its socket".into(),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `close_range` flag: mark close-on-exec instead of closing now.
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// Runs in the forked child before exec: the sandbox starts with no
/// capabilities and cannot gain any (`no_new_privs` also stops exec from
/// giving root its capabilities back), and has its limits. (It needs no
/// parent-death signal, which would fire when the *thread* that started it
/// ends: when the daemon goes, its socket closes and the sandbox exits;
/// one stuck in a loop meets its CPU limit.) Only raw system calls: the fork of a threaded process may not
/// allocate.
fn confine() -> io::Result<()> {
    rustix::thread::set_no_new_privs(true)?;
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )?;
    let limit = |resource, value| {
        rustix::process::setrlimit(
            resource,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
    };
    limit(Resource::As, MEMORY_LIMIT)?;
    limit(Resource::Cpu, CPU_SECONDS)?;
    limit(Resource::Core, 0)?;
    limit(Resource::Nofile, 64)?;
    // Only the socket (standard input), /dev/null and stderr cross exec,
    // even if some descriptor of the daemon's lacked O_CLOEXEC.
    // SAFETY: a raw system call that only sets flags on descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(modules: usize, stacks: usize) -> ProcessStacks {
        let file = FileId {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: 4,
            mtime_nsec: 5,
        };
        let module = ModuleRef {
            file,
            start: 0x1000,
            end: 0x2000,
            offset: 0,
        };
        let stack = StackCopy {
            ip: 0x1100,
            sp: 0x7000,
            bp: 0,
            base: 0x7000,
            bytes: Vec::new(),
        };
        ProcessStacks {
            modules: vec![module; modules],
            stacks: vec![stack; stacks],
        }
    }

    #[test]
    fn unwind_requests_carry_every_stack_once_within_the_limits() {
        let processes = vec![
            process(10, 3),
            process(5, 0),
            process(20, MAX_STACKS + 7),
            process(MAX_MODULES - 1, 2),
            process(3, 1),
        ];
        let requests = pack(&processes);
        let mut carried = vec![0; processes.len()];
        for request in &requests {
            let stacks: usize = request.iter().map(|(_, r)| r.len()).sum();
            let modules: usize = request
                .iter()
                .map(|(i, _)| processes[*i].modules.len())
                .sum();
            assert!(stacks <= MAX_STACKS, "{stacks} stacks in one request");
            assert!(modules <= MAX_MODULES, "{modules} modules in one request");
            for (i, range) in request {
                assert!(!range.is_empty());
                assert_eq!(
                    range.start, carried[*i],
                    "stacks of process {i} out of order"
                );
                carried[*i] = range.end;
            }
        }
        let expected: Vec<usize> = processes.iter().map(|p| p.stacks.len()).collect();
        assert_eq!(carried, expected);
        // Small processes share requests: 5 processes, 266 stacks, 4 requests.
        assert_eq!(requests.len(), 4, "{requests:?}");
    }
}
