//! Queue administration: topics, stats from watermarks and committed
//! offsets, and dead letters read back from `<topic>.dlq`.
//!
//! A dead-letter topic keeps every record (nothing is deleted from a
//! log), so the backend keeps a cursor: the committed offsets of the group
//! `<group>.<queue>.dlq`. A redrive of every dead letter sends each on to
//! the queue and moves the cursor past them; a redrive by id sends those
//! on and appends a marker record naming each, so listings skip them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{
    dead_letters::TimeOrderedPage, Admin, DeadLetter, DeadLetterPage, DeadLetterQuery, Error,
    ErrorKind, HealthStatus, MessageId, QueueName, QueueOptions, QueueStats, Redrive, Result,
};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::backend::KafkaBackend;
use crate::error::classify;
use crate::shared::Shared;
use crate::wire;

/// Header of a redrive marker in a dead-letter topic: the redriven id.
const HEADER_REDRIVEN: &str = "queue-redriven";

/// Where one partition of a topic stands for one group.
#[derive(Debug, Clone, Copy)]
struct Position {
    partition: i32,
    /// The group's committed offset (the low watermark if none).
    committed: i64,
    high: i64,
}

impl Shared {
    /// The positions of `group` on every partition of `topic` (blocking
    /// broker calls, run off the async threads).
    async fn positions(&self, topic: &str, group: &str) -> Result<Vec<Position>> {
        let mut all = self.positions_of(&[topic.to_owned()], group).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The positions of `group` on every partition of each of `topics`
    /// (in order), with one client.
    async fn positions_of(&self, topics: &[String], group: &str) -> Result<Vec<Vec<Position>>> {
        let mut config = self.settings.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let timeout = self.settings.timeouts().1;
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || -> Result<Vec<Vec<Position>>> {
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| classify(e, "creating a reader"))?;
            let mut tpl = TopicPartitionList::new();
            let mut partitions_of = Vec::with_capacity(topics.len());
            for topic in &topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), timeout)
                    .map_err(|e| classify(e, &format!("reading the metadata of {topic}")))?;
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if partitions.is_empty() {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("topic {topic} does not exist"),
                    ));
                }
                for p in &partitions {
                    tpl.add_partition(topic, *p);
                }
                partitions_of.push(partitions);
            }
            let committed = consumer.committed_offsets(tpl, timeout).map_err(|e| {
                classify(
                    e,
                    &format!("reading committed offsets of {}", topics.join(", ")),
                )
            })?;
            let mut out = Vec::with_capacity(topics.len());
            for (topic, partitions) in topics.iter().zip(partitions_of) {
                let mut positions = Vec::with_capacity(partitions.len());
                for p in partitions {
                    let (low, high) = consumer
                        .fetch_watermarks(topic, p, timeout)
                        .map_err(|e| classify(e, &format!("reading watermarks of {topic}")))?;
                    let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => low,
                    };
                    positions.push(Position {
                        partition: p,
                        committed: committed.clamp(low, high),
                        high,
                    });
                }
                out.push(positions);
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("reader task failed: {e}")))?
    }

    /// Records of `group` on `topic` not yet consumed.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        self.lag_of(&[topic.to_owned()], group).await
    }

    /// Records of `group` on all of `topics` not yet consumed.
    async fn lag_of(&self, topics: &[String], group: &str) -> Result<u64> {
        Ok(self
            .positions_of(topics, group)
            .await?
            .iter()
            .flatten()
            .map(|p| u64::try_from(p.high - p.committed).unwrap_or(0))
            .sum())
    }

    /// Read `queue`'s dead-letter topic from the cursor to `positions`'
    /// ends, calling `visit` on each record in turn (on a blocking thread:
    /// rdkafka's consumer is synchronous); what `visit` keeps is all that
    /// stays in memory.
    async fn scan_dead<S, F>(
        &self,
        queue: &QueueName,
        positions: &[Position],
        state: S,
        mut visit: F,
    ) -> Result<S>
    where
        S: Send + 'static,
        F: FnMut(&mut S, &rdkafka::message::BorrowedMessage<'_>) + Send + 'static,
    {
        let topic = wire::dlq(queue);
        let mut config = self.settings.client_config();
        config
            .set("group.id", format!("{}.dlq", self.group(queue)))
            .set("enable.auto.commit", "false");
        let timeout = self.settings.timeouts().1;
        let read = positions.to_vec();
        tokio::task::spawn_blocking(move || -> Result<S> {
            let mut state = state;
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| classify(e, "creating a dead-letter reader"))?;
            let mut tpl = TopicPartitionList::new();
            let mut left: HashMap<i32, i64> = HashMap::new();
            for p in read.iter().filter(|p| p.committed < p.high) {
                tpl.add_partition_offset(&topic, p.partition, Offset::Offset(p.committed))
                    .map_err(|e| classify(e, "assigning the dead-letter topic"))?;
                left.insert(p.partition, p.high);
            }
            if left.is_empty() {
                return Ok(state);
            }
            consumer
                .assign(&tpl)
                .map_err(|e| classify(e, "assigning the dead-letter topic"))?;
            let until = std::time::Instant::now() + timeout;
            while !left.is_empty() && std::time::Instant::now() < until {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        let (p, o) = (m.partition(), m.offset());
                        if left.get(&p).is_some_and(|high| o < *high) {
                            visit(&mut state, &m);
                        }
                        if left.get(&p).is_some_and(|high| o + 1 >= *high) {
                            left.remove(&p);
                        }
                    }
                    Some(Err(e)) => return Err(classify(e, "reading the dead-letter topic")),
                    None => {}
                }
            }
            if !left.is_empty() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("reading the dead-letter topic {topic} did not finish in {timeout:?}"),
                ));
            }
            Ok(state)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("reader task failed: {e}")))?
    }

    /// The positions of `queue`'s dead-letter topic: from the cursor to
    /// the ends.
    async fn dead_positions(&self, queue: &QueueName) -> Result<Vec<Position>> {
        let group = format!("{}.dlq", self.group(queue));
        self.positions(&wire::dlq(queue), &group).await
    }

    /// The ids of letters redriven by id (a marker record each, written
    /// after the letter).
    async fn redriven_ids(
        &self,
        queue: &QueueName,
        positions: &[Position],
    ) -> Result<HashSet<String>> {
        self.scan_dead(queue, positions, HashSet::new(), |redriven, record| {
            if let Some(id) = redrive_marker(record) {
                redriven.insert(id);
            }
        })
        .await
    }

    /// Every dead letter past the cursor and not redriven by id, with the
    /// positions read up to.
    async fn read_dead(&self, queue: &QueueName) -> Result<(Vec<DeadLetter>, Vec<Position>)> {
        let positions = self.dead_positions(queue).await?;
        let (mut letters, redriven) = self
            .scan_dead(
                queue,
                &positions,
                (Vec::new(), HashSet::new()),
                |(letters, redriven): &mut (Vec<DeadLetter>, HashSet<String>), record| {
                    match redrive_marker(record) {
                        Some(id) => {
                            redriven.insert(id);
                        }
                        None => letters.push(wire::dead_letter(record)),
                    }
                },
            )
            .await?;
        letters.retain(|l: &DeadLetter| !redriven.contains(&l.message.id.to_string()));
        Ok((letters, positions))
    }

    /// Move the dead-letter cursor of `queue` to `positions`' ends.
    async fn commit_dead(&self, queue: &QueueName, positions: &[Position]) -> Result<()> {
        let topic = wire::dlq(queue);
        let mut config = self.settings.client_config();
        config
            .set("group.id", format!("{}.dlq", self.group(queue)))
            .set("enable.auto.commit", "false");
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            tpl.add_partition_offset(&topic, p.partition, Offset::Offset(p.high))
                .map_err(|e| classify(e, "committing the dead-letter cursor"))?;
        }
        tokio::task::spawn_blocking(move || -> Result<()> {
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| classify(e, "creating a dead-letter reader"))?;
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| classify(e, &format!("committing the cursor of {topic}")))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("commit task failed: {e}")))?
    }
}

