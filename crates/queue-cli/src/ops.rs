//! Operating queues from a terminal: `stats`, `send`, `dead-letters`,
//! `purge` and `delete`, on any backend compiled into this build.
//!
//! Every command takes `--url` (else `QUEUE_URL`; with neither it says
//! what to set).
//! Tables go to stdout, `--json` prints JSON instead, progress and
//! prompts go to stderr. Exit codes: see [`exit_code`].

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use queue::{
    Backend, DeadLetter, DeadLetterQuery, ErrorKind, Job, JobOptions, Message, MessageId, Priority,
    QueueName, QueueStats, Redrive,
};
use serde::Serialize;

use crate::output::{age, duration, hex, millis_since_epoch, preview, Table};

/// Where the backend is.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// Backend URL: any backend compiled into this build, options in the
    /// query string. Credentials in it are never printed.
    #[arg(long, value_name = "URL", env = "QUEUE_URL", hide_env_values = true)]
    url: Option<String>,
}

impl Target {
    pub(crate) async fn connect(&self) -> anyhow::Result<Arc<dyn Backend>> {
        // An operation on a backend nobody named would act on an empty
        // in-process memory backend and report queues as missing.
        let url = self.url.as_deref().ok_or_else(|| {
            input(
                "no backend given: pass --url URL or set QUEUE_URL \
                 (redis://host:6379, amqp://user:pass@host:5672, kafka://host:9092, sqs://region, ...)",
            )
        })?;
        // The error names the scheme and the problem, never the URL's
        // credentials (the registry and the backends' errors guarantee it).
        let backend = queue::connect(url)
            .await
            .context("could not connect to the backend")?;
        // A queue's group queues (RabbitMQ, SQS, Kafka with a store) count
        // with it.
        queue::with_store_from_env(backend)
            .await
            .context("could not connect to the coordination store")
    }
}

/// A destructive command that was not confirmed.
#[derive(Debug)]
pub(crate) struct NotConfirmed(String);

impl std::fmt::Display for NotConfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotConfirmed {}

/// The process exit code for an error, documented in `queue --help`:
///
/// - 1: the backend failed (unreachable, refused, timed out, ...);
/// - 2: bad input (a queue name, a URL, a payload, an option; clap's own
///   usage errors are 2 as well);
/// - 3: the backend does not support the operation;
/// - 4: a destructive command was not confirmed;
/// - 5: what was asked for does not exist (a dead letter's id).
pub(crate) fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<NotConfirmed>().is_some() {
        return 4;
    }
    if let Some(e) = error.chain().find_map(|e| e.downcast_ref::<queue::Error>()) {
        return match e.kind() {
            ErrorKind::Unsupported => 3,
            ErrorKind::Config
            | ErrorKind::InvalidInput
            | ErrorKind::InvalidQueueName
            | ErrorKind::PayloadTooLarge
            | ErrorKind::Decode => 2,
            ErrorKind::NotFound => 5,
            _ => 1,
        };
    }
    if error.downcast_ref::<InputError>().is_some() {
        return 2;
    }
    1
}

/// Bad input found by the tool itself (not the backend).
#[derive(Debug)]
struct InputError(String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

pub(crate) fn input(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(message.into()))
}

pub(crate) fn queue_name(name: &str) -> anyhow::Result<QueueName> {
    QueueName::new(name).with_context(|| format!("bad queue name {name:?}"))
}

// ---------------------------------------------------------------- stats

/// Options of `queue stats`.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    target: Target,
    /// Queues to show (every queue of the backend when none is named;
    /// backends that cannot list their queues need names).
    #[arg(value_name = "QUEUE")]
    queues: Vec<String>,
    /// Redraw every SECS seconds until interrupted, with rates since the
    /// last sample.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    watch: Option<u64>,
    /// Print JSON (one object per queue; one line per sample with --watch).
    #[arg(long)]
    json: bool,
}

/// One queue's row.
#[derive(Debug, Serialize)]
struct StatsRow {
    queue: String,
    #[serde(flatten)]
    stats: QueueStats,
    /// Acks per second since the previous sample (`None` on the first).
    acked_per_second: Option<f64>,
    /// Dead letters per second since the previous sample.
    dead_lettered_per_second: Option<f64>,
    /// Whether the backend's figures are exact or estimates.
    approximate: bool,
}

