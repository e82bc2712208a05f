//! The delay mover: a message sent with a delay (or nacked with one)
//! waits in the queue's delay topic, `<topic>.delay`, and comes back to
//! the queue when due.
//!
//! One member of the group `<group>.<queue>.delay` per backend reads the
//! delay topic; one process holds each of its partitions, and a record
//! it took but did not settle (a crash, a rebalance) is fetched again by
//! the next owner. Each record is held until its message is due, at most
//! `delay_hold` (15 minutes by default): then it goes to the queue if
//! due, else around the delay topic again (a long delay makes one hop per
//! `delay_hold`). Held records count against the member's buffer, which
//! pauses the topic when full.
//!
//! Retry tiers (one topic per delay, each partition paused until its head
//! is due) are the design the issue names; on tansu a second topic in
//! one subscription, or a second consumer group beside the queue's,
//! stalled or crashed the queue's own member (librdkafka 2.12), so the
//! backend uses one delay topic with a timer per held record
//! (docs/backends/kafka.md says what a later check with librdkafka 2.3.0
//! found).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use queue_core::{QueueName, Result};

use crate::backend::Shared;
use crate::member::Member;
use crate::wire;

/// How many records the mover takes at a time.
const TAKE: usize = 100;

/// Start `queue`'s delay mover in this backend if it does not run yet.
pub(crate) fn ensure(shared: &Arc<Shared>, queue: &QueueName) -> Result<()> {
    shared.start_movers(queue, || {
        let (member, poller) = Member::start(
            shared.settings.client_config(),
            &format!("{}.delay", shared.group(queue)),
            vec![wire::delay(queue)],
            shared.settings.timeouts().1,
        )?;
        let task = tokio::spawn(run(
            Arc::downgrade(shared),
            queue.clone(),
            member,
            shared.settings.delay_hold(),
        ));
        Ok((poller, task))
    })
}

async fn run(
    shared: std::sync::Weak<Shared>,
    queue: QueueName,
    member: Arc<Member>,
    hold: Duration,
) {
    loop {
        // A held record is settled within `hold` of being taken: the lease
        // outlasts that.
        let taken = member
            .take(
                TAKE,
                Duration::from_secs(5),
                hold * 2 + Duration::from_secs(60),
            )
            .await;
        if shared.strong_count() == 0 {
            return;
        }
        for (lease, pending) in taken {
            let wait = pending.message.delay_from(SystemTime::now()).min(hold);
            let (shared, queue, member) = (shared.clone(), queue.clone(), member.clone());
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                // Due: to the queue; not yet: around the delay topic again.
                let topic = shared.destination(&queue, &pending.message);
                let moved = match shared.produce(&topic, &pending.message, None).await {
                    Ok(()) => member.settle(&lease),
                    Err(e) => Err(e),
                };
                if let Err(e) = moved {
                    tracing::warn!(queue = %queue, error = %e, "delay mover: could not send a message on; it is fetched again");
                    let _ = member.put_back(&lease, pending.message);
                }
            });
        }
    }
}
