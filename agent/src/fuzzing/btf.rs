//! The kernel BTF reader: `Btf::parse` and every lookup, on arbitrary bytes.

use super::Violation;
use crate::btf::{self, Btf, Query};

/// Lookups by name per input: each scans every type, so this bounds the
/// work per byte of input (and so the fuzzer's speed), not what is covered.
const MAX_QUERIES: usize = 64;
/// Type ids looked up per input, from 1 (and a few that point nowhere).
const MAX_IDS: u32 = 256;
/// Each type takes at least its 12-byte header.
const MIN_TYPE_LEN: usize = 12;
const HEADER_LEN: usize = 24;

/// Parses `data`; if it is BTF, runs every lookup on every id and name it
/// holds. Promises: no panic, no endless loop; garbage is an error; a blob
/// that parses has a sane header and no more types than fit in it.
pub(super) fn check(data: &[u8]) -> Result<(), Violation> {
    let btf = match Btf::parse(data.to_vec()) {
        Ok(btf) => btf,
        Err(_) => return Ok(()),
    };
    header_is_sane(data)?;
    let count = btf.type_count();
    if count * MIN_TYPE_LEN > data.len() {
        return Err(Violation::Broken(format!(
            "{count} types parsed from {} bytes",
            data.len()
        )));
    }
    let last = u32::try_from(count).unwrap_or(u32::MAX);
    let ids = (0..=last.min(MAX_IDS)).chain([last.saturating_add(1), u32::MAX]);
    for id in ids {
        // Results are not checked: for bad BTF an error is as right as any
        // answer. What is checked is that each returns at all.
        let _ = btf.resolve(id);
        let _ = btf.size_of(id);
        let _ = btf.pointee_struct_name(id);
        let _ = btf.type_name(id);
    }
    for query in btf.queries(MAX_QUERIES) {
        match query {
            Query::Member(strukt, member) => {
                if let Ok(found) = btf.member(&strukt, &member) {
                    // What kernel_layout does next with a member.
                    let _ = btf.size_of(found.type_id);
                    let _ = btf.pointee_struct_name(found.type_id);
                }
            }
            Query::EnumValue(name, value) => {
                let _ = btf.enum_value(&name, &value);
            }
            Query::TracepointArgs(name) => {
                for arg in btf.tracepoint_args(&name).unwrap_or_default() {
                    let _ = btf.pointee_struct_name(arg);
                    let _ = btf.type_name(arg);
                }
            }
        }
    }
    Ok(())
}

/// A blob that parsed must have had what the kernel itself requires of a
/// header (btf_parse_hdr): the magic, version 1, no flags, and the type and
/// string sections after the header, apart, and inside the blob.
fn header_is_sane(data: &[u8]) -> Result<(), Violation> {
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let broken = |why: &str| Err(Violation::Broken(format!("parsed a blob with {why}")));
    let (Some(first), Some(header_len), Some(type_off), Some(type_len)) =
        (word(0), word(4), word(8), word(12))
    else {
        return broken("a truncated header");
    };
    let (Some(str_off), Some(str_len)) = (word(16), word(20)) else {
        return broken("a truncated header");
    };
    let [m0, m1, version, flags] = (first as u32).to_ne_bytes();
    let magic = u16::from_ne_bytes([m0, m1]);
    if magic != 0xeb9f || version != 1 || flags != 0 || header_len < HEADER_LEN {
        return broken("a bad magic, version, flags or header length");
    }
    let types = header_len + type_off..header_len + type_off + type_len;
    let strings = header_len + str_off..header_len + str_off + str_len;
    if types.end > data.len() || strings.end > data.len() {
        return broken("a section past its end");
    }
    let apart = types.is_empty()
        || strings.is_empty()
        || types.end <= strings.start
        || strings.end <= types.start;
    if !apart {
        return broken("overlapping type and string sections");
    }
    Ok(())
}

/// The unit tests' sample, one type of every kind, and (when the running
/// kernel has BTF) its first types with the start of its strings.
pub(super) fn seeds(vmlinux: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut seeds = vec![btf::sample_blob(), btf::every_kind_blob()];
    if let Some(vmlinux) = vmlinux {
        for (types, strings) in [(40, 1 << 10), (200, 6 << 10)] {
            if let Ok(seed) = btf::excerpt(vmlinux, types, strings) {
                seeds.push(seed);
            }
        }
    }
    seeds
}
