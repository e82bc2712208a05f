//! Conformance case 36, `crash_recovery`: a worker process killed with
//! SIGKILL in the middle of a batch of 10,000 jobs loses none of them;
//! another worker process completes every one.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use queue_core::{Backend, Job, JobOptions, Message, QueueName};
use queue_redis::RedisBackend;
use queue_testkit::broker_url;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const JOBS: u32 = 10_000;

fn spawn_worker(
    url: &str,
    queue: &QueueName,
    done_key: &str,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-worker"))
        .args([url, queue.as_str(), done_key])
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

async fn done_count(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("SCARD")
        .arg(key)
        .query_async(conn)
        .await
        .expect("SCARD")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let backend = RedisBackend::connect(&url).await.expect("connect");
    let tail = queue_core::MessageId::new().as_uuid().simple().to_string();
    let queue = QueueName::new(format!("qt-crash-{}", &tail[16..])).unwrap();
    let done_key = format!("qt-crash-done-{}", &tail[16..]);
    let _cleanup = Cleanup {
        url: url.clone(),
        keys: vec![
            format!("{}:{{{}}}:*", queue_redis::DEFAULT_PREFIX, queue),
            done_key.clone(),
        ],
    };
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect for the done set");

    let producer = backend.producer(&queue).await.expect("producer");
    let numbers: Vec<u32> = (0..JOBS).collect();
    for chunk in numbers.chunks(1000) {
        let jobs: Vec<Message> = chunk
            .iter()
            .map(|n| Job::encode(n, &JobOptions::default()).expect("encode"))
            .collect();
        producer.send_batch(jobs).await.expect("send");
    }

    // A short lease, so the killed worker's deliveries come back quickly.
    let worker_url = format!("{url}{}lease=2s", if url.contains('?') { '&' } else { '?' });
    let (mut first, mut lines) = spawn_worker(&worker_url, &queue, &done_key);
    let mut seen = 0;
    while seen < 2_000 {
        let line = next_line(&mut lines).await.expect("the first worker runs");
        seen += usize::from(line.starts_with("done "));
    }
    first.kill().await.expect("SIGKILL the first worker");
    let done_before = done_count(&mut conn, &done_key).await;
    let stats = backend.admin().stats(&queue).await.expect("stats");
    assert!(
        done_before < JOBS as usize && stats.in_flight > 0,
        "the kill did not land mid-batch: {done_before} done, {stats:?}"
    );
    eprintln!(
        "killed after {done_before} jobs, {} in flight",
        stats.in_flight
    );

    let (mut second, mut lines) = spawn_worker(&worker_url, &queue, &done_key);
    let mut lines_since_check = 0;
    while done_count(&mut conn, &done_key).await < JOBS as usize {
        // Check the set every 100 jobs the second worker reports.
        while lines_since_check < 100 {
            match next_line(&mut lines).await {
                Some(_) => lines_since_check += 1,
                None => panic!("the second worker exited"),
            }
            if done_count(&mut conn, &done_key).await == JOBS as usize {
                break;
            }
        }
        lines_since_check = 0;
    }
    // Jobs the first worker finished but never acked come back when their
    // lease ends and run again (at-least-once); wait for the queue to drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = backend.admin().stats(&queue).await.expect("stats");
        if stats.depth() == 0 || tokio::time::Instant::now() > deadline {
            break stats;
        }
        // Redis has no event for "the queue is empty": check it again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(second.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("the second worker stops after stdin closes")
        .expect("wait");
    assert!(status.success(), "the second worker failed: {status}");

    let done: HashSet<u32> = redis::cmd("SMEMBERS")
        .arg(&done_key)
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    assert_eq!(done, numbers.iter().copied().collect(), "jobs were lost");
    assert_eq!(
        (stats.ready, stats.delayed, stats.in_flight, stats.dead),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.enqueued_total, u64::from(JOBS));
    assert_eq!(stats.acked_total, u64::from(JOBS), "{stats:?}");

    backend
        .admin()
        .delete_queue(&queue)
        .await
        .expect("delete queue");
}

/// Removes the test's keys from the shared Redis however the test ends.
struct Cleanup {
    url: String,
    /// Key names or `KEYS` patterns.
    keys: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        for pattern in &self.keys {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("UNLINK").arg(keys).query::<()>(&mut conn);
            }
        }
    }
}
