//! Queue administration for [`RedisBackend`]: options, purge, exact stats,
//! dead letters, redrive, health.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::store::millis_since_epoch;
use queue_core::{
    envelope, Admin, DeadLetter, DeadLetterCursor, DeadLetterPage, DeadLetterQuery,
    DeadLetterReason, Error, ErrorKind, HealthStatus, Message, MessageId, QueueName, QueueOptions,
    QueueStats, Redrive, Result, WorkerInfo,
};
use redis::Value;

use crate::ctx::QueueCtx;
use crate::error::unexpected;
use crate::scripts::{
    bytes_of, int_of, invocation, registry_key, META, NOTIFY, SCRIPTS, SCRIPT_BATCH,
};
use crate::RedisBackend;

/// A dead letter from its stored envelope (or its header and the first
/// bytes of its payload, of a `length`-byte envelope) and the JSON the
/// scripts write. `None` when the envelope was cut inside its header (the
/// script reads the header as this build does; a letter it misread is
/// read again whole).
fn dead_letter_of(id: &[u8], env: Vec<u8>, length: usize, info: &[u8]) -> Option<DeadLetter> {
    let env = Bytes::from(env);
    let cut = env.len() < length;
    let (message, payload_len) = match envelope::decode_prefix(&env, length) {
        Ok(decoded) => decoded,
        Err(_) if cut && envelope::looks_like_envelope(&env) => return None,
        Err(_) => {
            // Undecodable bytes are kept as the payload, under their stored id.
            let mut raw = Message::new(env.clone());
            if let Ok(id) = <[u8; 16]>::try_from(id) {
                raw.id = MessageId::from_bytes(id);
            }
            (raw, length)
        }
    };
    let info: serde_json::Value = serde_json::from_slice(info).unwrap_or_default();
    let reason = DeadLetterReason::parse(info["reason"].as_str().unwrap_or("decode"));
    let attempts = info["attempts"].as_u64().unwrap_or(0) as u32;
    let mut dead = DeadLetter::new(message, reason, attempts);
    dead.payload_len = payload_len;
    if let Some(error) = info["error"].as_str() {
        dead.last_error = Some(error.to_owned());
    }
    if let Some(ms) = info["at"].as_str().and_then(|s| s.parse::<u64>().ok()) {
        dead.dead_lettered_at = UNIX_EPOCH + Duration::from_millis(ms);
    }
    Some(dead)
}

/// The sequence a dead-letter cursor holds on Redis.
fn dead_sequence(cursor: &DeadLetterCursor) -> Result<i64> {
    cursor
        .as_str()
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{:?} is not a dead-letter cursor of the redis backend (pass back a page's `next`)",
                    cursor.as_str()
                ),
            )
        })
}

/// The worker registry: worker id -> its JSON in a hash, and id -> when
/// it goes stale (ms) in a sorted set, both under `<prefix>:{workers}`.
fn worker_keys(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}:{{workers}}"),
        format!("{prefix}:{{workers}}:stale"),
    ]
}

/// Drop the workers gone stale by ARGV[1] (ms), shared by the scripts below.
const DROP_STALE: &str = "local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) \
     for _, id in ipairs(stale) do redis.call('HDEL', KEYS[1], id) end \
     redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) ";

/// Register or refresh a worker: ARGV now, id, JSON, stale-at (ms).
static REGISTER_WORKER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&format!(
        "{DROP_STALE} redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) \
         redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2]) return 1"
    ))
});

/// The live workers' JSON: ARGV now (ms).
static LIST_WORKERS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&format!("{DROP_STALE} return redis.call('HVALS', KEYS[1])"))
});

/// Pause: set the flag on an existing queue (0 when it does not exist).
static PAUSE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
         redis.call('HSET', KEYS[1], 'paused', 1) \
         return 1",
    )
});

/// Resume: clear the flag, and leave one wake-up token (as the scripts'
/// `notify` does) for the consumers blocked on the queue (0 when the
/// queue does not exist).
static RESUME: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
         redis.call('HDEL', KEYS[1], 'paused') \
         if redis.call('LLEN', KEYS[2]) == 0 then redis.call('RPUSH', KEYS[2], '1') end \
         return 1",
    )
});

impl RedisBackend {
    /// The dead letter of sequence `seq`, whole (`None` if it has gone).
    async fn whole_dead_letter(&self, ctx: &QueueCtx, seq: i64) -> Result<Option<DeadLetter>> {
        let mut call = invocation(&SCRIPTS.dead, &ctx.keys);
        call.arg(seq - 1).arg(1).arg(-1);
        let items = ctx.ok_reply(ctx.run(call, "reading a dead letter").await?)?;
        let mut items = items.into_iter().skip(2);
        match (
            items.next(),
            items.next(),
            items.next(),
            items.next(),
            items.next(),
        ) {
            (
                Some(found),
                Some(Value::BulkString(id)),
                Some(Value::BulkString(env)),
                Some(length),
                Some(info),
            ) if int_of(&found) == Some(seq) => {
                let length = int_of(&length)
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(env.len());
                Ok(dead_letter_of(
                    &id,
                    env,
                    length,
                    bytes_of(&info).unwrap_or(b"{}"),
                ))
            }
            _ => Ok(None),
        }
    }

