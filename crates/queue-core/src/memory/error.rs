//! The errors the memory backend raises itself (it has no client whose
//! errors need classifying; lost leases use the core's wording,
//! [`Error::lease_lost`]).

use crate::error::{Error, ErrorKind};
use crate::message::QueueName;

/// The queue was never created, or was deleted.
pub(super) fn no_such_queue(name: &QueueName) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("queue {name:?} does not exist"),
    )
}

/// A handle's queue was deleted under it.
pub(super) fn deleted(name: &QueueName) -> Error {
    Error::new(ErrorKind::NotFound, format!("queue {name:?} was deleted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_queue() {
        let q = QueueName::new("gone").unwrap();
        assert_eq!(no_such_queue(&q).kind(), ErrorKind::NotFound);
        assert!(no_such_queue(&q)
            .message()
            .contains("\"gone\" does not exist"));
        assert!(deleted(&q).message().contains("was deleted"));
    }
}
