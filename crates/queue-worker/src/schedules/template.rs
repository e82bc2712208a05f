//! The job a schedule sends at each tick ([`JobTemplate`]).

use std::time::Duration;

use bytes::Bytes;
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::job::{HEADER_BACKOFF, HEADER_TIMEOUT_MS};
use queue_core::message::{
    Headers, Message, Priority, QueueName, DEFAULT_MAX_ATTEMPTS, MAX_DELAY, RESERVED_HEADER_PREFIX,
};
use serde::{Deserialize, Serialize};

/// The largest payload a template holds: 16 KiB (the whole schedule is
/// kept as one coordination record).
pub const MAX_TEMPLATE_PAYLOAD: usize = 16 * 1024;

/// The job a schedule sends at each tick: queue, payload bytes, headers,
/// priority, attempts and an optional delay.
///
/// ```
/// use queue_core::{Priority, QueueName};
/// use queue_worker::schedules::JobTemplate;
/// let job = JobTemplate::json(QueueName::new("digests")?, &serde_json::json!({"kind": "daily"}))?
///     .header("tenant", "acme")
///     .priority(Priority::High)
///     .max_attempts(5);
/// assert_eq!(job.payload().as_ref(), br#"{"kind":"daily"}"#);
/// # Ok::<(), queue_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTemplate {
    queue: QueueName,
    #[serde(with = "payload")]
    payload: Bytes,
    #[serde(default, skip_serializing_if = "no_headers")]
    headers: Headers,
    #[serde(default)]
    priority: Priority,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default, rename = "delay_ms", with = "super::millis::option")]
    delay: Option<Duration>,
}

fn no_headers(headers: &Headers) -> bool {
    headers.is_empty()
}

/// Whether a template may not set header `name`: the library's namespace
/// is refused, except the job options a typed job would carry (timeout,
/// backoff); the schedule's own headers are written at each tick.
fn is_refused_header(name: &str) -> bool {
    let prefix = RESERVED_HEADER_PREFIX.len();
    name.len() >= prefix
        && name.as_bytes()[..prefix].eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes())
        && name != HEADER_TIMEOUT_MS
        && name != HEADER_BACKOFF
}

fn default_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl JobTemplate {
    /// A job of `payload` for `queue`, normal priority, the default
    /// attempts, no headers and no delay.
    pub fn new(queue: QueueName, payload: impl Into<Bytes>) -> Self {
        JobTemplate {
            queue,
            payload: payload.into(),
            headers: Headers::new(),
            priority: Priority::Normal,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            delay: None,
        }
    }

    /// A job whose payload is `value` as JSON (what a typed handler
    /// `Job<T>` reads).
    pub fn json<T: Serialize + ?Sized>(queue: QueueName, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("job.payload: cannot encode as JSON: {e}"),
            )
            .with_source(e)
        })?;
        Ok(JobTemplate::new(queue, payload))
    }

    /// Add a header. Names starting with `x-queue-` are the library's:
    /// only its job options (`x-queue-timeout-ms`, `x-queue-backoff`) may
    /// be set here.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The priority of each job.
    #[must_use]
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Attempts of each job (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Hold each job this long after its tick before it can run (where the
    /// backend supports delays).
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The queue.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The message of one job (a fresh id; the caller adds the schedule's
    /// headers and idempotency key).
    pub(crate) fn message(&self) -> Message {
        let mut message = Message::new(self.payload.clone())
            .with_priority(self.priority)
            .with_max_attempts(self.max_attempts);
        message.headers = self.headers.clone();
        if let Some(delay) = self.delay {
            message = message.with_delay(delay);
        }
        message
    }

    /// `InvalidInput` naming the field for a payload over
    /// [`MAX_TEMPLATE_PAYLOAD`], a header in the library's namespace, no
    /// attempts or a delay over the longest.
    pub(crate) fn check(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::new(ErrorKind::InvalidInput, what));
        if self.payload.len() > MAX_TEMPLATE_PAYLOAD {
            return invalid(format!(
                "job.payload: a schedule's payload is at most {MAX_TEMPLATE_PAYLOAD} bytes, not {}",
                self.payload.len()
            ));
        }
        if let Some(name) = self.headers.keys().find(|name| is_refused_header(name)) {
            return invalid(format!(
                "job.headers: {name:?} is in the library's reserved namespace (x-queue-)"
            ));
        }
        if self.max_attempts == 0 {
            return invalid("job.max_attempts: must be at least 1".to_owned());
        }
        if self.delay.is_some_and(|delay| delay > MAX_DELAY) {
            return invalid(format!(
                "job.delay: must be at most {} days",
                MAX_DELAY.as_secs() / 86_400
            ));
        }
        Ok(())
    }
}

/// A payload stored as text when it is UTF-8 (JSON stays readable in the
/// record), else as hex.
mod payload {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Stored<'a> {
        Text(std::borrow::Cow<'a, str>),
        Hex(String),
    }

    pub(super) fn serialize<S: Serializer>(payload: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(payload) {
            Ok(text) => Stored::Text(text.into()).serialize(s),
            Err(_) => {
                let hex = payload.iter().map(|b| format!("{b:02x}")).collect();
                Stored::Hex(hex).serialize(s)
            }
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        match Stored::deserialize(d)? {
            Stored::Text(text) => Ok(Bytes::from(text.into_owned())),
            Stored::Hex(hex) => {
                let digits = hex.as_bytes();
                if !digits.len().is_multiple_of(2) {
                    return Err(serde::de::Error::custom("odd number of hex digits"));
                }
                digits
                    .chunks(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                            .ok_or_else(|| serde::de::Error::custom("invalid hex digit"))
                    })
                    .collect::<Result<Vec<u8>, _>>()
                    .map(Bytes::from)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> QueueName {
        QueueName::new("reports").expect("valid")
    }

    #[test]
    fn payloads_round_trip_as_text_or_hex() {
        for payload in [&b"{\"a\":1}"[..], &[0xff, 0x00, 0x10][..], &b""[..]] {
            let job = JobTemplate::new(queue(), payload.to_vec())
                .header("tenant", "acme")
                .delay(Duration::from_secs(2));
            let json = serde_json::to_string(&job).expect("serializes");
            let back: JobTemplate = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, job, "{json}");
        }
        let json = serde_json::to_string(&JobTemplate::new(queue(), vec![0xffu8, 0x01]))
            .expect("serializes");
        assert!(json.contains(r#""hex":"ff01""#), "{json}");
    }

    #[test]
    fn bad_templates_name_the_field() {
        let big = JobTemplate::new(queue(), vec![b'x'; MAX_TEMPLATE_PAYLOAD + 1]);
        let reserved = JobTemplate::new(queue(), "x").header("x-queue-schedule", "forged");
        let no_attempts = JobTemplate::new(queue(), "x").max_attempts(0);
        for (job, field) in [
            (big, "job.payload"),
            (reserved, "job.headers"),
            (no_attempts, "job.max_attempts"),
        ] {
            let error = job.check().expect_err(field);
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert!(error.to_string().contains(field), "{error}");
        }
    }
}
