//! HTML building: escaping, the page frame, and small formatters. Every
//! text that comes from a broker, a job or a user goes through [`esc`].

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use queue_core::DeadLetter;

/// `text` safe inside HTML text and double- or single-quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` as a URL path segment or query value (everything but
/// unreserved characters percent-encoded).
pub(crate) fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Where the dashboard is mounted, and what every page needs.
pub(crate) struct Frame<'a> {
    /// The mount path, without a trailing slash (`""` at the root).
    pub(crate) base: &'a str,
    pub(crate) csrf: &'a str,
    pub(crate) read_only: bool,
    pub(crate) refresh_ms: u128,
}

impl Frame<'_> {
    /// A whole page around `main` (the part live refresh replaces).
    pub(crate) fn page(&self, title: &str, active: &str, main: &str) -> String {
        let base = esc(self.base);
        // The overview is the mount point itself (axum's `nest` routes
        // `/admin/queues`, not `/admin/queues/`), or `/` at the root.
        let home = if self.base.is_empty() { "/" } else { "" };
        let nav = [
            (home, "Queues"),
            ("/jobs", "Jobs"),
            ("/workers", "Workers"),
            ("/schedules", "Schedules"),
        ]
        .iter()
        .map(|(path, label)| {
            let current = if *label == active {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a href=\"{base}{path}\"{current}>{label}</a>")
        })
        .collect::<Vec<_>>()
        .join(" ");
        let mode = if self.read_only {
            "<span class=\"badge\">read-only</span>"
        } else {
            ""
        };
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · queue</title>\
             <link rel=\"stylesheet\" href=\"{base}/assets/style.css\">\
             <script src=\"{base}/assets/app.js\" defer></script></head>\
             <body data-refresh-ms=\"{refresh}\">\
             <header><strong>queue</strong> <nav>{nav}</nav> {mode}\
             <button type=\"button\" id=\"live\" aria-pressed=\"true\">Pause refresh</button>\
             <span id=\"live-state\"></span></header>\
             <main id=\"main\">{main}</main></body></html>\n",
            title = esc(title),
            refresh = self.refresh_ms,
        )
    }

    /// A form that POSTs `action` with the CSRF token and asks `confirm`
    /// first (the script does; without it the browser just posts). Empty in
    /// read-only mode.
    pub(crate) fn button(
        &self,
        action: &str,
        fields: &[(&str, &str)],
        label: &str,
        confirm: &str,
        class: &str,
    ) -> String {
        if self.read_only {
            return String::new();
        }
        let mut hidden = format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(self.csrf)
        );
        for (name, value) in fields {
            let _ = write!(
                hidden,
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(name),
                esc(value)
            );
        }
        format!(
            "<form method=\"post\" action=\"{}{}\" data-confirm=\"{}\" class=\"inline\">{hidden}\
             <button type=\"submit\" class=\"{}\">{}</button></form>",
            esc(self.base),
            esc(action),
            esc(confirm),
            esc(class),
            esc(label)
        )
    }
}

/// `42s`, `7m 5s`, `3h 2m`, `2d 4h`.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 if d.as_millis() > 0 => format!("{}ms", d.as_millis()),
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// How long until `at` (`in 5s`), or how long ago it was.
pub(crate) fn from_now(at: SystemTime) -> String {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => format!("in {}", duration(ahead)),
        Err(_) => ago(at),
    }
}

/// `at` in UTC, `2026-03-29 07:00:00 UTC` (with milliseconds when it
/// has some), in a `<time>` element carrying its RFC 3339 form.
pub(crate) fn utc(at: SystemTime) -> String {
    match jiff::Timestamp::try_from(at) {
        Ok(at) => format!(
            "<time datetime=\"{at}\">{}</time>",
            at.strftime("%Y-%m-%d %H:%M:%S%.f UTC")
        ),
        Err(_) => "–".to_owned(),
    }
}

/// How long ago `at` was.
pub(crate) fn ago(at: SystemTime) -> String {
    format!(
        "{} ago",
        duration(SystemTime::now().duration_since(at).unwrap_or_default())
    )
}

/// A rate with a sensible precision.
pub(crate) fn rate(r: Option<f64>) -> String {
    match r {
        None => "–".to_owned(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) if r >= 1.0 => format!("{r:.1}"),
        Some(r) => format!("{r:.2}"),
    }
}

/// A dead letter's payload (or its preview) as formatted JSON when it
/// is JSON, as text when it is UTF-8, else a hex preview (at most `max`
/// bytes), escaped, with the real length when more exists.
pub(crate) fn payload(letter: &DeadLetter, max: usize) -> String {
    let bytes = &letter.message.payload[..];
    let len = letter.payload_len;
    let more = if len > bytes.len().min(max) {
        format!("<span class=\"note\">{len} bytes in all</span>")
    } else {
        String::new()
    };
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
        return format!(
            "<pre class=\"json\">{}</pre>{more}",
            esc(&cut(&pretty, max))
        );
    }
    if let Some(text) = letter.payload_text() {
        return format!("<pre class=\"text\">{}</pre>{more}", esc(&cut(text, max)));
    }
    let mut hex = String::new();
    for (i, chunk) in bytes[..bytes.len().min(max)].chunks(16).enumerate() {
        let _ = write!(hex, "{:06x} ", i * 16);
        for b in chunk {
            let _ = write!(hex, " {b:02x}");
        }
        hex.push('\n');
    }
    format!("<pre class=\"hex\">{}</pre>{more}", esc(&hex))
}

/// At most `max` characters of `text`, with a mark when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use queue_core::{DeadLetterReason, Message};

    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_controls() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\"\u{1b}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;\\u{1b}"
        );
        assert_eq!(url_part("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn payloads_show_as_json_text_or_hex() {
        let letter = |bytes: &'static [u8]| {
            DeadLetter::new(Message::new(bytes), DeadLetterReason::MaxAttempts, 1)
        };
        assert!(payload(&letter(br#"{"a":1}"#), 100).contains("&quot;a&quot;: 1"));
        assert!(payload(&letter(b"<b>"), 100).contains("&lt;b&gt;"));
        let hex = payload(&letter(&[0xff, 0x00, 0x10]), 100);
        assert!(hex.contains("ff 00 10") && !hex.contains("in all"), "{hex}");
        let mut preview = letter("aé".as_bytes()).preview(2);
        preview.payload_len = 9000;
        let cut_inside_a_character = payload(&preview, 100);
        assert!(
            cut_inside_a_character.contains(">a</pre>")
                && cut_inside_a_character.contains("9000 bytes in all"),
            "{cut_inside_a_character}"
        );
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(duration(Duration::from_secs(3725)), "1h 2m");
    }
}
