//! The state of one memory queue: ready lists, delay and lease indexes,
//! dead letters, the idempotency window and the registry of waiting
//! consumers, all behind one mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ready::Ready;
use crate::error::Result;
use crate::message::{Message, MessageId, Nacked, QueueName};
use crate::stats::{DeadLetter, DeadLetterReason, QueueOptions, QueueStats};

#[derive(Debug)]
pub(super) struct MemQueue {
    pub(super) name: QueueName,
    pub(super) state: Mutex<State>,
    pub(super) notify: Notify,
    pub(super) idempotency_window: Duration,
}

/// Key of the delay and lease indexes: (due time, unique sequence).
pub(super) type TimeKey = (Instant, u64);

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) options: QueueOptions,
    pub(super) ready: Ready,
    /// How many leased deliveries each group has (only groups with some).
    pub(super) group_active: HashMap<Arc<str>, u32>,
    /// The group limit the last limited consumer took by (0: none yet),
    /// so a settle wakes a consumer only where a group was at it.
    pub(super) group_limit: u32,
    pub(super) delayed: BTreeMap<TimeKey, Message>,
    /// Leased messages by lease key. Messages live in a hash map and the
    /// ordered index holds only keys, so settling a delivery moves no message.
    pub(super) in_flight: HashMap<u64, Message, SeqHasher>,
    /// Lease keys ordered by deadline, for expiry.
    pub(super) leases: BTreeSet<TimeKey>,
    pub(super) dead: VecDeque<DeadLetter>,
    /// Idempotency keys inside the window: when they expire, and the id of
    /// the message first sent with them.
    pub(super) seen_keys: HashMap<String, (Instant, MessageId)>,
    pub(super) seen_order: VecDeque<(Instant, String)>,
    pub(super) next_seq: u64,
    pub(super) any_ttl: bool,
    pub(super) deleted: bool,
    /// Paused by `Admin::pause`: nothing is taken until resumed.
    pub(super) paused: bool,
    pub(super) stats: QueueStats,
    /// When each waiting consumer's timer fires (a multiset), so a new
    /// event earlier than all of them wakes one consumer to re-arm.
    pub(super) waiting: BTreeMap<Instant, usize>,
    /// A change since the last unlock needs a waiting consumer woken.
    pub(super) wake_one: bool,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the state half-updated in
    // a way later calls rely on, so a poisoned lock is still used.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemQueue {
    pub(super) fn state(&self) -> Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        if state.deleted {
            return Err(super::error::deleted(&self.name));
        }
        Ok(state)
    }

    /// Unlock `state`, first waking one waiting consumer if a change made
    /// under the lock needs one. The woken consumer passes the wake-up on
    /// when it leaves messages behind, so a large batch reaches every
    /// consumer without waking all of them for a single message.
    pub(super) fn unlock(&self, mut state: MutexGuard<'_, State>) {
        if std::mem::take(&mut state.wake_one) {
            self.notify.notify_one();
        }
        drop(state);
    }

    /// Wake every waiting consumer (close, delete).
    pub(super) fn wake_all(&self) {
        self.notify.notify_waiters();
    }
}

/// Removes a waiting consumer's timer from the registry however the wait
/// ends (including cancellation of the `receive` future).
pub(super) struct WaiterGuard<'a> {
    pub(super) queue: &'a MemQueue,
    pub(super) wake_at: Instant,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.queue.state);
        if let Some(count) = state.waiting.get_mut(&self.wake_at) {
            *count -= 1;
            if *count == 0 {
                state.waiting.remove(&self.wake_at);
            }
        }
    }
}

/// Hashes the unique sequence numbers keying the in-flight map with one
/// multiplication (Fibonacci hashing): they are never attacker-chosen.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SeqHasher;

impl std::hash::BuildHasher for SeqHasher {
    type Hasher = SeqHash;
    fn build_hasher(&self) -> SeqHash {
        SeqHash(0)
    }
}

#[derive(Debug)]
pub(super) struct SeqHash(u64);

impl std::hash::Hasher for SeqHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// `SystemTime` `at` as an `Instant`, never earlier than the wall-clock time.
pub(super) fn instant_of(at: SystemTime, sys_now: SystemTime, now: Instant) -> Instant {
    now + at.duration_since(sys_now).unwrap_or(Duration::ZERO)
}

impl State {
    /// A message became ready: a waiting consumer should take it.
    pub(super) fn note_ready(&mut self) {
        if !self.waiting.is_empty() {
            self.wake_one = true;
        }
    }

    /// Something becomes due at `at`: if every waiting consumer sleeps past
    /// it, wake one to re-arm its timer.
    pub(super) fn note_due(&mut self, at: Instant) {
        if self.waiting.keys().next().is_some_and(|&first| first > at) {
            self.wake_one = true;
        }
    }

    /// Lease `message` under `key`.
    #[inline]
    pub(super) fn lease(&mut self, key: TimeKey, message: Message) {
        if self.ready.saw_groups() {
            self.group_leased(&message);
        }
        self.leases.insert(key);
        self.in_flight.insert(key.1, message);
    }

