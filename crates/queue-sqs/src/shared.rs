//! [`Shared`]: what the backend, its producers, consumers and admin share:
//! the client and its batcher, the capability table, this process's totals
//! and purges, and the shaping of outgoing messages (native delay, size).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use queue_core::{
    Capabilities, CloseFlag, Error, ErrorKind, Message, ProcessTotals, ProcessTotalsMap, QueueName,
    Result,
};

use crate::batcher::Batcher;
use crate::client::Sqs;
use crate::config::{QueueType, Settings};
use crate::wire::{self, Outgoing};

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) capabilities: Capabilities,
    pub(crate) sqs: Arc<Sqs>,
    pub(crate) batcher: Batcher,
    pub(crate) closed: CloseFlag,
    /// Totals counted by this process, per queue.
    counters: ProcessTotalsMap,
    /// Purges made by this process, per queue: a delivery received before
    /// one lost its message to it.
    purges: Mutex<HashMap<QueueName, u64>>,
}

impl Shared {
    pub(crate) fn new(capabilities: Capabilities, sqs: Arc<Sqs>, batcher: Batcher) -> Shared {
        Shared {
            capabilities,
            sqs,
            batcher,
            closed: CloseFlag::default(),
            counters: ProcessTotalsMap::default(),
            purges: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        self.closed.check("the sqs backend")
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.sqs.settings
    }

    pub(crate) fn address(&self) -> &str {
        self.sqs.address()
    }

    pub(crate) fn counters(&self, queue: &QueueName) -> Arc<ProcessTotals> {
        self.counters.of(queue)
    }

    pub(crate) fn purge_epoch(&self, queue: &QueueName) -> u64 {
        self.purges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn purged(&self, queue: &QueueName) {
        *self
            .purges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.clone())
            .or_default() += 1;
    }

    /// `message` ready to send now: the delay (up to the native limit;
    /// the rest hops) and the size SQS will count, checked.
    pub(crate) fn outgoing(&self, message: &Message) -> Result<Outgoing> {
        let settings = self.settings();
        let delay = message.delay_from(SystemTime::now());
        // FIFO queues refuse a per-message delay: a copy that is due later
        // (a nack with a delay) is held by its visibility when it arrives.
        let native = match settings.queue_type {
            QueueType::Standard => {
                wire::whole_seconds(delay).min(settings.max_native_delay.as_secs())
            }
            QueueType::Fifo => 0,
        };
        let out = Outgoing::new(
            message,
            i32::try_from(native).unwrap_or(0),
            settings.queue_type,
        );
        let size = out.size();
        if size > settings.max_message {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message {} is {size} bytes as SQS counts it (body and attributes; a payload that is not text travels base64-encoded, 4/3 its size); the queue takes at most {} bytes",
                    message.id, settings.max_message
                ),
            ));
        }
        Ok(out)
    }

    /// [`Shared::outgoing`] for a copy of a message SQS holds
    /// ([`Outgoing::fresh`]).
    pub(crate) fn outgoing_copy(&self, message: &Message) -> Result<Outgoing> {
        Ok(self.outgoing(message)?.fresh())
    }
}
