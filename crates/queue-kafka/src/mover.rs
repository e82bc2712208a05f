//! The delay mover: a message sent with a delay (or nacked with one)
//! waits in one of its queue's retry tier topics, `<topic>.retry.<wait>`
//! (`wire::TIERS`), and comes back to the queue when due.
//!
//! One member of the group `<group>.<queue>.delay` per backend reads every
//! tier topic of a queue; one process holds each partition, and a record
//! it took but did not send on (a crash, a rebalance) is fetched again by
//! the next owner from the last committed offset. Each tier record
//! carries when it leaves its tier (header `queue-release`):
//!
//! - the tiers with a fixed wait (10 s, 1 min, 10 min, 1 h) come due in
//!   the order their records were appended, so the mover keeps each
//!   partition's records in order and pauses the partition while its head
//!   is not due (`Member::gate`): nothing more is fetched from it until
//!   then. A partition a rebalance hands back is resumed by the member and
//!   read again from its last commit; the mover pauses it again as soon
//!   as it sees the head, so the pause outlives rebalances.
//! - the `short` tier holds what has less than ten seconds left, each
//!   record on its own timer (a head there could block a shorter delay
//!   behind it for up to ten seconds).
//!
//! A record that leaves its tier goes to the queue if due, else to the
//! tier for what remains ([`wire::route`]); its offset is stored only
//! once the broker took the copy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use queue_core::{QueueName, Result};

use crate::member::{Lease, Member, Part, Pending};
use crate::shared::Shared;
use crate::wire;

/// How many records the mover takes at a time.
const TAKE: usize = 1_000;
/// How long the mover waits for records when nothing it holds comes due.
const IDLE: Duration = Duration::from_secs(5);
/// The lease on a record the mover holds: twice the longest tier's wait
/// and a minute, so a held record is never handed out twice.
const HOLD_LEASE: Duration =
    Duration::from_secs(wire::TIERS[wire::TIERS.len() - 1].0.as_secs() * 2 + 60);
/// How long a record the mover could not send on waits before the next
/// try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Start `queue`'s delay mover in this backend if it does not run yet.
pub(crate) fn ensure(shared: &Arc<Shared>, queue: &QueueName) -> Result<()> {
    shared.start_movers(queue, || {
        let (member, poller) = Member::start(
            shared.settings.client_config(),
            &format!("{}.delay", shared.group(queue)),
            wire::tiers(queue),
            shared.settings.timeouts().1,
        )?;
        let task = tokio::spawn(run(Arc::downgrade(shared), queue.clone(), member));
        Ok((poller, task))
    })
}

/// A record the mover holds until it leaves its tier.
struct Held {
    lease: Lease,
    pending: Pending,
}

impl Held {
    /// When the record leaves its tier: its release header, or now for a
    /// record without one (not written by the backend).
    fn release(&self) -> SystemTime {
        self.pending.release.unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// What the mover holds: fixed-wait tiers' records in partition order,
/// the short tier's by release time.
#[derive(Default)]
struct Holding {
    ordered: HashMap<Part, VecDeque<Held>>,
    /// By (release, arrival), so two records due at once both stay.
    timed: BTreeMap<(SystemTime, u64), Held>,
    next_seq: u64,
}

impl Holding {
    fn add(&mut self, held: Held) {
        if held.lease.part.0 == 0 {
            let at = held.release();
            self.add_timed(held, at);
        } else {
            self.ordered
                .entry(held.lease.part)
                .or_default()
                .push_back(held);
        }
    }

    /// Hold `held` on a timer until `at`.
    fn add_timed(&mut self, held: Held, at: SystemTime) {
        self.next_seq += 1;
        self.timed.insert((at, self.next_seq), held);
    }

    /// Take every record whose release passed at `now` (in partition
    /// order), gate each ordered partition on its head, drop records whose
    /// partition moved to another member, and return when the next held
    /// record comes due.
    fn due(&mut self, member: &Member, now: SystemTime) -> (Vec<Held>, Option<SystemTime>) {
        let mut due = Vec::new();
        let mut next: Option<SystemTime> = None;
        for (part, records) in &mut self.ordered {
            while let Some(head) = records.front() {
                if member.check(&head.lease).is_err() {
                    // Revoked: the partition's next owner reads it again.
                    records.pop_front();
                } else if head.release() <= now {
                    due.extend(records.pop_front());
                } else {
                    next = Some(next.map_or(head.release(), |n| n.min(head.release())));
                    break;
                }
            }
            member.gate(*part, !records.is_empty());
        }
        self.ordered.retain(|_, records| !records.is_empty());
        while let Some(entry) = self.timed.first_entry() {
            let release = entry.key().0;
            if release > now {
                next = Some(next.map_or(release, |n| n.min(release)));
                break;
            }
            let held = entry.remove();
            if member.check(&held.lease).is_ok() {
                due.push(held);
            }
        }
        (due, next)
    }
}

async fn run(shared: Weak<Shared>, queue: QueueName, member: Arc<Member>) {
    let mut holding = Holding::default();
    loop {
        let now = SystemTime::now();
        let (due, next) = holding.due(&member, now);
        if !due.is_empty() {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            // What could not be sent stays held (lease, release and all)
            // and is tried again a little later, not in a tight loop.
            let retry_at = SystemTime::now() + RETRY_AFTER;
            for held in forward(&shared, &queue, &member, due).await {
                holding.add_timed(held, retry_at);
            }
            continue;
        }
        // Wait for records, or until the next held one comes due.
        let wait = next
            .map_or(IDLE, |at| at.duration_since(now).unwrap_or_default())
            .min(IDLE);
        let taken = member.take(TAKE, wait, HOLD_LEASE).await;
        if shared.strong_count() == 0 {
            return;
        }
        for (lease, pending) in taken {
            holding.add(Held { lease, pending });
        }
    }
}

/// Send each of `due` on (to its queue if due, else to the tier for what
/// remains), all queued at once and acknowledged in turn, then store its
/// offset. Returns the records that could not be sent (their leases still
/// held); a record whose partition moved away is dropped (its new owner
/// reads it again).
async fn forward(shared: &Shared, queue: &QueueName, member: &Member, due: Vec<Held>) -> Vec<Held> {
    let now = SystemTime::now();
    let sends: Vec<_> = due
        .iter()
        .map(|held| shared.start_send(queue, &held.pending.message, now))
        .collect();
    let mut failed = Vec::new();
    for ((produced, topic), held) in sends.into_iter().zip(due) {
        match produced.outcome(&topic, held.pending.message.id).await {
            // Sent: the original is done. A settle that fails means the
            // partition moved away; its next owner reads the record again.
            Ok(()) => {
                let _ = member.settle(&held.lease);
            }
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, "delay mover: could not send a message on; it is tried again");
                failed.push(held);
            }
        }
    }
    failed
}
