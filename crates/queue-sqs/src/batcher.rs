//! Batch calls, and the batcher that gathers concurrent settles into them.
//!
//! Every delete, visibility change and copy a delivery's settle needs goes
//! through [`Batcher::submit`]: the batcher task keeps what arrives apart
//! by queue and kind, sends a `DeleteMessageBatch`,
//! `ChangeMessageVisibilityBatch` or `SendMessageBatch` call as soon as
//! ten entries of one wait, sends fewer once the first of them has waited
//! the settle linger, and answers each settle with its own entry's
//! outcome.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use futures_util::StreamExt;
use queue_core::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, oneshot};

use crate::client::Sqs;
use crate::error::{classify, entry_error};
use crate::wire::Outgoing;
use crate::SQS_BATCH;

/// Most batch calls one [`run`] has in flight at once.
pub(crate) const MAX_CONCURRENT_CALLS: usize = 8;

/// One entry of a batch call.
#[derive(Debug)]
pub(crate) enum Op {
    /// Delete the message of this receipt handle.
    Delete(String),
    /// Set the visibility timeout of this receipt handle, in seconds.
    Visibility(String, i32),
    /// Send this message.
    Send(Box<Outgoing>),
}

impl Op {
    fn kind(&self) -> u8 {
        match self {
            Op::Delete(_) => 0,
            Op::Visibility(..) => 1,
            Op::Send(_) => 2,
        }
    }
}

/// Run `ops` against queue `url` in batch calls of up to ten entries
/// (sends also within the queue's size limit), all calls concurrently.
/// Returns each op's outcome, in order.
pub(crate) async fn run(sqs: &Sqs, url: &str, ops: Vec<Op>) -> Vec<Result<()>> {
    let len = ops.len();
    let mut chunks: Vec<Vec<(usize, Op)>> = Vec::new();
    let mut open: [Option<usize>; 3] = [None; 3];
    let mut bytes = [0usize; 3];
    for (i, op) in ops.into_iter().enumerate() {
        let kind = usize::from(op.kind());
        let size = match &op {
            Op::Send(out) => out.size(),
            _ => 0,
        };
        let fits = open[kind].is_some_and(|c| {
            chunks[c].len() < SQS_BATCH && bytes[kind] + size <= sqs.settings.max_message
        });
        if !fits {
            open[kind] = Some(chunks.len());
            chunks.push(Vec::with_capacity(SQS_BATCH));
            bytes[kind] = 0;
        }
        bytes[kind] += size;
        let chunk = open[kind].unwrap_or_default();
        chunks[chunk].push((i, op));
    }
    let calls = chunks.into_iter().map(|chunk| async move {
        let (indexes, ops): (Vec<usize>, Vec<Op>) = chunk.into_iter().unzip();
        (indexes, call(sqs, url, ops).await)
    });
    let done: Vec<_> = futures_util::stream::iter(calls)
        .buffer_unordered(MAX_CONCURRENT_CALLS)
        .collect()
        .await;
    let mut outcomes: Vec<Option<Result<()>>> = (0..len).map(|_| None).collect();
    for (indexes, results) in done {
        for (i, result) in indexes.into_iter().zip(results) {
            outcomes[i] = Some(result);
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Error::new(ErrorKind::Other, "batch entry lost"))))
        .collect()
}

/// One batch call of up to ten ops of one kind.
async fn call(sqs: &Sqs, url: &str, ops: Vec<Op>) -> Vec<Result<()>> {
    let address = sqs.address();
    let len = ops.len();
    let doing = match ops.first() {
        Some(Op::Delete(_)) => "deleting messages (DeleteMessageBatch)",
        Some(Op::Visibility(..)) => "changing visibility (ChangeMessageVisibilityBatch)",
        _ => "sending messages (SendMessageBatch)",
    };
    let failed: std::result::Result<Vec<BatchResultErrorEntry>, Error> = match ops.first() {
        None => return Vec::new(),
        Some(Op::Delete(_)) => match entries(&ops, |i, op| match op {
            Op::Delete(receipt) => Some(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .map_err(built),
            ),
            _ => None,
        }) {
            Err(e) => Err(e),
            Ok(entries) => sqs
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map(|out| out.failed().to_vec())
                .map_err(|e| classify(e, doing, address)),
        },
        Some(Op::Visibility(..)) => match entries(&ops, |i, op| match op {
            Op::Visibility(receipt, secs) => Some(
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(*secs)
                    .build()
                    .map_err(built),
            ),
            _ => None,
        }) {
            Err(e) => Err(e),
            Ok(entries) => sqs
                .client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map(|out| out.failed().to_vec())
                .map_err(|e| classify(e, doing, address)),
        },
        Some(Op::Send(_)) => match entries(&ops, |i, op| match op {
            Op::Send(out) => Some(out.entry(i)),
            _ => None,
        }) {
            Err(e) => Err(e),
            Ok(entries) => sqs
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map(|out| out.failed().to_vec())
                .map_err(|e| classify(e, doing, address)),
        },
    };
    match failed {
        Err(e) => (0..len).map(|_| Err(e.clone_kind())).collect(),
        Ok(failed) => {
            let mut results: Vec<Result<()>> = (0..len).map(|_| Ok(())).collect();
            for entry in failed {
                if let Some(slot) = entry
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *slot = Err(entry_error(entry.code(), entry.message(), doing, address));
                }
            }
            results
        }
    }
}

