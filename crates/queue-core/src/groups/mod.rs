//! Group fairness on backends that deliver in their own order (RabbitMQ,
//! SQS, Kafka), with a [coordination store](crate::coordination).
//!
//! Those brokers hand out a queue's messages in the order they hold them,
//! so a group with 100,000 queued jobs would hold back a group with 10.
//! [`with_store`] wraps such a backend so that it takes turns anyway:
//!
//! - **Sending.** A message with a [group](crate::Message::with_group)
//!   goes to a queue of its group's own, named after the queue and a hash
//!   of the group (`<queue>__<16 hex digits>`, the queue's name cut to 46
//!   characters), created with the queue's options on the group's first
//!   send. The group is noted in the store (space `groups.<queue>`, the
//!   hash as key, the group as value); messages with no group go to the
//!   queue itself.
//! - **Receiving.** The consumers of a queue in one process share one
//!   reader per queue: the queue itself and every group queue the store
//!   lists (looked at again every second). Each reader keeps as many
//!   deliveries ready as a receive asks for (at most 32; none once every
//!   consumer stopped waiting), and `receive` hands them out one group
//!   at a time (one round per call while several groups have jobs): the
//!   jobs with no group count as one more group. A delivery whose lease
//!   ends within a second goes back rather than out. A group queue that
//!   fails to read does not hold the others back: a receive reports it
//!   only when the queue's own reader, or every reader, fails. A delivery comes back
//!   with its group and the queue's name; settling it settles it in its
//!   group queue, so a retry keeps its group's place.
//! - **Group limits.** With [`ConsumerOptions::group_limit`], a group's
//!   reader takes one of the group's slots in the store
//!   ([`Coordination::acquire_slot`]) before each delivery and the
//!   delivery gives it back when settled (renewed with its lease, freed
//!   by the store when the holder dies). A full group is looked at again
//!   when a delivery of this consumer is settled, and every 100 ms for
//!   slots freed by other processes.
//! - **Admin.** Stats, purge, pause, resume, dead letters and redrive of
//!   the queue take in its group queues; deleting the queue deletes them
//!   and their records; the queue list leaves them out.
//!
//! What it costs: a broker queue and a consumer per group that has ever
//! sent (on Kafka a topic and a consumer group each, which joins in a few
//! seconds), a store write on a producer's first message of each group,
//! and a store list per consumer each second. Dead letters are listed
//! group queue by group queue (oldest first within each).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! use std::sync::Arc;
//! use queue_core::{groups, Backend, MemoryBackend, MemoryCoordination};
//! // The memory backend takes turns natively: it comes back as it was.
//! let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
//! let grouped = groups::with_store(backend.clone(), Arc::new(MemoryCoordination::new()))?;
//! assert!(Arc::ptr_eq(&backend, &grouped));
//! # Ok(()) }
//! ```

mod consumer;
mod producer;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::capabilities::{Capabilities, Coordinated};
use crate::coordination::Coordination;
use crate::dead_letters::{DeadLetterCursor, DeadLetterPage, DeadLetterQuery};
use crate::error::{Error, ErrorKind, Result};
use crate::message::QueueName;
use crate::stats::{ConsumerOptions, HealthStatus, QueueOptions, QueueStats, Redrive, WorkerInfo};
use crate::traits::{Admin, Backend, Consumer, Producer};

/// Where the queues' options are kept (by queue), so a group queue is
/// created like its queue.
const OPTIONS_SPACE: &str = "group-options";

/// Where the worker registry is kept for a backend that keeps none (by
/// worker id, the [`WorkerInfo`] as JSON).
const WORKERS_SPACE: &str = "workers";

/// The longest part of a queue's name kept in its group queues' names.
const NAME_PART: usize = 46;

