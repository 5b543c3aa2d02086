//! Byte offsets of kernel struct fields, read from the kernel's own BTF.
//!
//! Rust eBPF has no CO-RE relocations yet, so programs that must read a
//! field get its offset as a load-time constant from here. This keeps one
//! binary correct across kernels whose structs differ.

use btf_rs::{Btf, Type};
use hostscope_common::{block, tcp};

/// A field could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The kernel BTF file could not be parsed.
    #[error("cannot parse kernel BTF at {path}: {reason}; point --kernel-btf at this kernel's BTF")]
    Parse {
        /// The file.
        path: String,
        /// btf-rs's reason.
        reason: String,
    },
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

/// Load-time constants: `(global name, byte offset)`.
pub type Offsets = Vec<(&'static str, u32)>;

/// Offsets the block I/O programs need.
pub fn block(btf: &Btf) -> Result<Offsets, LayoutError> {
    use block::offsets;
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

/// Offsets the TCP programs need.
pub fn tcp(btf: &Btf) -> Result<Offsets, LayoutError> {
    use tcp::offsets;
    Ok(vec![
        (
            offsets::TCP_SOCK_SRTT_US,
            member_offset(btf, "tcp_sock", "srtt_us")?,
        ),
        (
            offsets::SOCK_PROTOCOL,
            member_offset(btf, "sock", "sk_protocol")?,
        ),
    ])
}

/// Parses the kernel's BTF at `path` (normally /sys/kernel/btf/vmlinux).
pub fn kernel_btf(path: &std::path::Path) -> Result<Btf, LayoutError> {
    Btf::from_file(path).map_err(|e| LayoutError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
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
