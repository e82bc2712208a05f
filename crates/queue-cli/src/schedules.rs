//! `queue schedules`: periodic jobs kept in the coordination store, from a
//! terminal: list, show, add, update, pause, resume, trigger, remove, and
//! run a scheduler process.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use queue::schedules::{JobTemplate, Misfire, ScheduleInfo, Schedules, Spec};
use queue::{Backend, Priority, Schedule};

use crate::ops::{confirm, input, queue_name, Target};
use crate::output::{millis_since_epoch, preview, Table};

/// `queue schedules`.
#[derive(Debug, Args)]
pub(crate) struct SchedulesArgs {
    #[command(subcommand)]
    command: SchedulesCommand,
}

#[derive(Debug, Subcommand)]
enum SchedulesCommand {
    /// Every schedule: name, when, queue, misfire policy, state, last and
    /// next fire times (UTC).
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON (times in milliseconds since the Unix epoch).
        #[arg(long)]
        json: bool,
    },
    /// One schedule, with its job template.
    Show {
        #[command(flatten)]
        target: Target,
        /// The schedule's name.
        name: String,
    },
    /// Add a schedule (refused if the name is taken: use update).
    Add(Definition),
    /// Replace a schedule's definition (its tick history is kept).
    Update(Definition),
    /// Stop firing a schedule until it is resumed.
    Pause {
        #[command(flatten)]
        target: Target,
        /// The schedule's name.
        name: String,
    },
    /// Fire a paused schedule again (ticks missed while paused follow its
    /// misfire policy).
    Resume {
        #[command(flatten)]
        target: Target,
        /// The schedule's name.
        name: String,
    },
    /// Send the schedule's job now, once (prints its id).
    Trigger {
        #[command(flatten)]
        target: Target,
        /// The schedule's name.
        name: String,
    },
    /// Remove a schedule (asks first; --yes when not on a terminal).
    Remove {
        #[command(flatten)]
        target: Target,
        /// The schedule's name.
        name: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Run a scheduler until interrupted: one of the processes running it
    /// is the leader and sends every tick's job (run two for a quick
    /// hand-over).
    Run {
        #[command(flatten)]
        target: Target,
        /// How long a leader that died keeps the lead before another
        /// takes over.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
        lease_ttl: Duration,
    },
}

/// A schedule's definition on the command line.
#[derive(Debug, Args)]
struct Definition {
    #[command(flatten)]
    target: Target,
    /// The schedule's name (1 to 200 bytes).
    name: String,
    /// The queue its jobs go to.
    #[arg(long, value_name = "QUEUE")]
    queue: String,
    /// A cron expression: 5 fields, or 6 with seconds first
    /// ("0 7 * * *", "*/10 * * * * *").
    #[arg(
        long,
        value_name = "EXPR",
        conflicts_with = "every",
        required_unless_present = "every"
    )]
    cron: Option<String>,
    /// The time zone of --cron (an IANA name: Europe/Paris; default UTC).
    #[arg(long, value_name = "ZONE", requires = "cron")]
    tz: Option<String>,
    /// A fixed interval instead of --cron (30s, 5m, 1h; ticks on whole
    /// multiples since the Unix epoch).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    every: Option<Duration>,
    /// The job's payload, a JSON value.
    #[arg(long, value_name = "JSON", default_value = "null")]
    json: String,
    /// A header on every job (NAME=VALUE; repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// The jobs' priority level (1, 5, 10 or 15).
    #[arg(long, value_name = "LEVEL")]
    priority: Option<u8>,
    /// Attempts each job gets.
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// What to do with ticks missed beyond the grace period: skip, once
    /// (one job for all), or each:N (one job for each of the last N).
    #[arg(long, value_name = "POLICY", default_value = "once", value_parser = parse_misfire)]
    misfire: Misfire,
    /// How late a tick may fire before it counts as missed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    queue::config::parse_duration("duration", text).map_err(|e| e.to_string())
}

fn parse_misfire(text: &str) -> Result<Misfire, String> {
    match text {
        "skip" => Ok(Misfire::Skip),
        "once" => Ok(Misfire::Once),
        _ => {
            let max = text
                .strip_prefix("each:")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| format!("misfire: {text:?} is not skip, once or each:N"))?;
            Ok(Misfire::Each { max })
        }
    }
}

impl Definition {
    fn schedule(&self) -> anyhow::Result<Schedule> {
        let spec = match (&self.cron, self.every) {
            (Some(expression), _) => match &self.tz {
                Some(zone) => Spec::cron_in(expression, zone)?,
                None => Spec::cron(expression)?,
            },
            (None, Some(every)) => Spec::every(every)?,
            (None, None) => return Err(input("give --cron EXPR or --every DURATION")),
        };
        let value: serde_json::Value = serde_json::from_str(&self.json)
            .map_err(|e| input(format!("--json: not a JSON value: {e}")))?;
        let mut job = JobTemplate::json(queue_name(&self.queue)?, &value)?;
        for header in &self.headers {
            let (name, value) = header
                .split_once('=')
                .ok_or_else(|| input(format!("--header {header:?}: not NAME=VALUE")))?;
            job = job.header(name, value);
        }
        if let Some(level) = self.priority {
            let priority = Priority::from_level(level)
                .ok_or_else(|| input(format!("--priority {level}: not 1, 5, 10 or 15")))?;
            job = job.priority(priority);
        }
        if let Some(n) = self.max_attempts {
            job = job.max_attempts(n);
        }
        let mut schedule = Schedule::new(&self.name, spec, job)?
            .with_misfire(self.misfire)
            .with_paused(self.paused);
        if let Some(grace) = self.grace {
            schedule = schedule.with_grace(grace);
        }
        schedule.check()?;
        Ok(schedule)
    }
}

