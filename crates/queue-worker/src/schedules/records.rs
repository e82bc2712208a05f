//! Where schedules live in the coordination store: one JSON record per
//! schedule in [`SCHEDULES_SPACE`], the last tick handled per schedule in
//! [`TICKS_SPACE`] (written only under the [`LEADER_LEASE`]).

use std::collections::HashMap;

use bytes::Bytes;
use queue_core::coordination::{Coordination, MAX_RECORD};
use queue_core::error::{Error, ErrorKind, Result};

use super::schedule::Schedule;

/// The record space of the schedules, by name.
pub const SCHEDULES_SPACE: &str = "schedules";
/// The record space of the last tick handled (fired or dropped) per
/// schedule, in Unix milliseconds as decimal text.
pub const TICKS_SPACE: &str = "schedule-ticks";
/// The lease the scheduling leader holds.
pub const LEADER_LEASE: &str = "schedules-leader";

/// The record of `schedule`; a schedule whose record would be over the
/// store's limit is `InvalidInput` naming it.
pub(crate) fn encode(schedule: &Schedule) -> Result<Bytes> {
    let json = serde_json::to_vec(schedule).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("schedule {:?} cannot be encoded: {e}", schedule.name()),
        )
    })?;
    if json.len() > MAX_RECORD {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "job: schedule {:?} is {} bytes as a record, over the {MAX_RECORD} bytes a record holds (a smaller payload or fewer headers fit)",
                schedule.name(),
                json.len()
            ),
        ));
    }
    Ok(Bytes::from(json))
}

pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Schedule> {
    let schedule: Schedule = serde_json::from_slice(value).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!("the record of schedule {key:?} does not decode: {e}"),
        )
        .with_source(e)
    })?;
    schedule.check()?;
    Ok(schedule)
}

pub(crate) async fn load(store: &dyn Coordination, name: &str) -> Result<Option<Schedule>> {
    match store.get(SCHEDULES_SPACE, name).await? {
        Some(value) => decode(name, &value).map(Some),
        None => Ok(None),
    }
}

/// Every schedule that decodes, by name; one that does not (written by a
/// newer version, or by hand) is logged and left alone.
pub(crate) async fn load_all(store: &dyn Coordination) -> Result<Vec<Schedule>> {
    let records = store.list(SCHEDULES_SPACE).await?;
    Ok(records
        .into_iter()
        .filter_map(|(key, value)| match decode(&key, &value) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                tracing::warn!(schedule = %key, error = %e, "schedule record skipped");
                None
            }
        })
        .collect())
}

pub(crate) async fn last_ticks(store: &dyn Coordination) -> Result<HashMap<String, i64>> {
    let records = store.list(TICKS_SPACE).await?;
    Ok(records
        .into_iter()
        .filter_map(|(key, value)| Some((key, parse_tick(&value)?)))
        .collect())
}

pub(crate) async fn last_tick(store: &dyn Coordination, name: &str) -> Result<Option<i64>> {
    Ok(store
        .get(TICKS_SPACE, name)
        .await?
        .and_then(|value| parse_tick(&value)))
}

fn parse_tick(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

pub(crate) fn tick_value(tick: i64) -> Bytes {
    Bytes::from(tick.to_string())
}
