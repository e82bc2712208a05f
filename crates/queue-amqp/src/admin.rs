//! Queue administration on RabbitMQ: declare, delete, purge, stats, dead
//! letters and redrive. Checks that may fail with 404 (which closes the
//! channel) run on throwaway channels.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::Channel;
use queue_core::{
    Admin, DeadLetter, DeadLetterCursor, DeadLetterPage, DeadLetterQuery, DeadLetterReason,
    ErrorKind, HealthStatus, MessageId, QueueName, QueueOptions, QueueStats, Redrive, Result,
};

use crate::backend::AmqpBackend;
use crate::shared::Shared;
use crate::wire::{self, Incoming};

/// What one call on a queue that may not exist did.
enum Outcome<T> {
    Done(T),
    Missing,
}

impl Shared {
    /// Run `op` on each queue of `names`, on throwaway channels (a missing
    /// queue closes the channel it was named on: the next name gets a new
    /// one). Missing queues are skipped.
    async fn on_each<T, F, Fut>(&self, names: &[String], op: F) -> Result<Vec<(String, T)>>
    where
        F: Fn(Channel, String) -> Fut,
        Fut: std::future::Future<Output = lapin::Result<T>>,
    {
        let mut out = Vec::new();
        let mut channel: Option<Channel> = None;
        for name in names {
            let ch = match channel.take().filter(|c| c.status().connected()) {
                Some(ch) => ch,
                None => self.link.channel().await?.1,
            };
            let result = self
                .link
                .call(&format!("queue {name:?}"), op(ch.clone(), name.clone()))
                .await;
            match result {
                Ok(value) => {
                    out.push((name.clone(), value));
                    channel = Some(ch);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(ch) = channel {
            let _ = ch.close(200, "done".into()).await;
        }
        Ok(out)
    }

    /// Ready counts of the queues of `names` that exist.
    async fn counts(&self, names: &[String]) -> Result<Vec<(String, u64)>> {
        self.on_each(names, |channel, name| async move {
            let options = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(name.into(), options, lapin::types::FieldTable::default())
                .await
                .map(|q| u64::from(q.message_count()))
        })
        .await
    }

    /// Read up to `limit` dead letters of `queue` on `channel`, unacked
    /// (closing the channel hands them back in order).
    async fn read_dead(
        &self,
        channel: &Channel,
        queue: &QueueName,
        limit: usize,
    ) -> Result<Outcome<Vec<(u64, DeadLetter)>>> {
        let dlq = wire::dlq(queue);
        let mut out = Vec::new();
        while out.len() < limit {
            let got = self
                .link
                .call(
                    &format!("reading dead letters of {:?}", queue.as_str()),
                    channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false }),
                )
                .await;
            let got = match got {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(e) if e.kind() == ErrorKind::NotFound && out.is_empty() => {
                    return Ok(Outcome::Missing)
                }
                Err(e) => return Err(e),
            };
            let delivery = got.delivery;
            let properties = delivery.properties.clone();
            let message = match wire::incoming(delivery.data, &properties, false) {
                Incoming::Message(message) | Incoming::Undecodable(message, _) => message,
            };
            let reason = match wire::header_text(&properties, wire::HEADER_REASON) {
                Some(text) => DeadLetterReason::parse(&text),
                None => wire::broker_death_reason(&properties)
                    .unwrap_or_else(|| DeadLetterReason::Rejected("unknown".to_owned())),
            };
            let attempts = wire::header_int(&properties, wire::HEADER_ATTEMPTS)
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(match reason {
                    DeadLetterReason::Expired => message.attempt.saturating_sub(1),
                    _ => message.attempt,
                });
            let at = wire::header_int(&properties, wire::HEADER_DEAD_AT)
                .and_then(|ms| u64::try_from(ms).ok())
                .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
            let mut letter = DeadLetter::new(message, reason, attempts);
            letter.dead_lettered_at = at;
            out.push((delivery.delivery_tag, letter));
        }
        Ok(Outcome::Done(out))
    }
}

#[async_trait]
impl Admin for AmqpBackend {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.shared.ensure_queue(queue, options).await
    }

