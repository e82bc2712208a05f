//! [`PostgresProducer`]: one function call per send or batch, on the
//! pool or on the caller's own connection or transaction.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use queue_core::{
    envelope, BatchError, Error, ErrorKind, Message, MessageId, Producer, QueueName, Result,
};
use sqlx::postgres::PgConnection;
use sqlx::Row as _;

use crate::ctx::QueueCtx;
use crate::shared::Shared;

/// Sends to one PostgreSQL queue.
///
/// Besides [`Producer`]'s methods, [`send_in`](PostgresProducer::send_in)
/// and [`send_batch_in`](PostgresProducer::send_batch_in) queue jobs
/// through the caller's own connection, so that a job sent inside a
/// transaction exists only if the transaction commits, and consumers see
/// it (and are woken for it) only once it has.
#[derive(Debug, Clone)]
pub struct PostgresProducer {
    ctx: Arc<QueueCtx>,
}

/// Parallel arrays, one element per message: the arguments of the
/// schema's `send` function.
#[derive(Default)]
struct Columns {
    ids: Vec<uuid::Uuid>,
    bodies: Vec<bytes::Bytes>,
    ranks: Vec<i16>,
    delays_ms: Vec<i64>,
    ttls_ms: Vec<i64>,
    keys: Vec<String>,
    groups: Vec<String>,
    attempts: Vec<i64>,
    max_attempts: Vec<i64>,
    since_ms: Vec<i64>,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Columns {
    fn of(messages: &[Message]) -> Columns {
        let now = SystemTime::now();
        let mut c = Columns::default();
        for message in messages {
            c.ids.push(message.id.as_uuid());
            c.bodies.push(envelope::encode(message));
            c.ranks.push(message.priority.rank() as i16);
            c.delays_ms.push(millis(message.delay_from(now)));
            c.ttls_ms.push(match message.expires_at {
                None => -1,
                Some(at) => at.duration_since(now).map_or(0, millis),
            });
            c.keys.push(
                message
                    .idempotency_key
                    .as_deref()
                    .unwrap_or_default()
                    .to_owned(),
            );
            c.groups
                .push(message.group().unwrap_or_default().to_owned());
            c.attempts.push(i64::from(message.attempt));
            c.max_attempts.push(i64::from(message.max_attempts));
            // Ready since it was made, or since it falls due.
            let since = message
                .not_before
                .map_or(message.created_at, |at| at.max(message.created_at));
            c.since_ms.push(
                since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, millis),
            );
        }
        c
    }
}

impl PostgresProducer {
    pub(crate) async fn open(shared: Arc<Shared>, queue: &QueueName) -> Result<Self> {
        let ctx = Arc::new(QueueCtx::new(shared, queue));
        ctx.touch().await?;
        Ok(PostgresProducer { ctx })
    }

    /// Queue `messages` through `conn`: one call of the schema's `send`.
    async fn push(&self, conn: &mut PgConnection, messages: &[Message]) -> Result<Vec<MessageId>> {
        let shared = &self.ctx.shared;
        shared.check_open()?;
        let c = Columns::of(messages);
        let bodies: Vec<&[u8]> = c.bodies.iter().map(|b| b.as_ref()).collect();
        let rows = sqlx::query(&shared.sql.send)
            .bind(self.ctx.name.as_str())
            .bind(millis(shared.idempotency_window))
            .bind(&c.ids)
            .bind(&bodies)
            .bind(&c.ranks)
            .bind(&c.delays_ms)
            .bind(&c.ttls_ms)
            .bind(&c.keys)
            .bind(&c.groups)
            .bind(&c.attempts)
            .bind(&c.max_attempts)
            .bind(&c.since_ms)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.send_error(e, messages.len()))?;
        let mut ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        for row in rows {
            let index: i32 = row.try_get(0).map_err(|e| shared.error(e, "sending"))?;
            let first: uuid::Uuid = row.try_get(1).map_err(|e| shared.error(e, "sending"))?;
            match usize::try_from(index)
                .ok()
                .and_then(|i| ids.get_mut(i.wrapping_sub(1)))
            {
                Some(id) => *id = MessageId::from(first),
                None => {
                    return Err(Error::new(
                        ErrorKind::Decode,
                        format!(
                            "postgres send replied with message index {index} of {}",
                            ids.len()
                        ),
                    ))
                }
            }
        }
        Ok(ids)
    }

    fn send_error(&self, e: sqlx::Error, count: usize) -> Error {
        let error = self.ctx.shared.error(e, "sending");
        match error.kind() {
            ErrorKind::NotFound => self.ctx.missing(),
            ErrorKind::QueueFull => Error::new(
                ErrorKind::QueueFull,
                format!(
                    "queue {:?} is full: at its maximum length, {count} more do not fit",
                    self.ctx.name.as_str()
                ),
            ),
            _ => error,
        }
    }

    async fn pooled(&self, messages: &[Message]) -> Result<Vec<MessageId>> {
        let shared = &self.ctx.shared;
        let mut conn = shared
            .pool
            .acquire()
            .await
            .map_err(|e| shared.error(e, "sending"))?;
        self.push(&mut conn, messages).await
    }

    /// Send one message through `conn`, the caller's own connection or
    /// transaction (`&mut *tx`): the job exists, and wakes consumers, only
    /// once that transaction commits; a rollback leaves no trace of it.
    ///
    /// ```no_run
    /// # async fn f(backend: queue_postgres::PostgresBackend) -> Result<(), Box<dyn std::error::Error>> {
    /// use queue_core::{Message, QueueName};
    /// let emails = backend.postgres_producer(&QueueName::new("emails")?).await?;
    /// let mut tx = backend.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
    /// emails.send_in(&mut tx, Message::new("order 42 confirmed")).await?;
    /// tx.commit().await?; // the order and its email job, or neither
    /// # Ok(()) }
    /// ```
    pub async fn send_in(&self, conn: &mut PgConnection, message: Message) -> Result<MessageId> {
        self.ctx.shared.capabilities.check_message(&message)?;
        let ids = self.push(conn, std::slice::from_ref(&message)).await?;
        Ok(ids[0])
    }

    /// Send many messages through `conn` in one call, all or nothing (see
    /// [`send_in`](PostgresProducer::send_in)).
    pub async fn send_batch_in(
        &self,
        conn: &mut PgConnection,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        self.ctx.shared.capabilities.check_batch(&messages)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.push(conn, &messages).await
    }
}

#[async_trait]
impl Producer for PostgresProducer {
    fn queue(&self) -> &QueueName {
        &self.ctx.name
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        self.ctx.shared.capabilities.check_message(&message)?;
        let ids = self.pooled(std::slice::from_ref(&message)).await?;
        Ok(ids[0])
    }

    /// One function call in one transaction, all or nothing.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
        let whole = |e| BatchError::whole(e, messages.len());
        self.ctx
            .shared
            .capabilities
            .check_batch(&messages)
            .map_err(whole)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.pooled(&messages).await.map_err(whole)
    }
}
