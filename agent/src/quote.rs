//! How a value someone gave us is shown back in an error: escaped, because
//! a newline or a NUL would break the one line the error must be, and cut
//! short, because a query string or a flag can be megabytes long.

/// Characters of the value kept; enough for any number or word meant.
const MAX_QUOTED: usize = 32;

/// `text` in backquotes, escaped as Rust escapes a string and cut to
/// [`MAX_QUOTED`] characters (an ellipsis marks the cut).
pub fn quoted(text: &str) -> String {
    let mut out = String::from("`");
    out.extend(text.chars().take(MAX_QUOTED).flat_map(char::escape_debug));
    if text.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(quoted("5"), "`5`");
        assert_eq!(quoted("1\n2\0"), "`1\\n2\\0`");
        assert_eq!(quoted(&"9".repeat(40)), format!("`{}…`", "9".repeat(32)));
    }
}
