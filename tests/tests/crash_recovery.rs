//! Conformance case 36, `crash_recovery`, on every backend with a broker
//! that outlives a process: a worker process killed with SIGKILL in the
//! middle of 10,000 jobs loses none of them; another worker process
//! completes every one. The worker binary (`crash-worker`) connects by URL,
//! so one test body runs against each backend's `QUEUE_TEST_<BACKEND>_URL`.
//! (The memory backend lives in one process: nothing outlives a kill.)

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use queue::{Job, JobOptions, Message, QueueName};
use queue_testkit::broker_url;
use queue_tests::{unique_queue, Cleanup};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const JOBS: u32 = 10_000;

fn spawn_worker(url: &str, queue: &QueueName) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-worker"))
        .args([url, queue.as_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker process");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

/// The next line the worker prints, failing the test if it goes quiet.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the worker printed nothing for 60 s")
        .expect("read the worker's output")
}

/// The job number of a `done <n>` line.
fn job_of(line: &str) -> Option<u32> {
    line.strip_prefix("done ")?.parse().ok()
}

/// The job number of a `start <n>` line.
fn started_job(line: &str) -> Option<u32> {
    line.strip_prefix("start ")?.parse().ok()
}

async fn crash_recovery(url: &str) {
    let backend = queue::connect(url).await.expect("connect");
    let queue = unique_queue("qt-crash");
    let _cleanup = Cleanup {
        url: url.to_owned(),
        queue: queue.clone(),
    };
    let producer = backend.producer(&queue).await.expect("producer");
    let numbers: Vec<u32> = (0..JOBS).collect();
    let batch = backend.capabilities().max_batch.clamp(1, 1000);
    for chunk in numbers.chunks(batch) {
        let jobs: Vec<Message> = chunk
            .iter()
            .map(|n| Job::encode(n, &JobOptions::default()).expect("encode"))
            .collect();
        producer.send_batch(jobs).await.expect("send");
    }

    // A short lease, so the killed worker's deliveries come back quickly.
    let worker_url = format!("{url}{}lease=2s", if url.contains('?') { '&' } else { '?' });
    let (mut done, mut started) = (HashSet::new(), HashSet::new());
    let (mut first, mut lines) = spawn_worker(&worker_url, &queue);
    // Kill once 2,000 jobs are done, right as another one begins (it
    // sleeps a few ms before its `done`), so a job is running.
    loop {
        let line = next_line(&mut lines).await.expect("the first worker runs");
        done.extend(job_of(&line));
        let begun = started_job(&line);
        started.extend(begun);
        if done.len() >= 2_000 && begun.is_some() {
            break;
        }
    }
    first.kill().await.expect("SIGKILL the first worker");
    // Lines it printed before the kill still count: those jobs ran (or
    // had begun).
    while let Ok(Some(line)) = lines.next_line().await {
        done.extend(job_of(&line));
        started.extend(started_job(&line));
    }
    let stats = backend.admin().stats(&queue).await.expect("stats");
    let done_before = done.len();
    // Mid-batch: jobs had begun and not ended when the process died; or
    // the broker still counts deliveries of the dead worker in flight
    // (Redis, until their leases end); or ready and done disagree, which
    // on RabbitMQ (whose in-flight count is per process) means deliveries
    // still held by the dead connection (fewer) or already put back
    // though they ran (more).
    let running = started.difference(&done).count();
    let disagree = stats.ready as usize + done_before != JOBS as usize;
    assert!(
        done_before < JOBS as usize && (running > 0 || stats.in_flight > 0 || disagree),
        "the kill did not land mid-batch: {done_before} done, {running} running, {stats:?}"
    );
    eprintln!(
        "killed after {done_before} jobs, {running} running, {} in flight",
        stats.in_flight
    );

    let (mut second, mut lines) = spawn_worker(&worker_url, &queue);
    let mut runs_after = 0usize;
    while done.len() < JOBS as usize {
        let line = next_line(&mut lines)
            .await
            .expect("the second worker runs until every job is done");
        runs_after += usize::from(job_of(&line).is_some());
        done.extend(job_of(&line));
    }
    // Jobs the first worker finished but never acked come back when their
    // lease ends and run again (at-least-once); wait for the queue to drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = backend.admin().stats(&queue).await.expect("stats");
        if stats.depth() == 0 || tokio::time::Instant::now() > deadline {
            break stats;
        }
        // A broker has no event for "the queue is empty": read the next
        // line the worker prints, or look again shortly.
        let _ = tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await;
    };
    drop(second.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("the second worker stops after stdin closes")
        .expect("wait");
    assert!(status.success(), "the second worker failed: {status}");
    eprintln!("the second worker ran {runs_after} jobs");

    assert_eq!(done, numbers.iter().copied().collect(), "jobs were lost");
    assert_eq!(
        (stats.ready, stats.delayed, stats.in_flight, stats.dead),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    if backend.capabilities().exact_stats() {
        assert_eq!(stats.enqueued_total, u64::from(JOBS));
        assert_eq!(stats.acked_total, u64::from(JOBS), "{stats:?}");
    }
}

/// One crash-recovery test per backend with a broker: the URL variable it
/// reads and its name.
macro_rules! crash_recovery_on {
    ($($name:ident => $var:literal),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if let Some(url) = broker_url($var) {
                // PostgreSQL: a schema of the test's own, dropped afterwards.
                let schema = ($var == "QUEUE_TEST_POSTGRES_URL")
                    .then(|| queue_tests::TempSchema::new(&url, "qt_crash"));
                let url = schema.as_ref().map_or(url, queue_tests::TempSchema::url);
                crash_recovery(&url).await;
            }
        }
    )+};
}

crash_recovery_on! {
    crash_recovery_redis => "QUEUE_TEST_REDIS_URL",
    crash_recovery_amqp => "QUEUE_TEST_AMQP_URL",
    crash_recovery_sqs => "QUEUE_TEST_SQS_URL",
    crash_recovery_kafka => "QUEUE_TEST_KAFKA_URL",
    crash_recovery_postgres => "QUEUE_TEST_POSTGRES_URL",
}
