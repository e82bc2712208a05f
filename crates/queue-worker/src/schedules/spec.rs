//! When a schedule fires: a cron expression in a time zone, or a fixed
//! interval ([`Spec`]), and the ticks it yields.
//!
//! Cron expressions are parsed and searched by `croner`, time zones come
//! from `jiff` (the system's IANA database, `/usr/share/zoneinfo` on Unix).
//! Ticks are instants in Unix milliseconds.
//!
//! Daylight saving time: a wall-clock time that a zone skips (the spring
//! gap) yields no tick that day, and one it repeats (the autumn overlap)
//! yields one tick, at the earlier instant, for a pattern that names the
//! hour; a pattern that fires every minute or every hour fires on both
//! passes of the repeated hour, since they are distinct real instants.
//! `croner` itself moves a tick of the gap to the first instant after it;
//! [`Spec`] drops such a tick instead (it is not a time the pattern names).

use std::fmt;
use std::time::{Duration, SystemTime};

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use queue_core::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// The shortest interval: 100 ms.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest interval: 366 days.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The time zone of a cron expression given none.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// Candidate instants looked at per search before giving up: croner moves
/// a tick of a daylight-saving gap to the end of the gap, and such ticks
/// are dropped, so a search may look at a few before it finds one.
const SEARCH_STEPS: usize = 64;

/// When a schedule fires.
///
/// ```
/// use queue_worker::schedules::Spec;
/// use std::time::Duration;
/// let digest = Spec::cron_in("0 7 * * MON-FRI", "Europe/Paris")?;
/// assert_eq!(digest.expression(), Some("0 7 * * MON-FRI"));
/// assert_eq!(digest.time_zone(), Some("Europe/Paris"));
/// let poll = Spec::every(Duration::from_secs(30))?;
/// assert_eq!(poll.interval(), Some(Duration::from_secs(30)));
/// assert!(Spec::cron("61 * * * *").is_err());
/// # Ok::<(), queue_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Spec(Repr);

#[derive(Clone)]
enum Repr {
    Cron {
        expression: String,
        zone_name: String,
        cron: Box<Cron>,
        zone: TimeZone,
    },
    Every {
        millis: i64,
    },
}

impl Spec {
    /// A cron expression in UTC: five fields (minute, hour, day of month,
    /// month, day of week) or six with seconds first. `L`, `W`, `#` and
    /// nicknames such as `@daily` work as in `croner`.
    ///
    /// An expression that does not parse, or that never fires (`0 0 30 2
    /// *`), is [`ErrorKind::InvalidInput`] naming the field `cron` with the
    /// parser's message.
    pub fn cron(expression: &str) -> Result<Spec> {
        Spec::cron_in(expression, DEFAULT_TIME_ZONE)
    }

