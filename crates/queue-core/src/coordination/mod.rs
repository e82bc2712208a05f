//! State shared by every worker process: the contract that periodic
//! jobs, rate limits and fleet-wide concurrency stand on.
//!
//! [`Coordination`] offers three primitives and a little storage:
//! - **leases** with fencing tokens, for leader election ([`Lease`]): one
//!   holder at a time, every new holder gets a larger token, and a lease
//!   not renewed within its time to live passes to the next taker;
//! - **rate windows** ([`Rate`]): at most `limit` permits in any window of
//!   `period`, across every process, one call per decision however many
//!   permits it asks for ([`Coordination::take_permits`]);
//! - **semaphores** whose slots expire with their holder
//!   ([`Coordination::acquire_slot`]): a holder that dies without releasing
//!   its slot loses it when its lease runs out;
//! - **records**: small values by space and key (schedules live here),
//!   with a write that only the current holder of a lease can make
//!   ([`Coordination::fenced_put`]).
//!
//! The memory backend implements it in process ([`MemoryCoordination`],
//! shared by the backend's clones); Redis implements it with one script
//! call per decision. A backend hands its own out through
//! [`Backend::coordination`](crate::Backend::coordination); brokers with
//! no shared state of their own take a store by URL instead.
//!
//! Time is the store's own clock (Redis's `TIME`, the memory backend's
//! monotonic clock), so processes with drifting clocks still agree.

mod memory;
mod window;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

pub use memory::MemoryCoordination;
pub use window::Window;

/// The longest name, holder, space or key: 200 bytes.
pub const MAX_NAME: usize = 200;

/// The largest record [`Coordination::put`] keeps: 64 KiB.
pub const MAX_RECORD: usize = 64 * 1024;

/// The most records one space holds: 10,000.
pub const MAX_RECORDS: usize = 10_000;

/// The shortest and longest time to live of a lease or slot.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// See [`MIN_TTL`].
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The largest fleet-wide concurrency or rate limit: 1,000,000.
pub const MAX_LIMIT: u32 = 1_000_000;

/// A lease held on a name: who holds it, its fencing token, and how long
/// it lasts from the moment it was taken or renewed.
///
/// Tokens only grow: whoever takes a name after someone else gets a
/// larger token, so a write fenced by an old token
/// ([`Coordination::fenced_put`]) is refused once a newer holder exists.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The name leased.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token: larger for every new holder.
    pub token: u64,
    /// How long the lease lasts after the call that took or renewed it.
    pub ttl: Duration,
}

impl Lease {
    /// A lease value (for stores implementing [`Coordination`]).
    pub fn new(name: &str, holder: &str, token: u64, ttl: Duration) -> Self {
        Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token,
            ttl,
        }
    }
}

/// A rate: at most `limit` permits in any window of `period`.
///
/// ```
/// use queue_core::coordination::Rate;
/// use std::time::Duration;
/// let rate = Rate::per_second(50).unwrap();
/// assert_eq!(rate.limit(), 50);
/// assert_eq!(rate.period(), Duration::from_secs(1));
/// assert!(Rate::new(0, Duration::from_secs(1)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    limit: u32,
    #[serde(with = "millis")]
    period: Duration,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Rate {
    /// The shortest period: 10 ms.
    pub const MIN_PERIOD: Duration = Duration::from_millis(10);
    /// The longest period: one day.
    pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

    /// At most `limit` (1..=[`MAX_LIMIT`]) permits per `period`
    /// ([`Rate::MIN_PERIOD`]..=[`Rate::MAX_PERIOD`]); anything else is
    /// [`ErrorKind::InvalidInput`] naming the field.
    pub fn new(limit: u32, period: Duration) -> Result<Self> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("rate limit: limit must be 1..={MAX_LIMIT} permits, not {limit}"),
            ));
        }
        if !(Self::MIN_PERIOD..=Self::MAX_PERIOD).contains(&period) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "rate limit: period must be {:?}..={:?}, not {period:?}",
                    Self::MIN_PERIOD,
                    Self::MAX_PERIOD
                ),
            ));
        }
        Ok(Rate { limit, period })
    }

    /// `limit` per second.
    pub fn per_second(limit: u32) -> Result<Self> {
        Rate::new(limit, Duration::from_secs(1))
    }

    /// `limit` per minute.
    pub fn per_minute(limit: u32) -> Result<Self> {
        Rate::new(limit, Duration::from_secs(60))
    }

    /// Permits per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How much longer than its period a permit counts (a 16th of the
    /// period, at most 100 ms): a job that starts up to this long after
    /// its permit was granted still keeps every window of starts within
    /// the limit. A worker may hold permits ahead of its jobs for up to
    /// this long.
    pub fn margin(&self) -> Duration {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(window::slack(period))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?}", self.limit, self.period)
    }
}

/// What [`Coordination::take_permits`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Permits {
    /// Permits granted now (at most those asked for).
    pub granted: u32,
    /// When fewer were granted than asked: how long until the window has
    /// room again.
    pub retry_after: Option<Duration>,
    /// Permits still free in the window after this grant (a worker asks
    /// ahead of its jobs only while the window has plenty of room).
    pub remaining: u32,
}

