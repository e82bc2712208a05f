//! Rebalances under load on Kafka (issue 11): a worker process runs a
//! backlog, a second worker process joins the group mid-run (a
//! rebalance splits the partitions) and later shuts down gracefully (a
//! rebalance gives them back). Every job runs at least once; jobs that
//! ran twice are counted, and stay within what the two processes can
//! have had in flight across the two rebalances.
//!
//! Both processes are the `crash-worker` binary (one `done <n>` line per
//! job it ran), so the test counts runs without a broker-specific store.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use queue::{Job, JobOptions, Message, QueueName};
use queue_testkit::broker_url;
use queue_tests::{unique_queue, Cleanup};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const JOBS: u32 = 30_000;
/// Each process's worker concurrency (`crash-worker` runs 32 slots).
const CONCURRENCY: u32 = 32;
/// Milliseconds each job takes, so a run spans both rebalances.
const WORK_MS: &str = "20";

/// A worker process whose output lines arrive on `lines` tagged `who`.
fn spawn_worker(
    url: &str,
    queue: &QueueName,
    who: &'static str,
    lines: mpsc::UnboundedSender<(&'static str, String)>,
) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-worker"))
        .args([url, queue.as_str(), WORK_MS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start a worker process");
    let stdout = child.stdout.take().expect("piped stdout");
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if lines.send((who, line)).is_err() {
                break;
            }
        }
    });
    child
}

/// Runs per job number, and job runs per worker.
#[derive(Default)]
struct Tally {
    runs: HashMap<u32, u32>,
    by: HashMap<&'static str, usize>,
}

impl Tally {
    fn record(&mut self, who: &'static str, line: &str) {
        if let Some(n) = line.strip_prefix("done ").and_then(|n| n.parse().ok()) {
            *self.runs.entry(n).or_default() += 1;
            *self.by.entry(who).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_worker_joins_and_leaves_under_load() {
    let Some(url) = broker_url("QUEUE_TEST_KAFKA_URL") else {
        return;
    };
    let backend = queue::connect(&url).await.expect("connect");
    let queue = unique_queue("qt-rebalance");
    let _cleanup = Cleanup {
        url: url.clone(),
        queue: queue.clone(),
    };
    let producer = backend.producer(&queue).await.expect("producer");
    let numbers: Vec<u32> = (0..JOBS).collect();
    for chunk in numbers.chunks(1000) {
        let jobs: Vec<Message> = chunk
            .iter()
            .map(|n| Job::encode(n, &JobOptions::default()).expect("encode"))
            .collect();
        producer.send_batch(jobs).await.expect("send");
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tally = Tally::default();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("no worker printed anything for 60 s")
            .expect("the workers' output")
    };
    let mut first = spawn_worker(&url, &queue, "first", tx.clone());
    // The first worker alone for a while.
    let mut first_ran = 0;
    while first_ran < 2_000 {
        let (who, line) = next().await;
        first_ran += usize::from(line.starts_with("done "));
        tally.record(who, &line);
    }
    // The second joins: the group rebalances and splits the partitions.
    let mut second = spawn_worker(&url, &queue, "second", tx.clone());
    let mut second_ran = 0;
    while second_ran < 2_000 {
        let (who, line) = next().await;
        second_ran += usize::from(who == "second" && line.starts_with("done "));
        tally.record(who, &line);
    }
    // It leaves gracefully: its partitions go back to the first.
    drop(second.stdin.take());
    let mut stopped = false;
    loop {
        let (who, line) = next().await;
        stopped |= who == "second" && line.starts_with("stopped");
        tally.record(who, &line);
        if stopped {
            break;
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("the second worker exits after its shutdown")
        .expect("wait");
    assert!(status.success(), "the second worker failed: {status}");
    // The first finishes the rest.
    while tally.runs.len() < JOBS as usize {
        let (who, line) = next().await;
        tally.record(who, &line);
    }
    drop(first.stdin.take());
    loop {
        let (who, line) = next().await;
        tally.record(who, &line);
        if who == "first" && line.starts_with("stopped") {
            break;
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(60), first.wait())
        .await
        .expect("the first worker exits after its shutdown")
        .expect("wait");
    assert!(status.success(), "the first worker failed: {status}");

    let Tally { runs, by } = tally;
    let missing: Vec<u32> = numbers
        .iter()
        .copied()
        .filter(|n| !runs.contains_key(n))
        .collect();
    let duplicates: u32 = runs.values().map(|&r| r - 1).sum();
    eprintln!(
        "{JOBS} jobs: the first worker ran {}, the second {}; {duplicates} ran twice or more",
        by.get("first").copied().unwrap_or(0),
        by.get("second").copied().unwrap_or(0)
    );
    assert!(missing.is_empty(), "jobs never ran: {missing:?}");
    assert!(
        by.get("second").copied().unwrap_or(0) >= 2_000,
        "the second worker took part"
    );
    // Two rebalances; at each, each process can repeat at most what it
    // was running or had finished without its offset committed.
    let bound = 2 * 2 * 4 * CONCURRENCY;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicate runs, more than {bound}"
    );
}
