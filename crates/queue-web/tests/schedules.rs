//! The Schedules page and its API over plain HTTP, mounted under
//! `/admin/queues`: the same cases on memory (the backend's own
//! coordination store) and Redis (a store of its own namespace given with
//! `Dashboard::schedules`): every schedule listed with its spec, job,
//! misfire policy, state and next fire time; pause, resume, trigger now
//! and remove with the CSRF token, refused without it; a hostile name and
//! payload escaped (and the name URL-encoded in every path). On memory
//! also: a backend that keeps no store shows a line saying so, and
//! read-only mode hides and refuses every change.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use queue_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerOptions, MemoryBackend, Producer, QueueName,
};
use queue_redis::RedisBackend;
use queue_testkit::broker_url;
use queue_web::Dashboard;
use queue_worker::schedules::{JobTemplate, Misfire, Schedule, Schedules, Spec, HEADER_SCHEDULE};
use support::{get, request, serve};

/// A name with markup, quotes, a slash, a space and characters that mean
/// something in a URL.
const HOSTILE_NAME: &str = "<script>alert('name')</script>/ a?b#c%d é";
const HOSTILE_PAYLOAD: &str = "<script>alert('pay')</script>";
const PAGE: &str = "/admin/queues/schedules";

fn unique(prefix: &str) -> String {
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    format!("{prefix}-{}", &id[20..])
}

fn mounted(dashboard: Dashboard) -> axum::Router {
    axum::Router::new().nest("/admin/queues", dashboard.router())
}

/// `text` as one URL path segment.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A memory backend that keeps no coordination store, as RabbitMQ, SQS
/// and Kafka keep none.
#[derive(Debug)]
struct NoStore {
    inner: MemoryBackend,
    capabilities: Capabilities,
}

impl NoStore {
    fn new() -> Self {
        let inner = MemoryBackend::new();
        let mut capabilities = inner.capabilities().clone();
        capabilities.backend = "storeless";
        NoStore {
            inner,
            capabilities,
        }
    }
}

#[async_trait]
impl Backend for NoStore {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    async fn producer(&self, queue: &QueueName) -> queue_core::Result<Box<dyn Producer>> {
        self.inner.producer(queue).await
    }
    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> queue_core::Result<Box<dyn Consumer>> {
        self.inner.consumer(queue, options).await
    }
    fn admin(&self) -> &dyn Admin {
        self.inner.admin()
    }
    async fn close(&self) -> queue_core::Result<()> {
        self.inner.close().await
    }
}

/// A schedule every day at 07:00 in Paris, and a hostile one every 30 s.
async fn add_two(schedules: &Schedules, queue: &QueueName) {
    schedules
        .add(
            Schedule::new(
                "digest",
                Spec::cron_in("0 7 * * *", "Europe/Paris").expect("cron"),
                JobTemplate::json(queue.clone(), &serde_json::json!({ "kind": "daily" }))
                    .expect("template"),
            )
            .expect("schedule"),
        )
        .await
        .expect("add digest");
    schedules
        .add(
            Schedule::new(
                HOSTILE_NAME,
                Spec::every(Duration::from_secs(30)).expect("interval"),
                JobTemplate::json(
                    queue.clone(),
                    &serde_json::json!({ "html": HOSTILE_PAYLOAD }),
                )
                .expect("template"),
            )
            .expect("schedule")
            .with_misfire(Misfire::Each { max: 3 }),
        )
        .await
        .expect("add the hostile one");
}

async fn csrf(addr: SocketAddr) -> String {
    get(addr, "/admin/queues/api/session").await.json()["csrf"]
        .as_str()
        .expect("csrf")
        .to_owned()
}

