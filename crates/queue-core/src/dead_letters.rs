//! Reading dead letters a page at a time: a query (where to start, how
//! many, how much of each payload), the cursor a page ends at, and the
//! page. A page never holds more than its own letters, whatever the depth
//! of the dead-letter queue, and previews bound what each letter holds.

use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageId;
use crate::stats::DeadLetter;
use crate::store::millis_since_epoch;

/// The most bytes of headers a preview keeps: a letter whose headers
/// (names and values) come to more is previewed without them, so no page
/// grows with what a producer put in its headers.
pub const PREVIEW_HEADER_BYTES: usize = 64 * 1024;

/// The longest cursor text accepted (backends' cursors are far shorter).
const MAX_CURSOR_LEN: usize = 128;

/// Which dead letters to read: the `limit` letters after `after` (from
/// the oldest when `None`), each payload cut to `preview` bytes when set.
///
/// ```
/// use queue_core::DeadLetterQuery;
/// let first = DeadLetterQuery::new(20).with_preview(4096);
/// assert_eq!((first.limit, first.preview), (20, Some(4096)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterQuery {
    /// Start after this letter (from a [`DeadLetterPage::next`]).
    pub after: Option<DeadLetterCursor>,
    /// Letters at most.
    pub limit: usize,
    /// Keep at most this many bytes of each payload (`None`: all of it).
    /// A cut letter says so: [`DeadLetter::truncated`]. A preview also
    /// drops headers that come to more than [`PREVIEW_HEADER_BYTES`].
    pub preview: Option<usize>,
}

impl DeadLetterQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 10_000;

    /// Refuse a limit outside 1 to [`MAX_LIMIT`](DeadLetterQuery::MAX_LIMIT)
    /// (a page of none would never move its cursor): every backend checks
    /// it before reading.
    ///
    /// ```
    /// use queue_core::{DeadLetterQuery, ErrorKind};
    /// assert_eq!(DeadLetterQuery::new(0).check().unwrap_err().kind(), ErrorKind::InvalidInput);
    /// assert!(DeadLetterQuery::new(20).check().is_ok());
    /// ```
    pub fn check(&self) -> Result<()> {
        if (1..=DeadLetterQuery::MAX_LIMIT).contains(&self.limit) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "limit: must be 1 to {}, got {}",
                    DeadLetterQuery::MAX_LIMIT,
                    self.limit
                ),
            ))
        }
    }

    /// The first `limit` letters, oldest first, whole.
    pub fn new(limit: usize) -> Self {
        DeadLetterQuery {
            after: None,
            limit,
            preview: None,
        }
    }

    /// Start after `cursor`.
    pub fn after(mut self, cursor: DeadLetterCursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Cut each payload to `bytes`.
    pub fn with_preview(mut self, bytes: usize) -> Self {
        self.preview = Some(bytes);
        self
    }
}

/// Where a page of dead letters ended, to ask for the next one. Its text
/// is the backend's own (a sequence number on Redis, a position on
/// RabbitMQ, a time and an id elsewhere): pass it back as it came.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeadLetterCursor(String);

impl DeadLetterCursor {
    /// A cursor with the backend's own text.
    pub fn new(text: impl Into<String>) -> Self {
        DeadLetterCursor(text.into())
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cursor of a letter in time order: its dead-letter time (ms) and
    /// id, `<ms>-<id>`.
    pub fn of_letter(letter: &DeadLetter) -> Self {
        let (at, id) = time_key(letter);
        DeadLetterCursor(format!("{at}-{id}"))
    }

    /// The time and id of a cursor made by
    /// [`of_letter`](DeadLetterCursor::of_letter).
    pub fn time_key(&self) -> Result<(u64, MessageId)> {
        let bad = || bad_cursor(&self.0);
        let (at, id) = self.0.split_once('-').ok_or_else(bad)?;
        Ok((
            at.parse().map_err(|_| bad())?,
            id.parse().map_err(|_| bad())?,
        ))
    }
}

fn bad_cursor(text: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "{:?} is not a dead-letter cursor of this backend (pass back a page's `next`)",
            text.chars().take(40).collect::<String>()
        ),
    )
}

impl fmt::Display for DeadLetterCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeadLetterCursor {
    type Err = Error;

    /// Any short text of letters, digits and `-_.:`; the backend checks
    /// its own form when it reads it.
    fn from_str(text: &str) -> Result<Self> {
        let fits = !text.is_empty()
            && text.len() <= MAX_CURSOR_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if fits {
            Ok(DeadLetterCursor(text.to_owned()))
        } else {
            Err(bad_cursor(text))
        }
    }
}

impl serde::Serialize for DeadLetterCursor {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// One page of dead letters, oldest first, and the cursor of the next
/// page (`None`: this is the last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeadLetterPage {
    /// The letters.
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts.
    pub next: Option<DeadLetterCursor>,
}

impl DeadLetterPage {
    /// A page of `letters`, followed by the page at `next`.
    pub fn new(letters: Vec<DeadLetter>, next: Option<DeadLetterCursor>) -> Self {
        DeadLetterPage { letters, next }
    }
}

impl DeadLetter {
    /// The letter with its payload cut to at most `max` bytes (copied, so
    /// the whole payload's memory can go), and without its headers if they
    /// come to more than [`PREVIEW_HEADER_BYTES`];
    /// [`truncated`](DeadLetter::truncated) tells whether the payload was
    /// cut. `payload_len` keeps the real length.
    pub fn preview(mut self, max: usize) -> Self {
        if self.message.payload.len() > max {
            self.message.payload = Bytes::copy_from_slice(&self.message.payload[..max]);
        }
        let header_bytes: usize = self
            .message
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        if header_bytes > PREVIEW_HEADER_BYTES {
            self.message.headers = Default::default();
        }
        self
    }