/// `backend` with what it keeps no state for kept in `store`: itself
/// where it keeps everything (memory, Redis, PostgreSQL), else wrapped
/// (RabbitMQ, SQS, Kafka) so that
///
/// - groups take turns through queues of their own, with `store` listing
///   them (see the [module docs](self));
/// - the worker registry lives in `store` (space `workers`), so `queue
///   workers`, the dashboard's worker list and its fleet-wide rates see
///   every worker of every process;
/// - `store` is its [coordination store](Backend::coordination), so
///   schedules, rate limits and fleet-wide concurrency need no more
///   configuration.
///
/// A backend whose groups are [`Coordinated::Unsupported`] is
/// [`ErrorKind::Unsupported`].
pub fn with_store(
    backend: Arc<dyn Backend>,
    store: Arc<dyn Coordination>,
) -> Result<Arc<dyn Backend>> {
    let caps = backend.capabilities();
    match caps.group_fairness {
        Coordinated::Native if caps.worker_registry.is_available() => Ok(backend),
        Coordinated::Native | Coordinated::NeedsStore => {
            Ok(Arc::new(StoreBacked::new(backend, store)))
        }
        Coordinated::Unsupported => Err(caps.unsupported("group fairness")),
    }
}

/// The name of `queue`'s queue for the group whose hash is `key`.
pub fn group_queue(queue: &QueueName, key: &str) -> QueueName {
    let name = queue.as_str();
    let part = &name[..name.len().min(NAME_PART)];
    QueueName::new(format!("{part}__{key}")).expect("a queue name cut, `__` and hex digits")
}

/// Whether `name` is a group queue's ([`group_queue`]): it ends in `__`
/// and 16 lowercase hex digits.
pub fn is_group_queue(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > 18
        && name.ends_with(|c: char| c.is_ascii_hexdigit())
        && &bytes[bytes.len() - 18..bytes.len() - 16] == b"__"
        && bytes[bytes.len() - 16..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The hash of `group` in `queue`: 16 hex digits of FNV-1a, the same in
/// every process and build ([`group_queue`] names its queue).
pub fn group_key(queue: &QueueName, group: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in queue
        .as_str()
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(group.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The store space listing `queue`'s groups.
fn groups_space(queue: &QueueName) -> String {
    format!("groups.{queue}")
}

/// The backend and store a wrapper's parts share.
pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) store: Arc<dyn Coordination>,
    /// The readers of this process's consumers.
    pub(crate) hubs: consumer::Hubs,
}

impl Shared {
    /// `queue`'s groups, by hash, in hash order.
    pub(crate) async fn groups(&self, queue: &QueueName) -> Result<Vec<(String, Arc<str>)>> {
        let mut groups: Vec<(String, Arc<str>)> = self
            .store
            .list(&groups_space(queue))
            .await?
            .into_iter()
            .map(|(key, value)| (key, Arc::from(String::from_utf8_lossy(&value).as_ref())))
            .collect();
        groups.sort();
        Ok(groups)
    }

    /// Note `group` (hash `key`) as one of `queue`'s.
    pub(crate) async fn note_group(&self, queue: &QueueName, key: &str, group: &str) -> Result<()> {
        self.store
            .put(
                &groups_space(queue),
                key,
                Bytes::copy_from_slice(group.as_bytes()),
            )
            .await
    }

    /// The options `queue` was made with (the default if none were noted).
    pub(crate) async fn options(&self, queue: &QueueName) -> Result<QueueOptions> {
        match self.store.get(OPTIONS_SPACE, queue.as_str()).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Decode,
                    format!("the options noted for queue {queue} do not decode: {e}"),
                )
            }),
            None => Ok(QueueOptions::default()),
        }
    }

    /// The queue and its group queues, the queue first.
    async fn all_queues(&self, queue: &QueueName) -> Result<Vec<QueueName>> {
        let mut queues = vec![queue.clone()];
        queues.extend(
            self.groups(queue)
                .await?
                .into_iter()
                .map(|(key, _)| group_queue(queue, &key)),
        );
        Ok(queues)
    }
}

/// A backend whose groups take turns through queues of their own and
/// whose worker registry is kept in a coordination store ([`with_store`]).
pub struct StoreBacked {
    shared: Arc<Shared>,
    capabilities: Capabilities,
}