    /// A cron expression read in `time_zone`, an IANA name such as
    /// `Europe/Paris`; an unknown name is [`ErrorKind::InvalidInput`]
    /// naming the field `time_zone`.
    pub fn cron_in(expression: &str, time_zone: &str) -> Result<Spec> {
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expression).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cron: invalid expression {expression:?}: {e}"),
            )
            .with_source(e)
        })?;
        let zone = if time_zone == DEFAULT_TIME_ZONE {
            TimeZone::UTC
        } else {
            TimeZone::get(time_zone).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "time_zone: unknown time zone {time_zone:?} (an IANA name such as Europe/Paris or UTC)"
                    ),
                )
                .with_source(e)
            })?
        };
        let spec = Spec(Repr::Cron {
            expression: expression.to_owned(),
            zone_name: time_zone.to_owned(),
            cron: Box::new(cron),
            zone,
        });
        if spec.next_after(SystemTime::now()).is_none() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("cron: expression {expression:?} never fires"),
            ));
        }
        Ok(spec)
    }

    /// A fixed interval, [`MIN_INTERVAL`]..=[`MAX_INTERVAL`] in whole
    /// milliseconds (else [`ErrorKind::InvalidInput`] naming the field
    /// `every`). Ticks fall on whole multiples of the interval since the
    /// Unix epoch, so every processes agrees on them and an hourly
    /// interval fires on the hour (UTC).
    pub fn every(interval: Duration) -> Result<Spec> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "every: the interval must be {MIN_INTERVAL:?}..={MAX_INTERVAL:?}, not {interval:?}"
                ),
            ));
        }
        if !interval.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("every: the interval must be whole milliseconds, not {interval:?}"),
            ));
        }
        let millis = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        Ok(Spec(Repr::Every { millis }))
    }

    /// The cron expression, if this is one.
    pub fn expression(&self) -> Option<&str> {
        match &self.0 {
            Repr::Cron { expression, .. } => Some(expression),
            Repr::Every { .. } => None,
        }
    }

    /// The time zone of a cron expression.
    pub fn time_zone(&self) -> Option<&str> {
        match &self.0 {
            Repr::Cron { zone_name, .. } => Some(zone_name),
            Repr::Every { .. } => None,
        }
    }

    /// The interval, if this is one.
    pub fn interval(&self) -> Option<Duration> {
        match &self.0 {
            Repr::Every { millis } => Some(Duration::from_millis(millis.unsigned_abs())),
            Repr::Cron { .. } => None,
        }
    }

    /// The first tick strictly after `after` (`None` if there is none
    /// within croner's search range).
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.next_after_ms(to_millis(after)).map(from_millis)
    }

    /// The first tick strictly after `after` (Unix milliseconds).
    pub(crate) fn next_after_ms(&self, after: i64) -> Option<i64> {
        match &self.0 {
            Repr::Every { millis } => after
                .div_euclid(*millis)
                .checked_add(1)?
                .checked_mul(*millis),
            Repr::Cron { cron, zone, .. } => {
                let mut from = zoned(after, zone)?;
                for _ in 0..SEARCH_STEPS {
                    let next = cron.find_next_occurrence(&from, false).ok()?;
                    if cron.is_time_matching(&next).unwrap_or(false) {
                        return Some(next.timestamp().as_millisecond());
                    }
                    from = next;
                }
                None
            }
        }
    }

    /// The last tick at or before `at` (Unix milliseconds).
    pub(crate) fn latest_at_or_before_ms(&self, at: i64) -> Option<i64> {
        match &self.0 {
            Repr::Every { millis } => at.div_euclid(*millis).checked_mul(*millis),
            Repr::Cron { cron, zone, .. } => {
                // Cron ticks are whole seconds: the last one before the
                // next whole second is the last one at or before `at`.
                let next_second = at.div_euclid(1000).checked_add(1)?.checked_mul(1000)?;
                let mut from = zoned(next_second, zone)?;
                for _ in 0..SEARCH_STEPS {
                    let previous = cron.find_previous_occurrence(&from, false).ok()?;
                    if cron.is_time_matching(&previous).unwrap_or(false) {
                        return Some(previous.timestamp().as_millisecond());
                    }
                    from = previous;
                }
                None
            }
        }
    }
}

fn zoned(millis: i64, zone: &TimeZone) -> Option<Zoned> {
    Some(
        Timestamp::from_millisecond(millis)
            .ok()?
            .to_zoned(zone.clone()),
    )
}

/// `at` in Unix milliseconds (negative before 1970).
pub(crate) fn to_millis(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Unix milliseconds as a time.
pub(crate) fn from_millis(millis: i64) -> SystemTime {
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Cron {
                expression,
                zone_name,
                ..
            } => write!(f, "cron {expression:?} in {zone_name}"),
            Repr::Every { millis } => write!(
                f,
                "every {:?}",
                Duration::from_millis(millis.unsigned_abs())
            ),
        }
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        SpecRecord::from(self.clone()) == SpecRecord::from(other.clone())
    }
}

impl Eq for Spec {}

/// How a [`Spec`] is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SpecRecord {
    Cron {
        expression: String,
        time_zone: String,
    },
    Every {
        every_ms: u64,
    },
}

impl From<Spec> for SpecRecord {
    fn from(spec: Spec) -> Self {
        match spec.0 {
            Repr::Cron {
                expression,
                zone_name,
                ..
            } => SpecRecord::Cron {
                expression,
                time_zone: zone_name,
            },
            Repr::Every { millis } => SpecRecord::Every {
                every_ms: millis.unsigned_abs(),
            },
        }
    }
}

impl TryFrom<SpecRecord> for Spec {
    type Error = Error;