pub(crate) async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let named = args
        .queues
        .iter()
        .map(|q| queue_name(q))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let backend = args.target.connect().await?;
    let listed = named.is_empty();
    let queues = if listed {
        backend
            .admin()
            .queues()
            .await
            .context("could not list the queues (name them: queue stats QUEUE...)")?
    } else {
        named
    };
    let approximate = !backend.capabilities().exact_stats();
    let mut previous: Option<(Instant, HashMap<QueueName, QueueStats>)> = None;
    let mut out = std::io::stdout().lock();
    loop {
        let mut sample = Vec::with_capacity(queues.len());
        for queue in &queues {
            match backend.admin().stats(queue).await {
                Ok(stats) => sample.push((queue.clone(), stats)),
                // A listed queue deleted since it was listed.
                Err(e) if listed && e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("could not read the stats of {queue}")))
                }
            }
        }
        let now = Instant::now();
        let rows: Vec<StatsRow> = sample
            .iter()
            .map(|(queue, stats)| {
                let rate = |f: fn(&QueueStats) -> u64| {
                    let (at, before) = previous.as_ref()?;
                    let before = before.get(queue)?;
                    let seconds = now.duration_since(*at).as_secs_f64().max(1e-9);
                    Some(f(stats).saturating_sub(f(before)) as f64 / seconds)
                };
                StatsRow {
                    queue: queue.to_string(),
                    stats: *stats,
                    acked_per_second: rate(|s| s.acked_total),
                    dead_lettered_per_second: rate(|s| s.dead_lettered_total),
                    approximate,
                }
            })
            .collect();
        if args.json {
            if args.watch.is_some() {
                writeln!(out, "{}", serde_json::to_string(&rows)?)?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            }
        } else {
            if args.watch.is_some() && std::io::stdout().is_terminal() {
                // Clear the screen and go home: the table redraws in place.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", stats_table(&rows))?;
            if approximate {
                writeln!(out, "(this backend's counts are estimates)")?;
            }
        }
        out.flush()?;
        let Some(secs) = args.watch else {
            return Ok(());
        };
        previous = Some((now, sample.into_iter().collect()));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn stats_table(rows: &[StatsRow]) -> String {
    let mut table = Table::new(&[
        "QUEUE",
        "READY",
        "DELAYED",
        "IN FLIGHT",
        "DEAD",
        "OLDEST",
        "ACKED/S",
        "DEAD/S",
        "STATE",
    ]);
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    for row in rows {
        table.row(vec![
            row.queue.clone(),
            row.stats.ready.to_string(),
            row.stats.delayed.to_string(),
            row.stats.in_flight.to_string(),
            row.stats.dead.to_string(),
            row.stats
                .oldest_ready_age
                .map_or_else(|| "-".to_owned(), |d| duration(d.as_secs())),
            rate(row.acked_per_second),
            rate(row.dead_lettered_per_second),
            if row.stats.paused {
                "paused"
            } else {
                "running"
            }
            .to_owned(),
        ]);
    }
    table.render()
}

// ----------------------------------------------------------------- send

/// Options of `queue send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    target: Target,
    /// The queue to send to.
    #[arg(value_name = "QUEUE")]
    queue: String,
    /// One job whose payload is this JSON value.
    #[arg(long, value_name = "VALUE", conflicts_with = "file")]
    json: Option<String>,
    /// Jobs from a file of JSON lines, one payload per line ("-" or no
    /// --json/--file: standard input).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Priority: low, normal, high or urgent.
    #[arg(long, value_name = "PRIORITY", default_value = "normal")]
    priority: String,
    /// Run no earlier than this from now (as 500ms, 30s, 5m, 2h).
    #[arg(long, value_name = "DURATION")]
    delay: Option<String>,
    /// Ordering key (jobs with one key keep their order where the backend
    /// orders by key).
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Print the ids as JSON.
    #[arg(long)]
    json_output: bool,
}

/// Jobs per `send_batch` when reading many.
const SEND_BATCH: usize = 500;
/// More lines than this get a progress bar.
const PROGRESS_OVER: u64 = 40;

