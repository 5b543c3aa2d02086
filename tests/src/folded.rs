//! Folded stacks (`/stacks`), as flamegraph.pl reads them.

/// Parses folded stacks, checking every line's shape: `frames count`.
pub fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .map(|line| {
            let (frames, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no count: {line}"));
            let count: u64 = count
                .parse()
                .unwrap_or_else(|_| panic!("bad count: {line}"));
            assert!(count > 0, "zero count: {line}");
            let frames: Vec<String> = frames.split(';').map(str::to_owned).collect();
            assert!(frames.iter().all(|f| !f.is_empty()), "empty frame: {line}");
            (frames, count)
        })
        .collect()
}
