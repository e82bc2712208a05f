//! Backend-neutral benchmark drivers, used by `cargo xtask bench <backend>`.
//!
//! The same measurement code runs on every backend, so figures compare.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::{Backend, ConsumerOptions, Message, QueueName};
use queue_worker::WorkerBuilder;
use serde::Serialize;

/// Throughput of send -> receive -> ack.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Messages moved.
    pub messages: u64,
    /// Messages per send batch and per receive.
    pub batch: usize,
    /// Producer tasks.
    pub producers: usize,
    /// Consumer tasks.
    pub consumers: usize,
    /// Wall time from the first send to the last ack.
    pub seconds: f64,
    /// `messages / seconds`.
    pub messages_per_second: f64,
}

/// Pickup latency at a steady offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Offered rate, messages per second (single sends, open load: one
    /// still in flight never holds back the next).
    pub rate: u64,
    /// The rate the producer actually kept (a slow send lowers it).
    pub achieved_rate: f64,
    /// Messages measured.
    pub messages: u64,
    /// Median send-to-receive time, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Largest, microseconds.
    pub max_us: f64,
}

/// Send `messages` in batches of `batch` from `producers` tasks while
/// `consumers` tasks receive up to `batch` at a time and ack each delivery.
///
/// Producers stay at most `MAX_BACKLOG` messages ahead of the acks, so the
/// run measures a steady pipeline rather than the growth of a huge backlog.
pub async fn throughput(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    messages: u64,
    batch: usize,
    producers: usize,
    consumers: usize,
    payload_size: usize,
) -> queue_core::Result<Throughput> {
    // Every message gets its own payload buffer, as real jobs do.
    let payload = vec![b'x'; payload_size];
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let consumer = backend.consumer(queue, ConsumerOptions::default()).await?;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let _ = c;
            while acked.load(AtomicOrdering::Relaxed) < messages {
                let deliveries = consumer.receive(batch, Duration::from_millis(100)).await?;
                let n = deliveries.len() as u64;
                consumer
                    .ack_batch(deliveries)
                    .await
                    .map_err(|mut failed| failed.swap_remove(0).error)?;
                acked.fetch_add(n, AtomicOrdering::Relaxed);
            }
            Ok::<(), queue_core::Error>(())
        }));
    }
    let per_producer = messages / producers as u64;
    const MAX_BACKLOG: u64 = 20_000;
    let sent_total = Arc::new(AtomicU64::new(0));
    for p in 0..producers {
        let producer = backend.producer(queue).await?;
        let acked = acked.clone();
        let sent_total = sent_total.clone();
        let payload = payload.clone();
        let count = if p == producers - 1 {
            messages - per_producer * (producers as u64 - 1)
        } else {
            per_producer
        };
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < count {
                if sent_total.load(AtomicOrdering::Relaxed)
                    > acked.load(AtomicOrdering::Relaxed) + MAX_BACKLOG
                {
                    tokio::task::yield_now().await;
                    continue;
                }
                let n = (count - sent).min(batch as u64);
                let batch: Vec<Message> = (0..n)
                    .map(|_| Message::new(bytes::Bytes::copy_from_slice(&payload)))
                    .collect();
                producer.send_batch(batch).await?;
                sent += n;
                sent_total.fetch_add(n, AtomicOrdering::Relaxed);
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| queue_core::Error::new(queue_core::ErrorKind::Other, e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        messages,
        batch,
        producers,
        consumers,
        seconds,
        messages_per_second: messages as f64 / seconds,
    })
}

/// Offer `rate` messages per second as single sends (open load) for
/// `duration` while `consumers` tasks receive; report send-to-receive
/// latency.
pub async fn pickup_latency(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    rate: u64,
    duration: Duration,
    consumers: usize,
) -> queue_core::Result<Latency> {
    let base = Instant::now();
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let consumer = backend.consumer(queue, ConsumerOptions::default()).await?;
        let samples = samples.clone();
        let done = done.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while !(done.load(AtomicOrdering::Acquire)
                && received.load(AtomicOrdering::Acquire) >= total)
            {
                let deliveries = consumer.receive(100, Duration::from_millis(50)).await?;
                let now = base.elapsed().as_nanos() as u64;
                for delivery in deliveries {
                    let sent = u64::from_be_bytes(
                        delivery.payload()[..8]
                            .try_into()
                            .expect("8-byte timestamp"),
                    );
                    local.push(now.saturating_sub(sent));
                    delivery.ack().await?;
                    received.fetch_add(1, AtomicOrdering::AcqRel);
                }
            }
            samples.lock().expect("samples lock").extend(local);
            Ok::<(), queue_core::Error>(())
        }));
    }
    let producer = backend.producer(queue).await?;
    let (sent, sent_for) = offer(&*producer, rate, duration, base, |now| {
        Ok(Message::new(now.to_be_bytes().to_vec()))
    })
    .await?;
    done.store(true, AtomicOrdering::Release);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(AtomicOrdering::Acquire) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    received.fetch_max(total, AtomicOrdering::AcqRel);
    for task in tasks {
        task.await
            .map_err(|e| queue_core::Error::new(queue_core::ErrorKind::Other, e.to_string()))??;
    }
    let samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
    Ok(Latency::of(rate, sent, sent_for, samples))
}

