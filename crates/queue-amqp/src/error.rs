//! The one mapping from lapin errors to the queue's error kinds.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use queue_core::{Error, ErrorKind};

/// The one place a lapin error becomes a queue [`Error`]: the kind decides
/// retrying, the broker's reply text is kept (it names queues and
/// arguments, never credentials), the address is named.
pub(crate) fn classify(e: lapin::Error, doing: &str, address: &str) -> Error {
    let (kind, detail) = match e.kind() {
        lapin::ErrorKind::IOError(io) => (
            if io.kind() == std::io::ErrorKind::TimedOut {
                ErrorKind::Timeout
            } else {
                ErrorKind::Connection
            },
            None,
        ),
        lapin::ErrorKind::ProtocolError(amqp) => {
            let kind = match amqp.kind() {
                AMQPErrorKind::Soft(soft) => match soft {
                    AMQPSoftError::ACCESSREFUSED => ErrorKind::Auth,
                    // The queue exists but its process is not running (its
                    // node is down, or it is still recovering after a
                    // restart): worth retrying, unlike a missing queue.
                    AMQPSoftError::NOTFOUND
                        if amqp.get_message().as_str().contains("down or inaccessible") =>
                    {
                        ErrorKind::Connection
                    }
                    AMQPSoftError::NOTFOUND => ErrorKind::NotFound,
                    // A queue that exists with other arguments (declared
                    // elsewhere) or an argument the broker refuses.
                    AMQPSoftError::PRECONDITIONFAILED => ErrorKind::Config,
                    AMQPSoftError::CONTENTTOOLARGE => ErrorKind::PayloadTooLarge,
                    AMQPSoftError::RESOURCELOCKED => ErrorKind::Throttled,
                    _ => ErrorKind::Other,
                },
                AMQPErrorKind::Hard(hard) => match hard {
                    AMQPHardError::CONNECTIONFORCED => ErrorKind::Connection,
                    AMQPHardError::RESOURCEERROR => ErrorKind::Throttled,
                    AMQPHardError::NOTALLOWED => ErrorKind::Auth,
                    AMQPHardError::INVALIDPATH => ErrorKind::Config,
                    _ => ErrorKind::Other,
                },
            };
            (kind, Some(amqp.get_message().to_string()))
        }
        lapin::ErrorKind::InvalidChannelState(..)
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::InvalidChannel(_)
        | lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::RuntimeShutdownError(_) => (ErrorKind::Connection, None),
        lapin::ErrorKind::ChannelsLimitReached => (ErrorKind::Throttled, None),
        lapin::ErrorKind::ParsingError(_) => (ErrorKind::Decode, None),
        lapin::ErrorKind::AuthProviderError(_) => (ErrorKind::Auth, None),
        _ => (ErrorKind::Other, None),
    };
    let message = match detail {
        Some(detail) => format!("amqp at {address}: {doing} failed: {detail}"),
        None => format!("amqp at {address}: {doing} failed"),
    };
    Error::new(kind, message).with_source(e)
}

/// A broker call that did not answer within `limit`.
pub(crate) fn timed_out(doing: &str, address: &str, limit: std::time::Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("amqp at {address}: {doing}: no reply within {limit:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn kind_of(e: lapin::Error) -> ErrorKind {
        classify(e, "testing", "127.0.0.1:5672").kind()
    }

    fn protocol(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn client_errors_map_onto_kinds_that_say_whether_to_retry() {
        let io = |kind| lapin::Error::from(std::io::Error::new(kind, "io"));
        assert_eq!(
            kind_of(io(std::io::ErrorKind::ConnectionRefused)),
            ErrorKind::Connection
        );
        assert_eq!(
            kind_of(io(std::io::ErrorKind::TimedOut)),
            ErrorKind::Timeout
        );
        assert_eq!(
            kind_of(lapin::ErrorKind::MissingHeartbeatError.into()),
            ErrorKind::Connection
        );
        for (soft, kind) in [
            (AMQPSoftError::ACCESSREFUSED, ErrorKind::Auth),
            (AMQPSoftError::NOTFOUND, ErrorKind::NotFound),
            (AMQPSoftError::PRECONDITIONFAILED, ErrorKind::Config),
            (AMQPSoftError::CONTENTTOOLARGE, ErrorKind::PayloadTooLarge),
            (AMQPSoftError::NOROUTE, ErrorKind::Other),
        ] {
            assert_eq!(
                kind_of(protocol(AMQPErrorKind::Soft(soft.clone()), "x")),
                kind,
                "{soft:?}"
            );
        }
        for (hard, kind) in [
            (AMQPHardError::CONNECTIONFORCED, ErrorKind::Connection),
            (AMQPHardError::RESOURCEERROR, ErrorKind::Throttled),
            (AMQPHardError::NOTALLOWED, ErrorKind::Auth),
            (AMQPHardError::FRAMEERROR, ErrorKind::Other),
        ] {
            assert_eq!(
                kind_of(protocol(AMQPErrorKind::Hard(hard.clone()), "x")),
                kind,
                "{hard:?}"
            );
        }
        assert!(Error::new(ErrorKind::Connection, "x").is_retryable());
    }

    #[test]
    fn a_queue_whose_process_is_down_is_retryable_not_missing() {
        let down = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - home node 'rabbit@h' of durable queue 'jobs' in vhost '/' is down or inaccessible",
        );
        let error = classify(down, "checking queue jobs", "127.0.0.1:5672");
        assert_eq!(error.kind(), ErrorKind::Connection);
        assert!(error.is_retryable());
        let missing = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no queue 'jobs' in vhost '/'",
        );
        assert_eq!(kind_of(missing), ErrorKind::NotFound);
    }

    #[test]
    fn the_message_names_the_address_and_the_broker_reply() {
        let e = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg 'x-max-priority'",
        );
        let error = classify(e, "declaring queue jobs", "10.0.0.7:5672");
        assert_eq!(
            error.message(),
            "amqp at 10.0.0.7:5672: declaring queue jobs failed: PRECONDITION_FAILED - inequivalent arg 'x-max-priority'"
        );
        let source = std::error::Error::source(&error).expect("the client error is kept");
        assert!(source.downcast_ref::<lapin::Error>().is_some());
        let timeout = timed_out(
            "publishing",
            "10.0.0.7:5672",
            std::time::Duration::from_secs(1),
        );
        assert_eq!(timeout.kind(), ErrorKind::Timeout);
    }
}
