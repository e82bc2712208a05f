//! Names, and messages to and from SQS.
//!
//! A message travels as its payload in the body and its metadata (the
//! envelope of `docs/wire-format.md` without the payload) in one binary
//! message attribute, `queue-meta`. SQS bodies are text (XML characters),
//! so a payload that is not such text travels base64-encoded, marked by a
//! reserved header in the metadata. Dead letters carry their reason,
//! attempts and time in three more attributes.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use bytes::Bytes;
use queue_core::message::{foreign_header_value, is_reserved_header};
use queue_core::{envelope, DeadLetter, DeadLetterReason, Error, ErrorKind, Message, MessageId};
use queue_core::{QueueName, Result};

use crate::config::QueueType;

/// The attribute holding the metadata envelope.
pub(crate) const META: &str = "queue-meta";
/// Dead letters: why (`DeadLetterReason`'s text form).
pub(crate) const DEAD_REASON: &str = "queue-dead-reason";
/// Dead letters: attempts made.
pub(crate) const DEAD_ATTEMPTS: &str = "queue-dead-attempts";
/// Dead letters: when, in ms since the epoch.
pub(crate) const DEAD_AT: &str = "queue-dead-at";
/// The reserved header marking a base64 body.
const BODY_ENCODING: &str = "x-queue-body";
const BASE64: &str = "base64";

/// The SQS name of `queue`.
pub(crate) fn queue_name(queue: &QueueName, queue_type: QueueType) -> String {
    match queue_type {
        QueueType::Standard => queue.as_str().to_owned(),
        QueueType::Fifo => format!("{queue}.fifo"),
    }
}

/// The SQS name of `queue`'s dead-letter queue.
pub(crate) fn dlq_name(queue: &QueueName, queue_type: QueueType) -> String {
    match queue_type {
        QueueType::Standard => format!("{queue}-dlq"),
        QueueType::Fifo => format!("{queue}-dlq.fifo"),
    }
}

/// `d` rounded up to whole seconds (SQS counts in seconds; rounding down
/// would deliver early or end a lease early).
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether SQS takes `text` as a body: XML characters only (tab, newline,
/// carriage return, and U+0020 on, without U+FFFE and U+FFFF).
fn is_sqs_text(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{fffe}' && c != '\u{ffff}')
    })
}

/// One message ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    body: String,
    meta: Bytes,
    /// Further attributes: name, data type (`String` or `Number`), value.
    extra: Vec<(&'static str, &'static str, String)>,
    pub(crate) delay_seconds: i32,
    group: Option<String>,
    dedup: Option<String>,
}

impl Outgoing {
    /// `message` as SQS will hold it, sent with a delay of
    /// `delay_seconds`.
    pub(crate) fn new(message: &Message, delay_seconds: i32, queue_type: QueueType) -> Outgoing {
        let mut meta = message.clone();
        meta.payload = Bytes::new();
        let body = match std::str::from_utf8(&message.payload) {
            Ok(text) if is_sqs_text(text) => text.to_owned(),
            _ => {
                meta.headers.insert(BODY_ENCODING, BASE64);
                aws_smithy_types::base64::encode(&message.payload)
            }
        };
        let (group, dedup) = match queue_type {
            QueueType::Standard => (None, None),
            QueueType::Fifo => (
                // SQS orders and locks per group: a message without an
                // ordering key is its own group, so keyless messages run in
                // parallel instead of queueing behind one another.
                Some(match &message.ordering_key {
                    Some(key) => key.to_string(),
                    None => message.id.to_string(),
                }),
                // An idempotency key dedups within SQS's window; without
                // one every send is new. Copies take a fresh id ([`fresh`]).
                Some(match &message.idempotency_key {
                    Some(key) => dedup_id(key),
                    None => MessageId::new().to_string(),
                }),
            ),
        };
        Outgoing {
            body,
            meta: envelope::encode(&meta),
            extra: Vec::new(),
            delay_seconds,
            group,
            dedup,
        }
    }

    /// A copy of a message SQS already holds (a nack or release copy, a
    /// hop, a dead letter, a redrive): on FIFO queues a fresh
    /// deduplication id, or SQS would drop it as a duplicate of the
    /// original, which is deleted next.
    pub(crate) fn fresh(mut self) -> Outgoing {
        if self.dedup.is_some() {
            self.dedup = Some(MessageId::new().to_string());
        }
        self
    }

    /// Mark as a dead letter: reason, attempts, now.
    pub(crate) fn dead(mut self, reason: &DeadLetterReason, attempts: u32) -> Outgoing {
        self.extra.push((DEAD_REASON, "String", reason.to_string()));
        self.extra
            .push((DEAD_ATTEMPTS, "Number", attempts.to_string()));
        self.extra
            .push((DEAD_AT, "Number", millis(SystemTime::now()).to_string()));
        self
    }

    /// The size SQS counts: body, and each attribute's name, type and value.
    pub(crate) fn size(&self) -> usize {
        self.body.len()
            + META.len()
            + "Binary".len()
            + self.meta.len()
            + self
                .extra
                .iter()
                .map(|(name, data_type, value)| name.len() + data_type.len() + value.len())
                .sum::<usize>()
    }