impl Latency {
    /// Percentiles of `samples` (nanoseconds) for `sent` messages offered at
    /// `rate` over `sent_for`.
    pub fn of(rate: u64, sent: u64, sent_for: Duration, mut samples: Vec<u64>) -> Latency {
        samples.sort_unstable();
        let pick = |q: f64| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[index] as f64 / 1000.0
        };
        Latency {
            rate,
            achieved_rate: sent as f64 / sent_for.as_secs_f64(),
            messages: samples.len() as u64,
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            max_us: pick(1.0),
        }
    }
}

/// Offer `rate` messages per second for `duration`, each made by `make`
/// from the nanoseconds since `base`; returns how many were sent and how
/// long sending took. Sends go in 1 ms ticks (the timer's resolution),
/// spreading each tick's share. The load is open: a send still waiting for
/// its broker's answer never holds back the next tick's, so a backend
/// whose send takes longer than the gap between two (a publisher confirm
/// after a disk sync) is still offered the full rate.
async fn offer(
    producer: &dyn queue_core::Producer,
    rate: u64,
    duration: Duration,
    base: Instant,
    make: impl Fn(u64) -> queue_core::Result<Message>,
) -> queue_core::Result<(u64, Duration)> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let per_tick = (rate / 1000).max(1);
    let ticks = total / per_tick;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sending = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..ticks {
        loop {
            tokio::select! {
                biased;
                _ = interval.tick() => break,
                Some(sent) = in_flight.next(), if !in_flight.is_empty() => {
                    sent?;
                }
            }
        }
        for _ in 0..per_tick {
            // The timestamp is taken when the send starts, not when it is
            // queued behind this tick's others.
            let make = &make;
            in_flight
                .push(async move { producer.send(make(base.elapsed().as_nanos() as u64)?).await });
        }
    }
    while let Some(sent) = in_flight.next().await {
        sent?;
    }
    Ok((ticks * per_tick, sending.elapsed()))
}

/// Settings a bench adds to its worker (a rate limit, say).
pub type Configure = Box<dyn FnOnce(WorkerBuilder) -> WorkerBuilder + Send>;

/// The times of one no-op worker run, in seconds from its start.
struct NoopRun {
    /// When the last job was seen completed (the handler-completion time).
    completed: f64,
    /// When `shutdown()` returned (the end-to-end time).
    shut_down: f64,
}

/// Start a worker with a no-op handler for jobs of type `T`, wait until it
/// has completed `jobs`, then shut it down.
async fn time_noop_worker<T: serde::de::DeserializeOwned + Send + 'static>(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    jobs: u64,
    concurrency: usize,
    configure: Configure,
) -> queue_core::Result<NoopRun> {
    let started = Instant::now();
    let builder = queue_worker::Worker::builder(backend, queue.clone())
        .concurrency(concurrency)
        .prefetch(concurrency)
        .depth_interval(None);
    let worker = configure(builder)
        .handler(|_job: queue_core::Job<T>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await?;
    // A benchmark harness may watch a counter: nothing here is under test.
    while worker.stats().completed < jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let completed = started.elapsed().as_secs_f64();
    worker.shutdown().await?;
    Ok(NoopRun {
        completed,
        shut_down: started.elapsed().as_secs_f64(),
    })
}

/// The end-to-end line of a worker run: from its start until
/// `shutdown()` returned, which is what a test, a deploy or a CLI run
/// waits for.
fn end_to_end_text(jobs: u64, end_to_end: f64, completed: f64) -> String {
    format!(
        "end to end (start to shutdown() returned) {end_to_end:.2} s, {:.0} jobs/s; shutdown took {:.1} ms after the last completion",
        jobs as f64 / end_to_end,
        (end_to_end - completed) * 1000.0
    )
}

/// Jobs through the worker pool.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerThroughput {
    /// Jobs processed.
    pub jobs: u64,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Wall time from worker start to the last completion.
    pub seconds: f64,
    /// `jobs / seconds`.
    pub jobs_per_second: f64,
    /// Wall time from worker start until `shutdown()` returned.
    pub end_to_end_seconds: f64,
    /// `jobs / end_to_end_seconds`.
    pub end_to_end_jobs_per_second: f64,
}

