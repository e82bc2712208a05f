//! Messages: what travels through a queue.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{cap_error_text, Error, ErrorKind, Result};

/// Message headers: a string map. (The W3C trace context travels in
/// [`Message::trace`], and as the `traceparent` header on brokers' wires.)
///
/// Reads go through `Deref` to a `BTreeMap<String, String>`; cloning is
/// cheap (the map is shared and copied only when a clone is changed), so a
/// backend can keep a message and hand out a copy without copying headers.
///
/// ```
/// use queue_core::Headers;
/// let mut headers = Headers::new();
/// headers.insert("tenant", "acme");
/// let copy = headers.clone();
/// headers.insert("tenant", "globex");
/// assert_eq!(copy["tenant"], "acme");
/// assert_eq!(headers.get("tenant").map(String::as_str), Some("globex"));
/// ```
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<BTreeMap<String, String>>>);

/// What an empty `Headers` reads as, so no headers cost no allocation.
static NO_HEADERS: BTreeMap<String, String> = BTreeMap::new();

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    /// Set `name` to `value`, returning the previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        Arc::make_mut(self.0.get_or_insert_with(Arc::default)).insert(name.into(), value.into())
    }

    /// Add `value` to `name`: a header met twice (Kafka and AMQP allow
    /// repeats) keeps every value, joined with `", "` in the order met, as
    /// HTTP combines repeated fields.
    pub fn append(&mut self, name: impl Into<String>, value: impl AsRef<str>) {
        let map = Arc::make_mut(self.0.get_or_insert_with(Arc::default));
        match map.entry(name.into()) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(value.as_ref().to_owned());
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let joined = slot.get_mut();
                joined.push_str(", ");
                joined.push_str(value.as_ref());
            }
        }
    }

    /// Remove `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let map = self.0.as_mut().filter(|map| map.contains_key(name))?;
        Arc::make_mut(map).remove(name)
    }
}

impl std::ops::Deref for Headers {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_HEADERS)
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Headers {}

impl std::hash::Hash for Headers {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers::from(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<BTreeMap<String, String>>(),
        )
    }
}

impl From<BTreeMap<String, String>> for Headers {
    fn from(map: BTreeMap<String, String>) -> Self {
        Headers((!map.is_empty()).then(|| Arc::new(map)))
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        BTreeMap::deserialize(deserializer).map(Headers::from)
    }
}

/// The namespace of the library's own headers. A user header whose name
/// starts with it (in any case) is refused with
/// [`ErrorKind::InvalidInput`] before any network call; only the names in
/// [`LIBRARY_HEADERS`] are written, by [`Job::encode`](crate::Job::encode).
pub const RESERVED_HEADER_PREFIX: &str = "x-queue-";

/// The headers of the reserved namespace the library itself writes (job
/// options that travel with a message, the schedule and tick of a
/// periodic job, and a job's group).
pub const LIBRARY_HEADERS: [&str; 5] = [
    crate::job::HEADER_TIMEOUT_MS,
    crate::job::HEADER_BACKOFF,
    crate::job::HEADER_SCHEDULE,
    crate::job::HEADER_SCHEDULE_TICK,
    crate::job::HEADER_GROUP,
];

/// Longest group key ([`Message::with_group`]), in bytes.
pub const MAX_GROUP_KEY_LEN: usize = 128;

