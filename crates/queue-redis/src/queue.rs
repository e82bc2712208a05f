//! Producer, consumer, delivery settlement and admin over the Lua scripts.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::traits::ack_each;
use queue_core::{
    envelope, Acker, Admin, Consumer, ConsumerOptions, DeadLetter, DeadLetterReason, Delivery,
    DeliveryError, Error, ErrorKind, HealthStatus, Message, MessageId, Producer, QueueName,
    QueueOptions, QueueStats, Redrive, Result,
};
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::scripts::{invocation, queue_keys, INBOX, META, NOTIFY, SCRIPTS};
use crate::{RedisBackend, Shared, MAX_RECEIVE};

/// One queue's keys and the backend they belong to.
#[derive(Debug)]
pub(crate) struct QueueCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: QueueName,
    pub(crate) keys: Vec<String>,
}

impl QueueCtx {
    fn new(shared: Arc<Shared>, name: &QueueName) -> QueueCtx {
        QueueCtx {
            keys: queue_keys(&shared.prefix, name),
            name: name.clone(),
            shared,
        }
    }

    /// Make the queue exist (its metadata hash), as a producer or consumer does.
    async fn touch(&self) -> Result<()> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        redis::cmd("HSETNX")
            .arg(&self.keys[META])
            .arg("created")
            .arg(now_ms())
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "creating the queue"))
    }

    fn missing(&self) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!("queue {:?} does not exist", self.name.as_str()),
        )
    }

    /// Run `invocation` on the shared connection.
    async fn run(&self, invocation: redis::ScriptInvocation<'_>, doing: &str) -> Result<Value> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        invocation
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, doing))
    }

    /// The reply of a script that starts with `'ok'` or `'missing'`.
    fn ok_reply(&self, reply: Value) -> Result<Vec<Value>> {
        let items = array(reply)?;
        match items.first().and_then(bytes_of) {
            Some(b"ok") => Ok(items),
            Some(b"missing") => Err(self.missing()),
            _ => Err(unexpected("a status")),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whole milliseconds of `d`, rounded up, plus one when not zero: the
/// server's clock reads whole milliseconds, so this keeps "not before" strict.
fn ms_after(d: Duration) -> u64 {
    if d.is_zero() {
        return 0;
    }
    let ms = d.as_micros().div_ceil(1000);
    u64::try_from(ms).unwrap_or(u64::MAX / 2) + 1
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(unexpected("an array")),
    }
}

pub(crate) fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

pub(crate) fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

pub(crate) fn unexpected(what: &str) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("redis script replied with something other than {what}"),
    )
}

fn lease_lost(message: &Message) -> Error {
    Error::new(
        ErrorKind::LeaseLost,
        format!(
            "message {} is no longer leased to this delivery (lease expired, or the message was settled or purged)",
            message.id
        ),
    )
}

/// The 1-based positions a settling script reports as lost.
fn lost_positions(reply: Value) -> Result<Vec<usize>> {
    array(reply)?
        .iter()
        .map(|v| {
            int_of(v)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| unexpected("positions"))
        })
        .collect()
}

/// Sends to one Redis queue.
#[derive(Debug)]
pub struct RedisProducer {
    ctx: Arc<QueueCtx>,
}

impl RedisProducer {
    pub(crate) async fn open(shared: Arc<Shared>, queue: &QueueName) -> Result<Self> {
        let ctx = Arc::new(QueueCtx::new(shared, queue));
        ctx.touch().await?;
        Ok(RedisProducer { ctx })
    }

