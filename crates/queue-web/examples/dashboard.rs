//! The dashboard mounted in an application, as a service would do it: a
//! memory backend with three queues under load (one of them failing now
//! and then, so there are retries and dead letters to look at), the
//! dashboard under `/admin/queues` behind the app's own middleware.
//!
//! ```sh
//! cargo run -p queue-web --example dashboard
//! # then open http://127.0.0.1:8080/admin/queues
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use queue_core::{Backend, Job, JobOptions, MemoryBackend, QueueName};
use queue_web::Dashboard;
use queue_worker::QueueManager;

/// Where an application checks its own session; this one only logs.
async fn app_auth(request: Request, next: Next) -> Response {
    tracing_free_log(request.uri().path());
    next.run(request).await
}

fn tracing_free_log(path: &str) {
    if std::env::var_os("DASHBOARD_EXAMPLE_LOG").is_some() {
        eprintln!("dashboard request: {path}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let manager = Arc::new(
        QueueManager::builder()
            .backend("memory", backend.clone())
            .default_backend("memory")
            .build()?,
    );
    for (name, every, fails) in [
        ("emails", 20, false),
        ("thumbnails", 35, true),
        ("reports", 400, false),
    ] {
        let queue = QueueName::new(name)?;
        let worker = manager
            .worker(queue.clone())
            .concurrency(4)
            .retry(queue_core::BackoffPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
                multiplier: 2.0,
                jitter: true,
            })
            .handler(move |job: Job<u64>| async move {
                tokio::time::sleep(Duration::from_millis(15)).await;
                if fails && job.payload.is_multiple_of(7) {
                    return Err(std::io::Error::other(format!(
                        "thumbnail {}: image decoder failed: unexpected end of file",
                        job.payload
                    )));
                }
                Ok(job.payload * 2)
            });
        manager.spawn_worker(worker).await?;
        let producer = manager.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                let options = JobOptions::default().with_max_retries(2);
                let _ = producer.submit(&queue, &n, &options).await;
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
        });
    }
    let app = axum::Router::new()
        .nest("/admin/queues", Dashboard::for_manager(manager).router())
        .layer(axum::middleware::from_fn(app_auth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("open http://127.0.0.1:8080/admin/queues");
    axum::serve(listener, app).await?;
    Ok(())
}
