//! The versioned binary envelope for brokers without native headers.
//!
//! Layout of version 2 (all integers big-endian; `docs/wire-format.md` is the
//! normative description):
//!
//! ```text
//! magic "QE" | version u8 = 2 (1 is read too) | flags u8
//! id [16] | priority u8 | attempt u32 | max_attempts u32 | created_at_ms u64
//! [not_before_ms u64]        if flags & 0x01
//! [expires_at_ms u64]        if flags & 0x02
//! [idempotency_key: u16 len + bytes]   if flags & 0x04
//! [last_error: u32 len + bytes]        if flags & 0x08
//! [trace_id [16] | span_id [8] | trace_flags u8]   if flags & 0x10
//! [ordering_key: u16 len + bytes]      if flags & 0x20
//! header_count u16, then per header: u16 name len + name, u32 value len + value
//! payload: the rest of the bytes
//! ```
//!
//! Decoding never panics: any byte string either decodes or gives a typed
//! [`ErrorKind::Decode`] error saying what is wrong.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};
use crate::message::{Headers, Message, MessageId, Priority};

/// The first two bytes of every envelope.
pub const MAGIC: [u8; 2] = *b"QE";
/// The envelope version this build writes. Version 2 added the ordering
/// key (flag `0x20`); this build reads versions 1 and 2.
pub const VERSION: u8 = 2;
/// The oldest envelope version this build reads.
pub const OLDEST_VERSION: u8 = 1;

const HAS_NOT_BEFORE: u8 = 0x01;
const HAS_EXPIRES_AT: u8 = 0x02;
const HAS_IDEMPOTENCY_KEY: u8 = 0x04;
const HAS_LAST_ERROR: u8 = 0x08;
const HAS_TRACE: u8 = 0x10;
const HAS_ORDERING_KEY: u8 = 0x20;
/// The flags each version defines: version 1 has no ordering key.
fn known_flags(version: u8) -> u8 {
    if version == 1 {
        0x1f
    } else {
        0x3f
    }
}

/// Bytes of the fixed part: magic, version, flags, id, priority, attempt,
/// max attempts, created at.
pub const FIXED_LEN: usize = 4 + 16 + 1 + 4 + 4 + 8;

/// The exact length of [`encode`]`(message)`, without encoding it: what
/// [`Message::wire_size`] reports.
pub fn encoded_len(message: &Message) -> usize {
    let optional = |present: bool, len: usize| if present { len } else { 0 };
    FIXED_LEN
        + optional(message.not_before.is_some(), 8)
        + optional(message.expires_at.is_some(), 8)
        + message
            .idempotency_key
            .as_ref()
            .map_or(0, |k| 2 + k.len().min(u16::MAX as usize))
        + message.last_error.as_ref().map_or(0, |e| 4 + e.len())
        + optional(message.trace.is_some(), 25)
        + message
            .ordering_key
            .as_ref()
            .map_or(0, |k| 2 + k.len().min(u16::MAX as usize))
        + 2
        + message
            .headers
            .iter()
            .take(u16::MAX as usize)
            .map(|(k, v)| 6 + k.len().min(u16::MAX as usize) + v.len())
            .sum::<usize>()
        + message.payload.len()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Whether `bytes` start like an envelope (magic and a known version).
pub fn looks_like_envelope(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..2] == MAGIC && (OLDEST_VERSION..=VERSION).contains(&bytes[2])
}