    pub(crate) fn body(&self) -> &str {
        &self.body
    }

    pub(crate) fn attributes(&self) -> Result<HashMap<String, MessageAttributeValue>> {
        let mut attributes = HashMap::with_capacity(1 + self.extra.len());
        let meta = MessageAttributeValue::builder()
            .data_type("Binary")
            .binary_value(Blob::new(self.meta.to_vec()));
        attributes.insert(META.to_owned(), built(meta)?);
        for (name, data_type, value) in &self.extra {
            let value = MessageAttributeValue::builder()
                .data_type(*data_type)
                .string_value(value);
            attributes.insert((*name).to_owned(), built(value)?);
        }
        Ok(attributes)
    }

    pub(crate) fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    pub(crate) fn dedup(&self) -> Option<&str> {
        self.dedup.as_deref()
    }

    /// The entry for `SendMessageBatch`, numbered `index`.
    pub(crate) fn entry(&self, index: usize) -> Result<SendMessageBatchRequestEntry> {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(self.body.clone())
            .set_message_attributes(Some(self.attributes()?))
            .set_message_group_id(self.group.clone())
            .set_message_deduplication_id(self.dedup.clone());
        if self.delay_seconds > 0 {
            entry = entry.delay_seconds(self.delay_seconds);
        }
        entry.build().map_err(|e| {
            Error::new(ErrorKind::Other, format!("building a send entry: {e}")).with_source(e)
        })
    }
}

/// A deduplication id from an idempotency key: SQS takes at most 128
/// characters of `[A-Za-z0-9!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~]`, so a key
/// that is not such is hashed.
fn dedup_id(key: &str) -> String {
    let fits = key.len() <= 128 && key.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        key.to_owned()
    } else {
        // FNV-1a, 128 bits: stable across processes and builds.
        let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        for b in key.bytes() {
            hash ^= u128::from(b);
            hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
        format!("k-{hash:032x}")
    }
}

fn built(
    builder: aws_sdk_sqs::types::builders::MessageAttributeValueBuilder,
) -> Result<MessageAttributeValue> {
    builder.build().map_err(|e| {
        Error::new(
            ErrorKind::Other,
            format!("building a message attribute: {e}"),
        )
        .with_source(e)
    })
}

/// A received message, decoded.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// The message; for bytes that do not decode, the raw body as payload.
    pub(crate) message: Message,
    /// Why the metadata did not decode, if it did not.
    pub(crate) undecodable: Option<Error>,
    pub(crate) receipt: String,
    /// `ApproximateReceiveCount`: deliveries of this SQS message so far.
    pub(crate) receive_count: u32,
    /// The dead-letter attributes, on a dead-letter queue.
    pub(crate) dead: Option<(DeadLetterReason, u32, SystemTime)>,
    /// When SQS took it (`SentTimestamp`).
    pub(crate) sent_at: SystemTime,
    /// When SQS first handed it out (`ApproximateFirstReceiveTimestamp`).
    pub(crate) first_received_at: Option<SystemTime>,
}

/// Decode a received SQS message. Never fails: a message with no
/// metadata (written by a plain client) is taken as a raw payload with
/// its attributes as headers; one whose metadata does not decode keeps
/// its raw body and says why in `undecodable`.
pub(crate) fn decode(m: &aws_sdk_sqs::types::Message) -> Option<Incoming> {
    let receipt = m.receipt_handle()?.to_owned();
    let body = m.body().unwrap_or_default();
    let system = m.attributes();
    let system_number = |name: MessageSystemAttributeName| {
        system
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let receive_count = system_number(MessageSystemAttributeName::ApproximateReceiveCount)
        .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX).max(1));
    let sent_at = system_number(MessageSystemAttributeName::SentTimestamp)
        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    let first_received_at =
        system_number(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp)
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let attributes = m.message_attributes();
    let attribute = |name: &str| attributes.and_then(|a| a.get(name));
    let raw = || {
        let mut message = Message::new(Bytes::copy_from_slice(body.as_bytes()));
        if let Some(id) = m.message_id().and_then(|id| id.parse::<MessageId>().ok()) {
            message.id = id;
        }
        message.created_at = sent_at;
        message
    };
    let (message, undecodable) = match attribute(META).and_then(|v| v.binary_value()) {
        None => {
            let mut message = raw();
            for (name, value) in attributes.into_iter().flatten() {
                if is_reserved_header(name) || name.starts_with("queue-") {
                    continue;
                }
                let text = match (value.string_value(), value.binary_value()) {
                    (Some(s), _) => s.to_owned(),
                    (None, Some(b)) => foreign_header_value(b.as_ref()),
                    (None, None) => String::new(),
                };
                message.headers.insert(name.clone(), text);
            }
            (message, None)
        }
        Some(meta) => match decode_meta(meta.as_ref(), body) {
            Ok(message) => (message, None),
            Err(e) => (raw(), Some(e)),
        },
    };
    let dead = attribute(DEAD_REASON)
        .and_then(|v| v.string_value())
        .map(|reason| {
            let number = |name| {
                attribute(name)
                    .and_then(|v| v.string_value())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            (
                DeadLetterReason::parse(reason),
                number(DEAD_ATTEMPTS)
                    .map_or(message.attempt, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                number(DEAD_AT).map_or(sent_at, |ms| UNIX_EPOCH + Duration::from_millis(ms)),
            )
        });
    Some(Incoming {
        message,
        undecodable,
        receipt,
        receive_count,
        dead,
        sent_at,
        first_received_at,
    })
}

fn decode_meta(meta: &[u8], body: &str) -> Result<Message> {
    let mut message = envelope::decode(&Bytes::copy_from_slice(meta))?;
    message.payload = match message.headers.remove(BODY_ENCODING).as_deref() {
        None => Bytes::copy_from_slice(body.as_bytes()),
        Some(BASE64) => Bytes::from(aws_smithy_types::base64::decode(body).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!("the body is marked base64 but does not decode: {e}"),
            )
        })?),
        Some(other) => {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("unknown body encoding {other:?}"),
            ))
        }
    };
    Ok(message)
}

