//! `cargo xtask soak --minutes N`: a long run under random faults, with the
//! delivery invariants checked at the end (not part of CI).
//!
//! A producer on a direct connection offers numbered jobs at a steady rate
//! (retrying failed sends with the same message), while two worker
//! processes (`crash-worker`) run them through a fault proxy. Every few
//! seconds one fault, picked at random: every connection cut, a worker
//! process killed with SIGKILL and a new one started, or the broker
//! blackholed for two seconds. A progress line every ten seconds; at the
//! end, every accepted job must have run at least once, and the summary
//! says how many ran twice. Exit status 1 if any accepted job never ran.
//!
//! `soak [--url URL] [--minutes N] [--rate JOBS_PER_SECOND]`; the URL
//! defaults to `QUEUE_SOAK_URL`, then the machine's Redis.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue::{Job, JobOptions, Message, QueueName};
use queue_testkit::proxy::{FaultProxy, Mode};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Job number -> times it ran.
type Runs = Arc<Mutex<HashMap<u32, u32>>>;

struct Options {
    url: String,
    minutes: u64,
    rate: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        url: std::env::var("QUEUE_SOAK_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        minutes: 5,
        rate: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => options.url = value("--url")?,
            "--minutes" => {
                options.minutes = value("--minutes")?
                    .parse()
                    .map_err(|_| "--minutes: expected a whole number".to_owned())?
            }
            "--rate" => {
                options.rate = value("--rate")?
                    .parse()
                    .ok()
                    .filter(|r| (1..=10_000).contains(r))
                    .ok_or("--rate: expected 1 to 10000 jobs per second")?
            }
            other => return Err(format!("unknown argument {other:?}; see the file's docs")),
        }
    }
    Ok(options)
}

/// The URL with its host and port replaced by the proxy's, plus a short lease.
fn via(url: &str, proxy: &FaultProxy) -> Result<String, String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("--url: {e}"))?;
    parsed
        .set_ip_host(proxy.addr().ip())
        .map_err(|()| "--url has no host".to_owned())?;
    parsed
        .set_port(Some(proxy.addr().port()))
        .map_err(|()| "--url has no host".to_owned())?;
    parsed.query_pairs_mut().append_pair("lease", "2s");
    Ok(parsed.to_string())
}

/// Start a worker process whose `done <n>` lines are counted in `runs`.
fn spawn_worker(url: &str, queue: &QueueName, runs: &Runs) -> Child {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe.with_file_name("crash-worker"))
        .args([url, queue.as_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start crash-worker (build it: cargo build -p queue-tests --bins)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let runs = runs.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("done ").and_then(|n| n.parse().ok()) {
                *runs.lock().expect("runs").entry(n).or_default() += 1;
            }
        }
    });
    child
}