pub(crate) async fn send(args: SendArgs) -> anyhow::Result<()> {
    let queue = queue_name(&args.queue)?;
    let priority: Priority = args
        .priority
        .parse()
        .with_context(|| format!("bad --priority {:?}", args.priority))?;
    let delay = args
        .delay
        .as_deref()
        .map(|d| queue::config::parse_duration("delay", d))
        .transpose()?;
    let mut options = JobOptions::default();
    options.priority = priority;
    options.delay = delay;
    let make = |line: &str, where_: &str| -> anyhow::Result<Message> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| input(format!("{where_} is not JSON: {e}")))?;
        let mut message = Job::encode(&value, &options)?;
        if let Some(key) = &args.key {
            message = message.with_ordering_key(key);
        }
        Ok(message)
    };
    let backend = args.target.connect().await?;
    let producer = backend
        .producer(&queue)
        .await
        .with_context(|| format!("could not open a producer on {queue}"))?;
    let mut ids: Vec<MessageId> = Vec::new();
    if let Some(json) = &args.json {
        let message = make(json, "--json")?;
        ids.push(
            producer
                .send(message)
                .await
                .with_context(|| format!("could not send to {queue}"))?,
        );
    } else {
        let mut reader: Box<dyn BufRead> = match &args.file {
            Some(path) if path.as_os_str() != "-" => Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .map_err(|e| input(format!("cannot read {}: {e}", path.display())))?,
            )),
            _ => Box::new(std::io::stdin().lock()),
        };
        // No line is read past the largest payload the backend takes.
        let max_line = backend.capabilities().max_payload;
        let bar = ProgressBar::hidden();
        let mut batch = Vec::with_capacity(SEND_BATCH);
        let mut shown = false;
        // The line of the batch's first job: where unsent input starts.
        let mut batch_start = 1;
        let mut buffer = Vec::new();
        for n in 1.. {
            let not_sent = |ids: &[MessageId]| {
                if ids.is_empty() {
                    "nothing was sent".to_owned()
                } else {
                    format!(
                        "the {} job(s) before line {batch_start} were sent; the lines from there on were not",
                        ids.len()
                    )
                }
            };
            let line = match read_line(&mut reader, max_line, &mut buffer)
                .context("could not read the input")?
            {
                Line::End => break,
                Line::TooLong => {
                    return Err(input(format!(
                        "line {n} is longer than the largest payload the backend takes ({max_line} bytes)"
                    ))
                    .context(not_sent(&ids)))
                }
                Line::Text(line) => line,
            };
            if line.trim().is_empty() {
                continue;
            }
            let message =
                make(line, &format!("line {n}")).map_err(|e| e.context(not_sent(&ids)))?;
            if batch.is_empty() {
                batch_start = n;
            }
            batch.push(message);
            if batch.len() == SEND_BATCH {
                ids.extend(send_batch(&*producer, &queue, std::mem::take(&mut batch)).await?);
                if !shown && ids.len() as u64 > PROGRESS_OVER && std::io::stderr().is_terminal() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {pos} jobs sent ({per_sec})")
                            .expect("static template"),
                    );
                    shown = true;
                }
                bar.set_position(ids.len() as u64);
            }
        }
        if !batch.is_empty() {
            ids.extend(send_batch(&*producer, &queue, batch).await?);
        }
        bar.finish_and_clear();
    }
    let mut out = std::io::stdout().lock();
    if args.json_output {
        writeln!(out, "{}", serde_json::to_string(&ids)?)?;
    } else {
        for id in &ids {
            writeln!(out, "{id}")?;
        }
        eprintln!("sent {} job(s) to {queue}", ids.len());
    }
    Ok(())
}

/// One line of input.
enum Line<'a> {
    Text(&'a str),
    /// Longer than the limit: the rest of it was not read.
    TooLong,
    End,
}

/// The next line of `reader` without its line ending, reading no more
/// than `max` bytes of it (plus the ending) into `buffer`.
fn read_line<'a>(
    mut reader: &mut dyn BufRead,
    max: usize,
    buffer: &'a mut Vec<u8>,
) -> anyhow::Result<Line<'a>> {
    buffer.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
    if Read::take(&mut reader, limit).read_until(b'\n', buffer)? == 0 {
        return Ok(Line::End);
    }
    if buffer.last() == Some(&b'\n') {
        buffer.pop();
        if buffer.last() == Some(&b'\r') {
            buffer.pop();
        }
    }
    if buffer.len() > max {
        return Ok(Line::TooLong);
    }
    std::str::from_utf8(buffer)
        .map(Line::Text)
        .map_err(|e| input(format!("the input is not UTF-8 text: {e}")))
}

