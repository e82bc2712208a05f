//! [`Coordination`] in process: the memory backend's, shared by its
//! clones, and a reference for the other stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    check_limit, check_name, check_record, check_ttl, Coordination, Lease, Permits, Rate, Slot,
    Window, MAX_RECORDS,
};
use crate::error::{Error, ErrorKind, Result};

/// Leases, windows, semaphores and records in this process. Clones share
/// the same state.
#[derive(Debug, Clone)]
pub struct MemoryCoordination {
    state: Arc<Mutex<State>>,
    epoch: Instant,
}

impl Default for MemoryCoordination {
    fn default() -> Self {
        MemoryCoordination {
            state: Arc::default(),
            epoch: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<String, Held>,
    tokens: HashMap<String, u64>,
    windows: HashMap<String, (Rate, Window)>,
    semaphores: HashMap<String, HashMap<String, Instant>>,
    records: HashMap<String, BTreeMap<String, Bytes>>,
}

#[derive(Debug)]
struct Held {
    holder: String,
    token: u64,
    expires: Instant,
}

/// Windows kept before idle ones are dropped.
const WINDOWS_KEPT: usize = 10_000;

impl MemoryCoordination {
    /// An empty store.
    pub fn new() -> Self {
        MemoryCoordination::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

impl State {
    fn current(&mut self, name: &str, now: Instant) -> Option<&Held> {
        if self.leases.get(name).is_some_and(|h| h.expires <= now) {
            self.leases.remove(name);
        }
        self.leases.get(name)
    }

    fn is_current(&mut self, lease: &Lease, now: Instant) -> bool {
        self.current(&lease.name, now)
            .is_some_and(|h| h.holder == lease.holder && h.token == lease.token)
    }
}

#[async_trait]
impl Coordination for MemoryCoordination {
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        check_name("lease name", name)?;
        check_name("lease holder", holder)?;
        check_ttl(ttl)?;
        let now = Instant::now();
        let mut state = self.state();
        let token = match state.current(name, now) {
            Some(held) if held.holder != holder => return Ok(None),
            Some(held) => held.token,
            None => {
                let token = state.tokens.entry(name.to_owned()).or_default();
                *token += 1;
                *token
            }
        };
        state.leases.insert(
            name.to_owned(),
            Held {
                holder: holder.to_owned(),
                token,
                expires: now + ttl,
            },
        );
        Ok(Some(Lease::new(name, holder, token, ttl)))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<bool> {
        let now = Instant::now();
        let mut state = self.state();
        if !state.is_current(lease, now) {
            return Ok(false);
        }
        if let Some(held) = state.leases.get_mut(&lease.name) {
            held.expires = now + lease.ttl;
        }
        Ok(true)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let now = Instant::now();
        let mut state = self.state();
        if state.is_current(lease, now) {
            state.leases.remove(&lease.name);
        }
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<Lease>> {
        check_name("lease name", name)?;
        let now = Instant::now();
        let mut state = self.state();
        Ok(state.current(name, now).map(|held| {
            Lease::new(
                name,
                &held.holder,
                held.token,
                held.expires.saturating_duration_since(now),
            )
        }))
    }

    async fn take_permits(&self, key: &str, rate: Rate, want: u32) -> Result<Permits> {
        check_name("rate limit key", key)?;
        let now = self.micros(Instant::now());
        let mut state = self.state();
        if state.windows.len() >= WINDOWS_KEPT {
            state
                .windows
                .retain(|_, (rate, window)| !window.is_idle(*rate, now));
        }
        let (kept, window) = state
            .windows
            .entry(key.to_owned())
            .or_insert_with(|| (rate, Window::default()));
        *kept = rate;
        Ok(window.take(rate, now, want))
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
        let now = Instant::now();
        let mut state = self.state();
        let slots = state.semaphores.entry(name.to_owned()).or_default();
        slots.retain(|_, expires| *expires > now);
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        if slots.contains_key(holder) || count < limit {
            slots.insert(holder.to_owned(), now + ttl);
            return Ok(Slot::Held);
        }
        let earliest = slots.values().min().copied().unwrap_or(now);
        Ok(Slot::Full {
            retry_after: earliest.saturating_duration_since(now),
        })
    }

    async fn renew_slot(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        check_name("semaphore name", name)?;
        check_name("slot holder", holder)?;
        check_ttl(ttl)?;
        let now = Instant::now();
        let mut state = self.state();
        let Some(expires) = state
            .semaphores
            .get_mut(name)
            .and_then(|slots| slots.get_mut(holder))
        else {
            return Ok(false);
        };
        if *expires <= now {
            return Ok(false);
        }
        *expires = now + ttl;
        Ok(true)
    }

    async fn release_slot(&self, name: &str, holder: &str) -> Result<()> {
        let mut state = self.state();
        if let Some(slots) = state.semaphores.get_mut(name) {
            slots.remove(holder);
            if slots.is_empty() {
                state.semaphores.remove(name);
            }
        }
        Ok(())
    }

    async fn slots_held(&self, name: &str) -> Result<u32> {
        let now = Instant::now();
        let state = self.state();
        Ok(state.semaphores.get(name).map_or(0, |slots| {
            let live = slots.values().filter(|expires| **expires > now).count();
            u32::try_from(live).unwrap_or(u32::MAX)
        }))
    }

    async fn put(&self, space: &str, key: &str, value: Bytes) -> Result<()> {
        check_name("record space", space)?;
        check_name("record key", key)?;
        check_record(&value)?;
        let mut state = self.state();
        insert(&mut state, space, key, value)
    }

    async fn fenced_put(
        &self,
        lease: &Lease,
        space: &str,
        key: &str,
        value: Bytes,
    ) -> Result<bool> {
        check_name("record space", space)?;
        check_name("record key", key)?;
        check_record(&value)?;
        let now = Instant::now();
        let mut state = self.state();
        if !state.is_current(lease, now) {
            return Ok(false);
        }
        insert(&mut state, space, key, value)?;
        Ok(true)
    }

    async fn get(&self, space: &str, key: &str) -> Result<Option<Bytes>> {
        let state = self.state();
        Ok(state.records.get(space).and_then(|r| r.get(key)).cloned())
    }

    async fn list(&self, space: &str) -> Result<Vec<(String, Bytes)>> {
        let state = self.state();
        Ok(state.records.get(space).map_or_else(Vec::new, |records| {
            records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    async fn remove(&self, space: &str, key: &str) -> Result<bool> {
        let mut state = self.state();
        Ok(state
            .records
            .get_mut(space)
            .is_some_and(|records| records.remove(key).is_some()))
    }
}

fn insert(state: &mut State, space: &str, key: &str, value: Bytes) -> Result<()> {
    let records = state.records.entry(space.to_owned()).or_default();
    if records.len() >= MAX_RECORDS && !records.contains_key(key) {
        return Err(Error::new(
            ErrorKind::QueueFull,
            format!("coordination space {space:?} holds {MAX_RECORDS} records already"),
        ));
    }
    records.insert(key.to_owned(), value);
    Ok(())
}
