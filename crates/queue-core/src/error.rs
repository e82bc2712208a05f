//! The one error type of the workspace, and the separate error type for user handlers.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with the workspace [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely enough that a caller can decide what to do about it.
///
/// Backends map every client error onto one of these in a single `classify`
/// function; new kinds may be added, so match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The broker could not be reached or the connection broke.
    Connection,
    /// An operation did not finish in time.
    Timeout,
    /// The broker asked us to slow down.
    Throttled,
    /// The broker refused our credentials or permissions.
    Auth,
    /// A configuration value (URL, option, environment variable) is invalid.
    Config,
    /// The queue (or message, or dead letter) does not exist.
    NotFound,
    /// A payload exceeds the backend's maximum size.
    PayloadTooLarge,
    /// A queue name breaks the naming rule.
    InvalidQueueName,
    /// Bytes on the queue could not be decoded.
    Decode,
    /// The backend cannot do what was asked (see its capability table).
    Unsupported,
    /// The delivery's lease expired and the message may be held by someone else.
    LeaseLost,
    /// The backend, producer or consumer was closed.
    Closed,
    /// The queue reached its configured maximum length.
    QueueFull,
    /// A value given by the caller is invalid (other than config).
    InvalidInput,
    /// Anything the backend could not classify.
    Other,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed if retried as is.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection
                | ErrorKind::Timeout
                | ErrorKind::Throttled
                | ErrorKind::QueueFull
        )
    }

    /// A short lowercase name of the kind, as used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Auth => "auth",
            ErrorKind::Config => "config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::InvalidQueueName => "invalid_queue_name",
            ErrorKind::Decode => "decode",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::Closed => "closed",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every queue operation.
///
/// It carries a [`kind`](Error::kind), a human message that names the problem
/// (never a credential), whether a retry may help, and the backend's own error
/// as [`source`](std::error::Error::source).
///
/// ```
/// use queue_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Timeout, "receive timed out after 5s");
/// assert!(err.is_retryable());
/// assert_eq!(err.to_string(), "timeout: receive timed out after 5s");
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind`; retryable as [`ErrorKind::is_retryable`] says.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            retryable: kind.is_retryable(),
            source: None,
        }
    }

    /// Keep `source` as the cause of this error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Override whether a retry may help.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same operation may succeed if retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The same kind, message and retryability, without the source (which
    /// may not be cloneable): for reporting one failure against many items.
    pub fn clone_kind(&self) -> Self {
        Error {
            kind: self.kind,
            message: self.message.clone(),
            retryable: self.retryable,
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for an [`ErrorKind::Closed`] error.
    pub fn closed(what: &str) -> Self {
        Error::new(ErrorKind::Closed, format!("{what} is closed"))
    }

    /// The [`ErrorKind::LeaseLost`] error of settling message `id` whose
    /// lease this delivery no longer holds (every backend words it alike).
    pub fn lease_lost(id: crate::message::MessageId) -> Self {
        Error::new(
            ErrorKind::LeaseLost,
            format!(
                "message {id} is no longer leased to this delivery (lease expired, or the message was settled or purged)"
            ),
        )
    }
}

/// The longest error text kept with a message (`last_error`, a dead
/// letter's reason): 4 KiB. Longer texts are cut on a character boundary
/// and say so; see [`cap_error_text`].
pub const MAX_ERROR_TEXT: usize = 4096;

/// `text`, cut to at most [`MAX_ERROR_TEXT`] bytes on a character
/// boundary, with a note saying how long it was. A handler's error can be
/// megabytes (a dumped response body); it travels with every redelivery.
///
/// ```
/// use queue_core::error::{cap_error_text, MAX_ERROR_TEXT};
/// assert_eq!(cap_error_text("short"), "short");
/// let long = "é".repeat(5000);
/// let capped = cap_error_text(&long);
/// assert!(capped.len() <= MAX_ERROR_TEXT);
/// assert!(capped.ends_with("[truncated from 10000 bytes]"));
/// ```
pub fn cap_error_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_ERROR_TEXT {
        return std::borrow::Cow::Borrowed(text);
    }
    let note = format!(" … [truncated from {} bytes]", text.len());
    let mut end = MAX_ERROR_TEXT - note.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{note}", &text[..end]))
}

/// A `send_batch` that failed for some or all of its messages, with the
/// outcome of each message in send order: its id where the broker
/// accepted it, the error where it did not.
///
/// Backends that send a batch all or nothing (memory, Redis) fail every
/// message alike; brokers that accept part of a batch (the capability
/// table's `partial_batches`) say which ones made it, so a caller resends
/// only the rest. It converts into [`Error`] (the summary) for `?`.
#[derive(Debug)]
pub struct BatchError {
    error: Error,
    outcomes: Vec<Result<crate::message::MessageId>>,
}

impl BatchError {
    /// A batch of `len` messages that failed as a whole with `error`.
    pub fn whole(error: Error, len: usize) -> Self {
        let outcomes = (0..len).map(|_| Err(error.clone_kind())).collect();
        BatchError { error, outcomes }
    }

    /// A batch with per-message `outcomes`, summarised by `error`.
    pub fn partial(error: Error, outcomes: Vec<Result<crate::message::MessageId>>) -> Self {
        BatchError { error, outcomes }
    }

    /// The summary: the first failure's kind, naming how many failed.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The kind of the summary.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// Per message, in send order.
    pub fn outcomes(&self) -> &[Result<crate::message::MessageId>] {
        &self.outcomes
    }

