//! `queue demo`: a load demo of the worker runtime.
//!
//! Producers submit typed jobs in batches; a mix of them fail (some recover
//! on a retry, some end dead-lettered), some are delayed and priorities vary.
//! One worker pool runs them all while a progress bar shows jobs settled;
//! the summary reports throughput, pickup latency and run time percentiles,
//! retries, dead letters and the queue's final counts.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use clap::{value_parser, Args};
use indicatif::{HumanCount, ProgressBar, ProgressStyle};
use queue::message::random_unit;
use queue::{
    Backend, BackoffPolicy, ErrorKind, Job, JobOptions, Priority, QueueConfig, QueueName,
    QueueStats, Worker, WorkerStats,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

/// Jobs per `send_batch` call.
const BATCH_SIZE: usize = 500;

/// Delayed jobs wait a uniform random time up to this long.
const MAX_DELAY_MS: u64 = 2_000;

/// Of the jobs that fail, this share recovers on a retry; the rest fail on
/// every attempt and end in the dead-letter queue.
const RECOVERING_SHARE: f64 = 0.8;

/// Recovering jobs fail at most this many times (and never more than
/// `--max-retries`), which keeps the demo short at any retry setting.
const MAX_RECOVERING_FAILURES: u32 = 2;

/// `fail_attempts` of a job that fails on every attempt.
const ALWAYS: u32 = u32::MAX;

/// Options of `queue demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Jobs to submit in all (1 to 1000000000).
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = value_parser!(u64).range(1..=1_000_000_000))]
    jobs: u64,

    /// Share of jobs whose first attempt fails, from 0.0 to 1.0. Four in
    /// five of them fail once or twice (never more than --max-retries) and
    /// then succeed on a retry; the others fail on every attempt and end in
    /// the dead-letter queue.
    #[arg(long, value_name = "SHARE", default_value_t = 0.05, value_parser = parse_share)]
    fail_rate: f64,

    /// Share of jobs submitted with a delay, from 0.0 to 1.0; each of them
    /// becomes due after a random 0 to 2 s.
    #[arg(long, value_name = "SHARE", default_value_t = 0.02, value_parser = parse_share)]
    delayed: f64,

    /// Producer tasks submitting the jobs side by side, each in batches of
    /// 500.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = value_parser!(u32).range(1..=1_000))]
    producers: u32,

    /// Jobs the worker runs at once (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = value_parser!(u32).range(1..=10_000))]
    concurrency: u32,

    /// Retries after a job's first attempt (0 to 1000); a job whose every
    /// attempt fails is then dead-lettered. Retries back off from 10 ms,
    /// doubling up to 200 ms, with full jitter.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = value_parser!(u32).range(0..=1_000))]
    max_retries: u32,

    /// Backend to run on: any URL of a backend compiled into this build
    /// (memory:// needs no server; options go in the query string, as in
    /// memory://?max_payload=2048).
    #[arg(long, value_name = "URL", default_value = "memory://")]
    url: String,

    /// Queue to use. It must be empty (no ready, delayed, in-flight or dead
    /// messages) when the demo starts.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    queue: QueueName,

    /// Delete the queue (with its dead letters) before starting, so a
    /// broker queue left by an earlier run does not stop the demo.
    #[arg(long)]
    reset: bool,

    /// Keep the queue (and its dead letters) on the broker after the run,
    /// to inspect them. By default a run that got this far deletes it, so
    /// the next run starts from an empty queue.
    #[arg(long)]
    keep: bool,

    /// Fail (exit code 1) if the jobs have not all completed or been
    /// dead-lettered within this long: 300, 90s, 5m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_timeout)]
    timeout: Duration,
}

/// A share of the jobs: a number from 0.0 to 1.0.
fn parse_share(value: &str) -> Result<f64, String> {
    let share: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("expected a share of the jobs from 0.0 to 1.0, got {value:?}"))?;
    if !(0.0..=1.0).contains(&share) {
        return Err(format!(
            "must be a share of the jobs from 0.0 to 1.0, got {share}"
        ));
    }
    Ok(share)
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let timeout =
        queue::config::parse_duration("timeout", value).map_err(|e| e.message().to_owned())?;
    if timeout.is_zero() {
        return Err("timeout: must be longer than zero".to_owned());
    }
    Ok(timeout)
}

/// The payload of a demo job.
#[derive(Debug, Serialize, Deserialize)]
struct DemoJob {
    /// Sequence number, from 0.
    seq: u64,
    /// Attempts that fail before one succeeds ([`ALWAYS`]: every one fails).
    fail_attempts: u32,
    /// The job's delay, so the handler knows when it became due.
    delay_ms: u64,
}

