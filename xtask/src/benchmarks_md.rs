//! BENCHMARKS.md is written by two tasks: `cargo xtask bench` writes the
//! table, and `cargo xtask soak --record` one section of its own, which a
//! later bench run keeps.

/// The heading of the soak's section.
pub const SOAK_HEADING: &str = "## Soak";

/// The section under `heading` (a `## ` line), heading included, up to the
/// next `## ` heading or the end.
pub fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let start = find_heading(text, heading)?;
    let rest = &text[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(text.len(), |i| start + heading.len() + i + 1);
    Some(&text[start..end])
}

/// `text` with the section under `heading` replaced by `body` (which starts
/// with the heading), or `body` appended if there is no such section.
pub fn with_section(text: &str, heading: &str, body: &str) -> String {
    let body = format!("{}\n", body.trim_end());
    match section(text, heading) {
        // A blank line before the next section stays.
        Some(old) if old.ends_with("\n\n") => text.replacen(old, &format!("{body}\n"), 1),
        Some(old) => text.replacen(old, &body, 1),
        None => format!("{}\n\n{body}", text.trim_end()),
    }
}

fn find_heading(text: &str, heading: &str) -> Option<usize> {
    if text.starts_with(&format!("{heading}\n")) {
        return Some(0);
    }
    text.find(&format!("\n{heading}\n")).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "# Benchmarks\n\n| a | b |\n\nReproduce: bench.\n";

    #[test]
    fn a_missing_section_is_appended() {
        let out = with_section(TABLE, SOAK_HEADING, "## Soak\n\n| x |\n");
        assert_eq!(out, format!("{}\n\n## Soak\n\n| x |\n", TABLE.trim_end()));
        assert_eq!(section(&out, SOAK_HEADING), Some("## Soak\n\n| x |\n"));
    }

    #[test]
    fn a_section_is_replaced_and_the_next_one_kept() {
        let text = format!("{TABLE}\n## Soak\n\nold\n\n## Later\n\nkept\n");
        let out = with_section(&text, SOAK_HEADING, "## Soak\n\nnew");
        assert_eq!(
            out,
            format!("{TABLE}\n## Soak\n\nnew\n\n## Later\n\nkept\n")
        );
        assert_eq!(section(&out, "## Later"), Some("## Later\n\nkept\n"));
    }

    #[test]
    fn a_heading_must_be_a_whole_line() {
        let text = "## Soaking\n\nnot it\n";
        assert_eq!(section(text, SOAK_HEADING), None);
    }
}
