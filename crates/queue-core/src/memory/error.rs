//! The errors the memory backend raises itself (it has no client whose
//! errors need classifying).

use crate::error::{Error, ErrorKind};
use crate::message::Message;

pub(super) fn lease_lost(message: &Message) -> Error {
    Error::new(
        ErrorKind::LeaseLost,
        format!(
            "message {} is no longer leased to this delivery (lease expired, or the message was settled or purged)",
            message.id
        ),
    )
}