impl Incoming {
    /// The dead letter this message of a dead-letter queue is. A message
    /// SQS moved there by the redrive policy has no reason of ours: its
    /// receives ran out, so `max_attempts`.
    pub(crate) fn dead_letter(&self) -> DeadLetter {
        let (reason, attempts, at) = self.dead.clone().unwrap_or((
            DeadLetterReason::MaxAttempts,
            self.message.attempt,
            self.sent_at,
        ));
        let mut letter = DeadLetter::new(self.message.clone(), reason, attempts);
        letter.dead_lettered_at = at;
        letter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(out: &Outgoing, receive_count: u32) -> aws_sdk_sqs::types::Message {
        aws_sdk_sqs::types::Message::builder()
            .message_id("0192d5a4-8b5e-7000-8000-000000000001")
            .receipt_handle("r")
            .body(out.body())
            .set_message_attributes(Some(out.attributes().expect("attributes")))
            .attributes(
                MessageSystemAttributeName::ApproximateReceiveCount,
                receive_count.to_string(),
            )
            .build()
    }

    #[test]
    fn text_and_binary_payloads_round_trip() {
        for payload in [
            Bytes::from_static(b"plain text \xe2\x9c\x93"),
            Bytes::from_static(b"\x00\xff binary"),
            Bytes::from_static(b"\x07bell"),
            Bytes::new(),
        ] {
            let message = Message::new(payload.clone()).with_header("tenant", "acme");
            let out = Outgoing::new(&message, 0, QueueType::Standard);
            let back = decode(&received(&out, 1)).expect("decodes");
            assert!(back.undecodable.is_none());
            assert_eq!(back.message.payload, payload);
            assert_eq!(back.message.id, message.id);
            assert_eq!(
                back.message.headers.get("tenant").map(String::as_str),
                Some("acme")
            );
            assert!(back.message.headers.get(BODY_ENCODING).is_none());
        }
    }

    #[test]
    fn a_plain_body_is_a_raw_payload_with_its_attributes_as_headers() {
        let m = aws_sdk_sqs::types::Message::builder()
            .message_id("not a uuid")
            .receipt_handle("r")
            .body("hello")
            .message_attributes(
                "origin",
                built(
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value("billing"),
                )
                .expect("attribute"),
            )
            .build();
        let back = decode(&m).expect("decodes");
        assert_eq!(back.message.payload.as_ref(), b"hello");
        assert_eq!(
            back.message.headers.get("origin").map(String::as_str),
            Some("billing")
        );
        assert!(back.undecodable.is_none());
    }

    #[test]
    fn foreign_bytes_in_our_attribute_are_undecodable_not_a_panic() {
        let m = aws_sdk_sqs::types::Message::builder()
            .receipt_handle("r")
            .body("x")
            .message_attributes(
                META,
                built(
                    MessageAttributeValue::builder()
                        .data_type("Binary")
                        .binary_value(Blob::new(vec![0xff, 0xfe, 0])),
                )
                .expect("attribute"),
            )
            .build();
        let back = decode(&m).expect("decodes");
        assert_eq!(
            back.undecodable.expect("undecodable").kind(),
            ErrorKind::Decode
        );
        assert_eq!(back.message.payload.as_ref(), b"x");
    }

    #[test]
    fn sizes_count_what_sqs_counts() {
        let message = Message::new("abc");
        let out = Outgoing::new(&message, 0, QueueType::Standard);
        assert!(out.size() <= message.wire_size() + crate::config::ATTRIBUTE_RESERVE);
        let binary = Outgoing::new(&Message::new(vec![0u8; 300]), 0, QueueType::Standard);
        assert!(binary.size() >= 400, "base64 grows the body");
    }

    #[test]
    fn dedup_ids_fit_sqs() {
        assert_eq!(dedup_id("order-42"), "order-42");
        let hashed = dedup_id("with space ✓");
        assert!(hashed.len() <= 128 && hashed.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(hashed, dedup_id("with space ✓"));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