impl StoreBacked {
    fn new(backend: Arc<dyn Backend>, store: Arc<dyn Coordination>) -> StoreBacked {
        let mut capabilities = backend.capabilities().clone();
        capabilities.group_fairness = Coordinated::Native;
        // A batch of several groups is sent group by group, so part of it
        // may be accepted.
        capabilities.partial_batches = true;
        if !capabilities.worker_registry.is_available() {
            capabilities.worker_registry = crate::capabilities::Support::Emulated;
        }
        StoreBacked {
            shared: Arc::new(Shared {
                backend,
                store,
                hubs: Default::default(),
            }),
            capabilities,
        }
    }

    fn inner(&self) -> &dyn Admin {
        self.shared.backend.admin()
    }

    /// Whether the worker registry is kept in the store (the backend
    /// keeps none).
    fn registry_in_store(&self) -> bool {
        !self
            .shared
            .backend
            .capabilities()
            .worker_registry
            .is_available()
    }
}

impl fmt::Debug for StoreBacked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreBacked")
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for StoreBacked {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(
            producer::GroupedProducer::new(self.shared.clone(), queue).await?,
        ))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(
            consumer::GroupedConsumer::start(self.shared.clone(), queue, options).await?,
        ))
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    async fn close(&self) -> Result<()> {
        self.shared.backend.close().await
    }

    fn default_job_store(&self) -> Option<Arc<dyn crate::store::JobStore>> {
        self.shared.backend.default_job_store()
    }

    fn coordination(&self) -> Option<Arc<dyn Coordination>> {
        Some(self.shared.store.clone())
    }
}

/// A dead-letter cursor of a grouped queue: the queue it is in (`-` for
/// the queue itself, else its group's hash) and that queue's own cursor.
fn split_cursor(cursor: &DeadLetterCursor) -> Result<(String, Option<DeadLetterCursor>)> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            "dead-letter cursor: not one of this grouped queue's (pass it back as it came)",
        )
    };
    let (place, inner) = cursor.as_str().split_once('/').ok_or_else(bad)?;
    if place != "-" && !(place.len() == 16 && place.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(bad());
    }
    let inner = (!inner.is_empty()).then(|| DeadLetterCursor::new(inner));
    Ok((place.to_owned(), inner))
}

