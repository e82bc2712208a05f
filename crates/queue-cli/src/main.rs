//! The `queue` command line tool.
//!
//! `queue demo` submits many typed jobs, runs them with a worker pool on any
//! backend compiled in, and prints throughput, latency, retries and dead
//! letters.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;

/// Background jobs over Redis, RabbitMQ, Kafka, SQS or an embedded memory
/// backend, from the command line.
#[derive(Debug, Parser)]
#[command(name = "queue", version, propagate_version = true)]
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
