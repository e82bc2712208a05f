//! Faults between client and broker, through the fault proxy: connections
//! cut during receives, acks and sends, a blackholed broker, repeated cuts
//! under a worker, a broker killed and restarted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::{
    Backend, Consumer, Job, JobOptions, Message, MessageId, Producer, QueueName, Result,
};
use queue_worker::{Worker, WorkerHandle};

use super::{send, send_numbered, until, SOON};
use crate::harness::{receive_n, Ctx};
use crate::proxy::{FaultProxy, Mode as ProxyMode};

/// The backend of the fault cases: through a fault proxy where the
/// harness has a broker, else the direct backend (printing that nothing
/// can be cut in process).
async fn faulty_or_direct(ctx: &Ctx, query: &str) -> (Arc<dyn Backend>, Option<FaultProxy>) {
    match ctx.faulty(query).await {
        Some(faulty) => (faulty.backend, Some(faulty.proxy)),
        None => {
            eprintln!("in-process backend: no connection to cut; checking it carries on");
            (ctx.backend().clone(), None)
        }
    }
}

/// Send `message`, retrying a retryable failure (the same message, so the
/// same id) a few times: how a careful producer rides out a cut.
async fn send_retrying(producer: &dyn Producer, message: &Message) -> Result<MessageId> {
    let mut attempt = 0u32;
    loop {
        match producer.send(message.clone()).await {
            Err(e) if e.is_retryable() && attempt < 8 => {
                // A reconnecting client has no event to await here.
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// A queue's stats, retrying a retryable error a few times (a broker that
/// just restarted may still be bringing the queue up).
async fn stats_retrying(backend: &dyn Backend, queue: &QueueName) -> queue_core::QueueStats {
    let mut attempt = 0u32;
    loop {
        match backend.admin().stats(queue).await {
            Err(e) if e.is_retryable() && attempt < 8 => {
                // A recovering broker has no event to await here.
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other.expect("stats"),
        }
    }
}

/// Receive and ack until every id of `expected` arrived or `timeout`
/// passed, riding out retryable errors; counts every delivery per id.
async fn drain(
    consumer: &dyn Consumer,
    expected: &HashSet<MessageId>,
    timeout: Duration,
) -> HashMap<MessageId, usize> {
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    let deadline = Instant::now() + timeout;
    while !expected.iter().all(|id| seen.contains_key(id)) && Instant::now() < deadline {
        match consumer.receive(100, Duration::from_secs(1)).await {
            Ok(batch) => {
                for d in batch {
                    *seen.entry(d.message().id).or_default() += 1;
                    let _ = d.ack().await;
                }
            }
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("receive while draining: {e}"),
        }
    }
    seen
}

/// Case 26: after every connection is cut, producer and consumer carry on
/// without being rebuilt; nothing acked is lost or redelivered.
pub async fn reconnect(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let producer = backend.producer(&queue).await.expect("producer");
    let consumer = backend
        .consumer(&queue, Default::default())
        .await
        .expect("consumer");
    let before: HashSet<MessageId> = send_numbered(&*producer, "before", 10)
        .await
        .into_iter()
        .collect();
    let mut acked = HashSet::new();
    for d in receive_n(&*consumer, 5, SOON).await {
        acked.insert(d.message().id);
        d.ack().await.expect("ack");
    }
    assert_eq!(acked.len(), 5);
    if let Some(proxy) = &proxy {
        let open = proxy.cut();
        if ctx.harness().connections_persist() {
            assert!(open > 0, "the backend's connections go through the proxy");
        } else {
            assert!(
                proxy.accepted() > 0,
                "the backend's requests go through the proxy"
            );
        }
    }
    let mut after = HashSet::new();
    for i in 0..10 {
        // The first send after the cut may see the broken connection; the
        // same producer must recover on its own.
        let message = Message::new(format!("after {i}"));
        let id = send_retrying(&*producer, &message)
            .await
            .unwrap_or_else(|e| panic!("send after the cut: {e}"));
        after.insert(id);
    }
    let expected: HashSet<MessageId> = before
        .difference(&acked)
        .copied()
        .chain(after.iter().copied())
        .collect();
    let got = drain(&*consumer, &expected, Duration::from_secs(60)).await;
    let came_back: Vec<_> = acked.iter().filter(|id| got.contains_key(id)).collect();
    assert!(
        came_back.is_empty(),
        "messages acked before the cut came back: {came_back:?}"
    );
    let missing: Vec<_> = expected.iter().filter(|id| !got.contains_key(id)).collect();
    assert!(missing.is_empty(), "lost after the cut: {missing:?}");
}

/// Case 42: a cut while a consumer waits in `receive`: the call returns
/// (empty, or a retryable error) instead of hanging, and the same consumer
/// gets the next message.
pub async fn cut_during_receive(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let consumer: Arc<dyn Consumer> = Arc::from(
        backend
            .consumer(&queue, Default::default())
            .await
            .expect("consumer"),
    );
    let accepted = proxy.as_ref().map_or(0, FaultProxy::accepted);
    let wait = Duration::from_secs(5);
    let waiting = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.receive(10, wait).await })
    };
    if let Some(proxy) = &proxy {
        // A backend that opens a connection to wait on has it open once this
        // resolves; one that waits on its shared connection is waiting too.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            proxy.until_accepted_more_than(accepted),
        )
        .await;
        proxy.cut();
    }
    let returned = tokio::time::timeout(wait + SOON, waiting)
        .await
        .expect("a receive cut mid-wait returns")
        .expect("receive task");
    match returned {
        Ok(batch) => assert!(batch.is_empty(), "nothing was sent: {batch:?}"),
        Err(e) => assert!(e.is_retryable(), "a cut is retryable: {e}"),
    }
    let id = send(ctx, &queue, Message::new("after the cut")).await;
    let got = drain(&*consumer, &HashSet::from([id]), SOON).await;
    assert_eq!(
        got.get(&id),
        Some(&1),
        "the same consumer gets the next message"
    );
}

/// Case 43: cuts while ack batches are on their way: every message is
/// delivered at least once, and one whose ack succeeded never comes back.
pub async fn cut_during_ack(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "lease=2s").await;
    let queue = ctx.queue();
    let total = 300usize;
    let producer = ctx.producer(&queue).await;
    let messages: Vec<Message> = (0..total).map(|i| Message::new(format!("m {i}"))).collect();
    let all: HashSet<MessageId> = messages.iter().map(|m| m.id).collect();
    for chunk in messages.chunks(ctx.caps().max_batch.clamp(1, 100)) {
        producer
            .send_batch(chunk.to_vec())
            .await
            .expect("send_batch");
    }
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Latency(Duration::from_millis(20)));
    }
    let consumer = backend
        .consumer(&queue, Default::default())
        .await
        .expect("consumer");
    let mut acked: HashSet<MessageId> = HashSet::new();
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    let mut violations = Vec::new();
    let mut cuts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < total && Instant::now() < deadline {
        let batch = match consumer.receive(50, Duration::from_secs(1)).await {
            Ok(batch) => batch,
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("receive: {e}"),
        };
        let ids: Vec<MessageId> = batch.iter().map(|d| d.message().id).collect();
        for id in &ids {
            if acked.contains(id) {
                violations.push(*id);
            }
            *seen.entry(*id).or_default() += 1;
        }
        let settle = consumer.ack_batch(batch);
        let failed = match (&proxy, cuts < 3) {
            (Some(proxy), true) => {
                cuts += 1;
                let cut = async {
                    proxy.next_request().await;
                    proxy.cut();
                };
                tokio::join!(settle, cut).0
            }
            _ => settle.await,
        };
        let failed: HashSet<MessageId> = failed
            .err()
            .unwrap_or_default()
            .iter()
            .map(|f| f.delivery.message().id)
            .collect();
        acked.extend(ids.into_iter().filter(|id| !failed.contains(id)));
    }
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Pass);
    }
    // What was not acked comes back when its lease runs out.
    let rest: HashSet<MessageId> = all.difference(&acked).copied().collect();
    let direct = ctx.consumer(&queue, None).await;
    let drained = drain(&*direct, &rest, Duration::from_secs(30)).await;
    violations.extend(drained.keys().filter(|id| acked.contains(id)));
    let delivered: HashSet<MessageId> = seen.keys().chain(drained.keys()).copied().collect();
    let lost: Vec<_> = all.difference(&delivered).collect();
    eprintln!(
        "{cuts} cuts during acks; {} acked through the proxy, {} redelivered after",
        acked.len(),
        drained.len()
    );
    assert!(lost.is_empty(), "never delivered: {lost:?}");
    assert!(
        violations.is_empty(),
        "acked, then delivered again: {violations:?}"
    );
}