/// Check a group key: 1 to [`MAX_GROUP_KEY_LEN`] bytes, no control
/// characters. The error names the field.
///
/// ```
/// use queue_core::message::check_group_key;
/// assert!(check_group_key("tenant-42").is_ok());
/// let err = check_group_key(&"x".repeat(200)).unwrap_err();
/// assert!(err.to_string().contains("group key"), "{err}");
/// ```
pub fn check_group_key(key: &str) -> crate::error::Result<()> {
    if key.is_empty() || key.len() > MAX_GROUP_KEY_LEN || key.chars().any(char::is_control) {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::InvalidInput,
            format!(
                "group key must be 1..={MAX_GROUP_KEY_LEN} bytes without control characters, not {} bytes",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Whether header `name` is in the reserved namespace without being one
/// of the library's own headers.
pub fn is_reserved_header(name: &str) -> bool {
    let prefix = RESERVED_HEADER_PREFIX.len();
    name.len() >= prefix
        && name.as_bytes()[..prefix].eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes())
        && !LIBRARY_HEADERS.contains(&name)
}

/// The text of a header value a foreign producer wrote as bytes: the bytes
/// themselves when they are UTF-8, else `base64:` and their standard base64
/// encoding, so no value is lost or mangled. Typed values (AMQP integers,
/// booleans, timestamps) are rendered as their usual text by the backend
/// before they get here; `docs/wire-format.md` states the whole rule.
///
/// ```
/// use queue_core::message::foreign_header_value;
/// assert_eq!(foreign_header_value(b"gr\xc3\xbc\xc3\x9fe"), "grüße");
/// assert_eq!(foreign_header_value(&[0xff, 0x00, 0x10]), "base64:/wAQ");
/// ```
pub fn foreign_header_value(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("base64:{}", base64(bytes)),
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The longest delay, TTL or nack delay accepted: 365 days. Longer values
/// are a typed [`ErrorKind::InvalidInput`] error at the call
/// ([`Delivery::nack`](crate::Delivery::nack) included); a backend's
/// [`Acker::nack`](crate::Acker::nack) given a longer one holds the
/// message this long ([`clamp_delay`]).
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `delay`, at most [`MAX_DELAY`]: the longest a nacked message is held,
/// whatever delay reached the backend.
///
/// ```
/// use queue_core::message::{clamp_delay, MAX_DELAY};
/// use std::time::Duration;
/// assert_eq!(clamp_delay(Duration::from_secs(5)), Duration::from_secs(5));
/// assert_eq!(clamp_delay(Duration::MAX), MAX_DELAY);
/// ```
pub fn clamp_delay(delay: Duration) -> Duration {
    delay.min(MAX_DELAY)
}

/// `now + d`, saturating far in the future instead of overflowing.
fn later(d: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + MAX_DELAY + MAX_DELAY)
}

/// The default number of attempts before a message is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// A message id: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new time-ordered id: a UUID v7 whose 74 bits after the millisecond
    /// timestamp are a per-thread counter started at a random value each
    /// millisecond, so ids made by one thread sort in creation order.
    /// Random bits come from a per-thread generator seeded once from the OS,
    /// which keeps id creation off the system-call path.
    pub fn new() -> Self {
        MessageId(crate::random::next_uuid_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The id as 16 bytes, big-endian (the wire form).
    pub fn to_bytes(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// An id from its 16-byte wire form.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MessageId(Uuid::from_bytes(bytes))
    }
}

/// Random numbers for jitter and trace ids (not for secrets), from the
/// per-thread generator that also makes message ids.
pub use crate::random::{random_u64, random_unit};

impl Default for MessageId {
    fn default() -> Self {
        MessageId::new()
    }
}

impl From<Uuid> for MessageId {
    fn from(uuid: Uuid) -> Self {
        MessageId(uuid)
    }
}

impl FromStr for MessageId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s).map(MessageId).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("invalid message id {s:?}")).with_source(e)
        })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

/// Job priority. Higher runs first; within one priority, first in first out
/// (where the backend's capability table claims ordering).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work that may wait.
    Low = 1,
    /// The default.
    #[default]
    Normal = 5,
    /// Ahead of normal work.
    High = 10,
    /// Ahead of everything.
    Urgent = 15,
}

impl Priority {
    /// All priorities, highest first.
    pub const ALL_DESCENDING: [Priority; 4] = [
        Priority::Urgent,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// The numeric level (1, 5, 10, 15).
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The priority of a numeric level; `None` for other numbers.
    pub fn from_level(level: u8) -> Option<Priority> {
        match level {
            1 => Some(Priority::Low),
            5 => Some(Priority::Normal),
            10 => Some(Priority::High),
            15 => Some(Priority::Urgent),
            _ => None,
        }
    }

    /// Index from 0 (Urgent) to 3 (Low), for per-priority arrays.
    pub fn rank(self) -> usize {
        match self {
            Priority::Urgent => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" | "1" => Ok(Priority::Low),
            "normal" | "5" => Ok(Priority::Normal),
            "high" | "10" => Ok(Priority::High),
            "urgent" | "15" => Ok(Priority::Urgent),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("invalid priority {s:?}: expected low, normal, high or urgent"),
            )),
        }
    }
}