#[derive(Default, Debug)]
struct Faults {
    cuts: u32,
    kills: u32,
    blackholes: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, String> {
    let options = options()?;
    let parsed = url::Url::parse(&options.url).map_err(|e| format!("--url: {e}"))?;
    let upstream = (
        parsed.host_str().ok_or("--url has no host")?,
        parsed.port_or_known_default().unwrap_or(6379),
    )
        .to_socket_addrs()
        .map_err(|e| format!("--url: {e}"))?
        .next()
        .ok_or("--url: the host resolves to nothing")?;
    let proxy = FaultProxy::start(upstream)
        .await
        .map_err(|e| format!("fault proxy: {e}"))?;
    let worker_url = via(&options.url, &proxy)?;
    let backend = queue::connect(&options.url)
        .await
        .map_err(|e| e.to_string())?;
    let tail = queue::MessageId::new().as_uuid().simple().to_string();
    let queue = QueueName::new(format!("soak-{}", &tail[16..])).map_err(|e| e.to_string())?;
    let producer = backend.producer(&queue).await.map_err(|e| e.to_string())?;
    println!(
        "soak: {} minutes on {} (queue {queue}), {} jobs/s, faults every 2-8 s",
        options.minutes,
        queue::SecretUrl::parse(&options.url).map_err(|e| e.to_string())?,
        options.rate
    );

    let runs: Runs = Arc::default();
    let mut workers = vec![
        spawn_worker(&worker_url, &queue, &runs),
        spawn_worker(&worker_url, &queue, &runs),
    ];
    let mut faults = Faults::default();
    let mut accepted: Vec<u32> = Vec::new();
    let started = Instant::now();
    let end = started + Duration::from_secs(options.minutes * 60);
    let mut next_fault = started + random_between(2, 8);
    let mut next_report = started + Duration::from_secs(10);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / options.rate));
    let mut n = 0u32;
    while Instant::now() < end {
        ticker.tick().await;
        let message: Message =
            Job::encode(&n, &JobOptions::default()).map_err(|e| e.to_string())?;
        if send_retrying(&*producer, &message).await {
            accepted.push(n);
        }
        n += 1;
        let now = Instant::now();
        if now >= next_fault {
            fault(
                &proxy,
                &mut workers,
                &worker_url,
                &queue,
                &runs,
                &mut faults,
            )
            .await;
            next_fault = now + random_between(2, 8);
        }
        if now >= next_report {
            let (ran, dups) = tally(&runs);
            println!(
                "{:>5} s: {} accepted, {ran} ran, {dups} ran twice; {:?}",
                started.elapsed().as_secs(),
                accepted.len(),
                faults
            );
            next_report = now + Duration::from_secs(10);
        }
    }
    proxy.set_mode(Mode::Pass);
    println!("soak: producing stopped; waiting for every accepted job to run");
    let drain_until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < drain_until {
        let all = {
            let runs = runs.lock().expect("runs");
            accepted.iter().all(|n| runs.contains_key(n))
        };
        if all {
            break;
        }
        // Progress arrives on the workers' stdout; look again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut worker in workers {
        drop(worker.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(60), worker.wait()).await;
    }
    let _ = backend.admin().delete_queue(&queue).await;
    let runs = runs.lock().expect("runs");
    let lost: Vec<u32> = accepted
        .iter()
        .copied()
        .filter(|n| !runs.contains_key(n))
        .collect();
    let duplicates: u32 = runs.values().map(|&r| r.saturating_sub(1)).sum();
    println!(
        "soak summary: {} s, {} jobs accepted, {} ran, {duplicates} duplicate runs, {} never ran; faults: {} cuts, {} worker kills, {} blackholes",
        started.elapsed().as_secs(),
        accepted.len(),
        runs.len(),
        lost.len(),
        faults.cuts,
        faults.kills,
        faults.blackholes
    );
    if !lost.is_empty() {
        println!("never ran: {:?}", &lost[..lost.len().min(20)]);
    }
    Ok(lost.is_empty())
}

/// Send with retries on retryable errors; `false` if it never went.
async fn send_retrying(producer: &dyn queue::Producer, message: &Message) -> bool {
    for attempt in 0..10u64 {
        match producer.send(message.clone()).await {
            Ok(_) => return true,
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
            Err(e) => {
                eprintln!("send failed: {e}");
                return false;
            }
        }
    }
    false
}

/// One random fault.
async fn fault(
    proxy: &FaultProxy,
    workers: &mut [Child],
    url: &str,
    queue: &QueueName,
    runs: &Runs,
    faults: &mut Faults,
) {
    let pick = queue::message::random_unit();
    if pick < 0.4 {
        proxy.cut();
        faults.cuts += 1;
    } else if pick < 0.8 {
        let i = usize::from(queue::message::random_unit() >= 0.5) % workers.len();
        let _ = workers[i].kill().await;
        workers[i] = spawn_worker(url, queue, runs);
        faults.kills += 1;
    } else {
        proxy.set_mode(Mode::Blackhole);
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.set_mode(Mode::Pass);
        faults.blackholes += 1;
    }
}

fn random_between(low: u64, high: u64) -> Duration {
    let span = (high - low) as f64;
    Duration::from_secs_f64(low as f64 + span * queue::message::random_unit())
}

/// (jobs that ran, extra runs)
fn tally(runs: &Runs) -> (usize, u32) {
    let runs = runs.lock().expect("runs");
    (
        runs.len(),
        runs.values().map(|&r| r.saturating_sub(1)).sum(),
    )
}
