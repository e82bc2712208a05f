//! The dashboard in a real browser (headless Chromium through
//! chromedriver, driven with fantoccini) against a real Redis: a queue's
//! depth changes on the overview while a producer sends (live refresh),
//! its dead letters show hostile payloads and errors as text without
//! running them, one is redriven and the counts move, a paused queue's
//! worker stops taking jobs and starts again on resume, and a schedule
//! with a hostile name and payload shows them as text, is paused and
//! triggered from the Schedules page. A screenshot of each page goes to
//! `target/tmp/dashboard/` for review.
//!
//! Needs `QUEUE_TEST_CHROMEDRIVER` (the chromedriver binary; `cargo xtask
//! test` installs Chromium and sets it) and `QUEUE_TEST_REDIS_URL`.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use queue_core::{Backend, Job, JobOptions, JobStore, Message, QueueName};
use queue_redis::RedisBackend;
use queue_testkit::broker_url;
use queue_web::Dashboard;
use queue_worker::schedules::{JobTemplate, Schedule, Schedules, Spec};
use queue_worker::{JobEventKind, JobScheduler};

/// Markup that would set `window.__xss` if the page ran it.
const HOSTILE: &str = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">";

fn unique(prefix: &str) -> String {
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    format!("{prefix}-{}", &id[20..])
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: tokio::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_driver(binary: &str) -> Driver {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("address").port()
    };
    let child = tokio::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    // chromedriver says nothing when it is ready: poll its port.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { child, port }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    let mut chrome = serde_json::json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"],
    });
    if let Ok(binary) = std::env::var("QUEUE_TEST_CHROMIUM") {
        chrome["binary"] = serde_json::Value::String(binary);
    }
    caps.insert("goog:chromeOptions".into(), chrome);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).expect("save screenshot");
}

