//! `cargo xtask bench web`: the dashboard's overview API over 100 queues
//! on Redis (`QUEUE_BENCH_REDIS_URL`, default `redis://127.0.0.1:6379`).
//!
//! - latency: 300 `GET /api/overview` over HTTP with a fresh sample every
//!   time (`sample_every(0)`: health and queue lists cached as usual, every
//!   queue's stats read); p50, p99 and max. Target: p99 under 50 ms.
//! - cost: round trips to Redis per queue per refresh, from `INFO
//!   commandstats` before and after 100 refreshes: the commands the
//!   dashboard sends itself (`EVALSHA` of the stats script, `SMEMBERS` of
//!   the queue registry, `PING`), since `commandstats` also counts the
//!   commands a script runs inside Redis (reported apart). Target: at most
//!   one round trip per queue per refresh. The queue list (`SMEMBERS`) and the
//!   health check (`PING`) are cached for 10 s, so over a 2 s refresh they
//!   add two commands every fifth refresh; this run, which refreshes as
//!   fast as it can, may see them once or not at all.
//! - dead letters: a queue of 300 dead letters of 1 MiB each, and 8
//!   viewers at once, each opening the queue's page and asking the API for
//!   `?limit=500` dead letters, 5 times: the largest response, the bytes
//!   Redis sent, and the dashboard process's peak memory above what it
//!   held before (`VmHWM`, reset through `/proc/self/clear_refs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_core::{Backend, Message, QueueName};
use queue_redis::RedisBackend;
use queue_web::Dashboard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUEUES: usize = 100;
const LATENCY_RUNS: usize = 300;
const COST_RUNS: u64 = 100;
const LETTERS: usize = 300;
const LETTER_BYTES: usize = 1024 * 1024;
const VIEWERS: usize = 8;
const VIEWS_EACH: usize = 5;

async fn get(addr: SocketAddr, path: &str) -> (u16, usize) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read");
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, reply.len())
}

