//! The one mapping from database driver errors to the queue's error kinds.

use queue_core::{Error, ErrorKind};

/// SQLSTATE the schema's functions raise for a queue that does not exist.
pub(crate) const MISSING_QUEUE: &str = "QUMIS";
/// SQLSTATE the schema's functions raise for a queue at its maximum length.
pub(crate) const FULL_QUEUE: &str = "QUFUL";

/// The one place a driver error becomes a queue [`Error`]: the kind
/// decides retrying, the source is kept, the address is named (never the
/// credentials, never the values of a statement).
pub(crate) fn classify(e: sqlx::Error, doing: &str, address: &str) -> Error {
    let kind = match &e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => ErrorKind::Connection,
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => ErrorKind::Connection,
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        sqlx::Error::Protocol(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => ErrorKind::Decode,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(MISSING_QUEUE) => ErrorKind::NotFound,
            Some(FULL_QUEUE) => ErrorKind::QueueFull,
            // Invalid authorization, invalid password.
            Some("28000" | "28P01") => ErrorKind::Auth,
            // Insufficient privilege.
            Some("42501") => ErrorKind::Auth,
            // Too many connections, out of memory or disk, lock not available,
            // serialization failure, deadlock.
            Some("53300" | "53200" | "53100" | "55P03" | "40001" | "40P01") => ErrorKind::Throttled,
            // Statement timeout or cancelled.
            Some("57014") => ErrorKind::Timeout,
            // Server shutting down, crash, cannot connect now.
            Some("57P01" | "57P02" | "57P03") => ErrorKind::Connection,
            // Class 08: connection exceptions.
            Some(code) if code.starts_with("08") => ErrorKind::Connection,
            // No such database.
            Some("3D000") => ErrorKind::Config,
            // Value too long, bad encoding.
            Some("22001" | "22021" | "54000") => ErrorKind::InvalidInput,
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Other,
    };
    // The driver's own words stay in the source, not repeated here.
    Error::new(kind, format!("postgres at {address}: {doing} failed")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_map_onto_kinds_that_say_whether_to_retry() {
        let io = |kind| sqlx::Error::Io(std::io::Error::new(kind, "io"));
        let kind_of = |e| classify(e, "testing", "127.0.0.1:5432").kind();
        assert_eq!(
            kind_of(io(std::io::ErrorKind::ConnectionRefused)),
            ErrorKind::Connection
        );
        assert_eq!(
            kind_of(io(std::io::ErrorKind::TimedOut)),
            ErrorKind::Timeout
        );
        assert_eq!(kind_of(sqlx::Error::PoolTimedOut), ErrorKind::Timeout);
        assert_eq!(
            kind_of(sqlx::Error::Protocol("garbage".into())),
            ErrorKind::Decode
        );
        let error = classify(sqlx::Error::PoolTimedOut, "claiming", "10.0.0.7:5433");
        assert_eq!(
            error.message(),
            "postgres at 10.0.0.7:5433: claiming failed"
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}
