//! The wrapper over a backend that delivers in its own order: the memory
//! backend behind a table that says it has no group fairness, so every
//! turn taken is the wrapper's.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::coordination::MemoryCoordination;
use crate::memory::MemoryBackend;
use crate::message::Message;
use crate::stats::DeadLetterReason;
use crate::traits::Delivery;

/// The memory backend, claiming no group fairness of its own.
#[derive(Debug)]
struct Fifo {
    inner: MemoryBackend,
    capabilities: Capabilities,
}

#[async_trait]
impl Backend for Fifo {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        self.inner.producer(queue).await
    }
    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        self.capabilities.check_consumer(&options)?;
        self.inner.consumer(queue, options).await
    }
    fn admin(&self) -> &dyn Admin {
        self
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// The memory backend without group fairness or a worker registry of its
/// own.
fn fifo() -> Arc<dyn Backend> {
    let inner = MemoryBackend::new();
    let mut capabilities = inner.capabilities().clone();
    capabilities.group_fairness = Coordinated::NeedsStore;
    capabilities.worker_registry = crate::capabilities::Support::Unsupported;
    Arc::new(Fifo {
        inner,
        capabilities,
    })
}

fn grouped() -> (Arc<dyn Backend>, Arc<dyn Coordination>) {
    let store: Arc<dyn Coordination> = Arc::new(MemoryCoordination::new());
    let backend = with_store(fifo(), store.clone()).expect("wraps");
    (backend, store)
}

/// The memory backend's admin, without its worker registry.
#[async_trait]
impl Admin for Fifo {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.inner.admin().ensure_queue(queue, options).await
    }
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.inner.admin().delete_queue(queue).await
    }
    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        self.inner.admin().purge(queue).await
    }
    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.inner.admin().stats(queue).await
    }
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        self.inner.admin().dead_letter_page(queue, query).await
    }
    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        self.inner.admin().redrive(queue, which).await
    }
    async fn health(&self) -> HealthStatus {
        self.inner.admin().health().await
    }
    async fn queues(&self) -> Result<Vec<QueueName>> {
        self.inner.admin().queues().await
    }
    async fn pause(&self, queue: &QueueName) -> Result<()> {
        self.inner.admin().pause(queue).await
    }
    async fn resume(&self, queue: &QueueName) -> Result<()> {
        self.inner.admin().resume(queue).await
    }
}

fn queue(name: &str) -> QueueName {
    QueueName::new(name).expect("name")
}

fn payloads(got: &[Delivery]) -> Vec<String> {
    got.iter()
        .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
        .collect()
}

const SOON: Duration = Duration::from_secs(5);

#[test]
fn group_queue_names_fit_and_are_recognised() {
    let long = queue(&"q".repeat(64));
    let name = group_queue(&long, &group_key(&long, "tenant-1"));
    assert_eq!(name.as_str().len(), 64);
    assert!(is_group_queue(name.as_str()));
    assert!(!is_group_queue(long.as_str()));
    assert!(!is_group_queue("emails__0123456789ABCDEF"));
    assert!(!is_group_queue("emails_0123456789abcdef"));
    // The hash is the queue's and the group's, the same in every process.
    let q = queue("emails");
    assert_eq!(group_key(&q, "a"), group_key(&q, "a"));
    assert_ne!(group_key(&q, "a"), group_key(&q, "b"));
    assert_ne!(group_key(&q, "a"), group_key(&queue("emails2"), "a"));
}