async fn send_batch(
    producer: &dyn queue::Producer,
    queue: &QueueName,
    batch: Vec<Message>,
) -> anyhow::Result<Vec<MessageId>> {
    let len = batch.len();
    producer.send_batch(batch).await.map_err(|e| {
        let sent = e.accepted().count();
        anyhow::Error::new(queue::Error::from(e)).context(format!(
            "a batch of {len} to {queue} failed ({sent} of it were accepted)"
        ))
    })
}

// --------------------------------------------------------- dead letters

/// `queue dead-letters`.
#[derive(Debug, Args)]
pub(crate) struct DeadLettersArgs {
    #[command(subcommand)]
    command: DeadLettersCommand,
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// List a queue's dead letters, oldest first: id, attempts, reason,
    /// last error, dead since, payload preview.
    List {
        #[command(flatten)]
        target: Target,
        /// The queue.
        #[arg(value_name = "QUEUE")]
        queue: String,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Start after this cursor (a previous page's, printed on stderr
        /// when more letters follow).
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
        /// Whole payloads (default: the first 4 KiB of each, with the real
        /// length; letters can be up to the backend's maximum payload).
        #[arg(long)]
        full: bool,
        /// Print JSON (payloads as text when UTF-8, else hex).
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on their queue, attempts reset.
    Redrive {
        #[command(flatten)]
        target: Target,
        /// The queue.
        #[arg(value_name = "QUEUE")]
        queue: String,
        /// Every dead letter of the queue.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// These dead letters (repeat for more).
        #[arg(long, value_name = "ID")]
        id: Vec<String>,
    },
}

/// A dead letter as `--json` prints it.
#[derive(Debug, Serialize)]
struct DeadLetterRow {
    id: String,
    attempts: u32,
    reason: String,
    last_error: Option<String>,
    dead_since_ms: u128,
    payload: String,
    payload_encoding: &'static str,
    /// The whole payload's length.
    payload_bytes: usize,
    /// Whether `payload` is only its first bytes (without `--full`).
    truncated: bool,
}

/// Bytes of each payload `dead-letters list` reads without `--full`.
const PREVIEW_BYTES: usize = 4096;

pub(crate) async fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<()> {
    match args.command {
        DeadLettersCommand::List {
            target,
            queue,
            limit,
            cursor,
            full,
            json,
        } => {
            let queue = queue_name(&queue)?;
            let mut query = DeadLetterQuery::new(usize::try_from(limit).unwrap_or(usize::MAX));
            if !full {
                query = query.with_preview(PREVIEW_BYTES);
            }
            if let Some(cursor) = cursor {
                query = query.after(cursor.parse()?);
            }
            let backend = target.connect().await?;
            let page = backend
                .admin()
                .dead_letter_page(&queue, &query)
                .await
                .with_context(|| format!("could not list the dead letters of {queue}"))?;
            let dead = &page.letters;
            let mut out = std::io::stdout().lock();
            if json {
                let rows: Vec<DeadLetterRow> = dead.iter().map(dead_letter_row).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                write!(out, "{}", dead_letter_table(dead))?;
                eprintln!("{} dead letter(s) shown", dead.len());
            }
            if let Some(next) = &page.next {
                eprintln!("more follow: --cursor {next}");
            }
            Ok(())
        }
        DeadLettersCommand::Redrive {
            target,
            queue,
            all,
            id,
        } => {
            let queue = queue_name(&queue)?;
            let which = if all {
                Redrive::All
            } else {
                Redrive::Ids(
                    id.iter()
                        .map(|i| i.parse().with_context(|| format!("bad message id {i:?}")))
                        .collect::<anyhow::Result<_>>()?,
                )
            };
            let backend = target.connect().await?;
            let moved = backend
                .admin()
                .redrive(&queue, which)
                .await
                .with_context(|| format!("could not redrive the dead letters of {queue}"))?;
            println!("{moved}");
            eprintln!("redrove {moved} dead letter(s) to {queue}");
            Ok(())
        }
    }
}

fn dead_letter_row(dead: &DeadLetter) -> DeadLetterRow {
    let (payload, payload_encoding) = match dead.payload_text() {
        Some(text) => (text.to_owned(), "utf-8"),
        None => (hex(&dead.message.payload), "hex"),
    };
    DeadLetterRow {
        id: dead.message.id.to_string(),
        attempts: dead.attempts,
        reason: dead.reason.to_string(),
        last_error: dead.last_error.clone(),
        dead_since_ms: millis_since_epoch(dead.dead_lettered_at),
        payload,
        payload_encoding,
        payload_bytes: dead.payload_len,
        truncated: dead.truncated(),
    }
}

fn dead_letter_table(dead: &[DeadLetter]) -> String {
    let mut table = Table::new(&[
        "ID",
        "ATTEMPTS",
        "REASON",
        "DEAD FOR",
        "LAST ERROR",
        "PAYLOAD",
    ]);
    for d in dead {
        let payload = match d.payload_text() {
            Some(text) => preview(text, 40),
            None => format!("hex:{}", preview(&hex(&d.message.payload), 40)),
        };
        table.row(vec![
            d.message.id.to_string(),
            d.attempts.to_string(),
            preview(&d.reason.to_string(), 40),
            age(d.dead_lettered_at),
            preview(d.last_error.as_deref().unwrap_or("-"), 40),
            payload,
        ]);
    }
    table.render()
}

// -------------------------------------------------------- pause, resume

/// Options of `queue pause` and `queue resume`.
#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    #[command(flatten)]
    target: Target,
    /// The queue.
    #[arg(value_name = "QUEUE")]
    queue: String,
}

pub(crate) async fn pause(args: QueueArgs) -> anyhow::Result<()> {
    let queue = queue_name(&args.queue)?;
    let backend = args.target.connect().await?;
    backend
        .admin()
        .pause(&queue)
        .await
        .with_context(|| format!("could not pause {queue}"))?;
    eprintln!("paused {queue}: its consumers receive nothing until `queue resume {queue}`");
    Ok(())
}

pub(crate) async fn resume(args: QueueArgs) -> anyhow::Result<()> {
    let queue = queue_name(&args.queue)?;
    let backend = args.target.connect().await?;
    backend
        .admin()
        .resume(&queue)
        .await
        .with_context(|| format!("could not resume {queue}"))?;
    eprintln!("resumed {queue}");
    Ok(())
}

// ------------------------------------------------------ purge and delete

/// Options of `queue purge` and `queue delete`.
#[derive(Debug, Args)]
pub(crate) struct DestroyArgs {
    #[command(flatten)]
    target: Target,
    /// The queue.
    #[arg(value_name = "QUEUE")]
    queue: String,
    /// Do it without asking (needed when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
}

/// Ask on the terminal unless `--yes`; refuse without a terminal.
pub(crate) fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(NotConfirmed(format!(
            "{question}: not confirmed (stdin is not a terminal; pass --yes)"
        ))
        .into());
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(NotConfirmed(format!("{question}: not confirmed")).into())
    }
}

