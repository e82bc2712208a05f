//! [`RedisCoordination`]: leases, rate windows, semaphores and records in
//! Redis, one script call per decision.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::coordination::{
    check_limit, check_name, check_record, check_ttl, Coordination, Lease, Permits, Rate, Slot,
    MAX_RECORDS, MAX_TTL,
};
use queue_core::{Error, ErrorKind, QueueName, Result};
use redis::{Script, Value};

use crate::error::unexpected;
use crate::scripts::{array, bytes_of, int_of};
use crate::shared::Shared;

const PRELUDE: &str = include_str!("lua/coord/prelude.lua");

struct CoordScripts {
    lease_take: Script,
    lease_renew: Script,
    lease_release: Script,
    lease_holder: Script,
    permits: Script,
    slot_acquire: Script,
    slot_renew: Script,
    slots_held: Script,
    record_put: Script,
}

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

static SCRIPTS: LazyLock<CoordScripts> = LazyLock::new(|| CoordScripts {
    lease_take: with_prelude(include_str!("lua/coord/lease_take.lua")),
    lease_renew: with_prelude(include_str!("lua/coord/lease_renew.lua")),
    lease_release: with_prelude(include_str!("lua/coord/lease_release.lua")),
    lease_holder: with_prelude(include_str!("lua/coord/lease_holder.lua")),
    permits: with_prelude(include_str!("lua/coord/permits.lua")),
    slot_acquire: with_prelude(include_str!("lua/coord/slot_acquire.lua")),
    slot_renew: with_prelude(include_str!("lua/coord/slot_renew.lua")),
    slots_held: with_prelude(include_str!("lua/coord/slots_held.lua")),
    record_put: with_prelude(include_str!("lua/coord/record_put.lua")),
});

/// The namespace [`RedisBackend::coordination_store`](crate::RedisBackend::coordination_store)
/// uses.
const DEFAULT_NAMESPACE: &str = "coord";

/// A [`Coordination`] store kept in Redis, shared by every process that
/// opens it on the same namespace: leader leases with fencing tokens,
/// rate windows, semaphores whose slots expire with their holder, and
/// small records.
///
/// Every method is one script call (one round trip) that reads the time
/// with Redis's `TIME`, so processes whose clocks drift still agree on
/// who holds a lease and what a window holds. Every key sits under
/// `<prefix>:{<namespace>}:coord:`, one hash tag, so no script crosses
/// slots on Redis Cluster:
///
/// | key | type | content |
/// |---|---|---|
/// | `lease:<name>` | hash | `holder`, `token`, `expires` (µs); `PEXPIRE` drops a dead holder's |
/// | `tokens` | hash | name → last token given (never reset, so tokens only grow) |
/// | `rate:<key>` | hash | bucket index → permits, buckets of a 64th of the period; idle keys expire |
/// | `sem:<name>` | sorted set | holder → slot expiry (µs) |
/// | `rec:<space>` | hash | key → record |
///
/// Get one from [`RedisBackend::coordination_store`](crate::RedisBackend::coordination_store)
/// (or as `Arc<dyn Coordination>` from `Backend::coordination`).
///
/// ```no_run
/// use queue_core::Coordination;
/// use queue_redis::RedisBackend;
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> queue_core::Result<()> {
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379").await?;
/// let store = backend.coordination_store();
/// if let Some(lease) = store.try_lease("scheduler", "host-a", Duration::from_secs(10)).await? {
///     // Only the current leader's write lands.
///     store.fenced_put(&lease, "schedules", "nightly", "0 3 * * *".into()).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCoordination {
    shared: Arc<Shared>,
    /// `<prefix>:{<namespace>}:coord:`
    base: String,
    tokens: String,
}

impl fmt::Debug for RedisCoordination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCoordination")
            .field("address", &self.shared.address)
            .field("keys", &self.base)
            .finish_non_exhaustive()
    }
}

impl RedisCoordination {
    pub(crate) fn new(shared: Arc<Shared>, namespace: &str) -> Self {
        // `coord:` keeps these apart from a queue or job store of the
        // namespace's name.
        let base = format!("{}:{{{namespace}}}:coord:", shared.prefix);
        RedisCoordination {
            tokens: format!("{base}tokens"),
            base,
            shared,
        }
    }

    pub(crate) fn default_for(shared: Arc<Shared>) -> Self {
        RedisCoordination::new(shared, DEFAULT_NAMESPACE)
    }