/// The text of the first element `css` matches. The page replaces its
/// main part on every refresh, so an element found just before one goes
/// stale: then it is found again.
async fn text_of(client: &Client, css: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let element = client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.text().await {
            Ok(text) => return text,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {}
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

/// Wait until the element `css` shows `want` (the page refreshes itself).
async fn until_text(client: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = text_of(client, css).await;
        if now.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} shows {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing the pages showed ran as code.
async fn assert_nothing_ran(client: &Client) {
    let ran = client
        .execute(
            "return window.__xss === undefined ? null : window.__xss;",
            vec![],
        )
        .await
        .expect("execute");
    assert_eq!(
        ran,
        serde_json::Value::Null,
        "a payload or error ran as code"
    );
}

/// Click `css` (found again if a refresh replaced it) and accept the
/// confirmation it asks for.
async fn click_confirmed(client: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let element = client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.click().await {
            Ok(()) => break,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {}
            Err(e) => panic!("click {css}: {e}"),
        }
    }
    let question = client.get_alert_text().await.expect("a confirmation");
    assert!(!question.is_empty());
    client.accept_alert().await.expect("accept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let Some(chromedriver) = broker_url("QUEUE_TEST_CHROMEDRIVER") else {
        return;
    };
    let redis = RedisBackend::connect(&url).await.expect("connect");
    let store: Arc<dyn JobStore> = Arc::new(
        redis
            .job_store()
            .with_namespace(&unique("browser"))
            .expect("namespace"),
    );
    // Schedules in a namespace of their own: no runner of another test
    // fires them.
    let coordination = redis
        .coordination_store()
        .with_namespace(&unique("browser"))
        .expect("namespace");
    let backend: Arc<dyn Backend> = Arc::new(redis);
    let scheduler = JobScheduler::new(backend.clone(), store.clone());
    let schedules = Schedules::with_store(backend.clone(), Arc::new(coordination.clone()));
    let (busy, failing, paused, scheduled) = (
        QueueName::new(unique("busy")).expect("name"),
        QueueName::new(unique("failing")).expect("name"),
        QueueName::new(unique("paused")).expect("name"),
        QueueName::new(unique("scheduled")).expect("name"),
    );
    let app = axum::Router::new().nest(
        "/admin/queues",
        Dashboard::for_backend("redis", backend.clone())
            .job_store(store.clone())
            .schedules("redis", schedules.clone())
            .refresh(Duration::from_millis(500))
            .router(),
    );
    let addr = support::serve(app).await;
    let base = format!("http://{addr}/admin/queues");
    let driver = start_driver(&chromedriver).await;
    let client = browser(&driver).await;

    // 1. The overview follows a producer.
    let producer = backend.producer(&busy).await.expect("producer");
    for i in 0..3 {
        producer
            .send(Message::new(format!("job {i}")))
            .await
            .expect("send");
    }
    client.goto(&base).await.expect("open the overview");
    let ready = format!("tr[data-queue=\"{busy}\"] td.ready");
    until_text(&client, &ready, "3").await;
    for i in 3..10 {
        producer
            .send(Message::new(format!("job {i}")))
            .await
            .expect("send");
    }
    until_text(&client, &ready, "10").await;
    screenshot(&client, "overview").await;

    // 2. Dead letters with hostile payloads and errors, shown as text.
    let fail = Arc::new(AtomicBool::new(true));
    let failing_now = fail.clone();
    let worker = scheduler
        .worker(failing.clone())
        .heartbeat(Some(Duration::from_millis(300)))
        .handler(move |_: Job<String>| {
            let fail = failing_now.load(Ordering::SeqCst);
            async move {
                if fail {
                    return Err(std::io::Error::other(HOSTILE));
                }
                Ok("ok")
            }
        })
        .start()
        .await
        .expect("worker");
    let mut events = worker.subscribe();
    let once = JobOptions::default().with_max_retries(0);
    let dead_job = scheduler
        .submit(&failing, &HOSTILE.to_owned(), &once)
        .await
        .expect("submit");
    scheduler
        .submit(&failing, &HOSTILE.to_owned(), &once)
        .await
        .expect("submit");
    while worker.stats().dead_lettered < 2 {
        tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("jobs die")
            .expect("event");
    }
    client
        .goto(&format!("{base}/queues/redis/{failing}"))
        .await
        .expect("open the queue");
    until_text(&client, "#counts td.dead", "2").await;
    let rows = client
        .find_all(Locator::Css("#dead-letters tbody tr[data-id]"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    let shown = text_of(&client, "#dead-letters tbody tr[data-id] td.error").await;
    assert!(
        shown.contains(HOSTILE),
        "the error shows as text: {shown:?}"
    );
    let page_text = text_of(&client, "#dead-letters").await;
    assert!(
        page_text.contains("window.__xss=1"),
        "the payload shows as text"
    );
    assert_nothing_ran(&client).await;
    screenshot(&client, "queue").await;

    // 3. Redrive one: it runs (now succeeding) and the counts move.
    fail.store(false, Ordering::SeqCst);
    click_confirmed(
        &client,
        "#dead-letters tbody tr[data-id] button.redrive-one",
    )
    .await;
    until_text(&client, "#counts td.dead", "1").await;
    let completed = tokio::time::timeout(Duration::from_secs(15), async {
        while worker.stats().completed < 1 {
            events.recv().await.expect("event");
        }
    })
    .await;
    assert!(completed.is_ok(), "the redriven job ran");
    assert_nothing_ran(&client).await;

    // 4. Jobs and workers pages.
    client
        .goto(&format!("{base}/jobs?status=dead&queue={failing}"))
        .await
        .expect("open jobs");
    let listed = client
        .find_all(Locator::Css("#jobs tbody tr[data-id]"))
        .await
        .expect("rows");
    assert_eq!(listed.len(), 1, "one job is still dead");
    assert_nothing_ran(&client).await;
    screenshot(&client, "jobs").await;
    client
        .goto(&format!("{base}/jobs/{dead_job}"))
        .await
        .expect("open a job");
    text_of(&client, "h1").await;
    assert_nothing_ran(&client).await;
    screenshot(&client, "job").await;
    client
        .goto(&format!("{base}/workers"))
        .await
        .expect("open workers");
    let workers = text_of(&client, "#workers").await;
    assert!(workers.contains(failing.as_str()), "{workers}");
    screenshot(&client, "workers").await;
    worker.shutdown().await.expect("shutdown");

    // 5. Pause a queue: its worker stops taking jobs; resume: it goes on.
    let worker = scheduler
        .worker(paused.clone())
        .handler(|_: Job<u32>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect("worker");
    let mut events = worker.subscribe();
    let paused_producer = backend.producer(&paused).await.expect("producer");
    client
        .goto(&format!("{base}/queues/redis/{paused}"))
        .await
        .expect("open the queue");
    click_confirmed(&client, "button.pause").await;
    text_of(&client, "h1 .badge.paused").await;
    for i in 0..5u32 {
        let job = Job::encode(&i, &JobOptions::default()).expect("encode");
        paused_producer.send(job).await.expect("send");
    }
    // The page shows them waiting, and the worker took none.
    until_text(&client, "#counts td.ready", "5").await;
    assert_eq!(
        worker.stats().started,
        0,
        "a paused queue's worker takes nothing"
    );
    screenshot(&client, "paused").await;
    click_confirmed(&client, "button.resume").await;
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        while worker.stats().completed < 5 {
            let event = events.recv().await.expect("event");
            assert!(!matches!(event.kind, JobEventKind::DeadLettered { .. }));
        }
    })
    .await;
    assert!(done.is_ok(), "resumed, the worker ran every job");
    until_text(&client, "#counts td.ready", "0").await;
    worker.shutdown().await.expect("shutdown");

    // 6. A schedule named and sending hostile markup: shown as text,
    // paused, then triggered (one job on its queue).
    schedules
        .add(
            Schedule::new(
                HOSTILE,
                Spec::every(Duration::from_secs(3600)).expect("interval"),
                JobTemplate::new(scheduled.clone(), HOSTILE),
            )
            .expect("schedule"),
        )
        .await
        .expect("add");
    client
        .goto(&format!("{base}/schedules"))
        .await
        .expect("open schedules");
    let row = "section[data-backend=\"redis\"] tr[data-schedule]";
    assert_eq!(text_of(&client, &format!("{row} td.name")).await, HOSTILE);
    let job = text_of(&client, &format!("{row} td.job code")).await;
    assert!(job.contains("window.__xss=1"), "the payload as text: {job}");
    assert!(text_of(&client, &format!("{row} td.next"))
        .await
        .contains("UTC"));
    assert_nothing_ran(&client).await;
    screenshot(&client, "schedules").await;
    click_confirmed(&client, &format!("{row} button.pause")).await;
    text_of(&client, &format!("{row} td.state .badge.paused")).await;
    click_confirmed(&client, &format!("{row} button.trigger")).await;
    // The queue exists once the job is sent.
    let sent = tokio::time::timeout(Duration::from_secs(15), async {
        while backend
            .admin()
            .stats(&scheduled)
            .await
            .map_or(0, |s| s.ready)
            < 1
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(sent.is_ok(), "the triggered job is on its queue");
    assert_nothing_ran(&client).await;

    client.close().await.expect("close the browser");
    coordination.clear().await.expect("clear the schedules");
    for queue in [&busy, &failing, &paused, &scheduled] {
        backend.admin().delete_queue(queue).await.expect("delete");
    }
}