/// Encode a message into an envelope.
///
/// ```
/// use queue_core::{envelope, Message};
/// let msg = Message::new(&b"\x00\xffraw"[..]).with_header("trace", "✓");
/// let decoded = envelope::decode(&envelope::encode(&msg)).unwrap();
/// assert_eq!((decoded.id, &decoded.payload, &decoded.headers), (msg.id, &msg.payload, &msg.headers));
/// ```
pub fn encode(message: &Message) -> Bytes {
    let mut flags = 0u8;
    if message.not_before.is_some() {
        flags |= HAS_NOT_BEFORE;
    }
    if message.expires_at.is_some() {
        flags |= HAS_EXPIRES_AT;
    }
    if message.idempotency_key.is_some() {
        flags |= HAS_IDEMPOTENCY_KEY;
    }
    if message.last_error.is_some() {
        flags |= HAS_LAST_ERROR;
    }
    if message.trace.is_some() {
        flags |= HAS_TRACE;
    }
    if message.ordering_key.is_some() {
        flags |= HAS_ORDERING_KEY;
    }
    let mut out = BytesMut::with_capacity(encoded_len(message));
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(flags);
    out.put_slice(&message.id.to_bytes());
    out.put_u8(message.priority.level());
    out.put_u32(message.attempt);
    out.put_u32(message.max_attempts);
    out.put_u64(millis(message.created_at));
    if let Some(at) = message.not_before {
        out.put_u64(millis(at));
    }
    if let Some(at) = message.expires_at {
        out.put_u64(millis(at));
    }
    if let Some(key) = &message.idempotency_key {
        let key = truncate(key.as_bytes(), u16::MAX as usize);
        out.put_u16(key.len() as u16);
        out.put_slice(key);
    }
    if let Some(error) = &message.last_error {
        let error = truncate(error.as_bytes(), u32::MAX as usize);
        out.put_u32(error.len() as u32);
        out.put_slice(error);
    }
    if let Some(trace) = &message.trace {
        out.put_u128(trace.trace_id);
        out.put_u64(trace.span_id);
        out.put_u8(u8::from(trace.sampled));
    }
    if let Some(key) = &message.ordering_key {
        let key = truncate(key.as_bytes(), u16::MAX as usize);
        out.put_u16(key.len() as u16);
        out.put_slice(key);
    }
    let headers: Vec<_> = message.headers.iter().take(u16::MAX as usize).collect();
    out.put_u16(headers.len() as u16);
    for (name, value) in headers {
        let name = truncate(name.as_bytes(), u16::MAX as usize);
        out.put_u16(name.len() as u16);
        out.put_slice(name);
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(&message.payload);
    out.freeze()
}

fn truncate(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.at..end];
                self.at = end;
                Ok(slice)
            }
            None => Err(decode_error(format!(
                "truncated envelope: {what} needs {n} bytes at offset {}, {} left",
                self.at,
                self.bytes.len().saturating_sub(self.at)
            ))),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self, len: usize, what: &str) -> Result<String> {
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| decode_error(format!("{what} is not valid UTF-8")))
    }
}

fn decode_error(message: String) -> Error {
    Error::new(ErrorKind::Decode, message)
}

/// Decode an envelope. Bytes that are not an envelope (a message written by
/// a plain broker client) give a [`ErrorKind::Decode`] error; callers then
/// deliver them raw or dead-letter them with reason `decode`.
pub fn decode(bytes: &Bytes) -> Result<Message> {
    let (mut message, head_len) = decode_head(bytes)?;
    message.payload = bytes.slice(head_len..);
    Ok(message)
}

/// Decode the first bytes of an envelope `total_len` bytes long, as a
/// preview: the message with the part of its payload that `prefix` holds,
/// and the whole payload's length. The payload comes last in an envelope,
/// so a store can hand out a fixed number of leading bytes of a large
/// envelope (a dead letter's preview) without loading the rest. Fails like
/// [`decode`] when `prefix` ends before the payload starts.
///
/// ```
/// use queue_core::{envelope, Message};
/// let whole = envelope::encode(&Message::new(vec![7u8; 1000]));
/// let (preview, len) = envelope::decode_prefix(&whole.slice(..100), whole.len()).unwrap();
/// assert_eq!(len, 1000);
/// assert_eq!(preview.payload.len(), 100 - envelope::FIXED_LEN - 2);
/// ```
pub fn decode_prefix(prefix: &Bytes, total_len: usize) -> Result<(Message, usize)> {
    let (mut message, head_len) = decode_head(prefix)?;
    message.payload = prefix.slice(head_len..);
    Ok((message, total_len.saturating_sub(head_len)))
}

