//! Flow control on the memory backend: several workers share its
//! coordination store as processes share Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::coordination::{Coordination, Rate};
use queue_core::error::{ErrorKind, HandlerError};
use queue_core::memory::MemoryBackend;
use queue_core::message::{Message, QueueName};
use queue_core::traits::{Backend, Producer};

use super::{RateKey, Worker, WorkerHandle};

async fn send_all(backend: &MemoryBackend, queue: &QueueName, messages: Vec<Message>) {
    let producer = backend.memory_producer(queue).expect("producer");
    producer.send_batch(messages).await.expect("send");
}

/// Jobs finished, counted by handlers and awaited by the test.
#[derive(Clone, Default)]
struct Done(Arc<(AtomicUsize, tokio::sync::Notify)>);

impl Done {
    fn add(&self) {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    /// Wait until `n` jobs are done (at most 20 s).
    async fn wait_for(&self, n: usize) {
        let reached = async {
            loop {
                let changed = self.0 .1.notified();
                if self.0 .0.load(Ordering::SeqCst) >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), reached)
            .await
            .unwrap_or_else(|_| panic!("{} of {n} done", self.0 .0.load(Ordering::SeqCst)));
    }
}

/// A memory backend behind `capabilities` that keeps no coordination
/// store of its own, as RabbitMQ, SQS and Kafka do not.
#[derive(Debug)]
struct Bare(MemoryBackend, queue_core::Capabilities);

impl Bare {
    fn new(capabilities: impl FnOnce(&mut queue_core::Capabilities)) -> Bare {
        let memory = MemoryBackend::new();
        let mut caps = memory.capabilities().clone();
        capabilities(&mut caps);
        Bare(memory, caps)
    }
}

#[async_trait::async_trait]
impl Backend for Bare {
    fn capabilities(&self) -> &queue_core::Capabilities {
        &self.1
    }
    async fn producer(&self, queue: &QueueName) -> queue_core::Result<Box<dyn Producer>> {
        self.0.producer(queue).await
    }
    async fn consumer(
        &self,
        queue: &QueueName,
        options: queue_core::ConsumerOptions,
    ) -> queue_core::Result<Box<dyn queue_core::Consumer>> {
        self.1.check_consumer(&options)?;
        self.0.consumer(queue, options).await
    }
    fn admin(&self) -> &dyn queue_core::Admin {
        self.0.admin()
    }
    async fn close(&self) -> queue_core::Result<()> {
        self.0.close().await
    }
}

/// Start times of every job, by key (the `tenant` header, or "").
type Starts = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

async fn recording_worker(
    backend: &MemoryBackend,
    queue: &QueueName,
    starts: &Starts,
    configure: impl FnOnce(super::WorkerBuilder) -> super::WorkerBuilder,
) -> WorkerHandle {
    let starts = starts.clone();
    configure(Worker::builder(Arc::new(backend.clone()), queue.clone()).concurrency(10))
        .handler(move |job: queue_core::Job<String>| {
            let starts = starts.clone();
            async move {
                starts
                    .lock()
                    .expect("starts")
                    .entry(job.payload.clone())
                    .or_default()
                    .push(Instant::now());
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("start")
}

/// The most starts in any window of `period`.
fn densest(starts: &[Instant], period: Duration) -> usize {
    let mut sorted = starts.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| **t < sorted[i] + period)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn job(key: &str) -> Message {
    queue_core::Job::encode(&key.to_owned(), &queue_core::JobOptions::default())
        .expect("encode")
        .with_header("tenant", key)
}

async fn until_count(starts: &Starts, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: usize = starts.lock().expect("starts").values().map(Vec::len).sum();
        if n >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{n} of {want} jobs started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_workers() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("rate").expect("name");
    let starts = Starts::default();
    let rate = Rate::new(20, Duration::from_millis(500)).expect("rate");
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(recording_worker(&backend, &queue, &starts, |b| b.rate_limit(rate)).await);
    }
    send_all(&backend, &queue, (0..100).map(|_| job("")).collect()).await;
    let began = Instant::now();
    until_count(&starts, 100).await;
    let took = began.elapsed();
    let all = starts.lock().expect("starts").remove("").expect("starts");
    assert!(
        densest(&all, rate.period()) <= 20,
        "{} starts in one window",
        densest(&all, rate.period())
    );
    // 100 jobs at 40/s: 4 windows of waiting at least, and not much more.
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    for worker in workers {
        worker.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_limited_apart() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("rate-keys").expect("name");
    let starts = Starts::default();
    let rate = Rate::new(10, Duration::from_millis(400)).expect("rate");
    let worker = recording_worker(&backend, &queue, &starts, |b| {
        // A job waiting for its key's permit holds a slot: enough slots
        // that b's jobs are not stuck behind a's.
        b.rate_limit_per_key(rate, RateKey::Header("tenant".into()))
            .concurrency(64)
    })
    .await;
    let mut messages: Vec<Message> = (0..30).map(|_| job("a")).collect();
    messages.extend((0..30).map(|_| job("b")));
    send_all(&backend, &queue, messages).await;
    until_count(&starts, 60).await;
    {
        let starts = starts.lock().expect("starts");
        for key in ["a", "b"] {
            let times = &starts[key];
            assert_eq!(times.len(), 30);
            assert!(densest(times, rate.period()) <= 10, "{key}");
        }
        // Independent: b's first ten did not wait for a's thirty.
        let first_b = starts["b"].iter().min().expect("b");
        let last_a = starts["a"].iter().max().expect("a");
        assert!(first_b < last_a);
    }
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_concurrency_holds_across_workers() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("fleet").expect("name");
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Done::default();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (running, most, done) = (running.clone(), most.clone(), done.clone());
        let worker = Worker::builder(Arc::new(backend.clone()), queue.clone())
            .concurrency(10)
            .global_concurrency(3)
            .handler(move |_job: queue_core::Job<String>| {
                let (running, most, done) = (running.clone(), most.clone(), done.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.add();
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .expect("start");
        workers.push(worker);
    }
    send_all(&backend, &queue, (0..60).map(|_| job("")).collect()).await;
    done.wait_for(60).await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "at most 3 at once, and 3 reached"
    );
    let store = backend.coordination().expect("store");
    let name = format!("queue:{queue}:concurrency");
    // Slots are given back as jobs end (in tasks of their own).
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.slots_held(&name).await.expect("held") > 0 {
        assert!(Instant::now() < deadline, "slots still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for worker in workers {
        worker.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_slot_comes_back_after_its_lease() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("fleet-dead").expect("name");
    let store = backend.coordination().expect("store");
    let name = format!("queue:{queue}:concurrency");
    // A holder that died: its slot is never released, only expires.
    let lease = Duration::from_millis(600);
    store
        .acquire_slot(&name, "a process that died", 1, lease)
        .await
        .expect("slot");
    let starts = Starts::default();
    let began = Instant::now();
    let worker = recording_worker(&backend, &queue, &starts, |b| {
        b.global_concurrency(1).slot_lease(lease)
    })
    .await;
    send_all(&backend, &queue, vec![job("")]).await;
    until_count(&starts, 1).await;
    let waited = starts.lock().expect("starts")[""][0] - began;
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(
        waited < Duration::from_millis(600) + Duration::from_secs(1),
        "{waited:?}"
    );
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_handler_backs_the_queue_off_without_spending_attempts() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("backoff").expect("name");
    let calls = Arc::new(Mutex::new(Vec::<(Instant, u32)>::new()));
    let seen = calls.clone();
    let worker = Worker::builder(Arc::new(backend.clone()), queue.clone())
        .concurrency(1)
        .handler(move |job: queue_core::Job<String>| {
            let seen = seen.clone();
            async move {
                let first = {
                    let mut seen = seen.lock().expect("calls");
                    seen.push((Instant::now(), job.attempt));
                    seen.len() == 1
                };
                if first {
                    return Err(HandlerError::rate_limited(
                        "HTTP 429",
                        Duration::from_millis(400),
                    ));
                }
                Ok(())
            }
        })
        .start()
        .await
        .expect("start");
    send_all(&backend, &queue, vec![job("x"), job("y")]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.lock().expect("calls").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            calls.lock().expect("calls")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = calls.lock().expect("calls").clone();
    // Nothing ran during the back-off, and the job came back on attempt 1.
    assert!(
        calls[1].0 - calls[0].0 >= Duration::from_millis(390),
        "{calls:?}"
    );
    assert!(calls.iter().all(|(_, attempt)| *attempt == 1), "{calls:?}");
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_goes_back_at_shutdown_at_once() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("waiting").expect("name");
    let starts = Starts::default();
    let rate = Rate::new(1, Duration::from_secs(60)).expect("rate");
    let worker = recording_worker(&backend, &queue, &starts, |b| b.rate_limit(rate)).await;
    send_all(&backend, &queue, vec![job(""), job("")]).await;
    until_count(&starts, 1).await;
    let began = Instant::now();
    worker.shutdown().await.expect("shutdown");
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    let stats = backend.admin().stats(&queue).await.expect("stats");
    assert_eq!(stats.ready, 1, "the waiting job is back: {stats:?}");
}

#[tokio::test]
async fn limits_without_a_store_name_what_to_configure() {
    let queue = QueueName::new("nostore").expect("name");
    let backend = Arc::new(Bare::new(|_| {}));
    let error = Worker::builder(backend.clone(), queue.clone())
        .global_concurrency(2)
        .handler(|_job: queue_core::Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(error.message().contains("global_concurrency"), "{error}");
    assert!(error.message().contains("coordination"), "{error}");
    // With a store given, it starts.
    let store: Arc<dyn Coordination> = Arc::new(queue_core::MemoryCoordination::new());
    let worker = Worker::builder(backend, queue.clone())
        .global_concurrency(2)
        .coordination(store)
        .handler(|_job: queue_core::Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect("started");
    worker.shutdown().await.expect("shutdown");
    let error = Worker::builder(Arc::new(MemoryBackend::new()), queue)
        .global_concurrency(0)
        .handler(|_job: queue_core::Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect_err("zero");
    assert!(error.message().contains("global_concurrency"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_concurrency_holds_across_workers_and_groups_take_turns() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("tenants").expect("name");
    // Running jobs and the most at once, by group; the order jobs began.
    type Counts = Arc<Mutex<(HashMap<String, (usize, usize)>, Vec<String>)>>;
    let counts = Counts::default();
    let done = Done::default();
    // 40 of "a" queued before 4 of "b".
    let mut messages: Vec<Message> = (0..40).map(|_| job("a").with_group("a")).collect();
    messages.extend((0..4).map(|_| job("b").with_group("b")));
    send_all(&backend, &queue, messages).await;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (counts, done) = (counts.clone(), done.clone());
        let worker = Worker::builder(Arc::new(backend.clone()), queue.clone())
            .concurrency(8)
            .group_concurrency(2)
            .handler(move |job: queue_core::Job<String>| {
                let (counts, done) = (counts.clone(), done.clone());
                async move {
                    {
                        let mut c = counts.lock().expect("counts");
                        let (running, most) = c.0.entry(job.payload.clone()).or_default();
                        *running += 1;
                        *most = (*most).max(*running);
                        c.1.push(job.payload.clone());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    counts
                        .lock()
                        .expect("counts")
                        .0
                        .get_mut(&job.payload)
                        .expect("entry")
                        .0 -= 1;
                    done.add();
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .expect("start");
        workers.push(worker);
    }
    done.wait_for(44).await;
    for worker in workers {
        worker.shutdown().await.expect("shutdown");
    }
    let (most, order) = {
        let c = counts.lock().expect("counts");
        (c.0.clone(), c.1.clone())
    };
    assert_eq!(most["a"].1, 2, "a: at most 2 at once, and 2 reached");
    assert_eq!(most["b"].1, 2, "b: at most 2 at once, and 2 reached");
    let last_b = order.iter().rposition(|g| g == "b").expect("b ran");
    assert!(last_b < 12, "b's jobs began among the first: {order:?}");
}

#[tokio::test]
async fn group_concurrency_is_refused_where_groups_are_not_native() {
    let backend = Arc::new(Bare::new(|caps| {
        caps.group_fairness = queue_core::Coordinated::Unsupported;
    }));
    let error = Worker::builder(backend, QueueName::new("unfair").expect("name"))
        .group_concurrency(2)
        .handler(|_job: queue_core::Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert!(error.message().contains("group"), "{error}");
    let error = Worker::builder(
        Arc::new(MemoryBackend::new()),
        QueueName::new("zero").expect("name"),
    )
    .group_concurrency(0)
    .handler(|_job: queue_core::Job<String>| async { Ok::<_, std::io::Error>(()) })
    .start()
    .await
    .expect_err("zero");
    assert!(error.message().contains("group_limit"), "{error}");
}
