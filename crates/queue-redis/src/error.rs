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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(e: redis::RedisError) -> ErrorKind {
        classify(e, "testing", "127.0.0.1:6379").kind()
    }

    #[test]
    fn client_errors_map_onto_kinds_that_say_whether_to_retry() {
        let io = |kind| redis::RedisError::from(std::io::Error::new(kind, "io"));
        assert_eq!(
            kind_of(io(std::io::ErrorKind::ConnectionRefused)),
            ErrorKind::Connection
        );
        assert_eq!(
            kind_of(io(std::io::ErrorKind::ConnectionReset)),
            ErrorKind::Connection
        );
        assert_eq!(
            kind_of(io(std::io::ErrorKind::TimedOut)),
            ErrorKind::Timeout
        );
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "denied"));
        assert_eq!(kind_of(auth), ErrorKind::Auth);
        let parse = redis::RedisError::from((redis::ErrorKind::Parse, "garbage"));
        assert_eq!(kind_of(parse), ErrorKind::Decode);
        for (code, kind) in [
            ("NOPERM", ErrorKind::Auth),
            ("WRONGPASS", ErrorKind::Auth),
            ("LOADING", ErrorKind::Throttled),
            ("BUSY", ErrorKind::Throttled),
            ("OOM", ErrorKind::QueueFull),
            ("READONLY", ErrorKind::Connection),
            ("WEIRD", ErrorKind::Other),
        ] {
            let e = redis::make_extension_error(code.to_owned(), Some("detail".to_owned()));
            assert_eq!(kind_of(e), kind, "{code}");
        }
        assert!(Error::new(ErrorKind::Throttled, "x").is_retryable());
    }

    #[test]
    fn the_message_names_the_address_and_keeps_the_source() {
        let e = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let error = classify(e, "connecting", "10.0.0.7:6380");
        assert_eq!(error.message(), "redis at 10.0.0.7:6380: connecting failed");
        let source = std::error::Error::source(&error).expect("the client error is kept");
        assert!(source.downcast_ref::<redis::RedisError>().is_some());
    }
}
