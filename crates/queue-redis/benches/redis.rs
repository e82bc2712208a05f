//! `cargo xtask bench redis`: this backend through the worker pool beside a
//! raw `redis`-crate baseline doing the same broker work, against one Redis
//! (`QUEUE_BENCH_REDIS_URL`, default `redis://127.0.0.1:6379`).
//!
//! - raw baseline: a simple reliable queue. Batched `LPUSH` (1,000 per
//!   command), then 100 concurrent tasks each `LMOVE` one job to a
//!   processing list and `LREM` it (one job per round trip).
//! - backend: 50,000 jobs of 100 bytes through the worker pool
//!   (concurrency 100, no-op handler): enqueue and processing rates.
//!   Each worker run is also timed end to end, from its start until
//!   `shutdown()` returned (what a test, a deploy or a CLI run waits for).
//! - one at a time: 10,000 jobs through a worker with concurrency 1, beside
//!   a raw loop of one task doing `BLMOVE` + `LREM` per job (two round
//!   trips); the worker acks a finished job and claims the next in one
//!   script call.
//! - pickup latency: a producer offers 2,000 single sends/s (open load) to a
//!   worker; p50/p99 from send to handler start.
//! - backlog: 1,000,000 queued jobs processed, against 10,000 (the median
//!   of five runs, since one lasts only about 0.1 s).
//! - Redis CPU per job (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`
//!   before and after, over each whole run, its enqueue included): the
//!   raw loop and the worker at concurrency 100, and at concurrency 1 (the
//!   medians of the three rounds).
//! - memory: Redis `used_memory` before and after 100,000 queued jobs.
//! - rate limiter: the concurrency-100 run again, with a fleet-wide rate
//!   limit far above the load (1,000,000 jobs/s), beside the same run
//!   without one (three pairs, the median ratio), and the permit calls
//!   (one script call each) per job.
//! - groups: the concurrency-100 run with its jobs spread over 100 groups
//!   (`Message::with_group`), without and with a group limit of 10,
//!   beside the same run without groups (three rounds, the median ratios).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::coordination::{Coordination, Lease, Permits, Rate, Slot};

use futures_util::future::join_all;
use queue_core::{Backend, Job, JobOptions, QueueName};
use queue_redis::RedisBackend;
use queue_testkit::bench;
use redis::aio::MultiplexedConnection;

const JOBS: u64 = 50_000;
const PAYLOAD: usize = 100;
const CONCURRENCY: usize = 100;
/// Jobs of each one-at-a-time run.
const SERIAL_JOBS: u64 = 10_000;

fn queue(name: &str) -> QueueName {
    QueueName::new(format!("bench-{name}")).expect("queue name")
}

async fn raw_baseline(conn: &MultiplexedConnection) -> (f64, f64) {
    let (list, processing) = ("bench-raw:{q}:list", "bench-raw:{q}:processing");
    let started = Instant::now();
    fill_raw(conn, list, processing, JOBS).await;
    let enqueue = JOBS as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let tasks = (0..CONCURRENCY).map(|_| {
        let mut c = conn.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            loop {
                let job: Option<Vec<u8>> = redis::cmd("LMOVE")
                    .arg(list)
                    .arg(processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .query_async(&mut c)
                    .await
                    .expect("LMOVE");
                let Some(job) = job else { return done };
                let _: i64 = redis::cmd("LREM")
                    .arg(processing)
                    .arg(1)
                    .arg(job)
                    .query_async(&mut c)
                    .await
                    .expect("LREM");
                done += 1;
            }
        })
    });
    let done: u64 = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .sum();
    assert_eq!(done, JOBS, "the raw baseline processed every job");
    (enqueue, JOBS as f64 / started.elapsed().as_secs_f64())
}

/// Empty `list` and `processing`, then push `jobs` jobs of `PAYLOAD`
/// bytes to `list` with `LPUSH`, 1,000 per command.
async fn fill_raw(conn: &MultiplexedConnection, list: &str, processing: &str, jobs: u64) {
    let mut c = conn.clone();
    let _: () = redis::cmd("DEL")
        .arg(list)
        .arg(processing)
        .query_async(&mut c)
        .await
        .expect("DEL");
    for start in (0..jobs).step_by(1000) {
        let batch: Vec<Vec<u8>> = (start..(start + 1000).min(jobs))
            .map(|i| {
                let mut job = format!("{i:020}").into_bytes();
                job.resize(PAYLOAD, b'x');
                job
            })
            .collect();
        let _: () = redis::cmd("LPUSH")
            .arg(list)
            .arg(batch)
            .query_async(&mut c)
            .await
            .expect("LPUSH");
    }
}

