//! Periodic jobs: schedules that send a job at each tick of a cron
//! expression (in a time zone) or of a fixed interval, fired exactly once
//! per tick by one leader among any number of processes.
//!
//! - [`Spec`]: when (`Spec::cron_in("0 7 * * *", "Europe/Paris")`,
//!   `Spec::every(Duration::from_secs(30))`);
//! - [`JobTemplate`]: what (queue, payload, headers, priority, attempts);
//! - [`Schedule`]: a name, a spec, a template, a [`Misfire`] policy and a
//!   grace period, paused or not;
//! - [`Schedules`]: add, update, remove, pause, resume, list and trigger
//!   schedules at run time from any process; they are kept in the
//!   backend's coordination store, so every process sees the same ones;
//! - [`ScheduleRunner`]: run it in every process; one holds the leader
//!   lease and fires the ticks, the others wait to take over.
//!
//! ```
//! use queue_core::{MemoryBackend, QueueName};
//! use queue_worker::schedules::{JobTemplate, Schedule, Schedules, Spec};
//! use std::sync::Arc;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! let schedules = Schedules::new(Arc::new(MemoryBackend::new()))?;
//! let digest = Schedule::new(
//!     "daily-digest",
//!     Spec::cron_in("0 7 * * *", "Europe/Paris")?,
//!     JobTemplate::json(QueueName::new("digests")?, &"daily")?,
//! )?;
//! schedules.add(digest).await?;
//! let runner = schedules.runner().start().await?;
//! let listed = schedules.list().await?;
//! assert!(listed[0].next_tick.is_some());
//! runner.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Exactly once per tick: the leader checks its lease before each tick,
//! sends the job with the idempotency key `schedule:{name}:{tick unix ms}`
//! and the headers [`HEADER_SCHEDULE`] and [`HEADER_SCHEDULE_TICK`], then
//! records the tick with a write fenced by its lease. A new leader starts
//! after the last recorded tick, and a tick sent twice (a leader stopped
//! between send and record, or two leaders for a moment) is dropped by the
//! backend's idempotency window. On a backend without idempotency keys the
//! job is sent without one, and such a tick can be enqueued twice.
//! `docs/scheduling.md` has the whole story.

mod handle;
mod plan;
mod records;
mod runner;
mod schedule;
mod spec;
mod template;

#[cfg(test)]
mod tests;

pub use handle::{ScheduleInfo, Schedules};
pub use queue_core::job::{HEADER_SCHEDULE, HEADER_SCHEDULE_TICK};
pub use records::{LEADER_LEASE, SCHEDULES_SPACE, TICKS_SPACE};
pub use runner::{RunnerHandle, ScheduleRunner, DEFAULT_LEASE_TTL};
pub use schedule::{Misfire, Schedule, DEFAULT_GRACE, MAX_GRACE, MAX_MISFIRE_EACH, MIN_GRACE};
pub use spec::{Spec, DEFAULT_TIME_ZONE, MAX_INTERVAL, MIN_INTERVAL};
pub use template::{JobTemplate, MAX_TEMPLATE_PAYLOAD};

/// Durations and times stored as whole milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    pub(super) mod option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};
        use std::time::Duration;

        pub(in super::super) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .serialize(s)
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
        }
    }

    pub(super) mod time {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::SystemTime;

        use super::super::spec::{from_millis, to_millis};

        pub(in super::super) fn serialize<S: Serializer>(
            at: &SystemTime,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.serialize_i64(to_millis(*at))
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<SystemTime, D::Error> {
            Ok(from_millis(i64::deserialize(d)?))
        }
    }
}