/// The longest queue name, leaving room for companion suffixes (`-dlq`,
/// `.retry.30s`) within the strictest broker limit (SQS, 80 characters).
pub const MAX_QUEUE_NAME_LEN: usize = 64;

/// A validated queue name: 1 to 64 ASCII letters, digits, `-` or `_`,
/// starting with a letter or digit. The rule is the intersection of what
/// Redis keys, AMQP queues, Kafka topics and SQS queues all accept, so a name
/// that works on one backend works on every backend.
///
/// ```
/// use queue_core::QueueName;
/// assert!(QueueName::new("emails-high_1").is_ok());
/// assert!(QueueName::new("no spaces").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueName(Arc<str>);

impl QueueName {
    /// Validate `name`.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        let rule = "queue names are 1 to 64 ASCII letters, digits, '-' or '_', starting with a letter or digit";
        let bad = |why: String| {
            Err(Error::new(
                ErrorKind::InvalidQueueName,
                format!("{why}: {rule}"),
            ))
        };
        if name.is_empty() {
            return bad("empty queue name".to_owned());
        }
        if name.len() > MAX_QUEUE_NAME_LEN {
            return bad(format!(
                "queue name of {} characters is too long",
                name.len()
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return bad(format!("queue name {name:?} contains {c:?}"));
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return bad(format!(
                "queue name {name:?} does not start with a letter or digit"
            ));
        }
        Ok(QueueName(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for QueueName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        QueueName::new(s)
    }
}

impl TryFrom<&str> for QueueName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        QueueName::new(s)
    }
}

impl Serialize for QueueName {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for QueueName {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        QueueName::new(s).map_err(serde::de::Error::custom)
    }
}

/// What a nack of a delivery comes to ([`Message::nacked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nacked {
    /// Deliver this copy ([`Message::retry_copy`]) again: the next
    /// attempt, due after the delay.
    Retry(Message),
    /// That was the last attempt: dead-letter this message, reason
    /// `max_attempts`, after its `attempt` attempts, carrying the error.
    DeadLetter(Message),
}

/// A message: payload bytes plus the metadata every backend carries.
///
/// Build one with [`Message::new`] and the `with_*` methods; the producer
/// fills in nothing else. On receipt, [`attempt`](Message::attempt) says which
/// delivery this is (1 for the first).
///
/// ```
/// use queue_core::{Message, Priority};
/// use std::time::Duration;
/// let msg = Message::new(&b"hello"[..])
///     .with_priority(Priority::High)
///     .with_delay(Duration::from_secs(5))
///     .with_header("tenant", "acme")
///     .with_idempotency_key("order-42");
/// assert_eq!(msg.attempt, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Unique id (UUID v7).
    pub id: MessageId,
    /// The payload, any bytes.
    pub payload: Bytes,
    /// Headers.
    pub headers: Headers,
    /// Priority.
    pub priority: Priority,
    /// Which delivery this is, starting at 1.
    pub attempt: u32,
    /// After this many attempts the message is dead-lettered.
    pub max_attempts: u32,
    /// When the message was created.
    pub created_at: SystemTime,
    /// Not deliverable before this time (delay or scheduled run).
    pub not_before: Option<SystemTime>,
    /// Never handed to a consumer after this time; dead-lettered as `expired`.
    pub expires_at: Option<SystemTime>,
    /// Sends with the same key inside the backend's window deliver once.
    /// (Shared, so copies of a message share it.)
    pub idempotency_key: Option<Arc<str>>,
    /// The error of the previous failed attempt, if any.
    pub last_error: Option<String>,
    /// The W3C trace context of the sender (`traceparent`), kept as a
    /// typed value in process and written as the `traceparent` header (or
    /// its binary envelope field) on a broker's wire.
    pub trace: Option<crate::trace::TraceContext>,
    /// Messages with the same key are delivered in send order where the
    /// backend orders per key or partition: the Kafka record key, the SQS
    /// FIFO `MessageGroupId`. Backends that keep one order for the whole
    /// queue (memory, Redis: FIFO per priority) carry it along.
    /// (Shared, so copies of a message share it.)
    pub ordering_key: Option<Arc<str>>,
}

