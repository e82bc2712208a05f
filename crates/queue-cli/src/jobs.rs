//! `queue workers` and `queue jobs`: the worker registry and the job
//! store, from a terminal.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use queue::store::not_tracked;
use queue::{
    Backend, JobCursor, JobQuery, JobRecord, JobScheduler, JobStatus, JobStore, MessageId,
    WorkerInfo,
};

use crate::ops::{confirm, input, queue_name, Target};
use crate::output::{age, duration, preview, Table};

// -------------------------------------------------------------- workers

/// Options of `queue workers`.
#[derive(Debug, Args)]
pub(crate) struct WorkersArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON (times in milliseconds since the Unix epoch).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    let backend = args.target.connect().await?;
    let workers = backend
        .admin()
        .workers()
        .await
        .context("could not list the workers")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&workers)?)?;
    } else if workers.is_empty() {
        eprintln!("no live workers");
    } else {
        out.write_all(workers_table(&workers).as_bytes())?;
    }
    Ok(())
}

fn workers_table(workers: &[WorkerInfo]) -> String {
    let mut table = Table::new(&[
        "ID",
        "QUEUE",
        "HOST",
        "PID",
        "CONCURRENCY",
        "IN FLIGHT",
        "COMPLETED",
        "FAILED",
        "UP",
        "HEARTBEAT",
    ]);
    for w in workers {
        // Registry entries are written by whoever registers a worker:
        // every text is shown escaped, so none can drive the terminal.
        table.row(vec![
            preview(&w.id, 64),
            preview(w.queue.as_str(), 64),
            preview(&w.host, 40),
            w.pid.to_string(),
            w.concurrency.to_string(),
            w.in_flight.to_string(),
            w.completed.to_string(),
            w.failed.to_string(),
            age(w.started_at),
            format!("{} ago", age(w.last_heartbeat)),
        ]);
    }
    table.render()
}

// ----------------------------------------------------------------- jobs

/// `queue jobs`.
#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Tracked jobs, newest first: id, name, queue, status, attempts, age,
    /// last error. Prints the cursor of the next page on stderr.
    List {
        #[command(flatten)]
        target: Target,
        /// Only jobs with this status (pending, scheduled, running, retry,
        /// completed, failed, cancelled, dead).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Only jobs of this queue.
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// Only jobs whose name, last error or id contains TEXT (case ignored).
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Start after this cursor (printed by the previous page).
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
        /// Print JSON: `{"jobs": [...], "next": CURSOR | null}`.
        #[arg(long)]
        json: bool,
    },
    /// Everything the store holds about one job.
    Show {
        #[command(flatten)]
        target: Target,
        /// The job's id.
        #[arg(value_name = "ID")]
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a dead job again now: its dead letter goes back to its queue.
    Retry {
        #[command(flatten)]
        target: Target,
        /// The job's id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Forget a job's record (its message, if still queued, stays; asks
    /// first, --yes when not on a terminal).
    Delete {
        #[command(flatten)]
        target: Target,
        /// The job's id.
        #[arg(value_name = "ID")]
        id: String,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
}

/// The job store the backend keeps (`Backend::default_job_store`).
fn store_of(backend: &dyn Backend) -> anyhow::Result<Arc<dyn JobStore>> {
    backend.default_job_store().ok_or_else(|| {
        anyhow::Error::new(queue::Error::unsupported(format!(
            "the {} backend keeps no job records; jobs are tracked in the store of the process that submitted them",
            backend.capabilities().backend
        )))
    })
}

fn job_id(id: &str) -> anyhow::Result<MessageId> {
    id.parse::<MessageId>()
        .map_err(|_| input(format!("bad job id {:?}: expected a UUID", preview(id, 80))))
}

pub(crate) async fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    match args.command {
        JobsCommand::List {
            target,
            status,
            queue,
            search,
            limit,
            cursor,
            json,
        } => {
            let mut query = JobQuery::new().with_limit(limit as usize);
            if let Some(status) = status {
                query = query.with_status(status.parse::<JobStatus>()?);
            }
            if let Some(queue) = queue {
                query = query.with_queue(queue_name(&queue)?);
            }
            if let Some(search) = search {
                query = query.with_search(search);
            }
            if let Some(cursor) = cursor {
                query = query.after(cursor.parse::<JobCursor>()?);
            }
            let backend = target.connect().await?;
            let page = store_of(&*backend)?
                .list(&query)
                .await
                .context("could not list the jobs")?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&page)?)?;
            } else if page.jobs.is_empty() {
                eprintln!("no jobs match");
            } else {
                out.write_all(jobs_table(&page.jobs).as_bytes())?;
            }
            if let (Some(next), false) = (page.next, json) {
                eprintln!("more: --cursor {next}");
            }
            Ok(())
        }
        JobsCommand::Show { target, id, json } => {
            let id = job_id(&id)?;
            let backend = target.connect().await?;
            let record = store_of(&*backend)?
                .get(id)
                .await
                .context("could not read the job")?
                .ok_or_else(|| not_tracked(id))?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?;
            } else {
                out.write_all(job_details(&record).as_bytes())?;
            }
            Ok(())
        }
        JobsCommand::Retry { target, id } => {
            let id = job_id(&id)?;
            let backend = target.connect().await?;
            let store = store_of(&*backend)?;
            let scheduler = JobScheduler::new(backend, store);
            scheduler
                .retry(id)
                .await
                .with_context(|| format!("could not retry job {id}"))?;
            eprintln!("job {id} is back on its queue");
            Ok(())
        }
        JobsCommand::Delete { target, id, yes } => {
            let id = job_id(&id)?;
            confirm(yes, &format!("Forget the record of job {id}?"))?;
            let backend = target.connect().await?;
            let found = store_of(&*backend)?
                .delete(id)
                .await
                .with_context(|| format!("could not delete job {id}"))?;
            if !found {
                return Err(not_tracked(id).into());
            }
            eprintln!("forgot job {id}");
            Ok(())
        }
    }
}

