//! Function names from a Go binary's `.gopclntab`, the table the Go
//! runtime itself uses for tracebacks. Go release binaries are often
//! stripped of `.symtab` (`-ldflags=-s`, as Debian builds them), but this
//! table stays, so their frames can still be named.
//!
//! Runs in the sandbox on bytes another process controls: every offset and
//! count is checked against the table's length, names are cut to
//! [`MAX_NAME`] bytes, and a malformed table yields fewer names, never a
//! panic. Four layouts exist; the magic number says which:
//!
//! | magic        | Go        | function table entries                  |
//! |--------------|-----------|-----------------------------------------|
//! | `0xfffffffb` | 1.2-1.15  | (entry pc, func offset), pointer-sized  |
//! | `0xfffffffa` | 1.16-1.17 | (entry pc, func offset), pointer-sized  |
//! | `0xfffffff0` | 1.18-1.19 | (entry offset from text start, func offset), u32 |
//! | `0xfffffff1` | 1.20+     | as 1.18                                 |

use super::protocol::MAX_NAME;

const GO_1_2: u32 = 0xffff_fffb;
const GO_1_16: u32 = 0xffff_fffa;
const GO_1_18: u32 = 0xffff_fff0;
const GO_1_20: u32 = 0xffff_fff1;

/// `(entry address, name)` of each function, at most `max` of them, in
/// table order (by address); empty if `table` is not a table we read.
pub fn functions(table: &[u8], max: usize) -> Vec<(u64, String)> {
    read(table, max).unwrap_or_default()
}

fn read(table: &[u8], max: usize) -> Option<Vec<(u64, String)>> {
    let magic = u32::from_le_bytes(table.get(..4)?.try_into().ok()?);
    // Two zero bytes, the instruction size quantum, the pointer size.
    if table.get(4..6)? != [0, 0] || !matches!(table.get(6)?, 1 | 2 | 4) {
        return None;
    }
    let ptr = usize::from(*table.get(7)?);
    if ptr != 4 && ptr != 8 {
        return None;
    }
    let word = |at: usize| -> Option<u64> {
        let bytes = table.get(at..at.checked_add(ptr)?)?;
        Some(match ptr {
            4 => u64::from(u32::from_le_bytes(bytes.try_into().ok()?)),
            _ => u64::from_le_bytes(bytes.try_into().ok()?),
        })
    };
    let header = |i: usize| word(8 + i * ptr).and_then(|v| usize::try_from(v).ok());
    let nfunc = header(0)?;
    // Each entry takes at least 8 bytes of the table: a larger count lies.
    let count = nfunc.min(max).min(table.len() / 8);
    let mut out = Vec::with_capacity(count);
    match magic {
        GO_1_18 | GO_1_20 => {
            let text_start = word(8 + 2 * ptr)?;
            let (names, functab) = (header(3)?, header(7)?);
            for i in 0..count {
                let entry = functab.checked_add(i.checked_mul(8)?)?;
                let Some(func) = u32_at(table, entry.saturating_add(4)) else {
                    break;
                };
                let func = functab.checked_add(func as usize)?;
                let (Some(entry_off), Some(name_off)) =
                    (u32_at(table, func), i32_at(table, func.saturating_add(4)))
                else {
                    continue;
                };
                if let Some(name) = name_at(table, names, name_off) {
                    out.push((text_start.wrapping_add(u64::from(entry_off)), name));
                }
            }
        }
        GO_1_16 | GO_1_2 => {
            // 1.16 keeps names and functions in their own regions; 1.2
            // measures both from the table's start.
            let (names, functab, funcs) = if magic == GO_1_16 {
                (header(2)?, header(6)?, header(6)?)
            } else {
                (0, 8 + ptr, 0)
            };
            for i in 0..count {
                let entry = functab.checked_add(i.checked_mul(2 * ptr)?)?;
                let (Some(pc), Some(func)) = (word(entry), word(entry.saturating_add(ptr))) else {
                    break;
                };
                let Some(func) = usize::try_from(func)
                    .ok()
                    .and_then(|f| funcs.checked_add(f))
                else {
                    continue;
                };
                let Some(name_off) = i32_at(table, func.saturating_add(ptr)) else {
                    continue;
                };
                if let Some(name) = name_at(table, names, name_off) {
                    out.push((pc, name));
                }
            }
        }
        _ => return None,
    }
    Some(out)
}

fn u32_at(table: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        table.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn i32_at(table: &[u8], at: usize) -> Option<i32> {
    u32_at(table, at).map(|v| v as i32)
}

/// The NUL-terminated name at `base + offset`, cut to [`MAX_NAME`] bytes.
fn name_at(table: &[u8], base: usize, offset: i32) -> Option<String> {
    let start = base.checked_add(usize::try_from(offset).ok()?)?;
    let rest = table.get(start..)?;
    let rest = rest.get(..rest.len().min(MAX_NAME * 4)).unwrap_or(rest);
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let name = rest.get(..end)?;
    if name.is_empty() {
        return None;
    }
    let mut name = String::from_utf8_lossy(name).into_owned();
    if name.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.18-layout table with two functions, built by hand.
    fn table_1_18() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&GO_1_18.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        // nfunc, nfiles, textStart, funcnameOffset, cuOffset, filetabOffset,
        // pctabOffset, pclnOffset
        let names = 72u64;
        let functab = 96u64;
        for v in [2u64, 0, 0x40_1000, names, 0, 0, 0, functab] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t.resize(names as usize, 0);
        t.extend_from_slice(b"main.main\0main.spin\0");
        t.resize(functab as usize, 0);
        // functab: (entryoff, funcoff) x 3, then the func structs.
        for (entry, func) in [(0x20u32, 24u32), (0x80, 32), (0x100, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&func.to_le_bytes());
        }
        for (entry, name) in [(0x20u32, 0i32), (0x80, 10)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        t
    }

    #[test]
    fn reads_a_go_1_18_table() {
        assert_eq!(
            functions(&table_1_18(), 100),
            vec![
                (0x40_1020, "main.main".to_owned()),
                (0x40_1080, "main.spin".to_owned())
            ]
        );
        assert_eq!(functions(&table_1_18(), 1).len(), 1, "the cap holds");
    }

    #[test]
    fn truncated_or_foreign_tables_give_fewer_names_not_panics() {
        let table = table_1_18();
        for len in 0..table.len() {
            let _ = functions(&table[..len], 100);
        }
        assert!(functions(b"\x7fELF not a pclntab", 100).is_empty());
        let mut lying = table.clone();
        lying[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(functions(&lying, usize::MAX).len() <= lying.len() / 8);
    }
}
