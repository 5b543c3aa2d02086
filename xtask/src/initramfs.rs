//! A minimal initramfs writer: an uncompressed cpio archive in the "newc"
//! format, which every Linux kernel unpacks into its root file system.
//! Directories, regular files and character devices are all the kernel
//! matrix needs, so no `cpio` tool is needed on the host.

use std::{fs, io::Write as _, path::Path};

use anyhow::Context as _;

/// An initramfs being assembled in memory.
#[derive(Default)]
pub struct Initramfs {
    bytes: Vec<u8>,
    inode: u32,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

impl Initramfs {
    /// A directory (its parents must have been added before it).
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    /// A regular file with `mode`'s permission bits and `data` as content.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data);
    }

    /// A regular file copied from the host.
    pub fn copy(&mut self, path: &str, mode: u32, from: &Path) -> anyhow::Result<()> {
        let data = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        self.file(path, mode, &data);
        Ok(())
    }

    /// A character device node, such as `/dev/console` (5, 1): the kernel
    /// opens it for init's standard streams before anything is mounted.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// The archive with its trailer, written to `to`.
    pub fn write(mut self, to: &Path) -> anyhow::Result<()> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        let mut file =
            fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
        file.write_all(&self.bytes)
            .with_context(|| format!("cannot write {}", to.display()))
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let name = path.trim_start_matches('/');
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, are each padded to 4 bytes.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut cpio = Initramfs::default();
        cpio.dir("/bin");
        cpio.file("/init", 0o755, b"#!/bin/sh\n");
        cpio.char_device("/dev/console", 5, 1);
        cpio.entry("TRAILER!!!", 0, (0, 0), &[]);
        assert!(cpio.bytes.len().is_multiple_of(4));
        assert!(cpio.bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&cpio.bytes);
        assert!(text.contains("bin\0"));
        assert!(text.contains("#!/bin/sh\n"));
        assert!(text.contains("0000000B00000000TRAILER!!!\0"));
        // Each header is 110 bytes; name and data start on 4-byte boundaries.
        let console = text.find("dev/console").unwrap_or(0);
        assert_eq!((console - 110) % 4, 0);
    }
}
