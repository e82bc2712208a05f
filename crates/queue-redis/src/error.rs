//! The one mapping from Redis client errors to the queue's error kinds.

use queue_core::{Error, ErrorKind};

/// The one place a Redis client error becomes a queue [`Error`]: the kind
/// decides retrying, the source is kept, the address is named.
pub(crate) fn classify(e: redis::RedisError, doing: &str, address: &str) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Connection
    } else {
        match (e.kind(), e.code()) {
            (redis::ErrorKind::AuthenticationFailed, _) => ErrorKind::Auth,
            (_, Some("NOAUTH" | "WRONGPASS" | "NOPERM")) => ErrorKind::Auth,
            (_, Some("BUSY" | "LOADING" | "TRYAGAIN" | "MASTERDOWN")) => ErrorKind::Throttled,
            (_, Some("OOM")) => ErrorKind::QueueFull,
            (_, Some("READONLY")) => ErrorKind::Connection,
            (redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType, _) => {
                ErrorKind::Decode
            }
            _ => ErrorKind::Other,
        }
    };
    // The client's own words stay in the source, not repeated here.
    Error::new(kind, format!("redis at {address}: {doing} failed")).with_source(e)
}

/// A script replied with something this build does not expect.
pub(crate) fn unexpected(what: &str) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("redis script replied with something other than {what}"),
    )
}
