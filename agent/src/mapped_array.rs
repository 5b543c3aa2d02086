//! A read-only memory mapping of a BPF array created with
//! `BPF_F_MMAPABLE`: the daemon reads its values as memory, without a
//! system call per element.

use std::{
    os::fd::AsFd,
    ptr::{self, NonNull},
};

use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// The mapping; unmapped on drop.
pub struct MappedArray {
    base: NonNull<u8>,
    len: usize,
    value_size: usize,
    entries: usize,
}

// SAFETY: the mapping is only read (volatile, word by word) and stays valid
// until drop; the kernel programs write it concurrently, which volatile
// word reads tolerate (each reads some value the word held).
unsafe impl Send for MappedArray {}
// SAFETY: as for Send: shared reads only.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps `entries` values of `value_size` bytes (a multiple of 8) of the
    /// array behind `fd`, read-only.
    pub fn new(fd: impl AsFd, value_size: usize, entries: usize) -> std::io::Result<Self> {
        let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
        if value_size == 0 || !value_size.is_multiple_of(8) || entries == 0 {
            return Err(invalid());
        }
        let len = value_size.checked_mul(entries).ok_or_else(invalid)?;
        // SAFETY: a fresh shared read-only mapping the kernel places; nothing
        // else refers to that range.
        let base = unsafe {
            mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(invalid)?;
        Ok(Self {
            base,
            len,
            value_size,
            entries,
        })
    }

    /// How many values have a non-zero first word.
    pub fn count_nonzero_first_words(&self) -> usize {
        (0..self.entries)
            .filter(|&i| {
                // SAFETY: `i * value_size` is within the mapping, and 8-byte
                // aligned (the mapping is page-aligned, value_size a
                // multiple of 8).
                let word = unsafe { self.base.as_ptr().add(i * self.value_size).cast::<u64>() };
                // SAFETY: as above; volatile, as the kernel writes it.
                unsafe { ptr::read_volatile(word) != 0 }
            })
            .count()
    }

    /// The values it holds.
    pub fn entries(&self) -> usize {
        self.entries
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the range this value mapped; no reference into it outlives
        // `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.len) };
    }
}
