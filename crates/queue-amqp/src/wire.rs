//! What the backend puts on RabbitMQ: queue names and arguments, the delay
//! tiers, and messages to and from AMQP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use queue_core::message::foreign_header_value;
use queue_core::{envelope, DeadLetterReason, Message, Priority, QueueName, QueueOptions};

use crate::config::QueueType;
use crate::link::Outgoing;

/// The highest AMQP priority used (`x-max-priority` of classic queues):
/// Low 0, Normal 1, High 2, Urgent 3.
pub(crate) const MAX_PRIORITY: u8 = 3;

/// The storage version of classic queues (`x-queue-version`).
pub(crate) const CLASSIC_QUEUE_VERSION: u8 = 2;

/// A delayed message is handed out only this long after its due time: the
/// due time travels in whole milliseconds and the broker's TTL timers are
/// not exact, so a small margin keeps "never before" true to the caller's
/// clocks.
pub(crate) const DUE_SLACK: Duration = Duration::from_millis(10);

/// What remains of `message`'s delay at `now`, with the margin: zero once
/// it may be handed out.
pub(crate) fn remaining_delay(message: &Message, now: SystemTime) -> Duration {
    match message.not_before {
        Some(at) => (at + DUE_SLACK)
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
        None => Duration::ZERO,
    }
}

/// Delay tiers: tier `k` holds messages for 2^k ms, k = 0..TIERS.
/// 2^35 ms is about 397 days, so any delay up to 365 days decomposes.
pub(crate) const TIERS: u32 = 36;

/// Header of a hop through the delay tiers: when the message is due, in
/// milliseconds since the Unix epoch (an arrival before it is hopped on).
pub(crate) const HEADER_DUE: &str = "x-queue-due";
/// Header of a dead letter: why (`DeadLetterReason`'s text form).
pub(crate) const HEADER_REASON: &str = "x-queue-reason";
/// Header of a dead letter: attempts made.
pub(crate) const HEADER_ATTEMPTS: &str = "x-queue-attempts";
/// Header of a dead letter: when, in ms since the epoch.
pub(crate) const HEADER_DEAD_AT: &str = "x-queue-dead-at";

/// The dead-letter queue of `queue`.
pub(crate) fn dlq(queue: &QueueName) -> String {
    format!("{queue}.dlq")
}

/// Delay tier `k` of `queue`: holds messages 2^k ms, then dead-letters
/// them back into `queue`.
pub(crate) fn tier(queue: &QueueName, k: u32) -> String {
    format!("{queue}.delay.{k}")
}

/// Every companion queue of `queue` that may exist: its dead letters and
/// its delay tiers.
pub(crate) fn companions(queue: &QueueName) -> Vec<String> {
    let mut names = vec![dlq(queue)];
    names.extend((0..TIERS).map(|k| tier(queue, k)));
    names
}

/// The tier for a remaining delay of `ms` (> 0): the longest that does
/// not overshoot, so the message never arrives before it is due.
pub(crate) fn tier_for(ms: u64) -> u32 {
    (63 - ms.max(1).leading_zeros()).min(TIERS - 1)
}

fn ms_since_epoch(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn kind_args(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    match queue_type {
        QueueType::Quorum => {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
        }
        // Classic queue storage version 2 (RabbitMQ 3.10+): faster to fill
        // and to drain than version 1, and steady with a deep backlog.
        QueueType::Classic => {
            args.insert(
                "x-queue-version".into(),
                AMQPValue::ShortShortUInt(CLASSIC_QUEUE_VERSION),
            );
        }
    }
    args
}

/// Arguments of a queue: its type, priorities (classic), expired messages
/// dead-lettered to its DLQ by the broker, and its maximum length.
pub(crate) fn queue_args(
    queue_type: QueueType,
    queue: &QueueName,
    options: &QueueOptions,
) -> FieldTable {
    let mut args = kind_args(queue_type);
    if queue_type == QueueType::Classic {
        args.insert(
            "x-max-priority".into(),
            AMQPValue::ShortShortUInt(MAX_PRIORITY),
        );
    }
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(dlq(queue))),
    );
    if let Some(max) = options.max_length {
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::try_from(max).unwrap_or(i64::MAX)),
        );
        // A full queue refuses the publish (a publisher nack), never
        // dropping the oldest message silently.
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
    }
    args
}

