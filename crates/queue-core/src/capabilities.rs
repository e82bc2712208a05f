//! What a backend can do: the capability table.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, Priority};

/// How a backend provides a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    /// The broker does it itself.
    Native,
    /// The backend builds it from other broker features (documented per backend).
    Emulated,
    /// Not available: using it is a typed [`ErrorKind::Unsupported`] error.
    Unsupported,
}

impl Support {
    /// Whether the feature can be used at all.
    pub fn is_available(self) -> bool {
        !matches!(self, Support::Unsupported)
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Support::Native => "native",
            Support::Emulated => "emulated",
            Support::Unsupported => "unsupported",
        })
    }
}

/// The message order a consumer observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// First in, first out within each priority level.
    FifoPerPriority,
    /// First in, first out within a partition (or message group).
    FifoPerPartition,
    /// No order is promised.
    None,
}

/// A backend's capability table: per feature, native / emulated /
/// unsupported, plus its limits. The manager checks queue options against it
/// at startup and producers check each message before any network call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Backend name (`memory`, `redis`, ...).
    pub backend: &'static str,
    /// Priority levels.
    pub priority: Support,
    /// Delayed delivery (`with_delay`, `with_run_at`).
    pub delay: Support,
    /// Message expiry.
    pub ttl: Support,
    /// Dead-letter queue with reason and attempts.
    pub dead_letter: Support,
    /// Listing dead letters and moving them back.
    pub redrive: Support,
    /// Deduplication by idempotency key.
    pub idempotency: Support,
    /// Extending a delivery's lease.
    pub lease_extension: Support,
    /// Bounded queue length.
    pub max_length: Support,
    /// Purging a queue.
    pub purge: Support,
    /// Exact counts in stats (as opposed to the broker's approximations).
    pub exact_stats: bool,
    /// Whether settling a delivery whose lease was lost (and the message
    /// re-delivered) is detected and refused with [`ErrorKind::LeaseLost`].
    pub detects_lease_lost: bool,
    /// Message order a consumer sees.
    pub ordering: Ordering,
    /// Largest payload (plus headers) in bytes.
    pub max_payload: usize,
    /// Longest delay the broker holds natively; longer delays are hopped.
    pub max_native_delay: Option<Duration>,
    /// Most messages per native send batch.
    pub max_batch: usize,
    /// Most messages one `receive` call returns.
    pub max_receive: usize,
    /// Idempotency window: a repeated key inside it is dropped.
    pub idempotency_window: Option<Duration>,
}

impl Capabilities {
    /// A table for `backend` that supports nothing yet: a backend crate
    /// starts from this and sets each field (the struct is
    /// `#[non_exhaustive]`, so other crates cannot build it literally).
    pub fn new(backend: &'static str) -> Self {
        Capabilities {
            backend,
            priority: Support::Unsupported,
            delay: Support::Unsupported,
            ttl: Support::Unsupported,
            dead_letter: Support::Unsupported,
            redrive: Support::Unsupported,
            idempotency: Support::Unsupported,
            lease_extension: Support::Unsupported,
            max_length: Support::Unsupported,
            purge: Support::Unsupported,
            exact_stats: false,
            detects_lease_lost: false,
            ordering: Ordering::None,
            max_payload: 0,
            max_native_delay: None,
            max_batch: 1,
            max_receive: 1,
            idempotency_window: None,
        }
    }