/// The schedules of the backend `target` names, in its coordination store
/// (`QUEUE_COORDINATION_URL`, else the backend's own).
async fn open(target: &Target) -> anyhow::Result<(Arc<dyn Backend>, Schedules)> {
    let backend = target.connect().await?;
    let store = queue::coordination_for(&*backend)
        .await
        .context("could not connect to the coordination store")?
        .ok_or_else(|| {
            queue::coordination::needs_store("schedules", backend.capabilities().backend)
        })?;
    let schedules = Schedules::with_store(backend.clone(), store);
    Ok((backend, schedules))
}

pub(crate) async fn schedules(args: SchedulesArgs) -> anyhow::Result<()> {
    match args.command {
        SchedulesCommand::List { target, json } => {
            let (_, schedules) = open(&target).await?;
            let list = schedules
                .list()
                .await
                .context("could not list the schedules")?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else if list.is_empty() {
                eprintln!("no schedules");
            } else {
                out.write_all(table(&list, SystemTime::now()).as_bytes())?;
            }
        }
        SchedulesCommand::Show { target, name } => {
            let (_, schedules) = open(&target).await?;
            let info = schedules
                .get(&name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&info)?
            )?;
        }
        SchedulesCommand::Add(definition) => {
            let schedule = definition.schedule()?;
            let (_, schedules) = open(&definition.target).await?;
            let info = schedules.add(schedule).await?;
            println!(
                "added {}; next {}",
                preview(&definition.name, 200),
                next(&info)
            );
        }
        SchedulesCommand::Update(definition) => {
            let schedule = definition.schedule()?;
            let (_, schedules) = open(&definition.target).await?;
            let info = schedules.update(schedule).await?;
            println!(
                "updated {}; next {}",
                preview(&definition.name, 200),
                next(&info)
            );
        }
        SchedulesCommand::Pause { target, name } => {
            let (_, schedules) = open(&target).await?;
            schedules.pause(&name).await?;
            println!("paused {}", preview(&name, 200));
        }
        SchedulesCommand::Resume { target, name } => {
            let (_, schedules) = open(&target).await?;
            let info = schedules.resume(&name).await?;
            println!("resumed {}; next {}", preview(&name, 200), next(&info));
        }
        SchedulesCommand::Trigger { target, name } => {
            let (_, schedules) = open(&target).await?;
            let id = schedules.trigger(&name).await?;
            println!("{id}");
        }
        SchedulesCommand::Remove { target, name, yes } => {
            let (_, schedules) = open(&target).await?;
            confirm(yes, &format!("remove schedule {}", preview(&name, 200)))?;
            if !schedules.remove(&name).await? {
                return Err(not_found(&name).into());
            }
            println!("removed {}", preview(&name, 200));
        }
        SchedulesCommand::Run { target, lease_ttl } => {
            let (_, schedules) = open(&target).await?;
            let runner = schedules.runner().lease_ttl(lease_ttl).start().await?;
            eprintln!(
                "scheduler {} running (lease {lease_ttl:?}); Ctrl-C to stop",
                runner.id()
            );
            stopped().await;
            let fired = runner.ticks_fired();
            runner.shutdown().await?;
            eprintln!("stopped after firing {fired} ticks");
        }
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM (a service manager stopping the process).
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn not_found(name: &str) -> queue::Error {
    queue::Error::new(
        queue::ErrorKind::NotFound,
        format!("no schedule named {}", preview(name, 200)),
    )
}

fn next(info: &ScheduleInfo) -> String {
    info.next_tick
        .map_or_else(|| "none (paused)".to_owned(), utc)
}

/// A time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(at: SystemTime) -> String {
    let millis = i64::try_from(millis_since_epoch(at)).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(millis)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| format!("{millis} ms"))
}

fn when(spec: &Spec) -> String {
    match (spec.expression(), spec.time_zone(), spec.interval()) {
        (Some(expression), Some(zone), _) => format!("cron {expression} ({zone})"),
        (Some(expression), None, _) => format!("cron {expression}"),
        (None, _, Some(every)) => format!("every {every:?}"),
        _ => "?".to_owned(),
    }
}

fn misfire(policy: Misfire) -> String {
    match policy {
        Misfire::Skip => "skip".to_owned(),
        Misfire::Once => "once".to_owned(),
        Misfire::Each { max } => format!("each:{max}"),
    }
}

fn table(list: &[ScheduleInfo], now: SystemTime) -> String {
    let mut table = Table::new(&[
        "NAME", "WHEN", "QUEUE", "MISFIRE", "STATE", "LAST", "NEXT", "IN",
    ]);
    for info in list {
        let s = &info.schedule;
        let in_time = info.next_tick.map_or_else(String::new, |next| {
            let secs = next.duration_since(now).unwrap_or_default().as_secs();
            crate::output::duration(secs)
        });
        // Names and expressions come from whoever wrote the schedule:
        // shown escaped, so none can drive the terminal.
        table.row(vec![
            preview(s.name(), 64),
            preview(&when(s.spec()), 64),
            preview(s.job().queue().as_str(), 64),
            misfire(s.misfire()),
            if s.is_paused() { "paused" } else { "active" }.to_owned(),
            info.last_tick.map_or_else(|| "-".to_owned(), utc),
            next(info),
            in_time,
        ]);
    }
    table.render()
}
