//! Which ticks of a schedule are due now, after its misfire policy
//! ([`plan`]): the rule the runner applies each round, kept free of I/O
//! and of the clock so it can be tested on fixed times.

use super::schedule::Misfire;
use super::spec::Spec;

/// The most ticks of one schedule fired in one round; the rest wait for
/// the next round, which starts at once.
pub(crate) const MAX_TICKS_PER_ROUND: usize = 1000;

/// What to do with a schedule this round (times in Unix milliseconds).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Ticks to fire, oldest first.
    pub(crate) fire: Vec<i64>,
    /// The latest tick dropped by the misfire policy, to record as handled
    /// before firing the rest.
    pub(crate) dropped_through: Option<i64>,
    /// More ticks are due than one round fires.
    pub(crate) truncated: bool,
}

/// The ticks of `spec` due at `now`: those after `after` (the last tick
/// handled, or when the schedule became active) and at or before `now`.
/// Ticks more than `grace` old are missed and go by `misfire`; the others
/// fire each.
pub(crate) fn plan(spec: &Spec, misfire: Misfire, grace: i64, after: i64, now: i64) -> Plan {
    let mut plan = Plan::default();
    let missed_until = now.saturating_sub(grace);
    // Missed ticks: (after, missed_until], searched backwards from the
    // latest so an outage of any length costs at most `max` steps.
    if missed_until > after {
        let mut latest_first = Vec::new();
        let mut at = spec.latest_at_or_before_ms(missed_until);
        let keep = match misfire {
            Misfire::Skip => 0,
            Misfire::Once => 1,
            Misfire::Each { max } => usize::try_from(max).unwrap_or(usize::MAX),
        };
        while let Some(tick) = at.filter(|t| *t > after) {
            if latest_first.len() == keep {
                plan.dropped_through = Some(tick);
                break;
            }
            latest_first.push(tick);
            at = tick
                .checked_sub(1)
                .and_then(|t| spec.latest_at_or_before_ms(t));
        }
        plan.fire.extend(latest_first.into_iter().rev());
    }
    // Ticks within the grace period: each fires.
    let mut at = spec.next_after_ms(after.max(missed_until));
    while let Some(tick) = at.filter(|t| *t <= now) {
        if plan.fire.len() >= MAX_TICKS_PER_ROUND {
            plan.truncated = true;
            break;
        }
        plan.fire.push(tick);
        at = spec.next_after_ms(tick);
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;
    use std::time::Duration;

    use jiff::Timestamp;

    use super::*;

    const SECOND: i64 = 1000;
    const MINUTE: i64 = 60 * SECOND;
    const HOUR: i64 = 60 * MINUTE;

    fn utc(text: &str) -> i64 {
        Timestamp::from_str(text)
            .expect("RFC 3339")
            .as_millisecond()
    }

    fn every_minute() -> Spec {
        Spec::every(Duration::from_secs(60)).expect("valid")
    }

    #[test]
    fn nothing_is_due_before_the_first_tick() {
        let start = utc("2026-05-01T10:00:30Z");
        let plan = plan(
            &every_minute(),
            Misfire::Once,
            MINUTE,
            start,
            start + 20 * SECOND,
        );
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn ticks_within_the_grace_period_fire_each() {
        // A leader that took over 3 s late still fires both ticks.
        let spec = Spec::every(Duration::from_secs(1)).expect("valid");
        let after = utc("2026-05-01T10:00:00Z");
        let plan = plan(
            &spec,
            Misfire::Skip,
            5 * SECOND,
            after,
            after + 2 * SECOND + 400,
        );
        assert_eq!(plan.fire, vec![after + SECOND, after + 2 * SECOND]);
        assert_eq!(plan.dropped_through, None);
    }

    #[test]
    fn misfire_policies_after_an_outage() {
        // Last handled 10:00; now 10:10:30 with a grace of one minute: the
        // ticks 10:01..=10:09 are missed, 10:10 is on time.
        let after = utc("2026-05-01T10:00:00Z");
        let now = utc("2026-05-01T10:10:30Z");
        let tick = |minute: i64| after + minute * MINUTE;
        let spec = every_minute();

        let skip = plan(&spec, Misfire::Skip, MINUTE, after, now);
        assert_eq!(skip.fire, vec![tick(10)]);
        assert_eq!(skip.dropped_through, Some(tick(9)));

        let once = plan(&spec, Misfire::Once, MINUTE, after, now);
        assert_eq!(once.fire, vec![tick(9), tick(10)]);
        assert_eq!(once.dropped_through, Some(tick(8)));

        let each = plan(&spec, Misfire::Each { max: 3 }, MINUTE, after, now);
        assert_eq!(each.fire, vec![tick(7), tick(8), tick(9), tick(10)]);
        assert_eq!(each.dropped_through, Some(tick(6)));

        let all = plan(&spec, Misfire::Each { max: 100 }, MINUTE, after, now);
        assert_eq!(all.fire, (1..=10).map(tick).collect::<Vec<_>>());
        assert_eq!(all.dropped_through, None);
    }

    #[test]
    fn a_long_outage_costs_no_more_than_the_policy_keeps() {
        // A year of per-second ticks missed: one fires.
        let spec = Spec::cron("* * * * * *").expect("valid");
        let after = utc("2025-05-01T00:00:00Z");
        let now = utc("2026-05-01T00:00:00.500Z");
        let plan = plan(&spec, Misfire::Once, 200, after, now);
        assert_eq!(plan.fire, vec![now - 500]);
        assert_eq!(plan.dropped_through, Some(now - 500 - SECOND));
    }

    #[test]
    fn a_round_fires_at_most_its_bound() {
        let spec = Spec::every(Duration::from_millis(100)).expect("valid");
        let after = 0;
        let now = 200 * SECOND;
        let first = plan(&spec, Misfire::Once, HOUR, after, now);
        assert_eq!(first.fire.len(), MAX_TICKS_PER_ROUND);
        assert!(first.truncated);
        let last = first.fire.last().copied().expect("some");
        let second = plan(&spec, Misfire::Once, HOUR, last, now);
        assert_eq!(second.fire.len(), 1000);
        assert_eq!(second.fire.first(), Some(&(last + 100)));
    }

    #[test]
    fn a_paris_schedule_over_the_spring_gap() {
        // 02:30 every day in Paris; the scheduler was down from the 28th
        // to the 30th at 12:00 UTC. 2026-03-29 has no 02:30, so the only
        // missed ticks are the 28th's and the 30th's, and Each fires both.
        let spec = Spec::cron_in("30 2 * * *", "Europe/Paris").expect("valid");
        let after = utc("2026-03-28T00:00:00Z");
        let now = utc("2026-03-30T12:00:00Z");
        let each = plan(&spec, Misfire::Each { max: 10 }, MINUTE, after, now);
        assert_eq!(
            each.fire,
            vec![utc("2026-03-28T01:30:00Z"), utc("2026-03-30T00:30:00Z")]
        );
    }

    #[test]
    fn a_paris_schedule_over_the_autumn_overlap_fires_once() {
        let spec = Spec::cron_in("30 2 * * *", "Europe/Paris").expect("valid");
        let after = utc("2026-10-24T12:00:00Z");
        let now = utc("2026-10-25T12:00:00Z");
        let each = plan(&spec, Misfire::Each { max: 10 }, MINUTE, after, now);
        assert_eq!(each.fire, vec![utc("2026-10-25T00:30:00Z")]);
    }
}
