//! How the commands print: plain text tables padded to their widest cell,
//! previews of untrusted text that cannot drive the terminal, and short
//! ages and durations.

use std::fmt::Write as _;
use std::time::SystemTime;

/// A plain text table: columns padded to their widest cell.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Milliseconds since the Unix epoch, for JSON output.
pub(crate) fn millis_since_epoch(at: SystemTime) -> u128 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Bidirectional-text controls: a terminal would show the text after them
/// reordered (a payload could make `rm -rf` read as something else).
fn reorders_text(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// At most `max` characters of `text` on one line, control characters
/// and bidirectional-text controls shown as escapes (a payload or an
/// error must not drive the terminal or reorder what it shows).
pub(crate) fn preview(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() || reorders_text(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn age(since: SystemTime) -> String {
    duration(
        SystemTime::now()
            .duration_since(since)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Whole seconds in the largest unit that fits: `42s`, `7m`, `3h`, `2d`.
pub(crate) fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns() {
        let mut t = Table::new(&["A", "LONG HEADER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          LONG HEADER\nwide cell  x\n");
    }

    #[test]
    fn previews_escape_control_characters_and_cut() {
        assert_eq!(preview("a\nb\x1b[2J", 80), "a\\nb\\u{1b}[2J");
        assert_eq!(preview("abcdef", 3), "abc…");
        assert_eq!(preview("a\u{202e}b", 10), "a\\u{202e}b");
    }
}
