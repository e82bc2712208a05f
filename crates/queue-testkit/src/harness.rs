//! What a backend provides to the suite, and the per-case context.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proxy::{FaultProxy, ReplyRewrite};
use async_trait::async_trait;
use queue_core::{
    Backend, Capabilities, Consumer, ConsumerOptions, Delivery, JobStore, MemoryBackend, Producer,
    QueueConfig, QueueName, Result,
};

/// A backend under test: how to connect it, and the fault hooks it has.
///
/// Only [`name`](Harness::name), [`url`](Harness::url) and
/// [`connect`](Harness::connect) are required; a hook a backend cannot
/// offer returns `None`, and the cases that use it say so and check what
/// they still can.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Backend name, as in the capability table.
    fn name(&self) -> &'static str;

    /// The URL of the broker under test.
    fn url(&self) -> String;

    /// Connect a backend from a URL (the suite passes variations of
    /// [`url`](Harness::url) to test configuration errors).
    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>>;

    /// A URL of this backend's scheme pointing at a closed port, for the
    /// health case. `None` for in-process backends.
    fn unreachable_url(&self) -> Option<String> {
        None
    }

    /// Messages the competing-consumers case moves through four
    /// consumers (case 24): 10,000. A harness on a stand-in server too
    /// slow for that within the case's time (moto's FIFO queues, whose
    /// every receive scans the queue for free message groups) sends fewer;
    /// against the real service it keeps the full size.
    fn competing_messages(&self) -> usize {
        10_000
    }

    /// Whether the broker keeps a connection open between requests. An
    /// HTTP server that closes each connection after its reply (moto's
    /// does) leaves nothing open for a cut between calls, so the fault
    /// cases check that calls went through the proxy instead.
    fn connections_persist(&self) -> bool {
        true
    }

    /// The broker's TCP address, for the fault proxy (the fault cases
    /// connect through it). `None` for in-process backends.
    fn broker_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// For a broker whose replies tell clients where to connect (Kafka's
    /// metadata names each broker's advertised address): the bytes the
    /// fault proxy at `proxy` replaces in replies so they name the proxy,
    /// keeping every connection on it. `None` (the default) passes replies
    /// as they come.
    fn reply_rewrite(&self, _proxy: SocketAddr) -> Option<ReplyRewrite> {
        None
    }

    /// [`url`](Harness::url) pointing at `addr` (the proxy) instead of the
    /// broker. The default replaces the URL's host and port; a harness
    /// whose URL names the broker elsewhere (an `endpoint` parameter)
    /// overrides it.
    fn url_via(&self, addr: SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url()).expect("the harness URL parses");
        url.set_ip_host(addr.ip()).expect("the URL has a host");
        url.set_port(Some(addr.port())).expect("the URL has a host");
        url.to_string()
    }

    /// A private broker of this backend's kind that keeps its data on
    /// disk, which the restart case kills with SIGKILL and starts again
    /// on its files. `None` where the harness cannot run one.
    async fn persistent_broker(&self) -> Option<Result<Box<dyn BrokerProcess>>> {
        None
    }

    /// Write `payload` to `queue` as a plain broker client would, with no envelope.
    async fn inject_foreign(&self, _queue: &QueueName, _payload: &[u8]) -> Option<Result<()>> {
        None
    }

    /// A job store the backend shares between processes (case 38 tracks
    /// jobs in it); `None` uses an in-process `MemoryJobStore`.
    async fn job_store(&self) -> Option<Result<Arc<dyn JobStore>>> {
        None
    }

    /// Connect a backend whose native delay limit is lowered to `limit`, so
    /// the delay-hopping path is exercised quickly.
    async fn connect_with_native_delay_limit(
        &self,
        _limit: Duration,
    ) -> Option<Result<Arc<dyn Backend>>> {
        None
    }
}

/// A broker process a harness runs itself (see
/// [`Harness::persistent_broker`]). Dropping it stops the broker and
/// removes its files.
#[async_trait]
pub trait BrokerProcess: Send + Sync {
    /// The URL to connect to it.
    fn url(&self) -> String;

    /// Kill it with SIGKILL, as a crash or a power cut does.
    async fn kill(&mut self) -> Result<()>;

    /// Start it again on the same port and files; returns once it serves.
    async fn start(&mut self) -> Result<()>;
}

/// A backend connected through a [`FaultProxy`], for the fault cases.
pub struct Faulty {
    /// The proxy between the backend and the broker.
    pub proxy: FaultProxy,
    /// The backend, connected through the proxy.
    pub backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

/// Read a broker URL from `var` (`QUEUE_TEST_REDIS_URL`, ...).
///
/// Unset: prints the reason the suite is skipped and returns `None`, or
/// panics when `QUEUE_TEST_REQUIRED=1` (CI sets it, so a missing broker
/// fails the build instead of passing silently).
pub fn broker_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let required = std::env::var("QUEUE_TEST_REQUIRED").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{var} is not set and QUEUE_TEST_REQUIRED=1: the broker is required (run `cargo xtask test`)"
            );
            eprintln!("skipping: {var} is not set (run `cargo xtask test` to start the brokers)");
            None
        }
    }
}

/// The embedded backend as a harness: every plain `cargo test` runs it.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryHarness;