/// Case 44: cuts while sends are on their way: every send that returned
/// an id is delivered; a failed send retried with the same message is
/// delivered too, and duplicates are counted.
pub async fn cut_during_send(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let producer = backend.producer(&queue).await.expect("producer");
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Latency(Duration::from_millis(10)));
    }
    let mut accepted = HashSet::new();
    let mut cuts = 0;
    for i in 0..100 {
        let message = Message::new(format!("s {i}"));
        let sent = match (&proxy, i % 20 == 5) {
            (Some(proxy), true) => {
                cuts += 1;
                let cut = async {
                    proxy.next_request().await;
                    proxy.cut();
                };
                tokio::join!(producer.send(message.clone()), cut).0
            }
            _ => producer.send(message.clone()).await,
        };
        let id = match sent {
            Ok(id) => id,
            // Retried as a careful producer does: the same message again.
            Err(e) if e.is_retryable() => send_retrying(&*producer, &message)
                .await
                .unwrap_or_else(|e| panic!("send after a cut: {e}")),
            Err(e) => panic!("a cut gave a non-retryable error: {e}"),
        };
        assert_eq!(id, message.id);
        accepted.insert(id);
    }
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Pass);
    }
    let consumer = ctx.consumer(&queue, None).await;
    let got = drain(&*consumer, &accepted, Duration::from_secs(30)).await;
    let lost: Vec<_> = accepted.iter().filter(|id| !got.contains_key(id)).collect();
    let duplicates = got.values().filter(|&&n| n > 1).count();
    eprintln!("{cuts} cuts during sends; {duplicates} duplicates");
    assert!(lost.is_empty(), "accepted sends lost: {lost:?}");
}

