//! One consumer-group member per backend and topic, shared by every
//! consumer the backend opens on that topic (a worker's lanes): one join,
//! not one rebalance per lane.
//!
//! A background task polls the member (rebalance callbacks run inside the
//! poll, so `max.poll.interval.ms` never runs out while handlers run) into
//! a bounded local buffer; when the buffer is full it pauses the assigned
//! partitions and resumes them once consumers took records out. Each
//! assigned partition has a [`Track`] of its fetched, unsettled records;
//! the offset stored for the next commit (`enable.auto.offset.store` off,
//! auto-commit on) is its contiguous done watermark. A revoked partition's
//! track is dropped, so its deliveries settle `LeaseLost` and the new
//! owner starts from the last commit. Leases are local: a delivery not
//! settled by its deadline is buffered again with `attempt + 1`.
//!
//! librdkafka reconnects by itself and never fails a poll because the
//! broker went quiet, so the member watches its connections: client
//! statistics every second say how long each connection has gone without
//! a byte from the broker, and once every one has been silent past the
//! member's silence limit, [`Member::silent`] says so and an empty
//! receive becomes a retryable error (a worker's liveness then reports
//! it) instead of an endless run of empty batches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use queue_core::{Error, ErrorKind, Message, Result};
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Message as _, Statistics};
use tokio::sync::Notify;

use crate::tracker::Track;
use crate::wire::{self, Incoming};

/// Records buffered before the member pauses its partitions: as many as
/// librdkafka itself prefetches by default (`queued.min.messages`).
const BUFFER_HIGH: usize = 100_000;
/// Bytes buffered before the member pauses its partitions: librdkafka's
/// default prefetch bound (`queued.max.messages.kbytes`, 64 MiB).
const BUFFER_HIGH_BYTES: usize = 64 << 20;
/// Bytes counted for a buffered record besides its payload.
const RECORD_OVERHEAD: usize = 256;
/// How often librdkafka reports its connections' statistics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest silence limit: a member with nothing to fetch hears from
/// its group coordinator only at heartbeats (every 3 s by default).
const MIN_SILENCE: Duration = Duration::from_secs(4);

/// One partition of one of the member's topics: (topic index, partition).
pub(crate) type Part = (usize, i32);

/// A fetched record waiting in the buffer.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) part: Part,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) message: Message,
    /// Why the bytes did not decode, if they did not.
    pub(crate) undecodable: Option<Error>,
    /// A retry tier's record: when it is to leave its tier.
    pub(crate) release: Option<SystemTime>,
}

/// A record handed out: what its delivery settles with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) part: Part,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) token: u64,
}

struct Assigned {
    epoch: u64,
    track: Track,
}

/// Fetched records not handed out yet, with their size in bytes.
#[derive(Default)]
struct Buffer {
    records: VecDeque<Pending>,
    bytes: usize,
}

impl Buffer {
    fn size(pending: &Pending) -> usize {
        pending.message.payload.len() + RECORD_OVERHEAD
    }

    fn push_back(&mut self, pending: Pending) {
        self.bytes += Buffer::size(&pending);
        self.records.push_back(pending);
    }

    fn push_front(&mut self, pending: Pending) {
        self.bytes += Buffer::size(&pending);
        self.records.push_front(pending);
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let pending = self.records.pop_front()?;
        self.bytes -= Buffer::size(&pending);
        Some(pending)
    }

    /// Drop the records of `part`.
    fn drop_part(&mut self, part: Part) {
        self.records.retain(|p| p.part != part);
        self.bytes = self.records.iter().map(Buffer::size).sum();
    }

    /// Past the high-water mark: pause fetching.
    fn full(&self) -> bool {
        self.records.len() >= BUFFER_HIGH || self.bytes >= BUFFER_HIGH_BYTES
    }

    /// Below half the high-water mark: fetch again. Resuming with half a
    /// buffer left gives the fetch time to land before consumers run dry.
    fn low(&self) -> bool {
        self.records.len() <= BUFFER_HIGH / 2 && self.bytes <= BUFFER_HIGH_BYTES / 2
    }
}