impl WorkerThroughput {
    /// The end-to-end figures as a line of text, for a bench to print
    /// beside the completion rate.
    pub fn end_to_end(&self) -> String {
        end_to_end_text(self.jobs, self.end_to_end_seconds, self.seconds)
    }
}

/// Queue `jobs` no-op jobs, then run them through a worker with
/// `concurrency` slots; time from start to the last completion.
pub async fn worker_throughput(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    jobs: u64,
    concurrency: usize,
) -> queue_core::Result<WorkerThroughput> {
    let producer = backend.producer(queue).await?;
    let mut sent = 0u64;
    while sent < jobs {
        let n = (jobs - sent).min(1000);
        let batch = (sent..sent + n)
            .map(|i| queue_core::Job::encode(&i, &queue_core::JobOptions::default()))
            .collect::<queue_core::Result<Vec<_>>>()?;
        producer.send_batch(batch).await?;
        sent += n;
    }
    let run = time_noop_worker::<u64>(backend, queue, jobs, concurrency, Box::new(|b| b)).await?;
    Ok(WorkerThroughput {
        jobs,
        concurrency,
        seconds: run.completed,
        jobs_per_second: jobs as f64 / run.completed,
        end_to_end_seconds: run.shut_down,
        end_to_end_jobs_per_second: jobs as f64 / run.shut_down,
    })
}

/// A worker-pool run over jobs with a payload of a given size.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRun {
    /// Jobs queued and processed.
    pub jobs: u64,
    /// Bytes of each job's payload (a JSON string).
    pub payload_bytes: usize,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Jobs per `send_batch`.
    pub batch: usize,
    /// Enqueue rate, jobs per second (batched sends, one producer).
    pub enqueue_per_second: f64,
    /// Wall time from worker start to the last completion.
    pub process_seconds: f64,
    /// Processing rate, jobs per second.
    pub processed_per_second: f64,
    /// Wall time from worker start until `shutdown()` returned.
    pub end_to_end_seconds: f64,
    /// `jobs / end_to_end_seconds`.
    pub end_to_end_per_second: f64,
}

impl WorkerRun {
    /// The end-to-end figures as a line of text, for a bench to print
    /// beside the processing rate.
    pub fn end_to_end(&self) -> String {
        end_to_end_text(self.jobs, self.end_to_end_seconds, self.process_seconds)
    }
}

/// Queue `jobs` jobs of `payload_bytes` (timed: the enqueue rate), then run
/// them through a worker with a no-op handler and `concurrency` slots
/// (timed from start to the last completion: the processing rate).
pub async fn worker_run(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    jobs: u64,
    payload_bytes: usize,
    concurrency: usize,
) -> queue_core::Result<WorkerRun> {
    worker_run_with(
        backend,
        queue,
        jobs,
        payload_bytes,
        concurrency,
        Box::new(|b| b),
    )
    .await
}

/// [`worker_run`] with settings added to the worker (`configure`).
pub async fn worker_run_with(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    jobs: u64,
    payload_bytes: usize,
    concurrency: usize,
    configure: Configure,
) -> queue_core::Result<WorkerRun> {
    worker_run_in_groups(
        backend,
        queue,
        jobs,
        payload_bytes,
        concurrency,
        0,
        configure,
    )
    .await
}

