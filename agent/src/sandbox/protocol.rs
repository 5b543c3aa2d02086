//! What the daemon and its symbolizer sandbox say to each other: frames of
//! a little-endian `u32` length and that many bytes of JSON, over a Unix
//! stream socket, with the file to read passed as a descriptor
//! (`SCM_RIGHTS`) on a request's first bytes.
//!
//! Each side treats the other's frames as untrusted: a length is checked
//! against [`MAX_FRAME`] before anything is allocated, and descriptors that
//! were not expected are closed.

use std::{
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{BorrowedFd, OwnedFd},
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 32 << 20;
/// The longest name the sandbox returns; longer ones are cut (C++ template
/// names run to kilobytes and help no one in a flame graph).
pub const MAX_NAME: usize = 512;
/// The most addresses one request may carry.
pub const MAX_ADDRS: usize = 1 << 16;

/// A question for the sandbox, about the file passed with it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Function names for these offsets into an ELF file.
    Elf {
        /// Offsets into the file (an address minus its mapping's start,
        /// plus the mapping's file offset).
        offsets: Vec<u64>,
    },
    /// Names for these addresses from a perf map (`/tmp/perf-PID.map`,
    /// written by JIT compilers).
    PerfMap {
        /// Process addresses.
        addrs: Vec<u64>,
    },
    /// The GNU build ID of an ELF file.
    BuildId,
    /// Read the file's unwind tables and keep them for [`Request::Unwind`].
    UnwindTables,
    /// Unwind the stacks of several processes (no file is passed): one
    /// request for all the processes a drain of the ring found, because
    /// on a busy host each round trip to the sandbox waits for the
    /// scheduler twice.
    Unwind {
        /// At most [`MAX_STACKS`] stacks and [`MAX_MODULES`] modules in all.
        processes: Vec<ProcessStacks>,
    },
}

/// The stacks of one process, and where its files are mapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStacks {
    /// The process's executable mappings whose files' tables were sent.
    pub modules: Vec<ModuleRef>,
    /// Its copied stacks.
    pub stacks: Vec<StackCopy>,
}

/// The most stacks one [`Request::Unwind`] may carry (each up to 16 KiB,
/// about 22 KiB as base64).
pub const MAX_STACKS: usize = 256;
/// The most modules one [`Request::Unwind`] may name, over all its
/// processes.
pub const MAX_MODULES: usize = 16_384;

/// A file as it is now: the same inode rewritten is another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
}

impl FileId {
    /// The identity of the open file `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> Option<Self> {
        let stat = rustix::fs::fstat(fd).ok()?;
        Some(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: u64::try_from(stat.st_size).ok()?,
            mtime: stat.st_mtime,
            mtime_nsec: i64::try_from(stat.st_mtime_nsec).ok()?,
        })
    }
}

/// One executable mapping of a process, by the file it maps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleRef {
    /// The file, whose tables were sent with [`Request::UnwindTables`].
    pub file: FileId,
    /// Start of the mapping.
    pub start: u64,
    /// End of the mapping.
    pub end: u64,
    /// Offset in the file of the mapping's start.
    pub offset: u64,
}

/// A user stack as the sampler copied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackCopy {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer.
    pub bp: u64,
    /// The user address of `bytes[0]`.
    pub base: u64,
    /// The stack's bytes.
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
}

/// One unwound stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unwound {
    /// The instruction pointer, then return addresses, leaf first.
    pub addrs: Vec<u64>,
    /// False when the walk stopped before the outermost frame.
    pub complete: bool,
}

mod base64_bytes {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// The sandbox's answer to one [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// One entry per address asked for, in order; `None` where the file
    /// has no name for it.
    Names(Vec<Option<String>>),
    /// The file's build ID in hex, if it has one.
    BuildId(Option<String>),
    /// The unwind tables were read; whether the file keeps frame pointers.
    UnwindTables {
        /// See [`super::unwind::UnwindTables::frame_pointers`].
        frame_pointers: bool,
    },
    /// For each process asked about, one entry per stack, in order.
    Unwound(Vec<Vec<Unwound>>),
    /// These files' tables are not held (a new sandbox): send them and ask
    /// again.
    MissingTables(Vec<FileId>),
    /// The file could not be read.
    Failed(String),
}

/// Writes one frame, with `fd` attached to its first bytes.
pub fn send(
    socket: BorrowedFd<'_>,
    message: &impl Serialize,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::other("frame too large"));
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(
        &u32::try_from(body.len())
            .map_err(io::Error::other)?
            .to_le_bytes(),
    );
    frame.extend_from_slice(&body);

    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for the descriptor"));
        }
    }
    let mut sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&frame)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    while sent < frame.len() {
        let rest = frame.get(sent..).unwrap_or_default();
        let mut none = SendAncillaryBuffer::new(&mut []);
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(rest)],
            &mut none,
            SendFlags::NOSIGNAL,
        )? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => sent += n,
        }
    }
    Ok(())
}

/// Reads one frame and the descriptor sent with it, if any. `Ok(None)` at
/// a clean end of stream (the other side closed between frames).
pub fn recv<T: DeserializeOwned>(
    socket: BorrowedFd<'_>,
) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    let mut fd = None;
    while got < header.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let buf = header.get_mut(got..).unwrap_or_default();
        let received = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                // Keep the first; any others are closed as they drop.
                for received_fd in received_fds {
                    fd.get_or_insert(received_fd);
                }
            }
        }
        match received.bytes {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let buf = body.get_mut(filled..).unwrap_or_default();
        match rustix::io::read(socket, buf)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    let message =
        serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((message, fd)))
}
