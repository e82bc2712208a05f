//! Schedules and runners on the memory backend, in real time: ticks of a
//! few hundred milliseconds, leases of a second.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use queue_core::coordination::Coordination;
use queue_core::error::{ErrorKind, Result};
use queue_core::memory::MemoryBackend;
use queue_core::message::{Message, QueueName};
use queue_core::stats::ConsumerOptions;
use queue_core::traits::{Admin, Backend, Consumer, Producer};
use queue_core::Capabilities;

use super::spec::{from_millis, to_millis};
use super::*;

const INTERVAL: Duration = Duration::from_millis(200);

fn every_200ms(name: &str, queue: &QueueName) -> Schedule {
    Schedule::new(
        name,
        Spec::every(INTERVAL).unwrap(),
        JobTemplate::new(queue.clone(), "tick"),
    )
    .unwrap()
}

/// A job received: its tick (`None` when triggered by hand) and when it
/// arrived.
#[derive(Debug)]
struct Received {
    tick: Option<i64>,
    message: Message,
    at: SystemTime,
}

struct Inbox {
    consumer: Box<dyn Consumer>,
    received: Vec<Received>,
}

impl Inbox {
    async fn open(backend: &MemoryBackend, queue: &QueueName) -> Inbox {
        let consumer = backend
            .consumer(queue, ConsumerOptions::default())
            .await
            .unwrap();
        Inbox {
            consumer,
            received: Vec::new(),
        }
    }

    /// Receive until `count` jobs in all arrived (or 10 s went by).
    async fn until(&mut self, count: usize) -> &[Received] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.received.len() < count {
            assert!(Instant::now() < deadline, "timed out: {:?}", self.ticks());
            self.receive(Duration::from_millis(500)).await;
        }
        &self.received
    }

    /// Take whatever arrives within `wait`.
    async fn receive(&mut self, wait: Duration) {
        for delivery in self.consumer.receive(100, wait).await.unwrap() {
            let message = delivery.message().clone();
            let tick = message
                .headers
                .get(HEADER_SCHEDULE_TICK)
                .map(|tick| tick.parse().unwrap());
            self.received.push(Received {
                tick,
                message,
                at: SystemTime::now(),
            });
            delivery.ack().await.unwrap();
        }
    }

    /// Everything still queued.
    async fn drain(&mut self) {
        loop {
            let before = self.received.len();
            self.receive(Duration::from_millis(50)).await;
            if self.received.len() == before {
                return;
            }
        }
    }

    fn ticks(&self) -> Vec<i64> {
        self.received.iter().filter_map(|r| r.tick).collect()
    }
}

/// Every tick from the first to the last, once each, in order.
fn assert_each_tick_once(ticks: &[i64]) {
    let mut sorted = ticks.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, ticks, "ticks arrived out of order");
    let step = i64::try_from(INTERVAL.as_millis()).unwrap();
    for pair in sorted.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            step,
            "a tick lost or doubled: {sorted:?}"
        );
    }
}

