//! The admin calls: stats, purge, health, queue listing, pause and
//! resume, the oldest ready age, the worker registry.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use queue_core::{
    Consumer, DeadLetterReason, ErrorKind, Job, JobOptions, Message, MessageId, Totals,
};
use queue_worker::Worker;

use super::{
    assert_kind, assert_unsupported, receive_one, send_numbered, until, LEASE, QUIET, SOON,
};
use crate::harness::{receive_n, Ctx};

/// Case 21: ready, delayed, in-flight and dead counts match a known sequence.
pub async fn stats_are_exact(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    send_numbered(&*producer, "ready", 5).await;
    let delayed = ctx.caps().delay.is_available();
    if delayed {
        for i in 0..2 {
            producer
                .send(Message::new(format!("delayed {i}")).with_delay(Duration::from_secs(120)))
                .await
                .expect("send delayed");
        }
    }
    let consumer = ctx.consumer(&queue, None).await;
    let mut taken = receive_n(&*consumer, 2, SOON).await;
    assert_eq!(taken.len(), 2);
    let buried = taken.pop().expect("two taken");
    buried
        .dead_letter(DeadLetterReason::Rejected("stats".into()))
        .await
        .expect("dead_letter");
    let expected = (3, if delayed { 2 } else { 0 }, 1, 1);
    let admin = ctx.backend().admin();
    let stats = admin.stats(&queue).await.expect("stats");
    let got = (stats.ready, stats.delayed, stats.in_flight, stats.dead);
    if ctx.caps().exact_stats() {
        assert_eq!(got, expected, "{stats:?}");
        if ctx.caps().totals == Totals::Queue {
            assert_eq!(stats.enqueued_total, 5 + expected.1);
            assert_eq!(stats.dead_lettered_total, 1);
        }
    } else {
        // Lagging and approximate counts converge; look again a few times
        // before failing.
        let mut got = got;
        for _ in 0..20 {
            if got == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = admin.stats(&queue).await.expect("stats");
            got = (s.ready, s.delayed, s.in_flight, s.dead);
        }
        assert_eq!(got, expected, "approximate stats did not converge");
    }
    drop(taken);
}

/// Case 22: purge empties a queue and touches no other; a delivery in
/// flight is removed too where the table says so, and otherwise stays
/// until settled.
pub async fn purge(ctx: &Ctx) {
    let a = ctx.queue();
    let b = ctx.queue();
    let pa = ctx.producer(&a).await;
    let pb = ctx.producer(&b).await;
    send_numbered(&*pa, "a", 3).await;
    send_numbered(&*pb, "b", 2).await;
    let admin = ctx.backend().admin();
    let ca = ctx.consumer(&a, Some(LEASE)).await;
    let held = receive_one(&*ca, "a delivery held over the purge").await;
    let purged = admin.purge(&a).await;
    if !ctx.caps().purge.is_available() {
        drop(held);
        return assert_unsupported(purged, "purge");
    }
    purged.expect("purge");
    let settled = held.ack().await;
    if ctx.caps().purge_in_flight {
        if ctx.caps().detects_lease_lost() {
            let err = settled.expect_err("the purge took the in-flight message");
            assert_eq!(err.error.kind(), ErrorKind::LeaseLost, "{}", err.error);
        }
    } else {
        settled.expect("an in-flight message outlives the purge and settles");
    }
    assert!(
        ca.receive(10, LEASE + Duration::from_millis(500))
            .await
            .expect("receive")
            .is_empty(),
        "purged queue is empty"
    );
    let cb = ctx.consumer(&b, None).await;
    let got = receive_n(&*cb, 2, SOON).await;
    assert_eq!(got.len(), 2, "the other queue is untouched");
    for d in got {
        d.ack().await.expect("ack");
    }
    if ctx.caps().exact_stats() {
        assert_eq!(admin.stats(&a).await.expect("stats").depth(), 0);
    }
}