impl Permits {
    /// A decision (for stores implementing [`Coordination`]), with no
    /// permit left free (see [`with_remaining`](Self::with_remaining)).
    pub fn new(granted: u32, retry_after: Option<Duration>) -> Self {
        Permits {
            granted,
            retry_after,
            remaining: 0,
        }
    }

    /// The permits still free in the window after this grant.
    #[must_use]
    pub fn with_remaining(mut self, remaining: u32) -> Self {
        self.remaining = remaining;
        self
    }
}

/// What [`Coordination::acquire_slot`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Slot {
    /// The holder has a slot (new, or its own renewed).
    Held,
    /// Every slot is held; the earliest one expires after this long unless
    /// renewed (released slots free earlier).
    Full {
        /// Time until the earliest held slot expires.
        retry_after: Duration,
    },
}

/// Leases, rate windows, semaphores and fenced records shared by every
/// process that uses the same store. See the [module docs](self).
///
/// Names, holders, spaces and keys are 1..=[`MAX_NAME`] bytes; a store
/// may prefix them. Every method is one round trip to the store.
#[async_trait]
pub trait Coordination: Send + Sync + fmt::Debug {
    /// Take the lease on `name` for `holder`, or renew it if `holder`
    /// holds it already (same token). `None` while someone else holds it.
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>>;

    /// Extend a lease held; `false` if it was lost (expired and taken, or
    /// released).
    async fn renew_lease(&self, lease: &Lease) -> Result<bool>;

    /// Give a lease up (nothing if it was lost already).
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// The current holder of `name`'s lease, if any.
    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>>;

    /// Take up to `want` permits from `key`'s window of `rate`. Permits
    /// granted are spent: a window never holds more than `rate.limit()`
    /// in any `rate.period()`, whatever the number of callers.
    async fn take_permits(&self, key: &str, rate: Rate, want: u32) -> Result<Permits>;

    /// Hold one of `limit` slots of `name` as `holder` for `ttl`, or
    /// renew `holder`'s own slot.
    async fn acquire_slot(
        &self,
        name: &str,
        holder: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Slot>;

    /// Extend `holder`'s slot if it still holds one: `false`, and no slot
    /// taken, when it does not (released, or expired). A renewal racing a
    /// release never brings the slot back.
    async fn renew_slot(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool>;

    /// Give a slot back (nothing if it had expired).
    async fn release_slot(&self, name: &str, holder: &str) -> Result<()>;

    /// How many slots of `name` are held now.
    async fn slots_held(&self, name: &str) -> Result<u32>;

    /// Store `value` under `space`/`key`.
    async fn put(&self, space: &str, key: &str, value: Bytes) -> Result<()>;

    /// Store `value` only while `lease` is current (its holder and token
    /// hold the name): `false`, and nothing written, otherwise.
    async fn fenced_put(&self, lease: &Lease, space: &str, key: &str, value: Bytes)
        -> Result<bool>;

    /// The value under `space`/`key`.
    async fn get(&self, space: &str, key: &str) -> Result<Option<Bytes>>;

    /// Every record of `space`, by key.
    async fn list(&self, space: &str) -> Result<Vec<(String, Bytes)>>;

    /// Remove `space`/`key`; whether it existed.
    async fn remove(&self, space: &str, key: &str) -> Result<bool>;
}

/// `Err(InvalidInput)` naming `what` unless `name` is 1..=[`MAX_NAME`]
/// bytes without control characters.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{what} must be 1..={MAX_NAME} bytes, not {} bytes",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} must not hold control characters"),
        ));
    }
    Ok(())
}

/// `Err(InvalidInput)` unless `ttl` is [`MIN_TTL`]..=[`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<()> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("lease ttl must be {MIN_TTL:?}..={MAX_TTL:?}, not {ttl:?}"),
        ))
    }
}

/// `Err(InvalidInput)` unless `limit` is 1..=[`MAX_LIMIT`].
pub fn check_limit(what: &str, limit: u32) -> Result<()> {
    if limit == 0 || limit > MAX_LIMIT {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} must be 1..={MAX_LIMIT}, not {limit}"),
        ))
    } else {
        Ok(())
    }
}

/// `Err(PayloadTooLarge)` when `value` is over [`MAX_RECORD`].
pub fn check_record(value: &[u8]) -> Result<()> {
    if value.len() > MAX_RECORD {
        Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "a coordination record is at most {MAX_RECORD} bytes, not {}",
                value.len()
            ),
        ))
    } else {
        Ok(())
    }
}

/// The error for a feature that needs shared state on a backend without
/// any: it names what to configure.
pub fn needs_store(feature: &str, backend: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "{feature} needs state shared by every worker, which {backend} does not keep: \
             give a coordination store (`QUEUE_COORDINATION_URL=redis://...` or `postgres://...`, or \
             `.coordination(store)` on the builder)"
        ),
    )
}

#[cfg(test)]
mod tests;