#[derive(Default)]
struct State {
    assigned: HashMap<Part, Assigned>,
    buffer: Buffer,
    /// Messages handed out, by (part, offset): buffered again with
    /// `attempt + 1` when their lease runs out.
    held: HashMap<(Part, i64), Message>,
    next_epoch: u64,
    next_token: u64,
    paused: bool,
    /// Partitions the member's owner paused until their head is due
    /// ([`Member::gate`]): a resume of the buffer leaves them paused.
    gated: HashSet<Part>,
    /// Partitions that were paused when a rebalance took them: librdkafka
    /// keeps an application's pause on a partition that comes back.
    was_paused: HashSet<Part>,
    /// Partitions of `was_paused` assigned again: the poller resumes them.
    fresh: Vec<Part>,
    /// Whether the member got its first assignment (maybe empty).
    joined: bool,
    /// When the poller looks for expired leases next (`None`: at once).
    check_at: Option<SystemTime>,
}

impl State {
    /// Make sure the poller looks for expired leases by `deadline`;
    /// whether it must be woken to learn of the earlier time.
    fn check_by(&mut self, deadline: SystemTime) -> bool {
        let earlier = self.check_at.is_some_and(|at| deadline < at);
        if earlier {
            self.check_at = Some(deadline);
        }
        earlier
    }
}

/// The member's context: keeps the tracks in step with the assignment.
pub(crate) struct Context {
    topics: Vec<String>,
    state: Arc<Mutex<State>>,
    /// Woken when the assignment changes.
    rebalanced: Arc<Notify>,
    /// Woken (with a permit kept) when partitions were assigned.
    newly_assigned: Arc<Notify>,
    /// When a connection last had a byte from the broker, as of the last
    /// statistics.
    heard: Arc<Mutex<Instant>>,
    /// A connection silent this long does not count as contact.
    silence: Duration,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        // `rxidle`: microseconds since the connection last received
        // anything (-1 before its first byte).
        let limit = i64::try_from(self.silence.as_micros()).unwrap_or(i64::MAX);
        let quiet = statistics
            .brokers
            .values()
            .filter(|b| b.state == "UP" && b.rxidle >= 0)
            .map(|b| b.rxidle)
            .min();
        if let Some(quiet) = quiet.filter(|&us| us < limit) {
            let at = Instant::now()
                .checked_sub(Duration::from_micros(quiet.unsigned_abs()))
                .unwrap_or_else(Instant::now);
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            *heard = (*heard).max(at);
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let mut state = lock(&self.state);
            for element in elements(revoked) {
                let Some(part) = part_of(&self.topics, element.topic(), element.partition()) else {
                    continue;
                };
                state.assigned.remove(&part);
                if state.gated.remove(&part) || state.paused {
                    state.was_paused.insert(part);
                }
                state.buffer.drop_part(part);
                state.held.retain(|(p, _), _| *p != part);
            }
        }
    }

    fn post_rebalance(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let mut state = lock(&self.state);
            for element in elements(assigned) {
                let Some(part) = part_of(&self.topics, element.topic(), element.partition()) else {
                    continue;
                };
                state.next_epoch += 1;
                let epoch = state.next_epoch;
                // librdkafka keeps an application's pause on a partition
                // across a rebalance that hands it back: the poller resumes
                // one that was paused, and the owner gates it again when it
                // sees the head. (A resume of a partition that is not
                // paused restarts its fetch, which would fetch records
                // again: only paused ones are resumed.)
                state.gated.remove(&part);
                if state.was_paused.remove(&part) {
                    state.fresh.push(part);
                }
                state.assigned.entry(part).or_insert_with(|| Assigned {
                    epoch,
                    track: Track::default(),
                });
            }
            // The poller resumes what was paused of the new assignment.
            state.paused = false;
            state.joined = true;
            let resume = !state.fresh.is_empty();
            drop(state);
            if resume {
                self.newly_assigned.notify_one();
            }
        }
        self.rebalanced.notify_waiters();
    }
}