/// Case 45: a blackholed broker (connections accepted, nothing answered):
/// calls fail with a retryable error within the configured timeouts,
/// health turns unhealthy, the worker's liveness says why, and everything
/// resumes by itself once traffic flows.
pub async fn blackholed_broker(ctx: &Ctx) {
    // The proxy holds what it swallowed and delivers it once traffic
    // flows, as a network does with a late packet: a receive the worker
    // gave up on may then take a message, which comes back after its
    // lease, so the lease is short. A send that failed may land then too
    // (its request was written before the blackhole swallowed it): the
    // case waits for the job sent after the blackhole, not for a count.
    let query = "connect_timeout=1s&request_timeout=1s&lease=3s";
    let (backend, proxy) = faulty_or_direct(ctx, query).await;
    let queue = ctx.queue();
    let ran: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let worker = Worker::builder(backend.clone(), queue.clone())
        .concurrency(2)
        .poll_wait(Duration::from_millis(500))
        .liveness_timeout(Duration::from_millis(1500))
        .handler({
            let ran = ran.clone();
            move |job: Job<u32>| {
                ran.lock().expect("lock").insert(job.payload);
                async { Ok::<_, std::io::Error>(()) }
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let job = |n: u32| Job::encode(&n, &JobOptions::default()).expect("encode");
    send(ctx, &queue, job(1)).await;
    assert!(
        until(&mut events, SOON, || ran.lock().expect("lock").contains(&1)).await,
        "the first job runs"
    );
    let Some(proxy) = proxy else {
        worker.shutdown().await.expect("shutdown");
        return;
    };
    proxy.set_mode(ProxyMode::Blackhole);
    let producer = backend.producer(&queue).await;
    let started = Instant::now();
    let sent = match producer {
        Ok(producer) => producer.send(job(2)).await,
        Err(e) => Err(e),
    };
    let took = started.elapsed();
    let err = sent.expect_err("a send to a blackholed broker fails");
    assert!(err.is_retryable(), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "the send took {took:?} with 1 s timeouts"
    );
    let started = Instant::now();
    let health = backend.admin().health().await;
    assert!(!health.healthy, "{health:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "health took {:?}",
        started.elapsed()
    );
    // The worker notices on its own and says why.
    let deadline = Instant::now() + SOON;
    let mut liveness = worker.health();
    while liveness.healthy && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), events.recv()).await;
        liveness = worker.health();
    }
    assert!(
        !liveness.healthy,
        "the worker still reports healthy: {liveness:?}"
    );
    assert!(liveness.last_error.is_some(), "{liveness:?}");
    proxy.set_mode(ProxyMode::Pass);
    send(ctx, &queue, job(3)).await;
    assert!(
        until(&mut events, SOON * 2, || ran
            .lock()
            .expect("lock")
            .contains(&3))
        .await,
        "the worker resumes by itself: {:?}",
        worker.stats()
    );
    assert!(worker.health().healthy, "{:?}", worker.health());
    assert!(backend.admin().health().await.healthy);
    worker.shutdown().await.expect("shutdown");
}

/// Job number -> times its handler ran.
type Runs = Arc<Mutex<HashMap<u32, u32>>>;