    /// The same store under another namespace (1 to 64 of
    /// `[A-Za-z0-9_-]`), for separate applications on one Redis: leases,
    /// windows, semaphores and records of one namespace never meet
    /// another's.
    pub fn with_namespace(&self, namespace: &str) -> Result<Self> {
        QueueName::new(namespace).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("namespace: must be 1 to 64 of [A-Za-z0-9_-], got {namespace:?}"),
            )
        })?;
        Ok(RedisCoordination::new(self.shared.clone(), namespace))
    }

    /// Delete every lease, token, window, semaphore and record of this
    /// store's namespace (`SCAN` and `UNLINK`; not atomic). Tokens start
    /// again from 1 afterwards, so only clear a namespace nobody uses.
    pub async fn clear(&self) -> Result<()> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        let pattern = format!(
            "{}*",
            self.base
                .replace('\\', "\\\\")
                .replace('[', "\\[")
                .replace('?', "\\?")
                .replace('*', "\\*")
        );
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.shared.error(e, "listing coordination keys"))?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| self.shared.error(e, "deleting coordination keys"))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.base)
    }

    async fn invoke(&self, call: redis::ScriptInvocation<'_>, doing: &str) -> Result<Value> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        call.invoke_async::<Value>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, doing))
    }

    async fn command(&self, cmd: &redis::Cmd, doing: &str) -> Result<Value> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        cmd.query_async::<Value>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, doing))
    }

    /// Write `value` under `space`/`key`, fenced by `lease` if given:
    /// whether it was written.
    async fn write(
        &self,
        lease: Option<&Lease>,
        space: &str,
        key: &str,
        value: Bytes,
    ) -> Result<bool> {
        check_name("record space", space)?;
        check_name("record key", key)?;
        check_record(&value)?;
        let mut call = SCRIPTS.record_put.prepare_invoke();
        call.key(self.key("rec", space))
            .arg(key)
            .arg(value.as_ref())
            .arg(MAX_RECORDS);
        if let Some(lease) = lease {
            call.key(self.key("lease", &lease.name))
                .arg(&lease.holder)
                .arg(lease.token);
        }
        let reply = self.invoke(call, "writing a coordination record").await?;
        match int_of(&reply) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            Some(-1) => Err(Error::new(
                ErrorKind::QueueFull,
                format!("coordination space {space:?} holds {MAX_RECORDS} records already"),
            )),
            _ => Err(unexpected("a record write result")),
        }
    }
}

/// Whole microseconds of `d` as a script argument, at most `max`.
fn micros(d: Duration, max: Duration) -> u64 {
    u64::try_from(d.min(max).as_micros()).unwrap_or(u64::MAX)
}

/// A non-negative integer reply.
fn count_of(value: &Value, what: &str) -> Result<u64> {
    int_of(value)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| unexpected(what))
}

fn text_of(value: &Value, what: &str) -> Result<String> {
    bytes_of(value)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
        .ok_or_else(|| unexpected(what))
}