/// What the producers mix into the jobs.
#[derive(Debug, Clone, Copy)]
struct JobMix {
    fail_rate: f64,
    delayed: f64,
    max_retries: u32,
}

impl JobMix {
    /// Draw job `seq` and its options.
    fn draw(&self, seq: u64) -> (DemoJob, JobOptions) {
        let fail_attempts = if random_unit() >= self.fail_rate {
            0
        } else if self.max_retries > 0 && random_unit() < RECOVERING_SHARE {
            let most = self.max_retries.min(MAX_RECOVERING_FAILURES);
            1 + ((random_unit() * f64::from(most)) as u32).min(most - 1)
        } else {
            ALWAYS
        };
        let delay_ms = if random_unit() < self.delayed {
            (random_unit() * MAX_DELAY_MS as f64) as u64
        } else {
            0
        };
        let mut options = JobOptions::default()
            .with_priority(draw_priority())
            .with_max_retries(self.max_retries);
        if delay_ms > 0 {
            options = options.with_delay(Duration::from_millis(delay_ms));
        }
        let job = DemoJob {
            seq,
            fail_attempts,
            delay_ms,
        };
        (job, options)
    }
}

/// 10% urgent, 20% high, 50% normal, 20% low.
fn draw_priority() -> Priority {
    match random_unit() {
        u if u < 0.1 => Priority::Urgent,
        u if u < 0.3 => Priority::High,
        u if u < 0.8 => Priority::Normal,
        _ => Priority::Low,
    }
}

/// What the handler measures, shared by all its tasks.
#[derive(Debug, Default)]
struct Probe {
    /// Due to handler start of first attempts, microseconds.
    pickup_us: Mutex<Vec<u64>>,
    /// Handler run time of every attempt, microseconds.
    run_time_us: Mutex<Vec<u64>>,
    /// Attempts that succeeded.
    succeeded: AtomicU64,
    /// Last attempts that failed (the worker dead-letters these jobs).
    exhausted: AtomicU64,
}

impl Probe {
    fn with_capacity(jobs: u64) -> Self {
        let capacity = usize::try_from(jobs).unwrap_or(usize::MAX).min(10_000_000);
        Probe {
            pickup_us: Mutex::new(Vec::with_capacity(capacity)),
            run_time_us: Mutex::new(Vec::with_capacity(capacity)),
            ..Probe::default()
        }
    }