#[async_trait]
impl Admin for StoreBacked {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        options.check()?;
        self.inner().ensure_queue(queue, options).await?;
        let noted = serde_json::to_vec(options).map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!("queue options of {queue} do not encode: {e}"),
            )
        })?;
        self.shared
            .store
            .put(OPTIONS_SPACE, queue.as_str(), Bytes::from(noted))
            .await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        let space = groups_space(queue);
        for (key, _) in self.shared.groups(queue).await? {
            match self.inner().delete_queue(&group_queue(queue, &key)).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.shared.store.remove(&space, &key).await?;
        }
        self.inner().delete_queue(queue).await?;
        self.shared
            .store
            .remove(OPTIONS_SPACE, queue.as_str())
            .await?;
        Ok(())
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let mut purged = 0;
        for each in self.shared.all_queues(queue).await? {
            purged += self.inner().purge(&each).await?;
        }
        Ok(purged)
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let queues = self.shared.all_queues(queue).await?;
        let mut total = self.inner().stats(queue).await?;
        for each in &queues[1..] {
            let part = self.inner().stats(each).await?;
            total.ready += part.ready;
            total.delayed += part.delayed;
            total.in_flight += part.in_flight;
            total.dead += part.dead;
            total.enqueued_total += part.enqueued_total;
            total.acked_total += part.acked_total;
            total.retried_total += part.retried_total;
            total.dead_lettered_total += part.dead_lettered_total;
            total.expired_total += part.expired_total;
            total.deduplicated_total += part.deduplicated_total;
            total.oldest_ready_age = total.oldest_ready_age.max(part.oldest_ready_age);
        }
        Ok(total)
    }

    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        query.check()?;
        // The queue itself (`-`), then its groups in hash order.
        let groups = self.shared.groups(queue).await?;
        let mut places: Vec<(String, QueueName, Option<Arc<str>>)> =
            vec![("-".to_owned(), queue.clone(), None)];
        places.extend(
            groups
                .into_iter()
                .map(|(key, group)| (key.clone(), group_queue(queue, &key), Some(group))),
        );
        let (mut at, mut after) = match &query.after {
            Some(cursor) => {
                let (place, inner) = split_cursor(cursor)?;
                // A group removed since: carry on with the next one.
                let at = places
                    .iter()
                    .position(|(key, _, _)| *key >= place)
                    .unwrap_or(places.len());
                let inner = if places.get(at).is_some_and(|(key, _, _)| *key == place) {
                    inner
                } else {
                    None
                };
                (at, inner)
            }
            None => (0, None),
        };
        let mut letters = Vec::new();
        while at < places.len() && letters.len() < query.limit {
            let (key, name, group) = &places[at];
            let mut inner_query = query.clone();
            inner_query.after = after.take();
            inner_query.limit = query.limit - letters.len();
            let page = self.inner().dead_letter_page(name, &inner_query).await?;
            for mut letter in page.letters {
                if let Some(group) = group {
                    letter
                        .message
                        .headers
                        .insert(crate::job::HEADER_GROUP, group.as_ref());
                }
                letters.push(letter);
            }
            match page.next {
                Some(next) => {
                    return Ok(DeadLetterPage::new(
                        letters,
                        Some(DeadLetterCursor::new(format!("{key}/{}", next.as_str()))),
                    ))
                }
                None => at += 1,
            }
        }
        let next = places
            .get(at)
            .filter(|_| letters.len() >= query.limit)
            .map(|(key, _, _)| DeadLetterCursor::new(format!("{key}/")));
        Ok(DeadLetterPage::new(letters, next))
    }

    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        let mut moved = 0;
        for each in self.shared.all_queues(queue).await? {
            moved += self.inner().redrive(&each, which.clone()).await?;
        }
        Ok(moved)
    }

    async fn health(&self) -> HealthStatus {
        self.inner().health().await
    }

    async fn queues(&self) -> Result<Vec<QueueName>> {
        let mut queues = self.inner().queues().await?;
        queues.retain(|q| !is_group_queue(q.as_str()));
        Ok(queues)
    }

    async fn pause(&self, queue: &QueueName) -> Result<()> {
        for each in self.shared.all_queues(queue).await? {
            self.inner().pause(&each).await?;
        }
        Ok(())
    }

    async fn resume(&self, queue: &QueueName) -> Result<()> {
        for each in self.shared.all_queues(queue).await? {
            self.inner().resume(&each).await?;
        }
        Ok(())
    }

    async fn register_worker(&self, worker: &WorkerInfo) -> Result<()> {
        if self.registry_in_store() {
            let record = serde_json::to_vec(worker).map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("worker record does not encode: {e}"),
                )
            })?;
            return self
                .shared
                .store
                .put(WORKERS_SPACE, &worker.id, Bytes::from(record))
                .await;
        }
        self.inner().register_worker(worker).await
    }

    async fn deregister_worker(&self, id: &str) -> Result<()> {
        if self.registry_in_store() {
            return self.shared.store.remove(WORKERS_SPACE, id).await.map(drop);
        }
        self.inner().deregister_worker(id).await
    }

    /// The workers whose last heartbeat is within their
    /// [`ttl`](WorkerInfo::ttl); silent ones are removed from the store
    /// as they are found.
    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        if !self.registry_in_store() {
            return self.inner().workers().await;
        }
        let now = std::time::SystemTime::now();
        let mut workers = Vec::new();
        for (id, record) in self.shared.store.list(WORKERS_SPACE).await? {
            let alive = serde_json::from_slice::<WorkerInfo>(&record)
                .ok()
                .filter(|w| w.last_heartbeat + w.ttl() >= now);
            match alive {
                Some(worker) => workers.push(worker),
                None => {
                    let _ = self.shared.store.remove(WORKERS_SPACE, &id).await;
                }
            }
        }
        crate::stats::sort_workers(&mut workers);
        Ok(workers)
    }
}

#[cfg(test)]
mod tests;
