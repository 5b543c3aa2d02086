//! Kernel function names from /proc/kallsyms.
//!
//! The kernel shows real addresses there only to readers with CAP_SYSLOG
//! (or under a permissive kptr_restrict); otherwise every address reads 0,
//! and kernel frames are then named `[kernel]` rather than by an address,
//! which would reveal where the kernel is loaded (KASLR).

use std::io::BufReader;

/// Kernel text symbols, sorted by address. The addresses are kept apart
/// from the names so that the binary search over some 200,000 of them
/// touches 1.6 MB rather than 5.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    starts: Vec<u64>,
    names: Vec<Box<str>>,
}

impl KernelSymbols {
    /// Reads /proc/kallsyms. Empty when its addresses are hidden.
    pub fn load() -> Self {
        match std::fs::File::open("/proc/kallsyms") {
            Ok(file) => Self::parse(BufReader::new(file)),
            Err(err) => {
                tracing::warn!("cannot read /proc/kallsyms ({err}); kernel frames are unnamed");
                Self::default()
            }
        }
    }

    fn parse(reader: impl std::io::BufRead) -> Self {
        let mut symbols = Vec::new();
        for line in reader.lines().map_while(Result::ok) {
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            symbols.push((addr, name.into()));
        }
        symbols.sort_unstable_by_key(|(addr, _)| *addr);
        let (starts, names) = symbols.into_iter().unzip();
        Self { starts, names }
    }

    /// The function containing `addr`: the last symbol at or before it.
    /// Past the last symbol (or with hidden addresses) there is none.
    pub fn name(&self, addr: u64) -> Option<&str> {
        let after = self.starts.partition_point(|start| *start <= addr);
        if after == self.starts.len() {
            return None;
        }
        self.names.get(after.checked_sub(1)?).map(|name| &**name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_text_symbols_and_hides_nothing_it_cannot_name() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81000100 t do_thing\n\
                    ffffffff81000200 D some_data\n\
                    ffffffff81000300 T next_fn [some_module]\n\
                    ffffffff81000400 T _etext\n";
        let symbols = KernelSymbols::parse(text.as_bytes());
        assert_eq!(symbols.name(0xffffffff81000150), Some("do_thing"));
        assert_eq!(symbols.name(0xffffffff81000250), Some("do_thing"));
        assert_eq!(symbols.name(0xffffffff81000300), Some("next_fn"));
        assert_eq!(symbols.name(0xffffffff80000000), None);
        assert_eq!(symbols.name(0xffffffff81000500), None);
        let hidden = KernelSymbols::parse("0000000000000000 T _stext\n".as_bytes());
        assert_eq!(hidden.name(0xffffffff81000150), None);
    }
}