    /// The handler: times the simulated work and counts outcomes.
    async fn run(&self, job: Job<DemoJob>) -> anyhow::Result<()> {
        let started = Instant::now();
        if job.attempt == 1 {
            // Only first attempts: a retry is due when its backoff ends,
            // which the job does not carry.
            let due = job.created_at + Duration::from_millis(job.payload.delay_ms);
            let pickup = SystemTime::now().duration_since(due).unwrap_or_default();
            push(&self.pickup_us, pickup);
        }
        let outcome = simulate_work(&job).await;
        push(&self.run_time_us, started.elapsed());
        match outcome {
            Ok(()) => self.succeeded.fetch_add(1, Ordering::Relaxed),
            Err(_) if job.attempt >= job.max_attempts => {
                self.exhausted.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => 0,
        };
        outcome
    }

    fn take_samples(&self) -> (Vec<u64>, Vec<u64>) {
        let take = |m: &Mutex<Vec<u64>>| {
            std::mem::take(&mut *m.lock().unwrap_or_else(PoisonError::into_inner))
        };
        (take(&self.pickup_us), take(&self.run_time_us))
    }
}

fn push(samples: &Mutex<Vec<u64>>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(micros);
}

/// Stand-in for real work: yields once, then fails as the job was drawn to.
async fn simulate_work(job: &Job<DemoJob>) -> anyhow::Result<()> {
    tokio::task::yield_now().await;
    if job.attempt <= job.payload.fail_attempts {
        bail!(
            "job {} failed on purpose (attempt {} of {})",
            job.payload.seq,
            job.attempt,
            job.max_attempts
        );
    }
    Ok(())
}

/// Run the demo; an error says what failed.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config = QueueConfig::from_url(&args.url).context("--url")?;
    let backend = queue::connect_config(&config)
        .await
        .with_context(|| format!("connecting to {}", config.url))?;
    let queue = args.queue.clone();
    if args.reset {
        backend
            .admin()
            .delete_queue(&queue)
            .await
            .with_context(|| format!("deleting queue {queue} (--reset)"))?;
    }
    match backend.admin().stats(&queue).await {
        Ok(before) if before.depth() + before.dead > 0 => bail!(
            "queue {queue} is not empty ({}), perhaps left by a run with --keep; name another with --queue, or pass --reset to delete it first",
            describe_counts(&before)
        ),
        // A queue that does not exist yet is created by the first producer.
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("reading the counts of queue {queue}"));
        }
    }

    let probe = Arc::new(Probe::with_capacity(args.jobs));
    let handler_probe = probe.clone();
    let handle = Worker::builder(backend.clone(), queue.clone())
        .concurrency(args.concurrency as usize)
        .retry(BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: true,
        })
        .handler(move |job: Job<DemoJob>| {
            let probe = handler_probe.clone();
            async move { probe.run(job).await }
        })
        .start()
        .await
        .context("starting the worker")?;

    eprintln!(
        "queue demo: {} jobs on {} (queue {queue}), {} producers, concurrency {}",
        args.jobs,
        backend.capabilities().backend,
        args.producers,
        args.concurrency
    );
    let started = Instant::now();
    let mix = JobMix {
        fail_rate: args.fail_rate,
        delayed: args.delayed,
        max_retries: args.max_retries,
    };
    let mut producers = JoinSet::new();
    let producer_count = u64::from(args.producers);
    for p in 0..producer_count {
        let seqs = args.jobs * p / producer_count..args.jobs * (p + 1) / producer_count;
        producers.spawn(produce(backend.clone(), queue.clone(), seqs, mix));
    }

    let progress = progress_bar(args.jobs);
    let settled = wait_until_settled(args.jobs, args.timeout, &progress, &mut producers, || {
        handle.stats()
    })
    .await;
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    producers.abort_all();

    let report = handle
        .shutdown()
        .await
        .context("shutting the worker down")?;
    let worker_stats = settled?;
    let stats = backend
        .admin()
        .stats(&queue)
        .await
        .with_context(|| format!("reading the final counts of queue {queue}"))?;
    if !args.keep {
        backend
            .admin()
            .delete_queue(&queue)
            .await
            .with_context(|| format!("deleting queue {queue} after the run (--keep keeps it)"))?;
    }
    let _ = backend.close().await;
    if report.returned > 0 {
        bail!(
            "{} jobs were still running at shutdown and went back to the queue",
            report.returned
        );
    }

    let (mut pickup, mut run_time) = probe.take_samples();
    pickup.sort_unstable();
    run_time.sort_unstable();
    let summary = Summary {
        backend: backend.capabilities().backend,
        jobs: args.jobs,
        elapsed,
        worker: worker_stats,
        pickup_p50: percentile(&pickup, 0.50),
        pickup_p99: percentile(&pickup, 0.99),
        run_p50: percentile(&run_time, 0.50),
        run_p99: percentile(&run_time, 0.99),
        queue: stats,
    };
    print!("{summary}");
    check_consistency(&summary, &probe)
}

/// Submit jobs `seqs` in batches through one producer.
async fn produce(
    backend: Arc<dyn Backend>,
    queue: QueueName,
    seqs: Range<u64>,
    mix: JobMix,
) -> anyhow::Result<()> {
    let producer = backend
        .producer(&queue)
        .await
        .with_context(|| format!("opening a producer for queue {queue}"))?;
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    for seq in seqs {
        let (job, options) = mix.draw(seq);
        batch.push(Job::encode(&job, &options).context("encoding a job")?);
        if batch.len() == BATCH_SIZE {
            producer
                .send_batch(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH_SIZE),
                ))
                .await
                .context("sending a batch of jobs")?;
            // A send that completes at once (the memory backend's) never
            // yields; without this, producers would hold every runtime
            // thread until they are done and starve the worker.
            tokio::task::yield_now().await;
        }
    }
    if !batch.is_empty() {
        producer
            .send_batch(batch)
            .await
            .context("sending a batch of jobs")?;
    }
    Ok(())
}

fn progress_bar(jobs: u64) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} settled, {msg}, ETA {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    // Drawn to stderr, and hidden by indicatif when stderr is not a terminal.
    let progress = ProgressBar::new(jobs).with_style(style);
    progress.set_message("starting");
    progress
}

/// Poll the worker's counters until `jobs` are completed or dead-lettered;
/// fails on timeout, Ctrl-C or a producer error. Returns the last counters.
async fn wait_until_settled(
    jobs: u64,
    timeout: Duration,
    progress: &ProgressBar,
    producers: &mut JoinSet<anyhow::Result<()>>,
    stats: impl Fn() -> WorkerStats,
) -> anyhow::Result<WorkerStats> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let interrupted = tokio::select! {
            _ = tick.tick() => None,
            Some(joined) = producers.join_next() => match joined {
                Ok(Ok(())) => None,
                Ok(Err(error)) => return Err(error.context("a producer failed")),
                Err(error) => return Err(anyhow!("a producer task failed: {error}")),
            },
            () = tokio::time::sleep_until(deadline) => Some(format!("timed out after {timeout:?}")),
            _ = &mut ctrl_c => Some("interrupted".to_owned()),
        };
        let now = stats();
        let settled = now.completed + now.dead_lettered;
        if let Some(why) = interrupted {
            bail!(
                "{why} with {settled} of {jobs} jobs settled ({} completed, {} dead-lettered, {} in flight){}",
                now.completed,
                now.dead_lettered,
                now.in_flight,
                if why.starts_with("timed out") { "; raise --timeout" } else { "" }
            );
        }
        progress.set_position(settled.min(jobs));
        let rate = settled as f64 / started.elapsed().as_secs_f64().max(1e-3);
        progress.set_message(format!(
            "{} jobs/s, {} retries, {} dead",
            HumanCount(rate as u64),
            HumanCount(now.retried),
            HumanCount(now.dead_lettered)
        ));
        if settled >= jobs {
            return Ok(now);
        }
    }
}