    /// Whether the payload is a preview: shorter than the real one.
    pub fn truncated(&self) -> bool {
        self.message.payload.len() < self.payload_len
    }

    /// The payload (or its preview) as text when it is UTF-8; a preview
    /// that ends inside a character gives the characters before it.
    ///
    /// ```
    /// # use queue_core::{DeadLetter, DeadLetterReason, Message};
    /// let letter = DeadLetter::new(Message::new("añb"), DeadLetterReason::MaxAttempts, 1);
    /// assert_eq!(letter.clone().preview(2).payload_text(), Some("a"));
    /// assert_eq!(letter.payload_text(), Some("añb"));
    /// ```
    pub fn payload_text(&self) -> Option<&str> {
        let bytes = &self.message.payload[..];
        match std::str::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(e) if self.truncated() && e.error_len().is_none() => {
                std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        }
    }
}

/// Time order: dead-letter time (ms), then id.
fn time_key(letter: &DeadLetter) -> (u64, MessageId) {
    (
        millis_since_epoch(letter.dead_lettered_at),
        letter.message.id,
    )
}

/// One page of a dead-letter queue read in no useful order (SQS, a Kafka
/// topic's partitions, the memory backend's list): offer every letter,
/// keep the `limit` first in time order after the cursor, cut to the
/// preview as they come, so memory holds one page of previews however
/// many letters pass.
#[derive(Debug)]
pub struct TimeOrderedPage {
    after: Option<(u64, MessageId)>,
    limit: usize,
    preview: Option<usize>,
    kept: BinaryHeap<Kept>,
    more: bool,
}

/// A kept letter, ordered by its time key (the heap's top is the latest).
#[derive(Debug)]
struct Kept((u64, MessageId), DeadLetter);

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl TimeOrderedPage {
    /// Collect the page `query` asks for; a bad limit, or a cursor that
    /// is not a time cursor, is an `InvalidInput` error.
    pub fn new(query: &DeadLetterQuery) -> Result<Self> {
        query.check()?;
        Ok(TimeOrderedPage {
            after: query
                .after
                .as_ref()
                .map(DeadLetterCursor::time_key)
                .transpose()?,
            limit: query.limit,
            preview: query.preview,
            kept: BinaryHeap::new(),
            more: false,
        })
    }

    /// Whether a letter after the cursor with this key is among the first
    /// so far.
    fn wants(&self, key: (u64, MessageId)) -> bool {
        self.kept.len() < self.limit || self.kept.peek().is_some_and(|top| key < top.0)
    }

    /// Offer one letter (a letter offered twice, as SQS may hand one out
    /// twice, is kept once).
    pub fn offer(&mut self, letter: DeadLetter) {
        let key = time_key(&letter);
        if self.after.is_some_and(|after| key <= after) || self.kept.iter().any(|k| k.0 == key) {
            return;
        }
        if !self.wants(key) {
            self.more = true;
            return;
        }
        let letter = match self.preview {
            Some(max) => letter.preview(max),
            None => letter,
        };
        self.kept.push(Kept(key, letter));
        if self.kept.len() > self.limit {
            self.kept.pop();
            self.more = true;
        }
    }

    /// The page: the kept letters oldest first, and a cursor when letters
    /// were left for later pages.
    pub fn finish(self) -> DeadLetterPage {
        let letters: Vec<DeadLetter> = self
            .kept
            .into_sorted_vec()
            .into_iter()
            .map(|Kept(_, letter)| letter)
            .collect();
        let next = if self.more {
            letters.last().map(DeadLetterCursor::of_letter)
        } else {
            None
        };
        DeadLetterPage { letters, next }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::message::Message;
    use crate::stats::DeadLetterReason;

    fn letter(at_ms: u64, payload: &'static [u8]) -> DeadLetter {
        let mut letter = DeadLetter::new(Message::new(payload), DeadLetterReason::MaxAttempts, 1);
        letter.dead_lettered_at = UNIX_EPOCH + Duration::from_millis(at_ms);
        letter
    }

    #[test]
    fn time_ordered_pages_cover_every_letter_once() {
        let letters: Vec<DeadLetter> = [5u64, 1, 4, 1, 3, 2, 9, 7]
            .iter()
            .map(|&at| letter(at, b"payload"))
            .collect();
        let mut seen = Vec::new();
        let mut query = DeadLetterQuery::new(3).with_preview(3);
        loop {
            let mut page = TimeOrderedPage::new(&query).unwrap();
            for l in letters.iter().rev() {
                page.offer(l.clone());
            }
            let page = page.finish();
            assert!(page.letters.len() <= 3);
            for l in &page.letters {
                assert_eq!(l.message.payload.as_ref(), b"pay");
                assert!(l.truncated() && l.payload_len == 7);
            }
            seen.extend(page.letters.iter().map(time_key));
            match page.next {
                Some(next) => query = query.after(next.to_string().parse().unwrap()),
                None => break,
            }
        }
        let mut all: Vec<_> = letters.iter().map(time_key).collect();
        all.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn cursors_refuse_foreign_text() {
        assert!("12-x"
            .parse::<DeadLetterCursor>()
            .unwrap()
            .time_key()
            .is_err());
        assert!("a b".parse::<DeadLetterCursor>().is_err());
        assert!("".parse::<DeadLetterCursor>().is_err());
        assert!("x".repeat(200).parse::<DeadLetterCursor>().is_err());
        let l = letter(42, b"");
        let cursor = DeadLetterCursor::of_letter(&l);
        assert_eq!(cursor.time_key().unwrap(), (42, l.message.id));
    }
}