/// Case 23: healthy against a live broker; unhealthy with a Connection error
/// naming the address against a closed port, within a bounded time.
pub async fn health(ctx: &Ctx) {
    let status = ctx.backend().admin().health().await;
    assert!(status.healthy, "live backend reports {status:?}");
    assert_eq!(status.backend, ctx.caps().backend);
    if let Some(url) = ctx.harness().unreachable_url() {
        let started = Instant::now();
        let connected = tokio::time::timeout(Duration::from_secs(20), ctx.harness().connect(&url))
            .await
            .expect("connect to a closed port returns within 20s");
        let address = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '?']).next())
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        match connected {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
                assert!(
                    e.to_string().contains(&address),
                    "{e} does not name {address}"
                );
            }
            Ok(backend) => {
                let status =
                    tokio::time::timeout(Duration::from_secs(20), backend.admin().health())
                        .await
                        .expect("health returns within 20s");
                assert!(!status.healthy);
                assert_eq!(status.error_kind, Some(ErrorKind::Connection), "{status:?}");
                let error = status.error.unwrap_or_default();
                assert!(error.contains(&address), "{error} does not name {address}");
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    } else {
        eprintln!("in-process backend: no closed port to check against");
    }
    // A closed backend reports unhealthy, typed.
    let backend = ctx
        .harness()
        .connect(&ctx.harness().url())
        .await
        .expect("connect");
    backend.close().await.expect("close");
    let status = backend.admin().health().await;
    assert!(!status.healthy);
    assert_eq!(status.error_kind, Some(ErrorKind::Closed), "{status:?}");
    let queue = ctx.queue();
    let err = backend
        .producer(&queue)
        .await
        .expect_err("closed backend refuses work");
    assert_eq!(err.kind(), ErrorKind::Closed);
}

/// Case 49: `Admin::queues` lists a queue once a producer opened it,
/// sorted and without duplicates, and no longer once it is deleted; a
/// backend that cannot list refuses with `Unsupported`.
pub async fn list_queues(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    let listed = match admin.queues().await {
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            eprintln!("{}: cannot list queues ({e})", ctx.harness().name());
            return;
        }
        Err(e) => panic!("queues: {e}"),
        Ok(listed) => listed,
    };
    assert!(listed.contains(&queue), "{queue} is listed: {listed:?}");
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "sorted, each once: {listed:?}"
    );
    drop(producer);
    admin.delete_queue(&queue).await.expect("delete");
    let listed = admin.queues().await.expect("queues");
    assert!(!listed.contains(&queue), "{queue} is gone: {listed:?}");
}

/// Case 50: `Admin::pause` stops deliveries to every consumer (one of a
/// second connection too) while sends still succeed and stats say
/// `paused`; after `resume` a consumer that was waiting gets every
/// message; a queue that does not exist is `NotFound` (a mistyped name
/// creates nothing). A backend without `pause` refuses both with
/// `Unsupported`.
pub async fn pause_resume(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    if !ctx.caps().pause.is_available() {
        assert_kind(admin.pause(&queue).await, ErrorKind::Unsupported, "pause");
        assert_kind(admin.resume(&queue).await, ErrorKind::Unsupported, "resume");
        return;
    }
    let missing = ctx.queue_name();
    assert_kind(
        admin.pause(&missing).await,
        ErrorKind::NotFound,
        "pause a missing queue",
    );
    assert_kind(
        admin.resume(&missing).await,
        ErrorKind::NotFound,
        "resume a missing queue",
    );
    let before = producer.send(Message::new("before")).await.expect("send");
    admin.pause(&queue).await.expect("pause");
    admin.pause(&queue).await.expect("pausing a paused queue");
    let during = producer
        .send(Message::new("while paused"))
        .await
        .expect("a paused queue takes sends");
    let consumer: Arc<dyn Consumer> = Arc::from(ctx.consumer(&queue, None).await);
    let none = consumer.receive(10, QUIET).await.expect("receive");
    assert!(
        none.is_empty(),
        "a paused queue hands out nothing: {none:?}"
    );
    // A second connection, as another process has, sees the pause too.
    if ctx.harness().broker_addr().is_some() {
        let other = ctx
            .harness()
            .connect(&ctx.harness().url())
            .await
            .expect("connect again");
        let elsewhere = other
            .consumer(&queue, queue_core::ConsumerOptions::default())
            .await
            .expect("consumer");
        let none = elsewhere.receive(10, QUIET).await.expect("receive");
        assert!(none.is_empty(), "paused for every connection: {none:?}");
    }
    let stats = admin.stats(&queue).await.expect("stats");
    assert!(stats.paused, "{stats:?}");
    let waiting = {
        let consumer = consumer.clone();
        tokio::spawn(async move { receive_n(&*consumer, 2, SOON).await })
    };
    tokio::task::yield_now().await;
    admin.resume(&queue).await.expect("resume");
    admin
        .resume(&queue)
        .await
        .expect("resuming a running queue");
    let got = waiting.await.expect("receive task");
    let ids: HashSet<MessageId> = got.iter().map(|d| d.message().id).collect();
    assert_eq!(
        ids,
        HashSet::from([before, during]),
        "every message after resume"
    );
    for d in got {
        d.ack().await.expect("ack");
    }
    let stats = admin.stats(&queue).await.expect("stats");
    assert!(!stats.paused, "{stats:?}");
}

