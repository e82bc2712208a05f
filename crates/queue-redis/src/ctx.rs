//! [`QueueCtx`]: one queue's keys on one backend, the script calls made
//! through it, and the settler that gathers the single acks and nacks of a
//! consumer's deliveries into one script call.

use std::sync::Arc;

use bytes::Bytes;

use queue_core::{Error, ErrorKind, QueueName, Result};
use redis::Value;

use crate::error::unexpected;
use crate::scripts::{
    array, bytes_of, invocation, lost_positions, now_ms, queue_keys, META, SCRIPTS, SCRIPT_BATCH,
};
use crate::shared::Shared;

/// One queue's keys and the backend they belong to.
#[derive(Debug)]
pub(crate) struct QueueCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: QueueName,
    pub(crate) keys: Vec<String>,
    /// Gathers the single settles of this consumer's deliveries.
    pub(crate) settler: Settler,
}

impl QueueCtx {
    pub(crate) fn new(shared: Arc<Shared>, name: &QueueName) -> QueueCtx {
        QueueCtx {
            keys: queue_keys(&shared.prefix, name),
            name: name.clone(),
            shared,
            settler: Default::default(),
        }
    }

    /// Make the queue exist (its metadata hash), as a producer or consumer does.
    pub(crate) async fn touch(&self) -> Result<()> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        redis::pipe()
            .cmd("HSETNX")
            .arg(&self.keys[META])
            .arg("created")
            .arg(now_ms())
            .ignore()
            .cmd("SADD")
            .arg(crate::scripts::registry_key(&self.shared.prefix))
            .arg(self.name.as_str())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "creating the queue"))
    }

    pub(crate) fn missing(&self) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!("queue {:?} does not exist", self.name.as_str()),
        )
    }

    /// Run `invocation` on the shared connection.
    pub(crate) async fn run(
        &self,
        invocation: redis::ScriptInvocation<'_>,
        doing: &str,
    ) -> Result<Value> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        invocation
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, doing))
    }

    /// The reply of a script that starts with `'ok'` or `'missing'`.
    pub(crate) fn ok_reply(&self, reply: Value) -> Result<Vec<Value>> {
        let items = array(reply)?;
        match items.first().and_then(bytes_of) {
            Some(b"ok") => Ok(items),
            Some(b"missing") => Err(self.missing()),
            _ => Err(unexpected("a status")),
        }
    }
}

/// One settle of a delivery, by its lease member.
#[derive(Debug)]
pub(crate) enum Settle {
    Ack(Bytes),
    /// Member, delay in ms, last error (empty: none).
    Nack(Bytes, u64, String),
}

type Reply = tokio::sync::oneshot::Sender<Result<bool>>;

/// Single acks and nacks of one consumer's deliveries, gathered while a
/// script call is in flight: concurrent settles (a worker's failing jobs,
/// say) cost one round trip per batch, and a lone settle goes at once.
#[derive(Debug, Default)]
pub(crate) struct Settler {
    pending: std::sync::Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    flushing: bool,
    acks: Vec<(Bytes, Reply)>,
    nacks: Vec<(Bytes, u64, String, Reply)>,
}

impl Settler {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queue `op` on the consumer's settler; `Ok(false)` if the lease was lost.
pub(crate) async fn settle(ctx: &Arc<QueueCtx>, op: Settle) -> Result<bool> {
    ctx.shared.check_open()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let start = {
        let mut pending = ctx.settler.lock();
        match op {
            Settle::Ack(member) => pending.acks.push((member, tx)),
            Settle::Nack(member, delay, error) => pending.nacks.push((member, delay, error, tx)),
        }
        !std::mem::replace(&mut pending.flushing, true)
    };
    if start {
        // A task of its own: a settle whose caller goes away still finishes,
        // and the others waiting on it are answered.
        tokio::spawn(flush(ctx.clone()));
    }
    rx.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Connection,
            "settling was interrupted (the runtime is shutting down)",
        ))
    })
}

/// Send every pending settle, up to [`SCRIPT_BATCH`] of a kind per script call, until
/// none is left.
async fn flush(ctx: Arc<QueueCtx>) {
    loop {
        let (acks, nacks) = {
            let mut pending = ctx.settler.lock();
            if pending.acks.is_empty() && pending.nacks.is_empty() {
                pending.flushing = false;
                return;
            }
            let acks = pending.acks.len().min(SCRIPT_BATCH);
            let nacks = pending.nacks.len().min(SCRIPT_BATCH);
            (
                pending.acks.drain(..acks).collect::<Vec<_>>(),
                pending.nacks.drain(..nacks).collect::<Vec<_>>(),
            )
        };
        if !acks.is_empty() {
            let mut call = invocation(&SCRIPTS.ack, &ctx.keys);
            for (member, _) in &acks {
                call.arg(member.as_ref());
            }
            let result = ctx.run(call, "acking").await.and_then(lost_positions);
            answer(result, acks.into_iter().map(|(_, reply)| reply));
        }
        if !nacks.is_empty() {
            let mut call = invocation(&SCRIPTS.nack, &ctx.keys);
            for (member, delay, error, _) in &nacks {
                call.arg(member.as_ref()).arg(*delay).arg(error.as_str());
            }
            let result = ctx.run(call, "nacking").await.and_then(lost_positions);
            answer(result, nacks.into_iter().map(|(.., reply)| reply));
        }
    }
}

/// Tell each waiting settle whether its lease was held (1-based `lost`
/// positions were not), or the error of the whole call.
fn answer(result: Result<Vec<usize>>, replies: impl Iterator<Item = Reply>) {
    match result {
        Ok(lost) => {
            let mut lost = lost.into_iter().peekable();
            for (i, reply) in replies.enumerate() {
                let held = lost.next_if_eq(&(i + 1)).is_none();
                let _ = reply.send(Ok(held));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone_kind()));
            }
        }
    }
}
