//! Byte offsets of kernel struct fields, read from the kernel's own BTF.
//!
//! Rust eBPF has no CO-RE relocations yet, so programs that must read a
//! field get its offset as a load-time constant from here. This keeps one
//! binary correct across kernels whose structs differ.

use btf_rs::{Btf, Type};
use hostscope_common::block::offsets;

/// A field could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// /sys/kernel/btf/vmlinux could not be parsed.
    #[error("cannot parse the kernel's BTF: {0}")]
    Parse(String),
    /// The struct or member is not in this kernel's BTF.
    #[error("this kernel has no `{strukt}.{member}` field")]
    Missing {
        /// The struct's name.
        strukt: &'static str,
        /// The member's name.
        member: &'static str,
    },
    /// Fields the program reads together are not laid out as it assumes.
    #[error("unexpected layout: {0}")]
    Unexpected(&'static str),
}

/// Offsets the block I/O programs need, as `(global name, byte offset)`.
pub fn block(btf: &Btf) -> Result<Vec<(&'static str, u32)>, LayoutError> {
    let major = member_offset(btf, "gendisk", "major")?;
    if member_offset(btf, "gendisk", "first_minor")? != major + 4 {
        return Err(LayoutError::Unexpected(
            "gendisk.first_minor does not follow gendisk.major",
        ));
    }
    Ok(vec![
        (offsets::REQUEST_Q, member_offset(btf, "request", "q")?),
        (
            offsets::REQUEST_CMD_FLAGS,
            member_offset(btf, "request", "cmd_flags")?,
        ),
        (
            offsets::QUEUE_DISK,
            member_offset(btf, "request_queue", "disk")?,
        ),
        (offsets::DISK_MAJOR, major),
    ])
}

/// Parses the running kernel's BTF.
pub fn kernel_btf() -> Result<Btf, LayoutError> {
    Btf::from_file("/sys/kernel/btf/vmlinux").map_err(|e| LayoutError::Parse(e.to_string()))
}

/// The byte offset of `strukt.member`, looking through anonymous unions
/// and structs the way C does.
fn member_offset(
    btf: &Btf,
    strukt: &'static str,
    member: &'static str,
) -> Result<u32, LayoutError> {
    let missing = || LayoutError::Missing { strukt, member };
    let types = btf.resolve_types_by_name(strukt).map_err(|_| missing())?;
    types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) => find_member(btf, s, member, 0),
            _ => None,
        })
        .ok_or_else(missing)
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, wanted: &str, base_bits: u32) -> Option<u32> {
    for m in &s.members {
        let bits = base_bits + m.bit_offset();
        match btf.resolve_name(m) {
            Ok(name) if name == wanted => return Some(bits / 8),
            Ok(name) if !name.is_empty() => continue,
            _ => {}
        }
        // An anonymous member: look inside it.
        if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(found) = find_member(btf, &inner, wanted, bits)
        {
            return Some(found);
        }
    }
    None
}