/// Everything but the payload, and where the payload starts.
fn decode_head(bytes: &[u8]) -> Result<(Message, usize)> {
    if bytes.len() < 4 || bytes[..2] != MAGIC {
        return Err(decode_error(
            "not a queue envelope: magic bytes \"QE\" missing".to_owned(),
        ));
    }
    let version = bytes[2];
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(decode_error(format!(
            "envelope version {version} is not supported (this build reads versions {OLDEST_VERSION} to {VERSION})"
        )));
    }
    let flags = bytes[3];
    if flags & !known_flags(version) != 0 {
        return Err(decode_error(format!(
            "envelope has unknown flags {flags:#04x}"
        )));
    }
    let mut r = Reader { bytes, at: 4 };
    let mut id = [0u8; 16];
    id.copy_from_slice(r.take(16, "id")?);
    let level = r.u8("priority")?;
    let priority = Priority::from_level(level)
        .ok_or_else(|| decode_error(format!("envelope priority {level} is not 1, 5, 10 or 15")))?;
    let attempt = r.u32("attempt")?;
    let max_attempts = r.u32("max_attempts")?;
    let created_at = from_millis(r.u64("created_at")?);
    let not_before = if flags & HAS_NOT_BEFORE != 0 {
        Some(from_millis(r.u64("not_before")?))
    } else {
        None
    };
    let expires_at = if flags & HAS_EXPIRES_AT != 0 {
        Some(from_millis(r.u64("expires_at")?))
    } else {
        None
    };
    let idempotency_key = if flags & HAS_IDEMPOTENCY_KEY != 0 {
        let len = r.u16("idempotency key length")? as usize;
        Some(r.string(len, "idempotency key")?.into())
    } else {
        None
    };
    let last_error = if flags & HAS_LAST_ERROR != 0 {
        let len = r.u32("last error length")? as usize;
        Some(r.string(len, "last error")?)
    } else {
        None
    };
    let trace = if flags & HAS_TRACE != 0 {
        let trace_id = u128::from_be_bytes(r.take(16, "trace id")?.try_into().expect("16 bytes"));
        let span_id = r.u64("span id")?;
        let sampled = r.u8("trace flags")? & 1 == 1;
        if trace_id == 0 || span_id == 0 {
            return Err(decode_error(
                "envelope trace context has a zero id".to_owned(),
            ));
        }
        Some(crate::trace::TraceContext {
            trace_id,
            span_id,
            sampled,
        })
    } else {
        None
    };
    let ordering_key = if flags & HAS_ORDERING_KEY != 0 {
        let len = r.u16("ordering key length")? as usize;
        Some(r.string(len, "ordering key")?.into())
    } else {
        None
    };
    let count = r.u16("header count")?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let name_len = r.u16("header name length")? as usize;
        let name = r.string(name_len, "header name")?;
        let value_len = r.u32("header value length")? as usize;
        let value = r.string(value_len, "header value")?;
        headers.insert(name, value);
    }
    let head_len = r.at;
    let message = Message {
        id: MessageId::from_bytes(id),
        payload: Bytes::new(),
        headers,
        priority,
        attempt,
        max_attempts,
        created_at,
        not_before,
        expires_at,
        idempotency_key,
        last_error,
        trace,
        ordering_key,
    };
    Ok((message, head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truncate_times(mut m: Message) -> Message {
        // The envelope keeps milliseconds.
        m.created_at = from_millis(millis(m.created_at));
        m.not_before = m.not_before.map(|t| from_millis(millis(t)));
        m.expires_at = m.expires_at.map(|t| from_millis(millis(t)));
        m
    }

    #[test]
    fn full_message_round_trips() {
        let mut msg = Message::new(vec![0u8, 159, 146, 150, 0])
            .with_priority(Priority::Urgent)
            .with_delay(Duration::from_secs(60))
            .with_ttl(Duration::from_secs(600))
            .with_idempotency_key("order-7")
            .with_header("tenant", "acme")
            .with_header("note", "grüße ✓")
            .with_max_attempts(9);
        msg.attempt = 3;
        msg.last_error = Some("boom".into());
        msg.trace = Some(crate::trace::TraceContext::new_root());
        msg.ordering_key = Some("customer-9".into());
        let encoded = encode(&msg);
        assert_eq!(encoded.len(), encoded_len(&msg), "encoded_len is exact");
        assert_eq!(msg.wire_size(), encoded.len());
        let decoded = decode(&encoded).unwrap();
        assert_eq!(decoded, truncate_times(msg));
    }

    #[test]
    fn version_1_envelopes_still_read_and_know_no_ordering_key() {
        let msg = Message::new(&b"old"[..]).with_header("k", "v");
        let mut v1 = encode(&msg).to_vec();
        v1[2] = 1;
        let decoded = decode(&Bytes::from(v1.clone())).expect("a version 1 envelope reads");
        assert_eq!((decoded.id, decoded.payload), (msg.id, msg.payload.clone()));
        v1[3] |= HAS_ORDERING_KEY;
        let err = decode(&Bytes::from(v1)).unwrap_err();
        assert!(err.message().contains("unknown flags"), "{err}");
    }

    #[test]
    fn foreign_bytes_never_panic() {
        assert_eq!(
            decode(&Bytes::from_static(b"")).unwrap_err().kind(),
            ErrorKind::Decode
        );
        assert!(decode(&Bytes::from_static(b"{\"json\":1}"))
            .unwrap_err()
            .message()
            .contains("magic"));
        assert!(decode(&Bytes::from_static(b"QE\x09\x00"))
            .unwrap_err()
            .message()
            .contains("version 9"));
        // Every prefix of a valid envelope up to the payload is a typed error.
        let full = encode(
            &Message::new(&b"p"[..])
                .with_header("k", "v")
                .with_idempotency_key("i"),
        );
        for cut in 0..full.len() - 1 {
            assert_eq!(
                decode(&full.slice(..cut)).unwrap_err().kind(),
                ErrorKind::Decode,
                "cut {cut}"
            );
        }
        // Pseudo-random junk after a valid header.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut junk = b"QE\x01".to_vec();
            let len = (state % 96) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                junk.push(state as u8);
            }
            let _ = decode(&Bytes::from(junk));
        }
    }
}