/// Wait until the wall clock is `offset` past a multiple of `interval`.
async fn sleep_to_phase(interval: Duration, offset: Duration) {
    let period = i64::try_from(interval.as_millis()).unwrap();
    let now = to_millis(SystemTime::now());
    let target = (now.div_euclid(period) + 1) * period + i64::try_from(offset.as_millis()).unwrap();
    tokio::time::sleep(Duration::from_millis(u64::try_from(target - now).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_fire_each_tick_once() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sched-two").unwrap();
    let mut inbox = Inbox::open(&backend, &queue).await;
    let first = Schedules::new(Arc::new(backend.clone())).unwrap();
    let second = Schedules::new(Arc::new(backend.clone())).unwrap();
    let added = first.add(every_200ms("two", &queue)).await.unwrap();
    let runners = [
        first
            .runner()
            .lease_ttl(Duration::from_secs(1))
            .start()
            .await
            .unwrap(),
        second
            .runner()
            .lease_ttl(Duration::from_secs(1))
            .start()
            .await
            .unwrap(),
    ];
    inbox.until(10).await;
    let leaders = runners.iter().filter(|r| r.is_leader()).count();
    assert_eq!(leaders, 1);
    for runner in runners {
        runner.shutdown().await.unwrap();
    }
    inbox.drain().await;
    let ticks = inbox.ticks();
    assert_each_tick_once(&ticks);
    // The first tick is the first after the schedule was added.
    let since = to_millis(added.schedule.active_since());
    assert_eq!(ticks[0], (since / 200 + 1) * 200);
    for received in &inbox.received {
        let message = &received.message;
        assert_eq!(message.headers[HEADER_SCHEDULE], "two");
        let key = format!("schedule:two:{}", received.tick.unwrap());
        assert_eq!(message.idempotency_key.as_deref(), Some(key.as_str()));
        // On time: well within a tick of its instant.
        let late = received
            .at
            .duration_since(from_millis(received.tick.unwrap()))
            .unwrap_or_default();
        assert!(late < Duration::from_millis(500), "{late:?}");
    }
    let info = first.get("two").await.unwrap().unwrap();
    assert_eq!(info.last_tick.map(to_millis), ticks.last().copied());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_hands_over_within_the_lease_ttl() {
    let ttl = Duration::from_secs(1);
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sched-kill").unwrap();
    let mut inbox = Inbox::open(&backend, &queue).await;
    let first = Schedules::new(Arc::new(backend.clone())).unwrap();
    let second = Schedules::new(Arc::new(backend.clone())).unwrap();
    first.add(every_200ms("kill", &queue)).await.unwrap();
    let a = first.runner().lease_ttl(ttl).start().await.unwrap();
    let b = second.runner().lease_ttl(ttl).start().await.unwrap();
    inbox.until(3).await;
    let (leader, survivor) = if a.is_leader() { (a, b) } else { (b, a) };
    assert!(!survivor.is_leader());
    let killed_at = SystemTime::now();
    leader.kill();
    // Ticks keep coming: those of the handover late by at most the TTL
    // and the follower's retry step, the rest on time.
    let seen = inbox.received.len();
    inbox.until(seen + 12).await;
    assert!(survivor.is_leader());
    assert!(survivor.ticks_fired() > 0);
    for received in inbox.received.iter().filter(|r| r.at > killed_at) {
        let late = received
            .at
            .duration_since(from_millis(received.tick.unwrap()))
            .unwrap_or_default();
        assert!(
            late < ttl + ttl / 3 + Duration::from_millis(300),
            "{late:?}"
        );
    }
    survivor.shutdown().await.unwrap();
    inbox.drain().await;
    assert_each_tick_once(&inbox.ticks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_and_releases_the_lease() {
    let ttl = Duration::from_secs(3);
    let backend = MemoryBackend::new();
    let store = backend.coordination().unwrap();
    let schedules = Schedules::new(Arc::new(backend.clone())).unwrap();
    let a = schedules.runner().lease_ttl(ttl).start().await.unwrap();
    let holder = loop {
        if let Some(lease) = store.lease_holder(LEADER_LEASE).await.unwrap() {
            break lease.holder;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(holder, a.id());
    let b = schedules.runner().lease_ttl(ttl).start().await.unwrap();
    let started = Instant::now();
    a.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    // Released: free, or taken by the follower already if its first try
    // came after the release.
    let holder = store.lease_holder(LEADER_LEASE).await.unwrap();
    assert!(
        holder.as_ref().is_none_or(|lease| lease.holder == b.id()),
        "{holder:?}"
    );
    // The follower takes over at its next try, a third of the TTL at most.
    let deadline = Instant::now() + ttl / 3 + Duration::from_millis(500);
    while !b.is_leader() {
        assert!(Instant::now() < deadline, "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    b.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_runner_and_releases_the_lease() {
    let backend = MemoryBackend::new();
    let store = backend.coordination().unwrap();
    let schedules = Schedules::new(Arc::new(backend.clone())).unwrap();
    let runner = schedules.runner().start().await.unwrap();
    while store.lease_holder(LEADER_LEASE).await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    drop(runner);
    let deadline = Instant::now() + Duration::from_secs(1);
    while store.lease_holder(LEADER_LEASE).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the lease was kept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_firing_and_resume_goes_on() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sched-pause").unwrap();
    let mut inbox = Inbox::open(&backend, &queue).await;
    let schedules = Schedules::new(Arc::new(backend.clone())).unwrap();
    schedules.add(every_200ms("pause", &queue)).await.unwrap();
    let runner = schedules.runner().start().await.unwrap();
    inbox.until(2).await;
    let paused = schedules.pause("pause").await.unwrap();
    let paused_at = to_millis(SystemTime::now());
    assert!(paused.schedule.is_paused());
    assert_eq!(paused.next_tick, None);
    // Five ticks go by while paused.
    tokio::time::sleep(INTERVAL * 5).await;
    inbox.receive(Duration::ZERO).await;
    let before_resume = inbox.received.len();
    let resumed = schedules.resume("pause").await.unwrap();
    let resumed_at = to_millis(resumed.schedule.active_since());
    assert!(resumed.next_tick.is_some());
    inbox.until(before_resume + 3).await;
    runner.shutdown().await.unwrap();
    for tick in inbox.ticks() {
        // A tick being fired as the pause was written may still go out.
        assert!(
            tick <= paused_at + 5 || tick > resumed_at,
            "tick {tick} fired while paused ({paused_at}..{resumed_at})"
        );
    }
    let after: Vec<i64> = inbox
        .ticks()
        .into_iter()
        .filter(|t| *t > resumed_at)
        .collect();
    assert_each_tick_once(&after);
    assert_eq!(after[0], (resumed_at / 200 + 1) * 200);
}

/// The ticks the first round of a runner fires for `misfire`, started
/// after five ticks were missed: the round starts 30 ms after a tick, with
/// a grace period of 200 ms, so only that tick is on time.
async fn first_round(name: &str, misfire: Misfire) -> (Vec<i64>, i64) {
    let interval = Duration::from_millis(400);
    let backend = MemoryBackend::new();
    let queue = QueueName::new(format!("sched-{name}")).unwrap();
    let mut inbox = Inbox::open(&backend, &queue).await;
    let schedules = Schedules::new(Arc::new(backend.clone())).unwrap();
    let schedule = Schedule::new(
        name,
        Spec::every(interval).unwrap(),
        JobTemplate::new(queue.clone(), "missed"),
    )
    .unwrap()
    .with_misfire(misfire)
    .with_grace(Duration::from_millis(200));
    schedules.add(schedule).await.unwrap();
    // No runner for at least five ticks.
    tokio::time::sleep(interval * 5).await;
    sleep_to_phase(interval, Duration::from_millis(30)).await;
    let on_time = to_millis(SystemTime::now()) / 400 * 400;
    let runner = schedules.runner().start().await.unwrap();
    inbox.until(1).await;
    // The round sends its ticks at once; the next tick is 370 ms away.
    inbox.receive(Duration::from_millis(150)).await;
    runner.shutdown().await.unwrap();
    inbox.drain().await;
    (inbox.ticks(), on_time)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_skip_drops_missed_ticks() {
    let (ticks, on_time) = first_round("skip", Misfire::Skip).await;
    assert_eq!(ticks, vec![on_time]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_once_fires_one_for_all() {
    let (ticks, on_time) = first_round("once", Misfire::Once).await;
    assert_eq!(ticks, vec![on_time - 400, on_time]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfire_each_fires_the_latest_up_to_its_bound() {
    let (ticks, on_time) = first_round("each", Misfire::Each { max: 3 }).await;
    assert_eq!(
        ticks,
        vec![on_time - 1200, on_time - 800, on_time - 400, on_time]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_sends_one_job_now() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sched-trigger").unwrap();
    let mut inbox = Inbox::open(&backend, &queue).await;
    let schedules = Schedules::new(Arc::new(backend.clone())).unwrap();
    let yearly = Schedule::new(
        "yearly",
        Spec::cron("0 0 1 1 *").unwrap(),
        JobTemplate::new(queue.clone(), "report").header("kind", "annual"),
    )
    .unwrap()
    .with_paused(true);
    schedules.add(yearly).await.unwrap();
    let first = schedules.trigger("yearly").await.unwrap();
    let second = schedules.trigger("yearly").await.unwrap();
    assert_ne!(first, second);
    let received = inbox.until(2).await;
    for (received, id) in received.iter().zip([first, second]) {
        assert_eq!(received.message.id, id);
        assert_eq!(received.tick, None);
        assert_eq!(received.message.headers[HEADER_SCHEDULE], "yearly");
        assert_eq!(received.message.headers["kind"], "annual");
        assert_eq!(received.message.payload.as_ref(), b"report");
        let key = received.message.idempotency_key.as_deref().unwrap();
        assert!(key.starts_with("schedule:yearly:trigger:"), "{key}");
    }
    let missing = schedules.trigger("nope").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_gives_next_fire_times_and_changes_apply() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sched-list").unwrap();
    let schedules = Schedules::new(Arc::new(backend.clone())).unwrap();
    let paris = Spec::cron_in("0 7 * * *", "Europe/Paris").unwrap();
    let hourly = Spec::every(Duration::from_secs(3600)).unwrap();
    let job = JobTemplate::new(queue.clone(), "x");
    schedules
        .add(Schedule::new("paris", paris.clone(), job.clone()).unwrap())
        .await
        .unwrap();
    schedules
        .add(Schedule::new("hourly", hourly.clone(), job.clone()).unwrap())
        .await
        .unwrap();
    let now = SystemTime::now();
    let listed = schedules.list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|i| i.schedule.name()).collect();
    assert_eq!(names, ["hourly", "paris"]);
    assert_eq!(listed[0].next_tick, hourly.next_after(now));
    assert_eq!(listed[1].next_tick, paris.next_after(now));
    assert_eq!(listed[1].last_tick, None);
    let next = listed[1].next_tick.unwrap();
    assert!(next > now && next <= now + Duration::from_secs(86_400));

    // Update: a new spec, same creation time.
    let created = listed[0].schedule.created_at();
    let every_minute = Spec::every(Duration::from_secs(60)).unwrap();
    let updated = schedules
        .update(Schedule::new("hourly", every_minute.clone(), job.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(updated.schedule.created_at(), created);
    assert_eq!(updated.schedule.spec(), &every_minute);
    let got = schedules.get("hourly").await.unwrap().unwrap();
    assert_eq!(got.next_tick, every_minute.next_after(SystemTime::now()));

    assert!(schedules.remove("hourly").await.unwrap());
    assert!(!schedules.remove("hourly").await.unwrap());
    assert!(schedules.get("hourly").await.unwrap().is_none());
    assert_eq!(schedules.list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sched-bad").unwrap();
    let schedules = Schedules::new(Arc::new(backend.clone())).unwrap();
    schedules.add(every_200ms("taken", &queue)).await.unwrap();

    let taken = schedules
        .add(every_200ms("taken", &queue))
        .await
        .unwrap_err();
    assert_eq!(taken.kind(), ErrorKind::InvalidInput);
    assert!(taken.message().starts_with("schedule name:"), "{taken}");

    let missing = schedules
        .update(every_200ms("missing", &queue))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(
        schedules.pause("missing").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let bad_name = Schedule::new(
        "tab\there",
        Spec::every(INTERVAL).unwrap(),
        JobTemplate::new(queue.clone(), "x"),
    )
    .unwrap_err();
    assert_eq!(bad_name.kind(), ErrorKind::InvalidInput);
    assert!(bad_name.message().contains("schedule name"), "{bad_name}");

    let big = JobTemplate::new(queue.clone(), vec![0u8; MAX_TEMPLATE_PAYLOAD + 1]);
    let error = Schedule::new("big", Spec::every(INTERVAL).unwrap(), big).unwrap_err();
    assert!(error.message().starts_with("job.payload:"), "{error}");

    let lax = every_200ms("lax", &queue).with_grace(Duration::from_millis(1));
    let error = schedules.add(lax).await.unwrap_err();
    assert!(error.message().starts_with("grace:"), "{error}");

    for (result, field) in [
        (Spec::cron("every day"), "cron:"),
        (Spec::cron_in("0 7 * * *", "Europe/Atlantis"), "time_zone:"),
        (Spec::every(Duration::ZERO), "every:"),
    ] {
        let error = result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(error.message().starts_with(field), "{error}");
    }

    let ttl = schedules
        .runner()
        .lease_ttl(Duration::from_millis(1))
        .start()
        .await
        .unwrap_err();
    assert_eq!(ttl.kind(), ErrorKind::Config);
    assert!(ttl.message().contains("lease_ttl"), "{ttl}");

    let no_store = Schedules::new(Arc::new(NoStore(backend.clone()))).unwrap_err();
    assert_eq!(no_store.kind(), ErrorKind::Unsupported);
    assert!(no_store.message().contains("periodic jobs"), "{no_store}");
    assert!(
        no_store.message().contains("coordination store"),
        "{no_store}"
    );
}

/// A backend keeping no shared state.
#[derive(Debug)]
struct NoStore(MemoryBackend);

#[async_trait]
impl Backend for NoStore {
    fn capabilities(&self) -> &Capabilities {
        self.0.capabilities()
    }
    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        self.0.producer(queue).await
    }
    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        self.0.consumer(queue, options).await
    }
    fn admin(&self) -> &dyn Admin {
        self.0.admin()
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_added_elsewhere_is_fired_by_the_running_leader() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sched-late").unwrap();
    let mut inbox = Inbox::open(&backend, &queue).await;
    let runner_side = Schedules::new(Arc::new(backend.clone())).unwrap();
    let runner = runner_side
        .runner()
        .lease_ttl(Duration::from_millis(600))
        .start()
        .await
        .unwrap();
    // Another process adds it: no local wake-up, the leader sees it at
    // its next renewal, a third of the TTL later.
    let elsewhere = Schedules::new(Arc::new(backend.clone())).unwrap();
    elsewhere.add(every_200ms("late", &queue)).await.unwrap();
    inbox.until(3).await;
    runner.shutdown().await.unwrap();
    inbox.drain().await;
    assert_each_tick_once(&inbox.ticks());
    let store: Arc<dyn Coordination> = backend.coordination().unwrap();
    assert_eq!(store.lease_holder(LEADER_LEASE).await.unwrap(), None);
}
