//! `cargo xtask bench postgres`: this backend through the worker pool
//! beside a raw `sqlx` baseline doing the same database work, against one
//! PostgreSQL (`QUEUE_BENCH_POSTGRES_URL`, default
//! `postgres://127.0.0.1:5432/test`), in schemas `bench` and `bench_raw`
//! (dropped first).
//!
//! - raw baseline: a table of jobs (`bigserial` id, `bytea` payload).
//!   Batched `INSERT ... SELECT unnest` (1,000 per statement), then a
//!   batched claim-and-delete loop: 10 tasks (the pool's connections)
//!   each `DELETE ... WHERE id IN (SELECT ... ORDER BY id LIMIT 100 FOR
//!   UPDATE SKIP LOCKED) RETURNING payload` until the table is empty.
//! - backend: 50,000 jobs of 100 bytes through the worker pool
//!   (concurrency 100, no-op handler): enqueue and processing rates.
//! - one at a time: 5,000 jobs through a worker with concurrency 1,
//!   beside a raw loop of one task deleting one row per statement (the
//!   medians of three rounds).
//! - enqueue one by one: 10,000 single sends from 10 tasks, beside 10
//!   tasks of single-row `INSERT`s.
//! - pickup latency: a producer offers 1,000 single sends/s (open load)
//!   to a worker; p50/p99 from send to handler start.
//! - backlog: 1,000,000 queued jobs processed, against 10,000 (the median
//!   of five runs); the jobs table's and its indexes' sizes after the
//!   million have passed through, before and after a `VACUUM`.
//! - groups: three rounds of concurrency-100 runs without groups, in 100
//!   groups, and in 100 groups with a limit of 10 per group (medians).

use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_core::{Backend, Message, QueueName};
use queue_postgres::PostgresBackend;
use queue_testkit::bench;
use sqlx::PgPool;

const JOBS: u64 = 50_000;
const PAYLOAD: usize = 100;
const CONCURRENCY: usize = 100;
/// Jobs of each one-at-a-time run.
const SERIAL_JOBS: u64 = 5_000;
/// Tasks of the raw loops (the pool's size).
const RAW_TASKS: usize = 10;
/// Rows per raw claim-and-delete.
const RAW_BATCH: i64 = 100;

fn queue(name: &str) -> QueueName {
    QueueName::new(format!("bench-{name}")).expect("queue name")
}

async fn raw_fill(pool: &PgPool, jobs: u64) {
    let payload = vec![b'x'; PAYLOAD];
    let mut left = jobs;
    while left > 0 {
        let n = left.min(1_000);
        let payloads: Vec<&[u8]> = (0..n).map(|_| payload.as_slice()).collect();
        sqlx::query("INSERT INTO bench_raw.jobs (payload) SELECT * FROM unnest($1::bytea[])")
            .bind(&payloads)
            .execute(pool)
            .await
            .expect("raw insert");
        left -= n;
    }
}

/// The raw baseline at concurrency: (enqueue/s, processed/s).
async fn raw_baseline(pool: &PgPool) -> (f64, f64) {
    let started = Instant::now();
    raw_fill(pool, JOBS).await;
    let enqueue = JOBS as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let tasks = (0..RAW_TASKS).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            loop {
                let rows: Vec<Vec<u8>> = sqlx::query_scalar(
                    "DELETE FROM bench_raw.jobs WHERE id IN ( \
                       SELECT id FROM bench_raw.jobs ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                     RETURNING payload",
                )
                .bind(RAW_BATCH)
                .fetch_all(&pool)
                .await
                .expect("raw claim");
                if rows.is_empty() {
                    return done;
                }
                done += rows.len() as u64;
            }
        })
    });
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("raw task");
    }
    assert_eq!(done, JOBS, "the raw loop took every job once");
    (enqueue, JOBS as f64 / started.elapsed().as_secs_f64())
}

/// One task deleting one row per statement: processed/s.
async fn raw_serial(pool: &PgPool, jobs: u64) -> f64 {
    raw_fill(pool, jobs).await;
    let started = Instant::now();
    let mut done = 0;
    loop {
        let row: Option<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM bench_raw.jobs WHERE id = ( \
               SELECT id FROM bench_raw.jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING payload",
        )
        .fetch_optional(pool)
        .await
        .expect("raw claim");
        if row.is_none() {
            break;
        }
        done += 1;
    }
    assert_eq!(done, jobs);
    jobs as f64 / started.elapsed().as_secs_f64()
}

/// Single-row inserts from `RAW_TASKS` tasks: inserts/s.
async fn raw_single_inserts(pool: &PgPool, jobs: u64) -> f64 {
    let started = Instant::now();
    let per_task = jobs / RAW_TASKS as u64;
    let tasks = (0..RAW_TASKS).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let payload = vec![b'x'; PAYLOAD];
            for _ in 0..per_task {
                sqlx::query("INSERT INTO bench_raw.jobs (payload) VALUES ($1)")
                    .bind(&payload)
                    .execute(&pool)
                    .await
                    .expect("raw insert");
            }
        })
    });
    for task in tasks {
        task.await.expect("raw task");
    }
    let rate = (per_task * RAW_TASKS as u64) as f64 / started.elapsed().as_secs_f64();
    sqlx::query("TRUNCATE bench_raw.jobs")
        .execute(pool)
        .await
        .expect("truncate");
    rate
}