/// The nearest-rank percentile `p` of sorted `samples`.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Everything the demo prints.
#[derive(Debug)]
struct Summary {
    backend: &'static str,
    jobs: u64,
    elapsed: Duration,
    worker: WorkerStats,
    pickup_p50: Option<u64>,
    pickup_p99: Option<u64>,
    run_p50: Option<u64>,
    run_p99: Option<u64>,
    queue: QueueStats,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.jobs as f64 / self.elapsed.as_secs_f64().max(1e-6);
        let rows = [
            ("backend", self.backend.to_owned()),
            ("jobs", self.jobs.to_string()),
            ("elapsed", format!("{:.2} s", self.elapsed.as_secs_f64())),
            ("jobs/s", format!("{rate:.0}")),
            (
                "pickup p50 / p99",
                format!("{} / {}", micros(self.pickup_p50), micros(self.pickup_p99)),
            ),
            (
                "run time p50 / p99",
                format!("{} / {}", micros(self.run_p50), micros(self.run_p99)),
            ),
            ("completed", self.worker.completed.to_string()),
            ("retries", self.worker.retried.to_string()),
            ("dead letters", self.worker.dead_lettered.to_string()),
            ("queue: ready", self.queue.ready.to_string()),
            ("queue: delayed", self.queue.delayed.to_string()),
            ("queue: in flight", self.queue.in_flight.to_string()),
            ("queue: dead", self.queue.dead.to_string()),
        ];
        for (name, value) in rows {
            writeln!(f, "{name:<20} {value:>18}")?;
        }
        Ok(())
    }
}

/// A duration in microseconds, in a readable unit.
fn micros(value: Option<u64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(0) => "<1 µs".to_owned(),
        Some(us) if us < 1_000 => format!("{us} µs"),
        Some(us) if us < 1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        Some(us) => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn describe_counts(stats: &QueueStats) -> String {
    format!(
        "ready {}, delayed {}, in flight {}, dead {}",
        stats.ready, stats.delayed, stats.in_flight, stats.dead
    )
}

/// The handler's counts, the worker's and the queue's must agree.
fn check_consistency(summary: &Summary, probe: &Probe) -> anyhow::Result<()> {
    let worker = &summary.worker;
    let succeeded = probe.succeeded.load(Ordering::Relaxed);
    let exhausted = probe.exhausted.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    if worker.completed + worker.dead_lettered != summary.jobs {
        problems.push(format!(
            "the worker settled {} jobs, not {}",
            worker.completed + worker.dead_lettered,
            summary.jobs
        ));
    }
    if succeeded != worker.completed || exhausted != worker.dead_lettered {
        problems.push(format!(
            "the handler saw {succeeded} successes and {exhausted} final failures, the worker counted {} completed and {} dead-lettered",
            worker.completed, worker.dead_lettered
        ));
    }
    if summary.queue.depth() != 0 || summary.queue.dead != worker.dead_lettered {
        problems.push(format!(
            "the queue holds {}, expected nothing but {} dead",
            describe_counts(&summary.queue),
            worker.dead_lettered
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("counts disagree: {}", problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert_eq!(parse_share("0.05"), Ok(0.05));
        assert_eq!(parse_share("1"), Ok(1.0));
        for bad in ["2", "-0.1", "NaN", "lots"] {
            let err = parse_share(bad).unwrap_err();
            assert!(err.contains("from 0.0 to 1.0"), "{bad}: {err}");
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), Some(50));
        assert_eq!(percentile(&samples, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn drawn_failures_stay_within_the_retries() {
        let mix = JobMix {
            fail_rate: 1.0,
            delayed: 1.0,
            max_retries: 1,
        };
        for seq in 0..1_000 {
            let (job, options) = mix.draw(seq);
            assert!(job.fail_attempts == 1 || job.fail_attempts == ALWAYS);
            assert!(job.delay_ms < MAX_DELAY_MS);
            assert_eq!(options.max_retries, 1);
        }
    }
}
