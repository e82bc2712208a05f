//! Periodic jobs across processes, on every backend with a broker (the
//! schedules and the leader lease in the backend's own store on Redis
//! and PostgreSQL, the test's Redis as the coordination store elsewhere). Three
//! `cron-worker` processes each run a scheduler and a worker; a schedule
//! fires every second for about 60 s; the leader is SIGKILLed twice. Each
//! tick is enqueued exactly once (one job id per tick: a job the broker
//! delivers again after a kill is the same job), sent no more than 2 s
//! after the tick, and run no more than 2 s after it, through both
//! hand-overs; except a job the killed process had taken, which runs when
//! its lease (2 s) ends, and on Kafka within the group's session timeout
//! (the dead member's partitions wait for it).

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use queue::schedules::{JobTemplate, Schedule, Schedules, Spec};
use queue::{Coordination, QueueName};
use queue_testkit::broker_url;
use queue_tests::{unique_queue, Cleanup};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The leader lease: a killed leader's schedules are taken over within it
/// (and a third of it, the followers' retry).
const LEASE_MS: u64 = 1_000;
/// How long the schedule fires.
const RUN: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

struct Worker {
    child: Child,
    who: usize,
}

fn spawn(
    url: &str,
    queue: &QueueName,
    store_url: &str,
    namespace: &str,
    who: usize,
    lines: mpsc::UnboundedSender<(usize, String)>,
) -> Worker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cron-worker"))
        .args([
            url,
            queue.as_str(),
            &LEASE_MS.to_string(),
            store_url,
            namespace,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start a cron worker");
    let stdout = child.stdout.take().expect("piped stdout");
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if lines.send((who, line)).is_err() {
                break;
            }
        }
    });
    Worker { child, who }
}

/// Runs seen: per tick, the job ids, the first run's time and when the
/// job was sent.
#[derive(Default)]
struct Runs {
    ids: BTreeMap<u64, HashSet<String>>,
    first: BTreeMap<u64, u64>,
    sent: BTreeMap<u64, u64>,
}

impl Runs {
    fn add(&mut self, line: &str) {
        let parts: Vec<&str> = line.split(' ').collect();
        let ["run", tick, id, _attempt, at, sent] = parts[..] else {
            return;
        };
        let (Ok(tick), Ok(at), Ok(sent)) =
            (tick.parse::<u64>(), at.parse::<u64>(), sent.parse::<u64>())
        else {
            return;
        };
        self.sent.insert(tick, sent);
        self.ids.entry(tick).or_default().insert(id.to_owned());
        let first = self.first.entry(tick).or_insert(at);
        *first = (*first).min(at);
    }
}