    async fn push(&self, messages: &[Message]) -> Result<Vec<MessageId>> {
        let shared = &self.ctx.shared;
        let mut call = invocation(&SCRIPTS.send, &self.ctx.keys);
        call.arg(shared.idempotency_window.as_millis() as u64)
            .arg(messages.len());
        let now = SystemTime::now();
        for message in messages {
            let delay = message.delay_from(now);
            let ttl: i64 = match message.expires_at {
                None => -1,
                Some(at) => at
                    .duration_since(now)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
            };
            call.arg(&message.id.to_bytes()[..])
                .arg(envelope::encode(message).as_ref())
                .arg(message.priority.rank())
                .arg(ms_after(delay))
                .arg(ttl)
                .arg(message.idempotency_key.as_deref().unwrap_or(""));
        }
        let reply = array(self.ctx.run(call, "sending").await?)?;
        let mut ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        match reply.first().and_then(bytes_of) {
            Some(b"ok") => {
                for pair in reply[1..].chunks(2) {
                    let index = pair.first().and_then(int_of);
                    let first = pair.get(1).and_then(bytes_of);
                    match (index, first.and_then(|b| <[u8; 16]>::try_from(b).ok())) {
                        (Some(i), Some(first)) if (i as usize) < ids.len() => {
                            ids[i as usize] = MessageId::from_bytes(first);
                        }
                        _ => return Err(unexpected("deduplicated ids")),
                    }
                }
                Ok(ids)
            }
            Some(b"missing") => Err(self.ctx.missing()),
            Some(b"full") => {
                let depth = reply.get(1).and_then(int_of).unwrap_or_default();
                Err(Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "queue {:?} is full: it holds {depth} messages, at its maximum length, and {} more do not fit",
                        self.ctx.name.as_str(),
                        messages.len()
                    ),
                ))
            }
            _ => Err(unexpected("a send status")),
        }
    }
}

#[async_trait]
impl Producer for RedisProducer {
    fn queue(&self) -> &QueueName {
        &self.ctx.name
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        self.ctx.shared.capabilities.check_message(&message)?;
        let ids = self.push(std::slice::from_ref(&message)).await?;
        Ok(ids[0])
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>> {
        self.ctx.shared.capabilities.check_batch(&messages)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.push(&messages).await
    }
}

/// Receives from one Redis queue.
#[derive(Debug)]
pub struct RedisConsumer {
    ctx: Arc<QueueCtx>,
    lease: Duration,
    /// The connection this consumer blocks on while the queue is empty,
    /// opened on first need; taken out while in use, so a cancelled wait
    /// drops (and closes) it rather than leaving a BLPOP queued on it.
    blocking: std::sync::Mutex<Option<MultiplexedConnection>>,
}

impl RedisConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Self> {
        let lease = options.lease.unwrap_or(shared.lease);
        let ctx = Arc::new(QueueCtx::new(shared, queue));
        ctx.touch().await?;
        Ok(RedisConsumer {
            ctx,
            lease,
            blocking: std::sync::Mutex::new(None),
        })
    }