impl Message {
    /// A message with this payload, normal priority, attempt 1 and a fresh id.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        let now = SystemTime::now();
        Message {
            id: MessageId(crate::random::next_uuid_v7_at(now)),
            payload: payload.into(),
            headers: Headers::new(),
            priority: Priority::Normal,
            attempt: 1,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            created_at: now,
            not_before: None,
            expires_at: None,
            idempotency_key: None,
            last_error: None,
            trace: None,
            ordering_key: None,
        }
    }

    /// Keep order with the other messages of `key` (see [`Message::ordering_key`]).
    #[must_use]
    pub fn with_ordering_key(mut self, key: impl AsRef<str>) -> Self {
        self.ordering_key = Some(Arc::from(key.as_ref()));
        self
    }

    /// Carry `context` as the sender's trace context.
    #[must_use]
    pub fn with_trace(mut self, context: crate::trace::TraceContext) -> Self {
        self.trace = Some(context);
        self
    }

    /// Set the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Put the message in group `key` (a tenant, a customer): where the
    /// backend supports group fairness
    /// ([`Capabilities::group_fairness`](crate::Capabilities::group_fairness)),
    /// consumers take the ready messages of a queue round-robin between
    /// groups, so a group with a long backlog does not hold back the others,
    /// and a consumer may cap how many of one group it runs at once
    /// ([`ConsumerOptions::with_group_limit`](crate::ConsumerOptions::with_group_limit)).
    /// The key travels as the header `x-queue-group`; it is 1 to
    /// [`MAX_GROUP_KEY_LEN`] bytes without control characters (checked at
    /// send).
    #[must_use]
    pub fn with_group(mut self, key: impl AsRef<str>) -> Self {
        self.headers.insert(crate::job::HEADER_GROUP, key.as_ref());
        self
    }

    /// The message's group ([`with_group`](Self::with_group)), if any.
    pub fn group(&self) -> Option<&str> {
        self.headers
            .get(crate::job::HEADER_GROUP)
            .map(String::as_str)
    }

    /// Add a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Deliver no earlier than `delay` from now.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.not_before = Some(later(delay));
        self
    }

    /// Deliver no earlier than `at`.
    #[must_use]
    pub fn with_run_at(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Expire `ttl` from now if not yet delivered.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.expires_at = Some(later(ttl));
        self
    }

    /// Dead-letter after this many attempts (at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Deduplicate sends by this key within the backend's window.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl AsRef<str>) -> Self {
        self.idempotency_key = Some(Arc::from(key.as_ref()));
        self
    }

    /// Use this id instead of a fresh one.
    #[must_use]
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// Whether the message is expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// How long from `now` until the message may be delivered (zero if due).
    pub fn delay_from(&self, now: SystemTime) -> Duration {
        self.not_before
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or(Duration::ZERO)
    }

    /// Whether this delivery is the last one allowed.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// What a nack of this delivery after `delay`, failed with
    /// `last_error`, comes to at `now`: the rule every backend's nack (and
    /// lease expiry) follows. On the last attempt
    /// ([`is_last_attempt`](Message::is_last_attempt)) the message is
    /// dead-lettered, reason `max_attempts`, after `attempt` attempts,
    /// with the error; otherwise its [`retry_copy`](Message::retry_copy)
    /// is delivered again.
    ///
    /// ```
    /// use queue_core::message::Nacked;
    /// use queue_core::Message;
    /// use std::time::{Duration, SystemTime};
    /// let now = SystemTime::now();
    /// let job = Message::new("job").with_max_attempts(2);
    /// let Nacked::Retry(again) = job.nacked(Duration::ZERO, Some("boom"), now) else {
    ///     panic!("attempt 1 of 2 is retried");
    /// };
    /// assert_eq!(again.attempt, 2);
    /// let Nacked::DeadLetter(last) = again.nacked(Duration::ZERO, Some("boom again"), now) else {
    ///     panic!("attempt 2 of 2 is the last");
    /// };
    /// assert_eq!((last.attempt, last.last_error.as_deref()), (2, Some("boom again")));
    /// ```
    pub fn nacked(&self, delay: Duration, last_error: Option<&str>, now: SystemTime) -> Nacked {
        if self.is_last_attempt() {
            let mut last = self.clone();
            if let Some(error) = last_error {
                last.last_error = Some(cap_error_text(error).into_owned());
            }
            Nacked::DeadLetter(last)
        } else {
            Nacked::Retry(self.retry_copy(delay, last_error, now))
        }
    }

    /// The copy of this message a nack after `delay` puts back at `now`:
    /// the next attempt (`attempt + 1`, saturating at `u32::MAX`), the
    /// error of this one as `last_error` (cut to
    /// [`MAX_ERROR_TEXT`](crate::error::MAX_ERROR_TEXT) bytes; `None`
    /// keeps the previous one), and due `delay` from `now`, held to at
    /// most [`MAX_DELAY`] (a zero delay: due at once, no `not_before`).
    /// Whether there is a next attempt at all is
    /// [`nacked`](Message::nacked)'s decision.
    ///
    /// ```
    /// use queue_core::message::MAX_DELAY;
    /// use queue_core::Message;
    /// use std::time::{Duration, SystemTime};
    /// let now = SystemTime::now();
    /// let first = Message::new("job");
    /// let again = first.retry_copy(Duration::from_secs(30), Some("timeout"), now);
    /// assert_eq!((again.id, again.attempt), (first.id, 2));
    /// assert_eq!(again.last_error.as_deref(), Some("timeout"));
    /// assert_eq!(again.not_before, Some(now + Duration::from_secs(30)));
    /// assert_eq!(first.retry_copy(Duration::ZERO, None, now).not_before, None);
    /// let far = first.retry_copy(Duration::MAX, None, now);
    /// assert_eq!(far.not_before, Some(now + MAX_DELAY));
    /// ```
    pub fn retry_copy(
        &self,
        delay: Duration,
        last_error: Option<&str>,
        now: SystemTime,
    ) -> Message {
        let mut copy = self.clone();
        copy.attempt = self.attempt.saturating_add(1);
        if let Some(error) = last_error {
            copy.last_error = Some(cap_error_text(error).into_owned());
        }
        copy.not_before = (!delay.is_zero()).then(|| now + clamp_delay(delay));
        copy
    }

    /// The size a backend counts against its payload limit: the payload
    /// with all the metadata that travels with it (id, times, attempts,
    /// keys, last error, trace context, headers), exactly as many bytes as
    /// its [envelope](crate::envelope) takes. Brokers that carry metadata in
    /// native headers use about as many bytes for it.
    pub fn wire_size(&self) -> usize {
        crate::envelope::encoded_len(self)
    }

    /// The size of the metadata alone: [`wire_size`](Message::wire_size)
    /// without the payload.
    pub fn metadata_size(&self) -> usize {
        self.wire_size() - self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_name_rule_names_the_problem() {
        for (name, fragment) in [
            ("", "empty"),
            ("a b", "contains ' '"),
            ("-lead", "does not start"),
            ("a.b", "contains '.'"),
            ("é", "contains 'é'"),
        ] {
            let err = QueueName::new(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidQueueName);
            assert!(err.message().contains(fragment), "{name}: {err}");
            assert!(err.message().contains("1 to 64"), "{err}");
        }
        let long = "a".repeat(65);
        assert!(QueueName::new(&long)
            .unwrap_err()
            .message()
            .contains("too long"));
        assert!(QueueName::new("a".repeat(64)).is_ok());
    }

    #[test]
    fn priority_levels_and_ranks() {
        assert_eq!(Priority::Urgent.level(), 15);
        assert_eq!(Priority::from_level(10), Some(Priority::High));
        assert_eq!(Priority::from_level(7), None);
        assert!(Priority::Urgent > Priority::High && Priority::Normal > Priority::Low);
        let ranks: Vec<usize> = Priority::ALL_DESCENDING.iter().map(|p| p.rank()).collect();
        assert_eq!(ranks, [0, 1, 2, 3]);
        assert_eq!("HIGH".parse::<Priority>().unwrap(), Priority::High);
        assert!("medium".parse::<Priority>().is_err());
    }

    #[test]
    fn a_nack_retries_with_the_next_attempt_until_the_last() {
        let now = SystemTime::now();
        let mut message = Message::new("job").with_max_attempts(3);
        message.last_error = Some("earlier".to_owned());
        let Nacked::Retry(copy) = message.nacked(Duration::from_millis(250), None, now) else {
            panic!("attempt 1 of 3 is retried");
        };
        assert_eq!(
            (copy.id, copy.attempt, copy.max_attempts),
            (message.id, 2, 3)
        );
        assert_eq!(copy.payload, message.payload);
        assert_eq!(copy.not_before, Some(now + Duration::from_millis(250)));
        assert_eq!(
            copy.last_error.as_deref(),
            Some("earlier"),
            "no new error keeps the old"
        );
        let copy = copy.retry_copy(Duration::ZERO, Some("boom"), now);
        assert_eq!((copy.attempt, copy.not_before), (3, None));
        assert_eq!(copy.last_error.as_deref(), Some("boom"));
        match copy.nacked(Duration::from_secs(1), Some("last"), now) {
            Nacked::DeadLetter(last) => {
                assert_eq!((last.attempt, last.not_before), (3, None));
                assert_eq!(last.last_error.as_deref(), Some("last"));
            }
            other => panic!("attempt 3 of 3 is the last: {other:?}"),
        }
    }

    #[test]
    fn the_attempt_never_overflows() {
        let now = SystemTime::now();
        let mut message = Message::new("job").with_max_attempts(u32::MAX);
        message.attempt = u32::MAX - 1;
        let Nacked::Retry(copy) = message.nacked(Duration::ZERO, None, now) else {
            panic!("attempt u32::MAX - 1 is retried");
        };
        assert_eq!(copy.attempt, u32::MAX);
        assert!(matches!(
            copy.nacked(Duration::ZERO, None, now),
            Nacked::DeadLetter(m) if m.attempt == u32::MAX
        ));
        assert_eq!(copy.retry_copy(Duration::ZERO, None, now).attempt, u32::MAX);
        // A message with no attempts left at all is dead-lettered too.
        message.max_attempts = 1;
        message.attempt = u32::MAX;
        assert!(matches!(
            message.nacked(Duration::ZERO, None, now),
            Nacked::DeadLetter(_)
        ));
    }

    #[test]
    fn a_nack_delay_is_held_to_the_maximum() {
        let now = SystemTime::now();
        let message = Message::new("job");
        for delay in [
            Duration::MAX,
            MAX_DELAY * 10,
            MAX_DELAY + Duration::from_nanos(1),
        ] {
            let copy = message.retry_copy(delay, None, now);
            assert_eq!(copy.not_before, Some(now + MAX_DELAY), "{delay:?}");
        }
        assert_eq!(
            message.retry_copy(MAX_DELAY, None, now).not_before,
            Some(now + MAX_DELAY)
        );
        assert_eq!(
            message.retry_copy(Duration::ZERO, None, now).not_before,
            None
        );
        assert_eq!(
            message
                .retry_copy(Duration::from_nanos(1), None, now)
                .not_before,
            Some(now + Duration::from_nanos(1)),
            "any delay above zero delays"
        );
    }

    #[test]
    fn a_nack_error_is_capped() {
        let now = SystemTime::now();
        let huge = "é".repeat(512 * 1024);
        let message = Message::new("job").with_max_attempts(2);
        let copy = message.retry_copy(Duration::ZERO, Some(&huge), now);
        let kept = copy.last_error.expect("the error travels");
        assert!(kept.len() <= crate::error::MAX_ERROR_TEXT);
        assert!(kept.contains("truncated from 1048576 bytes"));
        let Nacked::DeadLetter(last) =
            copy_at_last(&message).nacked(Duration::ZERO, Some(&huge), now)
        else {
            panic!("the last attempt");
        };
        assert!(last.last_error.expect("kept").len() <= crate::error::MAX_ERROR_TEXT);
    }

    fn copy_at_last(message: &Message) -> Message {
        let mut last = message.clone();
        last.attempt = last.max_attempts;
        last
    }

    #[test]
    fn message_ids_are_time_ordered_v7() {
        let ids: Vec<MessageId> = (0..10_000).map(|_| MessageId::new()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids sort in creation order"
        );
        let a = ids[0];
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert_eq!(a.as_uuid().get_variant(), uuid::Variant::RFC4122);
        let (secs, _) = a.as_uuid().get_timestamp().expect("v7 timestamp").to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) < 5, "timestamp is now");
        assert_eq!(MessageId::from_bytes(a.to_bytes()), a);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
    }
}