/// Arguments of the dead-letter queue: the mode's type, nothing else.
pub(crate) fn dlq_args(queue_type: QueueType) -> FieldTable {
    kind_args(queue_type)
}

/// Arguments of delay tier `k` of `queue`: every message waits 2^k ms, then
/// the broker dead-letters it back into `queue`. Same-TTL messages expire
/// in arrival order, so the head is always the next due.
pub(crate) fn tier_args(queue_type: QueueType, queue: &QueueName, k: u32) -> FieldTable {
    let mut args = kind_args(queue_type);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1i64 << k));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(queue.as_str())),
    );
    if queue_type == QueueType::Quorum {
        // Quorum queues dead-letter at most once unless told otherwise.
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString(LongString::from("at-least-once")),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
    }
    args
}

/// The AMQP priority of `priority`.
pub(crate) fn amqp_priority(priority: Priority) -> u8 {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Urgent => 3,
    }
}

fn base_properties(message: &Message) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_priority(amqp_priority(message.priority))
        .with_content_type(ShortString::from("application/x-queue-envelope"))
}

/// Where `message` goes now: straight into `queue`, or into the delay tier
/// for what remains of its delay (with its due time in a header).
pub(crate) fn outgoing(queue: &QueueName, message: &Message, now: SystemTime) -> Outgoing {
    let body = envelope::encode(message);
    let delay = remaining_delay(message, now);
    let mut properties = base_properties(message);
    let routing_key = if delay >= Duration::from_millis(1) {
        let due = message.not_before.map_or(0, ms_since_epoch);
        let mut headers = FieldTable::default();
        headers.insert(HEADER_DUE.into(), AMQPValue::LongLongInt(due));
        properties = properties.with_headers(headers);
        tier(queue, tier_for(delay.as_millis() as u64))
    } else {
        if let Some(at) = message.expires_at {
            // The broker drops (dead-letters) it unseen once the TTL passes.
            let left = at.duration_since(now).map_or(0, |d| d.as_millis());
            properties = properties.with_expiration(ShortString::from(left.to_string()));
        }
        queue.to_string()
    };
    Outgoing {
        routing_key,
        body,
        properties,
    }
}

/// `message` as a dead letter of `queue`, with the reason in headers.
pub(crate) fn dead_letter(
    queue: &QueueName,
    message: &Message,
    reason: &DeadLetterReason,
    attempts: u32,
) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_REASON.into(),
        AMQPValue::LongString(LongString::from(reason.to_string())),
    );
    headers.insert(
        HEADER_ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(
        HEADER_DEAD_AT.into(),
        AMQPValue::LongLongInt(ms_since_epoch(SystemTime::now())),
    );
    Outgoing {
        routing_key: dlq(queue),
        body: envelope::encode(message),
        properties: base_properties(message).with_headers(headers),
    }
}

/// A message read off a queue.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Ours, or foreign bytes taken as a raw payload.
    Message(Message),
    /// Looked like an envelope but did not decode: the bytes as a raw
    /// payload (for the dead letter) and why.
    Undecodable(Message, queue_core::Error),
}

/// Read a delivery's body and properties. Foreign bytes (no envelope) are
/// a raw payload with a fresh id, their AMQP headers as text headers;
/// with `count_deliveries`, the broker's `x-delivery-count` (quorum queues)
/// adds to the attempt.
pub(crate) fn incoming(
    body: Vec<u8>,
    properties: &BasicProperties,
    count_deliveries: bool,
) -> Incoming {
    let body = bytes::Bytes::from(body);
    let delivery_count = if count_deliveries {
        header_int(properties, "x-delivery-count").unwrap_or(0)
    } else {
        0
    };
    let mut incoming = if envelope::looks_like_envelope(&body) {
        match envelope::decode(&body) {
            Ok(message) => Incoming::Message(message),
            Err(e) => Incoming::Undecodable(Message::new(body), e),
        }
    } else {
        let mut message = Message::new(body);
        if let Some(headers) = properties.headers() {
            for (name, value) in headers.inner() {
                message
                    .headers
                    .insert(name.as_str().to_owned(), value_text(value));
            }
        }
        Incoming::Message(message)
    };
    if let Incoming::Message(message) = &mut incoming {
        let extra = u32::try_from(delivery_count.max(0)).unwrap_or(u32::MAX);
        message.attempt = message.attempt.saturating_add(extra);
    }
    incoming
}

