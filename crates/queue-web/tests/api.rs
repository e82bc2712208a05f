//! Every endpoint of the dashboard over plain HTTP, mounted under
//! `/admin/queues` as an application would: pages and JSON reads against
//! a real Redis with a running worker, every change with its CSRF token,
//! and the refusals: a missing or wrong CSRF token, read-only mode, a
//! missing token. Hostile payloads and errors come back escaped.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queue_core::{Backend, Job, JobOptions, JobStore, MemoryBackend, QueueName};
use queue_redis::RedisBackend;
use queue_testkit::broker_url;
use queue_web::Dashboard;
use queue_worker::{JobEventKind, JobScheduler};
use support::{get, request, serve};

const HOSTILE_ERROR: &str = "<script>alert('err')</script>";
const HOSTILE_PAYLOAD: &str = "<script>alert('pay')</script>";

fn unique(prefix: &str) -> String {
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    format!("{prefix}-{}", &id[20..])
}

fn mounted(dashboard: Dashboard) -> axum::Router {
    axum::Router::new().nest("/admin/queues", dashboard.router())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_redis() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let redis = RedisBackend::connect(&url).await.expect("connect");
    let store: Arc<dyn JobStore> = Arc::new(
        redis
            .job_store()
            .with_namespace(&unique("web"))
            .expect("namespace"),
    );
    let backend: Arc<dyn Backend> = Arc::new(redis);
    let queue = QueueName::new(unique("web")).expect("name");
    let q = queue.as_str().to_owned();
    let scheduler = JobScheduler::new(backend.clone(), store.clone());
    let failing = Arc::new(AtomicBool::new(true));
    let fail = failing.clone();
    let worker = scheduler
        .worker(queue.clone())
        .concurrency(2)
        .heartbeat(Some(Duration::from_millis(200)))
        .handler(move |_: Job<serde_json::Value>| {
            let fail = fail.load(Ordering::SeqCst);
            async move {
                if fail {
                    return Err(std::io::Error::other(HOSTILE_ERROR));
                }
                Ok("done")
            }
        })
        .start()
        .await
        .expect("worker");
    let mut events = worker.subscribe();
    let once = JobOptions::default().with_max_retries(0);
    let payload = serde_json::json!({ "html": HOSTILE_PAYLOAD });
    let a = scheduler
        .submit(&queue, &payload, &once)
        .await
        .expect("submit");
    let b = scheduler
        .submit(&queue, &payload, &once)
        .await
        .expect("submit");
    while worker.stats().dead_lettered < 2 {
        tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("both jobs die")
            .expect("event");
    }
    let dashboard = Dashboard::for_backend("main", backend.clone()).job_store(store.clone());
    let addr = serve(mounted(dashboard)).await;
    let at = |path: &str| format!("/admin/queues{path}");

    // The overview, at the mount point (axum's `nest` does not route the
    // path with a trailing slash).
    for path in ["/admin/queues"] {
        let page = get(addr, path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(
            page.body.contains(&format!("data-queue=\"{q}\"")),
            "{}",
            page.body
        );
        assert!(page.body.contains("src=\"/admin/queues/assets/app.js\""));
        let csp = page.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    }
    let overview = get(addr, &at("/api/overview")).await.json();
    let mine = overview["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|v| v["queue"] == q.as_str())
        .cloned()
        .expect("the queue is in the overview");
    assert_eq!(mine["stats"]["dead"], 2, "{mine}");
    assert_eq!(overview["backends"][0]["healthy"], true);

    // Queue detail: everything hostile escaped, nothing raw.
    let detail = get(addr, &at(&format!("/queues/main/{q}"))).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    assert!(!detail.body.contains("<script>alert"), "{}", detail.body);
    assert!(detail
        .body
        .contains("&lt;script&gt;alert(&#39;err&#39;)&lt;/script&gt;"));
    assert!(detail
        .body
        .contains("&lt;script&gt;alert(&#39;pay&#39;)&lt;/script&gt;"));
    assert!(
        detail.body.contains("name=\"csrf\""),
        "actions carry the CSRF token"
    );
    let api = get(addr, &at(&format!("/api/queues/main/{q}")))
        .await
        .json();
    assert_eq!(
        api["dead_letters"]["items"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(api["dead_letters"]["items"][0]["last_error"], HOSTILE_ERROR);
    assert_eq!(
        api["dead_letters"]["items"][0]["payload_json"]["html"],
        HOSTILE_PAYLOAD
    );
    let page1 = get(
        addr,
        &at(&format!("/api/queues/main/{q}/dead-letters?limit=1")),
    )
    .await
    .json();
    assert_eq!(page1["items"].as_array().map(Vec::len), Some(1));
    let next = page1["next"].as_str().expect("a cursor to the next page");
    let page2 = get(
        addr,
        &at(&format!(
            "/api/queues/main/{q}/dead-letters?limit=1&cursor={next}"
        )),
    )
    .await
    .json();
    assert_eq!(page2["items"].as_array().map(Vec::len), Some(1));
    assert!(page2["next"].is_null(), "the last page: {page2}");
    let bad = get(
        addr,
        &at(&format!(
            "/api/queues/main/{q}/dead-letters?cursor=not-a-cursor"
        )),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_ne!(page1["items"][0]["id"], page2["items"][0]["id"]);

    // Jobs and workers.
    let jobs = get(addr, &at(&format!("/api/jobs?status=dead&queue={q}")))
        .await
        .json();
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "{jobs}");
    let list = get(
        addr,
        &at(&format!("/jobs?status=dead&queue={q}&search=ALERT")),
    )
    .await;
    assert!(list.body.contains(&a.to_string()[..8]) && !list.body.contains("<script>alert"));
    let job = get(addr, &at(&format!("/jobs/{a}"))).await;
    assert_eq!(job.status, 200);
    assert!(job.body.contains("Retry now") && !job.body.contains("<script>alert"));
    assert!(
        job.body.contains("attempt 1 failed"),
        "the timeline: {}",
        job.body
    );
    assert_eq!(
        get(addr, &at(&format!("/api/jobs/{a}"))).await.json()["status"],
        "dead"
    );
    let workers = get(addr, &at("/api/workers")).await.json();
    assert!(
        workers["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .any(|w| w["id"] == worker.id()),
        "{workers}"
    );
    assert!(get(addr, &at("/workers"))
        .await
        .body
        .contains(&worker.id()[..8]));

    // Changes need the CSRF token.
    let csrf = get(addr, &at("/api/session")).await.json()["csrf"]
        .as_str()
        .expect("csrf")
        .to_owned();
    let pause = at(&format!("/api/queues/main/{q}/pause"));
    assert_eq!(request(addr, "POST", &pause, &[], "").await.status, 403);
    let wrong = [("x-csrf-token", "not-the-token")];
    assert_eq!(request(addr, "POST", &pause, &wrong, "").await.status, 403);
    let token = [("x-csrf-token", csrf.as_str())];
    let paused = request(addr, "POST", &pause, &token, "").await;
    assert_eq!(
        (paused.status, paused.json()["paused"].as_bool()),
        (200, Some(true))
    );
    assert!(get(addr, &at(&format!("/queues/main/{q}")))
        .await
        .body
        .contains("badge paused"));
    // A form post resumes and redirects back to the queue.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let resume = at(&format!("/queues/main/{q}/resume"));
    let refused = request(addr, "POST", &resume, &form, "csrf=nope").await;
    assert_eq!(refused.status, 403);
    let resumed = request(addr, "POST", &resume, &form, &format!("csrf={csrf}")).await;
    assert_eq!(resumed.status, 303, "{}", resumed.body);
    assert_eq!(
        resumed.header("location"),
        Some(at(&format!("/queues/main/{q}")).as_str())
    );
    assert!(!backend.admin().stats(&queue).await.expect("stats").paused);

    // Redrive one dead letter by id, retry the other job by id: both run.
    failing.store(false, Ordering::SeqCst);
    // The stats count a dead letter before its event is sent: events of
    // the first runs may still be queued.
    while events.try_recv().is_ok() {}
    let json = [
        ("x-csrf-token", csrf.as_str()),
        ("content-type", "application/json"),
    ];
    let redrive = at(&format!("/api/queues/main/{q}/redrive"));
    let body = format!("{{\"ids\": [\"{a}\"]}}");
    let moved = request(addr, "POST", &redrive, &json, &body).await;
    assert_eq!(
        (moved.status, moved.json()["redriven"].as_u64()),
        (200, Some(1)),
        "{}",
        moved.body
    );
    let retried = request(
        addr,
        "POST",
        &at(&format!("/api/jobs/{b}/retry")),
        &token,
        "",
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    while worker.stats().completed < 2 {
        let event = tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("both jobs run again")
            .expect("event");
        assert!(!matches!(event.kind, JobEventKind::DeadLettered { .. }));
    }
    let again = request(
        addr,
        "POST",
        &at(&format!("/api/jobs/{b}/retry")),
        &token,
        "",
    )
    .await;
    assert_eq!(
        again.status, 400,
        "a completed job is not retried: {}",
        again.body
    );
    let bad = request(addr, "POST", &redrive, &json, "{\"ids\": [\"x\"]}").await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Forget a job; purge; unknown things.
    let forget = request(
        addr,
        "POST",
        &at(&format!("/api/jobs/{a}/delete")),
        &token,
        "",
    )
    .await;
    assert_eq!(forget.status, 200, "{}", forget.body);
    assert_eq!(get(addr, &at(&format!("/api/jobs/{a}"))).await.status, 404);
    let purge = request(
        addr,
        "POST",
        &at(&format!("/api/queues/main/{q}/purge")),
        &token,
        "",
    )
    .await;
    assert_eq!(
        (purge.status, purge.json()["purged"].as_u64()),
        (200, Some(0))
    );
    let unknown = request(
        addr,
        "POST",
        &at(&format!("/api/queues/main/{q}/explode")),
        &token,
        "",
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        get(addr, &at(&format!("/api/queues/other/{q}")))
            .await
            .status,
        404
    );
    assert_eq!(
        get(addr, &at("/api/queues/main/bad%20name")).await.status,
        400
    );
    assert_eq!(get(addr, &at("/api/jobs?status=bogus")).await.status, 400);
    assert_eq!(get(addr, &at("/api/jobs?cursor=bogus")).await.status, 400);
    let long_search = format!("/api/jobs?search={}", "x".repeat(300));
    assert_eq!(
        get(addr, &at(&long_search)).await.status,
        400,
        "a search over 256 characters"
    );
    let missing = get(addr, &at("/no/such/page")).await;
    assert_eq!(missing.status, 404);
    assert!(missing.header("content-security-policy").is_some());
    let js = get(addr, &at("/assets/app.js")).await;
    assert_eq!(
        (js.status, js.header("content-type")),
        (200, Some("text/javascript; charset=utf-8"))
    );
    assert_eq!(get(addr, &at("/assets/style.css")).await.status, 200);

    worker.shutdown().await.expect("shutdown");
    backend.admin().delete_queue(&queue).await.expect("delete");
}

/// Bytes Redis has sent to its clients since it started.
async fn redis_output_bytes(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_net_output_bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_previews_paged_by_a_cursor() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    const LETTERS: usize = 30;
    const MIB: usize = 1024 * 1024;
    let redis: Arc<dyn Backend> = Arc::new(RedisBackend::connect(&url).await.expect("connect"));
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let queue = QueueName::new(unique("dead-pages")).expect("name");
    for backend in [&redis, &memory] {
        let producer = backend.producer(&queue).await.expect("producer");
        let consumer = backend
            .consumer(&queue, queue_core::ConsumerOptions::default())
            .await
            .expect("consumer");
        for n in 0..LETTERS {
            let mut body = format!("{{\"n\":{n},\"pad\":\"").into_bytes();
            body.resize(MIB - 2, b'x');
            body.extend_from_slice(b"\"}");
            producer
                .send(queue_core::Message::new(body))
                .await
                .expect("send");
        }
        let mut dead = 0;
        while dead < LETTERS {
            for delivery in consumer
                .receive(10, Duration::from_secs(5))
                .await
                .expect("receive")
            {
                delivery
                    .dead_letter(queue_core::DeadLetterReason::Rejected("test".into()))
                    .await
                    .map_err(|e| e.error)
                    .expect("dead-letter");
                dead += 1;
            }
        }
    }
    let addr = serve(mounted(
        Dashboard::for_backend("redis", redis.clone()).backend("memory", memory.clone()),
    ))
    .await;
    for name in ["redis", "memory"] {
        let first = format!("/admin/queues/api/queues/{name}/{queue}/dead-letters");
        // Other tests share the server's byte count: the least of a few
        // reads is the one that counts.
        let mut sent = u64::MAX;
        let mut page = None;
        for _ in 0..3 {
            let before = redis_output_bytes(&url).await;
            page = Some(get(addr, &format!("{first}?limit=500")).await);
            sent = sent.min(redis_output_bytes(&url).await - before);
        }
        let page = page.expect("a page");
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.len() < 1024 * 1024,
            "{name}: a page of previews is {} bytes",
            page.body.len()
        );
        if name == "redis" {
            // 30 previews of 4 KiB, and the replies' framing.
            assert!(
                sent < 512 * 1024,
                "Redis sent {sent} bytes for one page of previews"
            );
        }
        // Every letter once, in order, page by page.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("{first}?limit=7"),
                Some(c) => format!("{first}?limit=7&cursor={c}"),
            };
            let page = get(addr, &path).await.json();
            let items = page["items"].as_array().expect("items").clone();
            assert!(items.len() <= 7, "{name}");
            for item in items {
                assert_eq!(item["truncated"], true, "{name}");
                assert_eq!(item["payload_bytes"], MIB, "{name}");
                let text = item["payload_text"].as_str().expect("a text preview");
                assert!(text.len() <= 4096, "{name}: {}", text.len());
                let n: usize = text["{\"n\":".len()..text.find(',').expect(",")]
                    .parse()
                    .expect("n");
                seen.push(n);
            }
            match page["next"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, (0..LETTERS).collect::<Vec<_>>(), "{name}");
    }
    redis.admin().delete_queue(&queue).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_hides_and_refuses_every_change() {
    let backend = Arc::new(MemoryBackend::new());
    let queue = QueueName::new("ro").expect("name");
    backend.producer_of(&queue).await;
    let addr = serve(mounted(
        Dashboard::for_backend("mem", backend.clone()).read_only(true),
    ))
    .await;
    let page = get(addr, "/admin/queues/queues/mem/ro").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("method=\"post\""),
        "no actions: {}",
        page.body
    );
    assert!(page.body.contains("read-only"));
    let csrf = get(addr, "/admin/queues/api/session").await.json();
    assert_eq!(csrf["read_only"], true);
    let token = csrf["csrf"].as_str().expect("csrf").to_owned();
    for action in ["pause", "resume", "purge", "redrive"] {
        let path = format!("/admin/queues/api/queues/mem/ro/{action}");
        let reply = request(addr, "POST", &path, &[("x-csrf-token", &token)], "").await;
        assert_eq!(reply.status, 403, "{action}: {}", reply.body);
    }
    let form = request(
        addr,
        "POST",
        "/admin/queues/queues/mem/ro/purge",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("csrf={token}"),
    )
    .await;
    assert_eq!(form.status, 403);
    assert!(!backend.admin().stats(&queue).await.expect("stats").paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_request() {
    let backend = Arc::new(MemoryBackend::new());
    let secret = "a-long-enough-secret-token";
    let addr = serve(mounted(
        Dashboard::for_backend("mem", backend)
            .token(secret)
            .expect("a long enough token"),
    ))
    .await;
    for path in [
        "/admin/queues",
        "/admin/queues/api/overview",
        "/admin/queues/assets/app.js",
    ] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 401, "{path}");
        assert!(!reply.body.contains(secret));
    }
    let bearer = format!("Bearer {secret}");
    let ok = request(
        addr,
        "GET",
        "/admin/queues/api/overview",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    let wrong = request(
        addr,
        "GET",
        "/admin/queues",
        &[("authorization", "Bearer nope")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);
    // ?token= once: a cookie, and the address without it.
    let login = get(
        addr,
        &format!("/admin/queues/jobs?status=dead&token={secret}"),
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(
        login.header("location"),
        Some("/admin/queues/jobs?status=dead")
    );
    let cookie = login.header("set-cookie").expect("a cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().expect("name=value");
    let page = request(addr, "GET", "/admin/queues", &[("cookie", pair)], "").await;
    assert_eq!(page.status, 200);
}

/// `producer_of` for the memory backend: make the queue exist.
trait MakeQueue {
    async fn producer_of(&self, queue: &QueueName);
}

impl MakeQueue for MemoryBackend {
    async fn producer_of(&self, queue: &QueueName) {
        let _ = self.producer(queue).await.expect("producer");
    }
}

/// A backend that, like RabbitMQ, SQS and Kafka, counts acks only in the
/// process that made them and keeps no worker registry: the memory
/// backend with its totals hidden from this (the dashboard's) view.
#[derive(Debug)]
struct CountsElsewhere {
    inner: MemoryBackend,
    capabilities: queue_core::Capabilities,
}

#[async_trait::async_trait]
impl Backend for CountsElsewhere {
    fn capabilities(&self) -> &queue_core::Capabilities {
        &self.capabilities
    }
    async fn producer(
        &self,
        queue: &QueueName,
    ) -> queue_core::Result<Box<dyn queue_core::Producer>> {
        self.inner.producer(queue).await
    }
    async fn consumer(
        &self,
        queue: &QueueName,
        options: queue_core::ConsumerOptions,
    ) -> queue_core::Result<Box<dyn queue_core::Consumer>> {
        self.inner.consumer(queue, options).await
    }
    fn admin(&self) -> &dyn queue_core::Admin {
        self
    }
    async fn close(&self) -> queue_core::Result<()> {
        self.inner.close().await
    }
}

#[async_trait::async_trait]
impl queue_core::Admin for CountsElsewhere {
    async fn ensure_queue(
        &self,
        queue: &QueueName,
        options: &queue_core::QueueOptions,
    ) -> queue_core::Result<()> {
        self.inner.admin().ensure_queue(queue, options).await
    }
    async fn delete_queue(&self, queue: &QueueName) -> queue_core::Result<()> {
        self.inner.admin().delete_queue(queue).await
    }
    async fn purge(&self, queue: &QueueName) -> queue_core::Result<u64> {
        self.inner.admin().purge(queue).await
    }
    async fn stats(&self, queue: &QueueName) -> queue_core::Result<queue_core::QueueStats> {
        let mut stats = self.inner.admin().stats(queue).await?;
        stats.acked_total = 0;
        stats.retried_total = 0;
        stats.dead_lettered_total = 0;
        Ok(stats)
    }
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &queue_core::DeadLetterQuery,
    ) -> queue_core::Result<queue_core::DeadLetterPage> {
        self.inner.admin().dead_letter_page(queue, query).await
    }
    async fn redrive(
        &self,
        queue: &QueueName,
        which: queue_core::Redrive,
    ) -> queue_core::Result<u64> {
        self.inner.admin().redrive(queue, which).await
    }
    async fn health(&self) -> queue_core::HealthStatus {
        self.inner.admin().health().await
    }
    async fn queues(&self) -> queue_core::Result<Vec<QueueName>> {
        self.inner.admin().queues().await
    }
}

/// Where stats count in each process only, the dashboard's rates are the
/// fleet's: the sums of the workers' own reports in the registry, kept in
/// the coordination store (`with_store`) for a backend that keeps none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_come_from_the_workers_where_stats_count_per_process() {
    let inner = MemoryBackend::new();
    let mut capabilities = inner.capabilities().clone();
    capabilities.totals = queue_core::Totals::Process;
    capabilities.worker_registry = queue_core::Support::Unsupported;
    capabilities.group_fairness = queue_core::Coordinated::NeedsStore;
    let plain: Arc<dyn Backend> = Arc::new(CountsElsewhere {
        inner,
        capabilities,
    });
    let store: Arc<dyn queue_core::Coordination> = Arc::new(queue_core::MemoryCoordination::new());
    let backend = queue_core::with_store(plain, store).expect("wraps");
    let queue = QueueName::new("fleet").expect("name");
    let producer = backend.producer(&queue).await.expect("producer");
    for i in 0..400u32 {
        producer
            .send(Job::encode(&i, &JobOptions::default()).expect("encode"))
            .await
            .expect("send");
    }
    let worker = queue_worker::Worker::builder(backend.clone(), queue.clone())
        .concurrency(2)
        .heartbeat(Some(Duration::from_millis(100)))
        .handler(|_: Job<u32>| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await
        .expect("worker");
    let dashboard = Dashboard::for_backend("main", backend.clone()).sample_every(Duration::ZERO);
    let addr = serve(mounted(dashboard)).await;
    let rate = || async {
        let overview = get(addr, "/admin/queues/api/overview").await.json();
        overview["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .find(|v| v["queue"] == "fleet")
            .and_then(|v| v["processed_per_second"].as_f64())
    };
    // The first sample has no rate; later ones see the worker's reports
    // grow (every 100 ms).
    let mut seen = None;
    for _ in 0..50 {
        if let Some(r) = rate().await.filter(|r| *r > 0.0) {
            seen = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let workers = backend.admin().workers().await.expect("workers");
    assert_eq!(workers.len(), 1, "the worker is in the store's registry");
    assert!(
        seen.is_some(),
        "a fleet-wide rate from the workers' reports"
    );
    worker.shutdown().await.expect("shutdown");
}
