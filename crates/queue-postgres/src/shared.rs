//! [`Shared`]: what the backend, its producers, consumers and admin
//! share: the connection pool, the schema, the settings, and the
//! listener that turns `NOTIFY` into wake-ups of waiting consumers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use queue_core::{Capabilities, CloseFlag, Error, ErrorKind, QueueName, Result, StopFlag};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{Notify, OnceCell};

use crate::error::classify;

/// The statements every operation runs, with the schema written in.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) send: String,
    pub(crate) claim: String,
    pub(crate) ack: String,
    pub(crate) retry: String,
    pub(crate) release: String,
    pub(crate) bury: String,
    pub(crate) extend: String,
    pub(crate) touch: String,
}

impl Sql {
    fn new(s: &str) -> Sql {
        Sql {
            send: format!(
                "SELECT idx, first FROM {s}.send($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            claim: format!(
                "SELECT kind, seq, id, token, attempt, last_error, expires_ms, lease_ms_until, body, \
                 next_ms FROM {s}.claim($1, $2, $3, $4, $5, $6)"
            ),
            ack: format!("SELECT seq, token FROM {s}.ack($1, $2)"),
            retry: format!("SELECT {s}.retry($1, $2, $3, $4)"),
            release: format!("SELECT {s}.release($1, $2)"),
            bury: format!("SELECT {s}.bury($1, $2, $3, $4, $5)"),
            extend: format!(
                "UPDATE {s}.jobs SET lease_until = clock_timestamp() + $3 * interval '1 millisecond' \
                 WHERE seq = $1 AND token = $2 AND state = 1 RETURNING {s}.epoch_ms(lease_until)"
            ),
            touch: format!("INSERT INTO {s}.queues (name) VALUES ($1) ON CONFLICT DO NOTHING"),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) capabilities: Capabilities,
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    pub(crate) sql: Sql,
    pub(crate) lease: Duration,
    pub(crate) idempotency_window: Duration,
    pub(crate) connect_timeout: Duration,
    /// The server's `statement_timeout` ([`bounded`](Self::bounded)).
    request_timeout: Duration,
    /// `host:port`, for errors (never the credentials).
    pub(crate) address: String,
    pub(crate) closed: CloseFlag,
    /// One `Notify` per queue a consumer of this backend waits on.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// Started by the first consumer.
    listener: OnceCell<()>,
    /// Ends the listener task (on close, or when the backend is dropped).
    listener_stop: Arc<StopFlag>,
}

/// How long a waiting consumer sleeps at most without a notification
/// before it looks again: a safety net for a notification lost while the
/// listener reconnects, not a polling loop.
pub(crate) const SAFETY_POLL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Shared {
    // The pool's options hold the password: only the address is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("address", &self.address)
            .field("schema", &self.schema)
            .field("lease", &self.lease)
            .field("closed", &self.closed.is_closed())
            .finish_non_exhaustive()
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        capabilities: Capabilities,
        pool: PgPool,
        schema: String,
        lease: Duration,
        idempotency_window: Duration,
        connect_timeout: Duration,
        request_timeout: Duration,
        address: String,
    ) -> Shared {
        Shared {
            capabilities,
            pool,
            sql: Sql::new(&schema),
            schema,
            lease,
            idempotency_window,
            connect_timeout,
            request_timeout,
            address,
            closed: CloseFlag::default(),
            wakers: Mutex::new(HashMap::new()),
            listener: OnceCell::new(),
            listener_stop: Arc::new(StopFlag::default()),
        }
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        self.closed.check("the postgres backend")
    }

    /// Run one call on a connection already acquired, failing it as a
    /// connection error when no reply comes within the statement timeout
    /// and a quarter more: the server cancels a slow statement itself, but
    /// on a connection whose packets are lost the call would otherwise
    /// wait for its reply forever.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
        doing: &str,
    ) -> Result<std::result::Result<T, sqlx::Error>> {
        let limit = self.request_timeout + self.request_timeout / 4;
        tokio::time::timeout(limit, call).await.map_err(|_| {
            Error::new(
                ErrorKind::Connection,
                format!(
                    "postgres at {}: no reply within {limit:?} while {doing}",
                    self.address
                ),
            )
        })
    }

    /// Map a driver error onto the queue's error kinds, naming the address.
    pub(crate) fn error(&self, e: sqlx::Error, doing: &str) -> Error {
        classify(e, doing, &self.address)
    }

    /// The channel this schema's jobs are announced on.
    pub(crate) fn channel(&self) -> String {
        format!("queue_jobs:{}", self.schema)
    }

    /// The `Notify` consumers of `queue` in this process wait on, with the
    /// listener started (once per backend).
    pub(crate) async fn waker(self: &Arc<Self>, queue: &QueueName) -> Result<Arc<Notify>> {
        self.listener
            .get_or_try_init(|| async {
                let mut listener = PgListener::connect_with(&self.pool)
                    .await
                    .map_err(|e| self.error(e, "opening the notification listener"))?;
                listener
                    .listen(&self.channel())
                    .await
                    .map_err(|e| self.error(e, "listening for new jobs"))?;
                tokio::spawn(listen(
                    Arc::downgrade(self),
                    self.listener_stop.clone(),
                    listener,
                ));
                Ok::<(), Error>(())
            })
            .await?;
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        Ok(wakers.entry(queue.as_str().to_owned()).or_default().clone())
    }

    fn wake(&self, queue: &str) {
        let wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = wakers.get(queue) {
            notify.notify_waiters();
        }
    }

    pub(crate) fn wake_all(&self) {
        let wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        for notify in wakers.values() {
            notify.notify_waiters();
        }
    }

    pub(crate) fn close(&self) {
        self.closed.close();
        self.listener_stop.stop();
        self.wake_all();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.listener_stop.stop();
    }
}

/// Pass each notification of the schema's channel to the consumers of its
/// queue. When the connection breaks the listener reconnects on its own;
/// notifications sent meanwhile are lost, so every consumer looks again.
async fn listen(shared_ref: Weak<Shared>, stop: Arc<StopFlag>, mut listener: PgListener) {
    loop {
        let next = tokio::select! {
            () = stop.stopped() => return,
            next = listener.try_recv() => next,
        };
        let Some(shared) = shared_ref.upgrade() else {
            return;
        };
        match next {
            Ok(Some(notification)) => shared.wake(notification.payload()),
            Ok(None) => shared.wake_all(),
            Err(e) => {
                tracing::warn!(error = %e, "postgres notification listener failed; retrying");
                shared.wake_all();
                let channel = shared.channel();
                drop(shared);
                tokio::select! {
                    () = stop.stopped() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                // Listening again reconnects; what was sent meanwhile was
                // lost, so every consumer looks once more.
                if listener.listen(&channel).await.is_ok() {
                    if let Some(shared) = shared_ref.upgrade() {
                        shared.wake_all();
                    }
                }
            }
        }
    }
}
