//! Queue administration of the memory backend.

use std::collections::VecDeque;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::Instant;

use super::backend::MemoryBackend;
use super::state::lock;
use crate::dead_letters::{DeadLetterPage, DeadLetterQuery, TimeOrderedPage};
use crate::error::Result;
use crate::message::QueueName;
use crate::stats::{HealthStatus, QueueOptions, QueueStats, Redrive, WorkerInfo};
use crate::traits::Admin;

#[async_trait]
impl Admin for MemoryBackend {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        options.check()?;
        self.shared.queue(queue, Some(options)).map(drop)
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.shared.check_open()?;
        let removed = lock(&self.shared.queues).remove(queue);
        if let Some(removed) = removed {
            lock(&removed.state).deleted = true;
            removed.wake_all();
        }
        Ok(())
    }

    async fn queues(&self) -> Result<Vec<QueueName>> {
        self.shared.check_open()?;
        let mut names: Vec<QueueName> = lock(&self.shared.queues).keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    async fn pause(&self, queue: &QueueName) -> Result<()> {
        let queue = self.shared.existing(queue)?;
        queue.state()?.paused = true;
        Ok(())
    }

    async fn resume(&self, queue: &QueueName) -> Result<()> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        state.paused = false;
        drop(state);
        // Consumers waiting on a paused queue look again.
        queue.wake_all();
        Ok(())
    }

    async fn register_worker(&self, worker: &WorkerInfo) -> Result<()> {
        self.shared.check_open()?;
        let stale_at = Instant::now() + worker.ttl();
        lock(&self.shared.workers).insert(worker.id.clone(), (worker.clone(), stale_at));
        Ok(())
    }

    async fn deregister_worker(&self, id: &str) -> Result<()> {
        self.shared.check_open()?;
        lock(&self.shared.workers).remove(id);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.shared.check_open()?;
        let now = Instant::now();
        let mut workers = lock(&self.shared.workers);
        workers.retain(|_, (_, stale_at)| *stale_at > now);
        let mut live: Vec<WorkerInfo> = workers.values().map(|(w, _)| w.clone()).collect();
        drop(workers);
        crate::stats::sort_workers(&mut live);
        Ok(live)
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        let removed = state.depth();
        state.ready.clear();
        state.group_active.clear();
        state.delayed.clear();
        state.in_flight.clear();
        state.leases.clear();
        Ok(removed)
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        let sys_now = SystemTime::now();
        state.maintain(sys_now, Instant::now());
        state.sweep_expired(sys_now);
        let mut stats = state.stats;
        stats.ready = state.ready.len() as u64;
        stats.delayed = state.delayed.len() as u64;
        stats.in_flight = state.in_flight.len() as u64;
        stats.dead = state.dead.len() as u64;
        stats.paused = state.paused;
        // Each list (a priority's, or a group's in it) is in the order
        // messages became ready, so the oldest is at one of the heads.
        stats.oldest_ready_age = state
            .ready
            .heads()
            .map(|m| m.not_before.map_or(m.created_at, |at| at.max(m.created_at)))
            .min()
            .map(|since| sys_now.duration_since(since).unwrap_or_default());
        // Maintenance may have made messages ready.
        queue.unlock(state);
        Ok(stats)
    }

    /// Letters in time order, after a time cursor (`<ms>-<id>`).
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        let mut page = TimeOrderedPage::new(query)?;
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        state.sweep_expired(SystemTime::now());
        for letter in &state.dead {
            page.offer(letter.clone());
        }
        Ok(page.finish())
    }

    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        let dead = std::mem::take(&mut state.dead);
        let (moved, kept): (VecDeque<_>, VecDeque<_>) =
            dead.into_iter().partition(|d| match &which {
                Redrive::All => true,
                Redrive::Ids(ids) => ids.contains(&d.message.id),
            });
        state.dead = kept;
        let sys_now = SystemTime::now();
        let now = Instant::now();
        let count = moved.len() as u64;
        for dead_letter in moved {
            let mut message = dead_letter.message;
            message.attempt = 1;
            message.not_before = None;
            message.expires_at = None;
            state.enqueue(message, sys_now, now);
        }
        queue.unlock(state);
        Ok(count)
    }

    async fn health(&self) -> HealthStatus {
        HealthStatus::probe("memory", async { self.shared.check_open() }).await
    }
}
