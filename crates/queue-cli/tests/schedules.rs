//! `queue schedules` against a real Redis (`QUEUE_TEST_REDIS_URL`): add,
//! list, show, update, pause, resume, trigger, remove, bad input with its
//! exit code, a scheduler process (`queue schedules run`) firing an
//! interval schedule; and RabbitMQ, which keeps no coordination state,
//! refused without `QUEUE_COORDINATION_URL` and served with it.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use queue_testkit::broker_url;

fn queue_cli(url: &str, store: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_queue"));
    command
        .args(args)
        .env("QUEUE_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match store {
        Some(store) => command.env("QUEUE_COORDINATION_URL", store),
        None => command.env_remove("QUEUE_COORDINATION_URL"),
    };
    command.output().expect("run queue")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unique(prefix: &str) -> String {
    let id = queue::MessageId::new().as_uuid().simple().to_string();
    format!("{prefix}-{}", &id[20..])
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn listed(url: &str, store: Option<&str>) -> serde_json::Value {
    let out = queue_cli(url, store, &["schedules", "list", "--json"]);
    serde_json::from_str(&ok(&out)).expect("list JSON")
}

fn find<'a>(list: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    list.as_array()?
        .iter()
        .find(|info| info["schedule"]["name"] == name)
}

#[test]
fn schedules_on_redis() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let (name, queue) = (unique("cli-digest"), unique("cli-digests"));
    let add = [
        "schedules",
        "add",
        &name,
        "--queue",
        &queue,
        "--cron",
        "0 7 * * *",
        "--tz",
        "Europe/Paris",
        "--json",
        "{\"kind\":\"daily\"}",
        "--misfire",
        "skip",
    ];
    assert!(ok(&queue_cli(&url, None, &add)).contains("next"));
    // A name in use is refused: bad input, exit 2.
    let again = queue_cli(&url, None, &add);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    let list = listed(&url, None);
    let info = find(&list, &name).expect("listed");
    assert_eq!(
        info["schedule"]["spec"]["time_zone"], "Europe/Paris",
        "{info}"
    );
    assert!(
        info["next_tick"].is_object() || info["next_tick"].is_number(),
        "{info}"
    );
    let table = ok(&queue_cli(&url, None, &["schedules", "list"]));
    assert!(
        table.contains(&name) && table.contains("Europe/Paris"),
        "{table}"
    );

    // Pause, resume, update, trigger, show.
    ok(&queue_cli(&url, None, &["schedules", "pause", &name]));
    let list = listed(&url, None);
    let info = find(&list, &name).expect("listed");
    assert!(
        info["next_tick"].is_null(),
        "a paused schedule fires nothing: {info}"
    );
    ok(&queue_cli(&url, None, &["schedules", "resume", &name]));
    let update = [
        "schedules",
        "update",
        &name,
        "--queue",
        &queue,
        "--every",
        "1h",
    ];
    ok(&queue_cli(&url, None, &update));
    let shown = ok(&queue_cli(&url, None, &["schedules", "show", &name]));
    assert!(
        shown.contains("3600000") || shown.contains("interval"),
        "{shown}"
    );
    let id = ok(&queue_cli(&url, None, &["schedules", "trigger", &name]));
    assert_eq!(id.trim().len(), 36, "a job id: {id}");
    let stats = ok(&queue_cli(&url, None, &["stats", &queue, "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats");
    // (At least: a scheduler another test runs may fire it on the hour.)
    assert!(
        stats[0]["ready"].as_u64() >= Some(1),
        "the triggered job is queued: {stats}"
    );

    // Bad input names the field and exits 2.
    for (args, field) in [
        (&["--cron", "61 * * * *"][..], "cron"),
        (
            &["--cron", "0 * * * *", "--tz", "Mars/Olympus"][..],
            "time_zone",
        ),
        (&["--every", "0s"][..], "interval"),
        (&["--every", "1m", "--misfire", "sometimes"][..], "misfire"),
    ] {
        let mut command = vec!["schedules", "add", "bad", "--queue", "q"];
        command.extend_from_slice(args);
        let out = queue_cli(&url, None, &command);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(field),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    // Remove; a second remove is "not found", exit 5.
    ok(&queue_cli(
        &url,
        None,
        &["schedules", "remove", &name, "--yes"],
    ));
    let out = queue_cli(&url, None, &["schedules", "remove", &name, "--yes"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    ok(&queue_cli(&url, None, &["delete", &queue, "--yes"]));
}

#[test]
fn a_scheduler_process_fires_ticks() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let (name, queue) = (unique("cli-tick"), unique("cli-ticks"));
    let add = [
        "schedules",
        "add",
        &name,
        "--queue",
        &queue,
        "--every",
        "1s",
    ];
    ok(&queue_cli(&url, None, &add));
    let mut runner = Command::new(env!("CARGO_BIN_EXE_queue"))
        .args(["schedules", "run", "--lease-ttl", "1s"])
        .env("QUEUE_URL", &url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the scheduler");
    // Each second's tick is a job on the queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        // The queue exists from the first tick on.
        let out = queue_cli(&url, None, &["stats", &queue, "--json"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ready = stats[0]["ready"].as_u64().unwrap_or(0);
        if ready >= 2 || Instant::now() > deadline {
            break ready;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    runner.kill().expect("stop the scheduler");
    let _ = runner.wait();
    ok(&queue_cli(
        &url,
        None,
        &["schedules", "remove", &name, "--yes"],
    ));
    ok(&queue_cli(&url, None, &["delete", &queue, "--yes"]));
    assert!(ready >= 2, "{ready} ticks in 20 s");
}

#[test]
fn a_broker_without_a_store_needs_one_named() {
    let (Some(amqp), Some(redis)) = (
        broker_url("QUEUE_TEST_AMQP_URL"),
        broker_url("QUEUE_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let out = queue_cli(&amqp, None, &["schedules", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("QUEUE_COORDINATION_URL"),
        "{}",
        text(&out.stderr)
    );
    let name = unique("cli-amqp");
    let add = [
        "schedules",
        "add",
        &name,
        "--queue",
        "amqp-ticks",
        "--every",
        "1h",
    ];
    ok(&queue_cli(&amqp, Some(&redis), &add));
    assert!(find(&listed(&amqp, Some(&redis)), &name).is_some());
    ok(&queue_cli(
        &amqp,
        Some(&redis),
        &["schedules", "remove", &name, "--yes"],
    ));
}
