//! The Prometheus exporter sees the worker's metrics (its own process: the
//! recorder is global).

use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_core::{Backend, Job, JobOptions, MemoryBackend, QueueName};
use queue_prometheus::PrometheusExporter;
use queue_worker::Worker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_are_served() {
    let exporter = PrometheusExporter::install().expect("install");
    assert!(
        PrometheusExporter::install().is_err(),
        "a second recorder is refused"
    );
    let backend = Arc::new(MemoryBackend::new());
    let queue = QueueName::new("metered").unwrap();
    let worker = Worker::builder(backend.clone(), queue.clone())
        .depth_interval(Some(Duration::from_millis(50)))
        .handler(|job: Job<u32>| async move {
            if job.payload == 0 {
                return Err(queue_core::HandlerError::permanent("zero"));
            }
            Ok(())
        })
        .start()
        .await
        .unwrap();
    let producer = backend.producer(&queue).await.unwrap();
    for i in 0..4u32 {
        producer
            .send(Job::encode(&i, &JobOptions::default()).unwrap())
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while worker.stats().completed + worker.stats().dead_lettered < 4 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The depth gauges are refreshed on their interval: wait for the dead letter to show.
    while !exporter
        .render()
        .contains(r#"queue_depth{queue="metered",state="dead"} 1"#)
    {
        assert!(Instant::now() < deadline, "{}", exporter.render());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown().await.unwrap();

    let text = exporter.render();
    assert!(text.contains("# TYPE queue_jobs_total counter"), "{text}");
    assert!(
        text.contains(r#"queue_jobs_total{outcome="completed",queue="metered"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"queue_jobs_total{outcome="dead_lettered",queue="metered"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"queue_job_run_seconds_count{queue="metered"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"queue_jobs_in_flight{queue="metered"} 0"#),
        "{text}"
    );

    let addr = exporter
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("queue_job_pickup_seconds_bucket"),
        "{response}"
    );
}