fn jobs_table(jobs: &[JobRecord]) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "QUEUE",
        "STATUS",
        "ATTEMPTS",
        "AGE",
        "LAST ERROR",
    ]);
    for job in jobs {
        table.row(vec![
            job.id.to_string(),
            preview(job.name.as_deref().unwrap_or("-"), 32),
            job.queue.to_string(),
            job.status.to_string(),
            format!("{}/{}", job.attempts, job.max_attempts),
            age(job.created_at),
            preview(job.last_error.as_deref().unwrap_or(""), 60),
        ]);
    }
    table.render()
}

fn job_details(job: &JobRecord) -> String {
    let when = |at: Option<std::time::SystemTime>| {
        at.map_or("-".to_owned(), |at| format!("{} ago", age(at)))
    };
    let mut table = Table::new(&["FIELD", "VALUE"]);
    let mut row = |field: &str, value: String| table.row(vec![field.to_owned(), value]);
    row("id", job.id.to_string());
    row("name", preview(job.name.as_deref().unwrap_or("-"), 200));
    row("queue", job.queue.to_string());
    row("status", job.status.to_string());
    row("priority", job.priority.to_string());
    row(
        "attempts",
        format!("{} of {}", job.attempts, job.max_attempts),
    );
    row("created", when(Some(job.created_at)));
    row("updated", when(Some(job.updated_at)));
    row("started", when(job.started_at));
    row("finished", when(job.finished_at));
    if let (Some(start), Some(end)) = (job.started_at, job.finished_at) {
        let secs = end.duration_since(start).map_or(0, |d| d.as_secs());
        row("ran for", duration(secs));
    }
    row(
        "idempotency key",
        preview(job.idempotency_key.as_deref().unwrap_or("-"), 200),
    );
    row(
        "last error",
        preview(job.last_error.as_deref().unwrap_or("-"), 2000),
    );
    for failure in &job.errors {
        row(
            &format!("attempt {} failed", failure.attempt),
            format!("{} ago: {}", age(failure.at), preview(&failure.error, 2000)),
        );
    }
    row(
        "result",
        job.result
            .as_ref()
            .map_or("-".to_owned(), |r| preview(&r.to_string(), 2000)),
    );
    table.render()
}