/// The elements of `list`. rdkafka 0.36's `elements` builds a slice from
/// the list's element pointer even when the list is empty, where that
/// pointer is null (debug builds abort on it): a member that gets no
/// partition, as when a group has more members than partitions, has such
/// a list.
fn elements(
    list: &rdkafka::TopicPartitionList,
) -> Vec<rdkafka::topic_partition_list::TopicPartitionListElem<'_>> {
    if list.count() == 0 {
        Vec::new()
    } else {
        list.elements()
    }
}

/// The part `partition` of `topic` names among `topics`, if the member
/// reads that topic.
fn part_of(topics: &[String], topic: &str, partition: i32) -> Option<Part> {
    topics
        .iter()
        .position(|t| t == topic)
        .map(|index| (index, partition))
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; go on.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client whose drop runs on a thread of its own: librdkafka's destroy
/// blocks until the client left its group and its threads ended, which
/// can take a session timeout (or longer, mid-join on some brokers), and
/// must never hold up an async task or a runtime's shutdown.
pub(crate) struct Detached<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Detached<T> {
    pub(crate) fn new(client: T) -> Self {
        Detached(Some(client))
    }
}

impl<T: Send + 'static> std::ops::Deref for Detached<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            let spawned = std::thread::Builder::new()
                .name("queue-kafka-close".into())
                .spawn(move || drop(client));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread to close a kafka client on; it is leaked");
            }
        }
    }
}