/// Calls so far of every command but `INFO` (inside scripts included), and
/// of the commands the dashboard sends (scripts, the registry, `PING`).
async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let calls = |l: &str| {
        l.split_once("calls=")
            .and_then(|(_, rest)| rest.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let all = info
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .map(calls)
        .sum();
    let scripts = info
        .lines()
        .filter(|l| {
            [
                "cmdstat_evalsha:",
                "cmdstat_eval:",
                "cmdstat_smembers:",
                "cmdstat_ping:",
            ]
            .iter()
            .any(|c| l.starts_with(c))
        })
        .map(calls)
        .sum();
    (all, scripts)
}

/// Bytes Redis has sent to its clients so far.
async fn sent_by_redis(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A line of `/proc/self/status` in kB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').trim().split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// 8 viewers over a queue of 300 one-MiB dead letters.
async fn dead_letter_viewers(
    backend: &Arc<dyn Backend>,
    addr: SocketAddr,
    conn: &mut redis::aio::MultiplexedConnection,
) {
    let queue = QueueName::new("dead-letters").expect("name");
    let producer = backend.producer(&queue).await.expect("producer");
    let consumer = backend
        .consumer(&queue, queue_core::ConsumerOptions::default())
        .await
        .expect("consumer");
    for n in 0..LETTERS {
        let mut body = format!("{{\"n\":{n},\"pad\":\"").into_bytes();
        body.resize(LETTER_BYTES - 2, b'x');
        body.extend_from_slice(b"\"}");
        producer.send(Message::new(body)).await.expect("send");
        for delivery in consumer
            .receive(1, Duration::from_secs(5))
            .await
            .expect("receive")
        {
            delivery
                .dead_letter(queue_core::DeadLetterReason::Rejected("bench".into()))
                .await
                .map_err(|e| e.error)
                .expect("dead-letter");
        }
    }
    drop((producer, consumer));
    // Peak memory from here on (Linux: 5 resets VmHWM to the current RSS).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before_kib = status_kib("VmRSS");
    let sent_before = sent_by_redis(conn).await;
    let started = Instant::now();
    let viewers = (0..VIEWERS).map(|_| async move {
        let mut largest = 0;
        for _ in 0..VIEWS_EACH {
            for path in [
                "/queues/redis/dead-letters".to_owned(),
                "/api/queues/redis/dead-letters/dead-letters?limit=500".to_owned(),
            ] {
                let (status, bytes) = get(addr, &path).await;
                assert_eq!(status, 200, "{path}");
                largest = largest.max(bytes);
            }
        }
        largest
    });
    let largest = futures_util::future::join_all(viewers)
        .await
        .into_iter()
        .max()
        .unwrap_or(0);
    let elapsed = started.elapsed();
    let sent = sent_by_redis(conn).await - sent_before;
    let peak_kib = status_kib("VmHWM");
    let requests = VIEWERS * VIEWS_EACH * 2;
    println!(
        "web: {LETTERS} dead letters of 1 MiB, {VIEWERS} viewers, {requests} requests in {:.2} s: \
         largest response {:.1} KiB, Redis sent {:.1} MiB ({:.1} KiB a request), \
         peak memory {:.1} MiB above the {:.1} MiB held before",
        elapsed.as_secs_f64(),
        largest as f64 / 1024.0,
        sent as f64 / (1024.0 * 1024.0),
        sent as f64 / 1024.0 / requests as f64,
        peak_kib.saturating_sub(before_kib) as f64 / 1024.0,
        before_kib as f64 / 1024.0,
    );
    backend.admin().delete_queue(&queue).await.expect("delete");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let url = std::env::var("QUEUE_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!(
        "benchweb{}",
        &queue_core::MessageId::new().as_uuid().simple().to_string()[20..]
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    let backend: Arc<dyn Backend> = Arc::new(
        RedisBackend::connect(&format!("{url}{sep}prefix={prefix}"))
            .await
            .expect("connect"),
    );
    let mut queues = Vec::with_capacity(QUEUES);
    for i in 0..QUEUES {
        let queue = QueueName::new(format!("q{i:03}")).expect("name");
        let producer = backend.producer(&queue).await.expect("producer");
        for n in 0..10 {
            producer
                .send(Message::new(format!("job {n}")))
                .await
                .expect("send");
        }
        queues.push(queue);
    }
    let app = Dashboard::for_backend("redis", backend.clone())
        .sample_every(Duration::ZERO)
        .router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, bytes) = get(addr, "/api/overview").await;
    assert_eq!(status, 200);
    println!("web: overview of {QUEUES} queues on Redis: {bytes} bytes a reply");

    let mut times = Vec::with_capacity(LATENCY_RUNS);
    for _ in 0..LATENCY_RUNS {
        let started = Instant::now();
        let (status, _) = get(addr, "/api/overview").await;
        times.push(started.elapsed());
        assert_eq!(status, 200);
    }
    times.sort();
    let p99 = percentile(&times, 0.99);
    println!(
        "web: GET /api/overview, a fresh sample each: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {LATENCY_RUNS} ({})",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        if p99 < Duration::from_millis(50) {
            "target p99 < 50 ms: met"
        } else {
            "target p99 < 50 ms: MISSED"
        }
    );

    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let before = commands(&mut conn).await;
    for _ in 0..COST_RUNS {
        assert_eq!(get(addr, "/api/overview").await.0, 200);
    }
    let after = commands(&mut conn).await;
    let refreshes = COST_RUNS as f64 * QUEUES as f64;
    let inside = (after.0 - before.0) as f64 / refreshes;
    let per_queue = (after.1 - before.1) as f64 / refreshes;
    println!(
        "web: round trips to Redis per queue per refresh: {per_queue:.3} ({} for {COST_RUNS} refreshes of {QUEUES} queues; commands run, inside scripts included: {inside:.1} per queue; {})",
        after.1 - before.1,
        if per_queue <= 1.0 {
            "target <= 1: met"
        } else {
            "target <= 1: MISSED"
        }
    );
    for queue in &queues {
        backend.admin().delete_queue(queue).await.expect("delete");
    }
    dead_letter_viewers(&backend, addr, &mut conn).await;
}