/// An integer header's value.
pub(crate) fn header_int(properties: &BasicProperties, name: &str) -> Option<i64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// A text header's value.
pub(crate) fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    Some(value_text(value))
}

/// The text of an AMQP header value (`docs/wire-format.md`'s rule for
/// foreign headers): strings as they are (base64 if not UTF-8), numbers,
/// booleans and timestamps as their usual text.
pub(crate) fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => foreign_header_value(s.as_bytes()),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => foreign_header_value(b.as_slice()),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        AMQPValue::FieldArray(items) => {
            let items: Vec<String> = items.as_slice().iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::FieldTable(table) => {
            let items: Vec<String> = table
                .inner()
                .iter()
                .map(|(k, v)| format!("{}: {}", k.as_str(), value_text(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// Why the broker dead-lettered a message itself (`x-first-death-reason`):
/// `expired` for a TTL that ran out in the queue.
pub(crate) fn broker_death_reason(properties: &BasicProperties) -> Option<DeadLetterReason> {
    match header_text(properties, "x-first-death-reason")?.as_str() {
        "expired" => Some(DeadLetterReason::Expired),
        "maxlen" | "delivery_limit" => Some(DeadLetterReason::MaxAttempts),
        other => Some(DeadLetterReason::Rejected(format!(
            "dead-lettered by the broker: {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_never_overshoot_and_cover_a_year() {
        assert_eq!(tier_for(1), 0);
        assert_eq!(tier_for(2), 1);
        assert_eq!(tier_for(3), 1);
        assert_eq!(tier_for(1500), 10);
        assert_eq!(tier_for(1024), 10);
        assert_eq!(tier_for(u64::MAX), TIERS - 1);
        let year = 365 * 24 * 3600 * 1000u64;
        assert!(1u64 << (TIERS - 1) > year / 2, "a year takes a few hops");
        for ms in [1u64, 7, 999, 65_536, year] {
            assert!(1u64 << tier_for(ms) <= ms);
        }
    }

    #[test]
    fn foreign_bytes_are_a_raw_payload_with_text_headers() {
        let mut headers = FieldTable::default();
        headers.insert("n".into(), AMQPValue::LongInt(7));
        headers.insert(
            "blob".into(),
            AMQPValue::LongString(LongString::from(vec![0xffu8, 0x00])),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        let properties = BasicProperties::default().with_headers(headers);
        let Incoming::Message(message) = incoming(b"plain".to_vec(), &properties, true) else {
            panic!("foreign bytes are delivered");
        };
        assert_eq!(message.payload.as_ref(), b"plain");
        assert_eq!(message.headers.get("n").map(String::as_str), Some("7"));
        assert_eq!(
            message.headers.get("blob").map(String::as_str),
            Some("base64:/wA=")
        );
        assert_eq!(message.attempt, 3, "the broker's delivery count adds");
    }

    #[test]
    fn envelopes_round_trip_and_broken_ones_are_undecodable() {
        let queue = QueueName::new("jobs").unwrap();
        let message = Message::new("x").with_priority(Priority::High);
        let out = outgoing(&queue, &message, SystemTime::now());
        assert_eq!(out.routing_key, "jobs");
        assert_eq!(out.properties.priority(), &Some(2));
        let Incoming::Message(back) = incoming(out.body.to_vec(), &out.properties, true) else {
            panic!("decodes");
        };
        assert_eq!(back.id, message.id);
        let mut broken = out.body.to_vec();
        broken.truncate(envelope::FIXED_LEN - 2);
        assert!(matches!(
            incoming(broken, &BasicProperties::default(), true),
            Incoming::Undecodable(..)
        ));
        let delayed = Message::new("x").with_delay(Duration::from_millis(1500));
        let out = outgoing(&queue, &delayed, SystemTime::now());
        assert_eq!(out.routing_key, "jobs.delay.10");
        assert!(header_int(&out.properties, HEADER_DUE).is_some());
    }
}
