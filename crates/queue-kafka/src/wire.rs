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

/// Header of a record in a retry tier: when the delay mover takes it out
/// of the tier, in ms since the epoch.
pub(crate) const HEADER_RELEASE: &str = "queue-release";

/// The retry tiers: how long a record waits in each tier topic, and the
/// topic's suffix. Tier 0, `short`, takes whatever has less than the next
/// tier's wait left and waits exactly that long: the delay mover holds
/// its records each on its own timer. A message with more left goes to
/// the longest of the other tiers whose wait is not longer than what
/// remains, and waits that tier's wait. Records of one of those tiers are
/// appended with the same wait, so they come due in the order they were
/// appended: the mover pauses such a partition until its head is due, and
/// nothing behind the head is due before it. A record the mover takes
/// out goes to its queue if due, else to the tier for what remains (each
/// tier's wait is at most ten times the one below, so a hop or a few per
/// tier).
pub(crate) const TIERS: [(Duration, &str); 5] = [
    (Duration::ZERO, "short"),
    (Duration::from_secs(10), "10s"),
    (Duration::from_secs(60), "1m"),
    (Duration::from_secs(600), "10m"),
    (Duration::from_secs(3600), "1h"),
];

/// The retry tier topic `tier` (an index into [`TIERS`]) of `queue`.
pub(crate) fn tier(queue: &QueueName, tier: usize) -> String {
    format!("{queue}.retry.{}", TIERS[tier.min(TIERS.len() - 1)].1)
}

/// Every retry tier topic of `queue`, in [`TIERS`] order.
pub(crate) fn tiers(queue: &QueueName) -> Vec<String> {
    (0..TIERS.len()).map(|t| tier(queue, t)).collect()
}

/// Where a message goes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Due: the queue's topic.
    Due,
    /// Not due: retry tier `tier`, until `release`.
    Tier { tier: usize, release: SystemTime },
}

/// Where `message` goes at `now`: its queue when due, else the retry tier
/// for what remains of its delay.
pub(crate) fn route(message: &Message, now: SystemTime) -> Route {
    let remaining = message.delay_from(now);
    if remaining.is_zero() {
        return Route::Due;
    }
    let tier = TIERS
        .iter()
        .rposition(|(wait, _)| *wait <= remaining)
        .unwrap_or(0);
    let wait = if tier == 0 { remaining } else { TIERS[tier].0 };
    Route::Tier {
        tier,
        release: now + wait,
    }
}

/// The record headers of a message sent to a retry tier until `release`.
pub(crate) fn release_headers(release: SystemTime) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: HEADER_RELEASE,
        value: Some(ms_since_epoch(release).to_string().as_bytes()),
    })
}

/// When a retry tier's record is to be taken out of its tier (its
/// [`HEADER_RELEASE`]), if it has one.
pub(crate) fn release_of(record: &impl rdkafka::Message) -> Option<SystemTime> {
    let headers = record.headers()?;
    let value = headers.iter().find(|h| h.key == HEADER_RELEASE)?.value?;
    let ms: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn due_in(now: SystemTime, delay: Duration) -> Message {
        let mut message = Message::new("x");
        message.not_before = Some(now + delay);
        message
    }

    #[test]
    fn a_due_message_goes_to_its_queue() {
        assert_eq!(route(&Message::new("x"), at(0)), Route::Due);
        assert_eq!(route(&due_in(at(0), Duration::ZERO), at(0)), Route::Due);
        assert_eq!(
            route(&due_in(at(0), Duration::from_secs(5)), at(6)),
            Route::Due
        );
    }

    #[test]
    fn a_delay_waits_in_the_longest_tier_not_longer_than_it() {
        let now = at(0);
        let cases = [
            (Duration::from_millis(300), 0, Duration::from_millis(300)),
            (Duration::from_secs(9), 0, Duration::from_secs(9)),
            (Duration::from_secs(10), 1, Duration::from_secs(10)),
            (Duration::from_secs(59), 1, Duration::from_secs(10)),
            (Duration::from_secs(90), 2, Duration::from_secs(60)),
            (Duration::from_secs(700), 3, Duration::from_secs(600)),
            (Duration::from_secs(86_400), 4, Duration::from_secs(3600)),
        ];
        for (delay, tier, wait) in cases {
            assert_eq!(
                route(&due_in(now, delay), now),
                Route::Tier {
                    tier,
                    release: now + wait
                },
                "{delay:?}"
            );
        }
    }

    #[test]
    fn hops_add_up_to_the_delay() {
        let sent = at(0);
        for (delay, path) in [
            (75, &["1m", "10s", "short"][..]),
            (3, &["short"][..]),
            (7_265, &["1h", "1h", "1m", "short"][..]),
        ] {
            let message = due_in(sent, Duration::from_secs(delay));
            let mut now = sent;
            let mut hops = Vec::new();
            while let Route::Tier { tier, release } = route(&message, now) {
                hops.push(TIERS[tier].1);
                now = release;
            }
            assert_eq!(now, sent + Duration::from_secs(delay));
            assert_eq!(hops, path, "{delay} s");
        }
    }

    #[test]
    fn tier_topics_are_named_by_their_wait() {
        let queue = QueueName::new("emails").expect("name");
        assert_eq!(
            tiers(&queue),
            [
                "emails.retry.short",
                "emails.retry.10s",
                "emails.retry.1m",
                "emails.retry.10m",
                "emails.retry.1h"
            ]
        );
    }
}
