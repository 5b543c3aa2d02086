//! User stacks the sampler copied rather than walked (see
//! `ebpf/src/profile.rs`): parsed from the ring buffer, unwound by the
//! sandbox while the capture runs, and counted here, so that memory holds
//! counts rather than stack copies. At the end they join the kernel's
//! counts as stacks of their own.

use std::collections::HashMap;

use hostscope_common::profile::{SampleKey, USER_STACK_BYTES, UserStackHeader};

use super::capture::Raw;
use crate::sandbox::{StackCopy, Unwound};

/// Marks, as a stack's last (outermost) address, a stack whose walk stopped
/// before its outermost frame: it is shown as one `[truncated]` frame.
pub const TRUNCATED: u64 = u64::MAX;

/// Ids given to unwound stacks in [`Raw::stacks`], above any the kernel's
/// stack map gives.
const FIRST_ID: u32 = 1 << 30;

/// One ring-buffer record.
#[derive(Debug, Clone)]
pub struct Copied {
    /// As in [`SampleKey`].
    pub cgroup: u64,
    /// As in [`SampleKey`].
    pub tgid: u32,
    /// As in [`SampleKey`].
    pub kernel_stack: i32,
    /// The registers and the stack from the stack pointer up; no bytes if
    /// the task had no user stack (a kernel thread).
    pub stack: StackCopy,
}

impl Copied {
    /// Parses a record; `None` if it is malformed.
    pub fn parse(record: &[u8]) -> Option<Self> {
        let size = size_of::<UserStackHeader>();
        let head = record.get(..size)?;
        // SAFETY: `head` is exactly one header's bytes; every bit pattern
        // is a valid header (integers only), and the read is unaligned.
        let header: UserStackHeader =
            unsafe { std::ptr::read_unaligned(head.as_ptr().cast::<UserStackHeader>()) };
        let len = usize::try_from(header.stack_len).ok()?;
        if len > USER_STACK_BYTES {
            return None;
        }
        let copied = record.get(size..size.checked_add(len)?)?;
        // The copy starts at the stack pointer's page; below the pointer
        // is dead stack.
        let skip = header
            .sp
            .checked_sub(header.stack_base)
            .and_then(|s| usize::try_from(s).ok());
        let bytes = match skip.and_then(|s| copied.get(s..)) {
            Some(live) if header.ip != 0 => live.to_vec(),
            _ => Vec::new(),
        };
        Some(Self {
            cgroup: header.cgroup,
            tgid: header.tgid,
            kernel_stack: header.kernel_stack,
            stack: StackCopy {
                ip: header.ip,
                sp: header.sp,
                bp: header.bp,
                base: header.sp,
                bytes,
            },
        })
    }
}

/// What a stack is counted under.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    cgroup: u64,
    tgid: u32,
    kernel_stack: i32,
    /// Leaf first, ending in [`TRUNCATED`] if incomplete; empty for none.
    user: Vec<u64>,
}

/// Counts of unwound stacks.
#[derive(Debug, Default)]
pub struct Counts {
    counts: HashMap<Key, u64>,
    /// Samples whose stack could not be unwound at all.
    pub dropped: u64,
}

impl Counts {
    /// Counts one sample: `unwound` if the sandbox walked it, else only the
    /// instruction pointer, marked truncated.
    pub fn add(&mut self, copied: &Copied, unwound: Option<Unwound>) {
        let user = if copied.stack.ip == 0 {
            Vec::new()
        } else {
            let (mut addrs, complete) =
                unwound.map_or_else(|| (vec![copied.stack.ip], false), |u| (u.addrs, u.complete));
            if addrs.is_empty() {
                addrs.push(copied.stack.ip);
            }
            if !complete {
                addrs.push(TRUNCATED);
            }
            addrs
        };
        *self
            .counts
            .entry(Key {
                cgroup: copied.cgroup,
                tgid: copied.tgid,
                kernel_stack: copied.kernel_stack,
                user,
            })
            .or_default() += 1;
    }

