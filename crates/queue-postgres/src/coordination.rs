//! [`PostgresCoordination`]: the coordination store in the backend's
//! schema (tables `coord_*`), one function call or statement per decision.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::coordination::{
    check_limit, check_name, check_record, check_ttl, MAX_RECORDS, MAX_TTL,
};
use queue_core::{Coordination, Error, ErrorKind, Lease, Permits, Rate, Result, Slot};
use sqlx::Row as _;

use crate::shared::Shared;

/// Leases with fencing tokens, rate windows, semaphores and records, kept
/// in the backend's schema and shared by every process on the same
/// database: what periodic jobs, rate limits and fleet-wide concurrency
/// need, with no other server. Each decision is one call of a schema
/// function that reads the database's clock (so hosts whose clocks drift
/// still agree) and takes a transaction-scoped advisory lock on the name
/// it decides for.
///
/// [`PostgresBackend::coordination_store`](crate::PostgresBackend::coordination_store)
/// hands it out; a separate store is another schema.
#[derive(Clone, Debug)]
pub struct PostgresCoordination {
    shared: Arc<Shared>,
}

/// Whole microseconds of `d`, at most `max`.
fn micros(d: Duration, max: Duration) -> i64 {
    i64::try_from(d.min(max).as_micros()).unwrap_or(i64::MAX)
}

fn duration_us(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

impl PostgresCoordination {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        PostgresCoordination { shared }
    }

    fn sql(&self, text: &str) -> String {
        text.replace("{s}", &self.shared.schema)
    }

    fn fail(&self, doing: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| self.shared.error(e, doing)
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
        self.shared.check_open()?;
        let written: i32 =
            sqlx::query_scalar(&self.sql("SELECT {s}.coord_put($1, $2, $3, $4, $5, $6, $7)"))
                .bind(space)
                .bind(key)
                .bind(value.as_ref())
                .bind(MAX_RECORDS as i64)
                .bind(lease.map(|l| l.name.as_str()))
                .bind(lease.map(|l| l.holder.as_str()))
                .bind(lease.map(|l| i64::try_from(l.token).unwrap_or(i64::MAX)))
                .fetch_one(&self.shared.pool)
                .await
                .map_err(self.fail("writing a coordination record"))?;
        match written {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(Error::new(
                ErrorKind::QueueFull,
                format!("coordination space {space:?} holds {MAX_RECORDS} records already"),
            )),
        }
    }
}

#[async_trait]
impl Coordination for PostgresCoordination {
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        check_name("lease name", name)?;
        check_name("lease holder", holder)?;
        check_ttl(ttl)?;
        self.shared.check_open()?;
        let token: i64 = sqlx::query_scalar(&self.sql("SELECT {s}.coord_lease_take($1, $2, $3)"))
            .bind(name)
            .bind(holder)
            .bind(micros(ttl, MAX_TTL))
            .fetch_one(&self.shared.pool)
            .await
            .map_err(self.fail("taking a lease"))?;
        Ok((token > 0).then(|| Lease::new(name, holder, u64::try_from(token).unwrap_or(0), ttl)))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<bool> {
        self.shared.check_open()?;
        sqlx::query_scalar(&self.sql("SELECT {s}.coord_lease_renew($1, $2, $3, $4)"))
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(i64::try_from(lease.token).unwrap_or(i64::MAX))
            .bind(micros(lease.ttl, MAX_TTL))
            .fetch_one(&self.shared.pool)
            .await
            .map_err(self.fail("renewing a lease"))
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.shared.check_open()?;
        sqlx::query(&self.sql("SELECT {s}.coord_lease_release($1, $2, $3)"))
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(i64::try_from(lease.token).unwrap_or(i64::MAX))
            .execute(&self.shared.pool)
            .await
            .map_err(self.fail("releasing a lease"))?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>> {
        check_name("lease name", name)?;
        self.shared.check_open()?;
        let row = sqlx::query(&self.sql(
            "SELECT holder, token, \
                    (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint \
             FROM {s}.coord_leases WHERE name = $1 AND expires_at > clock_timestamp()",
        ))
        .bind(name)
        .fetch_optional(&self.shared.pool)
        .await
        .map_err(self.fail("reading a lease"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let fail = self.fail("reading a lease");
        let holder: String = row.try_get(0).map_err(&fail)?;
        let token: i64 = row.try_get(1).map_err(&fail)?;
        let left: i64 = row.try_get(2).map_err(&fail)?;
        Ok(Some(Lease::new(
            name,
            &holder,
            u64::try_from(token).unwrap_or(0),
            duration_us(left),
        )))
    }

    async fn take_permits(&self, key: &str, rate: Rate, want: u32) -> Result<Permits> {
        check_name("rate limit key", key)?;
        self.shared.check_open()?;
        let row = sqlx::query(
            &self.sql("SELECT granted, retry_us, remaining FROM {s}.coord_permits($1, $2, $3, $4)"),
        )
        .bind(key)
        .bind(i64::from(rate.limit()))
        .bind(micros(rate.period(), Rate::MAX_PERIOD))
        .bind(i64::from(want))
        .fetch_one(&self.shared.pool)
        .await
        .map_err(self.fail("taking permits"))?;
        let fail = self.fail("taking permits");
        let granted: i64 = row.try_get(0).map_err(&fail)?;
        let retry: i64 = row.try_get(1).map_err(&fail)?;
        let remaining: i64 = row.try_get(2).map_err(&fail)?;
        let granted = u32::try_from(granted)
            .ok()
            .filter(|n| *n <= want)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Decode,
                    "postgres granted more permits than asked for",
                )
            })?;
        let retry_after = (retry > 0).then(|| duration_us(retry));
        Ok(Permits::new(granted, retry_after)
            .with_remaining(u32::try_from(remaining).unwrap_or(u32::MAX)))
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
        self.shared.check_open()?;
        let row = sqlx::query(
            &self.sql("SELECT held, retry_us FROM {s}.coord_slot_acquire($1, $2, $3, $4)"),
        )
        .bind(name)
        .bind(holder)
        .bind(i64::from(limit))
        .bind(micros(ttl, MAX_TTL))
        .fetch_one(&self.shared.pool)
        .await
        .map_err(self.fail("acquiring a slot"))?;
        let fail = self.fail("acquiring a slot");
        let held: bool = row.try_get(0).map_err(&fail)?;
        let retry: i64 = row.try_get(1).map_err(&fail)?;
        Ok(if held {
            Slot::Held
        } else {
            Slot::Full {
                retry_after: duration_us(retry),
            }
        })
    }