/// The shared member of one topic.
pub(crate) struct Member {
    topics: Vec<String>,
    consumer: Detached<StreamConsumer<Context>>,
    state: Arc<Mutex<State>>,
    /// Woken when records are buffered.
    ready: Notify,
    /// Woken when consumers took records out of a full buffer.
    room: Notify,
    /// Woken when a lease ends before the poller's next expiry check.
    rearm: Notify,
    rebalanced: Arc<Notify>,
    newly_assigned: Arc<Notify>,
    heard: Arc<Mutex<Instant>>,
    silence: Duration,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// Join `group` on `topics` with the backend's client settings and
    /// start polling. The member leaves the group when the returned
    /// poller is aborted and the last reference is dropped. `silence`
    /// (raised to 4 s at least) is how long every connection may go
    /// without a byte from the broker before [`Member::silent`] says so.
    pub(crate) fn start(
        mut config: rdkafka::ClientConfig,
        group: &str,
        topics: Vec<String>,
        silence: Duration,
    ) -> Result<(Arc<Member>, tokio::task::JoinHandle<()>)> {
        let state = Arc::new(Mutex::new(State::default()));
        let rebalanced = Arc::new(Notify::new());
        let newly_assigned = Arc::new(Notify::new());
        let heard = Arc::new(Mutex::new(Instant::now()));
        let silence = silence.max(MIN_SILENCE);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", crate::SESSION_TIMEOUT_MS.to_string())
            .set("enable.partition.eof", "false")
            .set(
                "statistics.interval.ms",
                STATS_INTERVAL.as_millis().to_string(),
            );
        let consumer: StreamConsumer<Context> = config
            .create_with_context(Context {
                topics: topics.clone(),
                state: state.clone(),
                rebalanced: rebalanced.clone(),
                newly_assigned: newly_assigned.clone(),
                heard: heard.clone(),
                silence,
            })
            .map_err(|e| crate::error::classify(e, &format!("joining group {group}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| {
            crate::error::classify(e, &format!("subscribing to {}", topics.join(", ")))
        })?;
        let member = Arc::new(Member {
            topics,
            consumer: Detached::new(consumer),
            state,
            ready: Notify::new(),
            room: Notify::new(),
            rearm: Notify::new(),
            rebalanced,
            newly_assigned,
            heard,
            silence,
        });
        let poller = tokio::spawn(poll(member.clone()));
        Ok((member, poller))
    }

    /// How long the broker has been silent on every connection, once that
    /// passed the silence limit (and the statistics that would have said
    /// otherwise are due); `None` while it answers.
    pub(crate) fn silent(&self) -> Option<Duration> {
        let heard = *self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let quiet = heard.elapsed();
        (quiet > self.silence + STATS_INTERVAL).then_some(quiet)
    }

    /// Wait until the member got its first assignment, possibly empty
    /// (or `wait` passed); whether it holds partitions.
    pub(crate) async fn joined(&self, wait: Duration) -> bool {
        self.until(wait, |state| state.joined).await;
        !lock(&self.state).assigned.is_empty()
    }

    /// Wait until the member holds at least one partition (or `wait`
    /// passed); whether it does.
    pub(crate) async fn assigned(&self, wait: Duration) -> bool {
        self.until(wait, |state| !state.assigned.is_empty()).await
    }

    async fn until(&self, wait: Duration, done: impl Fn(&State) -> bool) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.rebalanced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&lock(&self.state)) {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Take up to `max` buffered records, handing each out under a fresh
    /// lease; waits up to `wait` for the first.
    pub(crate) async fn take(
        &self,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Vec<(Lease, Pending)> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.take_now(max, lease);
            if !taken.is_empty() {
                self.room.notify_one();
                return taken;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    fn take_now(&self, max: usize, lease: Duration) -> Vec<(Lease, Pending)> {
        let mut state = lock(&self.state);
        let deadline = SystemTime::now() + lease;
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(pending) = state.buffer.pop_front() else {
                break;
            };
            state.next_token += 1;
            let token = state.next_token;
            let Some(assigned) = state.assigned.get_mut(&pending.part) else {
                continue;
            };
            if assigned.epoch != pending.epoch {
                continue;
            }
            assigned.track.hand(pending.offset, token, deadline);
            state
                .held
                .insert((pending.part, pending.offset), pending.message.clone());
            taken.push((
                Lease {
                    part: pending.part,
                    epoch: pending.epoch,
                    offset: pending.offset,
                    token,
                },
                pending,
            ));
        }
        if !taken.is_empty() && state.check_by(deadline) {
            drop(state);
            self.rearm.notify_one();
        }
        taken
    }

    /// `Ok` while `lease` still holds its record, else `LeaseLost`.
    pub(crate) fn check(&self, lease: &Lease) -> Result<()> {
        let state = lock(&self.state);
        let holds = state
            .assigned
            .get(&lease.part)
            .is_some_and(|a| a.epoch == lease.epoch && a.track.holds(lease.offset, lease.token));
        if holds {
            Ok(())
        } else {
            Err(self.lost(lease))
        }
    }

    /// The record of `lease` is done: store the commit offset if it moved.
    pub(crate) fn settle(&self, lease: &Lease) -> Result<()> {
        let moved = {
            let mut state = lock(&self.state);
            let assigned = state
                .assigned
                .get_mut(&lease.part)
                .filter(|a| a.epoch == lease.epoch)
                .ok_or_else(|| self.lost(lease))?;
            let moved = assigned
                .track
                .settle(lease.offset, lease.token)
                .map_err(|_| self.lost(lease))?;
            state.held.remove(&(lease.part, lease.offset));
            moved
        };
        if let Some(offset) = moved {
            // `rd_kafka_offsets_store` stores the offset as given (the
            // single-offset `store_offset` of this rdkafka stores one past
            // it), and the given offset is the next record to read.
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(
                self.topic(lease.part),
                lease.part.1,
                rdkafka::Offset::Offset(offset),
            )
            .map_err(|e| crate::error::classify(e, "storing an offset"))?;
            self.consumer.store_offsets(&tpl).map_err(|e| {
                Error::new(
                    ErrorKind::LeaseLost,
                    format!(
                        "partition {} of {} was revoked before its offset was stored: {e}",
                        lease.part.1,
                        self.topic(lease.part)
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// Move the lease deadline of `lease` to `lease_for` from now.
    pub(crate) fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<SystemTime> {
        let deadline = SystemTime::now() + lease_for;
        let mut state = lock(&self.state);
        state
            .assigned
            .get_mut(&lease.part)
            .filter(|a| a.epoch == lease.epoch)
            .and_then(|a| a.track.extend(lease.offset, lease.token, deadline).ok())
            .ok_or_else(|| self.lost(lease))?;
        if state.check_by(deadline) {
            drop(state);
            self.rearm.notify_one();
        }
        Ok(deadline)
    }

    /// Hand the record of `lease` back: buffered again at the front with
    /// `message` (the same attempt for a release, the next for an
    /// expired lease).
    pub(crate) fn put_back(&self, lease: &Lease, message: Message) -> Result<()> {
        {
            let mut state = lock(&self.state);
            let assigned = state
                .assigned
                .get_mut(&lease.part)
                .filter(|a| a.epoch == lease.epoch)
                .ok_or_else(|| self.lost(lease))?;
            assigned
                .track
                .take_back(lease.offset, lease.token)
                .map_err(|_| self.lost(lease))?;
            state.held.remove(&(lease.part, lease.offset));
            state.buffer.push_front(Pending {
                part: lease.part,
                epoch: lease.epoch,
                offset: lease.offset,
                message,
                undecodable: None,
                release: None,
            });
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Records handed out and not settled.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.state).held.len()
    }

    /// Records settled here whose offsets are not committed yet (they
    /// still count in the group's lag).
    pub(crate) fn settled_uncommitted(&self) -> u64 {
        lock(&self.state)
            .assigned
            .values()
            .map(|a| a.track.settled_uncommitted())
            .sum()
    }

    fn lost(&self, lease: &Lease) -> Error {
        Error::new(
            ErrorKind::LeaseLost,
            format!(
                "the lease on offset {} of partition {} of {} was lost (it expired, was settled, or the partition was reassigned)",
                lease.offset,
                lease.part.1,
                self.topic(lease.part)
            ),
        )
    }

    /// The name of `part`'s topic.
    pub(crate) fn topic(&self, part: Part) -> &str {
        self.topics.get(part.0).map_or("", String::as_str)
    }

    /// Buffer a fetched record; pause the assignment when the buffer is full.
    fn fetched(&self, part: Part, offset: i64, incoming: Incoming, release: Option<SystemTime>) {
        let mut state = lock(&self.state);
        let Some(assigned) = state.assigned.get_mut(&part) else {
            return;
        };
        assigned.track.fetched(offset);
        let epoch = assigned.epoch;
        let (message, undecodable) = match incoming {
            Incoming::Message(message) => (message, None),
            Incoming::Undecodable(message, error) => (message, Some(error)),
        };
        state.buffer.push_back(Pending {
            part,
            epoch,
            offset,
            message,
            undecodable,
            release,
        });
        if state.buffer.full() && !state.paused {
            if let Ok(assignment) = self.consumer.assignment() {
                if self.consumer.pause(&assignment).is_ok() {
                    state.paused = true;
                }
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Resume a paused assignment once the buffer drained. A resumed
    /// partition fetches on from where it stopped.
    fn maybe_resume(&self) {
        let mut state = lock(&self.state);
        if state.paused && state.buffer.low() {
            if let Ok(assignment) = self.consumer.assignment() {
                // Gated partitions stay paused until their owner opens them.
                let mut open = rdkafka::TopicPartitionList::new();
                for e in elements(&assignment) {
                    let gated = part_of(&self.topics, e.topic(), e.partition())
                        .is_some_and(|part| state.gated.contains(&part));
                    if !gated {
                        open.add_partition(e.topic(), e.partition());
                    }
                }
                if self.consumer.resume(&open).is_ok() {
                    state.paused = false;
                }
            }
        }
    }

    /// Resume the partitions a rebalance handed back while paused
    /// (librdkafka kept the pause), unless the owner gated one again since
    /// or the buffer is full (its resume opens them).
    fn open_fresh(&self) {
        let mut state = lock(&self.state);
        if state.fresh.is_empty() {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for part in std::mem::take(&mut state.fresh) {
            if state.assigned.contains_key(&part) && !state.gated.contains(&part) && !state.paused {
                tpl.add_partition(self.topic(part), part.1);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::warn!(topics = ?self.topics, error = %e, "could not resume assigned partitions");
            }
        }
    }

    /// Pause fetching `part` (`closed`) until its owner opens it again, or
    /// fetch it again: the delay mover closes a retry tier's partition
    /// while its head is not due. A rebalance that hands the partition
    /// back opens it ([`Member::open_fresh`]), and the owner closes it
    /// again when it sees the head.
    pub(crate) fn gate(&self, part: Part, closed: bool) {
        let mut state = lock(&self.state);
        if closed == state.gated.contains(&part) || !state.assigned.contains_key(&part) {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(self.topic(part), part.1);
        if closed {
            if self.consumer.pause(&tpl).is_ok() {
                state.gated.insert(part);
            }
        } else {
            state.gated.remove(&part);
            // While the whole buffer is paused, its resume opens this one.
            if !state.paused {
                if let Err(e) = self.consumer.resume(&tpl) {
                    tracing::warn!(topic = self.topic(part), partition = part.1, error = %e, "could not resume a partition");
                }
            }
        }
    }

    /// Buffer again, with `attempt + 1`, every record whose lease ran out;
    /// schedules and returns the next check: the earliest lease deadline,
    /// or `backstop` from now if that is sooner. Scans every unsettled
    /// record, so the poller runs it only when a check is due.
    fn expire(&self, backstop: Duration) -> SystemTime {
        let now = SystemTime::now();
        let mut requeued = false;
        let mut state = lock(&self.state);
        let mut expired = Vec::new();
        for (part, assigned) in &state.assigned {
            for (offset, token) in assigned.track.expired(now) {
                expired.push(Lease {
                    part: *part,
                    epoch: assigned.epoch,
                    offset,
                    token,
                });
            }
        }
        for lease in expired {
            let Some(mut message) = state.held.remove(&(lease.part, lease.offset)) else {
                continue;
            };
            if let Some(assigned) = state.assigned.get_mut(&lease.part) {
                if assigned.track.take_back(lease.offset, lease.token).is_ok() {
                    message.attempt = message.attempt.saturating_add(1);
                    state.buffer.push_front(Pending {
                        part: lease.part,
                        epoch: lease.epoch,
                        offset: lease.offset,
                        message,
                        undecodable: None,
                        release: None,
                    });
                    requeued = true;
                }
            }
        }
        let next = state
            .assigned
            .values()
            .filter_map(|a| a.track.next_deadline())
            .min()
            .map_or(now + backstop, |at| at.min(now + backstop));
        state.check_at = Some(next);
        drop(state);
        if requeued {
            self.ready.notify_one();
        }
        next
    }

    /// When the poller's next expiry check is due (`None`: now).
    fn check_at(&self) -> Option<SystemTime> {
        lock(&self.state).check_at
    }
}

/// Poll the member until the task is aborted (the backend does on close
/// and drop): records into the buffer, leases checked at their
/// deadlines, paused partitions resumed when there is room.
async fn poll(m: Arc<Member>) {
    // A lease check at least this often. Leases handed out or extended to
    // end before the scheduled check move it earlier and wake the poller
    // (`State::check_by`); the scan itself runs only when a check is due,
    // not per record.
    const LEASE_CHECK: Duration = Duration::from_secs(1);
    loop {
        let now = SystemTime::now();
        let next = match m.check_at() {
            Some(at) if at > now => at,
            _ => m.expire(LEASE_CHECK),
        };
        let wake = next
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(LEASE_CHECK);
        tokio::select! {
            record = m.consumer.recv() => match record {
                Ok(record) => {
                    if let Some(part) = part_of(&m.topics, record.topic(), record.partition()) {
                        let offset = record.offset();
                        let incoming = wire::incoming(&record);
                        let release = wire::release_of(&record);
                        drop(record);
                        m.fetched(part, offset, incoming, release);
                    }
                }
                Err(e) => {
                    tracing::warn!(topics = ?m.topics, error = %e, "kafka consumer error");
                }
            },
            () = m.room.notified() => m.maybe_resume(),
            () = m.rearm.notified() => {}
            () = m.newly_assigned.notified() => m.open_fresh(),
            () = tokio::time::sleep(wake) => {}
        }
    }
}
