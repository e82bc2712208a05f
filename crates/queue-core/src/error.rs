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
