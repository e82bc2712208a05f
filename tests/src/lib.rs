//! Process-level tests of the queue workspace. The tests live in `tests/`;
//! `src/bin/crash_worker.rs` is the worker process `crash_recovery` kills
//! and `rebalance` runs twice.

#![forbid(unsafe_code)]

use std::sync::Arc;

use queue::{Coordination, QueueName};

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

/// The coordination store at `store_url` for a test: a Redis store with
/// its keys under `namespace`, or the store of any other backend that
/// keeps one (PostgreSQL: the one in the URL's schema, so a test gives a
/// schema of its own, [`TempSchema`]).
pub async fn coordination_store(
    store_url: &str,
    namespace: &str,
) -> queue::Result<Arc<dyn Coordination>> {
    if store_url.starts_with("redis") {
        let store = queue::redis::RedisBackend::connect(store_url)
            .await?
            .coordination_store()
            .with_namespace(namespace)?;
        Ok(Arc::new(store))
    } else {
        queue::connect_coordination(store_url).await
    }
}

/// Remove what [`coordination_store`] kept under `namespace` in a Redis
/// store (a PostgreSQL test drops its schema instead: [`TempSchema`]).
pub async fn clear_store(store_url: &str, namespace: &str) {
    if store_url.starts_with("redis") {
        if let Ok(backend) = queue::redis::RedisBackend::connect(store_url).await {
            if let Ok(store) = backend.coordination_store().with_namespace(namespace) {
                let _ = store.clear().await;
            }
        }
    }
}

/// A PostgreSQL schema of a test's own: [`url`](TempSchema::url) is the
/// server's URL with `schema=` set, and the schema is dropped (with
/// `psql`) however the test ends.
#[derive(Debug)]
pub struct TempSchema {
    base: String,
    /// The schema's name.
    pub schema: String,
}

impl TempSchema {
    /// A fresh schema name on the server at `base` (created by the
    /// backend when it first connects).
    pub fn new(base: &str, prefix: &str) -> TempSchema {
        let tail = queue::MessageId::new().as_uuid().simple().to_string();
        TempSchema {
            base: base.to_owned(),
            schema: format!("{prefix}_{}", &tail[20..]),
        }
    }

    /// The server's URL with this schema.
    pub fn url(&self) -> String {
        let joiner = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{joiner}schema={}", self.base, self.schema)
    }
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                self.base.as_str(),
                "-qc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            ])
            .output();
    }
}
