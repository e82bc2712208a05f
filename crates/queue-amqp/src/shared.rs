//! [`Shared`]: what the backend, its producers, consumers and admin share:
//! the connection, the capability table, the queues known to exist, the
//! live consumers, this process's totals, and the preparation of outgoing
//! messages (delay tiers declared first) that sends and republishes use.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use queue_core::{
    Capabilities, CloseFlag, Error, ErrorKind, Message, ProcessTotals, ProcessTotalsMap, QueueName,
    QueueOptions, Result,
};

use crate::config::{QueueType, Settings};
use crate::consumer::ConsumerState;
use crate::link::{Link, Outgoing};
use crate::wire;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) capabilities: Capabilities,
    pub(crate) link: Link,
    pub(crate) closed: CloseFlag,
    /// Queues (and companions) this process knows exist.
    declared: std::sync::Mutex<HashSet<String>>,
    /// The live consumers of each queue in this process: their buffered
    /// and leased deliveries are the in-flight counts the broker cannot
    /// give per consumer.
    consumers: std::sync::Mutex<HashMap<QueueName, Vec<Weak<ConsumerState>>>>,
    /// Totals counted by this process, per queue.
    counters: ProcessTotalsMap,
}

impl Shared {
    pub(crate) fn new(capabilities: Capabilities, link: Link) -> Shared {
        Shared {
            capabilities,
            link,
            closed: CloseFlag::default(),
            declared: std::sync::Mutex::default(),
            consumers: std::sync::Mutex::default(),
            counters: ProcessTotalsMap::default(),
        }
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        self.closed.check("the amqp backend")
    }

    pub(crate) fn queue_type(&self) -> QueueType {
        self.link.settings.queue_type
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.link.settings
    }

    fn known(&self, name: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    fn remember(&self, name: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
    }

    pub(crate) fn forget(&self, queue: &QueueName) {
        let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        declared.remove(queue.as_str());
        for name in wire::companions(queue) {
            declared.remove(&name);
        }
    }

    /// Declare `name` with `args` (durable). A queue that exists with other
    /// arguments is a `Config` error naming the difference.
    pub(crate) async fn declare(&self, name: &str, args: FieldTable) -> Result<u32> {
        let (_, channel) = self.link.channel().await?;
        let declared = self
            .link
            .call(
                &format!("declaring queue {name:?}"),
                channel.queue_declare(name.into(), QueueDeclareOptions::durable(), args),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        match declared {
            Ok(queue) => {
                self.remember(name);
                Ok(queue.message_count())
            }
            Err(e) if e.kind() == ErrorKind::Config => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} (the queue exists with other arguments: it was declared elsewhere, or with another queue_type or max_length; delete it or use the same options)",
                    e.message()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// How many ready messages `name` holds, `None` if it does not exist
    /// (a passive declare, on a throwaway channel since a missing queue
    /// closes the channel).
    pub(crate) async fn count(&self, name: &str) -> Result<Option<u32>> {
        let (_, channel) = self.link.channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .link
            .call(
                &format!("checking queue {name:?}"),
                channel.queue_declare(name.into(), options, FieldTable::default()),
            )
            .await;
        match declared {
            Ok(queue) => {
                let _ = channel.close(200, "done".into()).await;
                self.remember(name);
                Ok(Some(queue.message_count()))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Make sure `queue` and its dead-letter queue exist: a queue made
    /// elsewhere with its own options is used as it is; a missing one is
    /// created with default options.
    pub(crate) async fn ensure_exists(&self, queue: &QueueName) -> Result<()> {
        self.check_open()?;
        if self.known(queue.as_str()) {
            return Ok(());
        }
        match self.count(queue.as_str()).await? {
            Some(_) => self
                .declare(&wire::dlq(queue), wire::dlq_args(self.queue_type()))
                .await
                .map(|_| ()),
            None => self.ensure_queue(queue, &QueueOptions::default()).await,
        }
    }

    /// Declare `queue` with `options`, and its dead-letter queue.
    pub(crate) async fn ensure_queue(
        &self,
        queue: &QueueName,
        options: &QueueOptions,
    ) -> Result<()> {
        self.check_open()?;
        options.check()?;
        let queue_type = self.queue_type();
        self.declare(&wire::dlq(queue), wire::dlq_args(queue_type))
            .await?;
        self.declare(queue.as_str(), wire::queue_args(queue_type, queue, options))
            .await?;
        Ok(())
    }

    /// Make sure delay tier `k` of `queue` exists.
    pub(crate) async fn ensure_tier(&self, queue: &QueueName, k: u32) -> Result<()> {
        let name = wire::tier(queue, k);
        if self.known(&name) {
            return Ok(());
        }
        self.declare(&name, wire::tier_args(self.queue_type(), queue, k))
            .await
            .map(|_| ())
    }

    /// This process's totals of `queue`.
    pub(crate) fn counters(&self, queue: &QueueName) -> Arc<ProcessTotals> {
        self.counters.of(queue)
    }

    pub(crate) fn register(&self, queue: &QueueName, consumer: &Arc<ConsumerState>) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        let list = consumers.entry(queue.clone()).or_default();
        list.retain(|c| c.strong_count() > 0);
        list.push(Arc::downgrade(consumer));
    }

    /// The live consumers of `queue` in this process.
    pub(crate) fn consumers_of(&self, queue: &QueueName) -> Vec<Arc<ConsumerState>> {
        let consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        consumers
            .get(queue)
            .map(|list| list.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// The AMQP messages for `messages` to `queue`, declaring the delay
    /// tiers they go through first: what a send publishes, and what a
    /// consumer or a redrive republishes.
    pub(crate) async fn prepare(
        &self,
        queue: &QueueName,
        messages: &[Message],
    ) -> Result<Vec<Outgoing>> {
        let now = SystemTime::now();
        let mut out = Vec::with_capacity(messages.len());
        for message in messages {
            let outgoing = wire::outgoing(queue, message, now);
            if outgoing.routing_key != queue.as_str() {
                let delay = wire::remaining_delay(message, now).as_millis() as u64;
                self.ensure_tier(queue, wire::tier_for(delay)).await?;
            }
            out.push(outgoing);
        }
        Ok(out)
    }
}
