//! Unwind tables and stack bytes, both another process's to choose: the
//! sandbox reads a file's `.eh_frame`/`.debug_frame` and walks a copied
//! stack through them. The input is the file, and its bytes are the stack
//! too: no panic, and every walk bounded.

use super::{Violation, symbols::memory_file};
use crate::sandbox::{MAX_FRAMES, ProcessUnwinder, StackCopy, UnwindTables};

/// Where the fuzzed module is mapped, and its stack.
const MODULE_START: u64 = 0x40_0000;
const STACK_BASE: u64 = 0x7ffd_0000_0000;
/// Instruction pointers tried per input.
const WALKS: u64 = 64;

pub(super) fn check(data: &[u8]) -> Result<(), Violation> {
    let file = memory_file(data).map_err(|e| Violation::Broken(format!("memfd: {e}")))?;
    let Ok(tables) = UnwindTables::read(&file) else {
        return Ok(());
    };
    let len = data.len() as u64;
    let Some(module) = tables.module(MODULE_START..MODULE_START + len.max(1), 0) else {
        return Ok(());
    };
    let mut unwinder = ProcessUnwinder::new(&[module]);
    let step = (len / WALKS).max(1);
    let stacks: Vec<StackCopy> = (0..WALKS)
        .map(|i| StackCopy {
            ip: MODULE_START + i * step,
            sp: STACK_BASE + (i * 8) % 256,
            bp: STACK_BASE + (i * 24) % 512,
            base: STACK_BASE,
            bytes: data.to_vec(),
        })
        .collect();
    for walked in unwinder.unwind(&stacks) {
        if walked.addrs.is_empty() || walked.addrs.len() > MAX_FRAMES {
            return Err(Violation::Broken(format!(
                "a walk of {} frames",
                walked.addrs.len()
            )));
        }
    }
    Ok(())
}
