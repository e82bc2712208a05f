//! Process-level tests of the queue workspace. The tests live in `tests/`;
//! `src/bin/crash_worker.rs` is the worker process `crash_recovery` kills
//! and `rebalance` runs twice.

#![forbid(unsafe_code)]

use queue::QueueName;

/// A queue name no other run uses: `<prefix>-<16 hex digits>`.
pub fn unique_queue(prefix: &str) -> QueueName {
    let tail = queue::MessageId::new().as_uuid().simple().to_string();
    QueueName::new(format!("{prefix}-{}", &tail[16..])).expect("a valid queue name")
}

/// Deletes a test's queue however the test ends (on a thread of its own,
/// so it works from a failing async test too).
pub struct Cleanup {
    /// The backend's URL.
    pub url: String,
    /// The queue to delete.
    pub queue: QueueName,
}

impl std::fmt::Debug for Cleanup {
    // The URL may hold a password: only the queue is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleanup")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, queue) = (self.url.clone(), self.queue.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(backend) = queue::connect(&url).await {
                    let _ = backend.admin().delete_queue(&queue).await;
                }
            });
        })
        .join();
    }
}