    fn ctx(&self, queue: &QueueName) -> QueueCtx {
        QueueCtx::new(self.shared.clone(), queue)
    }

    /// Run `PAUSE` or `RESUME` (keys: the queue's `meta` and `notify`) on
    /// `queue`; `NotFound` when the queue does not exist.
    async fn set_paused(
        &self,
        queue: &QueueName,
        script: &redis::Script,
        doing: &str,
    ) -> Result<()> {
        self.shared.check_open()?;
        let ctx = self.ctx(queue);
        let mut conn = self.shared.conn.clone();
        let found: i64 = script
            .key(&ctx.keys[META])
            .key(&ctx.keys[NOTIFY])
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, doing))?;
        if found == 1 {
            Ok(())
        } else {
            Err(ctx.missing())
        }
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
        redis::pipe()
            .cmd("UNLINK")
            .arg(&ctx.keys)
            .ignore()
            .cmd("SREM")
            .arg(registry_key(&self.shared.prefix))
            .arg(queue.as_str())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "deleting the queue"))
    }

    /// From the registry set every producer, consumer and `ensure_queue`
    /// adds to (one `SMEMBERS`; no key scan).
    async fn queues(&self) -> Result<Vec<QueueName>> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(registry_key(&self.shared.prefix))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "listing queues"))?;
        let mut queues: Vec<QueueName> = names
            .iter()
            .filter_map(|n| QueueName::new(n).ok())
            .collect();
        queues.sort();
        Ok(queues)
    }

    /// One script call: the worker's JSON and when it goes stale, under
    /// `<prefix>:{workers}`; stale workers are dropped on the way.
    async fn register_worker(&self, worker: &WorkerInfo) -> Result<()> {
        self.shared.check_open()?;
        let json = serde_json::to_string(worker)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, "worker info").with_source(e))?;
        let now = millis_since_epoch(SystemTime::now());
        let stale_at = now + u64::try_from(worker.ttl().as_millis()).unwrap_or(u64::MAX / 2);
        let mut call = invocation(&REGISTER_WORKER, &worker_keys(&self.shared.prefix));
        call.arg(now).arg(&worker.id).arg(json).arg(stale_at);
        let mut conn = self.shared.conn.clone();
        call.invoke_async::<Value>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "registering a worker"))
            .map(drop)
    }

    async fn deregister_worker(&self, id: &str) -> Result<()> {
        self.shared.check_open()?;
        let [hash, stale] = worker_keys(&self.shared.prefix);
        let mut conn = self.shared.conn.clone();
        redis::pipe()
            .atomic()
            .hdel(hash, id)
            .zrem(stale, id)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "deregistering a worker"))
    }

    /// One script call, which drops stale workers first. An entry that
    /// is not a worker's JSON (written by something else) is skipped.
    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.shared.check_open()?;
        let mut call = invocation(&LIST_WORKERS, &worker_keys(&self.shared.prefix));
        call.arg(millis_since_epoch(SystemTime::now()));
        let mut conn = self.shared.conn.clone();
        let entries: Vec<Vec<u8>> = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "listing workers"))?;
        let mut workers: Vec<WorkerInfo> = entries
            .iter()
            .filter_map(|json| serde_json::from_slice(json).ok())
            .collect();
        queue_core::stats::sort_workers(&mut workers);
        Ok(workers)
    }

    /// `paused` in the queue's `meta` hash, which the claim script reads.
    /// A queue that does not exist is `NotFound` (a mistyped name must
    /// not create a queue).
    async fn pause(&self, queue: &QueueName) -> Result<()> {
        self.set_paused(queue, &PAUSE, "pausing the queue").await
    }

    /// Clears `paused` and leaves a wake-up token, so blocked consumers
    /// claim at once.
    async fn resume(&self, queue: &QueueName) -> Result<()> {
        self.set_paused(queue, &RESUME, "resuming the queue").await
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
        let n: Vec<i64> = items[1..]
            .iter()
            .map(int_of)
            .collect::<Option<_>>()
            .filter(|n: &Vec<i64>| n.len() == 12)
            .ok_or_else(|| unexpected("ten counts, the paused flag and the oldest age"))?;
        let oldest = n[11];
        let n: Vec<u64> = n.iter().map(|&v| v.max(0) as u64).collect();
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
        stats.paused = n[10] == 1;
        stats.oldest_ready_age =
            (oldest >= 0).then(|| Duration::from_millis(oldest.unsigned_abs()));
        Ok(stats)
    }

    /// Letters in the order they were dead-lettered, after a sequence
    /// cursor: one script call per 1,000 letters, each returning only the
    /// envelope's first bytes when the query asks for a preview.
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        query.check()?;
        let ctx = self.ctx(queue);
        let mut after = query
            .after
            .as_ref()
            .map(dead_sequence)
            .transpose()?
            .unwrap_or(-1);
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut more = false;
        while letters.len() < query.limit {
            let count = (query.limit - letters.len()).min(SCRIPT_BATCH);
            let mut call = invocation(&SCRIPTS.dead, &ctx.keys);
            call.arg(after).arg(count).arg(
                query
                    .preview
                    .map_or(-1, |k| i64::try_from(k).unwrap_or(i64::MAX)),
            );
            let items = ctx.ok_reply(ctx.run(call, "listing dead letters").await?)?;
            more = items.get(1).and_then(int_of) == Some(1);
            let mut items = items.into_iter().skip(2);
            let before = letters.len();
            while let (
                Some(seq),
                Some(Value::BulkString(id)),
                Some(Value::BulkString(env)),
                Some(length),
                Some(info),
            ) = (
                items.next(),
                items.next(),
                items.next(),
                items.next(),
                items.next(),
            ) {
                let seq = int_of(&seq).ok_or_else(|| unexpected("a dead letter's sequence"))?;
                let length = int_of(&length)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| unexpected("a dead letter's length"))?;
                let info = bytes_of(&info).unwrap_or(b"{}");
                let letter = match dead_letter_of(&id, env, length, info) {
                    Some(letter) => letter,
                    None => self
                        .whole_dead_letter(&ctx, seq)
                        .await?
                        .ok_or_else(|| unexpected("a dead letter that was there a moment ago"))?,
                };
                letters.push(match query.preview {
                    Some(max) => letter.preview(max),
                    None => letter,
                });
                after = seq;
            }
            if letters.len() == before || !more {
                break;
            }
        }
        let next = more.then(|| DeadLetterCursor::new(after.to_string()));
        Ok(DeadLetterPage::new(letters, next))
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
                for chunk in ids.chunks(SCRIPT_BATCH) {
                    let mut call = invocation(&SCRIPTS.redrive, &ctx.keys);
                    call.arg("ids");
                    for id in chunk {
                        call.arg(&id.to_bytes()[..]);
                    }
                    moved += count(ctx.ok_reply(ctx.run(call, "redriving").await?)?)?;
                }
            }
            Redrive::All => {
                // Everything dead-lettered before the first call (by the
                // dead-letter sequence), in pages; letters that die again
                // meanwhile stay.
                let mut cutoff = Vec::new();
                loop {
                    let mut call = invocation(&SCRIPTS.redrive, &ctx.keys);
                    call.arg("all").arg(SCRIPT_BATCH).arg(&cutoff[..]);
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
            other => {
                return Err(queue_core::Error::unsupported(format!(
                    "redrive {other:?} is not supported by the redis backend"
                )))
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
    fn dead_letters_keep_undecodable_bytes() {
        let id = MessageId::new();
        let dead = dead_letter_of(
            &id.to_bytes(),
            b"junk".to_vec(),
            10,
            br#"{"reason":"decode","attempts":1,"at":"1700000000000","error":"bad magic"}"#,
        )
        .expect("raw bytes are a letter");
        assert_eq!(dead.message.id, id);
        assert!(dead.truncated() && dead.payload_len == 10);
        assert_eq!(dead.message.payload.as_ref(), b"junk");
        assert_eq!(dead.reason, DeadLetterReason::Decode);
        assert_eq!(dead.attempts, 1);
        assert_eq!(dead.last_error.as_deref(), Some("bad magic"));
        assert_eq!(
            dead.dead_lettered_at,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
        );
    }

    #[test]
    fn envelopes_cut_after_their_header_are_previews_and_inside_it_are_refused() {
        let message = Message::new(vec![b'x'; 1000]).with_header("h", "v".repeat(100));
        let whole = envelope::encode(&message).to_vec();
        let info = br#"{"reason":"max_attempts","attempts":3,"at":"1"}"#;
        let preview = dead_letter_of(&[], whole[..whole.len() - 900].to_vec(), whole.len(), info)
            .expect("a preview");
        assert_eq!(preview.message.id, message.id);
        assert_eq!(
            (preview.message.payload.len(), preview.payload_len),
            (100, 1000)
        );
        assert!(dead_letter_of(&[], whole[..60].to_vec(), whole.len(), info).is_none());
    }
}