/// Jobs one at a time: one task, `BLMOVE` to a processing list then `LREM`
/// per job, as a serial reliable-queue consumer does. Returns jobs/s.
async fn raw_serial(conn: &MultiplexedConnection, jobs: u64) -> f64 {
    let (list, processing) = ("bench-raw1:{q}:list", "bench-raw1:{q}:processing");
    fill_raw(conn, list, processing, jobs).await;
    let mut c = conn.clone();
    let started = Instant::now();
    let mut done = 0u64;
    while done < jobs {
        let job: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(list)
            .arg(processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(1)
            .query_async(&mut c)
            .await
            .expect("BLMOVE");
        let Some(job) = job else { break };
        let _: i64 = redis::cmd("LREM")
            .arg(processing)
            .arg(1)
            .arg(job)
            .query_async(&mut c)
            .await
            .expect("LREM");
        done += 1;
    }
    assert_eq!(done, jobs, "the serial baseline processed every job");
    jobs as f64 / started.elapsed().as_secs_f64()
}

async fn used_memory(conn: &MultiplexedConnection) -> u64 {
    let mut c = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

/// The CPU time Redis has used (user and system), in seconds, from
/// `INFO cpu`.
async fn redis_cpu(conn: &MultiplexedConnection) -> f64 {
    let mut c = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .expect("INFO cpu");
    ["used_cpu_sys:", "used_cpu_user:"]
        .iter()
        .map(|field| {
            info.lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{field} in INFO cpu"))
        })
        .sum()
}

/// Redis's CPU time per job, in µs, over a run of `jobs` jobs that
/// started when Redis had used `before` seconds.
async fn cpu_per_job(conn: &MultiplexedConnection, before: f64, jobs: u64) -> f64 {
    (redis_cpu(conn).await - before) * 1e6 / jobs as f64
}

/// Queue `jobs` jobs of `PAYLOAD` bytes, then process them; returns jobs/s.
async fn backlog(backend: &Arc<dyn Backend>, jobs: u64) -> f64 {
    let q = queue(&format!("backlog-{jobs}"));
    backend.admin().delete_queue(&q).await.expect("delete");
    let run = bench::worker_run(backend.clone(), &q, jobs, PAYLOAD, CONCURRENCY)
        .await
        .expect("backlog run");
    backend.admin().delete_queue(&q).await.expect("delete");
    eprintln!(
        "  backlog {jobs}: enqueue {:.0}/s, processed {:.0}/s",
        run.enqueue_per_second, run.processed_per_second
    );
    run.processed_per_second
}

/// The backend's coordination store, counting permit calls (each one
/// script call, one round trip).
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Coordination>,
    permit_calls: AtomicU64,
}

#[async_trait]
impl Coordination for Counting {
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> queue_core::Result<Option<Lease>> {
        self.inner.try_lease(name, holder, ttl).await
    }
    async fn renew_lease(&self, lease: &Lease) -> queue_core::Result<bool> {
        self.inner.renew_lease(lease).await
    }
    async fn release_lease(&self, lease: &Lease) -> queue_core::Result<()> {
        self.inner.release_lease(lease).await
    }
    async fn lease_holder(&self, name: &str) -> queue_core::Result<Option<Lease>> {
        self.inner.lease_holder(name).await
    }
    async fn take_permits(&self, key: &str, rate: Rate, want: u32) -> queue_core::Result<Permits> {
        self.permit_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.take_permits(key, rate, want).await
    }
    async fn acquire_slot(
        &self,
        name: &str,
        holder: &str,
        limit: u32,
        ttl: Duration,
    ) -> queue_core::Result<Slot> {
        self.inner.acquire_slot(name, holder, limit, ttl).await
    }
    async fn renew_slot(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> queue_core::Result<bool> {
        self.inner.renew_slot(name, holder, ttl).await
    }
    async fn release_slot(&self, name: &str, holder: &str) -> queue_core::Result<()> {
        self.inner.release_slot(name, holder).await
    }
    async fn slots_held(&self, name: &str) -> queue_core::Result<u32> {
        self.inner.slots_held(name).await
    }
    async fn put(&self, space: &str, key: &str, value: Bytes) -> queue_core::Result<()> {
        self.inner.put(space, key, value).await
    }
    async fn fenced_put(
        &self,
        lease: &Lease,
        space: &str,
        key: &str,
        value: Bytes,
    ) -> queue_core::Result<bool> {
        self.inner.fenced_put(lease, space, key, value).await
    }
    async fn get(&self, space: &str, key: &str) -> queue_core::Result<Option<Bytes>> {
        self.inner.get(space, key).await
    }
    async fn list(&self, space: &str) -> queue_core::Result<Vec<(String, Bytes)>> {
        self.inner.list(space).await
    }
    async fn remove(&self, space: &str, key: &str) -> queue_core::Result<bool> {
        self.inner.remove(space, key).await
    }
}

/// Three pairs of concurrency-100 runs, without and with a rate limit far
/// above the load: the median ratio of their rates, and permit calls per
/// job.
async fn limiter(backend: &Arc<dyn Backend>) -> (f64, f64, f64, f64) {
    let store = Arc::new(Counting {
        inner: backend
            .coordination()
            .expect("Redis keeps a coordination store"),
        permit_calls: AtomicU64::new(0),
    });
    let (mut plain, mut limited, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let q = queue("limiter");
        backend.admin().delete_queue(&q).await.expect("delete");
        let without = bench::worker_run(backend.clone(), &q, JOBS, PAYLOAD, CONCURRENCY)
            .await
            .expect("run without a limiter");
        backend.admin().delete_queue(&q).await.expect("delete");
        let q = queue(&format!("limiter-{round}"));
        backend.admin().delete_queue(&q).await.expect("delete");
        let coordination: Arc<dyn Coordination> = store.clone();
        let with = bench::worker_run_with(
            backend.clone(),
            &q,
            JOBS,
            PAYLOAD,
            CONCURRENCY,
            Box::new(move |b| {
                b.rate_limit(Rate::per_second(1_000_000).expect("rate"))
                    .coordination(coordination)
            }),
        )
        .await
        .expect("run with a limiter");
        backend.admin().delete_queue(&q).await.expect("delete");
        plain.push(without.processed_per_second);
        limited.push(with.processed_per_second);
        ratios.push(with.processed_per_second / without.processed_per_second);
    }
    for v in [&mut plain, &mut limited, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    let calls = store.permit_calls.load(Ordering::Relaxed) as f64 / (3 * JOBS) as f64;
    (plain[1], limited[1], ratios[1], calls)
}

fn main() {
    let url = std::env::var("QUEUE_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    bench::run(async move {
        let conn = redis::Client::open(url.as_str())
            .expect("redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        let backend: Arc<dyn Backend> =
            Arc::new(RedisBackend::connect(&url).await.expect("connect backend"));

        // Redis's CPU per job is read over each whole run, its enqueue
        // included, for the raw loops and the worker alike.
        let cpu = redis_cpu(&conn).await;
        let (raw_enqueue, raw_processed) = raw_baseline(&conn).await;
        let raw_cpu = cpu_per_job(&conn, cpu, JOBS).await;
        eprintln!("raw baseline: enqueue {raw_enqueue:.0}/s, processed {raw_processed:.0}/s; Redis CPU {raw_cpu:.1} µs/job");

        let q = queue("worker");
        backend.admin().delete_queue(&q).await.expect("delete");
        let cpu = redis_cpu(&conn).await;
        let run = bench::worker_run(backend.clone(), &q, JOBS, PAYLOAD, CONCURRENCY)
            .await
            .expect("worker run");
        let worker_cpu = cpu_per_job(&conn, cpu, JOBS).await;
        backend.admin().delete_queue(&q).await.expect("delete");
        eprintln!(
            "backend: enqueue {:.0}/s, processed {:.0}/s; Redis CPU {worker_cpu:.1} µs/job; {}",
            run.enqueue_per_second,
            run.processed_per_second,
            run.end_to_end()
        );

        // One job at a time, the raw loop and the worker back to back, three
        // rounds (a 10,000-job run lasts one to two seconds): the medians.
        let (mut raw_ones, mut ones, mut ones_end_to_end) = (Vec::new(), Vec::new(), Vec::new());
        let (mut raw_one_cpus, mut one_cpus) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let cpu = redis_cpu(&conn).await;
            raw_ones.push(raw_serial(&conn, SERIAL_JOBS).await);
            raw_one_cpus.push(cpu_per_job(&conn, cpu, SERIAL_JOBS).await);
            let q = queue("serial");
            backend.admin().delete_queue(&q).await.expect("delete");
            let cpu = redis_cpu(&conn).await;
            let one = bench::worker_run(backend.clone(), &q, SERIAL_JOBS, PAYLOAD, 1)
                .await
                .expect("concurrency 1 run");
            one_cpus.push(cpu_per_job(&conn, cpu, SERIAL_JOBS).await);
            backend.admin().delete_queue(&q).await.expect("delete");
            ones.push(one.processed_per_second);
            ones_end_to_end.push(one.end_to_end_per_second);
        }
        raw_ones.sort_by(f64::total_cmp);
        ones.sort_by(f64::total_cmp);
        ones_end_to_end.sort_by(f64::total_cmp);
        raw_one_cpus.sort_by(f64::total_cmp);
        one_cpus.sort_by(f64::total_cmp);
        let (raw_one, one, one_end_to_end) = (raw_ones[1], ones[1], ones_end_to_end[1]);
        let (raw_one_cpu, one_cpu) = (raw_one_cpus[1], one_cpus[1]);
        eprintln!(
            "one at a time: raw BLMOVE + LREM {raw_one:.0}/s, worker (concurrency 1) {one:.0}/s, ratio {:.2}; end to end {one_end_to_end:.0}/s; Redis CPU {raw_one_cpu:.1} and {one_cpu:.1} µs/job",
            one / raw_one
        );

        let q = queue("pickup");
        backend.admin().delete_queue(&q).await.expect("delete");
        let latency = bench::worker_pickup_latency(
            backend.clone(),
            &q,
            2_000,
            Duration::from_secs(5),
            CONCURRENCY,
        )
        .await
        .expect("pickup run");
        backend.admin().delete_queue(&q).await.expect("delete");
        eprintln!(
            "pickup at 2,000 jobs/s (kept {:.0}/s): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            latency.achieved_rate, latency.p50_us, latency.p99_us, latency.max_us
        );

        let q = queue("memory");
        backend.admin().delete_queue(&q).await.expect("delete");
        let before = used_memory(&conn).await;
        let producer = backend.producer(&q).await.expect("producer");
        let body = "x".repeat(PAYLOAD - 2);
        for _ in 0..100 {
            let batch = (0..1000)
                .map(|_| Job::encode(&body, &JobOptions::default()).expect("encode"))
                .collect();
            producer.send_batch(batch).await.expect("send");
        }
        let after = used_memory(&conn).await;
        backend.admin().delete_queue(&q).await.expect("delete");
        let per_job = (after.saturating_sub(before)) as f64 / 100_000.0;
        eprintln!("redis memory per queued job: {per_job:.0} bytes ({PAYLOAD}-byte payload)");
        drop(producer);

        // A 10,000-job run lasts about 0.1 s, short enough for one
        // scheduling hiccup to move it by 10%: take the median of five.
        let mut smalls = Vec::new();
        for _ in 0..5 {
            smalls.push(backlog(&backend, 10_000).await);
        }
        smalls.sort_by(f64::total_cmp);
        let small = smalls[2];
        let large = backlog(&backend, 1_000_000).await;
        let ratio = large / small;
        eprintln!("backlog ratio (1,000,000 vs 10,000): {ratio:.2}");

        let (plain, limited, limiter_ratio, permit_calls) = limiter(&backend).await;
        eprintln!(
            "rate limiter far above the load: {limited:.0}/s against {plain:.0}/s without (median ratio {limiter_ratio:.2}); {permit_calls:.3} permit calls per job"
        );

        let bench::GroupRuns {
            without_per_second: ungrouped,
            in_100_groups_per_second: grouped,
            limited_per_second: group_limited,
            ratio: grouped_ratio,
            limit_ratio: group_limited_ratio,
        } = bench::group_runs(&backend, "bench-groups", JOBS, PAYLOAD, CONCURRENCY, 10)
            .await
            .expect("grouped runs");
        eprintln!(
            "groups: {grouped:.0}/s in 100 groups ({grouped_ratio:.2} of {ungrouped:.0}/s without groups), {group_limited:.0}/s with a limit of 10 per group ({group_limited_ratio:.2})"
        );

        println!();
        println!("| run | enqueue jobs/s | processed jobs/s | vs raw |");
        println!("| --- | ---: | ---: | ---: |");
        println!(
            "| raw redis (LPUSH batched; LMOVE + LREM per job, 100 tasks) | {raw_enqueue:.0} | {raw_processed:.0} | 1.00 |"
        );
        println!(
            "| queue-redis worker pool (concurrency 100, batches of 1,000) | {:.0} | {:.0} | {:.2} |",
            run.enqueue_per_second,
            run.processed_per_second,
            run.processed_per_second / raw_processed
        );
        println!("| raw redis, one task (BLMOVE + LREM per job) | | {raw_one:.0} | 1.00 |");
        println!(
            "| queue-redis worker, concurrency 1 (ack and claim in one call) | | {one:.0} | {:.2} |",
            one / raw_one
        );
        println!(
            "Redis CPU per job (whole run, enqueue included): concurrency 100 {worker_cpu:.1} µs against the raw loop's {raw_cpu:.1} ({:.2}); concurrency 1 {one_cpu:.1} µs against {raw_one_cpu:.1} ({:.2})",
            worker_cpu / raw_cpu,
            one_cpu / raw_one_cpu
        );
        println!("queue-redis worker pool: {}", run.end_to_end());
        println!(
            "queue-redis worker, concurrency 1: end to end (start to shutdown() returned) {one_end_to_end:.0} jobs/s"
        );
        println!(
            "pickup p50 {:.2} ms, p99 {:.2} ms at 2,000 jobs/s; backlog 1M/10k ratio {ratio:.2}; {per_job:.0} bytes of Redis memory per queued job",
            latency.p50_us / 1000.0,
            latency.p99_us / 1000.0
        );
        println!(
            "rate limiter (1,000,000/s, far above the load): processed {limited:.0} jobs/s against {plain:.0} without, median ratio {limiter_ratio:.2}; {permit_calls:.3} permit calls (one script call each) per job"
        );
        println!(
            "groups (concurrency 100): in 100 groups {grouped:.0} jobs/s, with a limit of 10 per group {group_limited:.0}, against {ungrouped:.0} without groups: median ratios {grouped_ratio:.2} and {group_limited_ratio:.2}"
        );
        // The targets, checked here so a run says plainly if it missed one.
        let checks = [
            (
                "processed >= 75,000 jobs/s",
                run.processed_per_second >= 75_000.0,
            ),
            (
                "enqueue >= 150,000 jobs/s",
                run.enqueue_per_second >= 150_000.0,
            ),
            ("pickup p99 <= 2 ms", latency.p99_us <= 2_000.0),
            (
                "offered rate kept >= 1,900 jobs/s",
                latency.achieved_rate >= 1_900.0,
            ),
            ("backlog 1M >= 0.9 x backlog 10k", ratio >= 0.9),
            (
                "concurrency 1 >= 1.2 x the raw one-at-a-time loop",
                one >= 1.2 * raw_one,
            ),
            (
                "with a rate limiter far above the load >= 0.8 x without",
                limiter_ratio >= 0.8,
            ),
            (
                "at most one permit call (one round trip) per job",
                permit_calls <= 1.0,
            ),
        ];
        for (target, met) in &checks {
            println!("target {target}: {}", if *met { "met" } else { "MISSED" });
        }
        bench::write_json(
            "redis",
            &serde_json::json!({
                "backend": "redis",
                "raw": { "enqueue_per_second": raw_enqueue, "processed_per_second": raw_processed },
                "worker": run,
                "pickup": latency,
                "backlog": { "jobs_10k_per_second": small, "jobs_1m_per_second": large, "ratio": ratio },
                "memory_bytes_per_job": per_job,
                "redis_cpu_us_per_job": { "raw": raw_cpu, "worker": worker_cpu, "raw_one_at_a_time": raw_one_cpu, "worker_one_at_a_time": one_cpu },
                "rate_limiter": { "without_per_second": plain, "with_per_second": limited, "ratio": limiter_ratio, "permit_calls_per_job": permit_calls },
                "groups": { "without_per_second": ungrouped, "in_100_groups_per_second": grouped, "limit_10_per_second": group_limited, "ratio": grouped_ratio, "limit_ratio": group_limited_ratio },
                "one_at_a_time": { "raw_per_second": raw_one, "worker_per_second": one, "ratio": one / raw_one, "worker_end_to_end_per_second": one_end_to_end },
                "targets_met": checks.iter().all(|(_, met)| *met),
            }),
        );
    });
}