    /// Adds the counts to `raw`, each unwound stack under an id of its own
    /// (past those given by an earlier call).
    pub fn add_to(self, raw: &mut Raw) {
        let mut next = raw
            .stacks
            .keys()
            .filter(|id| **id >= FIRST_ID)
            .max()
            .map_or(FIRST_ID, |last| last.saturating_add(1));
        for (key, count) in self.counts {
            let user_stack = if key.user.is_empty() {
                -1
            } else {
                let id = next;
                next += 1;
                raw.stacks.insert(id, key.user);
                i32::try_from(id).unwrap_or(-1)
            };
            raw.counts.push((
                SampleKey {
                    cgroup: key.cgroup,
                    tgid: key.tgid,
                    user_stack,
                    kernel_stack: key.kernel_stack,
                    reserved: 0,
                },
                count,
            ));
        }
        raw.dropped += self.dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(header: UserStackHeader, stack: &[u8]) -> Vec<u8> {
        // SAFETY: a plain-integer struct viewed as its bytes.
        let head = unsafe {
            std::slice::from_raw_parts(
                (&raw const header).cast::<u8>(),
                size_of::<UserStackHeader>(),
            )
        };
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(stack);
        bytes
    }

    fn header(sp: u64, stack_len: u32) -> UserStackHeader {
        UserStackHeader {
            cgroup: 9,
            tgid: 42,
            kernel_stack: -1,
            ip: 0x1000,
            sp,
            bp: 0,
            stack_base: 0x7000,
            stack_len,
            reserved: 0,
        }
    }

    #[test]
    fn a_record_keeps_the_stack_from_the_stack_pointer_up() {
        let stack: Vec<u8> = (0..=255).cycle().take(4096).collect();
        let copied = Copied::parse(&record(header(0x7010, 4096), &stack)).unwrap();
        assert_eq!(copied.stack.base, 0x7010);
        assert_eq!(copied.stack.bytes, stack[0x10..]);
        assert_eq!((copied.tgid, copied.cgroup), (42, 9));
    }

    #[test]
    fn malformed_records_are_refused_or_emptied() {
        // Shorter than a header; a length past the record; over the limit.
        assert!(Copied::parse(&[0; 8]).is_none());
        assert!(Copied::parse(&record(header(0x7010, 4096), &[0; 100])).is_none());
        assert!(Copied::parse(&record(header(0x7010, 1 << 20), &[0; 100])).is_none());
        // A stack pointer below the copy's base, or past its end: no bytes.
        for sp in [0x10, 0x7000 + 8192] {
            let copied = Copied::parse(&record(header(sp, 4096), &[0; 4096])).unwrap();
            assert!(copied.stack.bytes.is_empty());
        }
    }

    #[test]
    fn incomplete_stacks_end_in_the_truncation_mark_and_get_ids_of_their_own() {
        let copied = Copied::parse(&record(header(0x7010, 4096), &[0; 4096])).unwrap();
        let mut counts = Counts::default();
        let walked = Unwound {
            addrs: vec![0x1000, 0x2000],
            complete: true,
        };
        counts.add(&copied, Some(walked.clone()));
        counts.add(&copied, Some(walked));
        counts.add(&copied, None);
        let mut raw = Raw::default();
        counts.add_to(&mut raw);
        let mut stacks: Vec<(Vec<u64>, u64)> = raw
            .counts
            .iter()
            .map(|(key, count)| {
                assert!(u32::try_from(key.user_stack).unwrap() >= FIRST_ID);
                (
                    raw.stacks[&u32::try_from(key.user_stack).unwrap()].clone(),
                    *count,
                )
            })
            .collect();
        stacks.sort();
        assert_eq!(
            stacks,
            [(vec![0x1000, 0x2000], 2), (vec![0x1000, TRUNCATED], 1)]
        );
    }
}