#[test]
fn a_backend_without_groups_or_store_is_refused() {
    let inner = MemoryBackend::new();
    let mut capabilities = inner.capabilities().clone();
    capabilities.group_fairness = Coordinated::Unsupported;
    let err = with_store(
        Arc::new(Fifo {
            inner,
            capabilities,
        }),
        Arc::new(MemoryCoordination::new()),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("group fairness"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_take_turns_and_come_back_with_their_group() {
    let (backend, _) = grouped();
    let q = queue("turns");
    backend
        .admin()
        .ensure_queue(&q, &QueueOptions::default())
        .await
        .expect("ensure");
    let producer = backend.producer(&q).await.expect("producer");
    let a: Vec<Message> = (0..300)
        .map(|i| Message::new(format!("a {i}")).with_group("a"))
        .collect();
    producer.send_batch(a).await.expect("send a");
    // A mixed batch: ids come back in send order.
    let mixed: Vec<Message> = (0..10)
        .flat_map(|i| {
            [
                Message::new(format!("b {i}")).with_group("b"),
                Message::new(format!("- {i}")),
            ]
        })
        .collect();
    let ids: Vec<_> = mixed.iter().map(|m| m.id).collect();
    assert_eq!(producer.send_batch(mixed).await.expect("send b"), ids);

    let consumer = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut order = Vec::new();
    while order.len() < 320 {
        let got = consumer.receive(10, SOON).await.expect("receive");
        assert!(!got.is_empty(), "all arrive; got {}", order.len());
        for d in &got {
            assert_eq!(d.queue(), &q, "handed out as the queue's");
            let payload = String::from_utf8_lossy(d.payload()).into_owned();
            let group = d.message().group().map(str::to_owned);
            match &payload[..1] {
                "-" => assert_eq!(group, None),
                tag => assert_eq!(group.as_deref(), Some(tag), "{payload}"),
            }
            order.push(payload);
        }
        consumer.ack_batch(got).await.expect("ack");
    }
    for tag in ["b", "-"] {
        let early = order[..40]
            .iter()
            .filter(|p| p.starts_with(&format!("{tag} ")))
            .count();
        assert_eq!(early, 10, "all of {tag:?} early: {:?}", &order[..40]);
    }
    for tag in ["a", "b", "-"] {
        let of: Vec<u32> = order
            .iter()
            .filter_map(|p| p.strip_prefix(&format!("{tag} ")))
            .map(|n| n.parse().expect("number"))
            .collect();
        assert!(of.windows(2).all(|w| w[0] < w[1]), "{tag} in order");
    }
    let stats = backend.admin().stats(&q).await.expect("stats");
    assert_eq!(stats.ready + stats.in_flight, 0);
    assert_eq!(stats.acked_total, 320, "counted over the group queues");
    consumer.close().await;
}

/// Two wrappers over one broker and one store stand for two processes:
/// their readers are their own, the limit is the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_limit_holds_across_consumers() {
    let (inner, store): (_, Arc<dyn Coordination>) = (fifo(), Arc::new(MemoryCoordination::new()));
    let backend = with_store(inner.clone(), store.clone()).expect("wraps");
    let other = with_store(inner, store).expect("wraps");
    let q = queue("limit");
    let producer = backend.producer(&q).await.expect("producer");
    for i in 0..6 {
        producer
            .send(Message::new(format!("a {i}")).with_group("a"))
            .await
            .expect("send");
    }
    let options = ConsumerOptions::default().with_group_limit(2);
    let zero = backend
        .consumer(&q, ConsumerOptions::default().with_group_limit(0))
        .await
        .unwrap_err();
    assert!(zero.to_string().contains("group_limit"), "{zero}");
    let one = backend.consumer(&q, options.clone()).await.expect("one");
    let two = other.consumer(&q, options).await.expect("two");
    // Two of a are leased between them (a reader holds its slot with
    // what it read), and no more.
    let mut held = Vec::new();
    let until = std::time::Instant::now() + SOON;
    while held.len() < 2 && std::time::Instant::now() < until {
        let short = Duration::from_millis(100);
        held.extend(one.receive(10, short).await.expect("receive"));
        held.extend(two.receive(10, short).await.expect("receive"));
    }
    assert_eq!(held.len(), 2, "{:?}", payloads(&held));
    let (a, b) = tokio::join!(
        one.receive(10, Duration::from_millis(400)),
        two.receive(10, Duration::from_millis(400))
    );
    let more: Vec<Delivery> = a.expect("one").into_iter().chain(b.expect("two")).collect();
    assert!(more.is_empty(), "a is at its limit: {:?}", payloads(&more));
    held.pop().expect("one").ack().await.expect("ack");
    // The slot given back, one of the two consumers takes the next.
    let (a, b) = tokio::join!(
        one.receive(10, Duration::from_secs(2)),
        two.receive(10, Duration::from_secs(2))
    );
    let next: Vec<Delivery> = a.expect("one").into_iter().chain(b.expect("two")).collect();
    assert_eq!(payloads(&next).len(), 1, "{:?}", payloads(&next));
    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_takes_in_the_group_queues() {
    let (backend, store) = grouped();
    let q = queue("admin");
    let admin = backend.admin();
    admin
        .ensure_queue(&q, &QueueOptions::default().with_max_length(1000))
        .await
        .expect("ensure");
    let producer = backend.producer(&q).await.expect("producer");
    for group in ["a", "b", "c"] {
        for i in 0..3 {
            producer
                .send(Message::new(format!("{group} {i}")).with_group(group))
                .await
                .expect("send");
        }
    }
    producer.send(Message::new("plain")).await.expect("send");
    assert_eq!(admin.stats(&q).await.expect("stats").ready, 10);
    assert_eq!(admin.queues().await.expect("queues"), vec![q.clone()]);

    // Dead-letter everything, then page through with cursors of 4.
    let consumer = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut dead = 0;
    while dead < 10 {
        for d in consumer.receive(10, SOON).await.expect("receive") {
            d.dead_letter(DeadLetterReason::Rejected("test".into()))
                .await
                .expect("dead letter");
            dead += 1;
        }
    }
    let mut query = DeadLetterQuery::new(4);
    let mut seen = Vec::new();
    loop {
        let page = admin.dead_letter_page(&q, &query).await.expect("page");
        assert!(page.letters.len() <= 4);
        seen.extend(
            page.letters
                .iter()
                .map(|l| String::from_utf8_lossy(&l.message.payload).into_owned()),
        );
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    seen.sort();
    let mut expected: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|g| (0..3).map(move |i| format!("{g} {i}")))
        .collect();
    expected.push("plain".to_owned());
    assert_eq!(seen, expected, "every letter once");
    let bad = admin
        .dead_letter_page(
            &q,
            &DeadLetterQuery::new(4).after(DeadLetterCursor::new("x")),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput);

    assert_eq!(admin.redrive(&q, Redrive::All).await.expect("redrive"), 10);
    assert_eq!(admin.purge(&q).await.expect("purge"), 10);
    admin.delete_queue(&q).await.expect("delete");
    assert!(store
        .list(&groups_space(&q))
        .await
        .expect("list")
        .is_empty());
    assert!(admin.queues().await.expect("queues").is_empty());
    consumer.close().await;
}

#[tokio::test]
async fn an_oversize_group_key_is_refused_naming_it() {
    let (backend, _) = grouped();
    let producer = backend.producer(&queue("keys")).await.expect("producer");
    let err = producer
        .send(Message::new("x").with_group("g".repeat(200)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("group key"), "{err}");
}

/// A consumer whose every handle stopped waiting reads no more, and what
/// it read but did not hand out goes back at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_hands_back_what_was_read() {
    let (backend, _) = grouped();
    let q = queue("close");
    let producer = backend.producer(&q).await.expect("producer");
    for i in 0..20 {
        producer
            .send(Message::new(format!("a {i}")).with_group("a"))
            .await
            .expect("send");
    }
    let one = backend
        .consumer(&q, ConsumerOptions::default())
        .await
        .expect("consumer");
    let got = one.receive(5, SOON).await.expect("receive");
    assert!(!got.is_empty());
    let taken = got.len() as u64;
    one.ack_batch(got).await.expect("ack");
    one.close().await;
    let stats = backend.admin().stats(&q).await.expect("stats");
    assert_eq!(stats.in_flight, 0, "nothing left leased");
    assert_eq!(stats.ready, 20 - taken);
}

/// Where the backend keeps no worker registry, the store holds it: a
/// worker reported through one wrapper is listed through another over the
/// same store, until it leaves or falls silent.
#[tokio::test]
async fn the_worker_registry_lives_in_the_store() {
    let store: Arc<dyn Coordination> = Arc::new(MemoryCoordination::new());
    let inner = fifo();
    assert!(
        inner.admin().workers().await.is_err(),
        "no registry of its own"
    );
    let one = with_store(inner.clone(), store.clone()).expect("wraps");
    let other = with_store(inner, store.clone()).expect("wraps");
    assert_eq!(
        one.capabilities().worker_registry,
        crate::capabilities::Support::Emulated
    );
    let mut worker = WorkerInfo::new(queue("jobs"), 10, Duration::from_secs(5));
    worker.completed = 42;
    one.admin()
        .register_worker(&worker)
        .await
        .expect("register");
    let listed = other.admin().workers().await.expect("workers");
    let seen: Vec<(&str, u64)> = listed
        .iter()
        .map(|w| (w.id.as_str(), w.completed))
        .collect();
    assert_eq!(seen, vec![(worker.id.as_str(), 42)]);
    // Silent for longer than three intervals: dropped, and its record gone.
    let mut silent = WorkerInfo::new(queue("jobs"), 1, Duration::from_millis(10));
    silent.last_heartbeat = std::time::SystemTime::now() - Duration::from_secs(1);
    one.admin()
        .register_worker(&silent)
        .await
        .expect("register");
    assert_eq!(other.admin().workers().await.expect("workers").len(), 1);
    assert_eq!(store.list(WORKERS_SPACE).await.expect("list").len(), 1);
    one.admin()
        .deregister_worker(&worker.id)
        .await
        .expect("deregister");
    assert!(other.admin().workers().await.expect("workers").is_empty());
}