#[async_trait]
impl Harness for MemoryHarness {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn url(&self) -> String {
        "memory://".to_owned()
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let config = QueueConfig::from_url(url)?;
        Ok(Arc::new(MemoryBackend::from_config(&config)?))
    }
}

/// A queue a case made, with the backend it lives on.
type CreatedQueue = (Arc<dyn Backend>, QueueName);

/// One case's context: the backend, a unique queue, and helpers. Queues
/// made through it are deleted when the case ends.
#[derive(Clone)]
pub struct Ctx {
    case: &'static str,
    harness: Arc<dyn Harness>,
    backend: Arc<dyn Backend>,
    queues: Arc<Mutex<Vec<CreatedQueue>>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("case", &self.case)
            .field("backend", &self.harness.name())
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub(crate) async fn new(case: &'static str, harness: Arc<dyn Harness>) -> Result<Ctx> {
        let backend = harness.connect(&harness.url()).await?;
        Ok(Ctx {
            case,
            harness,
            backend,
            queues: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The case name.
    pub fn case(&self) -> &'static str {
        self.case
    }

    /// The harness.
    pub fn harness(&self) -> &dyn Harness {
        &*self.harness
    }

    /// The backend under test.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Its capability table.
    pub fn caps(&self) -> &Capabilities {
        self.backend.capabilities()
    }

    /// A fresh, uniquely named queue, deleted after the case.
    pub fn queue(&self) -> QueueName {
        self.queue_on(&self.backend)
    }

    /// A fresh queue name that is not cleaned up (for a broker the case
    /// runs and removes itself).
    pub fn queue_name(&self) -> QueueName {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let short: String = self.case.chars().take(32).collect();
        QueueName::new(format!("qt-{short}-{}", &unique[unique.len() - 16..]))
            .expect("generated queue names follow the rule")
    }

    /// A fresh queue on another backend instance, deleted after the case.
    pub fn queue_on(&self, backend: &Arc<dyn Backend>) -> QueueName {
        self.make_queue(backend, None)
    }

    /// A fresh queue whose name is exactly `len` characters (20 to 64).
    pub fn queue_of_len(&self, len: usize) -> QueueName {
        self.make_queue(&self.backend, Some(len))
    }

    fn make_queue(&self, backend: &Arc<dyn Backend>, len: Option<usize>) -> QueueName {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        // The random tail of a v7 UUID, so names made in one millisecond differ.
        let tail = &unique[unique.len() - 16..];
        let short: String = self.case.chars().take(32).collect();
        let mut name = format!("qt-{short}-");
        if let Some(len) = len {
            let len = len.clamp(20, 64);
            name.truncate(len - tail.len() - 1);
            while name.len() < len - tail.len() {
                name.push('x');
            }
        }
        name.push_str(tail);
        let name = QueueName::new(name).expect("generated queue names follow the rule");
        self.queues
            .lock()
            .expect("queue list lock")
            .push((backend.clone(), name.clone()));
        name
    }

    /// A producer for `queue`.
    pub async fn producer(&self, queue: &QueueName) -> Box<dyn Producer> {
        self.backend
            .producer(queue)
            .await
            .unwrap_or_else(|e| panic!("{}: producer for {queue}: {e}", self.case))
    }

    /// A consumer for `queue` with `lease` (or the backend default).
    pub async fn consumer(&self, queue: &QueueName, lease: Option<Duration>) -> Box<dyn Consumer> {
        let mut options = ConsumerOptions::default();
        if let Some(lease) = lease {
            options = options.with_lease(lease);
        }
        self.backend
            .consumer(queue, options)
            .await
            .unwrap_or_else(|e| panic!("{}: consumer for {queue}: {e}", self.case))
    }

    /// A backend of the harness connected through a fresh [`FaultProxy`],
    /// with `query` added to the URL (shorter timeouts, say); `None` for
    /// an in-process backend. Queues made with [`Ctx::queue`] are reached
    /// the same way through it and cleaned up through the direct backend.
    pub async fn faulty(&self, query: &str) -> Option<Faulty> {
        let upstream = self.harness.broker_addr()?;
        let proxy = FaultProxy::start_rewriting(upstream, |addr| self.harness.reply_rewrite(addr))
            .await
            .unwrap_or_else(|e| panic!("{}: start the fault proxy: {e}", self.case));
        let mut url = self.harness.url_via(proxy.addr());
        if !query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(query);
        }
        let backend = self
            .harness
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{}: connect through the fault proxy: {e}", self.case));
        Some(Faulty { proxy, backend })
    }

    pub(crate) async fn cleanup(&self) {
        let queues = std::mem::take(&mut *self.queues.lock().expect("queue list lock"));
        for (backend, queue) in queues {
            if let Err(e) = backend.admin().delete_queue(&queue).await {
                eprintln!("{}: could not delete queue {queue}: {e}", self.case);
            }
        }
    }
}

/// Receive until `n` deliveries arrived or `timeout` passed.
pub async fn receive_n(consumer: &dyn Consumer, n: usize, timeout: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let max = (n - out.len()).min(100);
        let batch = consumer
            .receive(max, left.min(Duration::from_secs(5)))
            .await
            .expect("receive");
        out.extend(batch);
    }
    out
}