    /// Check one outgoing message against the table: payload size, priority,
    /// delay, TTL and idempotency support. Called before any network call.
    pub fn check_message(&self, message: &Message) -> Result<()> {
        let size = message.wire_size();
        if size > self.max_payload {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message {} is {size} bytes; the {} backend accepts at most {} bytes of payload and headers",
                    message.id, self.backend, self.max_payload
                ),
            ));
        }
        if message.priority != Priority::Normal && !self.priority.is_available() {
            return Err(self.unsupported("priority"));
        }
        if message.not_before.is_some() && !self.delay.is_available() {
            return Err(self.unsupported("delayed delivery"));
        }
        if message.expires_at.is_some() && !self.ttl.is_available() {
            return Err(self.unsupported("message TTL"));
        }
        if message.idempotency_key.is_some() && !self.idempotency.is_available() {
            return Err(self.unsupported("idempotency keys"));
        }
        let now = std::time::SystemTime::now();
        let horizon = now + crate::message::MAX_DELAY + Duration::from_secs(60);
        if message.not_before.is_some_and(|at| at > horizon) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "message {}: delay is longer than the maximum of 365 days",
                    message.id
                ),
            ));
        }
        if message.expires_at.is_some_and(|at| at > horizon) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "message {}: TTL is longer than the maximum of 365 days",
                    message.id
                ),
            ));
        }
        if message.attempt == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("message {}: attempt must be at least 1", message.id),
            ));
        }
        if message.max_attempts == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("message {}: max_attempts must be at least 1", message.id),
            ));
        }
        Ok(())
    }

    /// Check every message of a batch.
    pub fn check_batch(&self, messages: &[Message]) -> Result<()> {
        if messages.len() > self.max_batch {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a batch of {} messages is larger than the {} backend's maximum of {}; split it",
                    messages.len(),
                    self.backend,
                    self.max_batch
                ),
            ));
        }
        messages.iter().try_for_each(|m| self.check_message(m))
    }

    /// Check the `max` of a `receive`: 1 to `max_receive`, else
    /// [`ErrorKind::InvalidInput`] naming the range.
    pub fn check_receive(&self, max: usize) -> Result<()> {
        if max == 0 || max > self.max_receive {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("receive max must be 1 to {}, got {max}", self.max_receive),
            ));
        }
        Ok(())
    }

    /// The typed error for using `feature` on this backend.
    pub fn unsupported(&self, feature: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("the {} backend does not support {feature}", self.backend),
        )
    }

    /// Require `support` for `feature`, or return the typed error.
    pub fn require(&self, support: Support, feature: &str) -> Result<()> {
        if support.is_available() {
            Ok(())
        } else {
            Err(self.unsupported(feature))
        }
    }

    /// The table as Markdown rows (`| feature | support |`), for docs and the CLI.
    pub fn to_markdown_rows(&self) -> Vec<(String, String)> {
        let duration = |d: Option<Duration>| match d {
            Some(d) => format!("{} s", d.as_secs()),
            None => "unlimited".to_owned(),
        };
        vec![
            ("priority".into(), self.priority.to_string()),
            ("delay".into(), self.delay.to_string()),
            ("ttl".into(), self.ttl.to_string()),
            ("dead letters".into(), self.dead_letter.to_string()),
            ("redrive".into(), self.redrive.to_string()),
            ("idempotency keys".into(), self.idempotency.to_string()),
            ("lease extension".into(), self.lease_extension.to_string()),
            ("max length".into(), self.max_length.to_string()),
            ("purge".into(), self.purge.to_string()),
            ("exact stats".into(), self.exact_stats.to_string()),
            (
                "detects lost leases".into(),
                self.detects_lease_lost.to_string(),
            ),
            ("ordering".into(), format!("{:?}", self.ordering)),
            ("max payload".into(), format!("{} bytes", self.max_payload)),
            ("max native delay".into(), duration(self.max_native_delay)),
            ("max send batch".into(), self.max_batch.to_string()),
            ("max receive".into(), self.max_receive.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Capabilities {
        Capabilities {
            backend: "test",
            priority: Support::Unsupported,
            delay: Support::Native,
            ttl: Support::Native,
            dead_letter: Support::Native,
            redrive: Support::Native,
            idempotency: Support::Unsupported,
            lease_extension: Support::Native,
            max_length: Support::Native,
            purge: Support::Native,
            exact_stats: true,
            detects_lease_lost: true,
            ordering: Ordering::None,
            max_payload: 10,
            max_native_delay: None,
            max_batch: 10,
            max_receive: 10,
            idempotency_window: None,
        }
    }

    #[test]
    fn check_message_names_the_problem() {
        let caps = table();
        let err = caps
            .check_message(&Message::new(vec![0u8; 11]))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
        assert!(err.message().contains("11 bytes") && err.message().contains("at most 10"));

        let err = caps
            .check_message(&Message::new(&b"x"[..]).with_priority(Priority::High))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.message().contains("priority"));

        let err = caps
            .check_message(&Message::new(&b"x"[..]).with_idempotency_key("k"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(caps.check_message(&Message::new(&b"x"[..])).is_ok());
    }
}
