//! `cargo xtask bench memory`: throughput and pickup latency of the memory backend.

use std::sync::Arc;
use std::time::Duration;

use queue_core::{Backend, MemoryBackend, QueueName};
use queue_testkit::bench;

fn main() {
    bench::run(async {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let messages = 4_000_000;
        let queue = QueueName::new("bench-throughput").expect("queue name");
        let throughput = bench::throughput(backend.clone(), &queue, messages, 100, 1, 4, 100)
            .await
            .expect("throughput run");
        let queue = QueueName::new("bench-latency").expect("queue name");
        let latency = bench::pickup_latency(backend, &queue, 20_000, Duration::from_secs(3), 4)
            .await
            .expect("latency run");
        println!(
            "memory  send->receive->ack  batch {}  {}p/{}c  {} messages  {:.2} s  {:.0} msg/s",
            throughput.batch,
            throughput.producers,
            throughput.consumers,
            throughput.messages,
            throughput.seconds,
            throughput.messages_per_second
        );
        println!(
            "memory  pickup latency at {} msg/s  {} samples  p50 {:.1} us  p99 {:.1} us  max {:.1} us",
            latency.rate, latency.messages, latency.p50_us, latency.p99_us, latency.max_us
        );
        bench::write_json(
            "memory",
            &serde_json::json!({ "backend": "memory", "throughput": throughput, "latency": latency }),
        );
    });
}