    async fn renew_slot(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        check_name("semaphore name", name)?;
        check_name("slot holder", holder)?;
        check_ttl(ttl)?;
        self.shared.check_open()?;
        let renewed = sqlx::query(&self.sql(
            "UPDATE {s}.coord_slots \
             SET expires_at = clock_timestamp() + $3 * interval '1 microsecond' \
             WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()",
        ))
        .bind(name)
        .bind(holder)
        .bind(micros(ttl, MAX_TTL))
        .execute(&self.shared.pool)
        .await
        .map_err(self.fail("renewing a slot"))?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_slot(&self, name: &str, holder: &str) -> Result<()> {
        self.shared.check_open()?;
        sqlx::query(&self.sql("DELETE FROM {s}.coord_slots WHERE name = $1 AND holder = $2"))
            .bind(name)
            .bind(holder)
            .execute(&self.shared.pool)
            .await
            .map_err(self.fail("releasing a slot"))?;
        Ok(())
    }

    async fn slots_held(&self, name: &str) -> Result<u32> {
        self.shared.check_open()?;
        let held: i64 = sqlx::query_scalar(&self.sql(
            "SELECT count(*) FROM {s}.coord_slots WHERE name = $1 AND expires_at > clock_timestamp()",
        ))
        .bind(name)
        .fetch_one(&self.shared.pool)
        .await
        .map_err(self.fail("counting slots"))?;
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
        self.shared.check_open()?;
        let value: Option<Vec<u8>> = sqlx::query_scalar(
            &self.sql("SELECT value FROM {s}.coord_records WHERE space = $1 AND key = $2"),
        )
        .bind(space)
        .bind(key)
        .fetch_optional(&self.shared.pool)
        .await
        .map_err(self.fail("reading a coordination record"))?;
        Ok(value.map(Bytes::from))
    }

    async fn list(&self, space: &str) -> Result<Vec<(String, Bytes)>> {
        self.shared.check_open()?;
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            &self.sql("SELECT key, value FROM {s}.coord_records WHERE space = $1 ORDER BY key"),
        )
        .bind(space)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(self.fail("listing coordination records"))?;
        Ok(rows
            .into_iter()
            .map(|(key, value)| (key, Bytes::from(value)))
            .collect())
    }

    async fn remove(&self, space: &str, key: &str) -> Result<bool> {
        self.shared.check_open()?;
        let removed =
            sqlx::query(&self.sql("DELETE FROM {s}.coord_records WHERE space = $1 AND key = $2"))
                .bind(space)
                .bind(key)
                .execute(&self.shared.pool)
                .await
                .map_err(self.fail("removing a coordination record"))?;
        Ok(removed.rows_affected() == 1)
    }
}
