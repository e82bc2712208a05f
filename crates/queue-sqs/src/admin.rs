//! Queue administration: create, delete, purge, stats, and dead letters
//! listed and redriven by receiving from the dead-letter queue.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use queue_core::{
    dead_letters::TimeOrderedPage, Admin, DeadLetterPage, DeadLetterQuery, Error, ErrorKind,
    HealthStatus, MessageId, QueueName, QueueOptions, QueueStats, Redrive, Result,
};

use crate::backend::SqsBackend;
use crate::batcher::{self, Op};
use crate::client::Sqs;
use crate::config::QueueType;
use crate::error::classify;
use crate::wire::{self, Incoming};
use crate::SQS_BATCH;

/// How long dead letters being listed stay hidden from other readers
/// before they are handed back (at once, after the listing).
const LISTING_VISIBILITY: i32 = 30;

impl SqsBackend {
    /// One receive of up to ten dead letters of `dlq`, hidden while they
    /// are looked at. A first empty short poll is confirmed by a one
    /// second long poll (a short poll samples only some SQS servers).
    async fn receive_dead(&self, queue: &QueueName, dlq: &str) -> Result<Vec<Incoming>> {
        let sqs = &self.shared.sqs;
        for wait in [0, 1] {
            let received = sqs
                .client
                .receive_message()
                .queue_url(dlq)
                .max_number_of_messages(SQS_BATCH as i32)
                .wait_time_seconds(wait)
                .visibility_timeout(LISTING_VISIBILITY)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(|e| {
                    classify(
                        e,
                        &format!("reading the dead letters of {queue}"),
                        self.shared.address(),
                    )
                })?;
            let got: Vec<Incoming> = received
                .messages()
                .iter()
                .filter_map(wire::decode)
                .collect();
            if !got.is_empty() {
                return Ok(got);
            }
        }
        Ok(Vec::new())
    }

    /// Make dead letters visible again, by their receipts.
    async fn hand_back(&self, dlq: &str, receipts: Vec<String>) -> Result<()> {
        hand_back(&self.shared.sqs, dlq, receipts).await
    }

    async fn attributes(
        &self,
        url: &str,
        what: &str,
    ) -> Result<std::collections::HashMap<QueueAttributeName, String>> {
        let out = self
            .shared
            .sqs
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!("reading the counts of {what}"),
                    self.shared.address(),
                )
            })?;
        Ok(out.attributes().cloned().unwrap_or_default())
    }
}

/// Make dead letters of `dlq` visible again, by their receipts.
async fn hand_back(sqs: &Sqs, dlq: &str, receipts: Vec<String>) -> Result<()> {
    let ops = receipts
        .into_iter()
        .map(|receipt| Op::Visibility(receipt, 0))
        .collect();
    batcher::run(sqs, dlq, ops)
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .map(|_| ())
}

/// Receipts of dead letters a listing holds out of sight: handed back by
/// [`finish`](HandBack::finish), or, if the listing is dropped half-way
/// (a caller that stopped waiting), by a task of their own.
struct HandBack {
    sqs: Arc<Sqs>,
    dlq: String,
    receipts: Vec<String>,
}

impl HandBack {
    fn new(sqs: Arc<Sqs>, dlq: String) -> Self {
        HandBack {
            sqs,
            dlq,
            receipts: Vec::new(),
        }
    }

    async fn finish(mut self) -> Result<()> {
        let receipts = std::mem::take(&mut self.receipts);
        hand_back(&self.sqs, &self.dlq, receipts).await
    }
}

impl Drop for HandBack {
    fn drop(&mut self) {
        if self.receipts.is_empty() {
            return;
        }
        let (sqs, dlq) = (self.sqs.clone(), std::mem::take(&mut self.dlq));
        let receipts = std::mem::take(&mut self.receipts);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = hand_back(&sqs, &dlq, receipts).await;
            });
        }
    }
}