/// The cases every backend with a store runs: `backend_name` shows
/// `schedules`, whose jobs go to `queue` of `backend`.
async fn page_and_actions(
    addr: SocketAddr,
    backend_name: &str,
    backend: &Arc<dyn Backend>,
    schedules: &Schedules,
    queue: &QueueName,
) {
    add_two(schedules, queue).await;

    // The page: both listed, next fire times absolute and relative.
    let page = get(addr, PAGE).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let body = &page.body;
    assert!(
        body.contains("href=\"/admin/queues/schedules\" aria-current=\"page\">Schedules</a>"),
        "the navigation: {body}"
    );
    assert!(body.contains("data-schedule=\"digest\""), "{body}");
    assert!(body.contains("<code>0 7 * * *</code>") && body.contains("Europe/Paris"));
    assert!(body.contains("every 30s") && body.contains("the last 3"));
    let digest = schedules
        .get("digest")
        .await
        .expect("get")
        .expect("the digest");
    let next = digest.next_tick.expect("a next tick");
    let next_ms = next
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let shown = jiff::Timestamp::try_from(next)
        .expect("a time")
        .strftime("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    assert!(body.contains(&shown), "the next tick {shown}: {body}");
    let digest_row = body
        .split("<tr ")
        .find(|row| row.starts_with("data-schedule=\"digest\""))
        .expect("the digest's row");
    assert!(
        digest_row.contains(&format!("{shown}</time> <span class=\"note\">in ")),
        "the next tick, absolute and relative: {digest_row}"
    );
    assert!(!body.contains("<script>alert"), "nothing raw: {body}");
    assert!(body.contains("&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;/ a?b#c%d é"));
    assert!(body.contains("&lt;script&gt;alert(&#39;pay&#39;)&lt;/script&gt;"));
    let hostile_path = format!(
        "/admin/queues/schedules/{backend_name}/{}",
        encoded(HOSTILE_NAME)
    );
    assert!(
        body.contains(&format!("action=\"{hostile_path}/pause\"")),
        "the name URL-encoded in its forms: {body}"
    );
    assert!(body.contains("name=\"csrf\"") && body.contains("data-confirm=\""));
    // A live refresh asks for `<main>` only.
    let partial = request(addr, "GET", PAGE, &[("x-queue-partial", "1")], "").await;
    assert!(
        partial.body.starts_with("<h1>Schedules</h1>") && !partial.body.contains("<html"),
        "{}",
        partial.body
    );

    // The API.
    let api = get(addr, "/admin/queues/api/schedules").await.json();
    let section = api["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["backend"] == backend_name)
        .cloned()
        .expect("the backend's section");
    let listed = section["schedules"].as_array().expect("schedules").clone();
    assert_eq!(listed.len(), 2, "{section}");
    let digest_json = listed
        .iter()
        .find(|s| s["name"] == "digest")
        .expect("the digest");
    assert_eq!(
        digest_json["next_tick_ms"].as_u64(),
        u64::try_from(next_ms).ok()
    );
    assert_eq!(digest_json["spec"]["expression"], "0 7 * * *");
    assert_eq!(digest_json["spec"]["time_zone"], "Europe/Paris");
    assert_eq!(digest_json["job"]["queue"], queue.as_str());
    assert_eq!(digest_json["paused"], false);
    assert!(listed.iter().any(|s| s["name"] == HOSTILE_NAME));

    // Changes need the CSRF token and the dashboard's own origin.
    let token = csrf(addr).await;
    let api_path = format!(
        "/admin/queues/api/schedules/{backend_name}/{}",
        encoded(HOSTILE_NAME)
    );
    let pause = format!("{api_path}/pause");
    assert_eq!(request(addr, "POST", &pause, &[], "").await.status, 403);
    let wrong = [("x-csrf-token", "not-the-token")];
    assert_eq!(request(addr, "POST", &pause, &wrong, "").await.status, 403);
    let foreign = [
        ("x-csrf-token", token.as_str()),
        ("origin", "http://evil.example"),
    ];
    assert_eq!(
        request(addr, "POST", &pause, &foreign, "").await.status,
        403
    );
    assert!(!is_paused(schedules, HOSTILE_NAME).await);
    let with = [("x-csrf-token", token.as_str())];
    let paused = request(addr, "POST", &pause, &with, "").await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let paused = paused.json();
    assert_eq!(paused["paused"], true);
    assert!(paused["schedule"]["next_tick_ms"].is_null(), "{paused}");
    assert!(is_paused(schedules, HOSTILE_NAME).await);
    let page = get(addr, PAGE).await.body;
    assert!(
        page.contains(&format!("action=\"{hostile_path}/resume\"")),
        "a paused schedule offers Resume: {page}"
    );
    let resumed = request(addr, "POST", &format!("{api_path}/resume"), &with, "").await;
    assert_eq!(
        (resumed.status, resumed.json()["paused"].as_bool()),
        (200, Some(false)),
        "{}",
        resumed.body
    );
    assert!(!is_paused(schedules, HOSTILE_NAME).await);

    // Trigger now: one job on the queue, carrying the schedule's name.
    let triggered = request(addr, "POST", &format!("{api_path}/trigger"), &with, "").await;
    assert_eq!(triggered.status, 200, "{}", triggered.body);
    let id = triggered.json()["triggered"]
        .as_str()
        .expect("the job's id")
        .to_owned();
    let consumer = backend
        .consumer(queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let got = consumer
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "one job");
    let job = got[0].message();
    assert_eq!(job.id.to_string(), id);
    assert_eq!(
        job.headers.get(HEADER_SCHEDULE).map(String::as_str),
        Some(HOSTILE_NAME)
    );
    assert!(String::from_utf8_lossy(&job.payload).contains(HOSTILE_PAYLOAD));
    for delivery in got {
        delivery.ack().await.map_err(|e| e.error).expect("ack");
    }

    // A form post pauses and comes back to the page.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let digest_form = format!("/admin/queues/schedules/{backend_name}/digest/pause");
    let refused = request(addr, "POST", &digest_form, &form, "csrf=nope").await;
    assert_eq!(refused.status, 403);
    let done = request(addr, "POST", &digest_form, &form, &format!("csrf={token}")).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.header("location"), Some(PAGE));
    assert!(is_paused(schedules, "digest").await);

    // Remove; then it is gone, and so are unknown things.
    let remove = format!("{api_path}/remove");
    let removed = request(addr, "POST", &remove, &with, "").await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(removed.json()["removed"], HOSTILE_NAME);
    assert!(schedules.get(HOSTILE_NAME).await.expect("get").is_none());
    assert_eq!(request(addr, "POST", &remove, &with, "").await.status, 404);
    let again = request(addr, "POST", &format!("{api_path}/pause"), &with, "").await;
    assert_eq!(again.status, 404, "{}", again.body);
    let missing = get(addr, PAGE).await.body;
    assert!(!missing.contains("alert(&#39;name"), "{missing}");
    let explode = format!("/admin/queues/api/schedules/{backend_name}/digest/explode");
    assert_eq!(request(addr, "POST", &explode, &with, "").await.status, 404);
    let nowhere = "/admin/queues/api/schedules/nowhere/digest/pause";
    assert_eq!(request(addr, "POST", nowhere, &with, "").await.status, 404);
    let removed = request(
        addr,
        "POST",
        &format!("/admin/queues/api/schedules/{backend_name}/digest/remove"),
        &with,
        "",
    )
    .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    let empty = get(addr, PAGE).await.body;
    assert!(empty.contains("no schedules"), "{empty}");
}

async fn is_paused(schedules: &Schedules, name: &str) -> bool {
    schedules
        .get(name)
        .await
        .expect("get")
        .expect("the schedule")
        .schedule
        .is_paused()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_on_memory() {
    let memory = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(memory);
    let storeless: Arc<dyn Backend> = Arc::new(NoStore::new());
    let schedules = Schedules::new(backend.clone()).expect("memory keeps a store");
    let queue = QueueName::new("digests").expect("name");
    let addr = serve(mounted(
        Dashboard::for_backend("mem", backend.clone()).backend("broker", storeless),
    ))
    .await;

    // A backend without a store: a line, not an error page; its actions
    // say what is missing.
    let page = get(addr, PAGE).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(
            "<p class=\"note no-store\">schedules need a coordination store, which storeless does not keep"
        ),
        "{}",
        page.body
    );
    let api = get(addr, "/admin/queues/api/schedules").await.json();
    assert_eq!(api["backends"][1]["backend"], "broker");
    assert!(api["backends"][1]["schedules"].is_null());
    assert!(api["backends"][1]["note"]
        .as_str()
        .is_some_and(|n| n.contains("coordination store")));
    let token = csrf(addr).await;
    let no_store = request(
        addr,
        "POST",
        "/admin/queues/api/schedules/broker/digest/pause",
        &[("x-csrf-token", &token)],
        "",
    )
    .await;
    assert_eq!(no_store.status, 501, "{}", no_store.body);

    page_and_actions(addr, "mem", &backend, &schedules, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_lists_schedules_and_refuses_every_change() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let schedules = Schedules::new(backend.clone()).expect("memory keeps a store");
    add_two(&schedules, &QueueName::new("digests").expect("name")).await;
    let addr = serve(mounted(
        Dashboard::for_backend("mem", backend).read_only(true),
    ))
    .await;
    let page = get(addr, PAGE).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("data-schedule=\"digest\""),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("method=\"post\""),
        "no actions: {}",
        page.body
    );
    let token = csrf(addr).await;
    for action in ["pause", "resume", "trigger", "remove"] {
        let path = format!("/admin/queues/api/schedules/mem/digest/{action}");
        let reply = request(addr, "POST", &path, &[("x-csrf-token", &token)], "").await;
        assert_eq!(reply.status, 403, "{action}: {}", reply.body);
        let form = request(
            addr,
            "POST",
            &format!("/admin/queues/schedules/mem/digest/{action}"),
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!("csrf={token}"),
        )
        .await;
        assert_eq!(form.status, 403, "{action}: {}", form.body);
    }
    let digest = schedules
        .get("digest")
        .await
        .expect("get")
        .expect("still there");
    assert!(!digest.schedule.is_paused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_on_redis() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let redis = RedisBackend::connect(&url).await.expect("connect");
    // A namespace of its own: no runner of another test fires these.
    let store = redis
        .coordination_store()
        .with_namespace(&unique("web-schedules"))
        .expect("namespace");
    let backend: Arc<dyn Backend> = Arc::new(redis);
    let schedules = Schedules::with_store(backend.clone(), Arc::new(store.clone()));
    let queue = QueueName::new(unique("web-schedules")).expect("name");
    let addr = serve(mounted(
        Dashboard::for_backend("redis", backend.clone()).schedules("redis", schedules.clone()),
    ))
    .await;
    page_and_actions(addr, "redis", &backend, &schedules, &queue).await;
    store.clear().await.expect("clear");
    backend.admin().delete_queue(&queue).await.expect("delete");
}
