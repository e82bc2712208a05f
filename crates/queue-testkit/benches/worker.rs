//! `cargo xtask bench worker`: no-op jobs through the worker pool on the memory backend.

use std::sync::Arc;

use queue_core::{Backend, MemoryBackend, QueueName};
use queue_testkit::bench;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let queue = QueueName::new("bench-worker").expect("queue name");
        let result = bench::worker_throughput(backend, &queue, 200_000, 64)
            .await
            .expect("worker run");
        println!(
            "memory  worker pool  concurrency {}  {} no-op jobs  {:.2} s  {:.0} jobs/s",
            result.concurrency, result.jobs, result.seconds, result.jobs_per_second
        );
        let json = serde_json::json!({ "backend": "memory", "worker": result });
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
        std::fs::create_dir_all(&dir).expect("create target/bench");
        let path = dir.join("worker.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json"))
            .expect("write json");
        println!("wrote {}", path.display());
    });
}