/// Single sends from `RAW_TASKS` tasks: sends/s.
async fn single_sends(backend: &Arc<dyn Backend>, jobs: u64) -> f64 {
    let q = queue("single");
    backend.admin().delete_queue(&q).await.expect("delete");
    let started = Instant::now();
    let per_task = jobs / RAW_TASKS as u64;
    let mut tasks = Vec::new();
    for _ in 0..RAW_TASKS {
        let producer = backend.producer(&q).await.expect("producer");
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                producer
                    .send(Message::new(vec![b'x'; PAYLOAD]))
                    .await
                    .expect("send");
            }
        }));
    }
    for task in tasks {
        task.await.expect("send task");
    }
    let rate = (per_task * RAW_TASKS as u64) as f64 / started.elapsed().as_secs_f64();
    backend.admin().delete_queue(&q).await.expect("delete");
    rate
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

/// Bytes of the jobs table (heap) and of its indexes.
async fn table_sizes(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT pg_relation_size('bench.jobs'), pg_indexes_size('bench.jobs')")
        .fetch_one(pool)
        .await
        .expect("sizes")
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let url = std::env::var("QUEUE_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".to_owned());
    bench::run(async move {
        let pool = PgPool::connect(&url).await.expect("connect to postgres");
        for statement in [
            "DROP SCHEMA IF EXISTS bench CASCADE",
            "DROP SCHEMA IF EXISTS bench_raw CASCADE",
            "CREATE SCHEMA bench_raw",
            "CREATE TABLE bench_raw.jobs (id bigserial PRIMARY KEY, payload bytea NOT NULL)",
        ] {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .expect(statement);
        }
        let joiner = if url.contains('?') { '&' } else { '?' };
        let backend: Arc<dyn Backend> = Arc::new(
            PostgresBackend::connect(&format!("{url}{joiner}schema=bench"))
                .await
                .expect("connect backend"),
        );

        let (raw_enqueue, raw_processed) = raw_baseline(&pool).await;
        eprintln!("raw baseline: enqueue {raw_enqueue:.0}/s, processed {raw_processed:.0}/s");

        let q = queue("worker");
        backend.admin().delete_queue(&q).await.expect("delete");
        let run = bench::worker_run(backend.clone(), &q, JOBS, PAYLOAD, CONCURRENCY)
            .await
            .expect("worker run");
        backend.admin().delete_queue(&q).await.expect("delete");
        eprintln!(
            "backend: enqueue {:.0}/s, processed {:.0}/s; {}",
            run.enqueue_per_second,
            run.processed_per_second,
            run.end_to_end()
        );

        let (mut raw_ones, mut ones) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            raw_ones.push(raw_serial(&pool, SERIAL_JOBS).await);
            let q = queue("serial");
            backend.admin().delete_queue(&q).await.expect("delete");
            let one = bench::worker_run(backend.clone(), &q, SERIAL_JOBS, PAYLOAD, 1)
                .await
                .expect("concurrency 1 run");
            backend.admin().delete_queue(&q).await.expect("delete");
            ones.push(one.processed_per_second);
        }
        raw_ones.sort_by(f64::total_cmp);
        ones.sort_by(f64::total_cmp);
        let (raw_one, one) = (raw_ones[1], ones[1]);
        eprintln!(
            "one at a time: raw delete-one loop {raw_one:.0}/s, worker (concurrency 1) {one:.0}/s, ratio {:.2}",
            one / raw_one
        );

        let raw_singles = raw_single_inserts(&pool, 10_000).await;
        let singles = single_sends(&backend, 10_000).await;
        eprintln!(
            "enqueue one by one (10 tasks): raw INSERT {raw_singles:.0}/s, send {singles:.0}/s"
        );

        let q = queue("pickup");
        backend.admin().delete_queue(&q).await.expect("delete");
        let latency = bench::worker_pickup_latency(
            backend.clone(),
            &q,
            1_000,
            Duration::from_secs(5),
            CONCURRENCY,
        )
        .await
        .expect("pickup run");
        backend.admin().delete_queue(&q).await.expect("delete");
        eprintln!(
            "pickup at 1,000 jobs/s (kept {:.0}/s): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            latency.achieved_rate, latency.p50_us, latency.p99_us, latency.max_us
        );

        let mut smalls = Vec::new();
        for _ in 0..5 {
            smalls.push(backlog(&backend, 10_000).await);
        }
        smalls.sort_by(f64::total_cmp);
        let small = smalls[2];
        let large = backlog(&backend, 1_000_000).await;
        let ratio = large / small;
        eprintln!("backlog ratio (1,000,000 vs 10,000): {ratio:.2}");
        let (heap, indexes) = table_sizes(&pool).await;
        sqlx::query("VACUUM bench.jobs")
            .execute(&pool)
            .await
            .expect("vacuum");
        let (heap_vacuumed, indexes_vacuumed) = table_sizes(&pool).await;
        eprintln!(
            "jobs table after 1,000,000 jobs: heap {:.1} MiB, indexes {:.1} MiB; after VACUUM: heap {:.1} MiB, indexes {:.1} MiB",
            mib(heap),
            mib(indexes),
            mib(heap_vacuumed),
            mib(indexes_vacuumed)
        );

        // After the table's sizes: these runs pass 450,000 more jobs through it.
        let groups = bench::group_runs(&backend, "bench-groups", JOBS, PAYLOAD, CONCURRENCY, 10)
            .await
            .expect("grouped runs");
        eprintln!(
            "groups: {:.0}/s in 100 groups ({:.2} of {:.0}/s without groups), {:.0}/s with a limit of 10 per group ({:.2})",
            groups.in_100_groups_per_second,
            groups.ratio,
            groups.without_per_second,
            groups.limited_per_second,
            groups.limit_ratio
        );

        println!();
        println!("| run | enqueue jobs/s | processed jobs/s | vs raw |");
        println!("| --- | ---: | ---: | ---: |");
        println!(
            "| raw sqlx (INSERT unnest batched; DELETE .. SKIP LOCKED RETURNING, 100 a statement, 10 tasks) | {raw_enqueue:.0} | {raw_processed:.0} | 1.00 |"
        );
        println!(
            "| queue-postgres worker pool (concurrency 100, batches of 1,000) | {:.0} | {:.0} | {:.2} |",
            run.enqueue_per_second,
            run.processed_per_second,
            run.processed_per_second / raw_processed
        );
        println!("| raw sqlx, one task (DELETE one row per statement) | | {raw_one:.0} | 1.00 |");
        println!(
            "| queue-postgres worker, concurrency 1 | | {one:.0} | {:.2} |",
            one / raw_one
        );
        println!("| raw sqlx, single-row INSERT from 10 tasks | {raw_singles:.0} | | 1.00 |");
        println!(
            "| queue-postgres send one by one from 10 tasks | {singles:.0} | | {:.2} |",
            singles / raw_singles
        );
        println!("queue-postgres worker pool: {}", run.end_to_end());
        println!(
            "pickup p50 {:.2} ms, p99 {:.2} ms at 1,000 jobs/s; backlog 1M/10k ratio {ratio:.2}",
            latency.p50_us / 1000.0,
            latency.p99_us / 1000.0
        );
        println!(
            "groups (concurrency 100): in 100 groups {:.0} jobs/s, with a limit of 10 per group {:.0}, against {:.0} without groups: median ratios {:.2} and {:.2}",
            groups.in_100_groups_per_second,
            groups.limited_per_second,
            groups.without_per_second,
            groups.ratio,
            groups.limit_ratio
        );
        println!(
            "jobs table after 1,000,000 jobs passed through: heap {:.1} MiB, indexes {:.1} MiB; after VACUUM: {:.1} MiB and {:.1} MiB",
            mib(heap),
            mib(indexes),
            mib(heap_vacuumed),
            mib(indexes_vacuumed)
        );
        let checks = [
            (
                "processed at concurrency 100 >= 1.0 x the raw claim-and-delete loop",
                run.processed_per_second >= raw_processed,
            ),
            ("pickup p99 < 10 ms", latency.p99_us < 10_000.0),
            ("backlog 1M >= 0.8 x backlog 10k", ratio >= 0.8),
        ];
        for (target, met) in &checks {
            println!("target {target}: {}", if *met { "met" } else { "MISSED" });
        }
        bench::write_json(
            "postgres",
            &serde_json::json!({
                "backend": "postgres",
                "raw": { "enqueue_per_second": raw_enqueue, "processed_per_second": raw_processed, "single_insert_per_second": raw_singles, "one_at_a_time_per_second": raw_one },
                "worker": run,
                "one_at_a_time": { "worker_per_second": one, "ratio": one / raw_one },
                "single_sends_per_second": singles,
                "pickup": latency,
                "groups": groups,
                "backlog": { "jobs_10k_per_second": small, "jobs_1m_per_second": large, "ratio": ratio },
                "table_after_1m": { "heap_bytes": heap, "index_bytes": indexes, "heap_bytes_vacuumed": heap_vacuumed, "index_bytes_vacuumed": indexes_vacuumed },
                "targets_met": checks.iter().all(|(_, met)| *met),
            }),
        );
        for statement in [
            "DROP SCHEMA IF EXISTS bench CASCADE",
            "DROP SCHEMA IF EXISTS bench_raw CASCADE",
        ] {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .expect(statement);
        }
    });
}