/// The id a redrive marker record names, if `record` is one.
fn redrive_marker(record: &impl rdkafka::Message) -> Option<String> {
    record
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == HEADER_REDRIVEN))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[async_trait]
impl Admin for KafkaBackend {
    async fn ensure_queue(&self, queue: &QueueName, _options: &QueueOptions) -> Result<()> {
        self.shared.check_open()?;
        self.shared
            .ensure_topics(&self.shared.topics_of(queue))
            .await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.shared.check_open()?;
        self.shared.drop_member(queue);
        let topics = self.shared.topics_of(queue);
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let results = self
            .shared
            .admin
            .delete_topics(
                &names,
                &AdminOptions::new().operation_timeout(Some(self.shared.settings.timeouts().1)),
            )
            .await
            .map_err(|e| classify(e, &format!("deleting the topics of {queue}")))?;
        self.shared.forget_topics(&topics);
        for result in results {
            if let Err((topic, code)) = result {
                if code != rdkafka::error::RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Err(Error::new(
                        crate::error::kind_of_code(code),
                        format!("deleting topic {topic}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("purge of {queue}: this backend does not purge (DeleteRecords is not used yet; see docs/backends/kafka.md)"),
        ))
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.shared.check_open()?;
        let group = self.shared.group(queue);
        let member = self.shared.running_member(queue);
        let in_flight = member.as_ref().map_or(0, |m| m.in_flight() as u64);
        // Settled here but not committed yet: no longer ready.
        let settled = member.as_ref().map_or(0, |m| m.settled_uncommitted());
        let lag = self.shared.lag(&wire::topic(queue), &group).await?;
        let delayed = self
            .shared
            .lag_of(&wire::tiers(queue), &format!("{group}.delay"))
            .await?;
        let dead = self
            .shared
            .lag(&wire::dlq(queue), &format!("{group}.dlq"))
            .await?;
        let counters = self.shared.counters(queue);
        let mut stats = QueueStats::default();
        stats.ready = lag.saturating_sub(in_flight + settled);
        stats.delayed = delayed;
        stats.in_flight = in_flight;
        stats.dead = dead;
        counters.fill(&mut stats);
        Ok(stats)
    }

    /// A topic is read from the group's cursor in partition order, so a
    /// page reads the topic twice (once for the ids redriven since, whose
    /// markers come after their letters, then for the letters) and keeps
    /// the first `limit` in time order after the cursor, cut to the
    /// preview as they arrive: this process holds one page.
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        self.shared.check_open()?;
        let page = TimeOrderedPage::new(query)?;
        let shared = &self.shared;
        let positions = shared.dead_positions(queue).await?;
        let redriven = shared.redriven_ids(queue, &positions).await?;
        let page = shared
            .scan_dead(queue, &positions, page, move |page, record| {
                if redrive_marker(record).is_none() {
                    let letter = wire::dead_letter(record);
                    if !redriven.contains(&letter.message.id.to_string()) {
                        page.offer(letter);
                    }
                }
            })
            .await?;
        Ok(page.finish())
    }

    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        self.shared.check_open()?;
        let ids: Option<HashSet<MessageId>> = match which {
            Redrive::All => None,
            Redrive::Ids(ids) => Some(ids.into_iter().collect()),
            _ => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("redrive of {queue}: this kind of redrive is not supported"),
                ))
            }
        };
        let (letters, positions) = self.shared.read_dead(queue).await?;
        let chosen: Vec<DeadLetter> = match &ids {
            None => letters,
            Some(ids) => letters
                .into_iter()
                .filter(|l| ids.contains(&l.message.id))
                .collect(),
        };
        let topic = wire::topic(queue);
        for letter in &chosen {
            let mut message = letter.message.clone();
            message.attempt = 1;
            message.not_before = None;
            self.shared.produce(&topic, &message, None).await?;
        }
        match ids {
            None => self.shared.commit_dead(queue, &positions).await?,
            Some(_) => {
                let dlq = wire::dlq(queue);
                for letter in &chosen {
                    let id = letter.message.id.to_string();
                    let headers = OwnedHeaders::new().insert(Header {
                        key: HEADER_REDRIVEN,
                        value: Some(id.as_bytes()),
                    });
                    let record: FutureRecord<'_, str, [u8]> =
                        FutureRecord::to(&dlq).payload(&[][..]).headers(headers);
                    self.shared
                        .producer
                        .send(record, self.shared.settings.timeouts().1)
                        .await
                        .map_err(|(e, _)| classify(e, &format!("marking {id} redriven")))?;
                }
            }
        }
        Ok(chosen.len() as u64)
    }

    async fn health(&self) -> HealthStatus {
        let shared = self.shared.clone();
        HealthStatus::probe("kafka", async move {
            shared.check_open()?;
            let timeout = shared.settings.timeouts().1;
            let admin = shared.clone();
            tokio::task::spawn_blocking(move || {
                admin
                    .producer
                    .client()
                    .fetch_metadata(None, timeout)
                    .map(|_| ())
                    .map_err(|e| classify(e, &format!("reaching {}", admin.settings.address())))
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("health task failed: {e}")))?
        })
        .await
    }

    /// The broker's topics `<q>` that have the companions the backend
    /// creates with every queue (`<q>.dlq`, `<q>.retry.short`): other
    /// applications' topics are not queues of ours.
    async fn queues(&self) -> Result<Vec<QueueName>> {
        self.shared.check_open()?;
        let shared = self.shared.clone();
        let timeout = shared.settings.timeouts().1;
        let names = tokio::task::spawn_blocking(move || {
            shared
                .producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .filter(|t| t.error().is_none())
                        .map(|t| t.name().to_owned())
                        .collect::<Vec<String>>()
                })
                .map_err(|e| {
                    classify(
                        e,
                        &format!("listing topics on {}", shared.settings.address()),
                    )
                })
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("listing task failed: {e}")))??;
        let all: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut queues: Vec<QueueName> = names
            .iter()
            .filter_map(|name| QueueName::new(name).ok())
            .filter(|q| {
                all.contains(wire::dlq(q).as_str()) && all.contains(wire::tier(q, 0).as_str())
            })
            .collect();
        queues.sort();
        queues.dedup();
        Ok(queues)
    }
}
