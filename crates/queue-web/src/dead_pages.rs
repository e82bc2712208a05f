//! Pages of dead letters shared by every viewer for a few seconds: an
//! open queue page refreshes itself every two seconds, and a dead-letter
//! page can cost the broker a read of the whole dead-letter queue (SQS,
//! Kafka) or of every letter before it (RabbitMQ), and hides the letters
//! it reads from other readers meanwhile. However many viewers, a page is
//! read at most once per [`FRESH`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_core::{Backend, DeadLetterPage, DeadLetterQuery, QueueName};

/// A page younger than this is served as it is.
const FRESH: Duration = Duration::from_secs(3);
/// Pages kept at most (the oldest go first).
const MAX_PAGES: usize = 32;

/// Which page: backend, queue, cursor, limit.
type Key = (String, QueueName, Option<String>, usize);

#[derive(Default)]
pub(crate) struct DeadPages {
    pages: tokio::sync::Mutex<HashMap<Key, (Instant, Arc<DeadLetterPage>)>>,
}

impl DeadPages {
    /// The page `query` asks of `queue`, read now unless a fresh one is
    /// held. Viewers asking at the same time wait for the same read.
    pub(crate) async fn get(
        &self,
        backend_name: &str,
        backend: &dyn Backend,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> queue_core::Result<Arc<DeadLetterPage>> {
        let key = (
            backend_name.to_owned(),
            queue.clone(),
            query.after.as_ref().map(|c| c.as_str().to_owned()),
            query.limit,
        );
        let mut pages = self.pages.lock().await;
        if let Some((at, page)) = pages.get(&key) {
            if at.elapsed() < FRESH {
                return Ok(page.clone());
            }
        }
        let page = Arc::new(backend.admin().dead_letter_page(queue, query).await?);
        pages.retain(|_, (at, _)| at.elapsed() < FRESH);
        if pages.len() >= MAX_PAGES {
            if let Some(oldest) = pages
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            {
                pages.remove(&oldest);
            }
        }
        pages.insert(key, (Instant::now(), page.clone()));
        Ok(page)
    }

    /// Forget every page (after a change: redrive, purge).
    pub(crate) async fn invalidate(&self) {
        self.pages.lock().await.clear();
    }
}
