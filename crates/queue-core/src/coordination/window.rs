//! The sliding window behind [`Rate`]: permits counted in buckets of a
//! 64th of the period, each counted until a period and a margin have
//! passed since its bucket ended, so no window of `period` ever holds
//! more than `limit` permits. The margin ([`slack`]: a 16th of the
//! period, at most 100 ms) covers the time between a permit's grant and
//! its job's start, which varies from job to job (scheduling, a loaded
//! machine): jobs that start up to that much later than their permit
//! still never put more than `limit` starts in any window. The rate
//! reached is `limit` per `period + slack + one bucket` (about 93% of
//! the limit for periods of a second and less, more for longer ones).
//!
//! Redis's script keeps the same buckets in a hash; this is the
//! reference, used by the memory store and the tests.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Permits, Rate};

/// Buckets per period.
pub(crate) const BUCKETS: u64 = 64;

/// How much longer than its period a permit counts, in microseconds: a
/// 16th of the period, at most 100 ms.
pub(crate) fn slack(period: u64) -> u64 {
    (period / 16).min(100_000)
}

/// One key's window: permits per bucket index.
#[derive(Debug, Clone, Default)]
pub struct Window {
    buckets: BTreeMap<u64, u32>,
}

/// A bucket's width in microseconds for `rate` (at least 1 µs).
pub(crate) fn bucket_width(rate: Rate) -> u64 {
    let period = u64::try_from(rate.period().as_micros()).unwrap_or(u64::MAX);
    (period / BUCKETS).max(1)
}

impl Window {
    /// Take up to `want` permits at `now` (microseconds on the store's
    /// clock).
    pub fn take(&mut self, rate: Rate, now: u64, want: u32) -> Permits {
        let width = bucket_width(rate);
        let period = u64::try_from(rate.period().as_micros()).unwrap_or(u64::MAX);
        let span = (period + slack(period)).div_ceil(width);
        let current = now / width;
        let first = current.saturating_sub(span);
        self.buckets.retain(|index, _| *index >= first);
        let used: u64 = self.buckets.values().map(|n| u64::from(*n)).sum();
        let room = u64::from(rate.limit()).saturating_sub(used);
        let granted = u32::try_from(room.min(u64::from(want))).unwrap_or(want);
        if granted > 0 {
            *self.buckets.entry(current).or_default() += granted;
        }
        let retry_after = (granted < want).then(|| {
            let oldest = self.buckets.keys().next().copied().unwrap_or(current);
            let free_at = (oldest + span + 1) * width;
            Duration::from_micros(free_at.saturating_sub(now).max(1))
        });
        let remaining = u32::try_from(room - u64::from(granted)).unwrap_or(u32::MAX);
        Permits::new(granted, retry_after).with_remaining(remaining)
    }

    /// Whether the window holds no permit that still counts at `now`.
    pub fn is_idle(&self, rate: Rate, now: u64) -> bool {
        let width = bucket_width(rate);
        let period = u64::try_from(rate.period().as_micros()).unwrap_or(u64::MAX);
        let first = (now / width).saturating_sub((period + slack(period)).div_ceil(width));
        self.buckets.keys().all(|index| *index < first)
    }
}