    fn try_from(record: SpecRecord) -> Result<Self> {
        match record {
            SpecRecord::Cron {
                expression,
                time_zone,
            } => Spec::cron_in(&expression, &time_zone),
            SpecRecord::Every { every_ms } => Spec::every(Duration::from_millis(every_ms)),
        }
    }
}

impl Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        SpecRecord::from(self.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let record = SpecRecord::deserialize(d)?;
        Spec::try_from(record).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use jiff::civil::date;

    use super::*;

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").expect("the system tz database knows Europe/Paris")
    }

    /// Unix milliseconds of a Paris wall-clock time (the earlier instant
    /// when it happens twice).
    fn paris_ms(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        paris()
            .to_ambiguous_zoned(date(y, mo, d).at(h, mi, 0, 0))
            .earlier()
            .expect("a valid time")
            .timestamp()
            .as_millisecond()
    }

    fn utc_ms(text: &str) -> i64 {
        Timestamp::from_str(text)
            .expect("an RFC 3339 time")
            .as_millisecond()
    }

    fn ticks(spec: &Spec, from: i64, to: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(next) = spec.next_after_ms(at).filter(|t| *t <= to) {
            out.push(next);
            at = next;
        }
        out
    }

    #[test]
    fn a_daily_time_in_paris_follows_the_offset() {
        let spec = Spec::cron_in("0 7 * * *", "Europe/Paris").expect("valid");
        // Winter: 07:00 CET is 06:00 UTC; summer: 07:00 CEST is 05:00 UTC.
        let winter = spec.next_after_ms(utc_ms("2026-01-15T12:00:00Z"));
        assert_eq!(winter, Some(utc_ms("2026-01-16T06:00:00Z")));
        let summer = spec.next_after_ms(utc_ms("2026-07-15T12:00:00Z"));
        assert_eq!(summer, Some(utc_ms("2026-07-16T05:00:00Z")));
    }

    #[test]
    fn croner_moves_a_tick_of_the_spring_gap_and_the_spec_skips_it() {
        // Europe/Paris, 2026-03-29: 02:00 CET jumps to 03:00 CEST, so
        // 02:30 does not exist that day.
        let expression = "30 2 * * *";
        let before = paris_ms(2026, 3, 29, 1, 0);
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .expect("valid");
        let from = zoned(before, &paris()).expect("in range");
        let croner_next = cron.find_next_occurrence(&from, false).expect("found");
        // What croner answers: the first instant after the gap.
        assert_eq!(
            croner_next.timestamp().as_millisecond(),
            paris_ms(2026, 3, 29, 3, 0)
        );
        assert!(!cron.is_time_matching(&croner_next).expect("checked"));

        // What a schedule does: no tick that day, the next at 02:30 the day after.
        let spec = Spec::cron_in(expression, "Europe/Paris").expect("valid");
        assert_eq!(
            spec.next_after_ms(before),
            Some(paris_ms(2026, 3, 30, 2, 30))
        );
        assert_eq!(
            ticks(
                &spec,
                paris_ms(2026, 3, 28, 0, 0),
                paris_ms(2026, 3, 31, 0, 0)
            ),
            vec![paris_ms(2026, 3, 28, 2, 30), paris_ms(2026, 3, 30, 2, 30)]
        );
        // Searching backwards skips it too.
        assert_eq!(
            spec.latest_at_or_before_ms(paris_ms(2026, 3, 29, 12, 0)),
            Some(paris_ms(2026, 3, 28, 2, 30))
        );
    }

    #[test]
    fn interval_patterns_skip_the_missing_hour() {
        let spec = Spec::cron_in("*/30 * * * *", "Europe/Paris").expect("valid");
        let got = ticks(
            &spec,
            paris_ms(2026, 3, 29, 1, 0),
            paris_ms(2026, 3, 29, 3, 30),
        );
        // 01:30 CET, then 03:00 and 03:30 CEST: one real hour apart from 02:00 CET.
        assert_eq!(
            got,
            vec![
                paris_ms(2026, 3, 29, 1, 30),
                paris_ms(2026, 3, 29, 3, 0),
                paris_ms(2026, 3, 29, 3, 30)
            ]
        );
        assert_eq!(got[1] - got[0], 30 * 60 * 1000);
    }

    #[test]
    fn a_fixed_time_in_the_autumn_overlap_fires_once_at_the_earlier_instant() {
        // Europe/Paris, 2026-10-25: 03:00 CEST goes back to 02:00 CET, so
        // 02:30 happens twice (00:30 and 01:30 UTC).
        let spec = Spec::cron_in("30 2 * * *", "Europe/Paris").expect("valid");
        let got = ticks(
            &spec,
            paris_ms(2026, 10, 25, 0, 0),
            paris_ms(2026, 10, 25, 23, 0),
        );
        assert_eq!(got, vec![utc_ms("2026-10-25T00:30:00Z")]);
        // Asked from between the two instants, it does not fire again that day.
        assert_eq!(
            spec.next_after_ms(utc_ms("2026-10-25T01:00:00Z")),
            Some(paris_ms(2026, 10, 26, 2, 30))
        );
    }

    #[test]
    fn an_every_half_hour_pattern_fires_on_both_passes_of_the_overlap() {
        let spec = Spec::cron_in("*/30 * * * *", "Europe/Paris").expect("valid");
        let got = ticks(
            &spec,
            utc_ms("2026-10-24T23:45:00Z"),
            utc_ms("2026-10-25T02:00:00Z"),
        );
        let expected: Vec<i64> = [
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T00:30:00Z", // 02:30 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET
            "2026-10-25T01:30:00Z", // 02:30 CET
            "2026-10-25T02:00:00Z", // 03:00 CET
        ]
        .iter()
        .map(|t| utc_ms(t))
        .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn seconds_are_optional() {
        let spec = Spec::cron("*/15 * * * * *").expect("six fields");
        let at = utc_ms("2026-05-01T10:00:07.250Z");
        assert_eq!(spec.next_after_ms(at), Some(utc_ms("2026-05-01T10:00:15Z")));
        assert_eq!(
            spec.latest_at_or_before_ms(at),
            Some(utc_ms("2026-05-01T10:00:00Z"))
        );
        // A tick is its own latest.
        assert_eq!(spec.latest_at_or_before_ms(at - 7250), Some(at - 7250));
        let five = Spec::cron("0 * * * *").expect("five fields");
        assert_eq!(five.next_after_ms(at), Some(utc_ms("2026-05-01T11:00:00Z")));
    }

    #[test]
    fn intervals_fall_on_multiples_since_the_epoch() {
        let spec = Spec::every(Duration::from_millis(200)).expect("valid");
        assert_eq!(spec.next_after_ms(1_000), Some(1_200));
        assert_eq!(spec.next_after_ms(1_050), Some(1_200));
        assert_eq!(spec.latest_at_or_before_ms(1_199), Some(1_000));
        assert_eq!(spec.latest_at_or_before_ms(1_200), Some(1_200));
        let hourly = Spec::every(Duration::from_secs(3600)).expect("valid");
        assert_eq!(
            hourly.next_after_ms(utc_ms("2026-05-01T10:20:00Z")),
            Some(utc_ms("2026-05-01T11:00:00Z"))
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (Spec::cron("61 * * * *"), "cron:"),
            (Spec::cron("* * *"), "cron:"),
            (Spec::cron("0 0 0 1 1 * 2030"), "cron:"),
            (Spec::cron("0 0 30 2 *"), "never fires"),
            (Spec::cron_in("0 * * * *", "Mars/Olympus"), "time_zone:"),
            (Spec::every(Duration::ZERO), "every:"),
            (Spec::every(Duration::from_millis(99)), "every:"),
            (
                Spec::every(Duration::from_micros(100_500)),
                "whole milliseconds",
            ),
        ];
        for (result, field) in cases {
            let error = result.expect_err(field);
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
            assert!(error.to_string().contains(field), "{error}");
        }
        let error = Spec::cron("61 * * * *").expect_err("invalid");
        // The parser's own words are kept.
        assert!(error.to_string().contains("out of bounds"), "{error}");
    }

    #[test]
    fn a_spec_round_trips_through_json() {
        for spec in [
            Spec::cron_in("0 7 * * *", "Europe/Paris").expect("valid"),
            Spec::every(Duration::from_millis(250)).expect("valid"),
        ] {
            let json = serde_json::to_string(&spec).expect("serializes");
            let back: Spec = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, spec);
        }
        let bad = r#"{"kind":"cron","expression":"0 7 * * *","time_zone":"Nowhere/City"}"#;
        assert!(serde_json::from_str::<Spec>(bad).is_err());
    }
}
