//! OpenTelemetry across a real broker (feature `otel`): a job sent inside
//! a `tracing` span that the `tracing-opentelemetry` layer records runs in
//! a `job` span whose parent is that span, in the same trace, after a
//! real Redis hop and a real RabbitMQ hop. Spans go to the SDK's in-memory
//! exporter.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use queue::{Job, JobOptions, QueueName, Worker};
use queue_testkit::broker_url;
use queue_tests::unique_queue;
use tracing_subscriber::prelude::*;

/// Send one job inside a span `send`, run it with a worker, and check the
/// exported `job` span's parent.
async fn linked(url: &str, exporter: &InMemorySpanExporter) {
    let backend = queue::connect(url).await.expect("connect");
    let queue: QueueName = unique_queue("qt-otel");
    backend
        .admin()
        .ensure_queue(&queue, &Default::default())
        .await
        .expect("ensure");
    let producer = backend.producer(&queue).await.expect("producer");
    let send = tracing::info_span!("send");
    let sender = queue::trace::otel::of_span(&send).expect("the layer records the span");
    {
        let _entered = send.enter();
        let job = Job::encode(&7u32, &JobOptions::default()).expect("encode");
        assert_eq!(
            job.trace.map(|t| (t.trace_id, t.span_id)),
            Some((sender.trace_id, sender.span_id)),
            "the message carries the sending span"
        );
        producer.send(job).await.expect("send");
    }
    drop(send);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = Worker::builder(backend.clone(), queue.clone())
        .concurrency(1)
        .handler(move |job: Job<u32>| {
            let done = done_tx.clone();
            async move {
                // Inside the handler, the job's context is its span's.
                let _ = done.send((job.payload, queue::trace::current()));
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("worker");
    let (payload, inside) = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
        .await
        .expect("the job runs within 30 s")
        .expect("the handler reports");
    assert_eq!(payload, 7);
    worker.shutdown().await.expect("shutdown");
    let _ = backend.admin().delete_queue(&queue).await;

    let spans = exporter.get_finished_spans().expect("finished spans");
    let job = spans
        .iter()
        .find(|s| s.name == "job" && s.parent_span_id == SpanId::from(sender.span_id))
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| (&s.name, s.parent_span_id)).collect();
            panic!("no job span whose parent is the sending span: {names:?}")
        });
    assert_eq!(job.span_context.trace_id(), TraceId::from(sender.trace_id));
    assert!(job.parent_span_is_remote, "linked across the broker");
    let inside = inside.expect("a context inside the handler");
    assert_eq!(
        (inside.trace_id, inside.span_id),
        (
            sender.trace_id,
            u64::from_be_bytes(job.span_context.span_id().to_bytes())
        ),
        "the handler's context is its exported span's"
    );
    exporter.reset();
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_span_is_the_child_of_its_sender_across_redis_and_rabbitmq() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("queue-tests")));
    // This thread's default: a current-thread runtime runs the worker's
    // tasks here too.
    let _default = tracing::subscriber::set_default(subscriber);
    let mut ran = 0;
    for var in ["QUEUE_TEST_REDIS_URL", "QUEUE_TEST_AMQP_URL"] {
        if let Some(url) = broker_url(var) {
            linked(&url, &exporter).await;
            ran += 1;
        }
    }
    eprintln!("linked across {ran} brokers");
}
