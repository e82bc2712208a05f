//! The `queue` binary's operations against a real Redis
//! (`QUEUE_TEST_REDIS_URL`): send, stats, dead letters, redrive, purge and
//! delete, their JSON output and exit codes; and the exit code of an
//! operation a backend does not support (Kafka's purge, RabbitMQ's queue
//! listing, where their URLs are set); and on RabbitMQ with a coordination
//! store, a queue's group queues counted and deleted with it.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use queue::{DeadLetterReason, QueueName};
use queue_testkit::broker_url;

/// Run `queue` with `args` and `stdin`, `QUEUE_URL` set to `url`.
fn queue_cli(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue"))
        .args(args)
        .env("QUEUE_URL", url)
        .env_remove("QUEUE_WEB_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run queue");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("queue's output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stats_json(url: &str, queue: &str) -> serde_json::Value {
    let out = queue_cli(url, &["stats", queue, "--json"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    rows[0].clone()
}

fn unique(prefix: &str) -> String {
    let id = queue::MessageId::new().as_uuid().simple().to_string();
    format!("{prefix}-{}", &id[20..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_redis() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let name = unique("cli");

    // Three jobs from JSON lines on stdin, one with --json.
    let out = queue_cli(
        &url,
        &["send", &name],
        "{\"n\":1}\n\n{\"n\":2}\n\"three\"\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3, "one id per job");
    let out = queue_cli(
        &url,
        &["send", &name, "--json", "{\"n\":4}", "--delay", "1h"],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stats = stats_json(&url, &name);
    assert_eq!(
        (stats["ready"].as_u64(), stats["delayed"].as_u64()),
        (Some(3), Some(1))
    );
    // Without names, every queue of the backend (from its registry).
    let out = queue_cli(&url, &["stats", "--json"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert!(
        rows.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["queue"] == name.as_str()),
        "{rows}"
    );

    // Bad input sends nothing and exits 2.
    let out = queue_cli(&url, &["send", &name], "{\"n\":5}\nnot json\n");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 2 is not JSON"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(stats_json(&url, &name)["ready"].as_u64(), Some(3));

    // A dead letter with an error holding terminal escapes.
    let backend = queue::connect(&url).await.expect("connect");
    let queue = QueueName::new(&name).unwrap();
    let consumer = backend
        .consumer(&queue, Default::default())
        .await
        .expect("consumer");
    let delivery = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .pop()
        .expect("a job");
    let dead_id = delivery.message().id;
    delivery
        .dead_letter(DeadLetterReason::Rejected("bad\x1b[2J input".into()))
        .await
        .expect("dead letter");
    let out = queue_cli(&url, &["dead-letters", "list", &name], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains(&dead_id.to_string()), "{table}");
    assert!(
        !table.contains('\x1b'),
        "control characters are escaped: {table:?}"
    );
    let out = queue_cli(&url, &["dead-letters", "list", &name, "--json"], "");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dead letters JSON");
    assert_eq!(rows[0]["id"], dead_id.to_string());

    // Redrive by id puts it back.
    let out = queue_cli(
        &url,
        &[
            "dead-letters",
            "redrive",
            &name,
            "--id",
            &dead_id.to_string(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1");
    let stats = stats_json(&url, &name);
    assert_eq!(
        (stats["ready"].as_u64(), stats["dead"].as_u64()),
        (Some(3), Some(0))
    );

    // Pause and resume: stats say so; a mistyped name is not found (5).
    let out = queue_cli(&url, &["pause", &unique("no-such")], "");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(stats_json(&url, &name)["oldest_ready_age"].is_u64());
    let out = queue_cli(&url, &["pause", &name], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stats_json(&url, &name)["paused"].as_bool(), Some(true));
    let out = queue_cli(&url, &["stats", &name], "");
    assert!(
        text(&out.stdout).contains("paused"),
        "{}",
        text(&out.stdout)
    );
    let out = queue_cli(&url, &["resume", &name], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stats_json(&url, &name)["paused"].as_bool(), Some(false));

    // Purge asks first: without a terminal and --yes it refuses (4).
    let out = queue_cli(&url, &["purge", &name], "y\n");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(stats_json(&url, &name)["ready"].as_u64(), Some(3));
    let out = queue_cli(&url, &["purge", &name, "--yes"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "4", "three ready and one delayed");
    let out = queue_cli(&url, &["delete", &name, "--yes"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn bad_input_and_unreachable_brokers() {
    let out = queue_cli("memory://", &["stats", "no spaces allowed"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = queue_cli("memory://", &["send", "q", "--priority", "huge"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = queue_cli("nope://x", &["stats", "q"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // No backend named: it says what to set instead of acting on an
    // empty in-process backend.
    for args in [&["stats", "q"][..], &["purge", "q", "--yes"], &["workers"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_queue"))
            .args(args)
            .env_remove("QUEUE_URL")
            .output()
            .expect("run queue");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("--url") && stderr.contains("QUEUE_URL"),
            "{args:?}: {stderr}"
        );
    }
    // A line longer than the backend's largest payload is refused before
    // it is read whole.
    let long = format!("\"{}\"\n", "x".repeat(5000));
    let out = queue_cli("memory://?max_payload=2048", &["send", "q"], &long);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 1 is longer than the largest payload"),
        "{}",
        text(&out.stderr)
    );
    // A search of more than 256 characters.
    let search = "x".repeat(300);
    let out = queue_cli("memory://", &["jobs", "list", "--search", &search], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("at most 256"),
        "{}",
        text(&out.stderr)
    );
    // A closed port: exit 1, and the password never shows.
    let out = queue_cli(
        "redis://user:hunter2secret@127.0.0.1:1",
        &["stats", "q"],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("hunter2secret"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_backend_is_compiled_in() {
    // Nothing listens on port 1: each fails to connect (exit 1), none is
    // refused as a backend this build lacks.
    for url in [
        "kafka://127.0.0.1:1?connect_timeout=1s",
        "sqs://us-east-1?endpoint=http://127.0.0.1:1&connect_timeout=1s",
        "amqp://127.0.0.1:1",
        "redis://127.0.0.1:1",
        "rediss://127.0.0.1:1",
    ] {
        let out = queue_cli(url, &["stats", "q"], "");
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("not compiled in"), "{url}: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
    }
}

#[test]
fn unsupported_operations_exit_3() {
    let Some(url) = broker_url("QUEUE_TEST_KAFKA_URL") else {
        return;
    };
    let out = queue_cli(&url, &["purge", &unique("cli"), "--yes"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = queue_cli(&url, &["pause", &unique("cli")], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn stats_needs_names_where_a_backend_cannot_list() {
    // RabbitMQ's protocol has no way to list queues (that is the
    // management plugin's HTTP API).
    let Some(url) = broker_url("QUEUE_TEST_AMQP_URL") else {
        return;
    };
    let out = queue_cli(&url, &["stats"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("name them"),
        "{}",
        text(&out.stderr)
    );
    // Nor does it hold job records or a worker registry.
    for args in [&["jobs", "list"][..], &["workers"]] {
        let out = queue_cli(&url, args, "");
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_jobs_on_redis() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use queue::{Job, JobEventKind, JobOptions, JobScheduler};

    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let queue = QueueName::new(unique("cli-jobs")).expect("name");
    let backend = queue::connect(&url).await.expect("connect");
    let store = backend
        .default_job_store()
        .expect("Redis keeps a job store");
    let scheduler = JobScheduler::new(backend.clone(), store);
    let fail = Arc::new(AtomicBool::new(true));
    let failing = fail.clone();
    let worker = scheduler
        .worker(queue.clone())
        .concurrency(2)
        .heartbeat(Some(Duration::from_millis(200)))
        .handler(move |job: Job<String>| {
            let fail = failing.load(Ordering::SeqCst) && job.payload == "bad";
            async move {
                if fail {
                    return Err(std::io::Error::other("<b>boom</b>\x1b[2J"));
                }
                Ok(job.payload.len())
            }
        })
        .start()
        .await
        .expect("worker");
    let mut events = worker.subscribe();
    let ok = scheduler
        .submit(&queue, &"fine".to_owned(), &JobOptions::default())
        .await
        .expect("submit");
    let once = JobOptions::default().with_max_retries(0);
    let bad = scheduler
        .submit(&queue, &"bad".to_owned(), &once)
        .await
        .expect("submit");
    let mut settled = 0;
    while settled < 2 {
        let event = tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("jobs settle")
            .expect("event");
        if matches!(
            event.kind,
            JobEventKind::Completed | JobEventKind::DeadLettered { .. }
        ) {
            settled += 1;
        }
    }
    let (id, ok_id, bad_id) = (worker.id().to_owned(), ok.to_string(), bad.to_string());

    // The worker is listed; its heartbeat carries the counts.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = queue_cli(&url, &["workers", "--json"], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let workers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let me = workers
            .as_array()
            .expect("array")
            .iter()
            .find(|w| w["id"] == id.as_str())
            .cloned();
        if let Some(me) = me.filter(|w| w["completed"] == 1) {
            assert_eq!(me["queue"], queue.as_str());
            assert_eq!(
                (me["concurrency"].as_u64(), me["failed"].as_u64()),
                (Some(2), Some(1))
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker {id} listed with its counts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = queue_cli(&url, &["workers"], "");
    assert!(text(&out.stdout).contains(&id), "{}", text(&out.stdout));

    // Listing: both, newest first; by status; by search; the error escaped.
    let out = queue_cli(
        &url,
        &["jobs", "list", "--queue", queue.as_str(), "--json"],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<&str> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, [bad_id.as_str(), ok_id.as_str()]);
    assert_eq!(page["jobs"][0]["name"], "String");
    assert_eq!(page["next"], serde_json::Value::Null);
    let out = queue_cli(
        &url,
        &[
            "jobs",
            "list",
            "--queue",
            queue.as_str(),
            "--status",
            "dead",
            "--limit",
            "1",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains(&bad_id) && !table.contains(&ok_id),
        "{table}"
    );
    assert!(
        table.contains("<b>boom</b>\\u{1b}[2J"),
        "control characters escaped: {table}"
    );
    let out = queue_cli(
        &url,
        &[
            "jobs",
            "list",
            "--queue",
            queue.as_str(),
            "--search",
            "BOOM",
            "--json",
        ],
        "",
    );
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1));
    let out = queue_cli(&url, &["jobs", "show", &bad_id, "--json"], "");
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (record["status"].as_str(), record["attempts"].as_u64()),
        (Some("dead"), Some(1))
    );
    assert_eq!(record["errors"][0]["attempt"], 1, "{record}");
    let out = queue_cli(&url, &["jobs", "show", &bad_id], "");
    assert!(text(&out.stdout).contains("dead"), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("attempt 1 failed"),
        "{}",
        text(&out.stdout)
    );

    // Retry the dead job: it runs again and completes.
    fail.store(false, Ordering::SeqCst);
    let out = queue_cli(&url, &["jobs", "retry", &bad_id], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let completed = tokio::time::timeout(Duration::from_secs(15), async {
        while worker.stats().completed < 2 {
            events.recv().await.expect("event");
        }
    })
    .await;
    assert!(completed.is_ok(), "the retried job completes");
    let record = scheduler.status(bad).await.expect("status").expect("kept");
    assert_eq!(record.status, queue::JobStatus::Completed);

    // Refusals, with their exit codes.
    let code = |args: &[&str]| queue_cli(&url, args, "").status.code();
    assert_eq!(code(&["jobs", "retry", &ok_id]), Some(2), "a completed job");
    let unknown = queue::MessageId::new().to_string();
    assert_eq!(code(&["jobs", "show", &unknown]), Some(5));
    assert_eq!(code(&["jobs", "retry", &unknown]), Some(5));
    assert_eq!(code(&["jobs", "show", "not-an-id"]), Some(2));
    assert_eq!(code(&["jobs", "list", "--status", "bogus"]), Some(2));
    assert_eq!(code(&["jobs", "list", "--cursor", "bogus"]), Some(2));
    assert_eq!(code(&["jobs", "delete", &ok_id]), Some(4), "not confirmed");
    assert_eq!(code(&["jobs", "delete", &ok_id, "--yes"]), Some(0));
    assert_eq!(code(&["jobs", "show", &ok_id]), Some(5), "forgotten");

    // A stopped worker leaves the registry.
    worker.shutdown().await.expect("shutdown");
    let out = queue_cli(&url, &["workers", "--json"], "");
    assert!(!text(&out.stdout).contains(&id), "{}", text(&out.stdout));
    scheduler.delete(bad).await.expect("forget");
    backend.admin().delete_queue(&queue).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_from_the_registry_cannot_drive_the_terminal() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let backend = queue::connect(&url).await.expect("connect");
    let queue = QueueName::new(unique("cli-registry")).unwrap();
    let mut worker = queue::WorkerInfo::new(queue.clone(), 1, Duration::from_secs(30));
    worker.id = "evil\x1b[2J\x1b]0;title\x07".to_owned();
    worker.host = "host\x1b[31m".to_owned();
    backend
        .admin()
        .register_worker(&worker)
        .await
        .expect("register");
    let out = queue_cli(&url, &["workers"], "");
    backend
        .admin()
        .deregister_worker(&worker.id)
        .await
        .expect("deregister");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("evil\\u{1b}[2J"), "{table}");
    assert!(
        !table.contains('\x1b') && !table.contains('\x07'),
        "{table:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_previews_a_page_at_a_time() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let name = unique("cli-dead");
    let backend = queue::connect(&url).await.expect("connect");
    let queue = QueueName::new(&name).unwrap();
    let producer = backend.producer(&queue).await.expect("producer");
    let big = "x".repeat(10_000);
    for n in 0..2 {
        producer
            .send(queue::Message::new(format!("{n}{big}")))
            .await
            .expect("send");
    }
    let consumer = backend
        .consumer(&queue, Default::default())
        .await
        .expect("consumer");
    let mut dead = 0;
    while dead < 2 {
        for delivery in consumer
            .receive(2, Duration::from_secs(5))
            .await
            .expect("receive")
        {
            delivery
                .dead_letter(DeadLetterReason::Rejected("no".into()))
                .await
                .expect("dead letter");
            dead += 1;
        }
    }
    let list = |extra: &[&str]| {
        let mut args = vec!["dead-letters", "list", name.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = queue_cli(&url, &args, "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        (rows, text(&out.stderr))
    };
    let (first, note) = list(&["--limit", "1"]);
    assert_eq!(first[0]["truncated"], true, "{first}");
    assert_eq!(first[0]["payload_bytes"], 10_001);
    let preview = first[0]["payload"].as_str().expect("text");
    assert!(
        preview.starts_with("0x") && preview.len() == 4096,
        "{}",
        preview.len()
    );
    let cursor = note
        .split("--cursor ")
        .nth(1)
        .map(str::trim)
        .expect("a cursor to the next page");
    let (second, note) = list(&["--limit", "1", "--cursor", cursor]);
    assert!(second[0]["payload"]
        .as_str()
        .expect("text")
        .starts_with("1x"));
    assert!(!note.contains("--cursor"), "the last page: {note}");
    let (whole, _) = list(&["--full"]);
    assert_eq!(whole.as_array().map(Vec::len), Some(2));
    assert_eq!(whole[1]["truncated"], false);
    assert_eq!(whole[1]["payload"].as_str().map(str::len), Some(10_001));
    let out = queue_cli(
        &url,
        &["dead-letters", "list", &name, "--cursor", "nope"],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    backend.admin().delete_queue(&queue).await.expect("delete");
}

/// RabbitMQ with a coordination store (`QUEUE_COORDINATION_URL`): a
/// queue's group queues count with it in `queue stats`, and `queue
/// delete` takes them too; without the variable only the queue itself is
/// seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_queues_count_with_their_queue_on_amqp() {
    let (Some(url), Some(store)) = (
        broker_url("QUEUE_TEST_AMQP_URL"),
        broker_url("QUEUE_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let name = unique("cli-groups");
    let queue = QueueName::new(&name).expect("name");
    let backend = queue::with_store(
        queue::connect(&url).await.expect("connect"),
        queue::connect_coordination(&store).await.expect("store"),
    )
    .expect("groups through the store");
    let admin = backend.admin();
    admin
        .ensure_queue(&queue, &queue::QueueOptions::default())
        .await
        .expect("ensure");
    let producer = backend.producer(&queue).await.expect("producer");
    for group in ["a", "b"] {
        for i in 0..2 {
            producer
                .send(queue::Message::new(format!("{group} {i}")).with_group(group))
                .await
                .expect("send");
        }
    }
    producer
        .send(queue::Message::new("plain"))
        .await
        .expect("send");
    let cli = |store: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_queue"));
        command
            .args(args)
            .env("QUEUE_URL", &url)
            .stdin(Stdio::null());
        match store {
            Some(store) => command.env("QUEUE_COORDINATION_URL", store),
            None => command.env_remove("QUEUE_COORDINATION_URL"),
        };
        let out = command.output().expect("run queue");
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };
    let ready = |store: Option<&str>| {
        let out = cli(store, &["stats", &name, "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        rows[0]["ready"].as_u64()
    };
    assert_eq!(ready(Some(&store)), Some(5), "the group queues count");
    assert_eq!(ready(None), Some(1), "the queue alone");
    cli(Some(&store), &["delete", &name, "--yes"]);
    let gone = admin.stats(&queue).await.unwrap_err();
    assert_eq!(gone.kind(), queue::ErrorKind::NotFound, "{gone}");
    let plain = queue::connect(&url).await.expect("connect");
    for group in ["a", "b"] {
        let of_group = queue::groups::group_queue(&queue, &queue::groups::group_key(&queue, group));
        let gone = plain.admin().stats(&of_group).await.unwrap_err();
        assert_eq!(
            gone.kind(),
            queue::ErrorKind::NotFound,
            "{of_group}: {gone}"
        );
    }
}