/// The request entries of `ops`, numbered by position: every op must make
/// one (a chunk holds one kind), or the whole call fails rather than
/// reporting an entry it never sent as done.
fn entries<T>(ops: &[Op], make: impl Fn(usize, &Op) -> Option<Result<T>>) -> Result<Vec<T>> {
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            make(i, op).unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Other,
                    "a batch call mixed kinds of entries",
                ))
            })
        })
        .collect()
}

/// An SDK builder's refusal (a required field missing) as an error.
fn built(e: aws_smithy_types::error::operation::BuildError) -> Error {
    Error::new(ErrorKind::Other, format!("building a batch entry: {e}")).with_source(e)
}

type Job = (Arc<str>, Op, oneshot::Sender<Result<()>>);

/// Gathers settles from concurrent deliveries into batch calls.
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Start the batcher task; it ends when the backend (`sqs`) is gone.
    pub(crate) fn start(sqs: &Arc<Sqs>) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(Arc::downgrade(sqs), rx));
        Batcher { tx }
    }

    /// Run `op` on queue `url` in the next batch call.
    pub(crate) async fn submit(&self, url: &Arc<str>, op: Op) -> Result<()> {
        let (done, outcome) = oneshot::channel();
        self.tx
            .send((url.clone(), op, done))
            .map_err(|_| Error::closed("the sqs backend"))?;
        outcome
            .await
            .unwrap_or_else(|_| Err(Error::closed("the sqs backend")))
    }
}

/// Settles waiting for their call: one queue's entries of one kind, and
/// when the first of them arrived.
struct Open {
    since: tokio::time::Instant,
    jobs: Vec<Job>,
}

/// Gather settles into calls. Entries wait by queue and kind (one call
/// holds one of each): ten waiting make a call at once; fewer go when the
/// first of them has waited the settle linger. What is already queued is
/// taken in before any deadline counts, so a burst fills whole calls and
/// a remainder waits for the next settles rather than making a short call
/// of its own.
async fn gather(sqs: Weak<Sqs>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut open: HashMap<(Arc<str>, u8), Open> = HashMap::new();
    while let Some(linger) = sqs.upgrade().map(|s| s.settings.settle_linger) {
        let due = open.values().map(|o| o.since + linger).min();
        let received = match due {
            None => rx.recv().await,
            Some(due) => tokio::select! {
                biased;
                job = rx.recv() => job,
                () = tokio::time::sleep_until(due) => {
                    let now = tokio::time::Instant::now();
                    let expired: Vec<_> = open
                        .iter()
                        .filter(|(_, o)| o.since + linger <= now)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in expired {
                        if let Some(o) = open.remove(&key) {
                            send(&sqs, key.0, o.jobs);
                        }
                    }
                    continue;
                }
            },
        };
        let Some(job) = received else {
            // Every sender is gone: settle what waits, then stop.
            for ((url, _), o) in open.drain() {
                send(&sqs, url, o.jobs);
            }
            break;
        };
        let key = (job.0.clone(), job.1.kind());
        let entry = open.entry(key.clone()).or_insert_with(|| Open {
            since: tokio::time::Instant::now(),
            jobs: Vec::with_capacity(SQS_BATCH),
        });
        entry.jobs.push(job);
        if entry.jobs.len() >= SQS_BATCH {
            if let Some(o) = open.remove(&key) {
                send(&sqs, key.0, o.jobs);
            }
        }
    }
}

/// Make the call for `jobs` (one queue's, one kind) on a task of its
/// own; with the backend gone, each settle hears that it is closed (its
/// sender dropped).
fn send(sqs: &Weak<Sqs>, url: Arc<str>, jobs: Vec<Job>) {
    if let Some(sqs) = sqs.upgrade() {
        tokio::spawn(flush(sqs, url, jobs));
    }
}

/// Run the ops of `jobs` on queue `url` and answer each settle.
async fn flush(sqs: Arc<Sqs>, url: Arc<str>, jobs: Vec<Job>) {
    let (ops, dones): (Vec<Op>, Vec<_>) = jobs.into_iter().map(|(_, op, done)| (op, done)).unzip();
    let results = run(&sqs, &url, ops).await;
    for (done, result) in dones.into_iter().zip(results) {
        let _ = done.send(result);
    }
}