async fn cron(url: &str, store_url: &str) {
    let queue = unique_queue("qt-cron");
    let _cleanup = Cleanup {
        url: url.to_owned(),
        queue: queue.clone(),
    };
    let namespace = format!("cron-{}", queue.as_str());
    let store: Arc<dyn Coordination> = queue_tests::coordination_store(store_url, &namespace)
        .await
        .expect("connect the store");
    let backend = queue::connect(url).await.expect("connect");
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    // A short lease, so a job the killed process had taken comes back soon.
    let worker_url = format!("{url}{}lease=2s", if url.contains('?') { '&' } else { '?' });
    let mut workers: Vec<Worker> = (0..3)
        .map(|who| {
            spawn(
                &worker_url,
                &queue,
                store_url,
                &namespace,
                who,
                lines_tx.clone(),
            )
        })
        .collect();
    drop(lines_tx);
    // Every process ready before the schedule exists.
    let mut ready = 0;
    let mut runs = Runs::default();
    let mut leader = None;
    while ready < 3 {
        let (who, line) = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("the workers start within 60 s")
            .expect("the workers print");
        match line.as_str() {
            "ready" => ready += 1,
            "leader" => leader = Some(who),
            _ => {}
        }
    }
    let schedules = Schedules::with_store(backend.clone(), store.clone());
    let job = JobTemplate::json(queue.clone(), &serde_json::Value::Null).expect("template");
    let schedule = Schedule::new(
        "every-second",
        Spec::every(Duration::from_secs(1)).expect("spec"),
        job,
    )
    .expect("schedule");
    // Its first tick is the first after the moment `add` writes it (a
    // slow store may take that past a second's boundary).
    let added = schedules.add(schedule).await.expect("add");
    let first_tick = added
        .next_tick
        .expect("an active schedule has a next tick")
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64;
    let started = Instant::now();
    let mut kills: Vec<u64> = Vec::new();
    let kill_at = [Duration::from_secs(15), Duration::from_secs(35)];
    while started.elapsed() < RUN {
        if kills.len() < kill_at.len() && started.elapsed() >= kill_at[kills.len()] {
            if let Some(who) = leader.take() {
                let victim = workers
                    .iter_mut()
                    .find(|w| w.who == who)
                    .expect("the leader runs");
                victim.child.kill().await.expect("SIGKILL the leader");
                kills.push(now_ms());
                eprintln!("killed the leader (worker {who})");
            }
        }
        if let Ok(Some((who, line))) =
            tokio::time::timeout(Duration::from_millis(100), lines.recv()).await
        {
            if line == "leader" {
                leader = Some(who);
            }
            runs.add(&line);
        }
    }
    let last_tick = now_ms() - 3_000;
    schedules.remove("every-second").await.expect("remove");
    // The survivors stop; what they printed until then still counts.
    for worker in &mut workers {
        drop(worker.child.stdin.take());
    }
    while let Ok(Some((_, line))) =
        tokio::time::timeout(Duration::from_secs(30), lines.recv()).await
    {
        runs.add(&line);
    }
    for mut worker in workers {
        let _ = worker.child.wait().await;
    }
    queue_tests::clear_store(store_url, &namespace).await;
    assert_eq!(kills.len(), 2, "the leader was killed twice");

    // Every tick from the schedule's first to three
    // seconds before the end: one job each, sent within 2 s of its tick,
    // and run within 2 s of it too, except a job the killed process had
    // taken: that one runs again once its lease (2 s) ends, and where the
    // broker holds jobs back after a kill: a Kafka group reassigns a dead
    // member's partitions only after its session timeout (6 s here), so a
    // job sent on time to one of them runs that much later.
    let rebalances = backend.capabilities().rebalances_on_join;
    let run_bound = if rebalances { 15_000 } else { 2_000 };
    let (mut sent_late, mut run_late) = (Vec::new(), Vec::new());
    let mut taken_by_the_dead = 0;
    for tick in (first_tick..=last_tick).step_by(1000) {
        let ids = runs.ids.get(&tick).map_or(0, HashSet::len);
        assert_eq!(
            ids, 1,
            "tick {tick} was enqueued {ids} times (kills at {kills:?})"
        );
        let sent_at = runs.sent[&tick];
        let (sent, ran) = (
            sent_at.saturating_sub(tick),
            runs.first[&tick].saturating_sub(tick),
        );
        assert!(
            sent <= 2_000,
            "tick {tick} was sent {sent} ms late (kills at {kills:?})"
        );
        // Sent before a kill and run within the lease (and the bound)
        // after it: the killed process had taken it.
        let retaken = kills
            .iter()
            .any(|k| sent_at <= *k && runs.first[&tick] <= k + 2_000 + run_bound);
        if ran > run_bound && retaken {
            taken_by_the_dead += 1;
        } else {
            assert!(
                ran <= run_bound,
                "tick {tick} ran {ran} ms late (kills at {kills:?})"
            );
        }
        sent_late.push(sent);
        run_late.push(ran);
    }
    assert!(
        taken_by_the_dead <= 2 * kills.len(),
        "{taken_by_the_dead} ticks waited for a killed process's lease"
    );
    sent_late.sort_unstable();
    run_late.sort_unstable();
    let n = sent_late.len();
    eprintln!(
        "{n} ticks, each enqueued once; sent late by median {} ms, max {} ms; run late by median {} ms, max {} ms ({taken_by_the_dead} taken by a killed process)",
        sent_late[n / 2],
        sent_late[n - 1],
        run_late[n / 2],
        run_late[n - 1]
    );
}

macro_rules! cron_on {
    ($($name:ident => $var:literal),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (Some(url), Some(redis)) = (broker_url($var), broker_url("QUEUE_TEST_REDIS_URL")) else {
                return;
            };
            cron(&url, &redis).await;
        }
    )+};
}

cron_on! {
    cron_redis => "QUEUE_TEST_REDIS_URL",
    cron_amqp => "QUEUE_TEST_AMQP_URL",
    cron_sqs => "QUEUE_TEST_SQS_URL",
    cron_kafka => "QUEUE_TEST_KAFKA_URL",
}

/// On PostgreSQL alone: the queue, the schedules and the leader lease in
/// one schema of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_postgres() {
    let Some(base) = broker_url("QUEUE_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = queue_tests::TempSchema::new(&base, "qt_cron");
    cron(&schema.url(), &schema.url()).await;
}
