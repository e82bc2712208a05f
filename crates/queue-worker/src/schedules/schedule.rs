//! A named schedule: when it fires, what it sends, and what happens to
//! ticks it missed ([`Schedule`], [`Misfire`]).

use std::time::{Duration, SystemTime};

use queue_core::coordination::check_name;
use queue_core::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use super::spec::Spec;
use super::template::JobTemplate;

/// The grace period of a schedule given none: one minute.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// The shortest grace period: 100 ms.
pub const MIN_GRACE: Duration = Duration::from_millis(100);
/// The longest grace period: one day.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The most missed ticks [`Misfire::Each`] fires: 1,000.
pub const MAX_MISFIRE_EACH: u32 = 1000;

/// What a schedule does with ticks it missed: ticks that went by more than
/// its grace period ago without being fired (no scheduler was running, or
/// the schedule was created, resumed or updated since). Ticks within the
/// grace period are never missed: a leader that takes over a few seconds
/// late fires each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Misfire {
    /// Drop them.
    Skip,
    /// Fire one job, for the latest of them, standing for all.
    #[default]
    Once,
    /// Fire one job for each of the latest `max` of them (1..=
    /// [`MAX_MISFIRE_EACH`]), oldest first; older ones are dropped.
    Each {
        /// The most missed ticks fired.
        max: u32,
    },
}

/// A named schedule: a [`Spec`] saying when, a [`JobTemplate`] saying what,
/// a [`Misfire`] policy with its grace period, and whether it is paused.
///
/// ```
/// use queue_core::QueueName;
/// use queue_worker::schedules::{JobTemplate, Misfire, Schedule, Spec};
/// use std::time::Duration;
/// let digest = Schedule::new(
///     "daily-digest",
///     Spec::cron_in("0 7 * * *", "Europe/Paris")?,
///     JobTemplate::new(QueueName::new("digests")?, "{}"),
/// )?
/// .with_misfire(Misfire::Skip)
/// .with_grace(Duration::from_secs(300));
/// assert_eq!(digest.name(), "daily-digest");
/// assert!(Schedule::new("", digest.spec().clone(), digest.job().clone()).is_err());
/// # Ok::<(), queue_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    name: String,
    spec: Spec,
    job: JobTemplate,
    #[serde(default)]
    misfire: Misfire,
    #[serde(rename = "grace_ms", with = "super::millis")]
    grace: Duration,
    #[serde(default)]
    paused: bool,
    #[serde(rename = "created_at_ms", with = "super::millis::time")]
    created_at: SystemTime,
    /// Ticks at or before this time are not due: the schedule was
    /// created, updated or resumed then.
    #[serde(rename = "active_since_ms", with = "super::millis::time")]
    active_since: SystemTime,
}

impl Schedule {
    /// A schedule named `name` (1..=200 bytes, no control characters)
    /// sending `job` at each tick of `spec`, with [`Misfire::Once`] and
    /// [`DEFAULT_GRACE`]. A bad name or template is
    /// [`ErrorKind::InvalidInput`] naming the field.
    pub fn new(name: impl Into<String>, spec: Spec, job: JobTemplate) -> Result<Schedule> {
        let now = SystemTime::now();
        let schedule = Schedule {
            name: name.into(),
            spec,
            job,
            misfire: Misfire::default(),
            grace: DEFAULT_GRACE,
            paused: false,
            created_at: now,
            active_since: now,
        };
        schedule.check()?;
        Ok(schedule)
    }

    /// What to do with missed ticks.
    #[must_use]
    pub fn with_misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = misfire;
        self
    }

    /// How late a tick may fire before it counts as missed
    /// ([`MIN_GRACE`]..=[`MAX_GRACE`]; default [`DEFAULT_GRACE`]).
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Add it paused (it fires once resumed).
    #[must_use]
    pub fn with_paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When it fires.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// What it sends.
    pub fn job(&self) -> &JobTemplate {
        &self.job
    }

    /// What it does with missed ticks.
    pub fn misfire(&self) -> Misfire {
        self.misfire
    }

    /// How late a tick may fire before it counts as missed.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// When it was first added.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Ticks after this time are due: when it was added, last updated or
    /// last resumed.
    pub fn active_since(&self) -> SystemTime {
        self.active_since
    }

    /// `Err(InvalidInput)` naming the field that is out of range.
    pub fn check(&self) -> Result<()> {
        check_name("schedule name", &self.name)?;
        self.job.check()?;
        if let Misfire::Each { max } = self.misfire {
            if !(1..=MAX_MISFIRE_EACH).contains(&max) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("misfire.max: must be 1..={MAX_MISFIRE_EACH}, not {max}"),
                ));
            }
        }
        if !(MIN_GRACE..=MAX_GRACE).contains(&self.grace) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "grace: must be {MIN_GRACE:?}..={MAX_GRACE:?}, not {:?}",
                    self.grace
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub(crate) fn set_created_at(&mut self, at: SystemTime) {
        self.created_at = at;
    }

    pub(crate) fn set_active_since(&mut self, at: SystemTime) {
        self.active_since = at;
    }
}

#[cfg(test)]
mod tests {
    use queue_core::QueueName;

    use super::*;

    fn schedule() -> Schedule {
        Schedule::new(
            "nightly",
            Spec::cron_in("0 3 * * *", "Europe/Paris").expect("valid"),
            JobTemplate::new(QueueName::new("jobs").expect("valid"), "{}").header("k", "v"),
        )
        .expect("valid")
    }

    #[test]
    fn a_schedule_round_trips_through_json() {
        let schedule = schedule()
            .with_misfire(Misfire::Each { max: 3 })
            .with_grace(Duration::from_secs(5))
            .with_paused(true);
        let json = serde_json::to_string(&schedule).expect("serializes");
        let back: Schedule = serde_json::from_str(&json).expect("deserializes");
        // Times are kept to the millisecond.
        assert_eq!(
            super::super::spec::to_millis(back.created_at()),
            super::super::spec::to_millis(schedule.created_at())
        );
        assert_eq!(back.misfire(), Misfire::Each { max: 3 });
        assert_eq!(back.spec(), schedule.spec());
        assert_eq!(back.job(), schedule.job());
        assert!(back.is_paused());
        assert!(
            json.contains(r#""misfire":{"policy":"each","max":3}"#),
            "{json}"
        );
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        let cases = [
            (
                schedule().with_misfire(Misfire::Each { max: 0 }),
                "misfire.max",
            ),
            (schedule().with_grace(Duration::ZERO), "grace"),
            (schedule().with_grace(MAX_GRACE * 2), "grace"),
        ];
        for (schedule, field) in cases {
            let error = schedule.check().expect_err(field);
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert!(error.message().starts_with(field), "{error}");
        }
        let long = "x".repeat(201);
        let error = Schedule::new(long, schedule().spec().clone(), schedule().job().clone())
            .expect_err("too long");
        assert!(error.to_string().contains("schedule name"), "{error}");
    }
}