/// [`worker_run_with`] with job `i` in group `g{i % groups}`
/// ([`Message::with_group`](queue_core::Message::with_group); `groups` 0:
/// no group).
pub async fn worker_run_in_groups(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    jobs: u64,
    payload_bytes: usize,
    concurrency: usize,
    groups: u64,
    configure: Configure,
) -> queue_core::Result<WorkerRun> {
    let batch = 1000usize;
    let producer = backend.producer(queue).await?;
    // A JSON string of `payload_bytes` bytes in all (quotes included).
    let body = "x".repeat(payload_bytes.saturating_sub(2));
    let options = queue_core::JobOptions::default();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < jobs {
        let n = (jobs - sent).min(batch as u64);
        let messages = (sent..sent + n)
            .map(|i| {
                let message = queue_core::Job::encode(&body, &options)?;
                Ok(match groups {
                    0 => message,
                    groups => message.with_group(format!("g{}", i % groups)),
                })
            })
            .collect::<queue_core::Result<Vec<_>>>()?;
        producer.send_batch(messages).await?;
        sent += n;
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();
    let run = time_noop_worker::<String>(backend, queue, jobs, concurrency, configure).await?;
    Ok(WorkerRun {
        jobs,
        payload_bytes,
        concurrency,
        batch,
        enqueue_per_second: jobs as f64 / enqueue_seconds,
        process_seconds: run.completed,
        processed_per_second: jobs as f64 / run.completed,
        end_to_end_seconds: run.shut_down,
        end_to_end_per_second: jobs as f64 / run.shut_down,
    })
}

/// What groups cost a worker pool: the medians of three rounds, each a
/// run without groups, one with its jobs in 100 groups, and one in 100
/// groups with a limit per group ([`group_runs`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GroupRuns {
    /// Processed jobs/s without groups.
    pub without_per_second: f64,
    /// Processed jobs/s in 100 groups.
    pub in_100_groups_per_second: f64,
    /// Processed jobs/s in 100 groups with the limit.
    pub limited_per_second: f64,
    /// The median of each round's grouped rate over its plain one.
    pub ratio: f64,
    /// The same for the limited runs.
    pub limit_ratio: f64,
}

/// Three rounds of [`worker_run_in_groups`] on queues `{prefix}-0..2`
/// (deleted before and after): without groups, in 100 groups, and in 100
/// groups with `limit` per group (the worker's `group_concurrency`).
pub async fn group_runs(
    backend: &Arc<dyn Backend>,
    prefix: &str,
    jobs: u64,
    payload_bytes: usize,
    concurrency: usize,
    limit: u32,
) -> queue_core::Result<GroupRuns> {
    let mut rounds: [Vec<f64>; 5] = Default::default();
    for _ in 0..3 {
        let mut rates = [0.0; 3];
        for (i, (groups, limit)) in [(0, None), (100, None), (100, Some(limit))]
            .into_iter()
            .enumerate()
        {
            let queue = QueueName::new(format!("{prefix}-{i}"))?;
            backend.admin().delete_queue(&queue).await?;
            let run = worker_run_in_groups(
                backend.clone(),
                &queue,
                jobs,
                payload_bytes,
                concurrency,
                groups,
                Box::new(move |b| match limit {
                    Some(limit) => b.group_concurrency(limit),
                    None => b,
                }),
            )
            .await?;
            backend.admin().delete_queue(&queue).await?;
            rates[i] = run.processed_per_second;
        }
        for (k, value) in [
            rates[0],
            rates[1],
            rates[2],
            rates[1] / rates[0],
            rates[2] / rates[0],
        ]
        .into_iter()
        .enumerate()
        {
            rounds[k].push(value);
        }
    }
    let [a, b, c, d, e] = rounds.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[1]
    });
    Ok(GroupRuns {
        without_per_second: a,
        in_100_groups_per_second: b,
        limited_per_second: c,
        ratio: d,
        limit_ratio: e,
    })
}

/// Offer `rate` jobs per second as single sends (open load) for
/// `duration` to a worker with `concurrency` slots; report the time from
/// send to handler start.
pub async fn worker_pickup_latency(
    backend: Arc<dyn Backend>,
    queue: &QueueName,
    rate: u64,
    duration: Duration,
    concurrency: usize,
) -> queue_core::Result<Latency> {
    let base = Instant::now();
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let recorded = samples.clone();
    let worker = queue_worker::Worker::builder(backend.clone(), queue.clone())
        .concurrency(concurrency)
        .prefetch(concurrency)
        .depth_interval(None)
        .handler(move |job: queue_core::Job<u64>| {
            let now = base.elapsed().as_nanos() as u64;
            recorded
                .lock()
                .expect("samples lock")
                .push(now.saturating_sub(job.payload));
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await?;
    let producer = backend.producer(queue).await?;
    let options = queue_core::JobOptions::default();
    let (sent, sent_for) = offer(&*producer, rate, duration, base, |now| {
        queue_core::Job::encode(&now, &options)
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.stats().completed < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await?;
    let samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
    Ok(Latency::of(rate, sent, sent_for, samples))
}

/// Run a benchmark body on the runtime every benchmark uses: tokio's
/// multi-thread scheduler with 2 workers (the machine's cores).
pub fn run<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(body)
}

/// Write `value` as `target/bench/<name>.json` and say where.
pub fn write_json(name: &str, value: &serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).expect("serialize results");
    std::fs::write(&path, text).expect("write results");
    println!("wrote {}", path.display());
}