    /// Claim up to `max` messages in one script call. Returns the deliveries,
    /// whether anything was taken off the queue (undecodable messages are
    /// dead-lettered, not delivered), and the time to the next due message
    /// or lease deadline when nothing was.
    async fn claim(&self, max: usize) -> Result<(Vec<Delivery>, bool, Option<Duration>)> {
        let mut call = invocation(&SCRIPTS.claim, &self.ctx.keys);
        call.arg(max).arg(self.lease.as_millis() as u64);
        // Measured before the call: the server's deadline is never earlier.
        let deadline = SystemTime::now() + self.lease;
        let items = self.ctx.ok_reply(self.ctx.run(call, "claiming").await?)?;
        let next_event = items
            .get(1)
            .and_then(int_of)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis);
        let mut out = Vec::with_capacity(items.len().saturating_sub(2) / 2);
        let mut undecodable = Vec::new();
        let buried = items.get(2).and_then(int_of).unwrap_or(0);
        let mut items = items.into_iter().skip(3);
        while let (Some(member), Some(env)) = (items.next(), items.next()) {
            let (Value::BulkString(member), Value::BulkString(env)) = (member, env) else {
                return Err(unexpected("claimed messages"));
            };
            let member = Bytes::from(member);
            match envelope::decode(&Bytes::from(env)) {
                Ok(message) => out.push(Delivery::new(
                    self.ctx.name.clone(),
                    message,
                    deadline,
                    Box::new(RedisAcker {
                        ctx: self.ctx.clone(),
                        member,
                    }),
                )),
                Err(e) => undecodable.push((member, e)),
            }
        }
        let took = !out.is_empty() || !undecodable.is_empty() || buried > 0;
        for (member, e) in undecodable {
            tracing::warn!(queue = %self.ctx.name, error = %e, "dead-lettering a message that does not decode");
            bury(
                &self.ctx,
                &member,
                &DeadLetterReason::Decode,
                Some(&e.to_string()),
            )
            .await?;
        }
        Ok((out, took, next_event))
    }

    /// Block until a message may be ready (a notification, or bytes pushed
    /// to the inbox by a plain client) or `limit` passes.
    async fn wait_for_notification(&self, limit: Duration) -> Result<()> {
        let taken = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut conn = match taken {
            Some(conn) => conn,
            None => self.ctx.shared.blocking_connection().await?,
        };
        let seconds = limit.max(Duration::from_millis(1)).as_secs_f64();
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(&self.ctx.keys[NOTIFY])
            .arg(&self.ctx.keys[INBOX])
            .arg(format!("{seconds:.3}"));
        let blpop = cmd.query_async::<Option<(Vec<u8>, Vec<u8>)>>(&mut conn);
        // The server answers by its own timeout; the margin covers a
        // connection that stopped answering.
        let popped =
            match tokio::time::timeout(limit + self.ctx.shared.connect_timeout, blpop).await {
                Ok(Ok(popped)) => popped,
                // A broken connection is dropped here; the next wait opens another.
                Ok(Err(e)) => return Err(self.ctx.shared.error(e, "waiting for messages")),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "redis at {}: no reply while waiting for messages",
                            self.ctx.shared.address
                        ),
                    ))
                }
            };
        *self.blocking.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        if let Some((key, bytes)) = popped {
            if key == self.ctx.keys[INBOX].as_bytes() {
                // Bytes a plain client pushed: queue them like the claim does.
                let mut call = invocation(&SCRIPTS.inbox, &self.ctx.keys);
                call.arg(bytes);
                self.ctx.run(call, "queueing inbox bytes").await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for RedisConsumer {
    fn queue(&self) -> &QueueName {
        &self.ctx.name
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if max == 0 || max > MAX_RECEIVE {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("receive max must be 1 to {MAX_RECEIVE}, got {max}"),
            ));
        }
        let give_up_at = tokio::time::Instant::now() + wait;
        loop {
            let (batch, took, next_event) = self.claim(max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if took {
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= give_up_at {
                return Ok(batch);
            }
            let mut limit = give_up_at - now;
            if let Some(next) = next_event {
                limit = limit.min(next);
            }
            self.wait_for_notification(limit).await?;
        }
    }

    /// Acks every delivery of this queue in one script call per thousand.
    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        let mut ours = Vec::with_capacity(deliveries.len());
        let mut foreign = Vec::new();
        for delivery in deliveries {
            let member = match delivery.acker().as_any().downcast_ref::<RedisAcker>() {
                Some(acker) if Arc::ptr_eq(&acker.ctx, &self.ctx) => acker.member.clone(),
                _ => {
                    foreign.push(delivery);
                    continue;
                }
            };
            ours.push((member, delivery));
        }
        let mut failed = Vec::new();
        while !ours.is_empty() {
            let rest = ours.split_off(ours.len().min(1000));
            let chunk = std::mem::replace(&mut ours, rest);
            let mut call = invocation(&SCRIPTS.ack, &self.ctx.keys);
            for (member, _) in &chunk {
                call.arg(member.as_ref());
            }
            match self.ctx.run(call, "acking").await.and_then(lost_positions) {
                Ok(lost) => {
                    let mut lost = lost.into_iter().peekable();
                    for (i, (_, delivery)) in chunk.into_iter().enumerate() {
                        if lost.next_if_eq(&(i + 1)).is_some() {
                            let error = lease_lost(delivery.message());
                            failed.push(DeliveryError::new(error, delivery));
                        }
                    }
                }
                Err(e) => failed.extend(
                    chunk
                        .into_iter()
                        .map(|(_, d)| DeliveryError::new(e.clone_kind(), d)),
                ),
            }
        }
        ack_each(foreign, failed).await
    }
}

/// Dead-letter the message leased as `member`; `LeaseLost` if it is not.
async fn bury(
    ctx: &QueueCtx,
    member: &[u8],
    reason: &DeadLetterReason,
    last_error: Option<&str>,
) -> Result<bool> {
    let mut call = invocation(&SCRIPTS.bury, &ctx.keys);
    call.arg(member)
        .arg(reason.to_string())
        .arg(last_error.unwrap_or(""));
    let reply = ctx.run(call, "dead-lettering").await?;
    Ok(int_of(&reply) == Some(1))
}

/// Settles one Redis delivery: the lease member (id + token) is the proof
/// of holding it.
#[derive(Debug)]
struct RedisAcker {
    ctx: Arc<QueueCtx>,
    member: Bytes,
}

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(&self, message: &Message) -> Result<()> {
        let mut call = invocation(&SCRIPTS.ack, &self.ctx.keys);
        call.arg(self.member.as_ref());
        let lost = lost_positions(self.ctx.run(call, "acking").await?)?;
        if lost.is_empty() {
            Ok(())
        } else {
            Err(lease_lost(message))
        }
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        // The stored envelope carries the last error to the next attempt.
        let replacement = last_error.map(|error| {
            let mut updated = message.clone();
            updated.last_error = Some(error.to_owned());
            envelope::encode(&updated)
        });
        let mut call = invocation(&SCRIPTS.nack, &self.ctx.keys);
        call.arg(self.member.as_ref())
            .arg(ms_after(delay.min(queue_core::message::MAX_DELAY)))
            .arg(replacement.as_deref().unwrap_or_default())
            .arg(last_error.unwrap_or(""));
        let lost = lost_positions(self.ctx.run(call, "nacking").await?)?;
        if lost.is_empty() {
            Ok(())
        } else {
            Err(lease_lost(message))
        }
    }

    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime> {
        queue_core::config::check_lease(lease)?;
        let deadline = SystemTime::now() + lease;
        let mut call = invocation(&SCRIPTS.extend, &self.ctx.keys);
        call.arg(self.member.as_ref()).arg(lease.as_millis() as u64);
        match int_of(&self.ctx.run(call, "extending a lease").await?) {
            Some(1) => Ok(deadline),
            _ => Err(lease_lost(message)),
        }
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        if bury(
            &self.ctx,
            &self.member,
            reason,
            message.last_error.as_deref(),
        )
        .await?
        {
            Ok(())
        } else {
            Err(lease_lost(message))
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A dead letter from its stored envelope and the JSON the scripts write.
fn dead_letter_of(id: &[u8], env: Vec<u8>, info: &[u8]) -> DeadLetter {
    let env = Bytes::from(env);
    let message = envelope::decode(&env).unwrap_or_else(|_| {
        // Undecodable bytes are kept as the payload, under their stored id.
        let mut raw = Message::new(env.clone());
        if let Ok(id) = <[u8; 16]>::try_from(id) {
            raw.id = MessageId::from_bytes(id);
        }
        raw
    });
    let info: serde_json::Value = serde_json::from_slice(info).unwrap_or_default();
    let reason = DeadLetterReason::parse(info["reason"].as_str().unwrap_or("decode"));
    let attempts = info["attempts"].as_u64().unwrap_or(0) as u32;
    let mut dead = DeadLetter::new(message, reason, attempts);
    if let Some(error) = info["error"].as_str() {
        dead.last_error = Some(error.to_owned());
    }
    if let Some(ms) = info["at"].as_str().and_then(|s| s.parse::<u64>().ok()) {
        dead.dead_lettered_at = UNIX_EPOCH + Duration::from_millis(ms);
    }
    dead
}

impl RedisBackend {
    fn ctx(&self, queue: &QueueName) -> QueueCtx {
        QueueCtx::new(self.shared.clone(), queue)
    }
}

#[async_trait]
impl Admin for RedisBackend {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        options.check()?;
        let ctx = self.ctx(queue);
        ctx.touch().await?;
        let mut conn = self.shared.conn.clone();
        let cmd = match options.max_length {
            Some(max) => {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&ctx.keys[META]).arg("max_length").arg(max);
                cmd
            }
            None => {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(&ctx.keys[META]).arg("max_length");
                cmd
            }
        };
        cmd.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "setting queue options"))
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.shared.check_open()?;
        let ctx = self.ctx(queue);
        let mut conn = self.shared.conn.clone();
        redis::cmd("UNLINK")
            .arg(&ctx.keys)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "deleting the queue"))
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let ctx = self.ctx(queue);
        let items = ctx.ok_reply(
            ctx.run(invocation(&SCRIPTS.purge, &ctx.keys), "purging")
                .await?,
        )?;
        items
            .get(1)
            .and_then(int_of)
            .map(|n| n as u64)
            .ok_or_else(|| unexpected("a count"))
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let ctx = self.ctx(queue);
        let items = ctx.ok_reply(
            ctx.run(invocation(&SCRIPTS.stats, &ctx.keys), "reading stats")
                .await?,
        )?;
        let n: Vec<u64> = items[1..]
            .iter()
            .map(|v| int_of(v).map(|n| n.max(0) as u64))
            .collect::<Option<_>>()
            .filter(|n: &Vec<u64>| n.len() == 10)
            .ok_or_else(|| unexpected("ten counts"))?;
        let mut stats = QueueStats::default();
        stats.ready = n[0];
        stats.delayed = n[1];
        stats.in_flight = n[2];
        stats.dead = n[3];
        stats.enqueued_total = n[4];
        stats.acked_total = n[5];
        stats.retried_total = n[6];
        stats.dead_lettered_total = n[7];
        stats.expired_total = n[8];
        stats.deduplicated_total = n[9];
        Ok(stats)
    }

    async fn dead_letters(&self, queue: &QueueName, limit: usize) -> Result<Vec<DeadLetter>> {
        const PAGE: usize = 1000;
        let ctx = self.ctx(queue);
        let mut out = Vec::new();
        while out.len() < limit {
            let count = (limit - out.len()).min(PAGE);
            let mut call = invocation(&SCRIPTS.dead, &ctx.keys);
            call.arg(out.len()).arg(count);
            let items = ctx.ok_reply(ctx.run(call, "listing dead letters").await?)?;
            let before = out.len();
            let mut items = items.into_iter().skip(1);
            while let (Some(Value::BulkString(id)), Some(Value::BulkString(env)), Some(info)) =
                (items.next(), items.next(), items.next())
            {
                out.push(dead_letter_of(&id, env, bytes_of(&info).unwrap_or(b"{}")));
            }
            if out.len() - before < count {
                break;
            }
        }
        Ok(out)
    }

    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        let ctx = self.ctx(queue);
        let mut moved = 0u64;
        let count = |items: Vec<Value>| -> Result<u64> {
            items
                .get(1)
                .and_then(int_of)
                .map(|n| n as u64)
                .ok_or_else(|| unexpected("a count"))
        };
        match which {
            Redrive::Ids(ids) => {
                for chunk in ids.chunks(1000) {
                    let mut call = invocation(&SCRIPTS.redrive, &ctx.keys);
                    call.arg("ids");
                    for id in chunk {
                        call.arg(&id.to_bytes()[..]);
                    }
                    moved += count(ctx.ok_reply(ctx.run(call, "redriving").await?)?)?;
                }
            }
            _ => {
                // Everything dead-lettered up to the first call's server
                // time, in pages; letters that die again meanwhile stay.
                let mut cutoff = Vec::new();
                loop {
                    let mut call = invocation(&SCRIPTS.redrive, &ctx.keys);
                    call.arg("all").arg(1000).arg(&cutoff[..]);
                    let items = ctx.ok_reply(ctx.run(call, "redriving").await?)?;
                    moved += count(items.clone())?;
                    let scanned = items.get(2).and_then(int_of).unwrap_or(0);
                    if let Some(at) = items.get(3).and_then(bytes_of) {
                        cutoff = at.to_vec();
                    }
                    if scanned == 0 {
                        break;
                    }
                }
            }
        }
        Ok(moved)
    }

    async fn health(&self) -> HealthStatus {
        self.health_check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_keep_not_before_strict() {
        assert_eq!(ms_after(Duration::ZERO), 0);
        assert_eq!(ms_after(Duration::from_micros(1)), 2);
        assert_eq!(ms_after(Duration::from_millis(250)), 251);
        assert_eq!(ms_after(Duration::from_micros(250_400)), 252);
    }

    #[test]
    fn dead_letters_keep_undecodable_bytes() {
        let id = MessageId::new();
        let dead = dead_letter_of(
            &id.to_bytes(),
            b"junk".to_vec(),
            br#"{"reason":"decode","attempts":1,"at":"1700000000000","error":"bad magic"}"#,
        );
        assert_eq!(dead.message.id, id);
        assert_eq!(dead.message.payload.as_ref(), b"junk");
        assert_eq!(dead.reason, DeadLetterReason::Decode);
        assert_eq!(dead.attempts, 1);
        assert_eq!(dead.last_error.as_deref(), Some("bad magic"));
        assert_eq!(
            dead.dead_lettered_at,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
        );
    }
}