fn count(
    attributes: &std::collections::HashMap<QueueAttributeName, String>,
    name: QueueAttributeName,
) -> u64 {
    attributes
        .get(&name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[async_trait]
impl Admin for SqsBackend {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.shared.check_open()?;
        options.check()?;
        if options.max_length.is_some() {
            return Err(Error::unsupported(
                "max_length: SQS queues have no length limit (see docs/backends/sqs.md)",
            ));
        }
        self.shared.sqs.ensure(queue).await.map(|_| ())
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.shared.check_open()?;
        let sqs = &self.shared.sqs;
        let names = [
            wire::queue_name(queue, sqs.queue_type()),
            wire::dlq_name(queue, sqs.queue_type()),
        ];
        sqs.forget(queue);
        for name in names {
            let Some(url) = sqs.lookup(&name).await? else {
                continue;
            };
            if let Err(e) = sqs.client.delete_queue().queue_url(&*url).send().await {
                let e = classify(e, &format!("deleting queue {name:?}"), sqs.address());
                if e.kind() != ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
        sqs.forget(queue);
        Ok(())
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        self.shared.check_open()?;
        let urls = self.shared.sqs.existing(queue).await?;
        let before = self.attributes(&urls.main, queue.as_str()).await?;
        self.shared
            .sqs
            .client
            .purge_queue()
            .queue_url(&*urls.main)
            .send()
            .await
            .map_err(|e| classify(e, &format!("purging {queue}"), self.shared.address()))?;
        self.shared.purged(queue);
        Ok(
            count(&before, QueueAttributeName::ApproximateNumberOfMessages)
                + count(
                    &before,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                )
                + count(
                    &before,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                ),
        )
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.shared.check_open()?;
        let urls = self.shared.sqs.existing(queue).await?;
        let (main, dead) = futures_util::future::try_join(
            self.attributes(&urls.main, queue.as_str()),
            self.attributes(&urls.dlq, "the dead-letter queue"),
        )
        .await?;
        let counters = self.shared.counters(queue);
        let mut stats = QueueStats::default();
        stats.ready = count(&main, QueueAttributeName::ApproximateNumberOfMessages);
        stats.delayed = count(
            &main,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        );
        stats.in_flight = count(
            &main,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        );
        stats.dead = count(&dead, QueueAttributeName::ApproximateNumberOfMessages)
            + count(
                &dead,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            )
            + count(
                &dead,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            );
        counters.fill(&mut stats);
        Ok(stats)
    }

    /// SQS hands messages out in no order and cannot be read from a
    /// position: a page reads the dead-letter queue through (each letter
    /// invisible while it is read, then made visible again) and keeps the
    /// first `limit` in time order after the cursor, cut to the preview as
    /// they arrive, so this process holds one page of letters (and a
    /// receipt of each letter read). The read ends at an empty receive, or
    /// at a receive that brings only letters already read: a queue too deep
    /// to read within the listing visibility starts handing out its first
    /// letters again. Receipts go back even when the caller stops waiting.
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        self.shared.check_open()?;
        let mut page = TimeOrderedPage::new(query)?;
        let urls = self.shared.sqs.existing(queue).await?;
        let mut held = HandBack::new(self.shared.sqs.clone(), urls.dlq.to_string());
        let mut seen: HashSet<MessageId> = HashSet::new();
        let listed = async {
            loop {
                let got = self.receive_dead(queue, &urls.dlq).await?;
                let mut fresh = false;
                for incoming in got {
                    if seen.insert(incoming.message.id) {
                        fresh = true;
                        page.offer(incoming.dead_letter());
                    }
                    held.receipts.push(incoming.receipt);
                }
                if !fresh {
                    return Ok::<(), Error>(());
                }
            }
        }
        .await;
        let handed_back = held.finish().await;
        listed?;
        handed_back?;
        Ok(page.finish())
    }

    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        self.shared.check_open()?;
        let urls = self.shared.sqs.existing(queue).await?;
        let wanted: Option<HashSet<MessageId>> = match &which {
            Redrive::All => None,
            Redrive::Ids(ids) => Some(ids.iter().copied().collect()),
            _ => return Err(Error::unsupported("this redrive selection")),
        };
        // Receipts of the letters left where they are.
        let mut kept: Vec<String> = Vec::new();
        let mut moved = 0u64;
        let mut found = HashSet::new();
        let result = async {
            loop {
                if wanted.as_ref().is_some_and(|w| found.len() >= w.len()) {
                    return Ok(());
                }
                let got = self.receive_dead(queue, &urls.dlq).await?;
                if got.is_empty() {
                    return Ok(());
                }
                let (take, keep): (Vec<Incoming>, Vec<Incoming>) = got
                    .into_iter()
                    .partition(|i| wanted.as_ref().is_none_or(|w| w.contains(&i.message.id)));
                kept.extend(keep.into_iter().map(|i| i.receipt));
                // A fresh start: attempt 1, no delay, no dead-letter marks.
                let mut sends = Vec::with_capacity(take.len());
                for incoming in &take {
                    let mut message = incoming.message.clone();
                    message.attempt = 1;
                    message.not_before = None;
                    sends.push(Op::Send(Box::new(self.shared.outgoing_copy(&message)?)));
                }
                let sent = batcher::run(&self.shared.sqs, &urls.main, sends).await;
                let mut deletes = Vec::new();
                for (incoming, result) in take.into_iter().zip(sent) {
                    match result {
                        Ok(()) => {
                            found.insert(incoming.message.id);
                            deletes.push(Op::Delete(incoming.receipt));
                        }
                        Err(e) => {
                            kept.push(incoming.receipt);
                            return Err(e);
                        }
                    }
                }
                for result in batcher::run(&self.shared.sqs, &urls.dlq, deletes).await {
                    // A failed delete leaves a duplicate in the dead-letter
                    // queue, never a loss.
                    if result.is_ok() {
                        moved += 1;
                    }
                }
            }
        }
        .await;
        let handed_back = self.hand_back(&urls.dlq, kept).await;
        result?;
        handed_back?;
        Ok(moved)
    }

    async fn health(&self) -> HealthStatus {
        self.health_check().await
    }

    /// From `ListQueues`: the queues of this backend's queue type (names
    /// ending `.fifo` on FIFO, the others on standard), without dead-letter
    /// queues (`<q>-dlq` of a listed `<q>`) or names that are not queue
    /// names of ours.
    async fn queues(&self) -> Result<Vec<QueueName>> {
        self.shared.check_open()?;
        let names = self.shared.sqs.list_names().await?;
        let queue_type = self.shared.sqs.queue_type();
        let all: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut queues = Vec::new();
        for name in &names {
            let base = match queue_type {
                QueueType::Standard if name.ends_with(".fifo") => continue,
                QueueType::Standard => name.as_str(),
                QueueType::Fifo => match name.strip_suffix(".fifo") {
                    Some(base) => base,
                    None => continue,
                },
            };
            let Ok(queue) = QueueName::new(base) else {
                continue;
            };
            let companion = base
                .strip_suffix("-dlq")
                .and_then(|owner| QueueName::new(owner).ok())
                .is_some_and(|owner| all.contains(wire::queue_name(&owner, queue_type).as_str()));
            if !companion {
                queues.push(queue);
            }
        }
        queues.sort();
        queues.dedup();
        Ok(queues)
    }
}
