//! `cargo xtask bench worker`: no-op jobs through the worker pool on the memory backend,
//! timed to the last completion and end to end (until `shutdown()` returned).

use std::sync::Arc;

use queue_core::{Backend, MemoryBackend, QueueName};
use queue_testkit::bench;

fn main() {
    bench::run(async {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let queue = QueueName::new("bench-worker").expect("queue name");
        let result = bench::worker_throughput(backend, &queue, 200_000, 64)
            .await
            .expect("worker run");
        println!(
            "memory  worker pool  concurrency {}  {} no-op jobs  {:.2} s  {:.0} jobs/s",
            result.concurrency, result.jobs, result.seconds, result.jobs_per_second
        );
        println!("memory  worker pool  {}", result.end_to_end());
        bench::write_json(
            "worker",
            &serde_json::json!({ "backend": "memory", "worker": result }),
        );
    });
}