    /// Deletes the queue, its dead letters and its delay tiers.
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.shared.check_open()?;
        let mut names = vec![queue.to_string()];
        names.extend(wire::companions(queue));
        self.shared
            .on_each(&names, |channel, name| async move {
                channel
                    .queue_delete(name.into(), QueueDeleteOptions::default())
                    .await
            })
            .await?;
        self.shared.forget(queue);
        Ok(())
    }

    /// Purges the queue and its delay tiers on the broker, and drops what
    /// this process's consumers hold buffered. Deliveries in flight stay
    /// until settled (RabbitMQ purges ready messages only), as do other
    /// processes' buffered deliveries.
    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        self.shared.check_open()?;
        let mut names = vec![queue.to_string()];
        names.extend((0..wire::TIERS).map(|k| wire::tier(queue, k)));
        let purged = self
            .shared
            .on_each(&names, |channel, name| async move {
                channel
                    .queue_purge(name.into(), QueuePurgeOptions::default())
                    .await
            })
            .await?;
        let mut total: u64 = purged.iter().map(|(_, n)| u64::from(*n)).sum();
        for consumer in self.shared.consumers_of(queue) {
            total += consumer.purge_buffer().await;
        }
        Ok(total)
    }

    /// Ready and dead from the broker (plus what this process's consumers
    /// hold buffered), delayed from the delay tiers, in flight as this
    /// process sees it: the broker does not tell unacked counts per queue
    /// over AMQP. Totals are this process's.
    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.shared.check_open()?;
        let mut names = vec![queue.to_string(), wire::dlq(queue)];
        names.extend((0..wire::TIERS).map(|k| wire::tier(queue, k)));
        let counts = self.shared.counts(&names).await?;
        if !counts.iter().any(|(name, _)| name == queue.as_str()) {
            return Err(queue_core::Error::new(
                ErrorKind::NotFound,
                format!("queue {:?} does not exist", queue.as_str()),
            ));
        }
        let mut stats = QueueStats::default();
        let dlq = wire::dlq(queue);
        for (name, count) in counts {
            if name == queue.as_str() {
                stats.ready += count;
            } else if name == dlq {
                stats.dead = count;
            } else {
                stats.delayed += count;
            }
        }
        for consumer in self.shared.consumers_of(queue) {
            let (buffered, in_flight) = consumer.counts();
            stats.ready += buffered;
            stats.in_flight += in_flight;
        }
        let counters = self.shared.counters(queue);
        counters.fill(&mut stats);
        Ok(stats)
    }

    /// Reads the dead-letter queue without taking anything: the letters are
    /// fetched unacked and the channel closed, which puts them back in
    /// order. A queue cannot be read from the middle, so the cursor is a
    /// position and the letters before it are fetched and dropped one at a
    /// time (the broker sends them; this process holds one at a time).
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        query.check()?;
        self.shared.check_open()?;
        let skip = query
            .after
            .as_ref()
            .map(dead_position)
            .transpose()?
            .unwrap_or(0);
        let (_, channel) = self.shared.link.channel().await?;
        let read = self.read_dead_page(&channel, queue, skip, query).await;
        let _ = channel.close(200, "done".into()).await;
        read
    }

    /// Each letter moved back is published to the queue as a fresh message
    /// (attempt 1, no last error; confirmed) before it is acked off the
    /// dead-letter queue: a crash in between leaves it in both, never in
    /// neither. Letters not asked for go back untouched.
    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        self.shared.check_open()?;
        self.shared.ensure_exists(queue).await?;
        let (_, channel) = self.shared.link.channel().await?;
        let result = self.redrive_on(&channel, queue, which).await;
        let _ = channel.close(200, "done".into()).await;
        result
    }

    async fn health(&self) -> HealthStatus {
        self.health_check().await
    }
}

/// The position a dead-letter cursor holds on RabbitMQ: letters before it.
fn dead_position(cursor: &DeadLetterCursor) -> Result<u64> {
    cursor
        .as_str()
        .strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            queue_core::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{:?} is not a dead-letter cursor of the amqp backend (pass back a page's `next`)",
                    cursor.as_str()
                ),
            )
        })
}

impl AmqpBackend {
    /// Skip `skip` letters, keep the next `query.limit` (as previews when
    /// asked), and look at one more to know whether a next page exists.
    async fn read_dead_page(
        &self,
        channel: &Channel,
        queue: &QueueName,
        skip: u64,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        let one = || self.shared.read_dead(channel, queue, 1);
        for _ in 0..skip {
            match one().await? {
                Outcome::Done(letters) if !letters.is_empty() => {}
                _ => return Ok(DeadLetterPage::default()),
            }
        }
        let mut letters = Vec::new();
        let mut more = false;
        while letters.len() <= query.limit {
            let Outcome::Done(got) = one().await? else {
                break;
            };
            let Some((_, letter)) = got.into_iter().next() else {
                break;
            };
            if letters.len() == query.limit {
                more = true;
                break;
            }
            letters.push(match query.preview {
                Some(max) => letter.preview(max),
                None => letter,
            });
        }
        let next = more.then(|| DeadLetterCursor::new(format!("p{}", skip + letters.len() as u64)));
        Ok(DeadLetterPage::new(letters, next))
    }

    async fn redrive_on(
        &self,
        channel: &Channel,
        queue: &QueueName,
        which: Redrive,
    ) -> Result<u64> {
        let wanted: Option<HashSet<MessageId>> = match which {
            Redrive::All => None,
            Redrive::Ids(ids) => Some(ids.into_iter().collect()),
            _ => {
                return Err(queue_core::Error::new(
                    ErrorKind::Unsupported,
                    "this redrive selection is not known to the amqp backend",
                ))
            }
        };
        let mut moved = 0u64;
        // One letter at a time: fetch, publish the fresh copy, ack. Letters
        // left unacked are not fetched again on this channel, so the loop
        // ends when the queue has nothing more to give (its message count
        // lags on quorum queues, so it is not used as the bound).
        loop {
            let batch = match self.shared.read_dead(channel, queue, 1).await? {
                Outcome::Done(batch) => batch,
                Outcome::Missing => break,
            };
            let Some((tag, letter)) = batch.into_iter().next() else {
                break;
            };
            let take = wanted
                .as_ref()
                .is_none_or(|ids| ids.contains(&letter.message.id));
            if !take {
                continue;
            }
            let mut message = letter.message;
            message.attempt = 1;
            message.last_error = None;
            message.not_before = None;
            let outgoing = self
                .shared
                .prepare(queue, std::slice::from_ref(&message))
                .await?;
            self.shared
                .link
                .publish(&outgoing)
                .await
                .map_err(|e| e.error)?;
            self.shared
                .link
                .call(
                    "acking a redriven dead letter",
                    channel.basic_ack(tag, BasicAckOptions { multiple: false }),
                )
                .await?;
            moved += 1;
            if wanted
                .as_ref()
                .is_some_and(|ids| moved as usize == ids.len())
            {
                break;
            }
        }
        Ok(moved)
    }
}