/// Case 51: `QueueStats::oldest_ready_age`, where a backend reports it:
/// `None` while nothing is ready; the wait of the oldest ready message
/// (one created 30 s ago, so no clock has to run in the case); `None`
/// again once it is taken.
pub async fn oldest_ready_age(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    let stats = admin.stats(&queue).await.expect("stats");
    assert_eq!(stats.oldest_ready_age, None, "nothing is ready: {stats:?}");
    let mut old = Message::new("waiting since 30 s ago");
    old.created_at = SystemTime::now() - Duration::from_secs(30);
    producer.send(old).await.expect("send");
    producer.send(Message::new("new")).await.expect("send");
    let stats = admin.stats(&queue).await.expect("stats");
    match stats.oldest_ready_age {
        None => eprintln!("{}: no oldest ready age", ctx.harness().name()),
        Some(age) => assert!(
            (Duration::from_secs(29)..Duration::from_secs(120)).contains(&age),
            "the oldest waited about 30 s: {stats:?}"
        ),
    }
    let consumer = ctx.consumer(&queue, None).await;
    for d in receive_n(&*consumer, 2, SOON).await {
        d.ack().await.expect("ack");
    }
    let stats = admin.stats(&queue).await.expect("stats");
    assert_eq!(stats.oldest_ready_age, None, "nothing is ready: {stats:?}");
}

/// Case 54: a running worker is in the worker registry (host, pid, queue,
/// concurrency, counts, heartbeat) and refreshes it, leaves it on
/// shutdown, and a worker whose heartbeat stops drops out after three
/// intervals. A backend without a registry refuses with `Unsupported` and
/// its workers run all the same.
pub async fn worker_registry(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    let interval = Duration::from_millis(200);
    let worker = Worker::builder(ctx.backend().clone(), queue.clone())
        .concurrency(3)
        .heartbeat(Some(interval))
        .handler(|_: Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    for i in 0..2 {
        let job = Job::encode(&format!("job {i}"), &JobOptions::default()).expect("encode");
        producer.send(job).await.expect("send");
    }
    assert!(until(&mut events, SOON, || worker.stats().completed == 2).await);
    if !ctx.caps().worker_registry.is_available() {
        assert_kind(admin.workers().await, ErrorKind::Unsupported, "workers");
        let info = queue_core::WorkerInfo::new(queue.clone(), 1, interval);
        assert_kind(
            admin.register_worker(&info).await,
            ErrorKind::Unsupported,
            "register",
        );
        worker.shutdown().await.expect("shutdown");
        return;
    }
    let id = worker.id().to_owned();
    let find = |id: String| async move {
        let workers = admin.workers().await.expect("workers");
        workers.into_iter().find(|w| w.id == id)
    };
    // The heartbeat after the jobs carries their count.
    let deadline = Instant::now() + SOON;
    let listed = loop {
        match find(id.clone()).await {
            Some(w) if w.completed == 2 => break w,
            _ if Instant::now() > deadline => panic!("worker {id} never listed with 2 completed"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(listed.queue, queue);
    assert_eq!((listed.pid, listed.concurrency), (std::process::id(), 3));
    assert_eq!((listed.in_flight, listed.failed), (0, 0));
    assert_eq!(listed.heartbeat_interval, interval);
    assert!(!listed.host.is_empty());
    assert!(listed.started_at <= listed.last_heartbeat, "{listed:?}");
    let first_beat = listed.last_heartbeat;
    let deadline = Instant::now() + SOON;
    while find(id.clone()).await.expect("still listed").last_heartbeat == first_beat {
        assert!(Instant::now() < deadline, "the heartbeat is refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await.expect("shutdown");
    assert_eq!(
        find(id.clone()).await,
        None,
        "a stopped worker leaves at once"
    );
    // A worker that stops reporting (a crashed process) drops out.
    let silent = queue_core::WorkerInfo::new(queue.clone(), 1, Duration::from_millis(500));
    admin.register_worker(&silent).await.expect("register");
    assert!(
        find(silent.id.clone()).await.is_some(),
        "listed while fresh"
    );
    let deadline = Instant::now() + SOON;
    while find(silent.id.clone()).await.is_some() {
        assert!(Instant::now() < deadline, "a silent worker drops out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin
        .deregister_worker(&silent.id)
        .await
        .expect("deregister an unknown id");
}
