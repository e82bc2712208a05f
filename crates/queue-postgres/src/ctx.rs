//! [`QueueCtx`]: one queue's name with the backend's shared state, as its
//! producers, consumers and deliveries hold it.

use std::sync::Arc;

use queue_core::{Error, ErrorKind, QueueName, Result};

use crate::shared::Shared;

#[derive(Debug)]
pub(crate) struct QueueCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: QueueName,
}

impl QueueCtx {
    pub(crate) fn new(shared: Arc<Shared>, name: &QueueName) -> QueueCtx {
        QueueCtx {
            shared,
            name: name.clone(),
        }
    }

    /// Create the queue with default options if it does not exist.
    pub(crate) async fn touch(&self) -> Result<()> {
        self.shared.check_open()?;
        sqlx::query(&self.shared.sql.touch)
            .bind(self.name.as_str())
            .execute(&self.shared.pool)
            .await
            .map_err(|e| self.shared.error(e, "creating the queue"))?;
        Ok(())
    }

    pub(crate) fn missing(&self) -> Error {
        missing(&self.name)
    }

    /// A driver error of an operation on this queue: a missing queue is
    /// named as such.
    pub(crate) fn error(&self, e: sqlx::Error, doing: &str) -> Error {
        let error = self.shared.error(e, doing);
        if error.kind() == ErrorKind::NotFound {
            self.missing()
        } else {
            error
        }
    }
}

/// The error for an operation on `queue`, which does not exist.
pub(crate) fn missing(queue: &QueueName) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("queue {:?} does not exist", queue.as_str()),
    )
}
