//! [`Shared`]: what the backend, its producers, consumers, admin and job
//! store share: the client, the multiplexed connection, the key prefix and
//! the settings every script call needs.

use std::time::Duration;

use queue_core::{Capabilities, CloseFlag, Error, ErrorKind, Result};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use crate::error::classify;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) capabilities: Capabilities,
    pub(crate) client: redis::Client,
    /// The multiplexed connection every script goes through; it reconnects
    /// on its own after the connection breaks.
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
    pub(crate) lease: Duration,
    pub(crate) idempotency_window: Duration,
    pub(crate) connect_timeout: Duration,
    /// `host:port`, for errors (never the credentials).
    pub(crate) address: String,
    pub(crate) closed: CloseFlag,
}

impl Shared {
    pub(crate) fn check_open(&self) -> Result<()> {
        self.closed.check("the redis backend")
    }

    /// A second connection for blocking commands (BLPOP), which would stall
    /// every other request on the shared multiplexed connection. Dropping
    /// it closes the socket, which also ends a BLPOP still blocked on the
    /// server.
    pub(crate) async fn blocking_connection(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result.map_err(|e| self.error(e, "opening a blocking connection")),
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "redis at {}: no connection within {:?}",
                    self.address, self.connect_timeout
                ),
            )),
        }
    }

    /// Map a Redis error onto the queue's error kinds, naming the address.
    pub(crate) fn error(&self, e: redis::RedisError, doing: &str) -> Error {
        classify(e, doing, &self.address)
    }
}