    /// Positions and ids of the messages the broker accepted.
    pub fn accepted(&self) -> impl Iterator<Item = (usize, crate::message::MessageId)> + '_ {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().ok().map(|id| (i, *id)))
    }

    /// Whether some messages were accepted.
    pub fn is_partial(&self) -> bool {
        self.accepted().next().is_some()
    }

    /// The summary error, dropping the per-message outcomes.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accepted = self.accepted().count();
        write!(
            f,
            "{} ({accepted} of {} messages accepted)",
            self.error,
            self.outcomes.len()
        )
    }
}

impl StdError for BatchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.error)
    }
}

impl From<BatchError> for Error {
    fn from(e: BatchError) -> Self {
        e.error
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("retryable", &self.retryable);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// What a failed handler asks the worker to do with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerAction {
    /// Retry by the worker's retry policy (the default for any error).
    Retry,
    /// Retry after exactly this delay, whatever the policy says.
    RetryAfter(Duration),
    /// Do not retry: dead-letter the job now.
    Permanent,
    /// The job is no longer wanted: settle it as cancelled, without retry.
    Cancel,
    /// A remote API said "too many requests, retry after this long": the
    /// job goes back without spending an attempt, and the whole queue
    /// backs off that long (every worker sharing a coordination store).
    RateLimited(Duration),
}

/// The error a user's job handler returns.
///
/// It is a separate type from [`Error`] so that a bug in user code is never
/// mistaken for a broker outage. Any `std::error::Error` or `anyhow::Error`
/// converts into a plain retryable failure; the constructors say otherwise.
///
/// ```
/// use queue_core::{HandlerAction, HandlerError};
/// use std::time::Duration;
/// let e = HandlerError::retry_after("rate limited upstream", Duration::from_secs(30));
/// assert_eq!(e.action(), HandlerAction::RetryAfter(Duration::from_secs(30)));
/// let e = HandlerError::permanent("customer deleted");
/// assert_eq!(e.action(), HandlerAction::Permanent);
/// ```
pub struct HandlerError {
    action: HandlerAction,
    error: BoxError,
}

impl HandlerError {
    /// A failure retried by the worker's policy.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        HandlerError {
            action: HandlerAction::Retry,
            error: error.into(),
        }
    }

    /// A failure retried after `delay`.
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        HandlerError {
            action: HandlerAction::RetryAfter(delay),
            error: error.into(),
        }
    }

    /// A failure that must not be retried: the job is dead-lettered now.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError {
            action: HandlerAction::Permanent,
            error: error.into(),
        }
    }

    /// The job is cancelled: settled without retry and without dead-lettering.
    pub fn cancel(reason: impl Into<BoxError>) -> Self {
        HandlerError {
            action: HandlerAction::Cancel,
            error: reason.into(),
        }
    }

    /// The remote API this job calls limits its rate: hand the job back
    /// without spending an attempt and pause the whole queue for
    /// `retry_after` (BullMQ's manual rate limit).
    ///
    /// ```
    /// use queue_core::{HandlerAction, HandlerError};
    /// use std::time::Duration;
    /// let e = HandlerError::rate_limited("HTTP 429", Duration::from_secs(2));
    /// assert_eq!(e.action(), HandlerAction::RateLimited(Duration::from_secs(2)));
    /// ```
    pub fn rate_limited(error: impl Into<BoxError>, retry_after: Duration) -> Self {
        HandlerError {
            action: HandlerAction::RateLimited(retry_after),
            error: error.into(),
        }
    }

    /// What the worker should do.
    pub fn action(&self) -> HandlerAction {
        self.action
    }

    /// The user's error.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }

    /// Turn any handler error into a `HandlerError`, keeping the action of one
    /// that already is a `HandlerError`.
    pub fn from_boxed(error: BoxError) -> Self {
        match error.downcast::<HandlerError>() {
            Ok(handler_error) => *handler_error,
            Err(error) => HandlerError::retry(error),
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("action", &self.action)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_kind_and_can_be_overridden() {
        assert!(Error::new(ErrorKind::Connection, "x").is_retryable());
        assert!(!Error::new(ErrorKind::Auth, "x").is_retryable());
        assert!(!Error::new(ErrorKind::Connection, "x")
            .with_retryable(false)
            .is_retryable());
    }

    #[test]
    fn error_texts_are_capped_on_a_char_boundary() {
        let long = "ü".repeat(3000);
        let capped = cap_error_text(&long);
        assert!(capped.len() <= MAX_ERROR_TEXT, "{}", capped.len());
        assert!(capped.starts_with("üü"));
        assert!(capped.contains("truncated from 6000 bytes"));
    }

    #[test]
    fn batch_errors_say_which_messages_made_it() {
        let id = crate::message::MessageId::new();
        let e = BatchError::partial(
            Error::new(ErrorKind::Throttled, "1 of 2 failed"),
            vec![Ok(id), Err(Error::new(ErrorKind::Throttled, "slow down"))],
        );
        assert!(e.is_partial());
        assert_eq!(e.accepted().collect::<Vec<_>>(), vec![(0, id)]);
        assert!(e.to_string().contains("1 of 2 messages accepted"), "{e}");
        let whole = BatchError::whole(Error::new(ErrorKind::Connection, "down"), 3);
        assert!(!whole.is_partial());
        assert_eq!(whole.outcomes().len(), 3);
        assert_eq!(Error::from(whole).kind(), ErrorKind::Connection);
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Connection, "connect to 127.0.0.1:1").with_source(io);
        let source = err.source().expect("source kept");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn handler_error_round_trips_through_a_box() {
        let boxed: BoxError = Box::new(HandlerError::permanent("bad input"));
        assert_eq!(
            HandlerError::from_boxed(boxed).action(),
            HandlerAction::Permanent
        );
        let boxed: BoxError = "plain".into();
        assert_eq!(
            HandlerError::from_boxed(boxed).action(),
            HandlerAction::Retry
        );
    }
}