#[async_trait]
impl Coordination for RedisCoordination {
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        check_name("lease name", name)?;
        check_name("lease holder", holder)?;
        check_ttl(ttl)?;
        let mut call = SCRIPTS.lease_take.prepare_invoke();
        call.key(self.key("lease", name))
            .key(&self.tokens)
            .arg(name)
            .arg(holder)
            .arg(micros(ttl, MAX_TTL));
        let reply = self.invoke(call, "taking a lease").await?;
        match count_of(&reply, "a lease token")? {
            0 => Ok(None),
            token => Ok(Some(Lease::new(name, holder, token, ttl))),
        }
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<bool> {
        let mut call = SCRIPTS.lease_renew.prepare_invoke();
        call.key(self.key("lease", &lease.name))
            .arg(&lease.holder)
            .arg(lease.token)
            .arg(micros(lease.ttl, MAX_TTL));
        let reply = self.invoke(call, "renewing a lease").await?;
        Ok(count_of(&reply, "a lease renewal result")? == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut call = SCRIPTS.lease_release.prepare_invoke();
        call.key(self.key("lease", &lease.name))
            .arg(&lease.holder)
            .arg(lease.token);
        self.invoke(call, "releasing a lease").await.map(drop)
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>> {
        check_name("lease name", name)?;
        let mut call = SCRIPTS.lease_holder.prepare_invoke();
        call.key(self.key("lease", name));
        let reply = self.invoke(call, "reading a lease").await?;
        if matches!(reply, Value::Nil) {
            return Ok(None);
        }
        let [holder, token, left] = array(reply)?
            .try_into()
            .map_err(|_| unexpected("a lease"))?;
        Ok(Some(Lease::new(
            name,
            &text_of(&holder, "a lease holder")?,
            count_of(&token, "a lease token")?,
            Duration::from_micros(count_of(&left, "a lease's time left")?),
        )))
    }

    async fn take_permits(&self, key: &str, rate: Rate, want: u32) -> Result<Permits> {
        check_name("rate limit key", key)?;
        let mut call = SCRIPTS.permits.prepare_invoke();
        call.key(self.key("rate", key))
            .arg(rate.limit())
            .arg(micros(rate.period(), Rate::MAX_PERIOD))
            .arg(want);
        let reply = self.invoke(call, "taking permits").await?;
        let [granted, retry, remaining] = array(reply)?
            .try_into()
            .map_err(|_| unexpected("permits"))?;
        let remaining = u32::try_from(count_of(&remaining, "permits left")?).unwrap_or(u32::MAX);
        let granted = count_of(&granted, "permits granted")?;
        let granted = u32::try_from(granted)
            .ok()
            .filter(|n| *n <= want)
            .ok_or_else(|| unexpected("at most the permits asked for"))?;
        let retry_after = match count_of(&retry, "a retry time")? {
            0 => None,
            us => Some(Duration::from_micros(us)),
        };
        Ok(Permits::new(granted, retry_after).with_remaining(remaining))
    }

    async fn acquire_slot(
        &self,
        name: &str,
        holder: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Slot> {
        check_name("semaphore name", name)?;
        check_name("slot holder", holder)?;
        check_limit("concurrency limit", limit)?;
        check_ttl(ttl)?;
        let mut call = SCRIPTS.slot_acquire.prepare_invoke();
        call.key(self.key("sem", name))
            .arg(holder)
            .arg(limit)
            .arg(micros(ttl, MAX_TTL));
        let reply = self.invoke(call, "acquiring a slot").await?;
        let [held, retry] = array(reply)?.try_into().map_err(|_| unexpected("a slot"))?;
        if count_of(&held, "a slot")? == 1 {
            Ok(Slot::Held)
        } else {
            Ok(Slot::Full {
                retry_after: Duration::from_micros(count_of(&retry, "a retry time")?),
            })
        }
    }

    async fn renew_slot(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        check_name("semaphore name", name)?;
        check_name("slot holder", holder)?;
        check_ttl(ttl)?;
        let mut call = SCRIPTS.slot_renew.prepare_invoke();
        call.key(self.key("sem", name))
            .arg(holder)
            .arg(micros(ttl, MAX_TTL));
        let reply = self.invoke(call, "renewing a slot").await?;
        Ok(count_of(&reply, "a renewal")? == 1)
    }

    async fn release_slot(&self, name: &str, holder: &str) -> Result<()> {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.key("sem", name)).arg(holder);
        self.command(&cmd, "releasing a slot").await.map(drop)
    }

    async fn slots_held(&self, name: &str) -> Result<u32> {
        let mut call = SCRIPTS.slots_held.prepare_invoke();
        call.key(self.key("sem", name));
        let reply = self.invoke(call, "counting slots").await?;
        let held = count_of(&reply, "a slot count")?;
        Ok(u32::try_from(held).unwrap_or(u32::MAX))
    }

    async fn put(&self, space: &str, key: &str, value: Bytes) -> Result<()> {
        self.write(None, space, key, value).await.map(drop)
    }

    async fn fenced_put(
        &self,
        lease: &Lease,
        space: &str,
        key: &str,
        value: Bytes,
    ) -> Result<bool> {
        self.write(Some(lease), space, key, value).await
    }

    async fn get(&self, space: &str, key: &str) -> Result<Option<Bytes>> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.key("rec", space)).arg(key);
        match self.command(&cmd, "reading a coordination record").await? {
            Value::Nil => Ok(None),
            value => bytes_of(&value)
                .map(|b| Some(Bytes::copy_from_slice(b)))
                .ok_or_else(|| unexpected("a record")),
        }
    }

    async fn list(&self, space: &str) -> Result<Vec<(String, Bytes)>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.key("rec", space));
        let reply = self.command(&cmd, "listing coordination records").await?;
        let flat = match reply {
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => array(other)?,
        };
        let mut records = flat
            .chunks(2)
            .map(|pair| match pair {
                [key, value] => Ok((
                    text_of(key, "a record key")?,
                    Bytes::copy_from_slice(bytes_of(value).ok_or_else(|| unexpected("a record"))?),
                )),
                _ => Err(unexpected("records by key")),
            })
            .collect::<Result<Vec<_>>>()?;
        // By key, as the memory store lists them.
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(records)
    }

    async fn remove(&self, space: &str, key: &str) -> Result<bool> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.key("rec", space)).arg(key);
        let reply = self.command(&cmd, "removing a coordination record").await?;
        Ok(count_of(&reply, "a removal count")? == 1)
    }
}
