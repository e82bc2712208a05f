//! The `queue` command line tool.
//!
//! Operations on any backend compiled in (`stats`, `send`, `dead-letters`,
//! `purge`, `delete`, `pause`, `resume`, `workers`, `jobs`), and `queue demo`, which submits many typed jobs,
//! runs them with a worker pool and prints throughput, latency, retries
//! and dead letters.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod jobs;
mod ops;
mod output;
mod schedules;
mod serve;

/// Background jobs over Redis, RabbitMQ, Kafka, SQS or an embedded memory
/// backend, from the command line.
#[derive(Debug, Parser)]
#[command(
    name = "queue",
    version,
    propagate_version = true,
    after_help = "Every command but demo needs --url (or QUEUE_URL); demo runs on memory:// unless told.\n\nExit codes: 0 done; 1 the backend failed (unreachable, refused, timed out); 2 bad input (usage, queue name, URL, payload); 3 the backend does not support the operation; 4 a destructive command was not confirmed; 5 not found."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit many jobs, run them with a worker pool, and print throughput,
    /// latency, retries and dead letters.
    ///
    /// Producers submit typed jobs in batches of 500, with mixed priorities;
    /// a share of them is delayed and a share fails, so the run shows
    /// retries with backoff and dead letters. A progress bar on stderr
    /// counts jobs settled (completed or dead-lettered). When all are, the
    /// worker shuts down and a summary goes to stdout: throughput, pickup
    /// latency of first attempts (from when a job was due to when its
    /// handler started) and handler run time as p50/p99, retries, dead
    /// letters and the queue's final counts. Exits non-zero on timeout,
    /// Ctrl-C, a backend error or counts that disagree.
    Demo(demo::DemoArgs),
    /// Counts per queue: ready, delayed, in flight, dead, and with --watch
    /// acks and dead letters per second since the last sample.
    Stats(ops::StatsArgs),
    /// Send jobs: one with --json VALUE, or JSON lines (one payload each)
    /// from --file or standard input, in batches, with a progress bar on a
    /// terminal. Prints the ids.
    Send(ops::SendArgs),
    /// List or redrive a queue's dead letters.
    DeadLetters(ops::DeadLettersArgs),
    /// Delete every ready and delayed job of a queue (asks first; --yes
    /// when not on a terminal).
    Purge(ops::DestroyArgs),
    /// Delete a queue with its jobs and dead letters (asks first; --yes
    /// when not on a terminal).
    Delete(ops::DestroyArgs),
    /// Pause a queue: its consumers, in every process, receive nothing
    /// until it is resumed; sends still succeed.
    Pause(ops::QueueArgs),
    /// Resume a paused queue.
    Resume(ops::QueueArgs),
    /// The live workers of every queue (from the backend's worker
    /// registry): host, pid, concurrency, in flight, counts, heartbeat age.
    Workers(jobs::WorkersArgs),
    /// Tracked jobs (the backend's job store): list with filters and a
    /// search, show one, retry a dead one now, forget one.
    Jobs(jobs::JobsArgs),
    /// Periodic jobs (cron or interval schedules, kept in the coordination
    /// store: the backend's own, or QUEUE_COORDINATION_URL): list, show,
    /// add, update, pause, resume, trigger now, remove, and run a
    /// scheduler process.
    Schedules(schedules::SchedulesArgs),
    /// Run the web dashboard: every queue's depth, oldest job, rates and
    /// chart, dead letters, jobs and workers, with redrive, purge, pause and
    /// retry; plus /metrics (Prometheus) and /healthz. Binds 127.0.0.1:8080
    /// by default; any other address needs --token.
    Serve(serve::ServeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Stats(args) => ops::stats(args).await,
        Command::Send(args) => ops::send(args).await,
        Command::DeadLetters(args) => ops::dead_letters(args).await,
        Command::Purge(args) => ops::purge(args).await,
        Command::Delete(args) => ops::delete(args).await,
        Command::Pause(args) => ops::pause(args).await,
        Command::Resume(args) => ops::resume(args).await,
        Command::Workers(args) => jobs::workers(args).await,
        Command::Jobs(args) => jobs::jobs(args).await,
        Command::Schedules(args) => schedules::schedules(args).await,
        Command::Serve(args) => serve::serve(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(ops::exit_code(&error))
        }
    }
}
