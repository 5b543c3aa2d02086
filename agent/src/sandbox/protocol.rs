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
}

/// The sandbox's answer to one [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// One entry per address asked for, in order; `None` where the file
    /// has no name for it.
    Names(Vec<Option<String>>),
    /// The file's build ID in hex, if it has one.
    BuildId(Option<String>),
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