pub(crate) async fn purge(args: DestroyArgs) -> anyhow::Result<()> {
    let queue = queue_name(&args.queue)?;
    confirm(
        args.yes,
        &format!("Purge {queue} (every ready and delayed job is deleted)?"),
    )?;
    let backend = args.target.connect().await?;
    let removed = backend
        .admin()
        .purge(&queue)
        .await
        .with_context(|| format!("could not purge {queue}"))?;
    println!("{removed}");
    eprintln!("purged {removed} job(s) from {queue}");
    Ok(())
}

pub(crate) async fn delete(args: DestroyArgs) -> anyhow::Result<()> {
    let queue = queue_name(&args.queue)?;
    confirm(
        args.yes,
        &format!("Delete {queue} with its jobs and dead letters?"),
    )?;
    let backend = args.target.connect().await?;
    backend
        .admin()
        .delete_queue(&queue)
        .await
        .with_context(|| format!("could not delete {queue}"))?;
    eprintln!("deleted {queue}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_error_kind() {
        let unsupported = anyhow::Error::new(queue::Error::new(ErrorKind::Unsupported, "no"));
        assert_eq!(exit_code(&unsupported.context("purge")), 3);
        let bad = anyhow::Error::new(queue::Error::new(ErrorKind::InvalidQueueName, "bad"));
        assert_eq!(exit_code(&bad), 2);
        assert_eq!(exit_code(&input("not JSON")), 2);
        assert_eq!(exit_code(&NotConfirmed("no".into()).into()), 4);
        let down = anyhow::Error::new(queue::Error::new(ErrorKind::Connection, "down"));
        assert_eq!(exit_code(&down), 1);
    }
}