/// A worker of `concurrency` on `backend` whose handler counts the runs of
/// each job number; for the fault cases, which then check every accepted
/// job ran.
async fn counting_worker(
    backend: &Arc<dyn Backend>,
    queue: &QueueName,
    concurrency: usize,
) -> (WorkerHandle, Runs) {
    let runs: Runs = Arc::default();
    let record = runs.clone();
    let worker = Worker::builder(backend.clone(), queue.clone())
        .concurrency(concurrency)
        .lease(Duration::from_secs(2))
        .poll_wait(Duration::from_millis(500))
        .handler(move |job: Job<u32>| {
            let record = record.clone();
            async move {
                *record.lock().expect("lock").entry(job.payload).or_default() += 1;
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("start worker");
    (worker, runs)
}

/// The accepted jobs that never ran, and the runs beyond the first.
fn missing_and_duplicates(runs: &Runs, accepted: &[u32]) -> (Vec<u32>, u32) {
    let runs = runs.lock().expect("lock");
    let missing = accepted
        .iter()
        .copied()
        .filter(|n| !runs.contains_key(n))
        .collect();
    let duplicates = runs.values().map(|&n| n.saturating_sub(1)).sum();
    (missing, duplicates)
}

/// Case 46: ten cuts in ten seconds under a running worker and a trickle
/// producer retrying failed sends: every accepted job runs at least once;
/// duplicates are counted and stay within what was in flight.
pub async fn repeated_cuts(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let concurrency = 8;
    let (worker, runs) = counting_worker(&backend, &queue, concurrency).await;
    let mut events = worker.subscribe();
    let producer = backend.producer(&queue).await.expect("producer");
    let cutter = proxy.as_ref().map(|proxy| async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            proxy.cut();
        }
    });
    let trickle = async {
        let mut accepted = Vec::new();
        let started = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < Duration::from_secs(11) {
            let message = Job::encode(&n, &JobOptions::default()).expect("encode");
            match send_retrying(&*producer, &message).await {
                Ok(_) => accepted.push(n),
                Err(e) => eprintln!("job {n} not accepted: {e}"),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        accepted
    };
    let accepted = match cutter {
        Some(cutter) => tokio::join!(trickle, cutter).0,
        None => trickle.await,
    };
    until(&mut events, Duration::from_secs(60), || {
        missing_and_duplicates(&runs, &accepted).0.is_empty()
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    let (missing, duplicates) = missing_and_duplicates(&runs, &accepted);
    eprintln!(
        "{} jobs accepted, {} ran, {duplicates} duplicate runs over 10 cuts",
        accepted.len(),
        runs.lock().expect("lock").len()
    );
    assert!(missing.is_empty(), "accepted jobs never ran: {missing:?}");
    assert!(!accepted.is_empty());
    // A cut can at most repeat what was running or waiting for its ack.
    let bound = 10 * 2 * concurrency as u32;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
}

/// Case 47: the broker killed with SIGKILL mid-run and started again on
/// its files: every accepted job runs, nothing acked comes back beyond
/// what was in flight, and producer and worker carry on by themselves.
pub async fn broker_restart(ctx: &Ctx) {
    let Some(broker) = ctx.harness().persistent_broker().await else {
        eprintln!("the harness runs no broker of its own: nothing to restart");
        return;
    };
    let mut broker = broker.expect("start a private broker");
    let url = broker.url();
    let backend = ctx.harness().connect(&url).await.expect("connect");
    let queue = ctx.queue_name();
    let concurrency = 8;
    let (worker, runs) = counting_worker(&backend, &queue, concurrency).await;
    let mut events = worker.subscribe();
    let producer = backend.producer(&queue).await.expect("producer");
    let total = 600u32;
    let mut accepted = Vec::new();
    let mut restarted = false;
    for n in 0..total {
        let message = Job::encode(&n, &JobOptions::default()).expect("encode");
        match send_retrying(&*producer, &message).await {
            Ok(_) => accepted.push(n),
            Err(e) => eprintln!("job {n} not accepted: {e}"),
        }
        if n == total / 3 {
            assert!(
                until(&mut events, SOON, || runs.lock().expect("lock").len()
                    >= 100)
                .await,
                "jobs run before the kill"
            );
            broker.kill().await.expect("SIGKILL the broker");
            broker
                .start()
                .await
                .expect("restart the broker on its files");
            restarted = true;
        }
    }
    assert!(restarted);
    until(&mut events, Duration::from_secs(90), || {
        missing_and_duplicates(&runs, &accepted).0.is_empty()
    })
    .await;
    // A job that ran while its ack could not reach the broker comes back
    // when its lease runs out: let the worker settle it before counting.
    let mut stats = stats_retrying(&*backend, &queue).await;
    let deadline = Instant::now() + SOON;
    while stats.depth() > 0 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
        stats = stats_retrying(&*backend, &queue).await;
    }
    worker.shutdown().await.expect("shutdown");
    let (missing, duplicates) = missing_and_duplicates(&runs, &accepted);
    eprintln!(
        "{} of {total} accepted, {duplicates} duplicate runs across the restart",
        accepted.len()
    );
    assert!(
        missing.is_empty(),
        "accepted jobs lost in the restart: {missing:?}"
    );
    assert!(
        accepted.len() as u32 >= total * 9 / 10,
        "the producer carried on"
    );
    // Only what was running or waiting for its ack at the kill runs again.
    let bound = 4 * concurrency as u32;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
    if ctx.caps().exact_stats() {
        assert_eq!((stats.depth(), stats.dead), (0, 0), "{stats:?}");
    }
    let _ = backend.admin().delete_queue(&queue).await;
}