    /// End the lease `key`, returning its message; `None` if it is not held.
    /// Sequences are never reused, so a stale key finds nothing.
    #[inline(always)]
    pub(super) fn unlease(&mut self, key: &TimeKey) -> Option<Message> {
        let message = self.in_flight.remove(&key.1)?;
        self.leases.remove(key);
        if !self.group_active.is_empty() {
            self.group_unleased(&message);
        }
        Some(message)
    }

    /// Count a lease of `message`'s group.
    fn group_leased(&mut self, message: &Message) {
        if let Some(group) = message.group() {
            *self.group_active.entry(Arc::from(group)).or_default() += 1;
        }
    }

    /// A lease of `message`'s group ended.
    fn group_unleased(&mut self, message: &Message) {
        if let Some(group) = message.group() {
            let Some(n) = self.group_active.get_mut(group) else {
                return;
            };
            let was_full = self.group_limit > 0 && *n >= self.group_limit;
            *n -= 1;
            if *n == 0 {
                self.group_active.remove(group);
            }
            // The group was at its limit: a consumer may be waiting for it.
            if was_full && !self.ready.is_empty() {
                self.note_ready();
            }
        }
    }

    /// Put a released message back at the head of its priority, with its
    /// attempt unchanged: it was never worked on.
    pub(super) fn requeue_front(&mut self, message: Message) {
        self.ready.push_front(message);
        self.note_ready();
    }

    pub(super) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(super) fn depth(&self) -> u64 {
        (self.ready.len() + self.delayed.len() + self.in_flight.len()) as u64
    }

    /// The id of the message first sent with `key` inside the window, if
    /// any; otherwise records `id` under it.
    pub(super) fn first_with_key(
        &mut self,
        key: &str,
        id: MessageId,
        now: Instant,
        window: Duration,
    ) -> Option<MessageId> {
        while let Some((expiry, _)) = self.seen_order.front() {
            if *expiry > now {
                break;
            }
            let (expiry, old) = self.seen_order.pop_front().expect("front exists");
            if self
                .seen_keys
                .get(&old)
                .is_some_and(|(at, _)| *at == expiry)
            {
                self.seen_keys.remove(&old);
            }
        }
        if let Some((_, first)) = self.seen_keys.get(key) {
            return Some(*first);
        }
        let expiry = now + window;
        self.seen_keys.insert(key.to_owned(), (expiry, id));
        self.seen_order.push_back((expiry, key.to_owned()));
        None
    }

    /// Queue `message` as ready or delayed by its `not_before`.
    pub(super) fn enqueue(&mut self, message: Message, sys_now: SystemTime, now: Instant) {
        if message.expires_at.is_some() {
            self.any_ttl = true;
        }
        match message.not_before {
            Some(at) if at > sys_now => {
                let key = (instant_of(at, sys_now, now), self.seq());
                self.note_due(key.0);
                self.delayed.insert(key, message);
            }
            _ => {
                self.ready.push_back(message);
                self.note_ready();
            }
        }
    }

    pub(super) fn bury(&mut self, message: Message, reason: DeadLetterReason, attempts: u32) {
        if reason == DeadLetterReason::Expired {
            self.stats.expired_total += 1;
        }
        self.stats.dead_lettered_total += 1;
        self.dead
            .push_back(DeadLetter::new(message, reason, attempts));
    }

    /// A failed attempt ([`Message::nacked`]): deliver again after
    /// `delay`, or dead-letter on the last attempt.
    pub(super) fn retry(
        &mut self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
        sys_now: SystemTime,
        now: Instant,
    ) {
        self.stats.retried_total += 1;
        match message.nacked(delay, last_error, sys_now) {
            Nacked::Retry(copy) => self.enqueue(copy, sys_now, now),
            Nacked::DeadLetter(last) => {
                let attempts = last.attempt;
                self.bury(last, DeadLetterReason::MaxAttempts, attempts);
            }
        }
    }

    /// Move due delayed messages to ready and take back expired leases.
    pub(super) fn maintain(&mut self, sys_now: SystemTime, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let message = entry.remove();
            self.ready.push_back(message);
            self.note_ready();
        }
        while let Some(&key) = self.leases.first() {
            if key.0 > now {
                break;
            }
            let message = self
                .unlease(&key)
                .expect("lease index matches in-flight map");
            let error = "lease expired before the delivery was settled";
            self.retry(&message, Duration::ZERO, Some(error), sys_now, now);
        }
    }

    /// Dead-letter every queued message whose TTL has passed (for exact stats).
    pub(super) fn sweep_expired(&mut self, sys_now: SystemTime) {
        if !self.any_ttl {
            return;
        }
        let mut expired = Vec::new();
        self.ready.retain(|m| {
            let keep = !m.is_expired_at(sys_now);
            if !keep {
                expired.push(m.clone());
            }
            keep
        });
        self.delayed.retain(|_, m| {
            let keep = !m.is_expired_at(sys_now);
            if !keep {
                expired.push(m.clone());
            }
            keep
        });
        for message in expired {
            let attempts = message.attempt.saturating_sub(1);
            self.bury(message, DeadLetterReason::Expired, attempts);
        }
    }

    /// The next instant at which a delayed message becomes due or a lease expires.
    pub(super) fn next_event(&self) -> Option<Instant> {
        let delayed = self.delayed.keys().next().map(|k| k.0);
        let lease = self.leases.first().map(|k| k.0);
        match (delayed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
