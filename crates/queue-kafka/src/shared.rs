//! [`Shared`]: what the backend, its producers, consumers, delay movers
//! and admin share: the settings, the producer and admin clients, the
//! group member and delay mover of each queue, the topics known to exist,
//! this process's totals, and sending a message where it goes now.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use queue_core::{
    Capabilities, CloseFlag, Error, Message, MessageId, ProcessTotals, ProcessTotalsMap, QueueName,
    Result,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use crate::config::Settings;
use crate::error::classify;
use crate::member::Member;
use crate::wire;

pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) capabilities: Capabilities,
    pub(crate) closed: CloseFlag,
    pub(crate) producer: FutureProducer,
    pub(crate) admin: AdminClient<DefaultClientContext>,
    /// One group member per queue, shared by its consumers.
    members: Mutex<HashMap<QueueName, Polled>>,
    /// The delay mover of each queue: member, its poller, the mover.
    movers: Mutex<HashMap<QueueName, Mover>>,
    /// Topics known to exist (created or found by this process).
    topics: Mutex<HashSet<String>>,
    counters: ProcessTotalsMap,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("servers", &self.settings.address())
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for (_, (_, poller)) in self
            .members
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            poller.abort();
        }
        for (_, (poller, task)) in self
            .movers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            poller.abort();
            task.abort();
        }
    }
}

/// A group member and the task polling it.
type Polled = (Arc<Member>, tokio::task::JoinHandle<()>);

/// A delay mover: its member's poller and the mover task (the task holds
/// the member).
pub(crate) type Mover = (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>);

