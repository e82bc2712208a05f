//! What the backend puts on Kafka: topic names, and messages to and from
//! records.
//!
//! A record's value is the message in the workspace's binary envelope
//! (`queue_core::envelope`: id, payload, headers, attempt, due time, ...),
//! its key the message's ordering key. Records another producer wrote
//! (not an envelope) are taken as plain payloads, their record headers as
//! message headers; bytes that look like an envelope but do not decode
//! are dead-lettered with reason `decode`. Dead letters carry why, how
//! many attempts and when in record headers beside the envelope.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use queue_core::message::foreign_header_value;
use queue_core::{envelope, DeadLetter, DeadLetterReason, Error, Message, QueueName};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Header of a dead letter: why (`DeadLetterReason`'s text form).
pub(crate) const HEADER_REASON: &str = "queue-reason";
/// Header of a dead letter: attempts made.
pub(crate) const HEADER_ATTEMPTS: &str = "queue-attempts";
/// Header of a dead letter: when, in ms since the epoch.
pub(crate) const HEADER_DEAD_AT: &str = "queue-dead-at";

/// The topic of `queue`.
pub(crate) fn topic(queue: &QueueName) -> String {
    queue.as_str().to_owned()
}

/// The dead-letter topic of `queue`.
pub(crate) fn dlq(queue: &QueueName) -> String {
    format!("{queue}.dlq")
}

/// The delay topic of `queue`: messages not due yet wait there.
pub(crate) fn delay(queue: &QueueName) -> String {
    format!("{queue}.delay")
}

/// What a record held.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A message (ours, or another producer's plain payload).
    Message(Message),
    /// Bytes that look like our envelope but do not decode: the raw bytes
    /// as a message, and why.
    Undecodable(Message, Error),
}

/// Decode a fetched record.
pub(crate) fn incoming(record: &impl rdkafka::Message) -> Incoming {
    let body = Bytes::copy_from_slice(record.payload().unwrap_or_default());
    if envelope::looks_like_envelope(&body) {
        return match envelope::decode(&body) {
            Ok(message) => Incoming::Message(message),
            Err(e) => Incoming::Undecodable(Message::new(body), e),
        };
    }
    let mut message = Message::new(body);
    if let Some(headers) = record.headers() {
        for header in headers.iter() {
            message.headers.insert(
                header.key.to_owned(),
                foreign_header_value(header.value.unwrap_or_default()),
            );
        }
    }
    if let Some(key) = record.key() {
        message.ordering_key = Some(String::from_utf8_lossy(key).into());
    }
    Incoming::Message(message)
}

/// The record value of `message`.
pub(crate) fn value(message: &Message) -> Bytes {
    envelope::encode(message)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn ms_since_epoch(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The headers of a dead letter of `message`.
pub(crate) fn dead_letter_headers(reason: &DeadLetterReason, attempts: u32) -> OwnedHeaders {
    let reason = serde_json::to_string(reason).unwrap_or_else(|_| reason.as_str().to_owned());
    OwnedHeaders::new()
        .insert(Header {
            key: HEADER_REASON,
            value: Some(reason.as_bytes()),
        })
        .insert(Header {
            key: HEADER_ATTEMPTS,
            value: Some(attempts.to_string().as_bytes()),
        })
        .insert(Header {
            key: HEADER_DEAD_AT,
            value: Some(ms_since_epoch(SystemTime::now()).to_string().as_bytes()),
        })
}

/// A dead letter read back from the dead-letter topic.
pub(crate) fn dead_letter(record: &impl rdkafka::Message) -> DeadLetter {
    let text = |name: &str| {
        record
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let message = match incoming(record) {
        Incoming::Message(message) | Incoming::Undecodable(message, _) => message,
    };
    let reason = text(HEADER_REASON)
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or(DeadLetterReason::Decode);
    let attempts = text(HEADER_ATTEMPTS)
        .and_then(|a| a.parse().ok())
        .unwrap_or(message.attempt);
    let dead_at = text(HEADER_DEAD_AT)
        .and_then(|a| a.parse::<u64>().ok())
        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    let mut letter = DeadLetter::new(message, reason, attempts);
    letter.dead_lettered_at = dead_at;
    letter
}