impl Shared {
    pub(crate) fn new(
        settings: Settings,
        capabilities: Capabilities,
        producer: FutureProducer,
        admin: AdminClient<DefaultClientContext>,
    ) -> Shared {
        Shared {
            settings,
            capabilities,
            closed: CloseFlag::default(),
            producer,
            admin,
            members: Mutex::new(HashMap::new()),
            movers: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashSet::new()),
            counters: ProcessTotalsMap::default(),
        }
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        self.closed.check("the kafka backend")
    }

    pub(crate) fn counters(&self, queue: &QueueName) -> Arc<ProcessTotals> {
        self.counters.of(queue)
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.settings.request_timeout))
            .operation_timeout(Some(self.settings.request_timeout))
    }

    /// Create `topics` that this process has not seen yet (an existing
    /// topic is fine).
    pub(crate) async fn ensure_topics(&self, topics: &[String]) -> Result<()> {
        let missing: Vec<&String> = {
            let known = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            topics.iter().filter(|t| !known.contains(*t)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let (partitions, replication) = self.settings.partitions();
        // -1: the broker's default replication factor.
        let replication = replication.unwrap_or(-1);
        let retention = self.settings.retention_ms().to_string();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(t, partitions, TopicReplication::Fixed(replication))
                    .set("retention.ms", &retention)
            })
            .collect();
        let mut results = Vec::new();
        for one in &new {
            results.extend(
                self.admin
                    .create_topics([one], &self.admin_options())
                    .await
                    .map_err(|e| {
                        classify(
                            e,
                            &format!("creating topics on {}", self.settings.address()),
                        )
                    })?,
            );
        }
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::new(
                        crate::error::kind_of_code(code),
                        format!("creating topic {topic}: {code}"),
                    ))
                }
            }
        }
        // The producer learns the new topics' leaders now: left to its
        // first send, librdkafka's metadata refresh for an unknown topic
        // held that send about a second.
        for topic in &missing {
            let producer = self.producer.clone();
            let topic = (*topic).clone();
            let wait = self.settings.request_timeout;
            let learned = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(Some(&topic), wait)
            })
            .await;
            if let Ok(Err(e)) = learned {
                tracing::debug!(error = %e, "metadata of a new topic: the first send will ask again");
            }
        }
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(missing.into_iter().cloned());
        Ok(())
    }

    /// Forget `topics` (deleted).
    pub(crate) fn forget_topics(&self, topics: &[String]) {
        let mut known = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        for t in topics {
            known.remove(t);
        }
    }

    /// Every topic of `queue`: the queue, its dead letters, its retry tiers.
    pub(crate) fn topics_of(&self, queue: &QueueName) -> Vec<String> {
        let mut topics = vec![wire::topic(queue), wire::dlq(queue)];
        topics.extend(wire::tiers(queue));
        topics
    }

    /// The group of `queue`'s consumers.
    pub(crate) fn group(&self, queue: &QueueName) -> String {
        format!("{}.{queue}", self.settings.group())
    }

    /// The shared member of `queue`, joining the group on first use.
    pub(crate) fn member(&self, queue: &QueueName) -> Result<Arc<Member>> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((member, _)) = members.get(queue) {
            return Ok(member.clone());
        }
        let (member, poller) = Member::start(
            self.settings.client_config(),
            &self.group(queue),
            vec![wire::topic(queue)],
            self.settings.timeouts().1,
        )?;
        members.insert(queue.clone(), (member.clone(), poller));
        Ok(member)
    }

    /// Start `queue`'s delay mover with `start` unless it runs.
    pub(crate) fn start_movers(
        &self,
        queue: &QueueName,
        start: impl FnOnce() -> Result<Mover>,
    ) -> Result<()> {
        let mut movers = self.movers.lock().unwrap_or_else(|p| p.into_inner());
        if !movers.contains_key(queue) {
            movers.insert(queue.clone(), start()?);
        }
        Ok(())
    }

    /// The member of `queue` if one runs.
    pub(crate) fn running_member(&self, queue: &QueueName) -> Option<Arc<Member>> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .map(|(m, _)| m.clone())
    }

    /// Stop and forget `queue`'s member (the queue is being deleted).
    pub(crate) fn drop_member(&self, queue: &QueueName) {
        if let Some((_, poller)) = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue)
        {
            poller.abort();
        }
        if let Some((poller, task)) = self
            .movers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue)
        {
            poller.abort();
            task.abort();
        }
    }

    /// Produce `message` to `topic` and wait for the broker's
    /// acknowledgement (acks=all, idempotent).
    pub(crate) async fn produce(
        &self,
        topic: &str,
        message: &Message,
        headers: Option<OwnedHeaders>,
    ) -> Result<()> {
        self.start_produce(topic, message, headers)
            .outcome(topic, message.id)
            .await
    }

    /// Hand `message` to librdkafka now, in the caller's order (a batch's
    /// records are queued before any is awaited); [`Produced::outcome`]
    /// then waits for the broker's acknowledgement. A full local queue
    /// falls back to waiting for room, up to the request timeout.
    pub(crate) fn start_produce(
        &self,
        topic: &str,
        message: &Message,
        headers: Option<OwnedHeaders>,
    ) -> Produced {
        let value = wire::value(message);
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(&value[..]);
        if let Some(key) = message.ordering_key.as_deref() {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        // librdkafka copies the value: on the usual path nothing here
        // outlives the call.
        match self.producer.send_result(record) {
            Ok(delivery) => Produced::Queued(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                let producer = self.producer.clone();
                let timeout = self.settings.timeouts().1;
                let topic = topic.to_owned();
                let key = record.key.map(str::to_owned);
                let headers = record.headers;
                let id = message.id;
                Produced::Waiting(Box::pin(async move {
                    let mut record: FutureRecord<'_, str, [u8]> =
                        FutureRecord::to(&topic).payload(&value[..]);
                    if let Some(key) = key.as_deref() {
                        record = record.key(key);
                    }
                    if let Some(headers) = headers {
                        record = record.headers(headers);
                    }
                    producer
                        .send(record, timeout)
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| produce_failed(e, &topic, id))
                }))
            }
            Err((e, _)) => Produced::Failed(produce_failed(e, topic, message.id)),
        }
    }

    /// Send `message` where it goes now ([`wire::route`]): `queue`'s topic
    /// when due, else the retry tier for what remains of its delay.
    pub(crate) fn start_send(
        &self,
        queue: &QueueName,
        message: &Message,
        now: SystemTime,
    ) -> (Produced, String) {
        match wire::route(message, now) {
            wire::Route::Due => {
                let topic = wire::topic(queue);
                (self.start_produce(&topic, message, None), topic)
            }
            wire::Route::Tier { tier, release } => {
                let topic = wire::tier(queue, tier);
                let headers = wire::release_headers(release);
                (self.start_produce(&topic, message, Some(headers)), topic)
            }
        }
    }

    /// [`Shared::start_send`], and wait for the broker's acknowledgement.
    pub(crate) async fn send(&self, queue: &QueueName, message: &Message) -> Result<()> {
        let (produced, topic) = self.start_send(queue, message, SystemTime::now());
        produced.outcome(&topic, message.id).await
    }
}

/// A record handed to librdkafka ([`Shared::start_produce`]), not yet
/// acknowledged. A plain enum rather than a boxed future: a batch of a
/// thousand records makes no allocation per record here.
pub(crate) enum Produced {
    /// In librdkafka's queue; the acknowledgement comes on this.
    Queued(DeliveryFuture),
    /// librdkafka's queue was full: waits for room, then for the
    /// acknowledgement.
    Waiting(BoxFuture<'static, Result<()>>),
    /// Refused before it was queued.
    Failed(Error),
}

impl Produced {
    /// Wait for the broker's acknowledgement of message `id` sent to
    /// `topic` (both name the message in an error).
    pub(crate) async fn outcome(self, topic: &str, id: MessageId) -> Result<()> {
        match self {
            Produced::Queued(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(produce_failed(e, topic, id)),
                Err(_) => Err(produce_failed(KafkaError::Canceled, topic, id)),
            },
            Produced::Waiting(waiting) => waiting.await,
            Produced::Failed(e) => Err(e),
        }
    }
}

/// A failed send of message `id` to `topic`, classified.
fn produce_failed(e: KafkaError, topic: &str, id: MessageId) -> Error {
    classify(e, &format!("sending message {id} to {topic}"))
}
